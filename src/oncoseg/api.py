"""The Python API behind every shell (CLI, service, plugin): one call from an image and prompts to masks,
measurements and files.

    >>> from oncoseg import segment
    >>> result = segment("ct.nii.gz", box=(14, 16, 80, 76, 24), volume=True, output="liver.nii.gz")
    >>> result.measurements[0].volume_ml
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from oncoseg.errors import EmptyResultError, OncoSegError
from oncoseg.image import MedicalImage
from oncoseg.io import atomic_write_path, check_mask_path, load_image, save_mask
from oncoseg.measure import Measurements, measure
from oncoseg.predictor import Predictor
from oncoseg.prompts import Box, BoxLike, PointLike, Prompt, build_prompts, validate_prompt
from oncoseg.volume import PropagationSettings, propagate


@dataclass
class SegmentationResult:
    """Masks of one call: ``labels`` holds object ``i`` (in prompt order) as label ``i`` (1-based)."""

    image: MedicalImage
    labels: np.ndarray
    prompts: list[Prompt]
    scores: list[float]
    measurements: list[Measurements]
    slices: list[tuple[int, int] | None] = field(default_factory=list)
    predictor: Predictor | None = None

    @property
    def mask(self) -> MedicalImage:
        """The label map with the source image's geometry."""
        return self.image.with_array(self.labels)

    def save(self, path: str | Path) -> Path:
        """Write the label map (NIfTI/NRRD/MHA with the source geometry, or PNG for 2D images)."""
        return save_mask(self.labels, self.image, path)

    def overlay(self):
        """A PIL picture of the slice where the first object is largest, masks and long axes drawn."""
        from oncoseg.overlay import render_overlay

        z = None
        if self.image.is_3d:
            first = self.labels == 1
            z = int(np.argmax(first.sum(axis=(1, 2)))) if first.any() else 0
        labels = self.labels[z] if z is not None else self.labels
        axes = [m.long_axis_endpoints if (m.recist_slice in (None, z)) else None for m in self.measurements]
        return render_overlay(self.predictor.slice_pixels(z), labels, axes)

    def save_overlay(self, path: str | Path) -> Path:
        from oncoseg.overlay import save_overlay

        return save_overlay(self.overlay(), path)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: image facts and, per object, prompt, score and measurements (no patient data)."""
        objects = []
        for i, (prompt, score, m) in enumerate(zip(self.prompts, self.scores, self.measurements), start=1):
            entry = {"label": i, "score": round(score, 4), "prompt": _prompt_dict(prompt), **m.to_dict()}
            if self.slices and self.slices[i - 1] is not None:
                entry["slices"] = list(self.slices[i - 1])
            objects.append(entry)
        return {"image": self.image.describe(), "objects": objects}

    def save_json(self, path: str | Path) -> Path:
        path = Path(path)
        with atomic_write_path(path) as temporary:
            temporary.write_text(json.dumps(self.to_dict(), indent=2), encoding="utf-8")
        return path


def _prompt_dict(prompt: Prompt) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if prompt.box is not None:
        out["box"] = [prompt.box.x0, prompt.box.y0, prompt.box.x1, prompt.box.y1]
    if prompt.points:
        out["points"] = [[p.x, p.y, int(p.positive)] for p in prompt.points]
    if prompt.z is not None:
        out["slice"] = prompt.z
    return out


def segment(
    image: str | Path | MedicalImage | np.ndarray,
    box: BoxLike | Sequence[BoxLike] | None = None,
    points: Sequence[PointLike] = (),
    *,
    modality: str | None = None,
    volume: bool = False,
    backend: str = "litemedsam",
    predictor: Predictor | None = None,
    propagation: PropagationSettings | None = None,
    output: str | Path | None = None,
    overlay: str | Path | None = None,
    json_path: str | Path | None = None,
    on_slice: Callable[[int], None] | None = None,
) -> SegmentationResult:
    """Segment ``image`` from boxes and/or points and measure each object.

    ``box`` is one box or a list of boxes (one object each); boxes and points are pixel coordinates, with the
    slice index as last box value / third point value for volumes. ``volume=True`` propagates each object through
    the volume; otherwise only the prompted slice is segmented. Outputs are written only when everything
    succeeded (an empty result raises ``EmptyResultError`` and writes nothing).
    """
    if not isinstance(image, MedicalImage):
        image = load_image(image, modality=modality) if isinstance(image, (str, Path)) else _wrap_array(image)
    boxes = [] if box is None else ([box] if _is_single_box(box) else list(box))
    prompts = build_prompts(boxes, points)
    if volume and not image.is_3d:
        raise OncoSegError("--3d needs a volume, but this image is 2D")
    for prompt in prompts:  # before the model is loaded or run
        validate_prompt(prompt, image.shape)
    if output is not None:
        check_mask_path(output, image)

    predictor = predictor or Predictor(backend)
    predictor.set_image(image, modality=modality)
    labels = np.zeros(image.shape, dtype=np.uint8)
    scores, measurements, slices = [], [], []
    for label, prompt in enumerate(prompts, start=1):
        if volume:
            result = propagate(predictor, prompt, propagation, on_slice=on_slice)
            mask, score = result.mask, float(np.mean(list(result.slice_scores.values())))
            slices.append(result.slice_range)
        else:
            prediction = predictor.predict(prompt)
            mask2d, score = prediction.masks[0], float(prediction.scores[0])
            if image.is_3d:
                mask = np.zeros(image.shape, dtype=bool)
                mask[prompt.z] = mask2d
                slices.append((prompt.z, prompt.z))
            else:
                mask = mask2d
                slices.append(None)
        if not mask.any():
            where = f" on slice {prompt.z}" if prompt.z is not None else ""
            raise EmptyResultError(f"the model found nothing for object {label}{where}: check the prompt")
        labels[mask & (labels == 0)] = label
        scores.append(score)
        measurements.append(measure(mask, image.spacing))

    result = SegmentationResult(image, labels, prompts, scores, measurements, slices, predictor)
    if output is not None:
        result.save(output)
    if overlay is not None:
        result.save_overlay(overlay)
    if json_path is not None:
        result.save_json(json_path)
    return result


def _is_single_box(box: Any) -> bool:
    """True for one box (a Box, a string, or 4-5 numbers); False for a list of boxes."""
    if isinstance(box, (Box, str)):
        return True
    return len(box) in (4, 5) and all(np.isscalar(v) and not isinstance(v, str) for v in box)


def _wrap_array(array: np.ndarray) -> MedicalImage:
    array = np.asarray(array)
    channels = 3 if array.ndim == 3 and array.shape[-1] == 3 else 1
    return MedicalImage.from_array(array, channels=channels)
