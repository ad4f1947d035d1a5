"""The bundled-sample demo (``oncoseg demo``): every sample segmented from its suggested prompt (3D samples
by propagation) and scored against its reference mask.

    >>> report = run_demo("demo-output")
    >>> report["polyp"]["dice_vs_reference"]
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from oncoseg.api import segment
from oncoseg.evaluate.metrics import dice
from oncoseg.io import atomic_write_path, load_image
from oncoseg.models.spec import ModelSpec
from oncoseg.samples import list_samples, sample_path


def run_demo(
    output: str | Path, on_sample: Callable[[str, dict, dict], None] | None = None, encoder: str = "auto"
) -> dict[str, dict[str, Any]]:
    """Write each sample's mask (``NAME_mask.png`` or ``.nii.gz``) and overlay (``NAME_overlay.png``) to
    ``output``, then ``results.json``: per sample the result summary (`SegmentationResult.to_dict`) and its
    ``dice_vs_reference``. ``on_sample(name, sample, entry)`` is called after each sample. Returns the report."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    predictor = ModelSpec(encoder=encoder).build_predictor()
    report = {}
    for name, sample in list_samples().items():
        prompt = sample["prompt"]
        volume = "z" in prompt
        suffix = ".nii.gz" if volume else ".png"
        result = segment(
            sample_path(name),
            box=[*prompt["box"], *([prompt["z"]] if volume else [])],
            modality=sample["modality"],
            volume=volume,
            predictor=predictor,
            output=out / f"{name}_mask{suffix}",
            overlay=out / f"{name}_overlay.png",
        )
        reference = load_image(sample_path(sample["mask"])).array
        if reference.ndim == result.labels.ndim + 1:  # an RGB mask picture
            reference = reference[..., 0]
        report[name] = {**result.to_dict(), "dice_vs_reference": dice(result.labels > 0, reference > 0)}
        if on_sample is not None:
            on_sample(name, sample, report[name])
    with atomic_write_path(out / "results.json") as temporary:
        temporary.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report
