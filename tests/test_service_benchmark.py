"""`benchmarks/service_latency.py --quick` runs end to end against a real server and writes well-formed JSON
(wall-clock times are reported, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.service, pytest.mark.slow]


def test_quick_benchmark_writes_its_table_and_json(tmp_path, shared_data):
    output = tmp_path / "service_latency.json"
    command = [
        sys.executable, str(REPO / "benchmarks/service_latency.py"), "--quick", "--slices", "6", "--clients", "3", "--seconds", "4",
        "--think", "0.5", "--views", "3", "--threads", "1", "--output", str(output),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, encoding="utf-8", check=False, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
    assert "| first click on a new 512×512 slice | 6 |" in done.stdout
    result = json.loads(output.read_text(encoding="utf-8"))
    assert result["first_click_ms"]["n"] == 6 and result["later_click_ms"]["n"] == 6
    assert result["viewed_first_click_ms"]["n"] == result["viewed_reference_click_decode_ms"]["n"] == 3
    assert result["viewed_later_click_ms"]["n"] == 3 and result["viewed_first_click_wait_ms"]["n"] == 3
    assert result["viewed_ready_slices_after_clicks"]["n"] == 3 and result["threads"] == 1
    assert result["reference_encoder_ms"]["n"] == result["reference_click_decode_ms"]["n"] == 6
    assert result["first_click_server_over_reference"] > 0  # paired with the server's clicks, one per slice
    load = result["load"]
    assert load["errors"] == 0 and load["health_failures"] == 0, load
    assert set(load["statuses"]) <= {"200", "429", "503"} and load["statuses"].get("200", 0) >= 1
    assert 0 < load["cache_high_water_mb"] <= load["budget_mb"]
    jobs = result["jobs"]  # 3D jobs: a propagation to its total, a correction, a cancel that stops the job
    assert (
        jobs["propagate"]["state"] == "done"
        and jobs["propagate"]["slices_done"] == jobs["propagate"]["total"]
    )
    assert jobs["propagate"]["first_slice_ms"] <= jobs["propagate"]["job_ms"]
    assert jobs["correct"]["state"] == "done" and jobs["cancel"]["state"] == "cancelled"
    assert jobs["cancel"]["slices_done"] < jobs["cancel"]["total"] and jobs["poll_ms"]["n"] >= 1
    assert set(result["meets"]) == {
        "first_click",
        "later_click",
        "viewed_click",
        "viewed_later_click",
        "no_errors",
        "health_throughout",
        "memory_under_budget",
    }
