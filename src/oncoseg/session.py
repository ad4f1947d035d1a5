"""The Session core: one image open for segmentation, driven the same way by the Python API, the CLI and the
other shells.

    >>> session = Session.open("ct.nii.gz")
    >>> liver = session.segment(Prompt(box=Box(14, 16, 80, 76, z=24)), volume=True, name="Liver")
    >>> session.refine(liver, Prompt(points=(Point(40, 30, positive=False, z=30),)))  # fix slice 30, re-walk
    >>> liver.volume_ml

It owns prompt checking (once, before any model work), the model (built from a `ModelSpec`-like value or a
given `Predictor`, with its per-slice embedding cache) and the labelled result: `SegmentedObject` per object,
with its per-slice scores and the slices a user annotated ("anchors"). A correction on any slice of a 3D object
re-segments that slice and walks outwards from it again, up to the next anchor or to where it rejoins the
result (a slice it segments as before): the 3D correction loop exists here once, for every shell.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from oncoseg.errors import EmptyResultError, OncoSegError, PromptError
from oncoseg.image import MedicalImage
from oncoseg.measure import Measurements, measure_image
from oncoseg.predictor import Predictor, blank_error, blank_reason, prompt_pixels
from oncoseg.prompts import MAX_OBJECTS, Box, Point, Prompt, box_from_mask, validate_prompt
from oncoseg.quality import Quality, assess, with_doubts
from oncoseg.volume import PropagationSettings, mask_iou, propagate, walk

# A 3D walk from clicks alone is more likely wrong than right: the click leaves the object's size on its slice to
# the model, and a wrong size there is carried through the volume. benchmarks/confidence.py, train splits: 36 of 51
# click-started walks (MSD Hippocampus, BraTS) under Dice 0.7, against 22 of 51 from a box; test: 55 of 72 (the CT
# and MR organs 21 of 24). A box on any slice (a correction) lifts it.
CLICK_ONLY = "walked from a click alone"


@dataclass(eq=False)  # objects are compared by identity (their masks are arrays)
class SegmentedObject:
    """One segmented structure: a boolean mask on the image's grid, the model's score per slice (key None for a
    2D image), and the prompt given on each slice the user annotated."""

    label: int
    name: str
    mask: np.ndarray
    slice_scores: dict[int | None, float] = field(default_factory=dict)
    anchors: dict[int | None, Prompt] = field(default_factory=dict)
    volume: bool = False  # followed through the volume (True) or one slice only
    from_mask: bool = False  # added from a mask made elsewhere (no model behind its slices)
    # reasons to review it known apart from the mask (`oncoseg.quality.with_doubts`)
    doubts: tuple[str, ...] = ()
    # per slice: masks of other sizes that also answer the clicks there, ``(mask [H, W], score)`` smallest first
    # (`Session.choose` swaps one in)
    alternatives: dict[int | None, tuple[tuple[np.ndarray, float], ...]] = field(default_factory=dict)

    @property
    def score(self) -> float:
        """Mean of the per-slice scores."""
        return float(np.mean(list(self.slice_scores.values()))) if self.slice_scores else 0.0

    @property
    def clicks_only(self) -> bool:
        """Asked for with clicks and never a box: the model guessed the object's size (`oncoseg.quality`)."""
        prompts = list(self.anchors.values())
        return not self.from_mask and bool(prompts) and all(p.box is None and p.points for p in prompts)

    @property
    def review_doubts(self) -> tuple[str, ...]:
        """`doubts`, and `CLICK_ONLY` for a 3D walk that no box guided."""
        return (*self.doubts, *((CLICK_ONLY,) if self.volume and self.clicks_only else ()))

    @property
    def quality(self) -> Quality:
        """How far to trust this result: an estimate and a review flag (`oncoseg.quality`)."""
        estimate = assess(self.mask, self.slice_scores, self.volume, self.clicks_only)
        return with_doubts(estimate, self.review_doubts)

    @property
    def slice_range(self) -> tuple[int, int] | None:
        """First and last slice holding the object (None for 2D images or an empty mask)."""
        if self.mask.ndim != 3 or not self.mask.any():
            return None
        zs = np.flatnonzero(self.mask.any(axis=(1, 2)))
        return int(zs[0]), int(zs[-1])

    @property
    def prompt(self) -> Prompt:
        """The first prompt that made this object (an empty one for an object added from a mask)."""
        return next(iter(self.anchors.values()), Prompt())


class Session:
    """An image and the objects segmented on it.

    ``model`` is a backend name (``"litemedsam"``) or `Backend`, anything with ``build_predictor()`` (a
    `ModelSpec`), a function returning a `Predictor` (called on first use, so checks come before the model is
    loaded), or a ready `Predictor` (shared, e.g. across images in a batch: its image is replaced)."""

    def __init__(
        self,
        image: MedicalImage,
        model: Any = "litemedsam",
        *,
        modality: str | None = None,
        propagation: PropagationSettings | None = None,
    ):
        self.image = image
        self.modality = modality
        self.propagation = propagation or PropagationSettings()
        self.objects: list[SegmentedObject] = []
        self._model = model
        self._predictor: Predictor | None = model if isinstance(model, Predictor) else None
        if self._predictor is not None and (  # a predictor already holding this image keeps its embeddings
            self._predictor.image is not image or modality not in (None, self._predictor.modality)
        ):
            self._predictor.set_image(image, modality=modality)

    @classmethod
    def open(
        cls,
        source: str | os.PathLike | MedicalImage | np.ndarray,
        model: Any = "litemedsam",
        *,
        modality: str | None = None,
        limits=None,
        propagation: PropagationSettings | None = None,
    ) -> Session:
        """A session on a file or DICOM folder (read within ``limits``), a `MedicalImage` or a plain array."""
        from oncoseg.io import load_image

        if isinstance(source, (str, os.PathLike)):
            image = load_image(Path(source), modality=modality, limits=limits)
        elif isinstance(source, MedicalImage):
            image = source
        else:
            array = np.asarray(source)
            image = MedicalImage.from_array(
                array, channels=3 if array.ndim == 3 and array.shape[-1] == 3 else 1
            )
        return cls(image, model, modality=modality, propagation=propagation)

    # ------------------------------------------------------------------ model
    @property
    def predictor(self) -> Predictor:
        """The model with this image set (built on first use; embeddings cached per slice)."""
        if self._predictor is None:
            model = self._model
            if hasattr(model, "build_predictor"):  # a ModelSpec
                self._predictor = model.build_predictor()
            elif callable(model) and not hasattr(model, "encode"):  # a factory, called on first use
                self._predictor = model()
            else:  # a backend name or a Backend
                self._predictor = Predictor(model)
        if self._predictor.image is not self.image:  # a shared predictor another session used since
            self._predictor.set_image(self.image, modality=self.modality)
        return self._predictor

    # ------------------------------------------------------------------ prompts
    def check(self, prompt: Prompt, volume: bool = False, label: int | None = None) -> Prompt:
        """Raise a one-line error unless ``prompt`` can be answered on this image: inside it, on an existing
        slice, a volume for ``volume=True``, and not blank (constant) under the prompt. Cheap: no model work.
        ``label`` names the object in the message."""
        if volume and not self.image.is_3d:
            raise OncoSegError("3D propagation needs a volume, but this image is 2D")
        validate_prompt(prompt, self.image.shape)
        if not prompt.is_concept:
            z = prompt.z if self.image.is_3d else None
            reason = blank_reason(prompt_pixels(self.image.array, prompt, z), self.image.channels)
            if reason is not None:
                where = f"slice {z}" if self.image.is_3d else "the image"
                raise blank_error(where, reason, label)
        return prompt

    # ------------------------------------------------------------------ segmenting
    def segment(
        self,
        prompt: Prompt,
        *,
        volume: bool = False,
        name: str | None = None,
        on_slice: Callable[[int], None] | None = None,
    ) -> SegmentedObject:
        """A new object from a box and/or clicks on one slice; ``volume=True`` follows it through the volume.
        Raises EmptyResultError when the model finds nothing (the session keeps no empty object)."""
        label = self.next_label()
        self.check(prompt, volume, label)
        if label > MAX_OBJECTS:
            raise PromptError(f"at most {MAX_OBJECTS} objects per image (labels 1-255)")
        z = prompt.z if self.image.is_3d else None
        reason = self.predictor.blank_reason(prompt, z)  # e.g. constant after the CT window
        if reason is not None:
            raise blank_error(f"slice {z}" if z is not None else "the image", reason, label)
        alternatives, doubts = (), ()
        if volume:
            result = propagate(self.predictor, prompt, self.propagation, on_slice=on_slice)
            mask, scores, doubts = result.mask, dict(result.slice_scores), result.doubts
            if (
                prompt.box is None and prompt.points
            ):  # the start slice's other sizes (its embedding is cached)
                alternatives = self.predictor.predict(prompt).alternatives
        else:
            prediction = self.predictor.predict(prompt)
            mask = self._on_grid(prediction.masks[0], z)
            scores = {z: float(prediction.scores[0])}
            alternatives = prediction.alternatives
        if not mask.any():
            where = f" on slice {z}" if z is not None else ""
            raise EmptyResultError(f"the model found nothing for object {label}{where}: check the prompt")
        obj = SegmentedObject(
            label, name or f"object {label}", mask, scores, {z: prompt}, volume, doubts=doubts
        )
        if alternatives:
            obj.alternatives[z] = tuple(alternatives)
        self.objects.append(obj)
        return obj

    def choose(
        self,
        obj: SegmentedObject,
        which: str,
        *,
        z: int | None = None,
        on_slice: Callable[[int], None] | None = None,
    ) -> SegmentedObject:
        """Swap in the next ``"smaller"`` or ``"larger"`` of the masks that also answered ``obj``'s clicks on slice
        ``z`` (default: the slice that has alternatives); the mask it replaces becomes an alternative. A 3D object
        is walked again from that slice (as a correction is)."""
        if which not in ("smaller", "larger"):
            raise PromptError(f"choose 'smaller' or 'larger', not {which!r}")
        if z is None and obj.alternatives:
            z = next(iter(obj.alternatives))
        options = obj.alternatives.get(z, ())
        current = obj.mask[z] if z is not None else obj.mask
        area = int(current.sum())
        pool = [o for o in options if (int(o[0].sum()) < area) == (which == "smaller") and o[0].sum() != area]
        if not pool:
            raise OncoSegError(f"no {which} answer to object {obj.label}'s clicks was found")
        pick = (
            max(pool, key=lambda o: o[0].sum()) if which == "smaller" else min(pool, key=lambda o: o[0].sum())
        )
        mask, scores = obj.mask.copy(), dict(obj.slice_scores)
        rest = [o for o in options if o is not pick] + [(current.copy(), float(scores.get(z, 0.0)))]
        scores[z] = pick[1]
        if z is None:
            mask = pick[0].copy()
        else:
            mask[z] = pick[0]
            if obj.volume:
                self._rewalk(mask, scores, dict(obj.anchors), z, on_slice, clear_beyond=True, rejoin=False)
        obj.mask, obj.slice_scores = mask, scores
        obj.alternatives[z] = tuple(sorted(rest, key=lambda o: int(o[0].sum())))
        return obj

    def refine(
        self,
        obj: SegmentedObject,
        prompt: Prompt,
        *,
        repropagate: bool | None = None,
        on_slice: Callable[[int], None] | None = None,
    ) -> SegmentedObject:
        """Correct ``obj`` on the prompt's slice: include/exclude clicks are added to the clicks already given
        there and decoded with the object's current extent on that slice as the box (a box replaces it; on a
        slice the object does not reach, the smaller of the answers to the clicks alone and to the nearest held
        slice's extent). The slice becomes an anchor; for a 3D object (``repropagate``, default: whether it was
        propagated) the walk starts again from it in both directions, up to the next anchor or up to where it
        rejoins the result (see `_rewalk`). Clicks alone only add (include) or only take away (exclude), on the
        re-walked slices as on their own (`clicks_merge`); a box replaces. Only a correction with exclude clicks
        clears the slices beyond where its walk saw the object fade out. Exclude clicks are honoured with boxes
        that leave them out. Measured with ``benchmarks/interactive.py`` on val/tuning cases (box on the largest
        slice, then 5 clicks; replacing re-walks -> these rules): 12 hippocampus val volumes 0.726 -> 0.748
        (box 0.693), the BraTS val patient WT/TC/ET 0.586/0.446/0.466 -> 0.731/0.532/0.603 (box
        0.731/0.531/0.607), 9 organs of the 3 mm CT 0.610 -> 0.732 (box 0.668)."""
        z = prompt.z if self.image.is_3d else None
        if self.image.is_3d and z is None:
            raise PromptError(
                f"this is a volume of {self.image.num_slices} slices: give the slice of the correction"
            )
        validate_prompt(Prompt(points=tuple(Point(p.x, p.y, True, p.z) for p in prompt.points), box=prompt.box)
                        if prompt.points else prompt, self.image.shape)  # fmt: skip
        current = obj.mask[z] if z is not None else obj.mask
        given = obj.anchors.get(z)
        asked = self.check(combine_clicks(given, prompt, current))  # exclude clicks alone need the extent
        mask_score = self._decode_correction(asked, current, z)
        if z is not None and not current.any() and any(p.positive for p in prompt.points):
            # a slice the object does not reach yet: the click alone may answer with the structure around the
            # object (a whole tumour for its enhancing rim, BraTS ET 0.607 -> 0.254), the nearest held slice's
            # extent with too much at a narrowing end (hippocampus): the smaller of the two answers is taken
            guided = self.check(combine_clicks(given, prompt, nearest_held(obj.mask, z)))
            other = self._decode_correction(guided, current, z)
            if other[0].any() and (not mask_score[0].any() or other[0].sum() < mask_score[0].sum()):
                mask_score = other
        new = monotone(mask_score[0], current, prompt)
        if clicks_merge(prompt) == "remove" and 2 * new.sum() < current.sum():
            trimmed = rim_cut(current, prompt.points)
            if trimmed is not None:
                new = trimmed
        if not new.any():
            raise EmptyResultError(f"the correction removed object {obj.label} from this slice")
        # worked out on copies and applied at the end: an error or a cancel (raised by on_slice) changes nothing
        mask, scores, anchors = obj.mask.copy(), dict(obj.slice_scores), dict(obj.anchors)
        anchors[z] = prompt if prompt.box is not None else prompt_with_clicks(given, prompt)
        scores[z] = mask_score[1]
        if z is None:
            mask = new
        else:
            mask[z] = new
            if repropagate if repropagate is not None else obj.volume:
                # only a correction that takes something away may end the object where its walk ends
                taking = prompt.box is None and any(not p.positive for p in prompt.points)
                self._rewalk(
                    mask, scores, anchors, z, on_slice, clear_beyond=taking and not obj.from_mask,
                    merge=clicks_merge(prompt),
                )  # fmt: skip
        obj.mask, obj.slice_scores, obj.anchors = mask, scores, anchors
        obj.alternatives.pop(z, None)  # answers to the clicks before this correction
        return obj

    def _decode_correction(
        self, asked: Prompt, current: np.ndarray, z: int | None
    ) -> tuple[np.ndarray, float]:
        """The slice's new mask and score. With exclude clicks, boxes alone are decoded beside the asked prompt
        (one batch): the current extent (the asked, grown box when an include click lies beyond it) and, for
        each exclude click the current mask still holds, the extent with the side nearest the click moved just
        past it. Of the masks that keep every include click and no exclude click, the one closest to the
        current mask wins when the current mask holds an exclude click (the least change that honours the
        clicks), else the best-scoring one, the asked prompt's first among equals: SAM-style models trained on
        boxes honour a box far better than an exclude click (an exclude click with the extent grown by 10 % made
        a CT liver slice larger, 2266 -> 2325 px). Measured by ``benchmarks/corrections.py --limit 20``
        (Kvasir-SEG/BUSI test, 4 corrections): Dice 0.827/0.846 -> 0.842/0.860 with 2.8 instead of 4.1 masks
        decoded per correction (before the closest-mask rule)."""
        first = self.predictor.predict(asked, z=z)
        negatives = [p for p in asked.points if not p.positive]
        if asked.box is None or not negatives or not current.any():
            return first.masks[0], float(first.scores[0])
        positives = [p for p in asked.points if p.positive]
        extent = box_from_mask(current, z=z)
        beyond = any(not (extent.x0 <= p.x <= extent.x1 and extent.y0 <= p.y <= extent.y1) for p in positives)
        held = [p for p in negatives if not honours(current, [], [p])]
        boxes = [
            asked.box if beyond else extent,
            *(b for p in held if (b := box_without(extent, p)) is not None),
        ]
        tried = self.predictor.predict([Prompt(box=box) for box in boxes], z=z)
        answers = [(first.masks[0], float(first.scores[0])), *zip(tried.masks, map(float, tried.scores))]

        def rank(answer: tuple[np.ndarray, float]) -> tuple[bool, float, float]:
            kept = honours(answer[0], positives, negatives)
            return kept, mask_iou(answer[0], current) if kept and held else 0.0, answer[1]

        return max(answers, key=rank)

    def _rewalk(
        self,
        mask,
        scores,
        anchors,
        z0: int,
        on_slice: Callable[[int], None] | None,
        clear_beyond: bool = True,
        rejoin: bool = True,
        merge: str | None = None,
    ) -> None:
        """Walk from slice ``z0`` both ways, replacing ``mask``/``scores`` up to the next of ``anchors``. Where the
        walk comes back to the result being corrected (a slice it segments as before), it ends and the slices
        beyond keep their masks: a correction changes the slices it reaches, not the parts it agrees with. Where
        the object faded out (the area or score stop rules, a blank slice), the slices beyond, up to the next
        anchor, are cleared (``clear_beyond``; kept for an object added from a mask); where the walk lost the
        object (overlap, growth) or was told to stop, they are kept. ``rejoin=False``: the walk does not end
        where it meets the result (another object size was chosen: the old one is no guide). ``merge``
        (`clicks_merge`): the walk's answers only add to (``"add"``) or only take away from (``"remove"``) the
        slices it re-walks."""
        settings = self.propagation
        before = mask.copy()
        min_pixels = max(settings.min_pixels, settings.min_area_ratio * mask[z0].sum())
        others = sorted(a for a in anchors if a is not None and a != z0)
        for step in (1, -1):
            ahead = [a for a in others if (a - z0) * step > 0]
            stop = min(ahead, key=lambda a: abs(a - z0)) if ahead else None
            ends: dict = {}
            kept = walk(
                self.predictor, mask[z0], z0, step, settings, min_pixels, stop, on_slice,
                rejoin=before if rejoin else None, ends=ends,
            )  # fmt: skip
            last = max(kept, key=lambda z: (z - z0) * step) if kept else None
            rejoined = (
                rejoin and last is not None and mask_iou(kept[last][0], before[last]) >= settings.rejoin_iou
            )
            ended = ends.get(step)  # the object faded out (not: the walk lost it, or was told to stop)
            clear = clear_beyond and (ended is None or bool(set(ended.reasons) & {"area", "score", "blank"}))
            if rejoined or (not clear and last is not None):
                end = last + step
            elif not clear:
                continue
            else:
                end = stop if stop is not None else (-1 if step < 0 else len(mask))
            for z in range(z0 + step, end, step):  # the walk's answer is authoritative up to where it ended
                mask_score = kept.get(z)
                mask[z] = mask_score[0] if mask_score else False
                if merge == "add":
                    mask[z] |= before[z]
                elif merge == "remove":
                    mask[z] &= before[z]
                if mask_score:
                    scores[z] = mask_score[1]
                else:
                    scores.pop(z, None)

    def add(
        self,
        mask: np.ndarray,
        name: str | None = None,
        score: float = 1.0,
        *,
        label: int | None = None,
        volume: bool | None = None,
        doubts: tuple[str, ...] = (),
    ) -> SegmentedObject:
        """An object from a mask made elsewhere (painted by hand, read from a file, a text prompt's instance).

        ``label``: its number (default: the next free one; a number in use is refused). ``volume``: whether a
        correction re-walks it through the volume (default: when it spans more than one slice). Its slices have
        no model behind them, so a correction's walk that ends by a stop rule leaves the slices beyond as they
        are (a model's own result is cleared there: what lay beyond was the walk's, now disowned). ``doubts``: reasons
        to review it known apart from the mask (they flag its quality)."""
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != self.image.shape:
            raise OncoSegError(f"mask shape {mask.shape} does not match the image's {self.image.shape}")
        if label is None:
            label = self.next_label()
        elif any(o.label == label for o in self.objects) or label < 1:
            raise PromptError(f"label {label} is in use or not a label number (1-{MAX_OBJECTS})")
        if label > MAX_OBJECTS:
            raise PromptError(f"at most {MAX_OBJECTS} objects per image (labels 1-255)")
        slices = np.flatnonzero(mask.any(axis=(1, 2))) if self.image.is_3d else [None]
        if volume is None:
            volume = len(slices) > 1
        scores = {int(z) if z is not None else None: score for z in slices}
        obj = SegmentedObject(
            label,
            name or f"object {label}",
            mask,
            scores,
            volume=volume,
            from_mask=True,
            doubts=tuple(doubts),
        )
        self.objects.append(obj)
        return obj

    def remove(self, obj: SegmentedObject) -> None:
        """Forget ``obj``; the other objects keep their labels."""
        self.objects = [o for o in self.objects if o is not obj]

    def next_label(self) -> int:
        """The label a new object gets: one above the highest in use (labels are never reused while held)."""
        return max((o.label for o in self.objects), default=0) + 1

    # ------------------------------------------------------------------ results
    def labels(self) -> np.ndarray:
        """The label map (uint8): object ``i`` is label ``i``; where objects overlap, the earlier one wins."""
        labels = np.zeros(self.image.shape, dtype=np.uint8)
        for obj in self.objects:
            labels[obj.mask & (labels == 0)] = obj.label
        return labels

    def measure(self, obj: SegmentedObject) -> Measurements:
        """Area or volume and diameters of ``obj`` in the image's units (mm, or px for a picture without a pixel
        size)."""
        return measure_image(obj.mask, self.image)

    def _on_grid(self, mask2d: np.ndarray, z: int | None) -> np.ndarray:
        if z is None:
            return mask2d
        mask = np.zeros(self.image.shape, dtype=bool)
        mask[z] = mask2d
        return mask


def prompt_with_clicks(given: Prompt | None, prompt: Prompt) -> Prompt:
    """``prompt``'s clicks appended to those already given on that slice (the box, if any, kept)."""
    if given is None:
        return prompt
    return Prompt(box=prompt.box or given.box, points=(*given.points, *prompt.points))


def combine_clicks(given: Prompt | None, prompt: Prompt, current: np.ndarray) -> Prompt:
    """The prompt a correction is decoded with: a new box is taken as it is (with its clicks); clicks are added
    to the clicks given on that slice, and the box is the current mask's extent on the slice, grown to take in
    the include clicks plus a margin (the service's refining click and a 3D correction use this one rule)."""
    if prompt.box is not None or not current.any():
        return prompt_with_clicks(given, prompt) if prompt.box is None else prompt
    clicks = prompt_with_clicks(given, prompt).points
    rows, cols = np.flatnonzero(current.any(axis=1)), np.flatnonzero(current.any(axis=0))
    return Prompt(box=grown_box((cols[0], rows[0], cols[-1], rows[-1]), clicks, current.shape, prompt.z),
                  points=clicks)  # fmt: skip


def nearest_held(mask: np.ndarray, z: int) -> np.ndarray:
    """The 2D mask of the slice of ``mask`` ([z, y, x]) nearest ``z`` that holds the object (the lower one of
    two as near); empty when no slice does."""
    held = np.flatnonzero(mask.any(axis=(1, 2)))
    if not len(held):
        return mask[z]
    return mask[int(held[np.argmin(np.abs(held - z))])]


RIM_PX = 3.0  # an exclude click this close to the mask's border asks for a trimmed edge, not a smaller object


def rim_cut(current: np.ndarray, clicks, radius: float = RIM_PX) -> np.ndarray | None:
    """``current`` without a disc of ``radius`` pixels around each of ``clicks``, when every click lies within
    ``radius`` of the mask's border and the mask is thicker than two such rims (else None). An exclude click on
    the rim of a slightly too large mask says the edge is off; the model, which cannot carve a rim, answered with
    a fraction of the object (a CT kidney slice 229 -> 21 px, and the re-walk then cleared the slices beyond it:
    Dice 0.87 -> 0.60). Used when the model's answer would remove more than half of the slice; on 9 organs of the
    3 mm CT, 5 clicks 0.732 -> 0.753, hippocampus val unchanged (0.748); 6 px lost 0.017 on the hippocampus."""
    depth = ndimage.distance_transform_edt(current)
    at = [pixel_of(p, current.shape) for p in clicks]
    if not at or depth.max() <= 2 * radius or any(depth[y, x] > radius for y, x in at):
        return None  # (an object no thicker than two rims has no rim apart from its body)
    h, w = current.shape
    yy, xx = np.mgrid[:h, :w]
    cut = np.zeros_like(current)
    for y, x in at:
        cut |= (yy - y) ** 2 + (xx - x) ** 2 <= radius * radius
    return current & ~cut


def clicks_merge(prompt: Prompt) -> str | None:
    """How a correction's walk treats the slices it re-walks (`Session._rewalk`'s ``merge``), as `monotone` does
    on the clicked slice: include clicks alone only add to them (``"add"``), exclude clicks alone only take away
    (``"remove"``), a box or a mix of both replaces them (None). A re-walk that replaced them had cut a good BraTS
    whole tumour from 0.73 to 0.59 with one include click on a slice where the result was too small."""
    if prompt.box is not None or not prompt.points:
        return None
    if all(p.positive for p in prompt.points):
        return "add"
    if not any(p.positive for p in prompt.points):
        return "remove"
    return None


def monotone(new: np.ndarray, current: np.ndarray, prompt: Prompt) -> np.ndarray:
    """Clicks alone only add (include) or only take away (exclude): ``new`` joined with, or cut to, the slice's
    ``current`` mask, so a second include click never loses the region the first one gave. A box, or a mix of
    include and exclude clicks, replaces the slice's mask."""
    if prompt.box is not None or not prompt.points or not current.any():
        return new
    if all(p.positive for p in prompt.points):
        return new | current
    if not any(p.positive for p in prompt.points):
        return new & current
    return new


def pixel_of(point: Point, shape: tuple[int, ...]) -> tuple[int, int]:
    """The (row, column) of the pixel under ``point`` on a slice of ``shape`` (H, W), kept inside the slice."""
    return min(max(round(point.y), 0), shape[0] - 1), min(max(round(point.x), 0), shape[1] - 1)


def honours(mask: np.ndarray, positives, negatives) -> bool:
    """Whether a 2D ``mask`` is not empty, holds every include click and no exclude click."""

    def at(point: Point) -> bool:
        return bool(mask[pixel_of(point, mask.shape)])

    return bool(mask.any()) and all(at(p) for p in positives) and not any(at(p) for p in negatives)


def box_without(box: Box, click: Point, gap: float = 2.0) -> Box | None:
    """``box`` with the side nearest ``click`` moved ``gap`` pixels past it, so the click is left out; None
    when the click is outside the box or what remains would be under a third of the box's width or height."""
    if not (box.x0 <= click.x <= box.x1 and box.y0 <= click.y <= box.y1):
        return None
    sides = {"x0": click.x - box.x0, "x1": box.x1 - click.x, "y0": click.y - box.y0, "y1": box.y1 - click.y}
    side = min(sides, key=sides.get)
    x0, y0, x1, y1 = box.x0, box.y0, box.x1, box.y1
    if side == "x0":
        x0 = click.x + gap
    elif side == "x1":
        x1 = click.x - gap
    elif side == "y0":
        y0 = click.y + gap
    else:
        y1 = click.y - gap
    if x1 - x0 < (box.x1 - box.x0) / 3 or y1 - y0 < (box.y1 - box.y0) / 3:
        return None
    return Box(x0, y0, x1, y1, z=box.z)


def grown_box(extent, clicks, shape: tuple[int, int], z: int | None) -> Box:
    """``extent`` (x0, y0, x1, y1) grown to take in the include ``clicks``, plus 10 % (at least 4 px) per side,
    clipped to the slice of ``shape`` (H, W)."""
    x0, y0, x1, y1 = (float(v) for v in extent)
    positive = [p for p in clicks if p.positive]
    x0, x1 = min([x0, *[p.x for p in positive]]), max([x1, *[p.x for p in positive]])
    y0, y1 = min([y0, *[p.y for p in positive]]), max([y1, *[p.y for p in positive]])
    margin_x, margin_y = max(4.0, 0.1 * (x1 - x0)), max(4.0, 0.1 * (y1 - y0))
    height, width = shape
    return Box(
        max(0.0, x0 - margin_x), max(0.0, y0 - margin_y),
        min(width - 1.0, x1 + margin_x), min(height - 1.0, y1 + margin_y), z=z,
    )  # fmt: skip
