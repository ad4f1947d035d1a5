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
from oncoseg.io import check_mask_path, load_image, save_mask
from oncoseg.io.write import OutputFiles, check_distinct, check_output_path
from oncoseg.measure import Measurements, measure
from oncoseg.models.spec import ModelSpec
from oncoseg.predictor import Predictor, blank_error
from oncoseg.prompts import Box, BoxLike, PointLike, Prompt, _as_box, build_prompts, validate_prompt
from oncoseg.session import Session
from oncoseg.volume import PropagationSettings


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

    @classmethod
    def from_session(cls, session: Session) -> SegmentationResult:
        """The objects of ``session`` as one result (labels in object order)."""
        objects = session.objects
        return cls(
            session.image,
            session.labels(),
            [obj.prompt for obj in objects],
            [obj.score for obj in objects],
            [session.measure(obj) for obj in objects],
            [obj.slice_range if session.image.is_3d else None for obj in objects],
            session.predictor,
        )

    @property
    def mask(self) -> MedicalImage:
        """The label map with the source image's geometry."""
        return self.image.with_array(self.labels)

    def save(self, path: str | Path, outputs: OutputFiles | None = None) -> Path:
        """Write the label map (NIfTI/NRRD/MHA with the source geometry, or PNG for 2D images); with
        ``outputs`` as part of that transaction."""
        return save_mask(self.labels, self.image, path, outputs)

    def overlay(self):
        """A PIL picture of the slice where the first object is largest, masks and long axes drawn."""
        from oncoseg.render import render_overlay

        z = None
        if self.image.is_3d:
            first = self.labels == 1
            z = int(np.argmax(first.sum(axis=(1, 2)))) if first.any() else 0
        labels = self.labels[z] if z is not None else self.labels
        axes = [m.long_axis_endpoints if (m.recist_slice in (None, z)) else None for m in self.measurements]
        return render_overlay(self.predictor.slice_pixels(z), labels, axes)

    def save_overlay(self, path: str | Path, outputs: OutputFiles | None = None) -> Path:
        from oncoseg.render import save_overlay

        return save_overlay(self.overlay(), path, outputs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: image facts, per object prompt, score and measurements (no patient data), and the
        warnings of reading the image."""
        objects = []
        for i, (prompt, score, m) in enumerate(zip(self.prompts, self.scores, self.measurements), start=1):
            entry = {"label": i, "score": round(score, 4), "prompt": _prompt_dict(prompt), **m.to_dict()}
            if self.slices and self.slices[i - 1] is not None:
                entry["slices"] = list(self.slices[i - 1])
            objects.append(entry)
        warnings = [str(w) for w in self.image.metadata.get("warnings", [])]
        return {"image": self.image.describe(), "objects": objects, "warnings": warnings}

    def write(self, output=None, overlay=None, json_path=None) -> SegmentationResult:
        """Write whichever of mask, overlay and JSON report were asked for, all or none: an output that cannot
        be written raises OncoSegError naming it and leaves every existing file as it was. Returns ``self``."""
        check_outputs(self.image, output, overlay, json_path)
        with OutputFiles() as files:
            if output is not None:
                self.save(output, files)
            if overlay is not None:
                self.save_overlay(overlay, files)
            if json_path is not None:
                self.save_json(json_path, files)
        return self

    def save_json(self, path: str | Path, outputs: OutputFiles | None = None) -> Path:
        if outputs is None:
            with OutputFiles() as own:
                return self.save_json(path, own)
        text = json.dumps(self.to_dict(), indent=2)
        return outputs.write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def check_outputs(image: MedicalImage, output=None, overlay=None, json_path=None) -> None:
    """Raise OncoSegError now, before the model runs, if any requested output cannot be written."""
    from oncoseg.render import check_overlay_path

    if output is not None:
        check_mask_path(output, image)
    if overlay is not None:
        check_overlay_path(overlay)
    if json_path is not None:
        check_output_path(json_path, "JSON report")
    check_distinct(output, overlay, json_path)


def _place(image: MedicalImage, z: int | None) -> str:
    return f"slice {z}" if image.is_3d else "the image"


def _prompt_dict(prompt: Prompt) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if prompt.box is not None:
        out["box"] = [prompt.box.x0, prompt.box.y0, prompt.box.x1, prompt.box.y1]
    if prompt.points:
        out["points"] = [[p.x, p.y, int(p.positive)] for p in prompt.points]
    if prompt.text is not None:
        out["text"] = prompt.text
    if prompt.exemplars:
        out["exemplars"] = [[b.x0, b.y0, b.x1, b.y1] for b in prompt.exemplars]
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
    text: str | None = None,
    exemplars: Sequence[BoxLike] = (),
    slice_index: int | None = None,
    weights: str | Path | None = None,
    threshold: float | None = None,
) -> SegmentationResult:
    """Segment ``image`` from boxes and/or points and measure each object.

    ``box`` is one box or a list of boxes (one object each); boxes and points are pixel coordinates, with the
    slice index as last box value / third point value for volumes. ``volume=True`` propagates each object through
    the volume; otherwise only the prompted slice is segmented. Outputs are written only when everything
    succeeded, all or none (an empty result raises ``EmptyResultError`` and writes nothing); a prompt on pixels
    that hold no information (constant, or NaN only) finds nothing.

    Concept prompts: ``text`` ("polyp": the default model knows the concepts `oncoseg concepts` lists, SAM3 any
    text) and/or ``exemplars`` (SAM3: boxes around examples) find every instance, one label each; on a volume
    give ``slice_index`` (text alone) or ``volume=True`` (every slice, instances joined in 3D). ``weights`` is
    the SAM3 folder, ``threshold`` the confidence an instance needs.
    """
    if text is not None or exemplars:
        return _segment_concept(
            image, text, exemplars, modality=modality, volume=volume, backend=backend, predictor=predictor,
            output=output, overlay=overlay, json_path=json_path, on_slice=on_slice, slice_index=slice_index,
            weights=weights, threshold=threshold,
        )  # fmt: skip
    if not isinstance(image, MedicalImage):
        image = load_image(image, modality=modality) if isinstance(image, (str, Path)) else _wrap_array(image)
    boxes = [] if box is None else ([box] if _is_single_box(box) else list(box))
    prompts = build_prompts(boxes, points)
    model = predictor or _model_spec(backend, weights, threshold)  # built after the checks
    session = Session(image, model, modality=modality, propagation=propagation)
    for label, prompt in enumerate(prompts, start=1):  # before the model is loaded or run
        session.check(prompt, volume, label)
    check_outputs(image, output, overlay, json_path)
    for prompt in prompts:
        session.segment(prompt, volume=volume, on_slice=on_slice)
    return SegmentationResult.from_session(session).write(output, overlay, json_path)


def _model_spec(backend: str, weights: str | Path | None, threshold: float | None) -> ModelSpec:
    """The model of `segment`'s ``backend``, ``weights`` and ``threshold`` (SAM3's: LiteMedSAM takes it per call)."""
    return ModelSpec(
        backend=backend,
        weights=None if weights is None else str(weights),
        threshold=threshold if backend == "sam3" else None,
    )


def _segment_concept(
    image, text, exemplars, *, modality, volume, backend, predictor, output, overlay, json_path, on_slice,
    slice_index, weights, threshold,
) -> SegmentationResult:  # fmt: skip
    """`segment` for a concept prompt: every instance of ``text``/``exemplars`` becomes one label."""
    if not isinstance(image, MedicalImage):
        image = load_image(image, modality=modality) if isinstance(image, (str, Path)) else _wrap_array(image)
    boxes = [
        _as_box(b) for b in ([exemplars] if exemplars and _is_single_box(exemplars) else list(exemplars))
    ]
    prompt, z = Prompt(text=text, exemplars=tuple(boxes)), None
    if image.is_3d and not volume:
        z = prompt.z if prompt.z is not None else slice_index
        if z is None:
            raise OncoSegError("a text prompt on a volume needs the slice (slice_index / --slice) or --3d")
        prompt = prompt.on_slice(z)
    validate_prompt(prompt, image.shape)
    if volume and not image.is_3d:
        raise OncoSegError("--3d needs a volume, but this image is 2D")
    check_outputs(image, output, overlay, json_path)
    predictor = predictor or _model_spec(backend, weights, threshold).build_predictor()
    if not predictor.backend.supports_text:
        raise OncoSegError(
            f"the {predictor.backend.name} backend has no text or exemplar prompts (use --backend sam3)"
        )
    predictor.set_image(image, modality=modality)
    if text is not None:
        predictor.backend.check_text(text)  # e.g. a concept outside the vocabulary: before any model work
    what = repr(text) if text is not None else "the exemplars"
    if volume:
        blank = [k for k in range(image.num_slices) if predictor.blank_reason(prompt, k) is not None]
        if len(blank) == image.num_slices:
            raise blank_error("every slice", predictor.blank_reason(prompt, 0))
        labels, scores = predictor.backend.segment_text_volume(
            predictor, text, prompt.exemplars, on_slice=on_slice, threshold=threshold
        )
        labels[blank] = 0  # nothing can be found where there is nothing to see
        slices = [_extent(labels == i) if (labels == i).any() else None for i in range(1, len(scores) + 1)]
    else:
        reason = predictor.blank_reason(prompt, z)
        if reason is not None:
            raise blank_error(_place(image, z), reason)
        embedding = predictor.embedding(z)
        prediction = predictor.backend.detect(embedding, text, prompt.exemplars, threshold=threshold)
        scores = [float(s) for s in prediction.scores]
        labels = np.zeros(image.shape, dtype=np.uint16)
        for i, mask in enumerate(prediction.masks, start=1):
            target = labels[z] if image.is_3d else labels
            target[mask & (target == 0)] = i
        slices = [(z, z) if image.is_3d else None for _ in scores]
    present = [i for i in range(1, len(scores) + 1) if (labels == i).any()]  # overlapped or empty ones go
    relabel = np.zeros(len(scores) + 1, dtype=labels.dtype)
    relabel[present] = np.arange(1, len(present) + 1)
    labels, scores, slices = (
        relabel[labels],
        [scores[i - 1] for i in present],
        [slices[i - 1] for i in present],
    )
    if not scores:
        raise EmptyResultError(
            f"the model found no instance of {what}: lower the threshold or check the prompt"
        )
    if labels.max() < 256:
        labels = labels.astype(np.uint8)
    measurements = [measure(labels == i, image.spacing) for i in range(1, len(scores) + 1)]
    result = SegmentationResult(
        image, labels, [prompt] * len(scores), scores, measurements, slices, predictor
    )
    return result.write(output, overlay, json_path)


def _extent(mask: np.ndarray) -> tuple[int, int]:
    zs = np.nonzero(mask.any(axis=(1, 2)))[0]
    return int(zs[0]), int(zs[-1])


def _is_single_box(box: Any) -> bool:
    """True for one box (a Box, a string, or 4-5 numbers); False for a list of boxes."""
    if isinstance(box, (Box, str)):
        return True
    return len(box) in (4, 5) and all(np.isscalar(v) and not isinstance(v, str) for v in box)


def _wrap_array(array: np.ndarray) -> MedicalImage:
    array = np.asarray(array)
    channels = 3 if array.ndim == 3 and array.shape[-1] == 3 else 1
    return MedicalImage.from_array(array, channels=channels)
