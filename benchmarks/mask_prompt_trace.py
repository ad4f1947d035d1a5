"""Why the mask-prompt decoder's walk loses where it loses: the walk of `PropagationSettings(mask_prompt=True)`
traced slice by slice, each walked slice also decoded box-only from the same box (the base decoder).

For every walked slice: Dice against the truth of the trained answer and of the box-only answer, both quality
scores, each answer's IoU with the neighbour's mask and with each other, and the stop rules each would trip.
The walk itself follows the trained answer (as `oncoseg.volume.walk` does), so the trace shows where it stops and
what the box-only answer would have been there. Summaries per section: how the walks ended (rule, truth still
there or not), and on slices where the trained answer trips a rule while the truth continues, how often the
box-only answer passes every rule and its Dice there.

    nice -n 19 .venv/bin/python benchmarks/mask_prompt_trace.py --val --embedding-store /tmp/mp/emb
    nice -n 19 .venv/bin/python benchmarks/mask_prompt_trace.py --ct-tuning --embedding-store /tmp/mp/emb

Writes /tmp JSON (``--output``): a diagnosis tool, not a result table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from propagation_study import CT_ORGANS

from oncoseg.embedding_store import EmbeddingStore
from oncoseg.evaluate.interactive import dataset_cases
from oncoseg.evaluate.metrics import dice
from oncoseg.models.spec import ModelSpec
from oncoseg.prompts import Prompt, box_from_mask
from oncoseg.volume import PropagationSettings, ct_gate, keep_touching, mask_iou, stop_reasons


def trace_case(predictor, case, settings: PropagationSettings) -> dict:
    truth = np.asarray(case.truth, bool)
    z0 = int(np.argmax(truth.sum(axis=(1, 2))))
    if predictor.image is not case.image:
        predictor.set_image(case.image, case.modality)
    first = predictor.predict(Prompt(box=box_from_mask(truth[z0], z=z0)), z=z0)
    start, start_logits = first.masks[0], first.logits[0]
    min_pixels = max(settings.min_pixels, settings.min_area_ratio * start.sum())
    gate = ct_gate(predictor, start, z0, settings)
    image = predictor.image
    rows = []
    for step in (1, -1):
        previous, logits, z = start, start_logits, z0 + step
        while 0 <= z < image.num_slices:
            box = box_from_mask(previous, z=z).enlarged(
                settings.box_margin, settings.min_margin_px, start.shape
            )
            if predictor.blank_reason(Prompt(box=box), z) is not None:
                break
            answers = {}
            for name, mask_input in (("trained", logits[None]), ("base", None)):
                p = predictor.predict([Prompt(box=box)], z=z, mask_input=mask_input)
                m = p.masks[0] if gate is None else gate.apply(image.array[z], p.masks[0])
                m = keep_touching(m, previous)
                answers[name] = (m, float(p.scores[0]), p.logits[0])
            (mt, st, lt), (mb, sb, _) = answers["trained"], answers["base"]
            rt, rb = (
                stop_reasons(mt, st, previous, settings, min_pixels),
                stop_reasons(mb, sb, previous, settings, min_pixels),
            )
            has = bool(truth[z].any())
            rows.append(
                {
                    "z": z, "step": step, "truth": has, "truth_px": int(truth[z].sum()),
                    "dice_trained": float(dice(mt, truth[z])) if has else None,
                    "dice_base": float(dice(mb, truth[z])) if has else None,
                    "score_trained": st, "score_base": sb,
                    "area_trained": int(mt.sum()), "area_base": int(mb.sum()), "area_previous": int(previous.sum()),
                    "iou_prev_trained": mask_iou(mt, previous), "iou_prev_base": mask_iou(mb, previous),
                    "iou_trained_base": mask_iou(mt, mb),
                    "reasons_trained": rt, "reasons_base": rb,
                }
            )  # fmt: skip
            if rt:
                break
            previous, logits, z = mt, lt, z + step
    return {"case": case.case_id, "target": case.target, "z0": z0, "rows": rows}


def summary(traces: list[dict]) -> dict:
    rows = [r for t in traces for r in t["rows"]]
    ends = [r for r in rows if r["reasons_trained"]]
    early = [r for r in ends if r["truth"]]
    kept = [r for r in rows if not r["reasons_trained"] and r["truth"]]
    rules: dict[str, int] = {}
    for r in early:
        for name in r["reasons_trained"]:
            rules[name] = rules.get(name, 0) + 1

    def mean(values):
        values = [v for v in values if v is not None]
        return round(float(np.mean(values)), 3) if values else None

    return {
        "walks": 2 * len(traces),
        "stops_with_truth_there": len(early),
        "stops_past_truth": len(ends) - len(early),
        "rules_at_early_stops": rules,
        "early_stops_base_passes": sum(1 for r in early if not r["reasons_base"]),
        "early_stops_dice_trained": mean([r["dice_trained"] for r in early]),
        "early_stops_dice_base": mean([r["dice_base"] for r in early]),
        "kept_truth_slices": len(kept),
        "kept_dice_trained": mean([r["dice_trained"] for r in kept]),
        "kept_dice_base_same_box": mean([r["dice_base"] for r in kept]),
        "kept_iou_trained_base": mean([r["iou_trained_base"] for r in kept]),
        "kept_no_truth_slices": sum(1 for r in rows if not r["reasons_trained"] and not r["truth"]),
        "kept_slices_trained_worse_by_0.1": sum(1 for r in kept if r["dice_trained"] < r["dice_base"] - 0.1),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--val", action="store_true", help="hippocampus val (26) and the BraTS val patient")
    parser.add_argument(
        "--ct-tuning", action="store_true", help="9 organs of the 3 mm example CT (tuning CT)"
    )
    parser.add_argument("--limit", type=int)
    parser.add_argument("--mask-prompt-weights", default="auto")
    parser.add_argument("--embedding-store")
    parser.add_argument("--output", type=Path, default=Path("/tmp/mask_prompt_trace.json"))
    args = parser.parse_args(argv)
    sections = {}
    if args.val:
        sections["msd-hippocampus val"] = dataset_cases("msd-hippocampus", split="val", limit=args.limit)
        sections["brats2015 val"] = dataset_cases("brats2015", split="val")
    if args.ct_tuning:
        sections["ct 3 mm (tuning)"] = dataset_cases(
            "totalsegmentator-example", case_ids=("ct",), targets=CT_ORGANS
        )
    store = EmbeddingStore(args.embedding_store, max_bytes=32 << 30) if args.embedding_store else False
    predictor = ModelSpec(threads=1).build_predictor(cache_slices=4096, embedding_store=store)
    predictor.backend.mask_prompt = args.mask_prompt_weights
    settings = PropagationSettings(mask_prompt=True)
    out = {}
    for section, cases in sections.items():
        traces = []
        for case in cases:
            traces.append(trace_case(predictor, case, settings))
            print(f"{section} {case.case_id}/{case.target}", file=sys.stderr, flush=True)
        by_target: dict[str, list] = {}
        for t in traces:
            by_target.setdefault(t["target"], []).append(t)
        out[section] = {
            "summary": {target: summary(ts) for target, ts in by_target.items()},
            "traces": traces,
        }
        for target, s in out[section]["summary"].items():
            print(f"{section} / {target}: {json.dumps(s)}")
    args.output.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
