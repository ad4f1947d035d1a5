"""Click accuracy of the default backend: Dice from clicks alone (no box), on real test splits.

    .venv/bin/python benchmarks/clicks.py                  # Kvasir-SEG and BUSI test splits (about 5 minutes)
    .venv/bin/python benchmarks/clicks.py --limit 10       # smoke run

LiteMedSAM was trained with boxes only, so a click-only prompt is answered by decoding boxes of several sizes
around the clicks (with the clicks) and keeping the best-scoring mask that contains them. This measures that path
as the service and the web page use it: 1 click and 3 clicks, placed inside the ground truth by the evaluation's
``points`` protocol (seeded, so every run clicks the same pixels), beside the GT-box Dice of the same images; and
the candidate-box ablation that chose the default (six sizes): each set of sizes decodes one box per size.

Prints a Markdown table, writes ``benchmarks/results/clicks.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from common import git_commit, save_json

from oncoseg.data.adapters import open_dataset
from oncoseg.evaluate.metrics import dice
from oncoseg.evaluate.protocols import Protocol
from oncoseg.predictor import Predictor

OUT = Path(__file__).resolve().parent / "results"
DATASETS = ("kvasir-seg", "busi")
CANDIDATE_SETS = {
    "6 sizes (default)": (0.03, 0.06, 0.1, 0.15, 0.22, 0.3),
    "4 sizes": (0.04, 0.09, 0.17, 0.3),
    "3 sizes": (0.05, 0.12, 0.25),
    "2 sizes": (0.06, 0.18),
}


def run(dataset: str, limit: int | None, predictor: Predictor) -> dict:
    backend = predictor.backend
    default = backend.click_box_fractions
    one, three, box = Protocol("points", points=1), Protocol("points", points=3), Protocol("box")
    scores: dict[str, list[float]] = {"box": [], "3 clicks": [], **{name: [] for name in CANDIDATE_SETS}}
    cases = open_dataset(dataset).cases("test")[:limit]
    started = time.perf_counter()
    for case in cases:
        image, truths = case.load()
        predictor.set_image(image, case.modality)
        for target, truth in truths.items():
            if not truth.any():
                continue
            keys = (case.case_id, target)
            scores["box"].append(dice(predictor.predict(box.prompt(truth, *keys)).masks[0], truth))
            scores["3 clicks"].append(dice(predictor.predict(three.prompt(truth, *keys)).masks[0], truth))
            for name, fractions in CANDIDATE_SETS.items():
                backend.click_box_fractions = fractions
                try:
                    scores[name].append(dice(predictor.predict(one.prompt(truth, *keys)).masks[0], truth))
                finally:
                    backend.click_box_fractions = default
    return {
        "cases": len(cases),
        "targets": len(scores["box"]),
        "seconds": round(time.perf_counter() - started, 1),
        "mean_dice": {name: round(float(np.mean(values)), 4) for name, values in scores.items()},
        "median_dice": {name: round(float(np.median(values)), 4) for name, values in scores.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, help="first N test cases per dataset (default: all)")
    parser.add_argument("--output", help="JSON path (default benchmarks/results/clicks.json)")
    args = parser.parse_args(argv)
    predictor = Predictor()
    results = {name: run(name, args.limit, predictor) for name in DATASETS}
    document = {
        "command": " ".join(["benchmarks/clicks.py", *(argv if argv is not None else sys.argv[1:])]),
        "git_commit": git_commit(),
        "protocol": "points (seed 0): clicks inside the ground truth; candidate sets apply to the 1-click rows",
        "candidate_sets": {name: list(sizes) for name, sizes in CANDIDATE_SETS.items()},
        "machine": {"cpus": os.cpu_count()},
        "results": results,
    }
    output = save_json(document, Path(args.output or OUT / "clicks.json"))
    columns = ["box", "3 clicks", *CANDIDATE_SETS]
    print("| dataset | n | GT box | 3 clicks | " + " | ".join(f"1 click, {c}" for c in CANDIDATE_SETS) + " |")
    print("|---" * (len(columns) + 2) + "|")
    for name, result in results.items():
        cells = " | ".join(f"{result['mean_dice'][c]:.3f}" for c in columns)
        print(f"| {name} | {result['targets']} | {cells} |")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
