"""`oncoseg evaluate`: prompt protocols and their records, the resumable result store, the runner on real data
(recorded prompts replayed to the same Dice), CLI and DDP."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from oncoseg.cli import main
from oncoseg.errors import OncoSegError
from oncoseg.evaluate.protocols import Protocol, entry_prompt, parse_protocol, prompt_entry
from oncoseg.evaluate.results import ResultStore, load_prediction, read_rows, save_prediction, summarise
from oncoseg.evaluate.runner import EvaluationConfig, evaluate, make_predictor, replay
from oncoseg.prompts import Point, Prompt


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The machine's cores are shared: the model runs on one thread here."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- protocols ------------------------------------------------------------------------------------


def square(size=64, lo=20, hi=40):
    mask = np.zeros((size, size), bool)
    mask[lo:hi, lo + 5 : hi + 5] = True
    return mask


def test_protocol_parsing():
    assert parse_protocol("box") == Protocol("box")
    assert parse_protocol("box:jitter=0.1", seed=3) == Protocol("box", jitter=0.1, seed=3)
    assert parse_protocol("points:3").points == 3
    for bad in ("boxes", "box:jitter=x", "points:0", "box:size=2", "box:jitter=1.5"):
        with pytest.raises(OncoSegError):
            parse_protocol(bad)


def test_box_protocol_is_the_tight_box_and_jitter_is_seeded_per_case():
    mask = square()
    box = Protocol("box").prompt(mask, "case-1", "polyp").box
    assert (box.x0, box.y0, box.x1, box.y1) == (25, 20, 44, 39)
    jittered = Protocol("box", jitter=0.2)
    a = jittered.prompt(mask, "case-1", "polyp").box
    assert a == jittered.prompt(mask, "case-1", "polyp").box  # same case: same box, whatever the run order
    assert a != jittered.prompt(mask, "case-2", "polyp").box
    assert a != box
    assert abs(a.x0 - box.x0) <= 0.2 * 20 + 1e-6 and abs(a.y1 - box.y1) <= 0.2 * 20 + 1e-6


def test_point_protocol_puts_every_point_inside_the_mask():
    mask = square()
    prompt = Protocol("points", points=4).prompt(mask, "c", "t", z=7)
    assert len(prompt.points) == 4
    assert all(mask[int(p.y), int(p.x)] and p.positive and p.z == 7 for p in prompt.points)


def test_text_protocol_prompts_with_the_targets_concept_name():
    assert Protocol.text_for("busi", "lesion") == "breast lesion"
    assert Protocol.text_for("msd-hippocampus", "whole") == "hippocampus"
    assert Protocol.text_for("msd-hippocampus", "Anterior") is None  # no concept: not scored with text
    with pytest.raises(OncoSegError, match="no prompt from a mask"):
        Protocol("text").prompt(square(), "c", "t")


def test_prompt_records_hold_the_exact_prompts_and_refuse_malformed_ones():
    volume = np.zeros((6, 64, 64), bool)
    volume[1:4] = square()
    volume[2, 10:12, 10:12] = True  # slice 2 is the largest
    protocol = Protocol("box", jitter=0.2, seed=5)
    propagate = protocol.record(volume, "propagate", "c", "t")
    assert propagate["kind"] == "box" and propagate["jitter"] == 0.2 and propagate["seed"] == 5
    (entry,) = propagate["prompts"]
    assert entry["slice"] == 2 and entry["points"] == []
    assert entry_prompt(entry, "here") == protocol.prompt(
        volume[2], "c", "t", z=2
    )  # the same box as the run's
    per_slice = protocol.record(volume, "per_slice", "c", "t")
    assert [e["slice"] for e in per_slice["prompts"]] == [1, 2, 3]
    assert protocol.record(np.zeros((64, 64), bool), "2d", "c", "t") is None  # nothing to prompt
    assert Protocol("text").record(volume, "propagate", "c", "t", "hippocampus") == {
        "kind": "text", "text": "hippocampus", "prompts": []
    }  # fmt: skip

    clicks = Prompt(points=(Point(3.0, 4.0, True), Point(5.5, 6.0, False), Point(1.0, 2.0, True)))
    assert prompt_entry(clicks)["points"] == [[3.0, 4.0, 1], [5.5, 6.0, 0], [1.0, 2.0, 1]]  # order and sign
    assert entry_prompt(prompt_entry(clicks), "here") == clicks
    for bad, words in (
        ({"box": [1, 2, 3]}, "4 numbers"),
        ({"points": [[1, 2, 2]]}, "label 1 or 0"),
        ({"slice": -1, "box": [0, 0, 5, 5]}, "slice"),
        ({"slice": None, "points": []}, "a box or at least one point"),
        ([1, 2, 3, 4], "an object"),
    ):
        with pytest.raises(OncoSegError, match=words) as caught:
            entry_prompt(bad, "file.jsonl: case 'a'")
        assert "\n" not in str(caught.value) and "case 'a'" in str(caught.value)


# -- result store -----------------------------------------------------------------------------------


def test_store_resumes_ignores_a_torn_line_and_refuses_other_settings(tmp_path):
    run = {"dataset": "x", "split": "test", "protocol": {"kind": "box"}, "started": "now"}
    store = ResultStore(tmp_path, run)
    rows = [{"case_id": "a", "mode": "2d", "target": "t", "category": "", "dice": 0.5, "iou": 1 / 3,
             "nsd": 0.4, "hd95": 3.0}]  # fmt: skip
    store.record("a", rows)
    with store.log_path().open("a", encoding="utf-8") as log:
        log.write('{"case_id": "b", "rows": [')  # an interrupted write
    again = ResultStore(tmp_path, {**run, "started": "later"})
    assert list(again.finished()) == ["a"]
    assert json.loads((tmp_path / "run.json").read_text(encoding="utf-8"))["started"] == "now"
    with pytest.raises(OncoSegError, match="protocol"):
        ResultStore(tmp_path, {**run, "protocol": {"kind": "points"}})
    fresh = ResultStore(tmp_path, {**run, "protocol": {"kind": "points"}}, overwrite=True)
    assert fresh.finished() == {}


def test_prediction_files_round_trip(tmp_path):
    mask = np.random.default_rng(0).random((5, 17, 23)) > 0.5
    save_prediction(tmp_path / "m.npz", mask)
    np.testing.assert_array_equal(load_prediction(tmp_path / "m.npz"), mask)


def test_summary_groups_by_mode_target_and_category():
    rows = [
        {"mode": "2d", "target": "lesion", "category": c, "dice": d, "iou": d, "nsd": d, "hd95": h}
        for c, d, h in (("benign", 0.9, 1.0), ("benign", 0.7, 2.0), ("malignant", 0.5, float("nan")))
    ]
    groups = {(g["category"]): g for g in summarise(rows)}
    assert set(groups) == {"all", "benign", "malignant"}
    assert groups["all"]["dice"]["n"] == 3 and groups["all"]["dice"]["mean"] == pytest.approx(0.7)
    assert groups["benign"]["dice"]["sd"] == pytest.approx(np.std([0.9, 0.7], ddof=1))
    assert groups["all"]["hd95"]["undefined"] == 1 and groups["all"]["hd95"]["n"] == 2


# -- the runner on real data -----------------------------------------------------------------------------


class NoPredictor:
    """Stands in for the model on a resumed run in which every case is already done."""

    def __getattr__(self, name):
        raise AssertionError(f"the model was used ({name}) although every case was already evaluated")


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_evaluate_kvasir_scores_real_cases_and_resumes(shared_data, tmp_path):
    summary = evaluate("kvasir-seg", tmp_path, split="test", limit=3, data_root=shared_data, progress=False)
    rows = read_csv(tmp_path / "cases.csv")
    assert len(rows) == 3 and {r["mode"] for r in rows} == {"2d"} and {r["units"] for r in rows} == {"px"}
    dices = [float(r["dice"]) for r in rows]
    assert min(dices) > 0.6  # LiteMedSAM with ground-truth boxes on polyps
    assert all(float(r["iou"]) <= float(r["dice"]) for r in rows)
    (group,) = summary["groups"]
    assert group["dice"]["mean"] == pytest.approx(np.mean(dices), abs=1e-6)
    assert summary["paper_dice"] == pytest.approx(0.714)
    assert all((tmp_path / r["mask_file"]).exists() for r in rows)

    again = evaluate(
        "kvasir-seg", tmp_path, split="test", limit=3, data_root=shared_data, progress=False,
        predictor=NoPredictor(),
    )  # fmt: skip
    assert again["groups"] == summary["groups"]


def outcomes(rows):
    """Each row's case, target, mode, exact Dice (None when undefined) and prompt record."""
    return [
        (r["case_id"], r["target"], r["mode"], None if np.isnan(r["dice"]) else r["dice"], r["prompt"])
        for r in rows
    ]


def test_replaying_recorded_prompts_gives_the_same_dice_on_every_case(shared_data, tmp_path):
    """Kvasir-SEG with jittered boxes: the boxes are in the per-case files, and a replay from them (a new model
    instance) reproduces each case's Dice exactly."""
    run = tmp_path / "run"
    evaluate("kvasir-seg", run, split="test", protocol=Protocol("box", jitter=0.1, seed=3), limit=2, data_root=shared_data,
             progress=False)  # fmt: skip
    assert json.loads((run / "run.json").read_text(encoding="utf-8"))["modes"] == ["2d"]  # only what ran
    rows = read_rows(run)
    logged = [
        row for line in (run / "cases.jsonl").read_text().splitlines() for row in json.loads(line)["rows"]
    ]
    assert [row["prompt"] for row in logged] == [row["prompt"] for row in rows]  # JSONL and CSV agree
    for row in rows:
        record = row["prompt"]
        assert (record["kind"], record["jitter"], record["seed"]) == ("box", 0.1, 3)
        (entry,) = record["prompts"]
        h, w = record["image_shape"]
        x0, y0, x1, y1 = entry["box"]
        assert entry["slice"] is None and 0 <= x0 < x1 <= w - 1 and 0 <= y0 < y1 <= h - 1
        assert not all(float(v).is_integer() for v in entry["box"])  # jittered: not the tight box

    again = replay(run, tmp_path / "again", progress=False)
    replayed = read_rows(tmp_path / "again")
    assert outcomes(replayed) == outcomes(rows)
    assert (
        again["run"]["protocol"] == {"kind": "recorded"} and "GT box, jitter ±0.1" in again["run"]["prompt"]
    )
    for row in rows:
        np.testing.assert_array_equal(
            load_prediction(run / row["mask_file"]), load_prediction(tmp_path / "again" / row["mask_file"])
        )


def test_cli_replays_busi_clicks_from_cases_csv(shared_data, tmp_path, capsys):
    """Three clicks per BUSI lesion, read back from cases.csv by `--prompts`: the same clicks in the same order,
    the same Dice."""
    run = tmp_path / "run"
    common = ["--split", "test", "--limit", "2", "--data", str(shared_data), "-q", "--no-report"]
    assert main(["evaluate", "busi", "--protocol", "points:3", "-o", str(run), *common]) == 0
    assert (
        main(["evaluate", "busi", "--prompts", str(run / "cases.csv"), "-o", str(tmp_path / "b"), *common])
        == 0
    )
    first, second = read_rows(run), read_rows(tmp_path / "b")
    scored = [row for row in first if row["prompt"] is not None]
    assert scored and all(len(row["prompt"]["prompts"][0]["points"]) == 3 for row in scored)
    assert all(label == 1 for row in scored for _, _, label in row["prompt"]["prompts"][0]["points"])
    assert outcomes(second) == outcomes(first)
    assert "recorded prompts from" in capsys.readouterr().out


def test_evaluate_hippocampus_in_both_3d_modes(shared_data, tmp_path):
    predictor = make_predictor(EvaluationConfig("msd-hippocampus"))
    evaluate("msd-hippocampus", tmp_path, split="test", limit=1, data_root=shared_data, progress=False,
             predictor=predictor)  # fmt: skip
    rows = read_csv(tmp_path / "cases.csv")
    assert {r["mode"] for r in rows} == {"propagate", "per_slice"}
    assert {r["units"] for r in rows} == {"mm"}
    targets = {r["target"] for r in rows}
    assert len(targets) >= 2  # anterior and posterior hippocampus are scored separately
    per_slice = [float(r["dice"]) for r in rows if r["mode"] == "per_slice"]
    assert min(per_slice) > 0.3
    assert all(r["prompt_slice"] != "" for r in rows if r["mode"] == "propagate")
    mask = load_prediction(tmp_path / rows[0]["mask_file"])
    assert mask.ndim == 3
    for row in read_rows(tmp_path):
        predicted = np.flatnonzero(load_prediction(tmp_path / row["mask_file"]).any(axis=(1, 2)))
        slices = [entry["slice"] for entry in row["prompt"]["prompts"]]
        assert len(row["prompt"]["image_shape"]) == 3 and row["prompt"]["orientation"]
        if row["mode"] == "propagate":
            assert slices == [int(row["prompt_slice"])]  # one box, on the prompted slice
        else:  # a box on every slice that holds the target: the prediction lies only there
            assert len(slices) > 1 and set(predicted.tolist()) <= set(slices)

    replay(tmp_path, tmp_path / "again", progress=False, predictor=predictor)  # embeddings cached: quick
    assert outcomes(read_rows(tmp_path / "again")) == outcomes(read_rows(tmp_path))


# -- the command ------------------------------------------------------------------------------------------------


def test_cli_evaluate_prints_the_summary(shared_data, tmp_path, capsys):
    code = main(["evaluate", "busi", "--split", "test", "--limit", "2", "--data", str(shared_data),
                 "-o", str(tmp_path), "--no-report", "-q", "--protocol", "box:jitter=0.05"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "GT box, jitter ±0.05" in out and "lesion" in out.lower() or "all" in out
    assert len(read_csv(tmp_path / "cases.csv")) == 2


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["evaluate", "no-such-dataset"], "no-such-dataset"),
        (["evaluate", "kvasir-seg", "--protocol", "circle"], "protocol"),
        (["evaluate", "msd-hippocampus", "--modes", "sideways"], "modes"),
    ],
)
def test_cli_evaluate_bad_requests_give_one_line(shared_data, tmp_path, capsys, arguments, message):
    code = main([*arguments, "--data", str(shared_data), "-o", str(tmp_path / "out"), "-q", "--no-report"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and message in err


@pytest.mark.slow
def test_evaluate_with_two_ddp_processes_matches_one_process(shared_data, tmp_path):
    """Lightning DDP over 2 CPU processes (gloo): every case once, same numbers as a single process."""
    command = [sys.executable, "-m", "oncoseg.cli", "evaluate", "kvasir-seg", "--limit", "4",
               "--data", str(shared_data), "--no-report", "-q", "--precision", "fp32"]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    two = subprocess.run([*command, "--devices", "2", "-o", str(tmp_path / "ddp")], env=env, check=False,
                         capture_output=True, encoding="utf-8", timeout=900)  # fmt: skip
    assert two.returncode == 0, two.stderr[-2000:]
    assert (tmp_path / "ddp" / "cases.jsonl").exists() and (tmp_path / "ddp" / "cases.rank1.jsonl").exists()
    one = subprocess.run([*command, "-o", str(tmp_path / "single")], env=env, check=False,
                         capture_output=True, encoding="utf-8", timeout=900)  # fmt: skip
    assert one.returncode == 0, one.stderr[-2000:]
    ddp_rows = {r["case_id"]: float(r["dice"]) for r in read_csv(tmp_path / "ddp" / "cases.csv")}
    single_rows = {r["case_id"]: float(r["dice"]) for r in read_csv(tmp_path / "single" / "cases.csv")}
    assert len(ddp_rows) == 4 and ddp_rows.keys() == single_rows.keys()
    for case_id, value in single_rows.items():
        assert ddp_rows[case_id] == pytest.approx(value, abs=1e-6)
    assert Path(tmp_path / "ddp" / "summary.json").exists()
