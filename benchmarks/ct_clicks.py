"""One click on every organ, and on small bright spots inside the liver, of the TotalSegmentator example CTs:
does the click give that structure, or something around it? Three answers side by side: the model's own choice
(candidate boxes of six sizes, the best-scoring mask that holds the click), the clicked-tissue rule without the
small boxes (``old rule``: the CT default before them), and the product's answer (`Predictor.predict`:
`oncoseg.predictor.prefer_clicked_tissue`, which also decodes small boxes around the click when no offered mask
is of the clicked tissue).

    nice -n 19 .venv/bin/python benchmarks/ct_clicks.py --threads 1 --sweep

The click is at the centre (largest distance to the border) of the structure on the slice where it is largest;
the Dice is on that slice. "small" structures are those under 1500 px there. Liver spots: the largest 3D pieces
brighter than the liver's median + 40 HU inside the liver label eroded by 3 mm in-plane (contrast-filled
vessels; the trust audit's spot is the first of the DICOM series), at least 4 px on their click slice. The
labels are TotalSegmentator's predictions shipped with the example, not manual. The small-box sizes
(`oncoseg.predictor.SMALL_BOX_MM`) were chosen on the 3 mm CT (``ct``) only: its organ clicks and "synthetic
spots", discs of 1.5-3 px radius (4.5-9 mm), +50/+90/-50 HU to the organ, drawn into its liver and spleen (it
has no labelled small spot); ``--sweep`` tries each set of `SIZE_SETS` there. ``ct_dicom`` is the reported
patient. Also times `Predictor.predict` per click (median of 20, embedding cached) with and without the small
boxes. Prints Markdown tables, writes ``benchmarks/results/ct_clicks.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np
from common import git_commit, save_json
from scipy import ndimage

import oncoseg.predictor
from oncoseg.data.adapters import open_dataset
from oncoseg.evaluate.metrics import dice
from oncoseg.predictor import Predictor, prefer_clicked_tissue
from oncoseg.prompts import Point, Prompt

OUT = Path(__file__).resolve().parent / "results"
SMALL_PX = 1500
MIN_PX = 30
SPOT_CONTRAST_HU = 40
SPOT_MIN_PX = 4
SPOTS = 4
TUNED_ON = "ct"  # the patient the small-box sizes were chosen on; the other one is reported
# --sweep: the small-box sizes (mm each way) tried on the tuning patient (its organs and synthetic spots)
SIZE_SETS = ((3, 8, 18), (3, 12), (3, 8), (3, 18), (8, 18), (5, 12), (5, 18), (3,), (5,), (8,))
SYNTHETIC_ORGANS, SYNTHETIC_PLACES = ("liver", "spleen"), 4
SYNTHETIC_RADII_PX, SYNTHETIC_CONTRASTS_HU = (1.5, 2.0, 3.0), (50, 90, -50)


def clicks(truth: np.ndarray, min_px: int = MIN_PX) -> tuple[int, Point] | None:
    """The slice where ``truth`` is largest and the deepest pixel of its largest piece there."""
    areas = truth.sum(axis=(1, 2))
    z = int(np.argmax(areas))
    if areas[z] < min_px:
        return None
    labels, _ = ndimage.label(truth[z])
    piece = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    distance = ndimage.distance_transform_edt(np.pad(piece, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return z, Point(float(x), float(y), True, z)


def liver_spots(hu: np.ndarray, liver: np.ndarray, spacing: tuple[float, ...]) -> dict[str, np.ndarray]:
    """The largest pieces brighter than the liver's median + SPOT_CONTRAST_HU inside the liver eroded 3 mm."""
    radius = max(1, round(3.0 / float(spacing[0])))
    inner = ndimage.binary_erosion(liver, structure=np.ones((1, 2 * radius + 1, 2 * radius + 1), bool))
    pieces, count = ndimage.label((hu > float(np.median(hu[liver])) + SPOT_CONTRAST_HU) & inner)
    sizes = ndimage.sum_labels(np.ones_like(pieces), pieces, index=range(1, count + 1)) if count else []
    spots = {}
    for index in np.argsort(-np.asarray(sizes))[:SPOTS]:
        spot = pieces == index + 1
        if spot.sum(axis=(1, 2)).max() >= SPOT_MIN_PX:
            spots[f"liver_spot_{len(spots)}"] = spot
    return spots


def synthetic_spots(image, truths: dict):
    """Discs drawn into the liver and spleen of the tuning patient on their largest slice, at places at least
    5 px inside (seeded), of each radius and contrast (to the organ's median, with 5 HU noise): ``(name,
    image with the disc, z, disc, click)``."""
    rng = np.random.default_rng(0)
    for organ in SYNTHETIC_ORGANS:
        truth = truths[organ]
        z = int(truth.sum(axis=(1, 2)).argmax())
        ys, xs = np.nonzero(ndimage.distance_transform_edt(truth[z]) >= 5)
        for k in rng.choice(len(ys), size=min(SYNTHETIC_PLACES, len(ys)), replace=False):
            cy, cx = int(ys[k]), int(xs[k])
            for radius in SYNTHETIC_RADII_PX:
                for contrast in SYNTHETIC_CONTRASTS_HU:
                    array = image.array.astype(np.float32)  # a copy
                    yy, xx = np.mgrid[: array.shape[1], : array.shape[2]]
                    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius * radius
                    array[z][disc] = (
                        float(np.median(array[z][truth[z]])) + contrast + rng.normal(0, 5, disc.sum())
                    )
                    name = f"{organ}_x{cx}_y{cy}_r{radius}_{contrast:+d}HU"
                    yield (
                        name,
                        dataclasses.replace(image, array=array),
                        z,
                        disc,
                        Point(float(cx), float(cy), True, z),
                    )


def with_sizes(predictor: Predictor, prompt: Prompt, z: int, sets) -> dict[str, np.ndarray]:
    """The product's mask for ``prompt`` with each set of small-box sizes (`oncoseg.predictor.SMALL_BOX_MM`)."""
    shipped, out = oncoseg.predictor.SMALL_BOX_MM, {}
    try:
        for sizes in sets:
            oncoseg.predictor.SMALL_BOX_MM = tuple(float(v) for v in sizes)
            out["/".join(str(v) for v in sizes)] = predictor.predict(prompt, z=z).masks[0]
    finally:
        oncoseg.predictor.SMALL_BOX_MM = shipped
    return out


def paired_ms(first, second, repeats: int = 20) -> tuple[float, float]:
    """Median milliseconds of two calls, run alternately ``repeats`` times each (a shared machine's load then
    weighs on both alike)."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for call, out in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            call()
            out.append((time.perf_counter() - start) * 1000)
    return round(float(np.median(times[0])), 1), round(float(np.median(times[1])), 1)


def run(predictor: Predictor, timed: set[str], sweep: bool = False) -> tuple[list[dict], list[dict]]:
    rows, timings = [], []
    for case in open_dataset("totalsegmentator-example").cases("test"):
        if case.modality != "ct":
            continue
        image, truths = case.load()
        predictor.set_image(image, "ct")
        targets = [(name, truth, "organ") for name, truth in sorted(truths.items())]
        spots = liver_spots(image.array.astype(np.float32), truths["liver"], image.spacing)
        targets += [(name, spot, "liver spot") for name, spot in spots.items()]
        if case.case_id == TUNED_ON:
            targets += [(s, "synthetic spot") for s in synthetic_spots(image, truths)]
        for target, *more in targets:
            if more[-1] == "synthetic spot":
                (target, drawn, z, disc, point), kind = target, more[-1]
                predictor.set_image(drawn, "ct")
                truth = np.zeros(drawn.shape, bool)
                truth[z] = disc
            else:
                (truth, kind), drawn = more, image
                found = clicks(truth, MIN_PX if kind == "organ" else SPOT_MIN_PX)
                if found is None:
                    continue
                z, point = found
            prompt = Prompt(points=(point,))
            raw = predictor.backend.decode(predictor.embedding(z), [prompt])
            old = prefer_clicked_tissue(raw, drawn.array[z], prompt)  # the rule without the small boxes
            answer = predictor.predict(prompt, z=z)
            row = {
                "case": case.case_id, "target": target, "kind": kind, "z": z, "click": [point.x, point.y],
                "area_px": int(truth[z].sum()), "answer_px": int(answer.masks[0].sum()),
                "old_px": int(old.masks[0].sum()),
                "dice_default": round(dice(raw.masks[0], truth[z]), 4),
                "dice_old_rule": round(dice(old.masks[0], truth[z]), 4),
                "dice_tissue_rule": round(dice(answer.masks[0], truth[z]), 4),
                "alternatives_px": [int(m.sum()) for m, _ in answer.alternatives],
            }  # fmt: skip
            if sweep and case.case_id == TUNED_ON:
                row["sweep"] = {
                    k: round(dice(m, truth[z]), 4)
                    for k, m in with_sizes(predictor, prompt, z, SIZE_SETS).items()
                }
            rows.append(row)
            if f"{case.case_id}:{target}" in timed:

                def before(z=z, prompt=prompt, values=drawn.array):
                    raw = predictor.backend.decode(predictor.embedding(z), [prompt])
                    return prefer_clicked_tissue(raw, values[z], prompt)

                without, with_boxes = paired_ms(
                    before, lambda z=z, prompt=prompt: predictor.predict(prompt, z=z)
                )
                timings.append({
                    "case": case.case_id, "target": target, "small_boxes_taken": small_boxes_used(row),
                    "ms_without_small_boxes": without, "ms_with_small_boxes": with_boxes,
                    "added_ms": round(with_boxes - without, 1),
                })  # fmt: skip
    return rows, timings


def small_boxes_used(row: dict) -> bool:
    """Whether the answer came from the small boxes (it differs from the old rule's)."""
    return row["dice_tissue_rule"] != row["dice_old_rule"] or row["answer_px"] != row["old_px"]


def sweep_summary(rows: list[dict]) -> dict:
    """Per set of small-box sizes, the mean Dice over the tuning patient's organs and its synthetic spots."""
    tuned = [r for r in rows if "sweep" in r]
    out = {}
    for key in tuned[0]["sweep"] if tuned else ():
        out[key] = {
            kind: round(float(np.mean([r["sweep"][key] for r in tuned if r["kind"] == kind])), 4)
            for kind in ("organ", "synthetic spot")
        }
    return out


def mean(rows: list[dict], key: str) -> float | None:
    return round(float(np.mean([r[key] for r in rows])), 4) if rows else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument(
        "--sweep", action="store_true", help="also try each set of SIZE_SETS on the tuning patient"
    )
    parser.add_argument("--output", help="JSON path (default benchmarks/results/ct_clicks.json)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    timed = {"ct_dicom:liver_spot_0", "ct_dicom:liver_spot_3", "ct_dicom:liver", "ct_dicom:aorta", "ct:liver"}
    rows, timings = run(Predictor(), timed, args.sweep)
    organs = [r for r in rows if r["kind"] == "organ"]
    groups = {}
    for case in sorted({r["case"] for r in rows}):
        role = "tuned on" if case == TUNED_ON else "reported"
        mine = [r for r in organs if r["case"] == case]
        groups[f"{case} ({role}): all organs"] = mine
        groups[f"{case} ({role}): small organs (< {SMALL_PX} px)"] = [
            r for r in mine if r["area_px"] < SMALL_PX
        ]
        for kind in ("liver spot", "synthetic spot"):
            found = [r for r in rows if r["case"] == case and r["kind"] == kind]
            if found or kind == "liver spot":
                groups[f"{case} ({role}): {kind}s"] = found
    groups["both: all organs"] = organs
    summary = {
        name: {
            "n": len(group),
            "dice_default": mean(group, "dice_default"),
            "dice_old_rule": mean(group, "dice_old_rule"),
            "dice_tissue_rule": mean(group, "dice_tissue_rule"),
            "better": sum(r["dice_tissue_rule"] > r["dice_old_rule"] + 0.05 for r in group),
            "worse": sum(r["dice_tissue_rule"] < r["dice_old_rule"] - 0.05 for r in group),
            "small_boxes_taken": sum(small_boxes_used(r) for r in group),
            "changed": sum(r["dice_default"] != r["dice_tissue_rule"] for r in group),  # benchmarks/report.py
        }
        for name, group in groups.items()
    }
    document = {
        "command": " ".join(["benchmarks/ct_clicks.py", *(argv if argv is not None else sys.argv[1:])]),
        "git_commit": git_commit(),
        "machine": {"cpus": os.cpu_count(), "load_average_before_after": [load_before, os.getloadavg()[0]]},
        "tuned_on": TUNED_ON,
        "seconds": round(time.perf_counter() - started, 1),
        "summary": summary,
        "timings_ms": timings,
        "shipped_small_box_mm": list(oncoseg.predictor.SMALL_BOX_MM),
        "sweep": sweep_summary(rows) if args.sweep else None,
        "rows": rows,
    }
    output = save_json(document, Path(args.output or OUT / "ct_clicks.json"))
    print("| structures | n | Dice, model's choice | Dice, old tissue rule | Dice, product (small boxes) "
          "| small boxes taken | better / worse than old (> 0.05) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, s in summary.items():
        print(f"| {name} | {s['n']} | {s['dice_default']} | {s['dice_old_rule']} | {s['dice_tissue_rule']} "
              f"| {s['small_boxes_taken']} | {s['better']} / {s['worse']} |")  # fmt: skip
    print("\n| click | small boxes taken | ms without small boxes | ms with | added |\n|---|---|---|---|---|")
    for t in timings:
        print(f"| {t['case']} {t['target']} | {t['small_boxes_taken']} | {t['ms_without_small_boxes']} "
              f"| {t['ms_with_small_boxes']} | {t['added_ms']} |")  # fmt: skip
    if document["sweep"]:
        print(f"\n| small boxes (mm) on {TUNED_ON} | organs | synthetic spots |\n|---|---|---|")
        for key, v in document["sweep"].items():
            print(f"| {key} | {v['organ']} | {v['synthetic spot']} |")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
