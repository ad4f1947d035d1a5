"""`oncoseg export` and `oncoseg segment --output-type`, run as subprocesses: NIfTI ↔ RTSTRUCT/SEG round trips,
and masks that do not fit the reference series refused (exit code 2, one line naming what differs, no file)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_series import CT_DICOM, LABEL_MAP, SEG_NIFTI, dciodvfy_errors, dice, example_masks, require_example

from oncoseg.dicom import DicomExportError, load_reference, standard_name
from oncoseg.dicom.export import masks_from_files
from oncoseg.io import load_image

ONCOSEG = Path(sys.executable).with_name("oncoseg")


def run(*args) -> subprocess.CompletedProcess:
    assert ONCOSEG.is_file(), f"{ONCOSEG} missing: install the package (pip install -e .)"
    return subprocess.run(
        [str(ONCOSEG), *map(str, args)], check=False, capture_output=True, encoding="utf-8", timeout=600
    )


def _error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    errors = [line for line in done.stderr.splitlines() if line.startswith("oncoseg: error:")]
    assert len(errors) == 1, done.stderr
    return errors[0]


def test_label_map_to_rtstruct_and_back_to_nifti(tmp_path):
    require_example()
    rt = tmp_path / "rt.dcm"
    done = run(
        "export", "rtstruct", SEG_NIFTI, "--reference", CT_DICOM, "-o", rt, "--names", f"{LABEL_MAP}:total"
    )
    assert done.returncode == 0, done.stderr
    assert "Liver" in done.stdout and "Kidney" not in done.stdout  # no kidney in these 20 slices
    assert dciodvfy_errors(rt)[0] == []

    back = tmp_path / "truth.nii.gz"
    done = run("export", "nifti", rt, "--reference", CT_DICOM, "-o", back)
    assert done.returncode == 0, done.stderr
    names = json.loads((tmp_path / "truth.json").read_text(encoding="utf-8"))
    labels = load_image(back).array
    scores = {name: dice(labels == int(n), example_masks()[_given(name)]) for n, name in names.items()}
    assert len(scores) == len(example_masks()) and min(scores.values()) >= 0.98, scores

    # The label map and its names file go straight back in.
    again = run("export", "seg", back, "--reference", CT_DICOM, "-o", tmp_path / "seg.dcm", "--names",
                tmp_path / "truth.json")  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert {s.SegmentLabel for s in pydicom.dcmread(tmp_path / "seg.dcm").SegmentSequence} == set(
        names.values()
    )


def _given(tg263: str) -> str:
    return next(name for name in example_masks() if standard_name(name) == tg263)


def test_binary_masks_to_seg_and_back_to_a_folder_of_masks(tmp_path):
    require_example()
    reference = load_image(CT_DICOM)
    masks = example_masks()
    files = []
    for name in ("liver", "spleen"):
        path = tmp_path / f"{name}_mask.nii.gz"
        files.append(_write_mask(path, masks[name].astype(np.uint8), reference))
    seg = tmp_path / "seg.dcm"
    done = run("export", "seg", *files, "--reference", CT_DICOM, "-o", seg, "--names", "Liver,Spleen")
    assert done.returncode == 0, done.stderr
    assert dciodvfy_errors(seg)[0] == []
    done = run("export", "nifti", seg, "--reference", CT_DICOM, "-o", tmp_path / "masks")
    assert done.returncode == 0, done.stderr
    for name in ("liver", "spleen"):
        back = load_image(tmp_path / "masks" / f"{standard_name(name)}.nii.gz").array.astype(bool)
        np.testing.assert_array_equal(back, masks[name])

    # Without --names, a binary mask is named after its file.
    done = run("export", "rtstruct", files[0], "--reference", CT_DICOM, "-o", tmp_path / "rt.dcm")
    assert done.returncode == 0, done.stderr
    assert pydicom.dcmread(tmp_path / "rt.dcm").StructureSetROISequence[0].ROIName == "liver_mask"


def test_masks_off_the_series_grid_are_refused_naming_the_difference(tmp_path):
    require_example()
    reference = load_image(CT_DICOM)
    liver = example_masks()["liver"].astype(np.uint8)

    def mask_file(name, array=liver, **geometry):
        return _write_mask(tmp_path / name, array, reference, **geometry)

    turned = np.array(reference.direction).reshape(3, 3) @ _rotation_z(20)
    cases = {
        "shape": mask_file("shape.nii.gz", array=liver[:, :, :500]),
        "spacing": mask_file("spacing.nii.gz", spacing=(1.0, 1.0, 2.0)),
        "origin": mask_file("origin.nii.gz", origin=np.add(reference.origin, (5.0, 0, 0))),
        "direction": mask_file("turned.nii.gz", direction=tuple(turned.ravel())),
    }
    reference_series = load_reference(CT_DICOM)
    for words, path in cases.items():
        with pytest.raises(DicomExportError) as error:
            masks_from_files([path], reference_series)
        message = str(error.value)
        assert words in message or (words == "direction" and "orientation" in message), message
        assert "never resampled" in message

    out = tmp_path / "out"
    line = _error_line(
        run("export", "rtstruct", cases["spacing"], "--reference", CT_DICOM, "-o", out / "rt.dcm")
    )
    assert "spacing (1, 1, 2) vs (0.977, 0.977, 2) mm" in line and "shape" not in line
    line = _error_line(run("export", "seg", SEG_NIFTI, "--reference", CT_DICOM, "-o", out / "s.dcm", "--names",
                           "1=Spleen"))  # fmt: skip
    assert "no name" in line
    line = _error_line(run("export", "nifti", SEG_NIFTI, "--reference", CT_DICOM, "-o", out / "x.nii.gz"))
    assert "DICOM" in line
    assert not out.exists() or list(out.iterdir()) == []


def _write_mask(path: Path, array: np.ndarray, reference, **geometry) -> Path:
    """``array`` as a NIfTI file on ``reference``'s grid, or with the ``spacing``/``origin``/``direction`` given."""
    itk = sitk.GetImageFromArray(array)
    itk.SetSpacing(geometry.get("spacing", reference.spacing))
    itk.SetOrigin(geometry.get("origin", reference.origin))
    itk.SetDirection(geometry.get("direction", reference.direction))
    sitk.WriteImage(itk, str(path))
    return path


def _rotation_z(degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


@pytest.mark.slow
def test_segment_writes_rtstruct_over_a_dicom_series_and_refuses_other_inputs(tmp_path):
    require_example()
    liver = example_masks()["liver"]
    z = int(np.argmax(liver.sum(axis=(1, 2))))
    ys, xs = np.nonzero(liver[z])
    box = f"{xs.min()},{ys.min()},{xs.max()},{ys.max()},{z}"
    out = tmp_path / "liver_rt.dcm"
    done = run(
        "segment", CT_DICOM, "--box", box, "-o", out, "--output-type", "rtstruct", "--names", "1=liver"
    )
    assert done.returncode == 0, done.stderr
    assert dciodvfy_errors(out)[0] == []
    from oncoseg.dicom import read_rtstruct

    back = read_rtstruct(out, CT_DICOM)
    assert list(back) == ["Liver"]
    assert back["Liver"][z].any() and dice(back["Liver"][z], liver[z]) > 0.5

    line = _error_line(run("segment", SEG_NIFTI, "--box", "10,10,40,40,5", "-o", tmp_path / "x.dcm",
                           "--output-type", "dicom_seg"))  # fmt: skip
    assert "DICOM series folder" in line
    assert not (tmp_path / "x.dcm").exists()


def test_objects_on_several_slices_and_their_refinement_as_rtstruct(tmp_path, monkeypatch, capsys):
    """`segment --object` without --3d: each object on the slices it was annotated on, named by --object in the
    RTSTRUCT; `refine` of that label map over the series keeps the label numbers. A stand-in model that paints
    each box keeps this about the CLI, not the model (in-process, no torch)."""
    require_example()
    from stand_in_models import BoxBackend

    from oncoseg import cli
    from oncoseg.dicom import read_rtstruct
    from oncoseg.predictor import Predictor

    monkeypatch.setattr(cli, "_predictor", lambda args: Predictor(BoxBackend()))
    labels = tmp_path / "labels.nii.gz"
    objects = ["--object", "liver", "--box", "100,100,200,200,5", "--box", "120,110,180,190,9",
               "--object", "tumour", "--box", "300,300,340,350,7"]  # fmt: skip
    assert cli.main(["segment", str(CT_DICOM), *objects, "-o", str(labels), "-q"]) == 0
    saved = load_image(labels).array
    assert [sorted(np.flatnonzero((saved == n).any(axis=(1, 2)))) for n in (1, 2)] == [[5, 9], [7]]
    assert (saved[9] == 1).sum() == 61 * 81 and (saved[7] == 2).sum() == 41 * 51  # the boxes as painted

    rt = tmp_path / "rt.dcm"
    assert (
        cli.main(["segment", str(CT_DICOM), *objects, "-o", str(rt), "--output-type", "rtstruct", "-q"]) == 0
    )
    contours = read_rtstruct(rt, CT_DICOM)
    assert list(contours) == ["Liver", "tumour"]
    np.testing.assert_array_equal(contours["tumour"], saved == 2)

    capsys.readouterr()
    fixed = tmp_path / "fixed.dcm"
    done = cli.main(["refine", str(CT_DICOM), "--mask", str(labels), "--label", "2", "--box", "310,310,330,330,7",
                     "-o", str(fixed), "--output-type", "rtstruct", "--names", "2=GTV", "--json"])  # fmt: skip
    out, err = capsys.readouterr()
    assert done == 0, err
    summary = json.loads(out)
    assert [o["label"] for o in summary["objects"]] == [1, 2]
    contours = read_rtstruct(fixed, CT_DICOM)
    assert list(contours) == ["Object_1", "GTV"]
    np.testing.assert_array_equal(contours["Object_1"], saved == 1)
    assert contours["GTV"].sum() == 21 * 21 and contours["GTV"][7, 310:331, 310:331].all()
