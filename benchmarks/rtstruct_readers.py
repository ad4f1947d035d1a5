"""Do independent readers see the organs `oncoseg contour` writes? Per organ: the volume Onco-Seg drew, and what
rt-utils 1.2.7, dicompyler-core 0.5.6 and plastimatch 1.9.4 (default and ``--xor-contours``) rasterise from the
RTSTRUCT, with Dice against Onco-Seg's own masks.

Runs the real command ``oncoseg contour CT --output-type rtstruct -o OUT/oars.dcm`` (default path: every organ
of the default atlas, model refinement; ``OMP_NUM_THREADS`` = ``--threads``). The source masks are
`oncoseg.dicom.read_rtstruct` of that file, checked against the volumes in its JSON sidecar (the masks the
pipeline held). The readers (benchmarks/rtstruct_reading.py, shared with tests/test_rtstruct_readers.py) get a
copy of the series with the UIDs and uncompressed pixels they need; the geometry is untouched.

With ``--labels`` (default: the example series' own TotalSegmentator labels) it also scores each organ's
confidence against the labels: Dice of every drawn organ, and the labels' volume of every organ not drawn.

Writes ``benchmarks/results/rtstruct_readers.json`` and prints Markdown tables.
Run: ``PYTHONPATH=src python benchmarks/rtstruct_readers.py [--threads 1] [--series DIR] [--labels NIFTI]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import DEFAULT_DATA, DEFAULT_OUT, environment, markdown_table, write_json
from rtstruct_reading import read_dicompyler, read_plastimatch, read_rt_utils, reader_copy

from oncoseg.dicom import load_reference, read_rtstruct
from oncoseg.io import load_image


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--series", type=Path, default=DEFAULT_DATA / "totalsegmentator-example" / "example_ct_dicom"
    )
    parser.add_argument(
        "--labels", type=Path, default=DEFAULT_DATA / "totalsegmentator-example" / "example_seg_dicom.nii.gz"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rtstruct-readers-"))
    try:
        rtstruct = work / "oars.dcm"
        command = [
            "oncoseg",
            "contour",
            str(args.series),
            "--output-type",
            "rtstruct",
            "-o",
            str(rtstruct),
            "-q",
        ]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        run = subprocess.run(
            [sys.executable, "-c", "import sys; from oncoseg.cli import main; sys.exit(main())", *command[1:]],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        print(run.stdout)
        sidecar = json.loads((work / "oars.json").read_text(encoding="utf-8"))
        reference = load_reference(args.series)
        source = read_rtstruct(rtstruct, args.series)
        voxel_ml = float(np.prod(load_image(args.series).spacing)) / 1000.0
        for name, row in sidecar["organs"].items():  # our reader gives back the pipeline's masks
            assert abs(float(source[name].sum()) * voxel_ml - row["volume_ml"]) < 0.01, name
        copy = reader_copy(args.series, rtstruct, work / "ct")
        readers = {
            "rt-utils": read_rt_utils(rtstruct, copy, reference),
            "dicompyler-core": read_dicompyler(rtstruct, args.series, reference),
            "plastimatch --xor-contours": read_plastimatch(rtstruct, copy, work / "pm_xor", True),
            "plastimatch": read_plastimatch(rtstruct, copy, work / "pm", False),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    organs = {}
    for name, mask in sorted(source.items(), key=lambda item: -int(item[1].sum())):
        row = {"volume_ml": round(float(mask.sum()) * voxel_ml, 2)}
        for reader, masks in readers.items():
            got = masks[name]
            row[reader] = {
                "volume_change": round(float(got.sum()) / float(mask.sum()) - 1.0, 4),
                "dice": round(dice(got, mask), 4),
            }
        organs[name] = row
    confidence = score_confidence(sidecar, args.labels, voxel_ml, source) if args.labels else None
    result = {
        "command": " ".join(command[:5] + ["-o", "oars.dcm"]),
        "not_drawn": sidecar["not_drawn"],
        "organs": organs,
        "confidence_vs_labels": confidence,
        "timings_s": sidecar["timings_s"],
        "environment": environment(),
    }
    write_json(result, args.out, "rtstruct_readers")
    header = ["organ", "Onco-Seg mL", *(f"{r}: change, Dice" for r in readers)]
    rows = [
        [name, f"{row['volume_ml']:.1f}"]
        + [f"{row[r]['volume_change']:+.2%}, {row[r]['dice']:.4f}" for r in readers]
        for name, row in organs.items()
    ]
    print(markdown_table(header, rows))
    if confidence:
        rows = [
            [name, row["confidence"] if row["confidence"] is not None else "not drawn", row["review"],
             "" if row["dice"] is None else f"{row['dice']:.3f}",
             "no such label" if row["labels_ml"] is None else f"{row['labels_ml']:.1f}", row["note"]]
            for name, row in confidence.items()
        ]  # fmt: skip
        print(markdown_table(["organ", "confidence", "review", "Dice vs labels", "labels mL", "why"], rows))


def score_confidence(sidecar: dict, labels_path: Path, voxel_ml: float, drawn: dict) -> dict:
    """Each organ asked for: its confidence and Dice against the labels, or why it is not drawn and how much
    of it the labels have."""
    from oncoseg.contour.bones import GROUPS, members
    from oncoseg.contour.check import dice as organ_dice
    from oncoseg.dicom.tg263 import lookup

    labels = load_image(labels_path).array
    table = json.loads((labels_path.parent / "label_map_total_and_total_mr.json").read_text(encoding="utf-8"))
    values: dict[str, list[int]] = {}
    for value, label in table["total"].items():
        entry = lookup(label)
        if entry is not None:
            values.setdefault(entry.name, []).append(int(value))
    for group in GROUPS:  # e.g. Rib: every numbered rib
        found = [v for name in members(group, list(values)) for v in values[name]]
        if found:
            values[group] = found
    rows = {}
    for name, row in sidecar["organs"].items():
        truth = np.isin(labels, values.get(name, []))
        score = (
            organ_dice(drawn[name], truth) if name in values else None
        )  # None: the labels have no such class
        rows[name] = {
            "confidence": row["confidence"]["estimate"],
            "review": row["confidence"]["review"],
            "dice": None if score is None else round(score, 4),
            "labels_ml": round(float(truth.sum()) * voxel_ml, 2) if name in values else None,
            "note": ", ".join(row["confidence"]["reasons"]),
        }
    for name, reason in sidecar["not_drawn"].items():
        truth = np.isin(labels, values.get(name, []))
        rows[name] = {"confidence": None, "review": None, "dice": None,
                      "labels_ml": round(float(truth.sum()) * voxel_ml, 2), "note": reason}  # fmt: skip
    return dict(sorted(rows.items(), key=lambda kv: (kv[1]["confidence"] is None, kv[1]["confidence"] or 0)))


if __name__ == "__main__":
    main()
