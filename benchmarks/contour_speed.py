"""Whole-CT organs-at-risk contouring: time on this machine, and the two sanity checks of docs/contour.md.

1. speed: ``oncoseg.contour.contour`` with its defaults (every organ the default atlas has, model refinement)
   on the example DICOM CT series (20 slices, 512², 2 mm), from reading the folder to the final masks;
   ``--repeats`` runs (the first includes loading the model); stage times from the pipeline.
2. check (a), another patient: the same run scored per organ against that series' own labels (TotalSegmentator
   predictions, not manual ground truth). The atlas (``example_ct_sm``) is a different patient, so this is an
   inter-patient atlas transfer; only organs present in both images are scored.
3. check (b), known deformation: the atlas CT bent by a known smooth random deformation plus noise
   (`oncoseg.contour.check.synthetic_patient`, seeds 0..N-1), contoured with the unbent atlas, scored against
   the bent labels — atlas only, and (seed 0) with model refinement.

Writes ``benchmarks/results/contour.json`` and prints Markdown tables.
Run: ``PYTHONPATH=src python benchmarks/contour_speed.py [--threads 2] [--repeats 2] [--seeds 3]``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import DEFAULT_DATA, DEFAULT_OUT, environment, markdown_table, require_data, write_json

from oncoseg.contour import contour, load_atlas
from oncoseg.contour.check import dice, dice_per_organ, synthetic_patient
from oncoseg.dicom.tg263 import lookup
from oncoseg.io import load_image
from oncoseg.predictor import Predictor


def reference_masks(example: Path, organs: list[str]) -> dict[str, np.ndarray]:
    """The example series' own labels (TotalSegmentator names → TG-263), for the organs asked for."""
    import json

    names = json.loads((example / "label_map_total_and_total_mr.json").read_text(encoding="utf-8"))["total"]
    labels = load_image(example / "example_seg_dicom.nii.gz").array
    out = {}
    for value, name in names.items():
        entry = lookup(name)
        if entry is not None and entry.name in organs:
            out[entry.name] = out.get(entry.name, np.zeros(labels.shape, bool)) | (labels == int(value))
    return out


def fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads (default 2: the target machine)"
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=3, help="synthetic deformations for check (b)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    example = require_data(args.data) / "totalsegmentator-example"
    atlas = load_atlas(example)
    result: dict[str, Any] = {"environment": environment(), "atlas": str(atlas.source)}

    # 1 + (a): the default path on the example series
    runs, predictor = [], None
    for repeat in range(args.repeats):
        start, cpu = time.perf_counter(), time.process_time()
        if predictor is None:
            predictor = Predictor("litemedsam")
        loaded = time.perf_counter() - start
        contoured = contour(example / "example_ct_dicom", atlas=atlas, predictor=predictor)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        runs.append(
            {
                "wall_s": round(wall, 2),
                "cpu_s": round(cpu, 2),
                "model_load_s": round(loaded, 2),
                **contoured.timings,
            }
        )
        print(f"run {repeat + 1}: {wall:.1f} s wall, {cpu:.1f} s CPU (load average {os.getloadavg()[0]:.1f})")
    result["speed"] = {
        "series": "example_ct_dicom (20 x 512 x 512, 2 mm)",
        "runs": runs,
        "load_average_1min_at_end": os.getloadavg()[0],
        "note": "wall time depends on other work on the machine; cpu_s is this process' CPU time (all threads)",
    }
    truth = reference_masks(example, list(contoured.masks))
    rows = []
    for name, mask in contoured.masks.items():
        if name not in truth:
            continue
        rows.append(
            {
                "organ": name,
                "method": contoured.methods[name],
                "atlas_only": dice(contoured.priors[name], truth[name]),
                "final": dice(mask, truth[name]),
            }
        )
    result["check_a_other_patient"] = rows

    # (b): known deformations of the atlas itself
    organs = atlas.organs()
    per_seed = []
    for seed in range(args.seeds):
        patient, bent = synthetic_patient(atlas, seed=seed)
        plain = dice_per_organ(contour(patient, atlas=atlas, refine=False).masks, bent)
        entry = {"seed": seed, "atlas_only": plain}
        if seed == 0:
            refined = contour(patient, atlas=atlas, predictor=predictor)
            entry["refined"] = dice_per_organ(refined.masks, bent)
            entry["methods"] = refined.methods
        per_seed.append(entry)
        print(f"seed {seed}: mean Dice {np.mean([v for v in plain.values() if v is not None]):.3f}")
    result["check_b_known_deformation"] = per_seed
    path = write_json(result, args.out, "contour")

    print("\n## Whole-CT time (default path)\n")
    print(
        markdown_table(
            ["run", "wall s", "CPU s", "registration s", "refine s", "total s"],
            [
                [
                    i + 1,
                    r["wall_s"],
                    r["cpu_s"],
                    round(r["registration"], 1),
                    round(r.get("refine", 0.0), 1),
                    round(r["total"], 1),
                ]
                for i, r in enumerate(runs)
            ],
        )
    )
    print("\n## Check (a): another patient (Dice vs the series' TotalSegmentator labels)\n")
    print(
        markdown_table(
            ["organ", "method", "atlas only", "final"],
            [[r["organ"], r["method"], fmt(r["atlas_only"]), fmt(r["final"])] for r in rows],
        )
    )
    print("\n## Check (b): known deformation of the atlas (Dice vs bent labels)\n")
    table = []
    for name in organs:
        values = [s["atlas_only"].get(name) for s in per_seed]
        values = [v for v in values if v is not None]
        seed0 = per_seed[0]["atlas_only"].get(name)
        refined = per_seed[0].get("refined", {}).get(name)
        method = per_seed[0].get("methods", {}).get(name, "")
        table.append(
            [name, fmt(float(np.mean(values)) if values else None), fmt(seed0), fmt(refined), method]
        )
    header = [
        "organ",
        f"atlas only (mean of {args.seeds})",
        "atlas only (seed 0)",
        "default path (seed 0)",
        "method",
    ]
    print(markdown_table(header, table))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
