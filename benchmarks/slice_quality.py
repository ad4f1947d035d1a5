"""Fit and measure the per-slice review flag of `oncoseg.quality.assess_slices`.

For 3D results of the default model (MSD Hippocampus: a ground-truth box on the largest slice, propagated through
the volume with `Session.segment(volume=True)`) it records each shown slice's features
(`oncoseg.quality.slice_features`) and its Dice against the truth on that slice (0 where the truth is empty); a
slice is "bad" below Dice 0.7. Fitted on train volumes (logistic regression, review threshold flagging 10 % of the
good train slices), measured on test volumes: AUROC and the share of bad slices flagged.

    .venv/bin/python benchmarks/slice_quality.py --limit 12 --threads 1

Prints the constants to paste into oncoseg/quality.py, and a table; writes results/slice_quality.json.
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

from oncoseg.data.adapters import open_dataset
from oncoseg.errors import OncoSegError
from oncoseg.evaluate.protocols import Protocol
from oncoseg.models.spec import ModelSpec
from oncoseg.quality import SLICE_FEATURES, slice_features
from oncoseg.session import Session

BAD_BELOW = 0.7
FALSE_ALARM = 0.10


def collect(split: str, limit: int, predictor) -> list[dict]:
    rows = []
    cases = spread(open_dataset("msd-hippocampus").cases(split), limit)
    for i, case in enumerate(cases):
        image, truths = case.load()
        truth = truths["whole"].astype(bool)
        z0 = int(np.argmax(truth.sum(axis=(1, 2))))
        try:
            obj = Session(image, predictor).segment(Protocol("box").prompt(truth[z0], z=z0), volume=True)
        except OncoSegError:
            continue
        for z, values in slice_features(obj.mask, obj.slice_scores).items():
            a, b = obj.mask[z], truth[z]
            dice = 2 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)
            rows.append({"case": case.case_id, "z": z, "start": z == z0, "features": values.round(5).tolist(),
                         "dice": round(float(dice), 4)})  # fmt: skip
        print(f"\r{split}: {i + 1}/{len(cases)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, default=12, help="volumes per split")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    from sklearn.linear_model import LogisticRegression

    started = time.perf_counter()
    predictor = ModelSpec(threads=args.threads).build_predictor()
    train, test = collect("train", args.limit, predictor), collect("test", args.limit, predictor)
    x = np.array([r["features"] for r in train])
    y = np.array([r["dice"] < BAD_BELOW for r in train])
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6

    def standard(values):
        return np.clip((np.asarray(values) - mean) / scale, -3.0, 3.0)

    model = LogisticRegression(C=1.0).fit(standard(x), y)
    weights, bias = model.coef_[0], float(model.intercept_[0])

    def p_bad(rows):
        return 1 / (1 + np.exp(-(bias + standard([r["features"] for r in rows]) @ weights)))

    good = np.sort(p_bad(train)[~y])
    review_at = float(good[int(np.ceil((1 - FALSE_ALARM) * len(good))) - 1]) + 1e-9
    probability, bad = p_bad(test), np.array([r["dice"] < BAD_BELOW for r in test])
    flagged = probability >= review_at
    summary = {
        "slices": len(test),
        "bad": int(bad.sum()),
        "auroc": auroc(probability, bad),
        "auroc_score_only": auroc(1 - np.array([r["features"][0] for r in test]), bad),
        "bad_flagged": float(flagged[bad].mean()) if bad.any() else None,
        "good_flagged": float(flagged[~bad].mean()) if (~bad).any() else None,
    }
    fit = {"features": list(SLICE_FEATURES), "mean": mean.round(4).tolist(), "scale": scale.round(4).tolist(),
           "weights": weights.round(4).tolist(), "bias": round(bias, 4), "review_at": round(review_at, 4),
           "train_slices": len(train), "train_bad": int(y.sum())}  # fmt: skip
    result = {
        "command": "python benchmarks/slice_quality.py " + " ".join(argv or sys.argv[1:]),
        "environment": environment(),
        "fit": fit,
        "test": summary,
        "rows": {"train": train, "test": test},
        "seconds": round(time.perf_counter() - started, 1),
    }
    path = write_json(result, args.output, "slice_quality")

    def fmt(v):
        return "-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)

    print(markdown_table(
        ["test slices", "bad (Dice < 0.7)", "AUROC", "AUROC of the score alone", "bad flagged", "good flagged"],
        [[summary["slices"], summary["bad"], fmt(summary["auroc"]), fmt(summary["auroc_score_only"]),
          fmt(summary["bad_flagged"]), fmt(summary["good_flagged"])]],
    ))  # fmt: skip
    print(f"\nSLICE_MEAN={fit['mean']} SLICE_SCALE={fit['scale']}\nSLICE_WEIGHTS={fit['weights']} "
          f"SLICE_BIAS={fit['bias']} SLICE_REVIEW_AT={fit['review_at']}\nwrote {path}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
