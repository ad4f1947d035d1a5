"""Hostile requests from a fuzzing pass: outputs that cannot be written (all outputs of a call are written or none,
existing files keep their bytes, no temporary file is left), blank images, warnings of reading an image,
negative and non-finite prompt numbers on the command line, and DICOM text that breaks its value
representation. Stand-in backends keep it fast: `NoModel` fails the test if a request that should be refused
first reaches the model, `BoxBackend` paints the prompt box (as SAM does, confidently, on a blank image); one
test runs the real LiteMedSAM on an image with NaNs."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_series import dciodvfy_errors, write_series
from PIL import Image
from stand_in_models import BoxBackend

from oncoseg import cli
from oncoseg.api import segment
from oncoseg.dicom import DicomExportError, write_rtstruct, write_seg
from oncoseg.errors import EmptyResultError, OncoSegError, PromptError
from oncoseg.image import MedicalImage
from oncoseg.io import load_image, save_mask
from oncoseg.models import Backend
from oncoseg.predictor import Predictor, normalise_image
from oncoseg.prompts import Box, Prompt
from oncoseg.volume import propagate

ONCOSEG = Path(sys.executable).with_name("oncoseg")


class NoModel(Backend):
    """A backend that fails the test when asked anything: bad requests must be refused before model work."""

    name = "no-model"

    def encode(self, image):
        raise AssertionError("the model ran for a request that should have been refused before it")

    def decode(self, embedding, prompts, mask_input=None):
        raise AssertionError("the model ran for a request that should have been refused before it")


def disk(size: int = 64, offset: float = 0.0, seed: int = 0) -> np.ndarray:
    """A bright disk (radius 12) on a noisy background, float32."""
    yy, xx = np.mgrid[:size, :size]
    noise = np.random.default_rng(seed).normal(100.0, 5.0, (size, size))
    return (offset + noise + 80.0 * ((yy - size // 2) ** 2 + (xx - size // 2) ** 2 < 144)).astype(np.float32)


def hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def temporaries(folder: Path) -> list[Path]:
    return list(folder.rglob(".tmp-*"))


def fail_writing(monkeypatch, owner, attribute: str, marker: str, position: int) -> None:
    """Make ``owner.attribute`` write a few bytes and then fail with ENOSPC (disk full) when the file it writes
    (argument ``position``) has ``marker`` in its name; other files are written as usual."""
    original = getattr(owner, attribute)

    def failing(*args, **kwargs):
        target = Path(str(args[position]))
        if marker in target.name:
            target.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, attribute, failing)


def run_main(capsys, *args) -> tuple[int, str, str]:
    """``oncoseg ARGS`` in this process: (exit code, stdout, stderr)."""
    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as exit_:  # argparse
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(code: int, err: str) -> str:
    assert "Traceback" not in err, err
    assert code == 2, err
    lines = [line for line in err.splitlines() if not line.startswith("oncoseg: warning:")]
    assert len(lines) == 1 and lines[0].startswith("oncoseg: error: "), err
    return lines[0]


@pytest.fixture
def no_model(monkeypatch):
    monkeypatch.setattr(cli, "_predictor", lambda args: Predictor(NoModel()))


@pytest.fixture
def box_model(monkeypatch):
    monkeypatch.setattr(cli, "_predictor", lambda args: Predictor(BoxBackend()))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Inputs: a PNG with a disk, a blank PNG, a non-image .png, a NaN volume, a small CT DICOM series with a
    mask on its grid and an RTSTRUCT of two structures over it, a regular file and an empty folder."""
    root = tmp_path_factory.mktemp("inputs")
    paths = {
        "png": root / "disk.png",
        "blank_png": root / "blank.png",
        "garbage_png": root / "garbage.png",
        "nan_volume": root / "nan.nii.gz",
        "volume": root / "volume.nii.gz",
        "file": root / "somefile.txt",
        "empty_dir": root / "empty",
        "mask": root / "mask.nii.gz",
        "other_grid_mask": root / "other_grid.nii.gz",
        "rt": root / "two.dcm",
    }
    Image.fromarray(np.clip(disk(), 0, 255).astype(np.uint8)).save(paths["png"])
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(paths["blank_png"])
    paths["garbage_png"].write_text("not a picture at all", encoding="utf-8")
    sitk.WriteImage(
        sitk.GetImageFromArray(np.full((6, 32, 32), np.nan, np.float32)), str(paths["nan_volume"])
    )
    sitk.WriteImage(
        sitk.GetImageFromArray(np.stack([disk(32, seed=k) for k in range(6)])), str(paths["volume"])
    )
    paths["file"].write_text("a file, not a folder\n", encoding="utf-8")
    paths["empty_dir"].mkdir()
    frames = np.stack([disk(32, seed=k) for k in range(4)]).astype(np.uint16)
    paths["series"] = write_series(root / "series", frames, (1, 0, 0), (0, 1, 0))
    reference = load_image(paths["series"])
    liver = np.zeros(reference.shape, bool)
    liver[1:3, 10:22, 10:22] = True
    spleen = np.zeros(reference.shape, bool)
    spleen[1:3, 2:6, 24:30] = True
    save_mask(liver.astype(np.uint8), reference, paths["mask"])
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((4, 16, 16), np.uint8)), str(paths["other_grid_mask"]))
    write_rtstruct({"Liver": liver, "Spleen": spleen}, paths["series"], paths["rt"])
    return paths


# -- 1. outputs are a transaction ---------------------------------------------------------------------------


@pytest.fixture
def existing(tmp_path) -> Path:
    """A folder holding earlier outputs (mask.png, overlay.png, result.json) whose bytes must survive."""
    out = tmp_path / "out"
    out.mkdir()
    Image.fromarray(np.full((64, 64), 7, np.uint8)).save(out / "mask.png")
    Image.fromarray(np.full((8, 8, 3), 9, np.uint8)).save(out / "overlay.png")
    (out / "result.json").write_text('{"earlier": true}', encoding="utf-8")
    return out


ENOSPC_WRITERS = {  # output → (owner, attribute, position of the file argument)
    "mask.png": (Image.Image, "save", 1),
    "overlay.png": (Image.Image, "save", 1),
    "result.json": (Path, "write_text", 0),
}


def segment_with_three_outputs(folder: Path):
    """The disk image segmented from one box, writing mask, overlay and JSON report into ``folder``."""
    return segment(
        disk(),
        box=(16, 16, 48, 48),
        predictor=Predictor(BoxBackend()),
        output=folder / "mask.png",
        overlay=folder / "overlay.png",
        json_path=folder / "result.json",
    )


@pytest.mark.parametrize("failing", list(ENOSPC_WRITERS))
def test_a_full_disk_on_one_output_leaves_every_earlier_output_as_it_was(failing, existing, monkeypatch):
    before = hashes(existing)
    owner, attribute, position = ENOSPC_WRITERS[failing]
    fail_writing(monkeypatch, owner, attribute, failing, position)
    with pytest.raises(OncoSegError, match=rf"{failing}: cannot write \(disk full\)") as caught:
        segment_with_three_outputs(existing)
    assert "\n" not in str(caught.value)
    assert hashes(existing) == before and temporaries(existing) == []


def test_all_outputs_are_written_together_when_nothing_fails(existing):
    result = segment_with_three_outputs(existing)
    assert (load_image(existing / "mask.png").array > 0).sum() == (result.labels > 0).sum()
    assert json.loads((existing / "result.json").read_text())["objects"][0]["label"] == 1
    assert temporaries(existing) == []


@pytest.mark.parametrize("which", ["output", "overlay", "json_path"])
def test_an_output_under_a_regular_file_is_refused_before_the_model(which, existing, files):
    before = hashes(existing)
    outputs = {
        "output": existing / "mask.png",
        "overlay": existing / "overlay.png",
        "json_path": existing / "result.json",
    }
    outputs[which] = files["file"] / "sub" / Path(str(outputs[which])).name
    with pytest.raises(OncoSegError, match="somefile.txt is a file, not a folder"):
        segment(disk(), box=(16, 16, 48, 48), predictor=Predictor(NoModel()), **outputs)
    assert hashes(existing) == before and temporaries(existing) == []
    assert not (files["file"].parent / "sub").exists()


def test_a_folder_made_for_outputs_is_removed_again_when_the_call_fails(tmp_path, monkeypatch):
    fail_writing(monkeypatch, Image.Image, "save", "overlay", 1)
    with pytest.raises(OncoSegError, match="disk full"):
        segment(
            disk(),
            box=(16, 16, 48, 48),
            predictor=Predictor(BoxBackend()),
            output=tmp_path / "new" / "deeper" / "mask.png",
            overlay=tmp_path / "new" / "overlay.png",
        )
    assert list(tmp_path.iterdir()) == []


def test_the_same_file_for_two_outputs_is_refused(tmp_path):
    with pytest.raises(OncoSegError, match="given for two outputs"):
        segment(disk(), box=(16, 16, 48, 48), predictor=Predictor(NoModel()), output=tmp_path / "a.png",
                overlay=tmp_path / "a.png")  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_cli_segment_on_a_full_disk_prints_one_line_and_keeps_earlier_outputs(
    files, existing, box_model, monkeypatch, capsys
):
    before = hashes(existing)
    fail_writing(monkeypatch, Image.Image, "save", "overlay", 1)
    code, out, err = run_main(
        capsys, "segment", files["png"], "--box", "16,16,48,48", "-o", existing / "mask.png",
        "--overlay", existing / "overlay.png",
    )  # fmt: skip
    line = one_error_line(code, err)
    assert "overlay.png: cannot write (disk full)" in line and out == ""
    assert hashes(existing) == before and temporaries(existing) == []


@pytest.mark.parametrize("which", ["-o", "--overlay"])
def test_cli_segment_output_under_a_file_fails_before_the_model(which, files, tmp_path, no_model, capsys):
    outputs = {"-o": tmp_path / "mask.png", "--overlay": tmp_path / "overlay.png"}
    outputs[which] = files["file"] / "out.png"
    args = [a for pair in outputs.items() for a in pair]
    code, _out, err = run_main(capsys, "segment", files["png"], "--box", "16,16,48,48", *args)
    assert "somefile.txt is a file, not a folder" in one_error_line(code, err)
    assert list(tmp_path.iterdir()) == []


def test_cli_segment_rtstruct_and_overlay_are_written_together(
    files, tmp_path, box_model, monkeypatch, capsys
):
    (tmp_path / "rt.dcm").write_bytes(b"earlier structure set")
    (tmp_path / "overlay.png").write_bytes(b"earlier overlay")
    before = hashes(tmp_path)
    fail_writing(monkeypatch, Image.Image, "save", "overlay", 1)
    code, _out, err = run_main(
        capsys, "segment", files["series"], "--box", "8,8,24,24,1", "-o", tmp_path / "rt.dcm",
        "--output-type", "rtstruct", "--overlay", tmp_path / "overlay.png",
    )  # fmt: skip
    assert "overlay.png: cannot write (disk full)" in one_error_line(code, err)
    assert hashes(tmp_path) == before and temporaries(tmp_path) == []
    monkeypatch.undo()
    monkeypatch.setattr(cli, "_predictor", lambda args: Predictor(BoxBackend()))
    code, _out, err = run_main(
        capsys, "segment", files["series"], "--box", "8,8,24,24,1", "-o", tmp_path / "rt.dcm",
        "--output-type", "rtstruct", "--overlay", tmp_path / "overlay.png", "--names", "1=Lesion",
    )  # fmt: skip
    assert code == 0, err
    assert pydicom.dcmread(tmp_path / "rt.dcm").StructureSetROISequence[0].ROIName == "Lesion"


EXPORTS = {  # format → (output name, owner, attribute, file-argument position, marker of the failing file)
    "rtstruct": ("out.dcm", pydicom.Dataset, "save_as", 1, "out.dcm"),
    "seg": ("out.dcm", pydicom.Dataset, "save_as", 1, "out.dcm"),
    "nifti-labels": ("labels.nii.gz", Path, "write_text", 0, "labels.json"),
    "nifti-folder": ("masks", sitk, "WriteImage", 1, "Spleen"),
}


@pytest.mark.parametrize("kind", list(EXPORTS))
def test_export_on_a_full_disk_prints_one_line_and_keeps_earlier_outputs(
    kind, files, tmp_path, monkeypatch, capsys
):
    name, owner, attribute, position, marker = EXPORTS[kind]
    output = tmp_path / name
    if kind == "nifti-labels":
        output.write_bytes(b"earlier labels")
        (tmp_path / "labels.json").write_text('{"1": "earlier"}', encoding="utf-8")
    elif kind != "nifti-folder":
        output.write_bytes(b"earlier DICOM file")
    before = hashes(tmp_path)
    fail_writing(monkeypatch, owner, attribute, marker, position)
    fmt = kind.split("-")[0]
    inputs = [files["rt"]] if fmt == "nifti" else [files["mask"]]
    code, out, err = run_main(capsys, "export", fmt, *inputs, "--reference", files["series"], "-o", output)
    assert "cannot write (disk full)" in one_error_line(code, err) and out == ""
    assert hashes(tmp_path) == before and temporaries(tmp_path) == []
    if kind == "nifti-folder":
        assert not output.exists()  # the folder made for the masks went again


@pytest.mark.parametrize("fmt", ["rtstruct", "seg", "nifti"])
def test_export_output_under_a_file_is_refused_before_reading_anything(fmt, files, monkeypatch, capsys):
    def no_reading(*args, **kwargs):
        raise AssertionError(
            "the reference series was read for a request that should have been refused first"
        )

    monkeypatch.setattr("oncoseg.dicom.load_reference", no_reading)
    inputs = [files["rt"]] if fmt == "nifti" else [files["mask"]]
    output = files["file"] / ("x.nii.gz" if fmt == "nifti" else "x.dcm")
    code, _out, err = run_main(capsys, "export", fmt, *inputs, "--reference", files["series"], "-o", output)
    assert "somefile.txt is a file, not a folder" in one_error_line(code, err)


# -- 2. blank images ----------------------------------------------------------------------------------------


BLANK = {
    "all NaN": np.full((64, 64), np.nan, np.float32),
    "all zero": np.zeros((64, 64), np.float32),
    "constant": np.full((64, 64), 7, np.int16),
    "NaN and inf": np.where(np.eye(64, dtype=bool), np.inf, np.nan).astype(np.float32),
    "constant colour": np.broadcast_to(np.array([10, 200, 30], np.uint8), (64, 64, 3)).copy(),
}


@pytest.mark.parametrize("case", list(BLANK))
def test_a_blank_image_finds_nothing_before_the_model_runs(case, tmp_path):
    for prompt in ({"box": (10, 10, 40, 40)}, {"points": ["20,20"]}):
        with pytest.raises(EmptyResultError, match=r"the image is blank \(.*\) under the prompt: nothing to"):
            segment(BLANK[case], predictor=Predictor(NoModel()), output=tmp_path / "mask.png", **prompt)
    assert list(tmp_path.iterdir()) == []


def test_a_box_on_a_constant_part_of_an_image_finds_nothing():
    image = disk()
    image[:20, :20] = 5.0
    with pytest.raises(EmptyResultError, match=r"blank \(constant intensity\)"):
        segment(image, box=(2, 2, 15, 15), predictor=Predictor(NoModel()))


def test_a_blank_slice_of_a_volume_is_named():
    volume = np.stack([disk(32, seed=k) for k in range(6)])
    volume[2] = np.nan
    volume[4] = 0
    for z, reason in ((2, "no finite values"), (4, "constant intensity")):
        for prompt in ({"box": (4, 4, 28, 28, z)}, {"points": [f"16,16,{z}"]}):
            with pytest.raises(EmptyResultError) as caught:
                segment(volume, predictor=Predictor(NoModel()), **prompt)
            assert f"slice {z} is blank ({reason}) under the prompt: nothing to segment" in str(caught.value)


def test_pixels_that_the_ct_window_makes_constant_find_nothing():
    bone = MedicalImage.from_array(np.stack([disk(32, offset=2000, seed=k) for k in range(3)]), modality="ct")
    with pytest.raises(EmptyResultError, match="constant after intensity normalisation"):
        segment(bone, box=(4, 4, 28, 28, 1), predictor=Predictor(NoModel()), modality="ct")


def test_propagation_stops_at_blank_slices():
    volume = np.zeros((10, 32, 32), np.float32)
    for z in range(3, 7):
        volume[z] = disk(32, seed=z)
    result = segment(volume, box=(10, 10, 22, 22, 4), volume=True, predictor=Predictor(BoxBackend()))
    assert result.slices == [(3, 6)]
    assert (
        result.labels[3:7].any(axis=(1, 2)).all()
        and not result.labels[:3].any()
        and not result.labels[7:].any()
    )
    predictor = Predictor(BoxBackend())
    predictor.set_image(volume)
    with pytest.raises(EmptyResultError, match="slice 8 is blank"):
        propagate(predictor, Prompt(box=Box(10, 10, 22, 22, z=8)))


def test_nans_are_replaced_by_the_minimum_before_normalisation():
    image = disk(offset=1000.0)
    poisoned = image.copy()
    poisoned[:6, :6] = np.nan
    poisoned[0, 10], poisoned[1, 10] = np.inf, -np.inf
    pixels = normalise_image(MedicalImage.from_array(poisoned), None)
    finite = np.isfinite(poisoned)
    replaced = np.where(finite, poisoned, np.nanmin(np.where(finite, poisoned, np.nan)))
    replaced[0, 10] = np.nanmax(np.where(finite, poisoned, np.nan))
    expected = normalise_image(MedicalImage.from_array(replaced), None)
    assert np.isfinite(pixels).all()
    np.testing.assert_allclose(pixels, expected, atol=1e-6)


@pytest.fixture(scope="module")
def litemedsam():
    return Predictor("litemedsam")


def test_nans_in_a_normal_image_neither_crash_nor_poison_the_real_model(litemedsam):
    clean = disk(offset=1000.0)
    poisoned = clean.copy()
    poisoned[:8, :8] = np.nan
    poisoned[60:, 60:] = np.inf
    truth = clean > 1140
    result = segment(poisoned, box=(16, 16, 48, 48), predictor=litemedsam)
    mask = result.labels == 1
    assert np.isfinite(result.scores).all() and json.loads(json.dumps(result.to_dict()))
    assert 2 * (mask & truth).sum() / (mask.sum() + truth.sum()) > 0.85


def test_cli_blank_inputs_exit_2_with_one_line(files, tmp_path, no_model, capsys):
    code, _out, err = run_main(
        capsys, "segment", files["blank_png"], "--box", "5,5,40,40", "-o", tmp_path / "m.png"
    )
    assert "the image is blank (constant intensity) under the prompt" in one_error_line(code, err)
    code, _out, err = run_main(
        capsys, "segment", files["nan_volume"], "--box", "5,5,20,20,3", "--3d", "-o", tmp_path / "m.nii.gz"
    )
    assert "slice 3 is blank (" in one_error_line(code, err)
    assert list(tmp_path.iterdir()) == []


# -- 3. warnings travel -------------------------------------------------------------------------------------


WARNING = "DICOM folder: 2 unreadable files skipped"


@pytest.fixture
def warned(monkeypatch):
    """`load_image` (as the CLI, the API and the DICOM reference reader call it) adds WARNING to the metadata."""
    import oncoseg.io

    original = oncoseg.io.load_image

    def load_with_warning(*args, **kwargs):
        image = original(*args, **kwargs)
        image.metadata["warnings"] = [*image.metadata.get("warnings", []), WARNING]
        return image

    monkeypatch.setattr(oncoseg.io, "load_image", load_with_warning)


def test_result_summary_carries_the_warnings_of_reading_the_image(tmp_path):
    image = MedicalImage.from_array(disk())
    image.metadata["warnings"] = [WARNING]
    result = segment(
        image, box=(16, 16, 48, 48), predictor=Predictor(BoxBackend()), json_path=tmp_path / "r.json"
    )
    assert result.to_dict()["warnings"] == [WARNING]
    assert json.loads((tmp_path / "r.json").read_text())["warnings"] == [WARNING]
    plain = segment(disk(), box=(16, 16, 48, 48), predictor=Predictor(BoxBackend()))
    assert plain.to_dict()["warnings"] == []


def test_cli_prints_each_warning_on_stderr(files, tmp_path, warned, box_model, capsys):
    code, out, err = run_main(
        capsys, "segment", files["png"], "--box", "16,16,48,48", "-o", tmp_path / "m.png", "--json"
    )
    assert code == 0 and f"oncoseg: warning: {WARNING}" in err.splitlines()
    assert json.loads(out)["warnings"] == [WARNING]
    code, out, err = run_main(capsys, "info", files["png"])
    assert code == 0 and err.splitlines() == [f"oncoseg: warning: {WARNING}"]
    code, out, err = run_main(
        capsys, "export", "rtstruct", files["mask"], "--reference", files["series"], "-o", tmp_path / "rt.dcm"
    )
    assert code == 0 and f"oncoseg: warning: {WARNING}" in err.splitlines()
    assert f"oncoseg: warning: mask.nii.gz: {WARNING}" in err.splitlines()
    code, out, err = run_main(capsys, "segment", files["png"], "--box", "1,1,5,5,3", "-o", tmp_path / "x.png")
    assert err.splitlines()[0] == f"oncoseg: warning: {WARNING}"  # printed before the request fails
    one_error_line(code, err)


# -- 4. negative numbers on the command line ----------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt",
    [["--point", "-5,-5"], ["--box", "-5,-5,10,10"], ["--point", "-.5,3"], ["--exemplar", "-1,-1,5,5"]],
)
def test_negative_prompt_numbers_are_values_and_give_a_prompt_error(
    prompt, files, tmp_path, no_model, capsys
):
    code, _out, err = run_main(capsys, "segment", files["png"], *prompt, "-o", tmp_path / "m.png")
    assert "outside the image" in one_error_line(code, err)


def test_negative_values_are_attached_only_to_number_list_options():
    argv = [
        "segment",
        "x.png",
        "--box",
        "-1,2,3,4",
        "--point",
        "--json",
        "--slice",
        "-2",
        "--",
        "--box",
        "-1",
    ]
    assert cli.attach_negative_values(argv) == [
        "segment", "x.png", "--box=-1,2,3,4", "--point", "--json", "--slice", "-2", "--", "--box", "-1",
    ]  # fmt: skip


def test_negative_point_as_a_subprocess(files, tmp_path):
    done = subprocess.run(
        [str(ONCOSEG), "segment", str(files["png"]), "--point", "-5,-5", "-o", str(tmp_path / "m.png")],
        capture_output=True, encoding="utf-8", timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and done.stderr.splitlines() == [
        "oncoseg: error: point (-5,-5) lies outside the image (x 0..63, y 0..63)"
    ]


# -- 5. DICOM text ------------------------------------------------------------------------------------------


BAD_TEXT = {  # case → (description, words of the error)
    "backslash": ("a\\b", "contains a backslash"),
    "too long": ("x" * 65, "is 65 characters long; DICOM allows at most 64"),
    "control character": ("tab\there", "contains control characters"),
}


@pytest.mark.parametrize("writer", [write_rtstruct, write_seg])
@pytest.mark.parametrize("case", list(BAD_TEXT))
def test_both_dicom_writers_refuse_a_description_dicom_cannot_hold(writer, case, files, tmp_path):
    mask = load_image(files["mask"]).array > 0
    text, words = BAD_TEXT[case]
    with pytest.raises(DicomExportError, match="series description") as caught:
        writer({"Liver": mask}, files["series"], tmp_path / "x.dcm", series_description=text)
    assert words in str(caught.value) and "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", ["rtstruct", "seg"])
def test_export_refuses_a_backslash_description_with_one_line(fmt, files, tmp_path, capsys):
    code, _out, err = run_main(
        capsys, "export", fmt, files["mask"], "--reference", files["series"], "-o", tmp_path / "x.dcm",
        "--description", "a\\b",
    )  # fmt: skip
    assert "series description 'a\\\\b' contains a backslash" in one_error_line(code, err)
    assert list(tmp_path.iterdir()) == []


def test_text_rules_follow_the_value_representation():
    from oncoseg.dicom.reference import check_text

    assert check_text("a\\b", "ST", "comment") == "a\\b"  # ST may hold a backslash, LO and SH may not
    assert check_text("Leber_ä", "LO", "name") == "Leber_ä"
    with pytest.raises(DicomExportError, match="at most 16"):
        check_text("x" * 17, "SH", "label")


@pytest.mark.parametrize("writer", [write_rtstruct, write_seg])
def test_non_ascii_names_and_descriptions_give_valid_dicom(writer, files, tmp_path):
    mask = load_image(files["mask"]).array > 0
    path = writer({"Läsion": mask}, files["series"], tmp_path / "x.dcm", series_description="Kontur ä")
    assert pydicom.dcmread(path).SpecificCharacterSet == "ISO_IR 192"
    errors, _warnings = dciodvfy_errors(path)
    assert errors == []


# -- 6. non-finite prompts ----------------------------------------------------------------------------------


NON_FINITE = [
    ["--box", "nan,1,20,20"], ["--box", "1,1,inf,20"], ["--box", "1e400,1,20,20"], ["--box", "-inf,1,20,20"],
    ["--point", "inf,2"], ["--point", "nan,nan"], ["--point", "1,1e400"], ["--box", "1,1,20,20,nan"],
]  # fmt: skip


@pytest.mark.parametrize("prompt", NON_FINITE, ids=" ".join)
def test_non_finite_prompts_on_the_command_line_give_one_line(prompt, files, tmp_path, no_model, capsys):
    code, _out, err = run_main(capsys, "segment", files["png"], *prompt, "-o", tmp_path / "m.png")
    one_error_line(code, err)


@pytest.mark.parametrize(
    "prompt", [{"box": (np.nan, 1, 20, 20)}, {"box": (1, 1, float("inf"), 20)}, {"points": [(np.inf, 2)]},
               {"points": [(1, float("1e400"))]}, {"box": (1, 1, 20, 20, np.nan), "volume": True}],
)  # fmt: skip
def test_non_finite_prompts_in_the_api_raise_a_prompt_error(prompt):
    image = np.stack([disk(32)] * 3) if "volume" in prompt else disk()
    with pytest.raises(PromptError):
        segment(image, predictor=Predictor(NoModel()), **prompt)


# -- the sweep ----------------------------------------------------------------------------------------------


SWEEP = {
    "missing input": ["segment", "{tmp}/nonesuch.png", "--box", "1,1,5,5", "-o", "{tmp}/m.png"],
    "empty folder": ["segment", "{empty_dir}", "--box", "1,1,5,5,0", "-o", "{tmp}/m.nii.gz"],
    "not a picture": ["segment", "{garbage_png}", "--box", "1,1,5,5", "-o", "{tmp}/m.png"],
    "three numbers": ["segment", "{png}", "--box", "1,2,3", "-o", "{tmp}/m.png"],
    "letters": ["segment", "{png}", "--box", "a,b,c,d", "-o", "{tmp}/m.png"],
    "bad point suffix": ["segment", "{png}", "--point", "5,5:maybe", "-o", "{tmp}/m.png"],
    "points and boxes": ["segment", "{png}", "--box", "1,1,9,9", "--box", "2,2,8,8", "--point", "3,3", "-o",
                         "{tmp}/m.png"],
    "zero area": ["segment", "{png}", "--box", "5,5,5,20", "-o", "{tmp}/m.png"],
    "no prompt": ["segment", "{png}", "-o", "{tmp}/m.png"],
    "only negative point": ["segment", "{png}", "--point", "5,5:neg", "-o", "{tmp}/m.png"],
    "negative point": ["segment", "{png}", "--point", "-3,-40", "-o", "{tmp}/m.png"],
    "huge box": ["segment", "{png}", "--box", "0,0,1e300,1e300", "-o", "{tmp}/m.png"],
    "mask under a file": ["segment", "{png}", "--box", "16,16,48,48", "-o", "{file}/m.png"],
    "mask is a folder": ["segment", "{png}", "--box", "16,16,48,48", "-o", "{empty_dir}"],
    "mask suffix": ["segment", "{png}", "--box", "16,16,48,48", "-o", "{tmp}/m.txt"],
    "png mask of a volume": ["segment", "{volume}", "--box", "4,4,20,20,2", "-o", "{tmp}/m.png"],
    "overlay suffix": ["segment", "{png}", "--box", "16,16,48,48", "-o", "{tmp}/m.png", "--overlay", "{tmp}/o.jpg"],
    "overlay under a file": ["segment", "{png}", "--box", "16,16,48,48", "-o", "{tmp}/m.png", "--overlay",
                             "{file}/o.png"],
    "overlay is the mask": ["segment", "{png}", "--box", "16,16,48,48", "-o", "{tmp}/m.png", "--overlay",
                            "{tmp}/m.png"],
    "name too long": ["segment", "{png}", "--box", "16,16,48,48", "-o", "{tmp}/" + "n" * 300 + ".png"],
    "3d on a picture": ["segment", "{png}", "--box", "16,16,48,48", "--3d", "-o", "{tmp}/m.png"],
    "slice outside": ["segment", "{volume}", "--box", "4,4,20,20,60", "-o", "{tmp}/m.nii.gz"],
    "volume without slice": ["segment", "{volume}", "--box", "4,4,20,20", "-o", "{tmp}/m.nii.gz"],
    "rtstruct of a picture": ["segment", "{png}", "--box", "16,16,48,48", "--output-type", "rtstruct", "-o",
                              "{tmp}/rt.dcm"],
    "rtstruct under a file": ["segment", "{series}", "--box", "8,8,24,24,1", "--output-type", "rtstruct", "-o",
                              "{file}/rt.dcm"],
    "bad names": ["segment", "{series}", "--box", "8,8,24,24,1", "--output-type", "dicom_seg", "-o",
                  "{tmp}/seg.dcm", "--names", "1="],
    "blank picture": ["segment", "{blank_png}", "--point", "20,20", "-o", "{tmp}/m.png"],
    "empty text": ["segment", "{png}", "--text", " ", "-o", "{tmp}/m.png"],
    "text and box": ["segment", "{png}", "--text", "polyp", "--box", "1,1,9,9", "-o", "{tmp}/m.png"],
    "info missing": ["info", "{tmp}/nonesuch.nii.gz"],
    "info not a picture": ["info", "{garbage_png}"],
    "info empty folder": ["info", "{empty_dir}"],
    "info a text file": ["info", "{file}"],
    "export missing reference": ["export", "rtstruct", "{mask}", "--reference", "{tmp}/nonesuch", "-o",
                                 "{tmp}/rt.dcm"],
    "export reference is a file": ["export", "seg", "{mask}", "--reference", "{file}", "-o", "{tmp}/seg.dcm"],
    "export output is a folder": ["export", "rtstruct", "{mask}", "--reference", "{series}", "-o", "{empty_dir}"],
    "export output under a file": ["export", "seg", "{mask}", "--reference", "{series}", "-o", "{file}/s.dcm"],
    "export long description": ["export", "seg", "{mask}", "--reference", "{series}", "-o", "{tmp}/s.dcm",
                                "--description", "d" * 70],
    "export backslash description": ["export", "rtstruct", "{mask}", "--reference", "{series}", "-o",
                                     "{tmp}/rt.dcm", "--description", "a\\b"],
    "export off the grid": ["export", "rtstruct", "{other_grid_mask}", "--reference", "{series}", "-o",
                            "{tmp}/rt.dcm"],
    "export bad names": ["export", "rtstruct", "{mask}", "--reference", "{series}", "-o", "{tmp}/rt.dcm",
                         "--names", "1="],
    "export input not a mask": ["export", "rtstruct", "{garbage_png}", "--reference", "{series}", "-o",
                                "{tmp}/rt.dcm"],
    "export nifti of two files": ["export", "nifti", "{rt}", "{rt}", "--reference", "{series}", "-o",
                                  "{tmp}/l.nii.gz"],
    "export nifti of a picture": ["export", "nifti", "{png}", "--reference", "{series}", "-o", "{tmp}/l.nii.gz"],
    "export nifti into a file": ["export", "nifti", "{rt}", "--reference", "{series}", "-o", "{file}"],
}  # fmt: skip


@pytest.mark.parametrize("case", list(SWEEP))
def test_sweep_of_bad_requests_gives_one_line_and_exit_2(case, files, tmp_path, no_model, capsys):
    work = tmp_path / "work"
    work.mkdir()
    names = {key: str(path) for key, path in files.items()} | {"tmp": str(work)}
    code, out, err = run_main(capsys, *[a.format(**names) for a in SWEEP[case]])
    one_error_line(code, err)
    assert out == "" and list(work.iterdir()) == []


@pytest.mark.parametrize("case", ["mask under a file", "overlay is the mask", "export backslash description"])
def test_sweep_cases_as_subprocesses(case, files, tmp_path):
    names = {key: str(path) for key, path in files.items()} | {"tmp": str(tmp_path)}
    done = subprocess.run(
        [str(ONCOSEG), *[a.format(**names) for a in SWEEP[case]]],
        capture_output=True, encoding="utf-8", timeout=300, check=False,
    )  # fmt: skip
    one_error_line(done.returncode, done.stderr)
    assert list(tmp_path.iterdir()) == []
