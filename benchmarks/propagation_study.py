"""Where box-only 3D propagation loses Dice against the every-slice GT-box bound, and which propagation settings
win it back.

A GT 2D box on the slice where the target is largest, propagated by `oncoseg.volume.propagate` (the interactive
protocol's "box2d" start, no clicks). For every variant of `PropagationSettings` (``VARIANTS``) and every target,
the loss is split into:

* **not reached**: slices of the truth the walk never kept (it stopped short); which stop rule ended each walk
  (`WalkEnd.reasons`: area, score, iou, growth, blank, edge), and whether the truth was still there ("early")
  or not ("at end");
* **reached but wrong**: Dice on the truth's slices the walk kept, beside the every-slice GT box's Dice on the
  same slices;
* **outside**: voxels drawn on slices without truth.

"neighbour's GT box": each truth slice prompted with the truth's box on its neighbour (nearer the prompted
slice), enlarged 5 %: what the walk would give if each of its masks were the truth (the drift-free walk).

Three "what if" Dice values say what each part costs: the bound's mask on the slices not reached ("fill"), the
bound's mask on the reached truth slices ("fix reached"), and the voxels outside removed ("no outside").

    nice -n 19 .venv/bin/python benchmarks/propagation_study.py                 # 30 hippocampus train volumes
    nice -n 19 .venv/bin/python benchmarks/propagation_study.py --variants default,ends_loose --limit 10
    nice -n 19 .venv/bin/python benchmarks/propagation_study.py --test          # hippocampus test + BraTS
    nice -n 19 .venv/bin/python benchmarks/propagation_study.py --val --variants old,mask_prompt,trained
    nice -n 19 .venv/bin/python benchmarks/propagation_study.py --test --only ct --variants old,trained

"trained" is the walk with the neighbour's mask as dense prompt answered by the mask-prompt decoder
(`oncoseg.models.mask_prompt`, docs/propagation.md; ``--mask-prompt-weights`` another adapter file),
"mask_prompt" the same prompt given to the base decoder (zero-shot). ``--val`` reports the hippocampus val split
and the BraTS val patient (for choosing an adapter); ``--only ct`` the liver of both TotalSegmentator example
CTs; ``--no-oracle`` skips the neighbour's-GT-box column.

Settings are chosen on train volumes only (the default run); ``--test`` reports the hippocampus test split (52)
and the 4 BraTS samples (WT, TC, ET) for the old and the new defaults. Prints a table per dataset and writes
benchmarks/results/propagation_study.json (``--output``); a run with other cases replaces only its own section.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from common import environment, markdown_table

from oncoseg.embedding_store import EmbeddingStore
from oncoseg.evaluate.interactive import InteractiveCase, dataset_cases, every_slice_bound
from oncoseg.evaluate.metrics import dice
from oncoseg.io import load_image
from oncoseg.models.spec import ModelSpec
from oncoseg.prompts import Box, Prompt, box_from_mask
from oncoseg.samples import list_samples, sample_path
from oncoseg.volume import PropagationSettings, propagate

OUT = Path(__file__).resolve().parent / "results" / "propagation_study.json"
# The interactive subset's CT organs (docs/results.md, benchmarks/results/interactive_subset*.json)
CT_ORGANS = (
    "liver", "spleen", "kidney_left", "kidney_right", "stomach", "aorta", "pancreas", "gallbladder",
    "inferior_vena_cava",
)  # fmt: skip

# The defaults before this study (the 2026-12-05 `PropagationSettings`), then candidate changes.
OLD = {
    "box_margin": 0.05,
    "min_margin_px": 1.0,
    "min_score": 0.5,
    "min_pixels": 4,
    "min_area_ratio": 0.05,
    "min_iou": 0.5,
    "max_growth": 1.5,
    "mask_prompt": False,
}
# A variant's "decoder" says which decoder answers decodes with a mask prompt: None (the base decoder, zero-shot)
# or "trained" (the mask-prompt adapter, `oncoseg.models.mask_prompt`; --mask-prompt-weights picks the file).
VARIANTS: dict[str, dict] = {
    "old": OLD,
    "default": {},  # PropagationSettings() as it is now
    "px2": {"min_margin_px": 2.0},
    "px3": {"min_margin_px": 3.0},
    "px4": {"min_margin_px": 4.0},
    "m10": {"box_margin": 0.1},
    "m20": {"box_margin": 0.2},
    "multi_score": {"extra_margins": (0.15, 0.3)},
    "multi_iou": {"extra_margins": (0.15, 0.3), "choose": "iou"},
    # the neighbour's mask as dense prompt for every object ("mask_prompt_min_area": 0), answered zero-shot by the
    # base decoder or by the trained adapter; "sized": the trained adapter for objects covering at least 5 % of
    # the frame (PropagationSettings' default since the guard study, docs/propagation.md)
    "mask_prompt": {"mask_prompt": True, "mask_prompt_min_area": 0.0, "decoder": None},
    "trained": {"mask_prompt": True, "mask_prompt_min_area": 0.0, "decoder": "trained"},
    "sized": {"mask_prompt": True, "mask_prompt_min_area": 0.05, "decoder": "trained"},
    # the trained decoder guarded by a box-only decode of the same slice (PropagationSettings.guard), every object
    "guard": {"mask_prompt": True, "mask_prompt_min_area": 0.0, "decoder": "trained", "guard": True},
    "guard_score": {
        "mask_prompt": True,
        "mask_prompt_min_area": 0.0,
        "decoder": "trained",
        "guard": True,
        "guard_score": True,
    },
    "agree30": {
        "mask_prompt": True,
        "mask_prompt_min_area": 0.0,
        "decoder": "trained",
        "guard": True,
        "guard_iou": 0.3,
    },
    "agree50": {
        "mask_prompt": True,
        "mask_prompt_min_area": 0.0,
        "decoder": "trained",
        "guard": True,
        "guard_iou": 0.5,
    },
    "agree50_score": {
        "mask_prompt": True,
        "mask_prompt_min_area": 0.0,
        "decoder": "trained",
        "guard": True,
        "guard_iou": 0.5,
        "guard_score": True,
    },
    "follow": {"follow": 1.0},
    "follow_iou40": {"follow": 1.0, "min_iou": 0.4},
    "follow_iou30": {"follow": 1.0, "min_iou": 0.3},
    "iou30": {"min_iou": 0.3},
    "follow50": {"follow": 0.5},
    "carry": {"carry": 1.0},
    "carry50": {"carry": 0.5},
    "carry75": {"carry": 0.75},
}


def settings_of(name: str) -> PropagationSettings:
    if name not in VARIANTS:
        raise SystemExit(f"unknown variant {name!r}: choose from {', '.join(VARIANTS)}")
    # box-only unless the variant says otherwise (the studies before the mask-prompt decoder), "default" as it is
    base = PropagationSettings() if name == "default" else PropagationSettings(mask_prompt=False)
    known = set(asdict(base))
    return replace(base, **{k: v for k, v in VARIANTS[name].items() if k in known})


def sample_cases() -> list[tuple[InteractiveCase, Box]]:
    """The bundled 3D demo samples (CT liver, hippocampus) with their suggested prompt boxes (`oncoseg demo`)."""
    out = []
    for name, sample in list_samples().items():
        if "z" in sample["prompt"]:
            image = load_image(sample_path(name), modality=sample["modality"])
            truth = load_image(sample_path(sample["mask"])).array > 0
            box = Box(*map(float, sample["prompt"]["box"]), z=int(sample["prompt"]["z"]))
            out.append(
                (InteractiveCase("sample", name, sample["target"], image, truth, sample["modality"]), box)
            )
    return out


def neighbour_truth_boxes(predictor, truth: np.ndarray, settings: PropagationSettings) -> np.ndarray:
    """Each slice of the truth prompted as the walk would be if the neighbour's mask were the truth: the box of
    the truth on the neighbour slice nearer the largest slice, enlarged as the walk enlarges it (the largest
    slice and slices whose neighbour is empty get their own GT box)."""
    z0 = int(np.argmax(truth.sum(axis=(1, 2))))
    prediction = np.zeros_like(truth)
    for z in map(int, np.flatnonzero(truth.any(axis=(1, 2)))):
        neighbour = z - int(np.sign(z - z0))
        source = truth[neighbour] if z != z0 and truth[neighbour].any() else truth[z]
        box = box_from_mask(source, z=z).enlarged(
            settings.box_margin, settings.min_margin_px, truth.shape[1:]
        )
        prediction[z] = predictor.predict(Prompt(box=box), z=z).masks[0]
    return prediction


def study_case(
    predictor, case, bound: np.ndarray, settings: PropagationSettings, box: Box | None = None
) -> dict:
    """The propagation of one target from ``box`` (default: the GT box on the slice where the target is
    largest) and its loss split against ``bound`` (the every-slice GT box)."""
    truth = np.asarray(case.truth, bool)
    if box is None:
        z0 = int(np.argmax(truth.sum(axis=(1, 2))))
        box = box_from_mask(truth[z0], z=z0)
    z0 = box.z
    result = propagate(predictor, Prompt(box=box), settings)
    prediction = result.mask
    has_truth = truth.any(axis=(1, 2))
    reached = np.zeros(len(truth), bool)
    reached[list(result.slice_scores)] = True
    kept = reached & has_truth  # truth slices the walk kept
    missed = has_truth & ~reached

    def dice_on(rows: np.ndarray, a: np.ndarray) -> float | None:
        return float(dice(a[rows], truth[rows])) if rows.any() else None

    fill, fix, clean = prediction.copy(), prediction.copy(), prediction.copy()
    fill[missed] = bound[missed]
    fix[kept] = bound[kept]
    clean[~has_truth] = False
    ends = {}
    for step, end in result.ends.items():
        inside = 0 <= end.z < len(truth)
        ends["up" if step > 0 else "down"] = {
            "z": end.z,
            "reasons": list(end.reasons),
            "truth_there": bool(inside and has_truth[end.z]),
            "score": end.score,
            "iou": end.iou,
            "rejected_dice": (
                float(dice(end.mask, truth[end.z])) if end.mask is not None and has_truth[end.z] else None
            ),
            "bound_dice_there": float(dice(bound[end.z], truth[end.z]))
            if inside and has_truth[end.z]
            else None,
        }
    zs = np.flatnonzero(has_truth)
    return {
        "case": case.case_id,
        "target": case.target,
        "prompt_slice": z0,
        "truth_slices": [int(zs[0]), int(zs[-1])],
        "kept_slices": list(result.slice_range),
        "dice": float(dice(prediction, truth)),
        "bound_dice": float(dice(bound, truth)),
        "truth_slice_count": int(has_truth.sum()),
        "missed_slices": int(missed.sum()),
        "missed_voxel_share": float(truth[missed].sum() / truth.sum()),
        "outside_voxel_share": float(prediction[~has_truth].sum() / max(1, prediction.sum())),
        "dice_reached": dice_on(kept, prediction),
        "bound_dice_reached": dice_on(kept, bound),
        "dice_fill": float(dice(fill, truth)),
        "dice_fix_reached": float(dice(fix, truth)),
        "dice_no_outside": float(dice(clean, truth)),
        "ends": ends,
    }


MEANS = (
    "dice", "bound_dice", "dice_reached", "bound_dice_reached", "dice_fill", "dice_fix_reached", "dice_no_outside",
    "missed_voxel_share", "outside_voxel_share", "neighbour_truth_box_dice",
)  # fmt: skip


def summarise(records: list[dict]) -> dict:
    """Means of a variant's records and the count of each stop rule, early (truth still there) or at the end."""

    def mean(key: str) -> float:
        values = [r[key] for r in records if r[key] is not None]
        return float(np.mean(values)) if values else float("nan")

    stops: dict[str, dict[str, int]] = {}
    for record in records:
        for end in record["ends"].values():
            for reason in end["reasons"]:
                counts = stops.setdefault(reason, {"early": 0, "at_end": 0})
                counts["early" if end["truth_there"] else "at_end"] += 1
    early = [
        e for r in records for e in r["ends"].values() if e["truth_there"] and e["rejected_dice"] is not None
    ]
    return {
        "n": len(records),
        **{key: mean(key) for key in MEANS},
        "missed_slice_share": float(
            sum(r["missed_slices"] for r in records) / max(1, sum(r["truth_slice_count"] for r in records))
        ),
        "stops": stops,
        "early_stop_rejected_dice": float(np.mean([e["rejected_dice"] for e in early])) if early else None,
        "early_stop_bound_dice": float(np.mean([e["bound_dice_there"] for e in early])) if early else None,
    }


def table(summaries: dict[str, dict]) -> str:
    rows = []
    for name, s in summaries.items():
        stops = ", ".join(
            f"{reason} {c['early']}/{c['early'] + c['at_end']}" for reason, c in sorted(s["stops"].items())
        )
        rows.append(
            [
                name, s["n"], f"{s['dice']:.3f}", f"{s['bound_dice']:.3f}",
                f"{s['dice_reached']:.3f} / {s['bound_dice_reached']:.3f}",
                f"{s['missed_slice_share']:.0%} ({s['missed_voxel_share']:.0%})", f"{s['outside_voxel_share']:.0%}",
                f"{s['neighbour_truth_box_dice']:.3f}", f"{s['dice_fill']:.3f}", f"{s['dice_fix_reached']:.3f}", f"{s['dice_no_outside']:.3f}", stops,
            ]
        )  # fmt: skip
    header = [
        "variant", "n", "Dice", "every-slice bound", "reached slices: Dice / bound", "truth slices (voxels) missed",
        "drawn outside truth", "neighbour's GT box", "if filled", "if reached fixed", "if no outside", "stop rule: early/all",
    ]  # fmt: skip
    return markdown_table(header, rows)


def use_decoder(predictor, name: str, weights: str) -> None:
    """Set the decoder that answers mask-prompt decodes for variant ``name`` (see ``VARIANTS``)."""
    decoder = VARIANTS[name].get("decoder", "auto")
    predictor.backend.mask_prompt = weights if decoder == "trained" else decoder


def run(
    sections: dict[str, list],
    variants: list[str],
    spec: ModelSpec,
    weights: str = "auto",
    oracle: bool = True,
) -> dict[str, dict]:
    """``sections``: name → cases; every variant runs on every case with one predictor (embeddings shared);
    ``weights``: the mask-prompt adapter of the "trained" variant ("auto": the shipped one)."""
    store = EmbeddingStore(spec.embedding_store, max_bytes=32 << 30) if spec.embedding_store else False
    predictor = spec.build_predictor(cache_slices=4096, embedding_store=store)
    out: dict[str, dict] = {}
    for section, cases in sections.items():
        records: dict[str, list[dict]] = {v: [] for v in variants}
        started = time.perf_counter()
        for i, item in enumerate(cases, start=1):
            case, box = item if isinstance(item, tuple) else (item, None)
            if predictor.image is not case.image:
                predictor.set_image(case.image, case.modality)
            truth = np.asarray(case.truth, bool)
            bound = every_slice_bound(predictor, truth)
            neighbour = neighbour_truth_boxes(predictor, truth, settings_of("old")) if oracle else None
            neighbour_dice = float("nan") if neighbour is None else float(dice(neighbour, truth))
            line = []
            for name in variants:
                use_decoder(predictor, name, weights)
                record = study_case(predictor, case, bound, settings_of(name), box)
                record["neighbour_truth_box_dice"] = neighbour_dice
                records[name].append(record)
                line.append(f"{name} {record['dice']:.3f}")
            print(
                f"[{section} {i}/{len(cases)}] {case.case_id}/{case.target} bound {records[variants[0]][-1]['bound_dice']:.3f}: "
                + ", ".join(line),
                file=sys.stderr,
                flush=True,
            )
        out[section] = {
            "seconds": round(time.perf_counter() - started, 1),
            "variants": {
                v: {"settings": asdict(settings_of(v)), "summary": summarise(records[v]), "cases": records[v]}
                for v in variants
            },
        }
        groups: dict[str, dict[str, list[dict]]] = {}
        for v in variants:
            for record in records[v]:
                groups.setdefault(record["target"], {}).setdefault(v, []).append(record)
        for target, by_variant in groups.items():
            title = f"{section} / {target}" if len(groups) > 1 else section
            print(f"\n### {title}\n\n" + table({v: summarise(rs) for v, rs in by_variant.items()}))
            if len(groups) > 1:
                out[section].setdefault("by_target", {})[target] = {
                    v: summarise(rs) for v, rs in by_variant.items()
                }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", help=f"comma-separated, from {', '.join(VARIANTS)} (default: all)")
    parser.add_argument(
        "--limit", type=int, help="hippocampus volumes, evenly spread (default: 30 train; with --test all 52)"
    )
    parser.add_argument(
        "--no-oracle",
        action="store_true",
        help="skip the neighbour's-GT-box column (saves a decode per slice)",
    )
    parser.add_argument("--test", action="store_true", help="hippocampus test split (52) and BraTS WT/TC/ET")
    parser.add_argument(
        "--val",
        action="store_true",
        help="hippocampus val split (26) and BraTS val (1 patient): to choose the mask-prompt decoder",
    )
    parser.add_argument(
        "--ct-tuning",
        action="store_true",
        help="the 9 organs (CT_ORGANS) of the 3 mm example CT, the CT for choosing settings",
    )
    parser.add_argument(
        "--mask-prompt-weights",
        default="auto",
        help="the 'trained' variant's mask-prompt adapter file (default: the shipped one)",
    )
    parser.add_argument(
        "--only",
        choices=("hippocampus", "brats", "ct", "ct-organs", "samples"),
        help="with --test: one dataset; 'ct': the liver of both TotalSegmentator example CTs; 'ct-organs': the "
        "interactive subset's 9 organs (CT_ORGANS) of the DICOM CT; 'samples': the demo samples alone",
    )
    parser.add_argument(
        "--no-samples", action="store_true", help="skip the demo samples (CT liver, hippocampus)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1)")
    parser.add_argument("--embedding-store", help="folder keeping embeddings on disk across runs")
    parser.add_argument("--output", type=Path, default=OUT)
    args = parser.parse_args(argv)
    variants = (
        args.variants.split(",") if args.variants else (["old", "default"] if args.test else list(VARIANTS))
    )
    for name in variants:
        settings_of(name)
    if args.val:
        sections = {
            "msd-hippocampus val": list(dataset_cases("msd-hippocampus", split="val", limit=args.limit)),
            "brats2015 val": list(dataset_cases("brats2015", split="val")),
        }
    elif args.test:
        sections = {}
        if args.only in (None, "hippocampus"):
            test = dataset_cases("msd-hippocampus", split="test", limit=args.limit)
            sections["msd-hippocampus test"] = list(test)
        if args.only in (None, "brats"):
            sections["brats2015"] = list(dataset_cases("brats2015"))
        if args.only == "ct":
            liver = dataset_cases("totalsegmentator-example", targets=("liver",))
            sections["totalsegmentator liver"] = list(liver)
        if args.only == "ct-organs":  # the DICOM CT: the 3 mm CT is for tuning (--ct-tuning)
            organs = dataset_cases("totalsegmentator-example", case_ids=("ct_dicom",), targets=CT_ORGANS)
            sections["ct_dicom organs"] = list(organs)
    elif args.ct_tuning:
        organs = dataset_cases("totalsegmentator-example", case_ids=("ct",), targets=CT_ORGANS)
        sections = {"ct 3 mm organs (tuning)": list(organs)}
    else:
        sections = {
            "msd-hippocampus train": list(
                dataset_cases("msd-hippocampus", split="train", limit=args.limit or 30)
            )
        }
    if not args.no_samples:
        sections["demo samples"] = sample_cases()
    spec = ModelSpec(threads=args.threads, embedding_store=args.embedding_store)
    started = time.perf_counter()
    results = run(sections, variants, spec, args.mask_prompt_weights, oracle=not args.no_oracle)
    document = json.loads(args.output.read_text(encoding="utf-8")) if args.output.exists() else {}
    document.setdefault("sections", {}).update(results)
    command = " ".join(["benchmarks/propagation_study.py", *(argv if argv is not None else sys.argv[1:])])
    document.setdefault("commands", {}).update({section: command for section in results})
    document.update(
        description=__doc__.split("\n\n")[0],
        model="litemedsam, student encoder (the default), GT 2D box on the largest slice + propagate",
        old_settings=OLD,
        environment=environment(),
        machine={"cpus": os.cpu_count(), "load_average": os.getloadavg()},
        seconds=round(time.perf_counter() - started, 1),
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.output.with_suffix(".tmp")
    temporary.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    temporary.replace(args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
