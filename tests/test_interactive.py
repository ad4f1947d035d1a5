"""The interactive (CVPR 2025 challenge) protocol: where the simulated clicks go, the curve and its AUC, the
every-slice bound, empty results, and the 3D-box variant. A stand-in model that answers "the truth (plus a
leak) inside the box; an exclude click removes the leak near it" makes the expected numbers exact; the real data
test only reads cases (the real model runs in benchmarks/interactive.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from stand_in_models import BoxBackend

from oncoseg.errors import EmptyResultError
from oncoseg.evaluate.interactive import (
    Box3D,
    CaseResult,
    InteractiveCase,
    curve_auc,
    curve_auc_norm,
    dataset_cases,
    next_click,
    run_case,
    run_interactive,
)
from oncoseg.image import MedicalImage
from oncoseg.models.base import Backend, ImageEmbedding, MaskPrediction
from oncoseg.predictor import Predictor
from oncoseg.session import Session

SHAPE = (20, 48, 48)


def _truth() -> np.ndarray:
    """A rounded object on slices 4-15, centred at x 20, y 24, largest on slice 10."""
    zz, yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    radius = 8 - 0.06 * (zz - 10) ** 2
    return (((xx - 20) ** 2 + (yy - 24) ** 2) <= radius**2) & (zz >= 4) & (zz <= 15)


def _leak() -> dict[int, np.ndarray]:
    """Tissue right of the object on slices 12-14 that the stand-in model takes for it."""
    leak = {}
    for z in (12, 13, 14):
        leak[z] = np.zeros(SHAPE[1:], bool)
        leak[z][20:28, 28:31] = True
    return leak


class Oracle(Backend):
    """The truth and the leak inside the prompt's box (everywhere for clicks alone); an exclude click removes
    the leak within 6 pixels of it (never the truth). ``empty_box``: box-only prompts find nothing. Slices are
    told apart by their pixels (``slices``: bytes -> z)."""

    name = "oracle"

    def __init__(self, truth, leak=None, empty_box=False):
        self.truth, self.leak, self.slices = truth, leak or {}, {}
        self.empty_box = empty_box

    def encode(self, image):
        z = self.slices[np.asarray(image).tobytes()]
        return ImageEmbedding(
            np.zeros(1, np.float32), image.shape[:2], image.shape[:2], self.name, cache={"z": z}
        )

    def decode(self, embedding, prompts, mask_input=None):
        z, (h, w) = embedding.cache["z"], embedding.original_size
        yy, xx = np.mgrid[:h, :w]
        masks = []
        for prompt in prompts:
            leak = self.leak.get(z, np.zeros((h, w), bool))
            excludes = [p for p in prompt.points if not p.positive]
            for p in excludes:
                leak = leak & ((xx - p.x) ** 2 + (yy - p.y) ** 2 > 36)
            mask = self.truth[z] | leak
            if prompt.box is not None:
                b = prompt.box
                inside = (xx >= int(b.x0)) & (xx <= int(b.x1)) & (yy >= int(b.y0)) & (yy <= int(b.y1))
                mask = mask & inside
            if self.empty_box and not prompt.points:
                mask = np.zeros((h, w), bool)
            masks.append(mask)
        return MaskPrediction(np.array(masks), np.full(len(prompts), 0.9, np.float32))


def _image() -> MedicalImage:
    array = np.random.default_rng(0).random(SHAPE).astype(np.float32) + 1.0
    return MedicalImage(array, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()), modality="mri")


def _case(truth=None) -> InteractiveCase:
    truth = _truth() if truth is None else truth
    return InteractiveCase("synthetic", "c1", "object", _image(), truth, "mri")


def _oracle_predictor(case: InteractiveCase, **options) -> Predictor:
    backend = Oracle(case.truth, **options)
    predictor = Predictor(backend)
    predictor.set_image(case.image, case.modality)
    backend.slices = {predictor.slice_pixels(z).tobytes(): z for z in range(SHAPE[0])}
    return predictor


# ---------------------------------------------------------------------------------------------- clicks
def test_click_goes_to_the_centre_of_the_largest_error_region_include_or_exclude():
    truth = np.zeros((12, 30, 30), bool)
    truth[1:10, 2:25, 2:25] = True
    prediction = truth.copy()
    prediction[2:7, 5:16, 8:19] = False  # missed: 5 x 11 x 11 voxels, centre z 4, y 10, x 13
    prediction[10:12, 26:28, 26:28] = True  # a small extra piece elsewhere
    point, size = next_click(prediction, truth)
    assert point.positive and size == 5 * 11 * 11
    assert (point.z, point.y, point.x) == (4, 10, 13)
    # now the extra piece is the largest error: an exclude click inside it
    prediction = truth.copy()
    prediction[3:8, 25:30, 0:30] = True  # 5 x 5 x 30 voxels outside the truth (x beyond 24 only counts)
    point, size = next_click(prediction, truth)
    assert not point.positive and not truth[point.z, int(point.y), int(point.x)]
    assert prediction[point.z, int(point.y), int(point.x)] and point.z == 5
    assert next_click(truth, truth) is None  # nothing wrong: no click


def test_click_centre_uses_the_spacing_and_the_volume_edge_is_a_border():
    truth = np.zeros((20, 40, 40), bool)
    # one connected missed region: a slab 3 slices thick but 15 x 15 wide, and a 7 x 7 x 7 cube beside it
    truth[2:5, 2:17, 2:17] = True
    truth[2:9, 17:24, 17:24] = True
    voxels, _ = next_click(np.zeros_like(truth), truth)  # in voxel units the cube's centre is deepest
    assert (voxels.z, voxels.y, voxels.x) == (5, 20, 20)
    thick, _ = next_click(np.zeros_like(truth), truth, spacing=(5.0, 1.0, 1.0))  # 5 mm slices: the slab is
    assert thick.z == 3 and 2 <= thick.y <= 16 and 2 <= thick.x <= 16  # 15 mm thick, deeper than the cube
    edge = np.zeros((10, 20, 20), bool)
    edge[0:10, 0:9, 0:20] = True  # touches the volume's edges on five sides
    point, _ = next_click(np.zeros_like(edge), edge)
    assert point.y == 4 and 3 <= point.z <= 6 and 8 <= point.x <= 11  # inside, not on the edge


# ---------------------------------------------------------------------------------------------- curve
def test_auc_on_a_known_curve():
    curve = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert curve_auc(curve, 5) == pytest.approx(0.65 + 0.75 + 0.85 + 0.95)  # clicks 1-5 only: 3.2
    assert curve_auc_norm(curve) == pytest.approx((0.55 + 0.65 + 0.75 + 0.85 + 0.95) / 5)  # 0.75
    assert curve_auc([1.0] * 6, 5) == pytest.approx(4.0) and curve_auc_norm([1.0] * 6) == pytest.approx(1.0)
    assert curve_auc([0.3], 0) == 0.0 and curve_auc_norm([0.3]) == pytest.approx(0.3)


# ---------------------------------------------------------------------------------------------- the loop
def test_a_leak_gets_an_exclude_click_and_the_curve_has_one_value_per_step():
    case = _case()
    predictor = _oracle_predictor(case, leak=_leak())
    result = run_case(predictor, case, clicks=3)
    assert len(result.dice) == len(result.nsd) == 4 and len(result.clicks) == 3
    assert result.prompt_slice == 10 and result.initial_slices == (4, 15)
    first = result.clicks[0]
    assert not first.positive and 12 <= first.z <= 14 and _leak()[first.z][first.y, first.x]
    assert first.note == "" and result.dice[0] < 1.0 and result.dice[1] > result.dice[0]
    # every-slice GT box: the oracle inside the GT box on each slice keeps only the leak's edge inside it
    assert result.bound_dice > 0.97 and result.bound_dice >= result.dice[0]
    record = result.as_dict()
    assert record["dice_auc"] == pytest.approx(curve_auc(result.dice, 3))
    assert CaseResult.from_dict(record).as_dict() == record


def test_a_perfect_result_gets_no_click_and_a_full_curve():
    case = _case()
    result = run_interactive([case], _oracle_predictor(case), clicks=5)
    (only,) = result.cases
    assert only.dice == [1.0] * 6 and only.clicks == [None] * 5 and only.bound_dice == 1.0
    assert only.dice_auc == pytest.approx(4.0) and result.summary()[0]["dice_auc_norm"] == pytest.approx(1.0)


def test_an_empty_first_result_scores_zero_and_the_first_click_starts_the_object():
    case = _case()
    predictor = _oracle_predictor(case, empty_box=True)
    result = run_case(predictor, case, clicks=2)
    assert result.dice[0] == 0.0 and result.nsd[0] == 0.0 and "EmptyResultError" in result.initial_note
    assert result.clicks[0].positive and result.clicks[0].note == ""
    assert result.dice[1] > 0.0  # the include click made an object (one slice: box prompts find nothing)
    assert result.bound_dice == 0.0  # the bound uses boxes only, which this model answers with nothing


def test_a_click_that_empties_the_slice_is_recorded_and_the_prediction_kept(monkeypatch):
    def refuse(self, obj, prompt, **options):  # what Session.refine raises when the click empties the slice
        raise EmptyResultError(f"the correction removed object {obj.label} from this slice")

    monkeypatch.setattr(Session, "refine", refuse)
    case = _case()
    predictor = _oracle_predictor(case, leak=_leak())
    result = run_case(predictor, case, clicks=2, bound=False)
    assert all("EmptyResultError" in c.note for c in result.clicks) and not result.clicks[0].positive
    assert result.dice[0] == result.dice[1] == result.dice[2] < 1.0 and result.bound_dice is None


def test_box3d_bounds_the_walk_and_the_masks_by_the_targets_box():
    truth = np.zeros(SHAPE, bool)
    truth[6:13, 16:32, 16:32] = True
    case = _case(truth)
    predictor = Predictor(BoxBackend())  # paints the prompt's box: the walk would go on to the volume's ends
    flat = run_case(predictor, case, clicks=0, initial="box2d", bound=False)
    bounded = run_case(predictor, case, clicks=0, initial="box3d", bound=False)
    assert flat.initial_slices == (0, 19) and flat.dice[0] < 0.6
    assert bounded.initial_slices == (6, 12) and bounded.dice[0] == 1.0 and bounded.prompt_slice == 9
    box = Box3D.of(truth)
    assert (box.z0, box.z1, box.y0, box.y1, box.x0, box.x1) == (6, 12, 16, 31, 16, 31)
    # the prompt is recorded, enough to replay the run: the 2D box on the prompted slice and the 3D bounds
    assert flat.initial_box == bounded.initial_box == [16.0, 16.0, 31.0, 31.0] and flat.bounds_3d is None
    assert bounded.bounds_3d == [16, 16, 6, 31, 31, 12]
    assert CaseResult.from_dict(bounded.as_dict()).bounds_3d == bounded.bounds_3d


# ---------------------------------------------------------------------------------------------- real data
def test_hippocampus_cases_in_a_fixed_order_whole_only(shared_data):
    cases = list(itertools.islice(dataset_cases("msd-hippocampus", limit=3, root=shared_data), 10))
    ids = [c.case_id for c in cases]
    assert len(cases) == 3 and ids == sorted(ids) and {c.target for c in cases} == {"whole"}
    again = [c.case_id for c in dataset_cases("msd-hippocampus", limit=3, root=shared_data)]
    assert again == ids and all(c.truth.any() and c.truth.shape == c.image.shape for c in cases)
