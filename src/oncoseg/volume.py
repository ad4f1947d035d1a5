"""3D segmentation by propagation: segment the prompted slice, then walk slice by slice in both directions,
prompting each slice with the (slightly enlarged) bounding box of its neighbour's mask, until the object ends.

The object is taken to have ended on a slice when the model's mask there is (almost) empty, when the model's own
quality score drops below ``min_score``, when the mask overlaps the neighbour's mask by less than ``min_iou``
(it jumped to another structure), or when it suddenly grows (it leaked into surrounding tissue). Mask pieces that
do not touch the neighbour's mask are dropped. A box margin of 5 % lets the object grow slowly from slice to
slice; larger margins let the mask creep outwards (liver sample Dice 0.57 with 10 %, 0.79 with 5 % and the stop
rules; 0.65 with no margin, where the mask shrinks away). A slice that is blank under the box (constant intensity
or no finite value, e.g. padding) ends the walk in that direction; a blank start slice finds nothing.

Where the walk loses Dice (`benchmarks/propagation_study.py`, 30 MSD hippocampus train volumes, student encoder:
Dice 0.490 against 0.766 with a GT box on every slice): mostly on slices it reaches (Dice 0.55 there against
0.77), not on slices it misses (12 % of the truth's voxels). Prompting each slice with the *truth's* neighbour box
+ 5 % gives nearly the bound (0.761), so the loss is drift: the model's mask sits inside its box, so the
box of its mask leads the next slice off the object, which moves a few pixels a slice. Larger margins leak
(0.18-0.40: variants px2-px4, m10, m20), several margins chosen by score or agreement (0.34, 0.36), the
neighbour's logits as a mask prompt (0.488), a carried prompt box (0.445-0.492) and following the centroid's
motion (0.502; 14 volumes better, 15 worse; 0.492 on the 52 test volumes, 0.494 without) did not win, so they
stay off (`PropagationSettings`). Test split, old = current defaults: hippocampus 0.494 (bound 0.765); BraTS WT
0.696 (0.821), TC 0.668 (0.792), ET 0.490 (0.569): ``benchmarks/propagation_study.py --test``.

By default each walked slice also gets its neighbour's mask as dense prompt, answered by LiteMedSAM's trained
mask-prompt decoder (``PropagationSettings.mask_prompt``; docs/propagation.md), for objects whose start mask covers
at least 5 % of the frame (smaller ones it shrinks or loses; they walk box-only): hippocampus test 0.723 (52/52
better), BraTS WT 0.701, TC 0.668, ET 0.490, DICOM CT organs 0.645 (box-only 0.644). ``mask_prompt=False`` (CLI
``--no-follow-mask``) is the box-only walk.

A backend with its own tracker (`Backend.tracker`, e.g. SAM3's video memory) gives each next slice's mask
instead of the box prompt (``PropagationSettings.tracker``, on by default); the stop rules are the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage

from oncoseg.errors import EmptyResultError, OncoSegError
from oncoseg.models import SliceTracker
from oncoseg.predictor import Predictor, blank_error
from oncoseg.prompts import Box, Prompt, box_from_mask


@dataclass
class PropagationSettings:
    box_margin: float = 0.05  # enlarge the neighbour's box by this fraction of its size per side ...
    min_margin_px: float = 1.0  # ... and by at least this many pixels
    min_score: float = 0.5  # stop below this predicted mask quality
    min_pixels: int = 4  # stop when the mask has fewer pixels than this
    min_area_ratio: float = 0.05  # ... or is smaller than this fraction of the start slice's mask
    min_iou: float = 0.5  # stop when the mask overlaps its neighbour's by less than this IoU ...
    max_growth: float = 1.5  # ... or grows to more than this many times its neighbour's area (leaking)
    max_slices: int | None = None  # limit the walk in each direction
    rejoin_iou: float = 0.9  # a correction's walk ends where it agrees with the result it corrects this well
    tracker: bool = True  # follow the object with the backend's own tracker when it has one (SAM3)
    # Options tried by benchmarks/propagation_study.py and kept off (see the module docstring):
    # other box margins tried on every slice beside ``box_margin`` (fractions of the box per side, at least
    # ``min_margin_px``); the answer ``choose`` picks wins: "score" (the model's quality) or "iou" (the mask
    # agreeing best with the neighbour's)
    extra_margins: tuple[float, ...] = ()
    choose: str = "score"
    # also give the neighbour's mask as the decoder's dense mask prompt where the backend has a decoder trained
    # for it (LiteMedSAM's mask-prompt adapter, docs/propagation.md) and the walk's start mask covers at least
    # ``mask_prompt_min_area`` of the square frame of the slice's longest side (the adapter learnt hippocampi
    # covering 5.3-15 % of it; smaller objects it shrinks or loses: BraTS TC/ET, CT aorta); others walk box-only
    mask_prompt: bool = True
    mask_prompt_min_area: float = 0.05
    # ... also in a correction's walk (one that ends where it rejoins the result): hippocampus val after 5 clicks
    # 0.696, 0.660 with box-only re-walks (docs/propagation.md)
    mask_prompt_corrections: bool = True
    # tried and kept off (docs/propagation.md): with ``mask_prompt``, also decode each walked slice from the box
    # alone and take that answer where the trained one trips a stop rule or agrees with it less than
    # ``guard_iou``; ``guard_score``: the score stop rule reads the box-only answer's score
    guard: bool = False
    guard_iou: float = 0.0
    guard_score: bool = False
    follow: float = 0.0  # shift each box by this fraction of the last step's centroid motion (0: off)
    # carry the previous slice's prompt box forward, moved side by side as the mask's box moved between the two
    # slices before, blended with the enlarged box of the neighbour's mask by this weight (0: off)
    carry: float = 0.0
    # CT: keep on each walked slice only the pixels whose HU lie within this many robust spreads of the
    # prompted slice's object (a leak into fat, bowel or a neighbour of other density is cut before it steers the
    # next slice's box); None turns it off. Objects whose HU spread on the prompted slice exceeds
    # ``gate_max_spread`` (lesions with necrosis, lungs, bone) are not gated.
    intensity_gate: float | None = 3.0
    gate_min_spread: float = 10.0  # HU
    gate_max_spread: float = 40.0  # HU


@dataclass
class WalkEnd:
    """Why a walk ended: on slice ``z`` (the first slice not kept; -1 or the slice count past the volume's edge)
    with ``reasons`` (one or more of "edge", "max_slices", "anchor", "blank", "area", "score", "iou", "growth",
    "rejoin"); ``mask``, ``score``, ``iou`` are the model's answer there when a stop rule judged one."""

    z: int
    reasons: tuple[str, ...]
    mask: np.ndarray | None = None
    score: float | None = None
    iou: float | None = None


@dataclass
class VolumeResult:
    mask: np.ndarray  # [z, y, x] bool
    start_slice: int
    slice_scores: dict[int, float] = field(default_factory=dict)
    ends: dict[int, WalkEnd] = field(default_factory=dict)  # step (+1, -1) → why the walk ended that way
    # reasons to review the volume known from how it was walked (`box_only_doubt`)
    doubts: tuple[str, ...] = ()

    @property
    def slice_range(self) -> tuple[int, int]:
        zs = sorted(self.slice_scores)
        return zs[0], zs[-1]


@dataclass(frozen=True)
class IntensityGate:
    """The range of raw values (HU on CT) an object may hold on the slices a walk reaches: its robust centre
    ± k spreads on the prompted slice (`PropagationSettings.intensity_gate`)."""

    low: float
    high: float

    @classmethod
    def of(cls, pixels: np.ndarray, mask: np.ndarray, settings: PropagationSettings) -> IntensityGate | None:
        """The gate of ``mask`` on ``pixels`` (one slice), or None when off or the object is too varied."""
        if settings.intensity_gate is None or np.count_nonzero(mask) < 20:
            return None
        values = pixels[mask].astype(np.float64)
        centre = float(np.median(values))
        spread = 1.4826 * float(np.median(np.abs(values - centre)))
        if not np.isfinite(spread) or spread > settings.gate_max_spread:
            return None
        half = settings.intensity_gate * max(spread, settings.gate_min_spread)
        return cls(centre - half, centre + half)

    def apply(self, pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``mask`` without the pixels out of range, smoothed (a one-pixel opening) and with its holes filled."""
        inside = mask & (pixels >= self.low) & (pixels <= self.high)
        inside = ndimage.binary_opening(inside)
        return ndimage.binary_fill_holes(inside)


def ct_gate(
    predictor: Predictor, mask: np.ndarray, z: int, settings: PropagationSettings
) -> IntensityGate | None:
    """The intensity gate of a walk from ``mask`` on slice ``z``: CT images only (their values are HU)."""
    image = predictor.image
    modality = getattr(predictor, "modality", None) or image.modality
    if modality != "ct" or image.channels != 1:
        return None
    return IntensityGate.of(image.array[z], mask, settings)


def keep_touching(mask: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The connected pieces of ``mask`` that overlap ``reference`` grown by one pixel."""
    labels, count = ndimage.label(mask)
    if count <= 1:
        return (
            mask if count == 0 or (mask & ndimage.binary_dilation(reference)).any() else np.zeros_like(mask)
        )
    touching = np.unique(labels[ndimage.binary_dilation(reference, iterations=1) & mask])
    return np.isin(labels, touching[touching > 0])


def propagate(
    predictor: Predictor,
    prompt: Prompt,
    settings: PropagationSettings | None = None,
    on_slice: Callable[[int], None] | None = None,
) -> VolumeResult:
    """Segment the volume set on ``predictor`` from ``prompt`` (which names its slice ``z``). With
    ``settings.tracker`` a backend's own tracker (`Backend.tracker`) answers every slice, the prompted one too."""
    settings = settings or PropagationSettings()
    image = predictor.image
    if image is None or not image.is_3d:
        raise OncoSegError("3D propagation needs a volume: set one on the predictor first")
    z0 = prompt.z
    reason = predictor.blank_reason(prompt, z0)
    if reason is not None:
        raise blank_error(f"slice {z0}", reason)
    tracker = predictor.backend.tracker(predictor, prompt) if settings.tracker else None
    start_logits = None
    if tracker is not None:
        start, first_score = tracker.first()
    else:
        first = predictor.predict(prompt, z=z0)
        start, first_score = first.masks[0], float(first.scores[0])
        start_logits = None if first.logits is None else first.logits[0]
    if not start.any():
        raise EmptyResultError(f"the model found nothing at the prompt on slice {z0}")
    volume = np.zeros(image.shape, dtype=bool)
    volume[z0] = start
    result = VolumeResult(volume, z0, {z0: first_score})
    if tracker is None:
        result.doubts = box_only_doubt(predictor, start, settings)
    if on_slice:
        on_slice(z0)
    min_pixels = max(settings.min_pixels, settings.min_area_ratio * start.sum())
    for step in (1, -1):
        for z, (mask, score) in walk(
            predictor,
            start,
            z0,
            step,
            settings,
            min_pixels,
            on_slice=on_slice,
            tracker=tracker,
            ends=result.ends,
            start_logits=start_logits,
            start_box=prompt.box,
        ).items():
            volume[z] = mask
            result.slice_scores[z] = score
    return result


def walk(
    predictor: Predictor,
    start: np.ndarray,
    z0: int,
    step: int,
    settings: PropagationSettings,
    min_pixels: float,
    stop_before: int | None = None,
    on_slice: Callable[[int], None] | None = None,
    tracker: SliceTracker | None = None,
    rejoin: np.ndarray | None = None,
    ends: dict[int, WalkEnd] | None = None,
    start_logits: np.ndarray | None = None,
    start_box: Box | None = None,
) -> dict[int, tuple[np.ndarray, float]]:
    """Follow the 2D mask ``start`` of slice ``z0`` slice by slice in direction ``step`` (+1 or -1), each slice
    prompted with its neighbour's enlarged box (or answered by ``tracker``, conditioned on ``z0``), until a stop
    rule fires, the volume ends, ``settings.max_slices`` are walked, or slice ``stop_before`` (not included; e.g. a
    slice the user annotated) is reached. With ``rejoin`` (the ``[z, y, x]`` result being corrected) the walk
    also ends on the first slice whose mask agrees with it (IoU >= ``settings.rejoin_iou``): from there on the
    correction changes nothing. Returns ``{z: (mask, score)}`` of the slices kept; ``ends[step]`` is set to why
    the walk ended (`WalkEnd`). Propagation and 3D correction both walk through here."""
    image = predictor.image
    kept: dict[int, tuple[np.ndarray, float]] = {}
    previous, z = start, z0 + step
    gate = ct_gate(predictor, start, z0, settings)
    end = WalkEnd(z, ("edge",))
    before = None  # the slice before ``previous`` (for ``settings.follow``)
    logits = start_logits  # the neighbour's mask logits (for ``settings.mask_prompt``)
    follow_mask = (
        settings.mask_prompt
        and (rejoin is None or settings.mask_prompt_corrections)
        and follows_masks(predictor, start, settings)
    )
    last_box = start_box  # the neighbour's prompt box (for ``settings.carry``)
    while True:
        gate_done = False
        if not 0 <= z < image.num_slices:
            end = WalkEnd(z, ("edge",))
            break
        if z == stop_before:
            end = WalkEnd(z, ("anchor",))
            break
        if settings.max_slices is not None and len(kept) >= settings.max_slices:
            end = WalkEnd(z, ("max_slices",))
            break
        box = box_from_mask(previous, z=z)
        if settings.follow and before is not None and before.any():
            dy, dx = (
                np.array(ndimage.center_of_mass(previous)) - ndimage.center_of_mass(before)
            ) * settings.follow
            box = replace(box, x0=box.x0 + dx, x1=box.x1 + dx, y0=box.y0 + dy, y1=box.y1 + dy)
        boxes = [
            box.enlarged(margin, settings.min_margin_px, start.shape)
            for margin in (settings.box_margin, *settings.extra_margins)
        ]
        if settings.carry and last_box is not None:
            sides = np.array([last_box.x0, last_box.y0, last_box.x1, last_box.y1])
            if before is not None and before.any():
                sides = sides + box_from_mask(previous).as_array() - box_from_mask(before).as_array()
            mixed = settings.carry * sides + (1 - settings.carry) * boxes[0].as_array()
            h, w = start.shape
            x0, x1 = np.clip(sorted(mixed[[0, 2]]), 0, w - 1)
            y0, y1 = np.clip(sorted(mixed[[1, 3]]), 0, h - 1)
            boxes[0] = Box(float(x0), float(y0), float(x1), float(y1), z=z)
        if predictor.blank_reason(Prompt(box=boxes[0]), z) is not None:
            end = WalkEnd(z, ("blank",))
            break
        if tracker is not None:
            mask, score = tracker.next(z, step)
        else:
            last_box = boxes[0]
            mask_input = None
            if follow_mask and logits is not None:
                mask_input = np.repeat(logits[None], len(boxes), axis=0)
            prediction = predictor.predict([Prompt(box=b) for b in boxes], z=z, mask_input=mask_input)
            candidates = []
            for i in range(len(boxes)):
                m = prediction.masks[i]
                if gate is not None:
                    m = gate.apply(image.array[z], m)
                candidates.append((keep_touching(m, previous), float(prediction.scores[i]), i))
            if settings.choose == "iou":
                mask, score, i = max(candidates, key=lambda c: (mask_iou(c[0], previous), c[1]))
            else:
                mask, score, i = max(candidates, key=lambda c: c[1])
            logits = None if prediction.logits is None else prediction.logits[i]
            gate_done = True
            if mask_input is not None and settings.guard:
                mask, score, logits = guarded(
                    predictor, boxes, z, previous, (mask, score, logits), gate, settings, min_pixels
                )
        if gate is not None and not gate_done:
            mask = gate.apply(image.array[z], mask)
        if not gate_done:
            mask = keep_touching(mask, previous)
        if on_slice:
            on_slice(z)
        reasons = stop_reasons(mask, score, previous, settings, min_pixels)
        if reasons:
            end = WalkEnd(z, reasons, mask, score, mask_iou(mask, previous))
            break
        kept[z] = (mask, score)
        if rejoin is not None and rejoin[z].any() and mask_iou(mask, rejoin[z]) >= settings.rejoin_iou:
            end = WalkEnd(z + step, ("rejoin",))
            break
        before, previous, z = previous, mask, z + step
    if ends is not None:
        ends[step] = end
    return kept


def follows_masks(predictor: Predictor, start: np.ndarray, settings: PropagationSettings) -> bool:
    """Whether a walk from ``start`` gives each slice its neighbour's mask (``settings.mask_prompt``): the object
    is large enough (``mask_prompt_min_area``) and the backend answers a mask prompt with a decoder trained for
    it, or was explicitly told to use its base decoder (``mask_prompt=None``, the zero-shot experiment)."""
    if not large_enough(start, settings):
        return False
    backend = predictor.backend
    if not hasattr(backend, "mask_prompt_decoder"):
        return False
    return backend.mask_prompt is None or backend.mask_prompt_decoder()[0] is not backend.model.prompt_encoder


BOX_ONLY = "walked from the box alone"


def box_only_doubt(predictor: Predictor, start: np.ndarray, settings: PropagationSettings) -> tuple[str, ...]:
    """``(BOX_ONLY,)`` when the object is large enough for the mask-following walk but this one goes from the box
    alone (the teacher encoder, a fine-tuned model, ``mask_prompt=False``), else ``()``. Such walks lose the
    object: the MSD hippocampus test box-started 0.50 against 0.72 (45 volumes, all but one under Dice 0.7),
    yet score higher than mask-following walks, the only ones the volume quality estimate was fitted on (it
    flagged none of those 45)."""
    if not hasattr(predictor.backend, "mask_prompt_decoder"):  # a backend with no such decoder to miss
        return ()
    followed = settings.mask_prompt and follows_masks(predictor, start, settings)
    return (BOX_ONLY,) if large_enough(start, settings) and not followed else ()


def large_enough(start: np.ndarray, settings: PropagationSettings) -> bool:
    """Whether ``start`` covers ``settings.mask_prompt_min_area`` of the square frame of its longest side."""
    return np.count_nonzero(start) >= settings.mask_prompt_min_area * max(start.shape) ** 2


def stop_reasons(
    mask: np.ndarray, score: float, previous: np.ndarray, settings: PropagationSettings, min_pixels: float
) -> tuple[str, ...]:
    """The stop rules ``mask`` (with quality ``score``) trips after the neighbour's mask ``previous``."""
    area = int(mask.sum())
    return tuple(
        name
        for name, fired in (
            ("area", area < min_pixels),
            ("score", score < settings.min_score),
            ("iou", mask_iou(mask, previous) < settings.min_iou),
            ("growth", area > settings.max_growth * previous.sum()),
        )
        if fired
    )


def guarded(
    predictor: Predictor,
    boxes: list[Box],
    z: int,
    previous: np.ndarray,
    trained: tuple[np.ndarray, float, np.ndarray | None],
    gate: IntensityGate | None,
    settings: PropagationSettings,
    min_pixels: float,
) -> tuple[np.ndarray, float, np.ndarray | None]:
    """``settings.guard``: the mask-prompt decoder's ``trained`` answer ``(mask, score, logits)`` on slice ``z``,
    or the base decoder's answer to the box alone (``boxes[0]``) where the trained one trips a stop rule or
    disagrees with it (``guard_iou``); with ``guard_score`` the answer kept carries the box-only score."""
    base = predictor.predict(Prompt(box=boxes[0]), z=z)
    mask = base.masks[0] if gate is None else gate.apply(predictor.image.array[z], base.masks[0])
    mask = keep_touching(mask, previous)
    score = float(base.scores[0])
    logits = None if base.logits is None else base.logits[0]
    t_mask, t_score, t_logits = trained
    if settings.guard_score:
        t_score = score
    if (
        stop_reasons(t_mask, t_score, previous, settings, min_pixels)
        or mask_iou(t_mask, mask) < settings.guard_iou
    ):
        return mask, score, logits
    return t_mask, t_score, t_logits


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (0 when both are empty)."""
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0
