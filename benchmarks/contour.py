"""Organs at risk between the two TotalSegmentator example patients, both ways, per organ; and the whole-CT time.

The two labelled CTs we hold are different people: ``example_ct_sm`` (30 x 101 x 122, 3 mm, upper abdomen,
no contrast) and the DICOM series ``example_ct_dicom`` (20 x 512², 0.98 x 0.98 x 2 mm, a 40 mm slab, contrast).
Their labels are **TotalSegmentator's predictions**, the best truth we have, not manual contours. Each patient
is the atlas of the other (nothing is fitted on the patient being scored), so every number is a single-atlas,
cross-patient transfer.

Per direction (atlas → patient), for every organ of the atlas or of `oncoseg.contour.adapt.HU_ORGANS`:

- status: *scored* (in the patient's labels and in the atlas' reach), *absent in the patient's scan* (the
  patient's labels hold none of it: anything drawn is a false positive, its volume is shown), *not in the atlas*
  (cannot be transferred), or *no reference* (External, SpinalCanal: TotalSegmentator labels neither);
- Dice of each stage: atlas only (registered labels), atlas + model (the old default: LiteMedSAM per-slice
  refinement of `MODEL_REFINED`), + CT numbers (`adapt_priors`: intensity refinement, contrast aorta, cord in the
  canal, HU organs), + CT numbers + model (not for `adapt.NO_MODEL_METHODS`), and *final*: what `contour()` keeps (the model only where `refine.model_helps`). Dice of carried
  organs is computed inside the part of the patient's scan that the registered atlas scan covers (the slab atlas
  cannot say anything about the rest); HU organs over the whole scan. *product* is `contour()` itself: the
  organs it does not draw (outside the scan, weak evidence) are empty, and each drawn organ's confidence is
  shown; how well that confidence separates organs with Dice < 0.7 from the rest (AUROC, REVIEW flags) is
  measured over the scored organs of both directions.

Lungs: the reference is the union of the lobe labels (left/right). SpinalCanal is reported by the share of the
labelled spinal cord it holds. Vertebrae and ribs (`oncoseg.contour.bones`) are also matched against every
numbered bone of the patient ("best match"): a fitted bone that matches its neighbour's label was numbered one
level off by the registration. ``Rib`` (all ribs) does not depend on the numbering.

Speed: `oncoseg.contour.contour` with every organ it supports on the DICOM series, model refinement on, then an
RTSTRUCT written; stage times from the pipeline (load, registration, refine, write).

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/contour.py --threads 1`` → ``benchmarks/results/contour.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import DEFAULT_DATA, DEFAULT_OUT, environment, markdown_table, require_data, write_json

from oncoseg.contour.adapt import HU_ORGANS, NO_MODEL_METHODS, adapt_priors
from oncoseg.contour.bones import is_numbered
from oncoseg.contour.check import dice
from oncoseg.contour.organs import MODEL_REFINED, Atlas, load_atlas
from oncoseg.contour.refine import model_helps, refine_priors
from oncoseg.contour.registration import register, warp_labels
from oncoseg.dicom.tg263 import lookup
from oncoseg.io import load_image

STAGES = ("atlas", "atlas_model", "ct", "ct_model", "final")
ALL = STAGES + ("product",)  # product: contour() itself (evidence applied: organs not drawn are empty)
HU_STAGES = ("ct", "ct_model", "final")  # an HU organ has no atlas stage
BAD_BELOW = 0.7  # an organ with Dice below this counts as bad (the trust issue's line)
LARGE = ("Liver", "Spleen", "Kidney_L", "Kidney_R", "Lung_L", "Lung_R", "Heart", "Stomach")


def dicom_atlas(example: Path) -> Atlas:
    """The DICOM series and its own labels as an atlas (the other direction)."""
    table = json.loads((example / "label_map_total_and_total_mr.json").read_text(encoding="utf-8"))["total"]
    image = load_image(example / "example_ct_dicom", modality="ct")
    labels = load_image(example / "example_seg_dicom.nii.gz")
    present = set(np.unique(labels.array).tolist())
    names = {int(v): lookup(n).name for v, n in table.items() if lookup(n) and int(v) in present}
    return Atlas(image, labels, names, "example_ct_dicom")


def lung_truth(patient: Atlas, example: Path) -> dict[str, np.ndarray]:
    """Left and right lung references: the union of the patient's lobe labels on each side."""
    table = json.loads((example / "label_map_total_and_total_mr.json").read_text(encoding="utf-8"))["total"]
    labels = patient.labels.array
    side = {
        "Lung_L": [int(v) for v, n in table.items() if n.startswith("lung_") and n.endswith("_left")],
        "Lung_R": [int(v) for v, n in table.items() if n.startswith("lung_") and n.endswith("_right")],
    }
    out = {name: np.isin(labels, values) for name, values in side.items()}
    out["Lungs"] = out["Lung_L"] | out["Lung_R"]
    return out


def reach(atlas: Atlas, transform, patient: Atlas) -> np.ndarray:
    """Patient voxels that the registered atlas scan covers."""
    ones = atlas.image.with_array(np.ones(atlas.image.shape, np.uint8))
    return warp_labels(ones, transform, patient.image) > 0


def direction(atlas: Atlas, patient: Atlas, predictor, example: Path) -> dict[str, Any]:
    """Every stage's masks for ``patient`` from ``atlas``, scored per organ."""
    timings: dict[str, float] = {}
    t = time.perf_counter()
    registration = register(patient.image, atlas.image)
    warped = warp_labels(atlas.labels, registration, patient.image)
    organs = atlas.organs() + [n for n in HU_ORGANS if n not in atlas.organs()]
    priors = {n: np.isin(warped, atlas.values(n)) for n in organs}
    timings["registration"] = time.perf_counter() - t
    covered = reach(atlas, registration.transform, patient)

    t = time.perf_counter()
    adapted, _, methods, weak = adapt_priors(patient.image, priors)
    adapted.update({n: np.zeros_like(adapted[n]) for n in weak})  # not drawn (weak evidence)
    timings["ct_numbers"] = time.perf_counter() - t
    stages = {"atlas": priors, "ct": adapted}
    predictor.set_image(patient.image, modality="ct")
    for source, target in (("atlas", "atlas_model"), ("ct", "ct_model")):
        t = time.perf_counter()
        chosen = {
            n: m
            for n, m in stages[source].items()
            if n in MODEL_REFINED
            and n not in HU_ORGANS
            and m.any()
            and (source == "atlas" or methods.get(n) not in NO_MODEL_METHODS)
        }
        refined, _ = refine_priors(predictor, chosen, patient.image.spacing[:2])
        stages[target] = {**stages[source], **refined}
        timings[f"model_after_{source}"] = time.perf_counter() - t
    # what contour() keeps: the model only on CTs with fine pixels (refine.model_helps)
    spacing = patient.image.spacing[:2]
    stages["final"] = {
        n: (stages["ct_model"] if model_helps(spacing, n) else stages["ct"])[n] for n in organs
    }

    # what the product draws: contour() itself, with its evidence (organs not drawn are empty) and confidence
    from oncoseg.contour import contour

    t = time.perf_counter()
    product = contour(patient.image, atlas=atlas, predictor=predictor)
    timings["product"] = time.perf_counter() - t
    stages["product"] = {n: product.masks.get(n, np.zeros(patient.image.shape, bool)) for n in organs}

    truths = {n: patient.mask(n) for n in organs if n not in HU_ORGANS}
    truths.update(lung_truth(patient, example))
    cord = patient.mask("SpinalCord")
    bone_names = [n for n in patient.organs() if is_numbered(n)]
    voxel_ml = float(np.prod(patient.image.spacing)) / 1000.0
    rows = []
    for name in organs + [n for n in patient.organs() if n not in organs]:
        row: dict[str, Any] = {"organ": name}
        truth = truths.get(name)
        if name not in organs:
            row["status"] = "not in the atlas"
        elif truth is None:
            row["status"] = "no reference"
            row["drawn_ml"] = round(float(stages["ct_model"][name].sum()) * voxel_ml, 1)
            if name == "SpinalCanal" and cord.any():
                row["holds_cord"] = round(float((stages["ct"][name] & cord).sum()) / float(cord.sum()), 3)
        elif name in HU_ORGANS:  # found in the scan itself: scored over the whole scan
            row["status"] = "scored (whole scan)" if truth.any() else "absent in the patient's scan"
            if truth.any():
                row["truth_ml"] = round(float(truth.sum()) * voxel_ml, 1)
                row["dice"] = {s: _round(dice(stages[s][name], truth)) for s in HU_STAGES + ("product",)}
            else:
                row["drawn_ml"] = {s: round(float(stages[s][name].sum()) * voxel_ml, 1) for s in ALL}
        elif not (truth & covered).any():
            row["status"] = "absent in the patient's scan"
            row["drawn_ml"] = {s: round(float(stages[s][name].sum()) * voxel_ml, 1) for s in ALL}
        else:
            row["status"] = "scored"
            row["truth_ml"] = round(float((truth & covered).sum()) * voxel_ml, 1)
            row["dice"] = {s: _round(dice(stages[s][name] & covered, truth & covered)) for s in ALL}
        evidence = product.evidence.get(name)
        if evidence is not None and evidence.omitted:
            row["product_not_drawn"] = evidence.omitted
        elif evidence is not None and evidence.confidence is not None:
            row["confidence"] = round(evidence.confidence.estimate, 3)
            row["review"] = bool(evidence.confidence.review)
        row["method"] = methods.get(name, "atlas only" if name in organs else "")
        if name in weak:
            row["not_drawn"] = weak[name]
        if is_numbered(name) and name in organs and stages["final"][name].any():
            # the fitted bone against every numbered bone of the patient: is it the neighbouring level?
            best = max((dice(stages["final"][name], patient.mask(n)) or 0.0, n) for n in bone_names)
            row["best_match"] = {"organ": best[1], "dice": round(best[0], 3)}
        rows.append(row)
    return {"atlas": atlas.source, "patient": patient.source, "timings_s": _rounded(timings), "organs": rows}


def confidence_separation(directions: list[dict[str, Any]]) -> dict[str, Any]:
    """How well the product's per-organ confidence separates organs with Dice < `BAD_BELOW` from the rest, over
    the scored organs it drew in both directions (AUROC of 1 - confidence; the REVIEW flag's hits)."""
    rows = [
        r
        for run in directions
        for r in run["organs"]
        if r.get("status", "").startswith("scored")
        and "confidence" in r
        and r["dice"].get("product") is not None
    ]
    bad = np.array([r["dice"]["product"] < BAD_BELOW for r in rows])
    estimate = np.array([r["confidence"] for r in rows])
    review = np.array([r["review"] for r in rows])
    auroc = None
    if bad.any() and not bad.all():
        from sklearn.metrics import roc_auc_score

        auroc = round(float(roc_auc_score(bad, 1.0 - estimate)), 3)
    return {
        "organs": len(rows),
        "bad": int(bad.sum()),
        "auroc": auroc,
        "bad_flagged": int((bad & review).sum()),
        "good_flagged": int((~bad & review).sum()),
        "bad_below": BAD_BELOW,
    }


def speed(example: Path, atlas: Atlas, predictor) -> dict[str, Any]:
    """The product path on the DICOM series: every supported organ, model on, RTSTRUCT written."""
    from oncoseg.contour import contour

    start, cpu, start_load = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    result = contour(example / "example_ct_dicom", atlas=atlas, predictor=predictor)
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        result.save(Path(folder) / "oars.dcm", output_type="rtstruct")
    timings = dict(result.timings)
    timings["write"] = time.perf_counter() - t
    timings["wall_total"] = time.perf_counter() - start
    return {
        "organs_asked": len(result.priors),
        "organs_drawn": len(result.masks),
        "drawn": list(result.masks),
        "review_first": result.review_first(),
        "not_drawn": getattr(result, "omitted", {}),
        "cpu_s": round(time.process_time() - cpu, 2),
        "timings_s": _rounded(timings),
        "load_average_1min": {"start": start_load, "end": os.getloadavg()[0]},
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _rounded(timings: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 2) for k, v in timings.items()}


def fmt(value: Any) -> str:
    return "—" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: the host is shared)"
    )
    parser.add_argument("--skip-speed", action="store_true", help="only the per-organ comparison")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from oncoseg.contour.pipeline import make_predictor

    example = require_data(args.data) / "totalsegmentator-example"
    t = time.perf_counter()
    small = load_atlas(example)
    small.source = "example_ct_sm"
    series = dicom_atlas(example)
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    predictor = make_predictor()  # the model `oncoseg contour` refines with (LiteMedSAM, teacher encoder)
    model_s = time.perf_counter() - t
    result: dict[str, Any] = {
        "environment": environment(),
        "threads": args.threads,
        "note": "shared, noisy 2-core host; labels are TotalSegmentator predictions, not manual contours",
        "load_s": {"both_patients": round(load_s, 2), "model": round(model_s, 2)},
        "directions": [
            direction(small, series, predictor, example),
            direction(series, small, predictor, example),
        ],
    }
    result["confidence"] = confidence_separation(result["directions"])
    if not args.skip_speed:
        result["speed"] = speed(example, small, predictor)
    path = write_json(result, args.out, "contour")

    for run in result["directions"]:
        print(
            f"\n## {run['atlas']} → {run['patient']} (Dice inside the atlas' reach; stage s: {run['timings_s']})\n"
        )
        table = []
        for row in run["organs"]:
            d = row.get("dice", {})
            extra = row.get("drawn_ml", row.get("truth_ml", ""))
            if "holds_cord" in row:
                extra = f"{row['drawn_ml']} mL, holds {row['holds_cord']:.0%} of the cord"
            if "best_match" in row and row["best_match"]["organ"] != row["organ"]:
                extra = f"{extra}; best match {row['best_match']['organ']} {row['best_match']['dice']:.3f}"
            if "not_drawn" in row:
                extra = f"{extra}; not drawn: {row['not_drawn']}"
            shown = row.get("product_not_drawn") and "not drawn"
            if "confidence" in row:
                shown = f"{row['confidence']:.2f}" + (" REVIEW" if row["review"] else "")
            table.append(
                [
                    row["organ"],
                    row["status"],
                    row["method"],
                    *[fmt(d.get(s)) for s in ALL],
                    shown or "",
                    extra,
                ]
            )
        header = [
            "organ",
            "status",
            "method",
            "atlas",
            "atlas+model",
            "+CT numbers",
            "+CT numbers+model",
            "final",
            "product",
            "confidence",
            "mL",
        ]
        print(markdown_table(header, table))
    c = result["confidence"]
    print(
        f"\n## Confidence against Dice < {BAD_BELOW} (product, scored organs drawn, both directions)\n\n"
        f"{c['organs']} organs, {c['bad']} with Dice < {BAD_BELOW}: AUROC {fmt(c['auroc'])}; flagged REVIEW: "
        f"{c['bad_flagged']} of {c['bad']} bad, {c['good_flagged']} of {c['organs'] - c['bad']} good"
    )
    if "speed" in result:
        s = result["speed"]
        print(
            f"\n## Whole CT (example_ct_dicom, {s['organs_asked']} organs asked, {s['organs_drawn']} drawn)\n"
        )
        stages = ["load", "registration", "ct_numbers", "refine", "write", "wall_total"]
        print(
            markdown_table(stages + ["cpu s"], [[fmt(s["timings_s"].get(k)) for k in stages] + [s["cpu_s"]]])
        )
        print(f"\ndrawn: {', '.join(s['drawn'])}")
        print("not drawn: " + "; ".join(f"{n} ({r})" for n, r in s["not_drawn"].items()))
        loads = s["load_average_1min"]
        print(
            f"\n1 torch thread; load average {loads['start']:.1f} → {loads['end']:.1f} (shared 2-core host, noisy)"
        )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
