"""How well the quality estimate and review flag of text-prompt answers separate bad answers from good ones.

For each test image of the concept datasets (Kvasir-SEG "polyp", BUSI "breast lesion" including its normal images,
3D-IRCADb "liver"), `oncoseg.segment(image, text=concept)` answers with every instance found; the answer (the
union of its instances) is bad when its Dice against the truth is below 0.7 (on a normal BUSI image, where there is
nothing to find, every answer is bad). The answer's estimate is the lowest of its instances' (`quality.text_quality`:
`assess` with the detection score), and it is flagged when any instance is. Images where nothing is found are not
shown to anyone and are counted apart.

    .venv/bin/python benchmarks/text_quality.py --limit 30 --threads 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_OUT, environment, markdown_table, spread, write_json
from confidence import auroc

from oncoseg.api import segment
from oncoseg.data.adapters import open_dataset
from oncoseg.errors import EmptyResultError
from oncoseg.models.spec import ModelSpec

DATASETS = (("kvasir-seg", "polyp"), ("busi", "breast lesion"), ("ircadb-liver-slices", "liver"))
BAD_BELOW = 0.7


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, default=30, help="test images per dataset, evenly spread")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    predictor = ModelSpec(threads=args.threads).build_predictor()
    rows, empty = [], {}
    for dataset, concept in DATASETS:
        cases = spread(open_dataset(dataset).cases("test"), args.limit)
        empty[dataset] = 0
        for i, case in enumerate(cases):
            image, truths = case.load()
            truth = np.logical_or.reduce([np.asarray(t, bool) for t in truths.values()])
            try:
                result = segment(image, text=concept, predictor=predictor)
            except EmptyResultError:
                empty[dataset] += 1
                continue
            answer = result.labels > 0
            dice = (
                2
                * np.count_nonzero(answer & truth)
                / max(np.count_nonzero(answer) + np.count_nonzero(truth), 1)
            )
            rows.append({
                "dataset": dataset, "case": case.case_id, "truth_empty": not truth.any(),
                "instances": len(result.scores), "dice": round(float(dice), 4),
                "estimate": round(min(q.estimate for q in result.qualities), 4),
                "review": any(q.review for q in result.qualities),
            })  # fmt: skip
            print(f"\r{dataset}: {i + 1}/{len(cases)}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
    table_rows = []
    for group in [*(d for d, _ in DATASETS), "all"]:
        chosen = [r for r in rows if group in ("all", r["dataset"])]
        if not chosen:
            continue
        bad = np.array([r["dice"] < BAD_BELOW for r in chosen])
        flagged = np.array([r["review"] for r in chosen])
        table_rows.append({
            "group": group, "answers": len(chosen), "bad": int(bad.sum()),
            "on_empty_images": sum(r["truth_empty"] for r in chosen),
            "auroc": auroc(1 - np.array([r["estimate"] for r in chosen]), bad),
            "bad_flagged": float(flagged[bad].mean()) if bad.any() else None,
            "good_flagged": float(flagged[~bad].mean()) if (~bad).any() else None,
            "nothing_found": empty.get(group, sum(empty.values())),
        })  # fmt: skip
    result = {
        "command": "python benchmarks/text_quality.py " + " ".join(argv or sys.argv[1:]),
        "environment": environment(),
        "bad_below": BAD_BELOW,
        "groups": table_rows,
        "rows": rows,
        "seconds": round(time.perf_counter() - started, 1),
    }
    path = write_json(result, args.output, "text_quality")

    def fmt(v):
        return "-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)

    print(markdown_table(
        ["test set", "answers", "bad (Dice < 0.7)", "of which on images without the structure", "AUROC",
         "bad flagged", "good flagged", "nothing found"],
        [[r["group"], r["answers"], r["bad"], r["on_empty_images"], fmt(r["auroc"]), fmt(r["bad_flagged"]),
          fmt(r["good_flagged"]), r["nothing_found"]] for r in table_rows],
    ))  # fmt: skip
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
