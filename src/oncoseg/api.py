"""The Python API behind every shell (CLI, service, plugin): one call from an image and prompts to masks,
measurements and files.

    >>> from oncoseg import segment
    >>> result = segment("ct.nii.gz", box=(14, 16, 80, 76, 24), volume=True, output="liver.nii.gz")
    >>> result.measurements[0].volume_ml
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from oncoseg.errors import EmptyResultError, OncoSegError, PromptError
from oncoseg.image import MedicalImage
from oncoseg.io import check_mask_path, load_image, save_mask
from oncoseg.io.write import OutputFiles, check_distinct, check_output_path
from oncoseg.measure import Measurements, measure_image
from oncoseg.models.spec import ModelSpec
from oncoseg.predictor import Predictor, blank_error
from oncoseg.prompts import (
    MAX_OBJECTS,
    Box,
    BoxLike,
    ObjectPrompts,
    Point,
    PointLike,
    Prompt,
    _as_box,
    build_object,
    build_prompts,
    validate_prompt,
)
from oncoseg.quality import Quality, text_quality
from oncoseg.session import Session
from oncoseg.volume import PropagationSettings

ObjectLike = ObjectPrompts | Mapping[str, Any]  # one object's prompts (see `as_object`)
OBJECT_KEYS = ("name", "box", "boxes", "points")


@dataclass
class SegmentationResult:
    """Masks of one call: ``labels`` holds object ``i`` (in prompt order) as label ``i`` (1-based), or as label
    ``numbers[i - 1]`` when given (`refine` keeps a saved mask's label numbers)."""

    image: MedicalImage
    labels: np.ndarray
    prompts: list[Prompt]
    scores: list[float]
    measurements: list[Measurements]
    slices: list[tuple[int, int] | None] = field(default_factory=list)
    predictor: Predictor | None = None
    numbers: list[int] | None = None
    qualities: list[Quality] = field(default_factory=list)  # per object: estimate and review flag
    # per object: the other sizes its clicks could mean, [{"slice", "pixels", "score"}] smallest first
    alternatives: list[list[dict]] = field(default_factory=list)

    @property
    def label_numbers(self) -> list[int]:
        """The label of each object, in object order."""
        return list(self.numbers) if self.numbers is not None else list(range(1, len(self.scores) + 1))

    @classmethod
    def from_session(cls, session: Session) -> SegmentationResult:
        """The objects of ``session`` as one result (labels in object order)."""
        objects = session.objects
        return cls(
            session.image,
            session.labels(),
            [obj.prompt for obj in objects],
            [obj.score for obj in objects],
            [measure_image(obj.mask, session.image) for obj in objects],  # in mm, or px for a picture
            [obj.slice_range if session.image.is_3d else None for obj in objects],
            session.predictor,
            [obj.label for obj in objects],
            [obj.quality for obj in objects],
            [
                [
                    {"slice": z, "pixels": int(m.sum()), "score": round(float(sc), 4)}
                    for z, alts in obj.alternatives.items()
                    for m, sc in alts
                ]
                for obj in objects
            ],
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
            first = self.labels == self.label_numbers[0]
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
        extents = self.slices or [None] * len(self.scores)
        for label, prompt, score, m, extent in zip(
            self.label_numbers, self.prompts, self.scores, self.measurements, extents
        ):
            entry = {"label": label, "score": round(score, 4), "prompt": _prompt_dict(prompt), **m.to_dict()}
            if extent is not None:
                entry["slices"] = list(extent)
            objects.append(entry)
        for entry, quality in zip(objects, self.qualities, strict=False):
            entry["quality"] = quality.to_dict()
        for entry, alternatives in zip(objects, self.alternatives, strict=False):
            if alternatives:
                entry["alternatives"] = alternatives
        warnings = [str(w) for w in self.image.metadata.get("warnings", [])]
        return {"image": self.image.describe(), "objects": objects, "warnings": warnings}

    def write(
        self, output=None, overlay=None, json_path=None, *, output_type: str = "nifti", names=None
    ) -> SegmentationResult:
        """Write whichever of mask, overlay and JSON report were asked for, all or none: an output that cannot
        be written raises OncoSegError naming it and leaves every existing file as it was. ``output_type``
        "dicom_seg" or "rtstruct" writes the mask as a DICOM object over the image's series (`save_dicom`).
        Returns ``self``."""
        check_outputs(self.image, output, overlay, json_path, output_type=output_type, names=names)
        with OutputFiles() as files:
            if output is not None and output_type == "nifti":
                self.save(output, files)
            elif output is not None:
                self.save_dicom(output, output_type, names, files)
            if overlay is not None:
                self.save_overlay(overlay, files)
            if json_path is not None:
                self.save_json(json_path, files)
        return self

    def save_dicom(
        self, path, kind: str = "rtstruct", names=None, outputs: OutputFiles | None = None
    ) -> Path:
        """Write the objects as an RTSTRUCT (``kind="rtstruct"``) or DICOM SEG (``"dicom_seg"``) over the DICOM
        series the image was read from; ``names``: ``{label: name}`` or ``"1=GTV,2=..."`` (TG-263 names where
        known; default Object_1, Object_2, ...)."""
        from oncoseg.dicom import write_rtstruct, write_seg

        names = structure_names(names)
        masks = {names.get(i, f"Object_{i}"): self.labels == i for i in self.label_numbers}
        notes = {name: q.describe() for name, q in zip(masks, self.qualities, strict=False)}
        write = write_rtstruct if kind == "rtstruct" else write_seg
        return write(masks, self.image.source_path, path, outputs=outputs, notes=notes)

    def save_json(self, path: str | Path, outputs: OutputFiles | None = None) -> Path:
        if outputs is None:
            with OutputFiles() as own:
                return self.save_json(path, own)
        text = json.dumps(self.to_dict(), indent=2)
        return outputs.write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


DICOM_OUTPUTS = ("dicom_seg", "rtstruct")


def check_outputs(
    image: MedicalImage, output=None, overlay=None, json_path=None, *, output_type: str = "nifti", names=None
) -> None:
    """Raise OncoSegError now, before the model runs, if any requested output cannot be written. A DICOM
    ``output_type`` needs an image read from a DICOM series folder, and ``names`` fit for DICOM."""
    from oncoseg.render import check_overlay_path

    if output_type not in ("nifti", *DICOM_OUTPUTS):
        raise OncoSegError(f"unknown output type {output_type!r}: nifti, {', '.join(DICOM_OUTPUTS)}")
    if output_type != "nifti" and not _from_dicom_series(image):
        raise OncoSegError(
            f"--output-type {output_type} writes a DICOM object over the input series: INPUT must be a "
            "DICOM series folder (CT/MR), not a file"
        )
    if output is not None and output_type == "nifti":
        check_mask_path(output, image)
    elif output is not None:
        check_output_path(output, "DICOM output (e.g. rt.dcm)")
        structure_names(names)
    if overlay is not None:
        check_overlay_path(overlay)
    if json_path is not None:
        check_output_path(json_path, "JSON report")
    check_distinct(output, overlay, json_path)


def structure_names(names: str | Mapping[int, str] | None) -> dict[int, str]:
    """``{label: name}`` from a mapping or a ``--names`` text (`oncoseg.dicom.export.parse_names`), each name
    checked as a DICOM structure name (its TG-263 form)."""
    from oncoseg.dicom import standard_name
    from oncoseg.dicom.export import parse_names
    from oncoseg.dicom.reference import check_text

    names = parse_names(names) if names is None or isinstance(names, str) else dict(names)
    for name in names.values():
        check_text(standard_name(name), "LO", "structure name")
    return names


def _from_dicom_series(image: MedicalImage) -> bool:
    source = image.source_path
    return (
        image.metadata.get("format") == "dicom"
        and image.is_3d
        and source is not None
        and Path(source).is_dir()
    )


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
    objects: Sequence[ObjectLike] = (),
    modality: str | None = None,
    spacing: tuple[float, ...] | str | None = None,
    volume: bool = False,
    pick: str | None = None,
    backend: str = "litemedsam",
    predictor: Predictor | Callable[[], Predictor] | None = None,
    propagation: PropagationSettings | None = None,
    output: str | Path | None = None,
    overlay: str | Path | None = None,
    json_path: str | Path | None = None,
    output_type: str = "nifti",
    names: str | Mapping[int, str] | None = None,
    on_slice: Callable[[int], None] | None = None,
    text: str | None = None,
    exemplars: Sequence[BoxLike] = (),
    slice_index: int | None = None,
    weights: str | Path | None = None,
    threshold: float | None = None,
) -> SegmentationResult:
    """Segment ``image`` from boxes and/or points and measure each object.

    ``box`` is one box or a list of boxes (one object each); ``points`` are clicks on one object (with the
    box, when there is one box). Boxes and points are pixel coordinates, with the slice index as last box
    value / third point value for volumes. ``objects`` gives one prompt set per object instead, as the CLI's
    ``--object NAME --box ... --point ...`` does: each a mapping ``{"name": ..., "box": box or boxes,
    "points": [...]}`` (any key may be left out) or an `ObjectPrompts` (`oncoseg.prompts.build_object`), e.g.
    ``objects=[{"points": [(120, 80)]}, {"points": [(300, 200), (310, 190)]}]`` for two objects by clicks.
    An object's prompts may lie on several slices: the first slice's prompt starts it, each further one
    corrects it there (`Session.refine`). ``volume=True`` propagates each object through the volume;
    otherwise only the prompted slices are segmented. Clicks alone may mean a small structure or the organ
    around it: the answer lists the other sizes found (``alternatives`` in `to_dict`), and ``pick="smaller"`` or
    ``"larger"`` takes the next one instead (`Session.choose`). ``predictor``: a `Predictor`, or a function returning one
    (called after every check). Outputs (``output_type`` nifti, or dicom_seg/rtstruct with ``names`` over the
    DICOM series the image came from) are written only when everything succeeded, all or none (an empty result
    raises ``EmptyResultError`` and writes nothing); a prompt on pixels that hold no information (constant, or
    NaN only) finds nothing.

    Measurements are in mm, or in pixels (``unit`` "px") for a picture without a physical pixel size (PNG,
    JPEG, an array) unless ``spacing`` (mm, ``(x, y)`` or "X,Y") gives one.

    Concept prompts: ``text`` ("polyp": the default model knows the concepts `oncoseg concepts` lists, SAM3 any
    text) and/or ``exemplars`` (SAM3: boxes around examples) find every instance, one label each; on a volume
    give ``slice_index`` (text alone) or ``volume=True`` (every slice, instances joined in 3D). ``weights`` is
    the SAM3 folder, ``threshold`` the confidence an instance needs.
    """
    outputs = {"output": output, "overlay": overlay, "json_path": json_path, "output_type": output_type}
    image = _as_image(image, modality, spacing)
    if volume and not image.is_3d:
        raise OncoSegError("--3d needs a volume, but this image is 2D")
    model = predictor or _model_spec(backend, weights, threshold)  # built after the checks
    if text is not None or exemplars:
        if box is not None or points or objects:
            raise OncoSegError("--text/--exemplar find every instance: give them without --box/--point")
        return _segment_concept(image, text, exemplars, model, volume, slice_index, threshold, on_slice, modality,
                                {**outputs, "names": names})  # fmt: skip
    if objects and (box is not None or points):
        raise PromptError("give the prompts either as objects or as boxes/points, not both")
    objects = [as_object(o) for o in objects] or [
        ObjectPrompts((p,)) for p in build_prompts(_box_list(box), points)
    ]
    # the prompts first, then the outputs, then blank pixels: all before the model is loaded
    for obj in objects:
        for i, prompt in enumerate(obj.prompts):
            validate_prompt(prompt, image.shape, correction=i > 0)
    check_outputs(image, **outputs, names=names)
    names = _with_object_names(objects, names) if output_type != "nifti" else names
    if pick not in (None, "smaller", "larger"):
        raise PromptError(f"pick 'smaller' or 'larger', not {pick!r}")
    session = Session(image, model, modality=modality, propagation=propagation)
    for label, obj in enumerate(objects, start=1):
        session.check(obj.prompts[0], volume, label)
    for obj in objects:
        made = session.segment(obj.prompts[0], volume=volume, name=obj.name, on_slice=on_slice)
        if pick is not None:
            if not made.alternatives:
                raise PromptError(
                    f"--pick {pick}: object {made.label} has no other size (only clicks alone have)"
                )
            session.choose(made, pick, on_slice=on_slice)
        for correction in obj.prompts[1:]:
            session.refine(made, correction, on_slice=on_slice)
    return SegmentationResult.from_session(session).write(**outputs, names=names)


def refine(
    image: str | Path | MedicalImage | np.ndarray,
    mask: str | Path | np.ndarray,
    box: BoxLike | Sequence[BoxLike] | None = None,
    points: Sequence[PointLike] = (),
    *,
    label: int | None = None,
    volume: bool | None = None,
    modality: str | None = None,
    spacing: tuple[float, ...] | str | None = None,
    backend: str = "litemedsam",
    predictor: Predictor | Callable[[], Predictor] | None = None,
    propagation: PropagationSettings | None = None,
    output: str | Path | None = None,
    overlay: str | Path | None = None,
    json_path: str | Path | None = None,
    output_type: str = "nifti",
    names: str | Mapping[int, str] | None = None,
    on_slice: Callable[[int], None] | None = None,
) -> SegmentationResult:
    """Correct object ``label`` of a saved ``mask`` (a label map file or array on ``image``'s grid; ``label``
    may be left out when it holds one object) with a box and/or include/exclude clicks, on one or more slices,
    and measure every object of the mask again.

    Each slice's correction is a `Session.refine` of the object added from the mask (`Session.add`): the slice is
    segmented again from the clicks and the object's current extent there (a box replaces it). On a 3D object
    (``volume``, default: the object spans several slices) the walk then starts again from that slice in both
    directions, as `Session.refine` walks: up to the first slice it segments as the mask has it (IoU >= 0.9;
    the slices beyond keep their masks), and where a stop rule ends it (the object ended, or leaked) the saved
    mask's slices beyond are kept too (an object added from a mask, `Session.add`). Outputs and ``spacing`` as
    in `segment`: all or none, checked before the model is loaded."""
    session = Session(_as_image(image, modality, spacing), predictor or _model_spec(backend, None, None), modality=modality,
                      propagation=propagation)  # fmt: skip
    image = session.image
    obj = _object_to_correct(session, load_labels(mask, image), label)
    corrections = build_object(_box_list(box), points).prompts
    for prompt in corrections:
        validate_prompt(prompt, image.shape, correction=True)
    check_outputs(image, output, overlay, json_path, output_type=output_type, names=names)
    walk = bool(volume if volume is not None else image.is_3d and obj.mask.any(axis=(1, 2)).sum() > 1)
    if walk and not image.is_3d:
        raise OncoSegError("--3d needs a volume, but this image is 2D")
    for prompt in corrections:
        session.refine(obj, prompt, repropagate=walk, on_slice=on_slice)
    return SegmentationResult.from_session(session).write(output, overlay, json_path, output_type=output_type,
                                                          names=names)  # fmt: skip


def load_labels(mask: str | Path | np.ndarray, image: MedicalImage) -> np.ndarray:
    """A saved label map (file or array) on ``image``'s grid as integer labels: a file must lie on the image's
    grid (shape, spacing, origin, orientation; it is never resampled), a PNG mask of one object (0/255) is
    label 1."""
    if isinstance(mask, (str, Path)):
        from oncoseg.dicom.export import check_same_grid

        saved = load_image(mask)
        if saved.channels != 1:
            raise OncoSegError(f"{mask}: a mask has one channel, this file has {saved.channels}")
        check_same_grid(saved, image, mask)
        mask = saved.array
    labels = np.asarray(mask)
    if labels.shape != image.shape:
        raise OncoSegError(f"mask shape {labels.shape} does not match the image's {image.shape}")
    if labels.size and not (np.isfinite(labels).all() and np.array_equal(labels, np.round(labels))):
        raise OncoSegError("the mask holds non-integer values (a probability map?): give a label map")
    if labels.min(initial=0) < 0 or labels.max(initial=0) > MAX_OBJECTS:
        raise OncoSegError(f"the mask holds labels outside 0-{MAX_OBJECTS}")
    if not image.is_3d and set(np.unique(labels)) <= {0, 255}:
        labels = labels > 0  # a one-object PNG mask
    return labels.astype(np.uint8)


def _object_to_correct(session: Session, labels: np.ndarray, label: int | None):
    """Every label of ``labels`` as an object of ``session`` (keeping its number); returns object ``label``."""
    present = [int(v) for v in np.unique(labels) if v]
    if not present:
        raise OncoSegError("the mask holds no object: segment one first (oncoseg segment)")
    if label is None and len(present) > 1:
        raise OncoSegError(
            f"the mask holds labels {', '.join(map(str, present))}: say which to correct (--label N)"
        )
    label = present[0] if label is None else label
    if label not in present:
        raise OncoSegError(f"label {label} is not in the mask (labels {', '.join(map(str, present))})")
    for value in present:
        session.add(labels == value, label=value)  # the saved map's label numbers are kept
    return next(o for o in session.objects if o.label == label)


def _with_object_names(objects: Sequence[ObjectPrompts], names) -> dict[int, str]:
    """The DICOM structure names: each object's own name unless ``names`` gives another (all checked now)."""
    own = {i: obj.name for i, obj in enumerate(objects, start=1) if obj.name}
    return structure_names({**own, **structure_names(names)})


def _model_spec(backend: str, weights: str | Path | None, threshold: float | None) -> ModelSpec:
    """The model of `segment`'s ``backend``, ``weights`` and ``threshold`` (SAM3's: LiteMedSAM takes it per call)."""
    return ModelSpec(
        backend=backend,
        weights=None if weights is None else str(weights),
        threshold=threshold if backend == "sam3" else None,
    )


def _segment_concept(
    image, text, exemplars, model, volume, slice_index, threshold, on_slice, modality, outputs
):
    """`segment` for a concept prompt: every instance of ``text``/``exemplars`` becomes one label."""
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
    check_outputs(image, **outputs)
    predictor = Session(image, model, modality=modality).predictor  # the model, built now, with the image set
    if not predictor.backend.supports_text:
        raise OncoSegError(
            f"the {predictor.backend.name} backend has no text or exemplar prompts (use --backend sam3)"
        )
    doubt = None  # a reason to flag every answer for review (a concept whose modality was only guessed)
    if text is not None:  # a concept outside the vocabulary or the image's modality: before any model work
        source = "argument" if modality else image.metadata.get("modality_source")
        doubt = predictor.backend.check_text(text, modality or image.modality, source)
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
    measurements = [measure_image(labels == i, image) for i in range(1, len(scores) + 1)]
    qualities = [
        text_quality(labels == i, score, volume and image.is_3d, doubt) for i, score in enumerate(scores, 1)
    ]
    result = SegmentationResult(
        image, labels, [prompt] * len(scores), scores, measurements, slices, predictor, qualities=qualities
    )
    return result.write(**outputs)


def _extent(mask: np.ndarray) -> tuple[int, int]:
    zs = np.nonzero(mask.any(axis=(1, 2)))[0]
    return int(zs[0]), int(zs[-1])


def _is_single_box(box: Any) -> bool:
    """True for one box (a Box, a string, or 4-5 numbers); False for a list of boxes."""
    if isinstance(box, (Box, str)):
        return True
    return len(box) in (4, 5) and all(np.isscalar(v) and not isinstance(v, str) for v in box)


def _box_list(box: BoxLike | Sequence[BoxLike] | None) -> list[BoxLike]:
    return [] if box is None else ([box] if _is_single_box(box) else list(box))


def _as_image(
    image: str | Path | MedicalImage | np.ndarray, modality: str | None, spacing=None
) -> MedicalImage:
    """A file, DICOM folder or array as a `MedicalImage` (a `MedicalImage` as it is), with ``spacing`` (mm) for
    a picture without a physical pixel size."""
    if isinstance(image, (str, Path)):
        return load_image(image, modality=modality, spacing=spacing)
    image = image if isinstance(image, MedicalImage) else Session.open(image, None, modality=modality).image
    return image if spacing is None else image.with_spacing(spacing)


def as_object(value: ObjectLike) -> ObjectPrompts:
    """One object's prompts: an `ObjectPrompts` as it is, or a mapping ``{"name", "box" (one box or a list),
    "points"}`` (what the CLI's ``--object NAME --box ... --point ...`` gives)."""
    if isinstance(value, ObjectPrompts):
        return value
    if not isinstance(value, Mapping):
        raise PromptError(f"an object is a mapping with {', '.join(OBJECT_KEYS)}, not {type(value).__name__}")
    unknown = sorted(set(value) - set(OBJECT_KEYS))
    if unknown:
        raise PromptError(f"unknown object key(s) {', '.join(unknown)}: expected {', '.join(OBJECT_KEYS)}")
    boxes = _box_list(value.get("box")) + _box_list(value.get("boxes"))
    points = value.get("points") or ()
    if isinstance(points, (str, Point)) or (len(points) in (2, 3) and all(np.isscalar(v) for v in points)):
        points = [points]  # one click
    return build_object(boxes, points, value.get("name"))
