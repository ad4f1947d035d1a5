"""Independent readers agree with our RTSTRUCT: rt-utils 1.2.7, dicompyler-core 0.5.6 and Debian's plastimatch
1.9.4 rasterise the real example's organs (written by `write_rtstruct` over the 20-slice example CT series) back
to the source masks. The contour convention that makes this work is in docs/dicom.md ("Contour convention").

Reader limitations, handled here and not by changing our output:

* rt-utils refuses a series whose datasets carry an empty SOPInstanceUID (the example CT has it only in the file
  meta), and plastimatch ignores a CT series without Study/Series Instance UIDs and cannot decode its JPEG 2000
  pixels (it then silently rasterises onto a grid guessed from the contours). The readers therefore get a
  temporary copy of the series with SOPInstanceUID filled from the file meta, the Study/Series UIDs our
  structure set refers to, and the pixels decompressed; the geometry is untouched. Our own writer and reader
  work on the original series.
* dicompyler-core 0.5.6 imports ``pydicom.dicomio.read_file``, which pydicom 3 removed: the test points that
  name at ``pydicom.dcmread`` before importing it. Its rasteriser (`dvhcalc.get_contour_mask`: matplotlib
  point-in-polygon of pixel centres, contours of a plane XOR-ed as in its DVH code) runs unchanged, on the
  pixel-centre grid cut to each plane's contour extents (as its ``use_structure_extents`` option does).
* plastimatch ORs the contours of a plane unless given ``--xor-contours``, so by default it fills holes (the
  example liver has vessel holes: +1.5 %); with ``--xor-contours`` it follows the even-odd rule, like us.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from dicom_series import CT_DICOM, dice, example_masks, require_example
from scipy import ndimage

from oncoseg.dicom import load_reference, read_rtstruct, standard_name, write_rtstruct
from oncoseg.io import load_image

LARGE_ML = 5.0  # organs above this: volume within 3 % and Dice >= 0.97; smaller ones: within one voxel ring
VOLUME_TOLERANCE = 0.03
MIN_DICE = 0.97


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The example organs, our RTSTRUCT over the original series, and the readers' copy of the series."""
    require_example()
    folder = tmp_path_factory.mktemp("readers")
    masks = {standard_name(name): mask for name, mask in example_masks().items()}
    path = write_rtstruct(masks, CT_DICOM, folder / "rs.dcm")
    ds = pydicom.dcmread(path)
    series_uid = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    series_uid = series_uid.RTReferencedSeriesSequence[0].SeriesInstanceUID
    copy = folder / "ct"
    copy.mkdir()
    for source in sorted(CT_DICOM.iterdir()):
        image = pydicom.dcmread(source)
        image.SOPInstanceUID = image.get("SOPInstanceUID") or image.file_meta.MediaStorageSOPInstanceUID
        image.StudyInstanceUID = image.get("StudyInstanceUID") or ds.StudyInstanceUID
        image.SeriesInstanceUID = image.get("SeriesInstanceUID") or series_uid
        image.decompress(generate_instance_uid=False)
        image.save_as(copy / source.name)
    return masks, path, copy, load_reference(CT_DICOM)


def _check(reader: str, got: dict[str, np.ndarray], masks: dict[str, np.ndarray], spacing) -> list[str]:
    """Every organ present; large ones within 3 % and Dice >= 0.97, small ones within one voxel ring.
    Prints the per-organ table; returns the failures."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    ring = ndimage.generate_binary_structure(3, 1)
    ring[0] = ring[2] = False  # in-plane ring: contours are drawn per slice
    failures = []
    print(f"\n{reader}: organ, source mL, reader - source, Dice")
    for name, mask in sorted(masks.items(), key=lambda item: -int(item[1].sum())):
        back = got.get(name)
        if back is None:
            failures.append(f"{name}: missing")
            continue
        source_ml = float(mask.sum()) * voxel_ml
        change = float(back.sum()) / float(mask.sum()) - 1.0
        score = dice(back, mask)
        print(f"  {name:<20} {source_ml:8.2f} {change:+8.2%} {score:.4f}")
        if source_ml > LARGE_ML:
            if abs(change) > VOLUME_TOLERANCE or score < MIN_DICE:
                failures.append(f"{name}: {change:+.1%}, Dice {score:.3f}")
        else:
            grown = ndimage.binary_dilation(mask, ring)
            shrunk = ndimage.binary_erosion(mask, ring)
            if (back & ~grown).any() or (shrunk & ~back).any():
                failures.append(f"{name} ({source_ml:.2f} mL): differs beyond one voxel ring")
    return failures


def _holes_filled(mask: np.ndarray) -> np.ndarray:
    """``mask`` with the holes of each slice filled (a hole: background that does not reach the outside through
    8-connected pixels, as the contours see it)."""
    filled = mask.copy()
    (box,) = ndimage.find_objects(mask.astype(np.uint8))
    for z in range(box[0].start, box[0].stop):
        filled[z, box[1], box[2]] = ndimage.binary_fill_holes(mask[z, box[1], box[2]], np.ones((3, 3), bool))
    return filled


def test_rt_utils_reads_every_organ_back(written):
    from rt_utils import RTStructBuilder

    masks, path, copy, reference = written
    builder = RTStructBuilder.create_from(dicom_series_path=str(copy), rt_struct_path=str(path))
    order = [str(item.SOPInstanceUID) for item in builder.series_data]
    position = [order.index(uid) for uid in reference.sop_instance_uids]  # rt-utils' order → the reference's
    got = {}
    for name in builder.get_roi_names():
        volume = builder.get_roi_mask_by_name(name)  # (rows, columns, slices in rt-utils' order)
        got[name] = reference.from_frames(np.stack([volume[:, :, i] for i in position]).astype(bool))
    assert not _check("rt-utils 1.2.7", got, masks, load_image(CT_DICOM).spacing)


def test_dicompyler_core_reads_every_organ_back(written):
    import pydicom.dicomio

    if not hasattr(pydicom.dicomio, "read_file"):
        pydicom.dicomio.read_file = pydicom.dcmread  # dicompyler-core 0.5.6 imports the pydicom 2 name
    from dicompylercore import dicomparser, dvhcalc

    masks, path, _copy, reference = written
    by_uid = {uid: k for k, uid in enumerate(reference.sop_instance_uids)}
    planes_of = {}  # dicompyler's plane key (z rounded, as GetStructureCoordinates keys it) → CT parser, slice
    for source in CT_DICOM.iterdir():
        image = dicomparser.DicomParser(str(source))
        key = str(round(float(image.ds.ImagePositionPatient[2]), 2)) + "0"
        planes_of[key] = (image, by_uid[str(image.ds.file_meta.MediaStorageSOPInstanceUID)])
    structure_set = dicomparser.DicomParser(str(path))
    got = {}
    for number, structure in structure_set.GetStructures().items():
        frames = np.zeros((len(by_uid), reference.rows, reference.columns), dtype=bool)
        for key, plane in structure_set.GetStructureCoordinates(number).items():
            image, k = planes_of[key]
            columns_mm, rows_mm = image.GetPatientToPixelLUT()
            contours = [[point[:2] for point in contour["data"]] for contour in plane]
            xy = np.concatenate([np.asarray(c, dtype=float) for c in contours])
            # the pixel-centre grid cut to the plane's extents (one pixel margin), as use_structure_extents does
            cols = np.flatnonzero((columns_mm >= xy[:, 0].min() - 2) & (columns_mm <= xy[:, 0].max() + 2))
            rows = np.flatnonzero((rows_mm >= xy[:, 1].min() - 2) & (rows_mm <= xy[:, 1].max() + 2))
            lut = (columns_mm[cols], rows_mm[rows])
            x, y = np.meshgrid(lut[0], lut[1])
            points = np.vstack((x.ravel(), y.ravel())).T
            grid = np.zeros((len(rows), len(cols)), dtype=bool)
            for contour in contours:  # XOR: holes, as dvhcalc.calculate_plane_histogram does
                grid ^= dvhcalc.get_contour_mask({"lut": lut, "x_lut_index": 0}, None, points, contour)
            frames[k][np.ix_(rows, cols)] = grid
        got[structure["name"]] = reference.from_frames(frames)
    assert not _check("dicompyler-core 0.5.6", got, masks, load_image(CT_DICOM).spacing)


@pytest.mark.parametrize("xor", [True, False], ids=["xor-contours", "default"])
def test_plastimatch_reads_every_organ_back(written, tmp_path, xor):
    tool = shutil.which("plastimatch")
    if tool is None:
        pytest.fail("plastimatch is not installed: apt-get install plastimatch (see scripts/system-deps.sh)")
    masks, path, copy, _reference = written
    command = [tool, "convert", "--input", str(path), "--referenced-ct", str(copy)]
    command += ["--output-prefix", str(tmp_path / "out")] + (["--xor-contours"] if xor else [])
    run = subprocess.run(command, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Setting PIH from RDD" in run.stdout  # the grid comes from the CT, not guessed from the contours
    got = {}
    for file in (tmp_path / "out").iterdir():
        image = load_image(file)
        assert image.shape == (20, 512, 512)
        got[file.name.split(".")[0]] = image.array.astype(bool)
    if xor:  # the even-odd rule, as ours: within the bounds, in fact exactly our masks
        assert not _check("plastimatch 1.9.4 --xor-contours", got, masks, load_image(CT_DICOM).spacing)
        assert all(np.array_equal(got[name], mask) for name, mask in masks.items())
        return
    # by default plastimatch ORs the contours of a plane: each organ comes back with its in-plane holes filled
    # (the liver's vessels +1.5 %, the spinal canal inside a vertebra +3.6 %), and otherwise exactly
    filled = {name: _holes_filled(mask) for name, mask in masks.items()}
    assert all(np.array_equal(got[name], filled[name]) for name in masks)
    assert filled["Liver"].sum() > masks["Liver"].sum()
    solid = {name: mask for name, mask in masks.items() if np.array_equal(filled[name], mask)}
    assert len(solid) >= 20 and not _check("plastimatch 1.9.4", got, solid, load_image(CT_DICOM).spacing)


def test_our_reader_gives_back_exactly_the_masks(written):
    masks, path, _copy, _reference = written
    back = read_rtstruct(path, CT_DICOM)
    assert all(np.array_equal(back[name], mask) for name, mask in masks.items())


def test_vertices_sit_a_tenth_of_a_pixel_inside_the_half_pixel_boundary(written):
    """The convention itself: every vertex is 0.1 pixel from a half-pixel line, on the inside."""
    masks, path, _copy, reference = written
    ds = pydicom.dcmread(path)
    number = {roi.ROIName: roi.ROINumber for roi in ds.StructureSetROISequence}["Liver"]
    item = next(i for i in ds.ROIContourSequence if i.ReferencedROINumber == number)
    points = np.array(item.ContourSequence[0].ContourData, dtype=float).reshape(-1, 3)
    rc, _depth = reference.patient_to_pixel(points)
    offset = np.abs(rc - np.round(rc))  # 0.4 in the coordinate that crosses the boundary, 0 in the other
    crossing = offset.max(axis=1)
    np.testing.assert_allclose(crossing, 0.4, atol=1e-3)
    np.testing.assert_allclose(offset.min(axis=1), 0.0, atol=1e-3)
    frames = reference.to_frames(masks["Liver"])
    k = reference.sop_instance_uids.index(
        item.ContourSequence[0].ContourImageSequence[0].ReferencedSOPInstanceUID
    )
    nearest = np.round(rc).astype(int)
    assert frames[k][nearest[:, 0], nearest[:, 1]].all()  # the nearest pixel centre of every vertex is inside
