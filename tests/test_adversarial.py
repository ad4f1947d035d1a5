"""The quick subset of benchmarks/adversarial.py (~80 hostile inputs) against the CLI and a real `oncoseg serve`:
no tracebacks, no HTTP 500s, exit codes 0/2 only (0 only on valid inputs), no partial or destroyed outputs, no fake
PHI in logs, no file leaked or written outside, no crash; the server alive at the end within its memory budget."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from adversarial import COLUMNS, KIND_COLUMN, format_table, run
from hostile_inputs import category_order

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return run(tmp_path_factory.mktemp("adversarial"), quick=True)


def _failures(report, *columns: str) -> str:
    lines = [format_table(report["table"], report["totals"])]
    lines += [
        f"[{f['kind']}] {f['category']}/{f['input']} ({f['target']}): {f['evidence']}"
        for f in report["failures"]
        if KIND_COLUMN[f["kind"]] in columns
    ]
    return "\n".join(lines)


def test_every_category_is_tried(report):
    tried = {row["category"]: row["tried"] for row in report["table"]}
    expected = set(category_order())
    assert {c for c, n in tried.items() if n} >= expected
    assert 60 <= report["inputs"] <= 100


def test_no_tracebacks_http_500s_or_crashes(report):
    assert not any(report["totals"][c] for c in ("tracebacks", "http_500", "crashes")), _failures(
        report, "tracebacks", "http_500", "crashes"
    )


def test_exit_codes_and_answers_fit_the_input(report):
    assert not any(report["totals"][c] for c in ("bad_exit", "bad_status")), _failures(
        report, "bad_exit", "bad_status"
    )


def test_outputs_are_never_partial_or_destroyed(report):
    assert report["totals"]["outputs"] == 0, _failures(report, "outputs")


def test_no_fake_phi_in_logs_and_nothing_leaked(report):
    assert report["totals"]["phi"] == 0 and report["totals"]["leaks"] == 0, _failures(report, "phi", "leaks")


def test_server_survives_within_its_budget(report):
    server = report["server"]
    assert server.get("alive_at_end"), _failures(report, *COLUMNS)
    assert server.get("deaths", 0) == 0
    assert server.get("peak_rss_mb", float("inf")) <= server.get("rss_limit_mb", 0)
