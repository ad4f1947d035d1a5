"""Segmentation metrics: exact cases worked out by hand, agreement with MONAI, cropping, bad input, properties."""

import math
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from monai.metrics import compute_hausdorff_distance, compute_surface_dice

from oncoseg.errors import OncoSegError
from oncoseg.evaluate import metrics
from oncoseg.evaluate.metrics import dice, hd95, iou, nsd, score, surface_distances


def square(shape, top, left, side):
    m = np.zeros(shape, dtype=bool)
    m[top : top + side, left : left + side] = True
    return m


def ball(shape, spacing, center, radius):
    """Boolean mask of voxels whose centres (index * spacing) lie within ``radius`` of ``center``."""
    grids = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, spacing)), indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grids, center)) <= radius**2


def blob(rng, shape, fill=0.5, sigma=1.5):
    """A random smooth-edged mask (thresholded smoothed noise): several irregular objects."""
    from scipy import ndimage

    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return noise > np.quantile(noise, 1.0 - fill)


# ----------------------------------------------------------------------------------------- exact cases


@pytest.mark.parametrize(
    "mask, spacing",
    [
        (square((12, 15), 3, 4, 6), (0.7, 1.3)),
        (ball((20, 24, 24), (2.0, 0.8, 0.8), (19.0, 9.0, 9.0), 7.0), (2.0, 0.8, 0.8)),
    ],
)
def test_identical_masks(mask, spacing):
    assert mask.any()
    s = score(mask, mask, spacing, tolerance=0.0)
    assert s["dice"] == 1.0 and s["iou"] == 1.0 and s["nsd"] == 1.0 and s["hd95"] == 0.0
    assert s["pred_voxels"] == s["true_voxels"] == float(mask.sum())
    assert all(type(v) is float for v in s.values())


# Two 10x10 squares, the truth 3 rows lower; spacing (y, x) = (2.0, 0.5) mm, so the offset is 6 mm.
# Each square's surface is its 1-voxel ring: 36 voxels. Directed distances from the upper ring (rows 2..11,
# cols 5..14) to the lower ring (rows 5..14):
#   top row, 10 voxels: 3 rows above the lower top row                     -> 6.0 (x10)
#   side columns, rows 3 and 4 (2 per row): 2 and 1 rows above its corners -> 4.0 (x2), 2.0 (x2)
#   side columns, rows 5..10: on the lower square's side columns           -> 0.0 (x12)
#   bottom row (row 11), corners on the lower side columns                 -> 0.0 (x2)
#   bottom row, interior col j = 1..8 from the left: nearest side column,
#     min(j, 9 - j) columns away (the lower bottom row is 6 mm away)        -> 0.5, 1, 1.5, 2, 2, 1.5, 1, 0.5
# The reverse direction is the mirror image, so the same multiset. Sorted, the last 10 of 36 values are 6.0;
# the 95th percentile interpolates at position 0.95 * 35 = 33.25, inside that run: hd95 = 6.0 exactly.
SQUARE_DISTANCES = sorted([6.0] * 10 + [4.0, 4.0, 2.0, 2.0] + [0.0] * 14 + [0.5, 1, 1.5, 2, 2, 1.5, 1, 0.5])


def test_squares_offset_with_anisotropic_spacing():
    upper, lower = square((20, 20), 2, 5, 10), square((20, 20), 5, 5, 10)
    d_ul, d_lu = surface_distances(upper, lower, (2.0, 0.5))
    assert sorted(d_ul) == SQUARE_DISTANCES
    assert sorted(d_lu) == SQUARE_DISTANCES
    assert hd95(upper, lower, (2.0, 0.5)) == 6.0
    # Spacing applies per array axis: with (y, x) = (0.5, 2.0) the same 3-row offset is 1.5 mm, and no
    # surface voxel is farther than that (bottom-row interiors are now 1.5 mm from the lower bottom row).
    assert hd95(upper, lower, (0.5, 2.0)) == 1.5
    # Pixels: 3.
    assert score(upper, lower)["hd95"] == 3.0
    # Dice: overlap 7 rows of 10 -> 2 * 70 / 200; IoU 70 / 130.
    assert dice(upper, lower) == pytest.approx(0.7)
    assert iou(upper, lower) == pytest.approx(70 / 130)


@pytest.mark.parametrize(
    "tolerance, expected",
    [
        (0.0, 14 / 36),  # only the coincident surface voxels
        (1.0, 18 / 36),  # plus the 0.5 and 1.0 bottom-row voxels
        (5.9, 26 / 36),  # just below the 6 mm offset: all but the 10 top-row voxels
        (6.0, 1.0),  # at the offset: everything (distance <= tolerance counts)
        (10.0, 1.0),
    ],
)
def test_nsd_tolerance_below_and_above_offset(tolerance, expected):
    upper, lower = square((20, 20), 2, 5, 10), square((20, 20), 5, 5, 10)
    assert nsd(upper, lower, (2.0, 0.5), tolerance) == pytest.approx(expected)
    assert score(upper, lower, (2.0, 0.5), tolerance)["nsd"] == pytest.approx(expected)


def test_disjoint_masks():
    a, b = square((20, 30), 5, 2, 6), square((20, 30), 5, 20, 6)
    s = score(a, b, (1.0, 1.0), tolerance=2.0)
    assert s["dice"] == 0.0 and s["iou"] == 0.0 and s["nsd"] == 0.0
    # Nearest ring voxels are 13 columns apart (col 7 -> col 20); the far side is 18 away.
    assert 13.0 <= s["hd95"] <= 18.0


def test_empty_masks():
    empty, full = np.zeros((8, 9, 10), bool), ball((8, 9, 10), (1, 1, 1), (4, 4, 5), 3.0)
    s = score(empty, empty, (3.0, 1.0, 1.0))
    assert s == {"dice": 1.0, "iou": 1.0, "nsd": 1.0, "hd95": 0.0, "pred_voxels": 0.0, "true_voxels": 0.0}
    for p, t in [(empty, full), (full, empty)]:
        s = score(p, t, (3.0, 1.0, 1.0))
        assert s["dice"] == 0.0 and s["iou"] == 0.0 and s["nsd"] == 0.0
        assert math.isnan(s["hd95"])  # undefined, reported as nan (never silently 0 or inf)
        assert math.isnan(hd95(p, t, (3.0, 1.0, 1.0)))
    d_et, d_te = surface_distances(empty, full, None)
    assert d_et.size == 0 and d_te.size == np.count_nonzero(metrics._surface(full)) and np.isinf(d_te).all()
    d_ee = surface_distances(empty, empty, None)
    assert d_ee[0].size == 0 and d_ee[1].size == 0


def test_object_touching_the_edge_has_a_surface_there():
    m = np.ones((5, 5), bool)  # the whole picture: every border pixel is surface, the 3x3 inside is not
    assert np.count_nonzero(metrics._surface(m)) == 16
    shifted = np.zeros((5, 5), bool)
    shifted[:, 1:] = True
    # The left column of `m` is 1 pixel from the new left edge of `shifted`; everything else coincides.
    assert hd95(m, shifted, (1.0, 1.0)) == pytest.approx(1.0)


def test_accepts_anything_castable_to_bool():
    a = [[0, 1, 1], [0, 2, 0]]
    b = np.array([[0.0, 0.5, 0.0], [0.0, 1.0, 0.0]])
    assert dice(a, b) == pytest.approx(2 * 2 / 5)
    assert score(torch.tensor(a), b)["dice"] == pytest.approx(0.8)


# --------------------------------------------------------------------------------------------- MONAI

SPACING = (0.5, 1.0, 2.0)
SHAPE = (64, 34, 20)  # 32 x 34 x 40 mm


@pytest.fixture(scope="module")
def spheres():
    pred = ball(SHAPE, SPACING, (15.0, 17.0, 20.0), 10.0)
    truth = ball(SHAPE, SPACING, (16.3, 15.4, 22.5), 10.0)
    return pred, truth


def monai_hd95_nsd(pred, truth, tolerance):
    # MONAI wants one-hot, batch-first [B, C, z, y, x] tensors and by default skips channel 0 as
    # background, so channel 0 is the background and channel 1 the mask.
    def one_hot(m):
        return torch.from_numpy(np.stack([~m, m])[None].astype(np.float32))

    p, t = one_hot(pred), one_hot(truth)
    hd = compute_hausdorff_distance(p, t, percentile=95, spacing=SPACING)
    sd = compute_surface_dice(p, t, class_thresholds=[tolerance], spacing=SPACING)
    assert hd.shape == sd.shape == (1, 1)
    return hd.item(), sd.item()


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("tolerance", [1.0, 2.0, 3.0])
def test_distances_match_monai_exactly_with_its_surface_definition(spheres, tolerance):
    # MONAI finds surfaces with scipy's default (face-connected, cross-shaped) erosion; our private
    # `full=False` does the same. Then everything else (cropping, Euclidean distances with spacing, linear
    # 95th percentile, max of the two directions, NSD counted over surface voxels with d <= tolerance) must
    # agree to float32 precision (MONAI computes in float32).
    pred, truth = spheres
    m_hd, m_nsd = monai_hd95_nsd(pred, truth, tolerance)
    d = metrics._surface_distances(pred, truth, SPACING)
    assert metrics._hd95(*d) == pytest.approx(m_hd, rel=1e-6)
    assert metrics._nsd(*d, tolerance) == pytest.approx(m_nsd, rel=1e-6)


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("tolerance", [1.0, 2.0, 3.0])
def test_public_metrics_equal_monai(spheres, tolerance):
    # The public metrics use MONAI's surface definition (face neighbours): the numbers must be MONAI's.
    # For comparison, the full 3x3x3 neighbourhood (a thicker surface, ``full=True``) gave HD95 2.828 mm and
    # NSD 0.469 / 0.776 / 0.981 at 1 / 2 / 3 mm where MONAI gives 3.000 mm and 0.336 / 0.693 / 0.970.
    pred, truth = spheres
    m_hd, m_nsd = monai_hd95_nsd(pred, truth, tolerance)
    s = score(pred, truth, SPACING, tolerance)
    assert s["hd95"] == pytest.approx(m_hd, rel=1e-5)
    assert s["nsd"] == pytest.approx(m_nsd, rel=1e-5)
    assert m_hd == pytest.approx(3.0)
    thick = metrics._surface_distances(pred, truth, SPACING, full=True)
    assert metrics._hd95(*thick) == pytest.approx(2.0 * math.sqrt(2.0))


# --------------------------------------------------------------------------------------------- cropping


@pytest.mark.parametrize("seed", range(4))
def test_cropping_does_not_change_distances(seed):
    rng = np.random.default_rng(seed)
    shape = (12, 30, 25) if seed % 2 else (40, 33)
    spacing = tuple(rng.uniform(0.3, 3.0, len(shape)))
    pred, truth = blob(rng, shape, fill=0.15), blob(rng, shape, fill=0.2)
    pred[..., :2] = False  # some objects touch the edges, some do not
    truth[..., 5:] &= rng.random(truth[..., 5:].shape) > 0.1
    cropped = metrics._surface_distances(pred, truth, spacing, crop=True)
    whole = metrics._surface_distances(pred, truth, spacing, crop=False)
    for c, w in zip(cropped, whole):
        assert c.size == w.size > 0
        np.testing.assert_allclose(c, w, rtol=1e-12)


def test_embedding_in_a_larger_array_does_not_change_scores():
    rng = np.random.default_rng(7)
    pred, truth = blob(rng, (10, 20, 20), 0.2), blob(rng, (10, 20, 20), 0.25)
    big_p, big_t = np.zeros((30, 64, 50), bool), np.zeros((30, 64, 50), bool)
    big_p[11:21, 30:50, 7:27], big_t[11:21, 30:50, 7:27] = pred, truth
    spacing = (2.5, 0.7, 0.9)
    # Inside the small array the objects touch its edges (a surface there); in the big one the same voxels
    # border background: same surfaces, same distances.
    assert score(big_p, big_t, spacing) == score(pred, truth, spacing)


def test_large_volume_is_fast():
    shape, spacing = (300, 512, 512), (2.5, 0.8, 0.8)
    pred, truth = np.zeros(shape, bool), np.zeros(shape, bool)
    lesion = ball((25, 77, 77), spacing, (30.0, 30.4, 30.4), 30.0)
    pred[140:165, 200:277, 220:297] = lesion
    truth[141:166, 203:280, 216:293] = lesion
    start = time.perf_counter()
    s = score(pred, truth, spacing)
    assert time.perf_counter() - start < 5.0
    assert 0.7 < s["dice"] < 1.0 and 0.0 < s["hd95"] < 10.0


# ------------------------------------------------------------------------------------------- bad input


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(OncoSegError, match=r"\(4, 5\).*\(4, 6\)") as info:
        score(np.zeros((4, 5)), np.zeros((4, 6)))
    assert "\n" not in str(info.value)
    for f in (dice, iou):
        with pytest.raises(OncoSegError, match=r"\(4, 5\).*\(5, 4\)"):
            f(np.zeros((4, 5)), np.zeros((5, 4)))


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (1.0, 1.0, 1.0, 1.0), 1.0, "abc"])
def test_wrong_spacing_length(spacing):
    m = np.ones((3, 4, 5), bool)
    with pytest.raises(OncoSegError, match="spacing"):
        score(m, m, spacing)
    with pytest.raises(OncoSegError, match="spacing"):
        hd95(m, m, spacing)


@pytest.mark.parametrize("spacing", [(0.0, 1.0), (1.0, -2.0), (1.0, float("nan")), (float("inf"), 1.0)])
def test_non_positive_spacing(spacing):
    with pytest.raises(OncoSegError, match="spacing"):
        score(np.ones((3, 4)), np.ones((3, 4)), spacing)


@pytest.mark.parametrize("tolerance", [-0.5, float("nan"), "two"])
def test_bad_tolerance(tolerance):
    with pytest.raises(OncoSegError, match="tolerance"):
        score(np.ones((3, 4)), np.ones((3, 4)), tolerance=tolerance)
    with pytest.raises(OncoSegError, match="tolerance"):
        nsd(np.ones((3, 4)), np.ones((3, 4)), None, tolerance)


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4, 5)])
def test_wrong_number_of_dimensions(shape):
    with pytest.raises(OncoSegError, match="2D"):
        score(np.ones(shape), np.ones(shape))


# ------------------------------------------------------------------------------------------ properties


@st.composite
def mask_pairs(draw):
    shape = (draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    a = draw(arrays(np.bool_, shape))
    b = draw(arrays(np.bool_, shape))
    spacing = (draw(st.floats(0.1, 5.0)), draw(st.floats(0.1, 5.0)))
    return a, b, spacing


@settings(max_examples=150, deadline=None)
@given(mask_pairs())
def test_properties(pair):
    a, b, spacing = pair
    d, j = dice(a, b), iou(a, b)
    assert 0.0 <= d <= 1.0
    assert 0.0 <= j <= d + 1e-12
    assert d == pytest.approx(2 * j / (1 + j), abs=1e-12)
    assert d == dice(b, a) and j == iou(b, a)
    h_ab, h_ba = hd95(a, b, spacing), hd95(b, a, spacing)
    assert h_ab == h_ba or (math.isnan(h_ab) and math.isnan(h_ba))
    assert math.isnan(h_ab) == (a.any() != b.any())
    n = nsd(a, b, spacing, 1.0)
    assert 0.0 <= n <= 1.0 and n == nsd(b, a, spacing, 1.0)
