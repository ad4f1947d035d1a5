"""Corrective clicks on 2D images: Dice after one click and after each of up to 4 corrections, and the time a
correction takes, on real test splits. This is the path the service's and the web page's later clicks take
(`Session.refine`: the clicks given so far with the current extent as the box; exclude clicks also tried
with boxes that leave them out).

    .venv/bin/python benchmarks/corrections.py --limit 40     # 40 Kvasir-SEG + 40 BUSI test images
    .venv/bin/python benchmarks/corrections.py --limit 5      # smoke run

The first click is the evaluation's ``points`` protocol (seeded, inside the truth); each correction is the
CVPR 2025 challenge's rule on the 2D error (`oncoseg.evaluate.interactive.next_click`: the centre of the
largest error region, include where the truth is, exclude elsewhere). The time is the decoding of one
correction in this process (the embedding is cached), beside the first click's decoding.

Prints a Markdown table, writes ``benchmarks/results/corrections.json``.
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
from oncoseg.errors import EmptyResultError
from oncoseg.evaluate.interactive import next_click
from oncoseg.evaluate.metrics import dice
from oncoseg.evaluate.protocols import Protocol
from oncoseg.predictor import Predictor
from oncoseg.prompts import Point, Prompt
from oncoseg.session import Session

OUT = Path(__file__).resolve().parent / "results"
DATASETS = ("kvasir-seg", "busi")
CORRECTIONS = 4


def run(dataset: str, limit: int | None, predictor: Predictor) -> dict:
    one = Protocol("points", points=1)
    curves, first_ms, correction_ms, exclude_ms = [], [], [], []
    cases = open_dataset(dataset).cases("test")[:limit]
    for case in cases:
        image, truths = case.load()
        session = Session(image, predictor, modality=case.modality)
        for target, truth in truths.items():
            if not truth.any():
                continue
            session.objects.clear()
            prompt = one.prompt(truth, case.case_id, target)
            session.predictor.embedding(None)  # encoded before the clock starts
            start = time.perf_counter()
            obj = session.segment(prompt)
            first_ms.append(1000 * (time.perf_counter() - start))
            curve = [dice(obj.mask, truth)]
            for _ in range(CORRECTIONS):
                click = next_click(obj.mask[None], truth[None])
                if click is None:
                    curve.append(curve[-1])
                    continue
                point = Point(click[0].x, click[0].y, click[0].positive)
                start = time.perf_counter()
                try:
                    session.refine(obj, Prompt(points=(point,)))
                except EmptyResultError:
                    pass  # the correction would remove everything: the result stays
                elapsed = 1000 * (time.perf_counter() - start)
                correction_ms.append(elapsed)
                if any(not p.positive for p in obj.anchors[None].points):
                    exclude_ms.append(elapsed)
                curve.append(dice(obj.mask, truth))
            curves.append(curve)
    curves_array = np.asarray(curves)
    return {
        "cases": len(cases),
        "targets": len(curves),
        "mean_dice_per_click": [round(float(v), 4) for v in curves_array.mean(axis=0)],
        "corrections_that_hurt": int(np.sum(np.diff(curves_array, axis=1) < -0.01)),
        "first_click_ms": percentiles(first_ms),
        "correction_ms": percentiles(correction_ms),
        "correction_with_exclude_ms": percentiles(exclude_ms),
    }


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50": round(float(np.percentile(values, 50)), 1),
            "p95": round(float(np.percentile(values, 95)), 1)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, help="first N test cases per dataset (default: all)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--output", help="JSON path (default benchmarks/results/corrections.json)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    predictor = Predictor()
    results = {name: run(name, args.limit, predictor) for name in DATASETS}
    document = {
        "command": " ".join(["benchmarks/corrections.py", *(argv if argv is not None else sys.argv[1:])]),
        "git_commit": git_commit(),
        "encoder": getattr(predictor.backend, "encoder_name", None),
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)},
        "results": results,
    }
    output = save_json(document, Path(args.output or OUT / "corrections.json"))
    clicks = " | ".join(f"+{i} correction{'s' if i > 1 else ''}" for i in range(1, CORRECTIONS + 1))
    print(f"| dataset | n | 1 click | {clicks} | corrections that hurt | first click ms p50/p95 | "
          "correction ms p50/p95 | with an exclude click p50/p95 |")  # fmt: skip
    print("|---" * (CORRECTIONS + 7) + "|")
    for name, r in results.items():
        dices = " | ".join(f"{v:.3f}" for v in r["mean_dice_per_click"])
        times = " | ".join(f"{r[k].get('p50', '-')} / {r[k].get('p95', '-')}"
                           for k in ("first_click_ms", "correction_ms", "correction_with_exclude_ms"))  # fmt: skip
        print(f"| {name} | {r['targets']} | {dices} | {r['corrections_that_hurt']} | {times} |")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
