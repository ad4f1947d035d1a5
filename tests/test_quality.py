"""The quality estimate and review flag every result carries (oncoseg.quality), and where users see them."""

from __future__ import annotations

import json

import numpy as np

from oncoseg.quality import FEATURES, Quality, assess, features


def _ball(shape=(20, 48, 48), top=15) -> np.ndarray:
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    body = ((xx - 24) ** 2 + (yy - 24) ** 2) <= (10 - 0.2 * (zz - 10) ** 2) ** 2
    return body & (zz >= 4) & (zz <= top)


def test_features_read_what_they_say():
    closed = _ball()
    scores = {z: 0.9 for z in range(4, 16)}
    values = dict(zip(FEATURES, features(closed, scores, volume=True), strict=True))
    assert values["score_mean"] == values["score_min"] == 0.9
    assert values["largest_piece"] == 1.0 and values["border"] == 0.0
    assert values["open_end"] < 0.5  # the ball narrows towards its ends
    cut = _ball(top=10)  # a walk that stopped on the ball's widest slice
    assert features(cut, scores, volume=True)[FEATURES.index("open_end")] > 0.9
    two = closed.copy()
    two[8:12, 0:4, 0:4] = True  # a second, separate piece touching the border
    values = dict(zip(FEATURES, features(two, scores, volume=True), strict=True))
    assert values["largest_piece"] < 1.0 and values["border"] > 0.0


def test_the_flag_follows_the_facts_and_says_why():
    picture = _ball()[10]
    good = assess(picture, {None: 0.95}, volume=False)
    bad = assess(picture, {None: 0.55}, volume=False)
    assert isinstance(good, Quality) and 0.0 <= bad.estimate < good.estimate <= 1.0
    assert not good.review and bad.review and bad.reasons[0] == "low model score"
    assert bad.describe().startswith("REVIEW (quality") and good.describe() == f"quality {good.estimate:.2f}"
    assert json.loads(json.dumps(bad.to_dict()))["review"] is True
    # volumes: a walk that stopped on the object's widest slice is trusted less than a closed one; propagated
    # volumes are flagged for review as measured (benchmarks/confidence.py: almost all are bad today)
    closed = assess(_ball(), {z: 0.85 for z in range(4, 16)}, volume=True)
    cut = assess(_ball(top=10), {z: 0.85 for z in range(4, 11)}, volume=True)
    assert cut.estimate < closed.estimate and cut.review and not closed.review
    assert "walk stopped while the object was still large" in cut.reasons
    # clicks alone leave the size to the model: a picture asked for so is trusted less (BUSI test clicks: 16 of
    # 42 bad, boxes none); a volume's estimate ignores it (its walk carries the doubt, `oncoseg.session`)
    clicked = assess(picture, {None: 0.9}, volume=False, clicks_only=True)
    assert clicked.estimate < assess(picture, {None: 0.9}, volume=False).estimate
    assert assess(_ball(), {z: 0.85 for z in range(4, 16)}, True, clicks_only=True) == closed


def test_every_session_object_carries_its_quality_into_the_json():
    from stand_in_models import BoxBackend

    from oncoseg.api import SegmentationResult
    from oncoseg.image import MedicalImage
    from oncoseg.predictor import Predictor
    from oncoseg.prompts import Box, Prompt
    from oncoseg.session import Session

    image = MedicalImage.from_array(np.random.default_rng(0).random((64, 64)).astype(np.float32))
    session = Session(image, Predictor(BoxBackend()))
    obj = session.segment(Prompt(box=Box(10, 10, 30, 30)))
    assert obj.quality == assess(obj.mask, obj.slice_scores, False)
    summary = SegmentationResult.from_session(session).to_dict()
    assert summary["objects"][0]["quality"]["estimate"] == round(obj.quality.estimate, 3)


def test_the_shipped_weights_are_the_ones_the_benchmark_fitted_and_the_flag_is_bounded():
    from pathlib import Path

    from oncoseg import quality

    fits = json.loads((Path(__file__).parents[1] / "benchmarks/results/confidence.json").read_text())["fit"]
    for shipped, fit in ((quality.PICTURE_FIT, fits["picture"]), (quality.VOLUME_FIT, fits["volume"])):
        np.testing.assert_allclose(shipped.mean, fit["mean"])
        np.testing.assert_allclose(shipped.scale, fit["scale"])
        np.testing.assert_allclose(shipped.weights, fit["weights"])
        assert (shipped.bias, shipped.review_at) == (fit["bias"], fit["review_at"])
        # a fact rarely seen in training (a mask on the border) counts as unusual, not as a hundred times so
        assert (
            quality.standardised(shipped.mean + 100 * shipped.scale, shipped.mean, shipped.scale).max() == 3.0
        )


def test_slices_to_look_at_first_in_a_volume():
    """A walk that jumps on one slice (a leak) gets that slice listed; a smooth object none; 2D never."""
    from oncoseg.quality import assess_slices, slice_features

    zz, yy, xx = np.mgrid[:12, :40, :40]
    smooth = ((xx - 20) ** 2 + (yy - 20) ** 2 <= 64) & (zz >= 2) & (zz <= 9)
    scores = {z: 0.9 for z in range(2, 10)}
    assert not any(flag for _, flag in assess_slices(smooth, scores).values())
    assert assess(smooth, scores, True).slices == ()
    leaky = smooth.copy()
    leaky[6, 5:38, 5:38] = True  # one slice grown four times: low overlap with both neighbours
    low = {**scores, 6: 0.55}
    values = slice_features(leaky, low)[6]
    assert values[1] < 0.5 and values[2] == 2.0  # IoU with the neighbours, area ratio (capped)
    quality = assess(leaky, low, True)
    assert 6 in quality.slices and quality.to_dict()["review_slices"] == list(quality.slices)
    assert "check slice" in quality.describe()
    assert assess(smooth[5], {None: 0.9}, False).slices == ()


def test_the_slice_constants_are_the_ones_the_benchmark_fitted():
    from pathlib import Path

    from oncoseg import quality

    fit = json.loads((Path(__file__).parents[1] / "benchmarks/results/slice_quality.json").read_text())["fit"]
    assert list(quality.SLICE_FEATURES) == fit["features"]
    np.testing.assert_allclose(quality.SLICE_MEAN, fit["mean"])
    np.testing.assert_allclose(quality.SLICE_SCALE, fit["scale"])
    np.testing.assert_allclose(quality.SLICE_WEIGHTS, fit["weights"])
    assert (quality.SLICE_BIAS, quality.SLICE_REVIEW_AT) == (fit["bias"], fit["review_at"])
