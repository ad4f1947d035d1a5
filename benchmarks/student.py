"""The student image encoder against its teacher (LiteMedSAM's own encoder, today's fast bf16 path), in one run:
encoder speed, and ground-truth-box Dice on the test splits.

Accuracy (the same prompts for both; each mask decoded by the same mask decoder):
  kvasir-seg        the 100 test images, box = tight bbox of the whole mask
  busi              the test split's lesion images (normal images have no box)
  msd-hippocampus   the test volumes, a GT box on every slice holding hippocampus, Dice over the volume
  ct organs         every labelled organ (≥ 50 voxels) of the TotalSegmentator example CT (3 mm NIfTI) and its
                    DICOM series, a GT box on every slice holding it, Dice over the volume
The bar (issue 22): the student's mean Dice within 0.01 of the teacher's on each.

Speed: ``backend.encode`` on real slices (Kvasir test pictures and CT slices), teacher and student
alternating, median and p90 over repeats; the ratio teacher / student is the figure (the machine is shared).

Writes ``benchmarks/results/student.json`` (per-case Dice too) and prints a Markdown table.
Run: ``PYTHONPATH=src python benchmarks/student.py [--limit N] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from common import (
    DEFAULT_DATA,
    DEFAULT_OUT,
    environment,
    markdown_table,
    require_data,
    spread,
    summarise,
    write_json,
)
from tqdm import tqdm

from oncoseg.data.adapters import open_dataset
from oncoseg.models.litemedsam import LiteMedSAMBackend
from oncoseg.predictor import Predictor
from oncoseg.prompts import Prompt, box_from_mask

TOLERANCE = 0.01
DATASETS = ("kvasir-seg", "busi", "msd-hippocampus", "ct-organs")
MIN_VOXELS = 50


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--limit", type=int, help="at most N cases per dataset, evenly spread (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20, help="encodes per encoder for the speed figure")
    return parser.parse_args(argv)


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    total = int(prediction.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((prediction & truth).sum()) / total


def targets(name: str, limit: int | None):
    """``(case label, image, modality, {target: mask})`` of a dataset's test cases."""
    if name == "ct-organs":
        dataset = open_dataset("totalsegmentator-example")
        cases = [case for case in dataset.cases() if case.case_id in ("ct", "ct_dicom")]
    else:
        dataset = open_dataset(name)
        cases = dataset.cases("test")
        if name == "busi":
            cases = [case for case in cases if case.category != "normal"]
        cases = spread(cases, limit)
    for case in cases:
        image, regions = case.load()
        if name == "msd-hippocampus":  # the whole hippocampus, as benchmarks/accuracy.py scores it
            regions = {"hippocampus": np.logical_or.reduce(list(regions.values()))}
        regions = {k: v for k, v in regions.items() if v.sum() >= (MIN_VOXELS if v.ndim == 3 else 1)}
        yield case.case_id, image, case.modality, regions


def segment(predictor: Predictor, truth: np.ndarray) -> np.ndarray:
    """A GT box on the picture, or on every slice holding the target."""
    if truth.ndim == 2:
        return predictor.predict(Prompt(box=box_from_mask(truth))).masks[0]
    out = np.zeros_like(truth, dtype=bool)
    for z in np.flatnonzero(truth.any(axis=(1, 2))):
        out[z] = predictor.predict(Prompt(box=box_from_mask(truth[z], z=int(z))), z=int(z)).masks[0]
    return out


def accuracy(predictors: dict[str, Predictor], name: str, limit: int | None) -> list[dict[str, Any]]:
    rows = []
    for case_id, image, modality, regions in tqdm(list(targets(name, limit)), desc=name, unit="case"):
        scores: dict[str, dict[str, float]] = {}
        for label, predictor in predictors.items():
            predictor.set_image(image, modality)
            for target, truth in regions.items():
                scores.setdefault(target, {})[label] = dice(segment(predictor, truth), truth)
        rows += [{"case": case_id, "target": target, **values} for target, values in scores.items()]
    return rows


def speed(backends: dict[str, LiteMedSAMBackend], repeats: int) -> dict[str, Any]:
    """Encode times of real slices, the encoders alternating (so both see the same load)."""
    kvasir = open_dataset("kvasir-seg").cases("test")[:2]
    ct = next(c for c in open_dataset("totalsegmentator-example").cases() if c.case_id == "ct_dicom")
    pictures = []
    for case in kvasir:
        image, _ = case.load()
        predictor = Predictor(backends["teacher"])
        predictor.set_image(image, case.modality)
        pictures.append(predictor.slice_pixels(None))
    image, _ = ct.load()
    predictor = Predictor(backends["teacher"])
    predictor.set_image(image, "ct")
    pictures += [predictor.slice_pixels(z) for z in (5, 10)]
    times: dict[str, list[float]] = {label: [] for label in backends}
    for label, backend in backends.items():  # warm-up
        for pixels in pictures[:2]:
            backend.encode(pixels)
    for i in range(repeats):
        pixels = pictures[i % len(pictures)]
        for label, backend in backends.items():
            began = time.perf_counter()
            backend.encode(pixels)
            times[label].append(time.perf_counter() - began)
    result = {
        label: {"median_ms": 1000 * float(np.median(t)), "p90_ms": 1000 * float(np.percentile(t, 90))}
        for label, t in times.items()
    }
    result["ratio_median"] = result["teacher"]["median_ms"] / result["student"]["median_ms"]
    return result


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    require_data(args.data)
    torch.set_num_threads(args.threads)
    teacher = LiteMedSAMBackend(encoder="teacher")
    student = LiteMedSAMBackend(encoder="student", model=teacher.model)
    backends = {"teacher": teacher, "student": student}
    predictors = {label: Predictor(backend, cache_slices=1024) for label, backend in backends.items()}
    result: dict[str, Any] = {
        "environment": environment(),
        "load_average": list(__import__("os").getloadavg()),
        "student": student.describe(),
        "speed": speed(backends, args.repeats),
        "datasets": {},
    }
    for name in args.datasets.split(","):
        rows = accuracy(predictors, name, args.limit)
        teacher_dice = [row["teacher"] for row in rows]
        student_dice = [row["student"] for row in rows]
        difference = float(np.mean(student_dice) - np.mean(teacher_dice))
        result["datasets"][name] = {
            "teacher": summarise(teacher_dice),
            "student": summarise(student_dice),
            "difference": difference,
            "within_tolerance": difference >= -TOLERANCE,
            "cases": rows,
        }
    print_table(result)
    path = write_json(result, __import__("pathlib").Path(args.out), "student")
    print(f"\nwritten: {path}")
    return result


def print_table(result: dict[str, Any]) -> None:
    timing = result["speed"]
    print(
        f"encoder: teacher {timing['teacher']['median_ms']:.0f} ms (p90 {timing['teacher']['p90_ms']:.0f}), "
        f"student {timing['student']['median_ms']:.0f} ms (p90 {timing['student']['p90_ms']:.0f}): "
        f"{timing['ratio_median']:.2f}x faster"
    )
    rows = [
        (
            name,
            entry["teacher"]["n"],
            f"{entry['teacher']['mean']:.4f}",
            f"{entry['student']['mean']:.4f}",
            f"{entry['difference']:+.4f}",
            "yes" if entry["within_tolerance"] else "no",
        )
        for name, entry in result["datasets"].items()
    ]
    print(
        markdown_table(
            ("test set", "targets", "teacher Dice", "student Dice", "difference", "within 0.01"), rows
        )
    )


if __name__ == "__main__":
    main()
