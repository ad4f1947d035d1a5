"""`oncoseg evaluate` as a thin shell: the default output folder and the single-process/DDP choice live in
`oncoseg.evaluate.run_evaluation`; ``--protocol interactive`` runs `oncoseg.evaluate.interactive` and writes
``interactive.json``. A stand-in model (paints the prompt's box) keeps these about the command, not the model."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from stand_in_models import BoxBackend

from oncoseg.cli import main
from oncoseg.evaluate import default_output_folder
from oncoseg.models.spec import ModelSpec
from oncoseg.predictor import Predictor

DOCS = Path(__file__).resolve().parents[1] / "docs" / "evaluation.md"


def test_default_output_folder_names_dataset_split_and_protocol():
    assert default_output_folder("busi", "all", "box:jitter=0.1") == Path(
        "eval-output/busi-all-box-jitter0.1"
    )
    assert default_output_folder("kvasir-seg", None, "points:3") == Path(
        "eval-output/kvasir-seg-all-points-3"
    )


def test_more_than_one_process_goes_through_ddp_with_the_weights_in_the_environment(
    tmp_path, monkeypatch, capsys
):
    from oncoseg.evaluate import distributed
    from oncoseg.models.sam3 import WEIGHTS_ENV

    monkeypatch.setenv(WEIGHTS_ENV, "unset")  # restored after the test
    calls = []
    monkeypatch.setattr(
        distributed, "evaluate_distributed", lambda *args: calls.append(args)
    )  # a worker: None
    code = main(["evaluate", "busi", "--devices", "2", "--weights", str(tmp_path), "--split", "all", "-q"])
    assert code == 0 and capsys.readouterr().out == ""  # a worker process prints nothing
    config, out, devices, nodes, accelerator, overwrite, progress = calls[0]
    assert (config.dataset, config.split, str(out)) == ("busi", None, "eval-output/busi-all-box")
    assert (devices, nodes, accelerator, overwrite, progress) == (2, 1, "cpu", False, False)
    import os

    assert os.environ[WEIGHTS_ENV] == str(tmp_path.resolve())


def test_interactive_protocol_prints_the_curve_and_writes_interactive_json(
    shared_data, tmp_path, monkeypatch, capsys
):
    specs = []

    def build(self, **_options):
        specs.append(self)
        return Predictor(BoxBackend())

    monkeypatch.setattr(ModelSpec, "build_predictor", build)
    code = main(["evaluate", "msd-hippocampus", "--protocol", "interactive", "--limit", "1", "--clicks", "1",
                 "--data", str(shared_data), "-o", str(tmp_path), "--precision", "fp32"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert specs[0].backend == "litemedsam" and specs[0].precision == "fp32"
    document = json.loads((tmp_path / "interactive.json").read_text(encoding="utf-8"))
    assert document["settings"]["clicks"] == 1 and document["settings"]["initial"] == "box2d"
    assert document["dataset"] == "msd-hippocampus" and document["split"] == "test"
    [case] = document["cases"]
    assert case["target"] == "whole" and len(case["dice"]) == 2 and 0 < case["dice"][0] <= 1
    lines = captured.out.splitlines()
    assert lines[0] == "msd-hippocampus (test split), interactive: box2d + 1 click(s)"
    row = next(line for line in lines if line.startswith("msd-hippocampus/whole"))
    assert f"{case['dice'][0]:.3f} {case['dice'][1]:.3f}" in row
    assert lines[-1] == f"per-case results: {tmp_path / 'interactive.json'}"
    assert f"{case['case_id']}/whole: Dice" in captured.err  # the progress line of the target


def test_interactive_protocol_refuses_pictures_and_ddp_in_one_line(shared_data, tmp_path, capsys):
    for arguments, words in (
        (["kvasir-seg"], "2D dataset"),
        (["msd-hippocampus", "--devices", "2"], "one process"),
    ):
        code = main(["evaluate", *arguments, "--protocol", "interactive", "--data", str(shared_data),
                     "-o", str(tmp_path / "out"), "-q"])  # fmt: skip
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and words in err, err
    assert not (tmp_path / "out" / "interactive.json").exists()


def test_prompts_from_another_tools_jsonl_are_used_as_given(shared_data, tmp_path, monkeypatch, capsys):
    """A file written by someone else's script (one row per line, the documented record) prompts exactly these
    cases: the stand-in model paints the given box, so the prediction is that box."""
    monkeypatch.setattr(ModelSpec, "build_predictor", lambda self, **_options: Predictor(BoxBackend()))
    record = {"prompts": [{"slice": None, "box": [10, 20, 50, 60], "points": [[30, 40, 1], [12, 22, 0]]}]}
    prompts = tmp_path / "mine.jsonl"
    prompts.write_text(
        json.dumps({"case_id": "benign (1)", "target": "lesion", "mode": "2d", "prompt": record}) + "\n"
    )
    out = tmp_path / "out"
    code = main(["evaluate", "busi", "--split", "all", "--prompts", str(prompts), "--data", str(shared_data),
                 "-o", str(out), "-q", "--no-report"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    with open(out / "cases.csv", newline="") as handle:
        (row,) = csv.DictReader(handle)
    assert row["case_id"] == "benign (1)" and float(row["pred_voxels"]) == 41 * 41
    assert json.loads(row["prompt"]) == record  # recorded as given, clicks in their order
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert run["protocol"] == {"kind": "recorded"} and run["prompts"] == str(prompts.resolve())
    assert run["modes"] == ["2d"]

    # the reading script of docs/evaluation.md, as printed there, on this folder
    script = DOCS.read_text(encoding="utf-8").split("```python\n")[1].split("```")[0]
    assert script.count("\n") <= 12
    reader = tmp_path / "read_cases.py"
    reader.write_text(script.replace('"runs/kvasir-jitter"', repr(str(out))), encoding="utf-8")
    printed = subprocess.run([sys.executable, str(reader)], capture_output=True, encoding="utf-8", check=True)
    assert printed.stdout.split() == ["benign", "(1)", "lesion", "2d", row["dice"], "None", "[10,", "20,",
                                          "50,", "60]", "[[30,", "40,", "1],", "[12,", "22,", "0]]"]  # fmt: skip


def test_replay_and_prompt_refusals_are_one_line_and_write_nothing(shared_data, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text(json.dumps({"case_id": "nope", "target": "lesion", "prompt": None}) + "\n")
    bad_box = tmp_path / "bad.jsonl"
    bad_box.write_text(
        json.dumps({"case_id": "benign (1)", "target": "lesion", "prompt": {"prompts": [{"box": [1, 2]}]}})
        + "\n"
    )
    for arguments, words in (
        ([], "give a dataset"),
        (["busi", "--prompts", str(unknown), "--protocol", "points"], "--prompts replaces --protocol"),
        (["--replay", str(tmp_path / "empty")], "no run.json"),
        (["busi", "--split", "all", "--prompts", str(unknown)], "does not have (first: 'nope')"),
        (["busi", "--split", "all", "--prompts", str(bad_box)], "box must be 4 numbers"),
        (["busi", "--prompts", str(tmp_path / "missing.jsonl")], "no prompts at"),
    ):
        code = main(["evaluate", *arguments, "--data", str(shared_data), "-o", str(tmp_path / "out"), "-q"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and words in err, err
    assert not (tmp_path / "out").exists()
