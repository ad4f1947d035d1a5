"""One click on every organ of the TotalSegmentator example CTs: does the click give that organ, or something
around it? The default click path (candidate boxes of six sizes, the best-scoring mask that holds the click)
beside the CT rule that prefers the mask of the clicked tissue's density (`oncoseg.predictor.prefer_clicked_tissue`,
the default on CT).

    .venv/bin/python benchmarks/ct_clicks.py --threads 2

The click is at the centre (largest distance to the border) of the organ on the slice where it is largest; the
Dice is on that slice. "small" organs are those under 1500 px there. The labels are TotalSegmentator's
predictions shipped with the example, not manual. Prints a Markdown table, writes
``benchmarks/results/ct_clicks.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from common import git_commit, save_json
from scipy import ndimage

from oncoseg.data.adapters import open_dataset
from oncoseg.evaluate.metrics import dice
from oncoseg.predictor import Predictor
from oncoseg.prompts import Point, Prompt

OUT = Path(__file__).resolve().parent / "results"
SMALL_PX = 1500
MIN_PX = 30


def clicks(truth: np.ndarray) -> tuple[int, Point] | None:
    """The slice where ``truth`` is largest and the deepest pixel of its largest piece there."""
    areas = truth.sum(axis=(1, 2))
    z = int(np.argmax(areas))
    if areas[z] < MIN_PX:
        return None
    labels, _ = ndimage.label(truth[z])
    piece = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    distance = ndimage.distance_transform_edt(np.pad(piece, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return z, Point(float(x), float(y), True, z)


def run(predictor: Predictor) -> list[dict]:
    rows = []
    for case in open_dataset("totalsegmentator-example").cases("test"):
        if case.modality != "ct":
            continue
        image, truths = case.load()
        predictor.set_image(image, "ct")
        for target, truth in sorted(truths.items()):
            found = clicks(truth)
            if found is None:
                continue
            z, point = found
            prompt = Prompt(points=(point,))
            plain = predictor.backend.decode(predictor.embedding(z), [prompt]).masks[0]  # the model's choice
            answer = predictor.predict(prompt, z=z)
            rows.append({
                "case": case.case_id, "target": target, "z": z, "area_px": int(truth[z].sum()),
                "dice_default": round(dice(plain, truth[z]), 4),
                "dice_tissue_rule": round(dice(answer.masks[0], truth[z]), 4),
            })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--output", help="JSON path (default benchmarks/results/ct_clicks.json)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    rows = run(Predictor())
    groups = {
        "all organs": rows,
        f"small (< {SMALL_PX} px)": [r for r in rows if r["area_px"] < SMALL_PX],
        f"large (>= {SMALL_PX} px)": [r for r in rows if r["area_px"] >= SMALL_PX],
    }
    summary = {
        name: {
            "n": len(group),
            "dice_default": round(float(np.mean([r["dice_default"] for r in group])), 4) if group else None,
            "dice_tissue_rule": round(float(np.mean([r["dice_tissue_rule"] for r in group])), 4)
            if group
            else None,
            "changed": sum(r["dice_default"] != r["dice_tissue_rule"] for r in group),
        }
        for name, group in groups.items()
    }
    document = {
        "command": " ".join(["benchmarks/ct_clicks.py", *(argv if argv is not None else sys.argv[1:])]),
        "git_commit": git_commit(),
        "machine": {"cpus": os.cpu_count()},
        "seconds": round(time.perf_counter() - started, 1),
        "summary": summary,
        "rows": rows,
    }
    output = save_json(document, Path(args.output or OUT / "ct_clicks.json"))
    print("| organs | n | Dice, default click | Dice, clicked-tissue rule | answers changed |")
    print("|---|---|---|---|---|")
    for name, s in summary.items():
        print(f"| {name} | {s['n']} | {s['dice_default']} | {s['dice_tissue_rule']} | {s['changed']} |")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
