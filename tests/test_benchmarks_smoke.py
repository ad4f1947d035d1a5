"""The benchmark scripts run end to end on a few real images and write well-formed JSON (timings not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from common import dice, glob_escape, reference_box, spread

from oncoseg.prompts import Box


def run_script(name: str, *args: str | Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, str(REPO / "benchmarks" / name), *map(str, args)]
    done = subprocess.run(
        command, check=False, cwd=REPO, env=env, capture_output=True, encoding="utf-8", timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| dataset |" in done.stdout or "| measurement |" in done.stdout


def test_dice_counts_overlap_exactly():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2, :2] = True  # 4 pixels
    b[:2, :] = True  # 8 pixels, 4 shared
    assert dice(a, b) == pytest.approx(2 * 4 / 12)
    assert dice(a, a) == 1.0
    assert dice(a, ~a) == 0.0
    assert dice(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0


def test_spread_is_even_and_keeps_ends():
    assert spread(list(range(10)), 3) == [0, 4, 9]  # linspace(0, 9, 3) = 0, 4.5, 9 (4.5 rounds to even)
    assert spread(list(range(5)), None) == list(range(5))
    assert spread(list(range(5)), 9) == list(range(5))


def test_reference_box_scales_each_axis_to_256():
    box = reference_box(Box(10, 20, 100, 200), height=400, width=200)
    np.testing.assert_allclose(box, [12.8, 12.8, 128.0, 128.0])


def test_glob_escape_makes_brackets_literal():
    assert glob_escape("a [1]*?") == "a [[]1[]][*][?]"


def test_accuracy_script_on_three_images_per_dataset(shared_data, tmp_path):
    run_script(
        "accuracy.py",
        "--datasets",
        "kvasir,busi",
        "--limit",
        "3",
        "--reference",
        "--reference-datasets",
        "kvasir,busi",
        "--data",
        shared_data,
        "--out",
        tmp_path,
    )
    result = json.loads((tmp_path / "accuracy.json").read_text(encoding="utf-8"))
    assert {"environment", "settings", "protocols", "datasets", "table"} <= result.keys()
    kvasir, busi = result["datasets"]["kvasir"], result["datasets"]["busi"]
    assert kvasir["n"] == busi["n"] == 3
    assert set(busi["ours"]) == {"all", "benign", "malignant"}  # an even spread reaches both groups
    for entry in (kvasir, busi):
        for case in entry["cases"]:
            assert 0.0 <= case["dice"] <= 1.0 and 0.0 <= case["reference_dice"] <= 1.0
    assert kvasir["ours"]["all"]["mean"] > 0.7
    assert kvasir["reference"]["all"]["mean"] > 0.7
    assert len(result["table"]) == 2 + 2 * 3  # Kvasir and BUSI (all, benign, malignant), ours and reference


@pytest.mark.slow
def test_accuracy_script_on_one_hippocampus_volume(shared_data, tmp_path):
    run_script(
        "accuracy.py", "--datasets", "hippocampus", "--limit", "1", "--data", shared_data, "--out", tmp_path
    )
    entry = json.loads((tmp_path / "accuracy.json").read_text(encoding="utf-8"))["datasets"]["hippocampus"]
    (case,) = entry["cases"]
    assert case["id"] == "hippocampus_001"
    assert 0.0 <= case["dice_propagate"] <= 1.0
    assert case["dice_per_slice"] > 0.5
    assert set(entry["ours"]) == {"propagate", "per_slice"}


def test_speed_script_quick(shared_data, tmp_path):
    run_script(
        "speed.py", "--quick", "--images", "1", "--slices", "3", "--data", shared_data, "--out", tmp_path
    )
    result = json.loads((tmp_path / "speed.json").read_text(encoding="utf-8"))
    assert result["environment"]["torch_threads"] >= 1
    assert set(result["environment"]["cpu"]["flags"]) >= {"avx512_bf16", "amx_bf16"}
    assert result["settings"]["precision"] in ("fp32", "bf16")
    assert len(result["settings"]["images"]) == 2
    measurements = result["measurements"]
    assert set(measurements) == {"encoder", "decode", "full_2d", "propagation"}
    for entry in measurements.values():
        for side in ("ours", "reference"):
            assert entry[side]["median_s"] > 0 and entry[side]["p90_s"] >= entry[side]["median_s"]
        assert entry["speedup"] > 0
    assert measurements["propagation"]["volume_shape_zyx"][0] == 3
    assert measurements["propagation"]["reference"]["slices_processed"] == 3
    assert "normalised_s" in measurements["encoder"] and result["machine_factor"] > 0


def test_paper_table_script_on_two_small_datasets(shared_data, tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "paper_table.py"), "--only", "ircadb-liver-slices,busi",
         "--limit", "2", "--data", str(shared_data), "--out", str(tmp_path)],
        check=False, cwd=REPO, capture_output=True, encoding="utf-8", timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "paper_table.json").read_text(encoding="utf-8"))
    assert [d["dataset"] for d in result["datasets"]] == ["ircadb-liver-slices", "busi"]
    busi = result["datasets"][1]
    assert busi["paper_dice"] == pytest.approx(0.752)
    assert {g["category"] for g in busi["groups"]} >= {"all"}
    assert "| Dataset |" in result["markdown"] and "BUSI" in result["markdown"]
    for entry in result["datasets"]:
        assert (tmp_path / entry["folder"] / "report.html").exists()
        assert (tmp_path / entry["folder"] / "cases.csv").exists()


def test_clicks_script_on_two_images_per_dataset(shared_data, tmp_path):
    output = tmp_path / "clicks.json"
    run_script("clicks.py", "--limit", "2", "--output", output)
    result = json.loads(output.read_text(encoding="utf-8"))
    assert set(result["results"]) == {"kvasir-seg", "busi"}
    for dataset in result["results"].values():
        assert dataset["targets"] == 2
        assert set(dataset["mean_dice"]) == {"box", "3 clicks", *result["candidate_sets"]}
        assert all(0 <= d <= 1 for d in dataset["mean_dice"].values())
        assert dataset["mean_dice"]["box"] > 0.5  # a real model on real images, not a stub
