"""The installed ``oncoseg`` command, run as a subprocess: help, info, segment (2D and 3D), demo, and bad input
(exit code 2, one line on stderr, no output file)."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from oncoseg.cli import print_summary
from oncoseg.io import load_image
from oncoseg.samples import list_samples, sample_path

SAMPLES = list_samples()
ONCOSEG = Path(sys.executable).with_name("oncoseg")
POLYP_BOX = ",".join(map(str, SAMPLES["polyp"]["prompt"]["box"]))
CT_BOX = ",".join(map(str, SAMPLES["ct_abdomen"]["prompt"]["box"]))
CT_Z = SAMPLES["ct_abdomen"]["prompt"]["z"]


def run(*args: str) -> subprocess.CompletedProcess:
    assert ONCOSEG.is_file(), f"{ONCOSEG} missing: install the package (pip install -e .)"
    return subprocess.run(
        [str(ONCOSEG), *map(str, args)], check=False, capture_output=True, encoding="utf-8", timeout=600
    )


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


def test_help_lists_commands_and_prompt_options():
    top = run("--help")
    assert top.returncode == 0 and all(c in top.stdout for c in ("segment", "info", "demo"))
    seg = run("segment", "--help")
    assert seg.returncode == 0
    assert all(option in seg.stdout for option in ("--box", "--point", "--3d", "X0,Y0,X1,Y1[,Z]", ":neg"))
    assert (
        "--object [NAME]" in seg.stdout
        and "--spacing X,Y" in seg.stdout
        and "oncoseg segment ct.nii.gz --3d --object liver" in seg.stdout
    )
    refine = run("refine", "--help")
    assert refine.returncode == 0 and "refine" in top.stdout
    assert all(
        words in refine.stdout for words in ("--mask MASK", "--label N", "--3d, --no-3d", "never resampled")
    )
    assert run().returncode == 0  # no command: help


def test_info_prints_shape_spacing_and_orientation():
    text = run("info", sample_path("ct_abdomen"))
    assert text.returncode == 0, text.stderr
    assert "30 x 101 x 122" in text.stdout and "(z, y, x)" in text.stdout
    assert "3 x 3 x 3 mm" in text.stdout and "RAS on disk" in text.stdout
    # shape and spacing come in opposite axis orders: each line says which
    lines = {line.split()[0]: line for line in text.stdout.splitlines()}
    assert lines["shape"].endswith("(z, y, x), 1 channel(s), int16")
    assert lines["spacing"].endswith("mm  (x, y, z)")
    facts = json.loads(run("info", sample_path("polyp"), "--json").stdout)
    assert facts["shape"] == [529, 617] and facts["channels"] == 3 and facts["modality"] == "endoscopy"
    assert facts["spacing_unit"] == "px" and facts["modality_source"] == "guessed"
    lines = {line.split()[0]: line for line in run("info", sample_path("polyp")).stdout.splitlines()}
    assert lines["spacing"].startswith("spacing     1 x 1 px") and "mm" not in lines["spacing"]
    given = json.loads(run("info", sample_path("polyp"), "--spacing", "0.2", "--json").stdout)
    assert given["spacing_unit"] == "mm" and given["spacing_mm"] == [0.2, 0.2]


def test_segment_2d_prints_json_and_writes_mask_and_overlay(tmp_path):
    mask, overlay = tmp_path / "polyp_mask.png", tmp_path / "polyp_overlay.png"
    done = run(
        "segment", sample_path("polyp"), "--box", POLYP_BOX, "-o", mask, "--overlay", overlay, "--json"
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    obj = summary["objects"][0]
    assert obj["area_px2"] > 0 and obj["volume_px3"] is None and summary["output"] == str(mask)
    assert obj["unit"] == "px" and not any(key.endswith(("_mm", "_mm2")) for key in obj)  # a JPEG: pixels
    written = load_image(mask).array > 0
    assert obj["voxel_count"] == int(written.sum())
    assert dice(written, load_image(sample_path("polyp_mask.png")).array > 0) >= 0.85
    assert load_image(overlay).array.shape == (529, 617, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["polyp_mask.png", "polyp_overlay.png"]


def test_summary_table_names_size_diameters_and_files(capsys):
    summary = {
        "objects": [
            {"label": 1, "volume_ml": None, "area_mm2": 412.25, "recist_long_mm": 30.0, "recist_short_mm": 12.5,
             "score": 0.91},
            {"label": 2, "volume_ml": 2.5, "area_mm2": None, "recist_long_mm": 20.0, "recist_short_mm": 10.0,
             "score": 0.8, "slices": [3, 9]},
        ]
    }  # fmt: skip
    print_summary(summary, "m.nii.gz", "o.png")
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "object 1: 412.2 mm², RECIST long 30.0 mm, short 12.5 mm, score 0.91",
        "object 2: 2.50 mL, RECIST long 20.0 mm, short 10.0 mm, score 0.80, slices 3-9",
        "mask written to m.nii.gz, overlay to o.png",
    ]


def test_summary_of_a_picture_is_in_pixels_and_says_a_guessed_modality(capsys):
    summary = {
        "image": {"modality": "ultrasound", "modality_source": "guessed", "shape": [487, 349]},
        "objects": [
            {"label": 1, "volume_px3": None, "area_px2": 44107, "recist_long_px": 257.74, "recist_short_px": 237.1,
             "score": 0.93, "unit": "px"},
        ],
    }  # fmt: skip
    print_summary(summary, "m.png", None)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("modality ultrasound is a guess") and "--modality" in lines[0]
    assert lines[1] == "object 1: 44107 px², RECIST long 257.7 px, short 237.1 px, score 0.93"
    assert "--spacing" in lines[2] and not any("mm" in line for line in lines[:2])


def test_one_click_per_object_and_spacing_on_the_command_line(tmp_path):
    done = run("segment", POLYP, "--spacing", "0.5,0.25", "--object", "--point", "286,288", "--object", "mucosa",
               "--point", "80,40", "-o", tmp_path / "m.png", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    objects = json.loads(done.stdout)["objects"]
    assert [o["label"] for o in objects] == [1, 2] and [o["unit"] for o in objects] == ["mm", "mm"]
    assert objects[0]["area_mm2"] == pytest.approx(objects[0]["voxel_count"] * 0.125, abs=0.01)
    labels = load_image(tmp_path / "m.png").array
    assert labels[288, 286] == 1 and labels[40, 80] == 2
    refused = run(
        "segment", CT, "--box", f"{CT_BOX},{CT_Z}", "--spacing", "1,1,1", "-o", tmp_path / "c.nii.gz"
    )
    assert refused.returncode == 2 and "has its own spacing" in refused.stderr


def test_segment_3d_propagates_and_reports_volume(tmp_path):
    # Three slices of the CT sample around its prompt (a full propagation encodes all 30; `demo` does that).
    source = sitk.ReadImage(str(sample_path("ct_abdomen")))
    crop = tmp_path / "ct_crop.nii.gz"
    sitk.WriteImage(source[:, :, CT_Z - 1 : CT_Z + 2], str(crop))
    out = tmp_path / "out" / "liver.nii.gz"
    done = run("segment", crop, "--box", f"{CT_BOX},1", "--3d", "-o", out, "--json", "-q")
    assert done.returncode == 0, done.stderr
    obj = json.loads(done.stdout)["objects"][0]
    assert obj["volume_ml"] > 0 and obj["slices"] == [0, 2]
    labels = load_image(out).array
    assert labels.shape == (3, 101, 122)
    assert obj["voxel_count"] == int((labels > 0).sum())
    truth = load_image(sample_path("ct_abdomen_liver.nii.gz")).array[CT_Z - 1 : CT_Z + 2] > 0
    assert dice(labels > 0, truth) >= 0.8


# -- one object on several slices, and refining a saved mask ---------------------------------------------------


@pytest.fixture(scope="module")
def ct_five(tmp_path_factory):
    """Five slices of the CT sample around its prompt (the prompt on slice 2), the liver segmented from the
    manifest box with --3d and saved, and the reference liver on those slices."""
    folder = tmp_path_factory.mktemp("ct5")
    crop, saved = folder / "ct5.nii.gz", folder / "liver.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(sample_path("ct_abdomen")))[:, :, CT_Z - 2 : CT_Z + 3], str(crop))
    done = run("segment", crop, "--box", f"{CT_BOX},2", "--3d", "-o", saved, "-q")
    assert done.returncode == 0, done.stderr
    truth = load_image(sample_path("ct_abdomen_liver.nii.gz")).array[CT_Z - 2 : CT_Z + 3] > 0
    return crop, load_image(saved).array, saved, truth


def truth_box(truth: np.ndarray, z: int) -> str:
    ys, xs = np.nonzero(truth[z])
    return f"{xs.min()},{ys.min()},{xs.max()},{ys.max()},{z}"


def test_one_object_on_two_slices_is_corrected_on_the_second(ct_five, tmp_path):
    crop, before, _, truth = ct_five
    out = tmp_path / "liver.nii.gz"
    done = run("segment", crop, "--3d", "--object", "liver", "--box", f"{CT_BOX},2", "--box", truth_box(truth, 4),
               "-o", out, "--json", "-q")  # fmt: skip
    assert done.returncode == 0, done.stderr
    objects = json.loads(done.stdout)["objects"]
    assert len(objects) == 1 and objects[0]["slices"] == [0, 4]
    after = load_image(out).array
    assert set(np.unique(after)) == {0, 1}
    np.testing.assert_array_equal(after[:3], before[:3])  # up to the first annotated slice: the walk from it
    assert (after[4] != before[4]).sum() > 50  # the second slice's box changed that slice ...
    assert dice(after[4] > 0, truth[4]) > 0.9  # ... to what a box around the reference gives (the walk's own
    # slice 4 is as good since the CT intensity gate, so "better than before" no longer tells them apart)


def test_refine_changes_a_saved_mask_only_near_the_corrected_slice(ct_five, tmp_path):
    crop, before, saved, truth = ct_five
    out = tmp_path / "fixed.nii.gz"
    done = run("refine", crop, "--mask", saved, "--box", truth_box(truth, 1), "-o", out, "-q")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert (
        lines[0].startswith("object 1: ")
        and " mL, RECIST long " in lines[0]
        and ", slices 0-4, quality " in lines[0]
    )
    assert lines[1] == f"mask written to {out}"
    after = load_image(out).array
    changed = [int((after[z] != before[z]).sum()) for z in range(5)]
    assert changed[1] > 50 and changed[3] == changed[4] == 0, changed
    assert dice(after[1] > 0, truth[1]) > 0.9  # what a box around the reference gives (see above)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fixed.nii.gz"]


def test_refine_refuses_a_mask_on_another_grid_and_writes_nothing(ct_five, tmp_path):
    crop, _, saved, _ = ct_five
    fewer, moved = tmp_path / "fewer.nii.gz", tmp_path / "moved.nii.gz"
    mask = sitk.ReadImage(str(saved))
    sitk.WriteImage(mask[:, :, 1:], str(fewer))
    mask.SetOrigin(tuple(np.add(mask.GetOrigin(), (9.0, 0.0, 0.0))))
    sitk.WriteImage(mask, str(moved))
    out = tmp_path / "out"
    for path, words in ((fewer, "shape (4, 101, 122) vs (5, 101, 122)"), (moved, "origin")):
        done = run("refine", crop, "--mask", path, "--point", "40,40,2", "-o", out / "fixed.nii.gz")
        assert done.returncode == 2 and done.stdout == ""
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"oncoseg: error: {path}: mask does not lie on"), lines
        assert words in lines[0] and "never resampled" in lines[0]
    assert not out.exists()


@pytest.mark.parametrize(
    "args, words",
    [
        (["--box", f"{CT_BOX},2", "--object", "liver", "--box", f"{CT_BOX},3"], "before the first --object"),
        (["--object", "liver", "--box", f"{CT_BOX},2", "--box", f"{CT_BOX},2"], "two boxes for one object"),
        (
            ["--object", "liver", "--object", "gtv", "--box", f"{CT_BOX},2"],
            "no prompt given for object 'liver'",
        ),
        (["--object", "liver", "--box", f"{CT_BOX},2", "--point", "40,40,99:neg"], "slice 99 is outside"),
    ],
)
def test_bad_object_groups_exit_2_before_the_model(args, words, tmp_path):
    done = run("segment", CT, *args, "-o", tmp_path / "m.nii.gz")
    assert done.returncode == 2 and words in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_demo_writes_masks_overlays_and_results_for_every_sample(tmp_path):
    out = tmp_path / "demo"
    done = run("demo", "-o", out)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert set(report) == set(SAMPLES)
    for name, sample in SAMPLES.items():
        suffix = ".nii.gz" if "z" in sample["prompt"] else ".png"
        assert (out / f"{name}_mask{suffix}").is_file() and (out / f"{name}_overlay.png").is_file()
        assert load_image(out / f"{name}_mask{suffix}").shape == tuple(sample["shape"])
        assert 0 < report[name]["dice_vs_reference"] <= 1 and name in done.stdout
    assert report["polyp"]["dice_vs_reference"] >= 0.85
    assert report["ct_abdomen"]["objects"][0]["volume_ml"] > 0
    assert len(list(out.iterdir())) == 2 * len(SAMPLES) + 1  # no temp files left


@pytest.fixture(scope="module")
def garbage_nifti(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inputs") / "broken.nii.gz"
    path.write_bytes(b"this is not a NIfTI file at all" * 20)
    return path


CT, POLYP = sample_path("ct_abdomen"), sample_path("polyp")
BAD_REQUESTS = {
    "missing input": ([POLYP.with_name("nonesuch.nii.gz"), "--box", "1,1,5,5,0"], ".nii.gz", "no such file"),
    "corrupt input": (["GARBAGE", "--box", "1,1,5,5,0"], ".nii.gz", "cannot be read as nifti"),
    "box outside image": ([POLYP, "--box", "148,160,700,416"], ".png", "outside the image"),
    "zero-area box": ([POLYP, "--box", "148,160,424,160"], ".png", "zero area"),
    "box not numbers": ([POLYP, "--box", "a,b,c,d"], ".png", "is not numbers"),
    "slice out of range": ([CT, "--box", f"{CT_BOX},30"], ".nii.gz", "slice 30 is outside the volume"),
    "slice not whole": ([CT, "--box", f"{CT_BOX},nan"], ".nii.gz", "whole number"),
    "volume without Z": ([CT, "--box", CT_BOX, "--3d"], ".nii.gz", "give the slice index Z"),
    "3d on a 2D image": ([POLYP, "--box", POLYP_BOX, "--3d"], ".png", "needs a volume"),
    "only negative points": ([POLYP, "--point", "200,200:neg"], ".png", "only negative points"),
    "unknown backend": ([POLYP, "--box", POLYP_BOX, "--backend", "nonesuch"], ".png", "unknown backend"),
    "png mask for a volume": ([CT, "--box", f"{CT_BOX},{CT_Z}"], ".png", "cannot write this file type"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, garbage_nifti, tmp_path):
    args, suffix, words = BAD_REQUESTS[case]
    args = [garbage_nifti if a == "GARBAGE" else a for a in args]
    out = tmp_path / "out"
    out.mkdir()
    done = run("segment", *args, "-o", out / f"mask{suffix}", "--overlay", out / "overlay.png")
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("oncoseg: error:"), done.stderr
    assert words in lines[0]
    assert done.stdout == ""
    assert list(out.iterdir()) == []


def test_datasets_lists_the_registry_and_what_is_found(shared_data):
    done = subprocess.run(
        [str(ONCOSEG), "datasets", "--root", str(shared_data), "--json"],
        check=False,
        capture_output=True,
        encoding="utf-8",
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    assert rows["kvasir-seg"]["found"] and rows["kvasir-seg"]["n_cases"] == 1000
    assert rows["busi"]["paper_dice"] == 0.752
    assert not rows["isic2018"]["found"]


def test_datasets_finds_the_data_from_any_folder_and_set_root_saves_it(shared_data, tmp_path):
    """From a temporary current folder: the default root beside the repository, then a root saved with
    --set-root (in $XDG_CONFIG_HOME), then a missing one named with how to set it."""
    env = {k: v for k, v in os.environ.items() if k != "ONCOSEG_DATA"}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")

    def datasets(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(ONCOSEG), "datasets", "--json", *args], check=False, capture_output=True,
                              encoding="utf-8", timeout=120, cwd=tmp_path, env=env)  # fmt: skip

    found = {row["name"]: row["found"] for row in json.loads(datasets().stdout)}
    assert found["kvasir-seg"] and found["busi"]  # the repository's neighbour, not ./shared/data
    mine = tmp_path / "mine"
    (mine / "kvasir-seg").mkdir(parents=True)
    saved = datasets("--set-root", str(mine))
    assert saved.returncode == 0 and f"data root set to {mine}" in saved.stderr
    rows = {row["name"]: row for row in json.loads(datasets().stdout)}
    assert rows["kvasir-seg"]["path"].startswith(str(mine)) and not rows["busi"]["found"]
    env["ONCOSEG_DATA"] = str(tmp_path / "nowhere")
    missing = datasets()
    assert missing.returncode == 0 and missing.stderr.count("\n") == 1
    assert "nowhere (from $ONCOSEG_DATA) does not exist: set it with `oncoseg datasets --set-root DIR`" in (
        missing.stderr
    )
    bad = datasets("--set-root", str(tmp_path / "absent"))
    assert bad.returncode == 2 and "no such folder" in bad.stderr and len(bad.stderr.splitlines()) == 1


def test_library_warnings_are_one_line_without_uids(capsys):
    """pydicom quotes a file's UIDs in its warnings; the CLI prints them as one line with the UIDs hashed."""
    import warnings

    from oncoseg.cli import quiet_library_warnings

    quiet_library_warnings()
    try:
        with warnings.catch_warnings():  # whatever filters earlier tests' libraries left behind
            warnings.simplefilter("always")
            warnings.warn(
                "Invalid value for VR UI: '1.2.826.0.1.3680043.8.498.12345.1'", UserWarning, stacklevel=1
            )
    finally:
        logging.captureWarnings(False)
    err = capsys.readouterr().err
    assert err.startswith("oncoseg: warning: UserWarning: Invalid value for VR UI: '<uid:")
    assert "1.2.826.0.1.3680043" not in err and err.count("\n") == 1


def test_follow_mask_walks_the_hippocampus_sample_with_the_trained_decoder(tmp_path):
    """--3d gives each next slice its neighbour's mask too by default (the shipped mask-prompt decoder): on the
    bundled hippocampus sample it follows the structure far better than --no-follow-mask (the box alone)."""
    sample = SAMPLES["hippocampus"]
    box = ",".join(map(str, [*sample["prompt"]["box"], sample["prompt"]["z"]]))
    truth = load_image(sample_path(sample["mask"])).array > 0
    scores = {}
    for flag in ((), ("--no-follow-mask",), ("--follow-mask",)):
        out = tmp_path / f"mask{len(scores)}.nii.gz"
        done = run("segment", sample_path("hippocampus"), "--modality", "mri", "--box", box, "--3d", *flag,
                   "-o", out, "-q")  # fmt: skip
        assert done.returncode == 0, done.stderr
        scores[flag] = dice(load_image(out).array > 0, truth)
    assert scores[()] >= 0.6 and scores[()] > scores[("--no-follow-mask",)] + 0.05, scores
    assert scores[("--follow-mask",)] == scores[()], scores
    assert "--no-follow-mask" in run("refine", "--help").stdout
