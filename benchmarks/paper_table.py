"""The preprint's benchmark table (Table 7) on every labelled dataset in ../shared/data, by `oncoseg evaluate`.

One evaluation folder per dataset under ``benchmarks/results/eval/`` (per-case CSV, summary, report.md/.html)
and ``benchmarks/results/paper_table.json`` with the summary groups beside the paper's Dice. Resumable: an
interrupted run continues where it stopped. The model is zero-shot here (nothing was trained on these data), so
the small datasets are scored on all their cases; the others on their fixed test split.

Run: ``PYTHONPATH=src python benchmarks/paper_table.py [--only kvasir-seg,busi] [--limit N] [--protocol box]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import DEFAULT_DATA, DEFAULT_OUT, environment, require_data, write_json

from oncoseg.data import get_info
from oncoseg.evaluate.report import results_table, write_report
from oncoseg.evaluate.results import write_json as write_results_json
from oncoseg.evaluate.runner import EvaluationConfig, evaluate, make_predictor

# Our datasets whose nearest number in the preprint is another dataset's: the 3D-IRCADb liver slices are cut
# from the 3D-IRCADb volumes the paper scored (Dice 0.621).
PAPER_COUNTERPART = {"ircadb-liver-slices": "ircadb"}

# dataset → (split, case limit or None, note)
PLAN: dict[str, tuple[str | None, int | None, str]] = {
    "kvasir-seg": ("test", None, "the given test list (100 images)"),
    "busi": (None, None, "all images (normal ones, without a lesion, are listed but not scored)"),
    "msd-hippocampus": ("test", 26, "26 of the 52 test volumes, evenly spread"),
    "brats2015": (None, None, "all 4 sample volumes"),
    "ircadb-liver-slices": (None, None, "all 36 slices"),
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated subset of " + ",".join(PLAN))
    parser.add_argument("--limit", type=int, help="at most N cases per dataset (a quick look)")
    parser.add_argument("--protocol", default="box", help="prompt protocol (default: box)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with the shared datasets")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for paper_table.json and eval/")
    parser.add_argument("--overwrite", action="store_true", help="start every dataset again")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in (args.only or ",".join(PLAN)).split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(PLAN))
    if unknown:
        parser.error(f"unknown dataset(s) {', '.join(unknown)}: choose from {', '.join(PLAN)}")
    args.datasets = chosen
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    data = require_data(args.data)
    predictor = make_predictor(EvaluationConfig("kvasir-seg", precision=args.precision))
    folders, entries = [], []
    for name in args.datasets:
        split, limit, note = PLAN[name]
        limit = min(filter(None, (limit, args.limit)), default=None)
        folder = args.out / "eval" / f"{name}-{split or 'all'}-{args.protocol.replace(':', '-')}"
        began = time.perf_counter()
        summary = evaluate(
            name, folder, split, args.protocol, overwrite=args.overwrite, predictor=predictor,
            limit=limit, precision=args.precision, data_root=str(data),
        )  # fmt: skip
        info = get_info(name)
        if name in PAPER_COUNTERPART:
            summary["paper_dice"] = get_info(PAPER_COUNTERPART[name]).paper_dice
            summary["paper_note"] = f"the paper's {get_info(PAPER_COUNTERPART[name]).title} volumes"
            write_results_json(folder / "summary.json", summary)
        write_report(folder)
        folders.append(folder)
        entries.append(
            {
                "dataset": name,
                "title": info.title,
                "split": split or "all",
                "selection": note if limit == PLAN[name][1] else f"{limit} cases",
                "folder": str(folder.relative_to(args.out)),
                "paper_dice": summary["paper_dice"],
                "paper_note": summary.get("paper_note"),
                "seconds": round(time.perf_counter() - began, 1),
                "groups": summary["groups"],
                "prompt": summary["run"]["prompt"],
            }
        )
    table = results_table(folders)
    result = {
        "benchmark": "paper_table",
        "environment": environment(),
        "protocol": args.protocol,
        "precision": predictor.backend.precision,
        "datasets": entries,
        "markdown": table,
    }
    path = write_json(result, args.out, "paper_table")
    print(table)
    print(f"\nwrote {path}")
    return result


if __name__ == "__main__":
    main()
