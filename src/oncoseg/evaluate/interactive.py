"""Interactive 3D evaluation the way the CVPR 2025 challenge "Foundation Models for Interactive 3D Biomedical
Image Segmentation" scores it: one box, then up to five simulated corrective clicks, Dice and NSD after every
step, and the area under the Dice-per-click curve.

    >>> from oncoseg.evaluate.interactive import dataset_cases, run_interactive
    >>> result = run_interactive(dataset_cases("msd-hippocampus", limit=3), "litemedsam", clicks=5)
    >>> result.summary()[0]["dice"]          # mean Dice after the box, then after each click

The rules implemented (from the challenge's evaluation script ``CVPR25_iter_eval.py`` and its dataset card),
and where this differs:

* **Targets.** Every structure present in the ground truth is one target, run on its own (the challenge runs
  all classes of an image together, one click per class per step; each class's clicks depend only on that
  class's error, so running them apart is the same protocol except where two classes' predictions overlap).
* **Initial prompt** (``initial``):

  - ``"box2d"``: the ground truth's tight 2D box on the slice where the target is largest, then the product's
    propagation (`Session.segment(prompt, volume=True)`, default `PropagationSettings`).
  - ``"box3d"``: the challenge's box: ``z_min``, ``z_max`` of the target and the 2D box on the middle slice
    ``z_mid = (z_min + z_max) // 2`` (if the target is absent there: the nearest slice that holds it). The 2D
    box on ``z_mid`` is propagated as above, but every model answer is bounded by the target's 3D bounding
    box: slices outside ``z_min..z_max`` answer nothing (the walk stops there) and on the others the prompt
    box is cut to the 3D box's x/y extent and the mask is cut to it too. The core has no hook for this
    (`PropagationSettings` only has ``max_slices``, the same in both directions), so `BoxBoundedPredictor`
    wraps the model; the bound holds for the corrections as well. What the core should add: a z-range and an
    x/y bound in `PropagationSettings`.

* **Clicks** (``clicks``, 5 by default). After each step: the error is ``prediction XOR truth``; its 3D
  connected regions are taken with 26-connectivity; in the largest region the click goes to the voxel
  farthest from the region's border (Euclidean distance transform, here in mm with the image's spacing, as
  asked for this project: the challenge's script uses voxel units; the volume's edge counts as border, as in
  the challenge's zero-padded crop; where several voxels are deepest, the one nearest their centroid, then
  the first in z, y, x order, where the challenge draws one at random with seed 42). A missed voxel there (false negative) gives an include click, an extra one (false
  positive) an exclude click. The click goes through the product's own correction path:
  `Session.refine(obj, Prompt(points=(Point(x, y, positive, z),)))`, which adds it to the clicks already on
  that slice and walks again from that slice up to the next annotated slice. A prediction without errors gets
  no click (the step repeats its scores, as in the challenge). A refine that raises `EmptyResultError` (the
  click would remove the object from that slice) or another one-line `OncoSegError` is recorded in the click's
  ``note`` and the prediction is kept.
* **Empty results.** If the initial prompt finds nothing, that step scores Dice 0 and NSD 0 (the challenge
  scores a missing prediction as all background), and the next click (an include click, since everything is
  missed) starts the object with `Session.segment(Prompt(points=(click,)), volume=True)`.
* **Metrics.** Dice and NSD (`oncoseg.evaluate.metrics`: surface voxels with face connectivity, distances in
  mm) at a tolerance of 2 mm, the challenge's; like the challenge, NSD is only computed when Dice > 0.2 and is
  0 otherwise. ``dice[0]`` is after the box, ``dice[k]`` after click ``k`` (``clicks + 1`` values).
* **AUC.** ``dice_auc`` is the challenge's: the trapezoidal area under Dice after clicks 1..``clicks`` at unit
  spacing (the box step is left out, since the challenge's box is optional), so it lies in
  ``[0, clicks - 1]`` (0..4 for 5 clicks). ``dice_auc_norm`` includes the box step and is divided by the
  number of clicks, so it lies in [0, 1] (the mean height of the whole curve). Same for NSD.
* **Bound.** Beside each target: the every-slice GT box (the GT's tight 2D box on every slice that holds the
  target, each slice segmented on its own, no propagation, no clicks): what a box per slice gives.

Case order is fixed (the dataset's sorted cases, targets in the dataset's order); nothing is random.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from oncoseg.errors import OncoSegError
from oncoseg.evaluate.metrics import dice as dice_score
from oncoseg.evaluate.metrics import nsd as nsd_score
from oncoseg.image import MedicalImage
from oncoseg.models.base import MaskPrediction
from oncoseg.predictor import Predictor
from oncoseg.prompts import Box, Point, Prompt, box_from_mask
from oncoseg.session import SegmentedObject, Session
from oncoseg.volume import PropagationSettings

INITIAL = ("box2d", "box3d")
TOLERANCE_MM = 2.0  # the challenge's NSD tolerance
NSD_MIN_DICE = 0.2  # the challenge computes NSD only above this Dice (0 otherwise)

# What a benchmark runs by default for each dataset: split, targets (None: all present), case ids (None: all)
DEFAULT_DATASETS: dict[str, dict[str, Any]] = {
    "msd-hippocampus": {"split": "test", "targets": ("whole",), "case_ids": None},
    "brats2015": {"split": None, "targets": ("WT", "TC", "ET"), "case_ids": None},
    "totalsegmentator-example": {"split": None, "targets": None, "case_ids": ("ct", "ct_dicom")},
}


# ------------------------------------------------------------------------------------------------- cases
@dataclass
class InteractiveCase:
    """One target of one image: the image, its ground truth and the modality the model is told."""

    dataset: str
    case_id: str
    target: str
    image: MedicalImage
    truth: np.ndarray  # [z, y, x] bool
    modality: str | None = None


def dataset_cases(
    name: str,
    *,
    split: str | None | object = ...,
    targets: Sequence[str] | None | object = ...,
    case_ids: Sequence[str] | None | object = ...,
    limit: int | None = None,
    root: str | None = None,
) -> Iterator[InteractiveCase]:
    """The targets of a registered 3D dataset, one `InteractiveCase` each, in a fixed order (the dataset's
    cases, sorted, and its targets in order; targets absent from a case are skipped). ``split``, ``targets``
    and ``case_ids`` default to `DEFAULT_DATASETS` (all cases and all targets for other datasets); ``limit``
    keeps at most that many cases, evenly spread. Each image is read when its first target is reached."""
    from oncoseg.data import open_dataset

    defaults = DEFAULT_DATASETS.get(name, {"split": None, "targets": None, "case_ids": None})
    split = defaults["split"] if split is ... else split
    targets = defaults["targets"] if targets is ... else targets
    case_ids = defaults["case_ids"] if case_ids is ... else case_ids
    dataset = open_dataset(name, root)
    if dataset.info.dim != "3d":
        raise OncoSegError(f"{name} is a 2D dataset: the interactive protocol is for volumes")
    cases = sorted(dataset.cases(split), key=lambda c: c.case_id)
    if case_ids is not None:
        cases = [c for c in cases if c.case_id in set(case_ids)]
    if not cases:
        raise OncoSegError(f"{name}: no cases in the {split or 'whole'} split in {dataset.folder}")
    if limit is not None and limit < len(cases):
        picks = np.unique(np.linspace(0, len(cases) - 1, max(1, limit)).round().astype(int))
        cases = [cases[i] for i in picks]
    for case in cases:
        image, truths = case.load()
        for target, truth in truths.items():
            if (targets is None or target in targets) and truth.any():
                yield InteractiveCase(case.dataset, case.case_id, target, image, truth, case.modality)


# ------------------------------------------------------------------------------------------------- clicks
def next_click(prediction: np.ndarray, truth: np.ndarray, spacing=None) -> tuple[Point, int] | None:
    """The challenge's corrective click for ``prediction`` against ``truth`` ([z, y, x] bool): at the voxel
    farthest from the border (EDT in the units of ``spacing`` (z, y, x), the volume's edge counting as border)
    of the largest 26-connected region of ``prediction XOR truth``; include (positive) where the truth is,
    exclude elsewhere. Returns the click and the region's size in voxels, or None when nothing is wrong."""
    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    error = prediction ^ truth
    if not error.any():
        return None
    labels, count = ndimage.label(error, structure=np.ones((3,) * error.ndim, bool))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    largest = int(np.argmax(sizes))  # ties: the lowest label, i.e. the first region in z, y, x order
    region = labels == largest
    where = ndimage.find_objects(region.astype(np.int8))[0]
    crop = np.pad(region[where], 1)  # background around the region: the volume's edge is a border too
    distance = ndimage.distance_transform_edt(crop, sampling=spacing)
    deepest = np.argwhere(distance == distance.max())  # often a plateau: take its most central voxel
    local = deepest[int(np.argmin(((deepest - deepest.mean(axis=0)) ** 2).sum(axis=1)))]
    z, y, x = (int(i - 1 + s.start) for i, s in zip(local, where, strict=True))
    return Point(float(x), float(y), bool(truth[z, y, x]), z), int(sizes[largest])


# ------------------------------------------------------------------------------------------------- curves
def curve_auc(values: Sequence[float], clicks: int) -> float:
    """The challenge's AUC: trapezoidal area under the last ``clicks`` values (after clicks 1..clicks) at unit
    spacing; in [0, clicks - 1]. 0.0 for fewer than two clicks."""
    tail = np.asarray(values[-clicks:] if clicks > 0 else [], dtype=float)
    if tail.size < 2:
        return 0.0
    return float(np.sum((tail[1:] + tail[:-1]) / 2.0))


def curve_auc_norm(values: Sequence[float]) -> float:
    """Trapezoidal area under the whole curve (box step included) at unit spacing, divided by its length in
    steps (the number of clicks): the mean height of the curve, in [0, 1]. A single value is its own mean."""
    array = np.asarray(values, dtype=float)
    if array.size == 1:
        return float(array[0])
    return float(np.sum((array[1:] + array[:-1]) / 2.0) / (array.size - 1))


def challenge_scores(
    prediction: np.ndarray, truth: np.ndarray, spacing, tolerance: float
) -> tuple[float, float]:
    """Dice and NSD at ``tolerance`` (NSD only when Dice > 0.2, else 0, as the challenge does)."""
    d = dice_score(prediction, truth)
    return d, (nsd_score(prediction, truth, spacing, tolerance) if d > NSD_MIN_DICE else 0.0)


# ------------------------------------------------------------------------------------------------- box3d
@dataclass(frozen=True)
class Box3D:
    """A target's 3D bounding box (inclusive) and the slice its 2D prompt box is on."""

    z0: int
    z1: int
    y0: int
    y1: int
    x0: int
    x1: int
    z_mid: int

    @classmethod
    def of(cls, truth: np.ndarray) -> Box3D:
        zs, ys, xs = (np.flatnonzero(truth.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
        z0, z1 = int(zs[0]), int(zs[-1])
        mid = (z0 + z1) // 2
        z_mid = int(zs[np.argmin(np.abs(zs - mid))])  # the middle slice, or the nearest holding the target
        return cls(z0, z1, int(ys[0]), int(ys[-1]), int(xs[0]), int(xs[-1]), z_mid)

    def clip(self, box: Box) -> Box | None:
        x0, y0 = max(box.x0, float(self.x0)), max(box.y0, float(self.y0))
        x1, y1 = min(box.x1, float(self.x1)), min(box.y1, float(self.y1))
        return Box(x0, y0, x1, y1, z=box.z) if x0 <= x1 and y0 <= y1 else None


class BoxBoundedPredictor(Predictor):
    """The same model, image and embedding cache as ``inner`` (its state is shared, not copied), answering only
    inside ``bounds``: nothing outside its slices, prompt boxes and masks cut to its x/y extent."""

    def __init__(self, inner: Predictor, bounds: Box3D):  # not Predictor.__init__: inner's state is shared
        self.__dict__.update(inner.__dict__)
        self.bounds = bounds

    def predict(self, prompts, z=None, mask_input=None) -> MaskPrediction:
        prompts = [prompts] if isinstance(prompts, Prompt) else list(prompts)
        if z is None:
            z = next((p.z for p in prompts if p.z is not None), None)
        b = self.bounds
        h, w = self.image.shape[1:3]
        empty = MaskPrediction(np.zeros((len(prompts), h, w), bool), np.zeros(len(prompts), np.float32))
        if z is None or not b.z0 <= z <= b.z1:
            return empty
        clipped = []
        for prompt in prompts:
            box = prompt.box
            if box is not None:
                box = b.clip(box)
                if box is None:
                    return empty
            clipped.append(Prompt(box=box, points=prompt.points))
        result = super().predict(clipped, z=z, mask_input=mask_input)
        inside = np.zeros((h, w), bool)
        inside[b.y0 : b.y1 + 1, b.x0 : b.x1 + 1] = True
        return MaskPrediction(result.masks & inside, result.scores, result.logits)


# ------------------------------------------------------------------------------------------------- results
@dataclass
class ClickRecord:
    """One simulated click: where (voxel indices), include or exclude, the error region it fixes, what
    happened (``note``: empty when applied) and the object's slice range afterwards."""

    z: int
    y: int
    x: int
    positive: bool
    region_voxels: int
    note: str = ""
    slice_range: tuple[int, int] | None = None
    seconds: float = 0.0


@dataclass
class CaseResult:
    """The curve of one target: ``dice``/``nsd`` after the box and after each click (``clicks + 1`` values)."""

    dataset: str
    case_id: str
    target: str
    initial: str
    prompt_slice: int
    true_voxels: int
    true_slices: tuple[int, int]
    dice: list[float] = field(default_factory=list)
    nsd: list[float] = field(default_factory=list)
    clicks: list[ClickRecord | None] = field(default_factory=list)  # None: nothing wrong, no click
    initial_note: str = ""
    initial_slices: tuple[int, int] | None = None  # slice range of the propagated object
    # the prompt as given: the box on prompt_slice [x0, y0, x1, y1] (pixels, x first, inclusive) and, for box3d,
    # the bounds [x0, y0, z0, x1, y1, z1] every slice's answer is kept within (enough to replay the run)
    initial_box: list[float] | None = None
    bounds_3d: list[int] | None = None
    bound_dice: float | None = None
    bound_nsd: float | None = None
    seconds: float = 0.0
    bound_seconds: float = 0.0

    @property
    def n_clicks(self) -> int:
        return len(self.dice) - 1

    @property
    def dice_auc(self) -> float:
        return curve_auc(self.dice, self.n_clicks)

    @property
    def nsd_auc(self) -> float:
        return curve_auc(self.nsd, self.n_clicks)

    @property
    def dice_auc_norm(self) -> float:
        return curve_auc_norm(self.dice)

    @property
    def nsd_auc_norm(self) -> float:
        return curve_auc_norm(self.nsd)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> CaseResult:
        """A result back from `as_dict` (e.g. read from a results file to resume a run)."""
        names = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in record.items() if k in names}
        for key in ("true_slices", "initial_slices"):
            values[key] = tuple(values[key]) if values.get(key) is not None else None
        values["clicks"] = [
            None if c is None else ClickRecord(**{**c, "slice_range": tuple(c["slice_range"]) if c.get("slice_range") else None})
            for c in values.get("clicks", [])
        ]  # fmt: skip
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record.update(
            dice_auc=self.dice_auc,
            nsd_auc=self.nsd_auc,
            dice_auc_norm=self.dice_auc_norm,
            nsd_auc_norm=self.nsd_auc_norm,
        )
        return record


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def summarise(results: Sequence[CaseResult], key: Callable[[CaseResult], str]) -> list[dict[str, Any]]:
    """Mean curve, AUCs and bound per group (``key`` of a result), groups in first-seen order."""
    groups: dict[str, list[CaseResult]] = {}
    for result in results:
        groups.setdefault(key(result), []).append(result)
    rows = []
    for name, members in groups.items():
        steps = min(len(r.dice) for r in members)
        rows.append(
            {
                "group": name,
                "n": len(members),
                "dice": [float(np.mean([r.dice[k] for r in members])) for k in range(steps)],
                "nsd": [float(np.mean([r.nsd[k] for r in members])) for k in range(steps)],
                "dice_auc": float(np.mean([r.dice_auc for r in members])),
                "nsd_auc": float(np.mean([r.nsd_auc for r in members])),
                "dice_auc_norm": float(np.mean([r.dice_auc_norm for r in members])),
                "nsd_auc_norm": float(np.mean([r.nsd_auc_norm for r in members])),
                "bound_dice": _mean(r.bound_dice for r in members),
                "bound_nsd": _mean(r.bound_nsd for r in members),
                "initial_empty": sum(bool(r.initial_note) for r in members),
                "include_clicks": sum(1 for r in members for c in r.clicks if c and c.positive),
                "exclude_clicks": sum(1 for r in members for c in r.clicks if c and not c.positive),
                "clicks_not_applied": sum(1 for r in members for c in r.clicks if c and c.note),
                "clicks_that_hurt": sum(
                    1 for r in members for k in range(1, len(r.dice)) if r.dice[k] < r.dice[k - 1] - 1e-9
                ),
                "seconds": float(sum(r.seconds + r.bound_seconds for r in members)),
            }
        )
    return rows


@dataclass
class InteractiveResult:
    """All targets run, with the settings; `summary` gives the mean curves per dataset and target."""

    cases: list[CaseResult]
    settings: dict[str, Any]

    def summary(self, by: str = "target") -> list[dict[str, Any]]:
        """Means per ``"dataset"``, per ``"target"`` (dataset/target) or per ``"case"``."""
        keys = {
            "dataset": lambda r: r.dataset,
            "target": lambda r: f"{r.dataset}/{r.target}",
            "case": lambda r: f"{r.dataset}/{r.case_id}/{r.target}",
        }
        return summarise(self.cases, keys[by])

    def as_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "summary_by_dataset": self.summary("dataset"),
            "summary_by_target": self.summary("target"),
            "cases": [r.as_dict() for r in self.cases],
        }


# ------------------------------------------------------------------------------------------------- running
def _predictor_from(model: Any) -> Predictor:
    if isinstance(model, Predictor):
        return model
    if hasattr(model, "build_predictor"):  # a ModelSpec
        return model.build_predictor(cache_slices=1024)
    if isinstance(model, str):  # a backend name: built the way every shell builds it
        from oncoseg.models.spec import ModelSpec

        return ModelSpec(backend=model).build_predictor(cache_slices=1024)
    return Predictor(model, cache_slices=1024)  # a Backend


def every_slice_bound(predictor: Predictor, truth: np.ndarray) -> np.ndarray:
    """The GT's tight box on every slice holding the target, each slice segmented alone (no propagation)."""
    prediction = np.zeros_like(truth, dtype=bool)
    for z in np.flatnonzero(truth.any(axis=(1, 2))):
        z = int(z)
        prediction[z] = predictor.predict(Prompt(box=box_from_mask(truth[z], z=z)), z=z).masks[0]
    return prediction


def run_case(
    predictor: Predictor,
    case: InteractiveCase,
    *,
    clicks: int = 5,
    initial: str = "box2d",
    bound: bool = True,
    tolerance: float = TOLERANCE_MM,
    propagation: PropagationSettings | None = None,
) -> CaseResult:
    """The box, ``clicks`` corrective clicks and the bound for one target (see the module's rules)."""
    if initial not in INITIAL:
        raise OncoSegError(f"initial prompt must be one of {', '.join(INITIAL)}, not {initial!r}")
    image, truth = case.image, np.asarray(case.truth, bool)
    if not image.is_3d or truth.shape != image.shape:
        raise OncoSegError(f"{case.case_id}/{case.target}: needs a volume and a truth of its shape")
    if predictor.image is not image:
        predictor.set_image(image, case.modality)
    spacing = image.spacing_zyx
    zs = np.flatnonzero(truth.any(axis=(1, 2)))
    if initial == "box3d":
        bounds = Box3D.of(truth)
        model: Predictor = BoxBoundedPredictor(predictor, bounds)
        z0 = bounds.z_mid
    else:
        model, z0 = predictor, int(np.argmax(truth.sum(axis=(1, 2))))
    # a factory returning the predictor whose image is already this one: the session keeps its embedding cache
    session = Session(image, lambda: model, modality=case.modality, propagation=propagation)
    result = CaseResult(
        case.dataset, case.case_id, case.target, initial, z0, int(truth.sum()), (int(zs[0]), int(zs[-1]))
    )
    began = time.perf_counter()
    obj: SegmentedObject | None = None
    box = box_from_mask(truth[z0], z=z0)
    result.initial_box = [float(box.x0), float(box.y0), float(box.x1), float(box.y1)]
    if initial == "box3d":
        result.bounds_3d = [bounds.x0, bounds.y0, bounds.z0, bounds.x1, bounds.y1, bounds.z1]
    try:
        obj = session.segment(Prompt(box=box), volume=True, name=case.target)
        result.initial_slices = obj.slice_range
    except OncoSegError as exc:  # EmptyResultError and blank-region errors: nothing found, Dice 0
        result.initial_note = f"{type(exc).__name__}: {exc}"
    prediction = obj.mask if obj is not None else np.zeros_like(truth)
    for step in range(clicks + 1):
        if step > 0:
            found = next_click(prediction, truth, spacing)
            if found is None:
                result.clicks.append(None)
            else:
                point, size = found
                record = ClickRecord(int(point.z), int(point.y), int(point.x), point.positive, size)
                t = time.perf_counter()
                try:
                    if obj is None:  # nothing yet: the (include) click starts the object
                        obj = session.segment(Prompt(points=(point,)), volume=True, name=case.target)
                    else:
                        session.refine(obj, Prompt(points=(point,)))
                except OncoSegError as exc:
                    record.note = f"{type(exc).__name__}: {exc}"
                record.seconds = round(time.perf_counter() - t, 3)
                prediction = obj.mask if obj is not None else prediction
                record.slice_range = obj.slice_range if obj is not None else None
                result.clicks.append(record)
        d, n = challenge_scores(prediction, truth, spacing, tolerance)
        result.dice.append(d)
        result.nsd.append(n)
    result.seconds = round(time.perf_counter() - began, 3)
    if bound:
        t = time.perf_counter()
        result.bound_dice, result.bound_nsd = challenge_scores(
            every_slice_bound(predictor, truth), truth, spacing, tolerance
        )
        result.bound_seconds = round(time.perf_counter() - t, 3)
    return result


def run_interactive(
    cases: Iterable[InteractiveCase],
    model: Any = "litemedsam",
    *,
    clicks: int = 5,
    initial: str = "box2d",
    progress: Callable[[int, CaseResult], None] | None = None,
    bound: bool = True,
    tolerance: float = TOLERANCE_MM,
    propagation: PropagationSettings | None = None,
) -> InteractiveResult:
    """Run the interactive protocol on ``cases`` (e.g. `dataset_cases`): ``model`` is a `Predictor` (shared
    across cases), a `ModelSpec` or a backend name. ``progress(i, result)`` is called after each target
    (``i`` counts from 1). ``bound=False`` skips the every-slice GT-box bound."""
    if clicks < 0:
        raise OncoSegError(f"clicks must be 0 or more, got {clicks}")
    if initial not in INITIAL:
        raise OncoSegError(f"initial prompt must be one of {', '.join(INITIAL)}, not {initial!r}")
    predictor = _predictor_from(model)
    settings = {
        "initial": initial,
        "clicks": clicks,
        "tolerance_mm": tolerance,
        "nsd_min_dice": NSD_MIN_DICE,
        "backend": getattr(predictor.backend, "name", type(predictor.backend).__name__),
        "propagation": asdict(propagation or PropagationSettings()),
        "bound": "every-slice GT box" if bound else None,
    }
    results = []
    for i, case in enumerate(cases, start=1):
        results.append(
            run_case(
                predictor, case, clicks=clicks, initial=initial, bound=bound, tolerance=tolerance,
                propagation=propagation,
            )
        )  # fmt: skip
        if progress is not None:
            progress(i, results[-1])
    return InteractiveResult(results, settings)
