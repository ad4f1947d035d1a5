"""DICOM SEG writer/reader: exact round trip on the real example, validator, attributes, orientations."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicom_series import CT_DICOM, dciodvfy_errors, example_masks, require_example, rotation, write_series

import oncoseg
from oncoseg.dicom import DicomExportError, default_color, load_reference, read_seg, standard_name, write_seg
from oncoseg.io import load_image


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    require_example()
    masks = example_masks()
    path = write_seg(masks, CT_DICOM, tmp_path_factory.mktemp("seg") / "example_seg.dcm")
    return masks, path


def test_real_example_round_trip_is_exact(example):
    masks, path = example
    back = read_seg(path, CT_DICOM)
    assert set(back) == {standard_name(name) for name in masks}
    for name, mask in masks.items():
        np.testing.assert_array_equal(back[standard_name(name)], mask, err_msg=name)


def test_real_example_passes_dciodvfy(example):
    errors, warnings = dciodvfy_errors(example[1])
    print("dciodvfy warnings:", *warnings, sep="\n  ")
    assert errors == []


def test_segments_carry_tg263_labels_colours_codes_and_algorithm(example):
    path = example[1]
    reference = load_reference(CT_DICOM)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert ds.Manufacturer == "Onco-Seg" and ds.SoftwareVersions == oncoseg.__version__
    assert ds.FrameOfReferenceUID == reference.frame_of_reference_uid
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == reference.series_instance_uid
    segments = {s.SegmentLabel: s for s in ds.SegmentSequence}
    assert {"Liver", "Spleen", "SpinalCord", "A_Aorta"} <= set(segments)
    liver = segments["Liver"]
    assert liver.SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"  # SNOMED CT liver
    assert liver.SegmentAlgorithmType == "AUTOMATIC" and liver.SegmentAlgorithmName == "Onco-Seg"
    assert liver.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "Onco-Seg"
    for label, segment in segments.items():
        expected = hd.color.CIELabColor.from_rgb(*default_color(label)).value
        assert tuple(segment.RecommendedDisplayCIELabValue) == tuple(expected)
    adrenal = segments["Glnd_Adrenal_R"].SegmentedPropertyTypeCodeSequence[0]
    assert adrenal.SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning == "Right"


@pytest.mark.parametrize(
    "row, column, step",
    [((-1, 0, 0), (0, -1, 0), -2.5), ((0, 1, 0), (0, 0, -1), 3.0),
     (tuple(rotation(30, 15)[:, 0]), tuple(rotation(30, 15)[:, 1]), 2.0)],
    ids=["axial-flipped", "sagittal", "oblique"],
)  # fmt: skip
def test_other_orientations_round_trip_and_frames_match_their_source_images(tmp_path, row, column, step):
    require_example()
    masks = example_masks()
    names = list(masks)[:8]
    labels = np.zeros(next(iter(masks.values())).shape, np.uint16)
    for number, name in enumerate(names, start=1):
        labels[masks[name]] = number
    folder = write_series(tmp_path / "series", labels[:, ::4, ::4], row, column, slice_step=step)
    truth = load_image(folder).array
    present = {name: truth == n for n, name in enumerate(names, start=1) if (truth == n).any()}
    path = write_seg(present, folder, tmp_path / "seg.dcm")
    assert dciodvfy_errors(path)[0] == []
    back = read_seg(path, folder)
    for name, mask in present.items():
        np.testing.assert_array_equal(back[standard_name(name)], mask, err_msg=name)

    # Independently of Onco-Seg's geometry code: every frame equals its source image's label pixels.
    sources = {ds.SOPInstanceUID: ds for ds in map(pydicom.dcmread, folder.iterdir())}
    seg = pydicom.dcmread(path)
    label_of = {s.SegmentNumber: names.index(_given(s.SegmentLabel, names)) + 1 for s in seg.SegmentSequence}
    pixels = seg.pixel_array
    for i, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        label = label_of[group.SegmentIdentificationSequence[0].ReferencedSegmentNumber]
        np.testing.assert_array_equal(pixels[i].astype(bool), sources[uid].pixel_array == label)


def _given(label: str, names: list[str]) -> str:
    return next(name for name in names if standard_name(name) == label)


def test_bad_input_is_refused_without_output(tmp_path, example):
    folder = write_series(tmp_path / "s", np.zeros((3, 10, 12), np.uint16), (1, 0, 0), (0, 1, 0))
    good = np.zeros((3, 10, 12), bool)
    good[1, 2:5, 2:6] = True
    out = tmp_path / "out"
    for masks, words in [({"Liver": good[:, :9]}, "shape"), ({}, "no masks"), ({"Liver": good * 3}, "binary"),
                         ({"Liver": ~good & False}, "empty")]:  # fmt: skip
        with pytest.raises(DicomExportError, match=words):
            write_seg(masks, folder, out / "seg.dcm")
        assert not out.exists() or list(out.iterdir()) == []
    with pytest.raises(DicomExportError, match="frame of reference"):
        read_seg(example[1], folder)
    rt = tmp_path / "rt.dcm"
    from oncoseg.dicom import write_rtstruct

    write_rtstruct({"Liver": good}, folder, rt)
    with pytest.raises(DicomExportError, match="not SEG"):
        read_seg(rt, folder)


def test_single_and_empty_segments_with_allow_empty(tmp_path):
    folder = write_series(tmp_path / "s", np.zeros((3, 10, 12), np.uint16), (1, 0, 0), (0, 1, 0))
    empty = np.zeros((3, 10, 12), bool)
    small = empty.copy()
    small[1, 2:4, 3:6] = True
    for masks in ({"Liver": small}, {"Liver": empty}, {"Liver": empty, "Spleen": small}):
        path = write_seg(masks, folder, tmp_path / "seg.dcm", allow_empty=True)
        assert dciodvfy_errors(path)[0] == []
        back = read_seg(path, folder)
        assert set(back) == set(masks)
        for name, mask in masks.items():
            np.testing.assert_array_equal(back[name], mask)


def test_notes_such_as_the_quality_flag_become_segment_descriptions(tmp_path):
    frames = np.zeros((4, 24, 32), np.uint16)
    folder = write_series(tmp_path / "small", frames, (1, 0, 0), (0, 1, 0), pixel_spacing=(0.8, 0.7))
    mask = np.zeros((4, 24, 32), bool)
    mask[1:3, 4:12, 4:12] = True
    path = write_seg({"Liver": mask, "GTV": mask.copy()}, folder, tmp_path / "seg.dcm",
                     notes={"Liver": "REVIEW (quality 0.42)"})  # fmt: skip
    segments = {s.SegmentLabel: s for s in pydicom.dcmread(path).SegmentSequence}
    assert segments["Liver"].SegmentDescription == "REVIEW (quality 0.42)"
    assert "SegmentDescription" not in segments["GTV"]
