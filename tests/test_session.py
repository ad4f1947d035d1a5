"""The Session core: checks before model work, objects on slices and in 3D, and the 3D correction loop
(refine a slice, walk again from it up to the next annotated slice). A stand-in model that answers "the truth
inside the box, minus a disc around each exclude click" makes the loop's logic exact; one test runs the real
model on the bundled CT sample."""

from __future__ import annotations

import numpy as np
import pytest

from oncoseg.errors import EmptyResultError, OncoSegError, PromptError
from oncoseg.image import MedicalImage
from oncoseg.models.base import Backend, ImageEmbedding, MaskPrediction
from oncoseg.predictor import Predictor
from oncoseg.prompts import Box, Point, Prompt
from oncoseg.session import Session, box_without, clicks_merge, combine_clicks, monotone, rim_cut


def _truth() -> np.ndarray:
    """A 20-slice ellipsoid-ish object in slices 4-15, and a neighbour the model may leak into on 12-13."""
    zz, yy, xx = np.mgrid[:20, :48, :48]
    body = ((xx - 20) ** 2 + (yy - 24) ** 2) <= (8 - 0.06 * (zz - 10) ** 2) ** 2
    body &= (zz >= 4) & (zz <= 15)
    return body


class OracleBackend(Backend):
    """Answers the truth inside the prompt's box (the whole slice for clicks alone), without a 5-px disc around
    each exclude click. It recognises the slice it encodes by its pixels (``slices``: fingerprint → z)."""

    name = "oracle"

    def __init__(self, truth: np.ndarray, leak: dict[int, np.ndarray] | None = None):
        self.truth, self.leak, self.slices = truth, leak or {}, {}
        self.ignore_exclusions = False

    def encode(self, image):
        z = self.slices[np.asarray(image).tobytes()]
        return ImageEmbedding(
            np.zeros(1, np.float32), image.shape[:2], image.shape[:2], "oracle", cache={"z": z}
        )

    def decode(self, embedding, prompts, mask_input=None):
        z = embedding.cache["z"]
        h, w = embedding.original_size
        out = []
        for prompt in prompts:
            mask = self.truth[z] | self.leak.get(z, False)
            if prompt.box is not None:
                b = prompt.box
                inside = np.zeros((h, w), bool)
                inside[int(b.y0) : int(b.y1) + 1, int(b.x0) : int(b.x1) + 1] = True
                mask = mask & inside
            yy, xx = np.mgrid[:h, :w]
            for p in prompt.points:
                if not p.positive and not self.ignore_exclusions:
                    mask = mask & ((xx - p.x) ** 2 + (yy - p.y) ** 2 > 25)
            out.append(mask)
        return MaskPrediction(np.array(out), np.full(len(prompts), 0.9, np.float32))


def _volume() -> MedicalImage:
    array = np.random.default_rng(0).random((20, 48, 48)).astype(np.float32) + 1.0
    return MedicalImage(array, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()), modality="mri")


def _session(truth, leak=None, **kwargs) -> Session:
    backend = OracleBackend(truth, leak)
    session = Session(_volume(), Predictor(backend), modality="mri", **kwargs)
    backend.slices = {session.predictor.slice_pixels(z).tobytes(): z for z in range(20)}
    return session


def _box(mask2d: np.ndarray, z: int) -> Prompt:
    ys, xs = np.nonzero(mask2d)
    return Prompt(box=Box(xs.min() - 2, ys.min() - 2, xs.max() + 2, ys.max() + 2, z=z))


def test_checks_come_before_any_model_work():
    def no_model():
        raise AssertionError("the model was loaded for a check")

    session = Session(_volume(), no_model)
    with pytest.raises(PromptError, match="outside"):
        session.check(Prompt(box=Box(10, 10, 60, 20, z=3)))
    with pytest.raises(PromptError, match="slice 25"):
        session.check(Prompt(box=Box(10, 10, 20, 20, z=25)))
    flat = Session(MedicalImage.from_array(np.full((32, 32), 7.0, np.float32)), no_model)
    with pytest.raises(EmptyResultError, match="blank"):
        flat.check(Prompt(box=Box(2, 2, 20, 20)))
    with pytest.raises(OncoSegError, match="needs a volume"):
        flat.check(Prompt(box=Box(2, 2, 20, 20)), volume=True)
    assert session.check(Prompt(box=Box(10, 10, 20, 20, z=3))).box.z == 3


def test_slice_and_volume_objects_with_labels_and_measurements():
    truth = _truth()
    session = _session(truth)
    flat = session.segment(_box(truth[10], 10), name="slice")
    assert flat.slice_range == (10, 10) and flat.mask[10].sum() == truth[10].sum()
    whole = session.segment(_box(truth[10], 10), volume=True, name="whole")
    assert whole.slice_range == (4, 15)
    np.testing.assert_array_equal(whole.mask, truth)
    labels = session.labels()
    assert set(np.unique(labels)) == {0, 1, 2} and (labels[10][truth[10]] == 1).all()  # earlier object wins
    assert session.measure(whole).volume_ml == pytest.approx(truth.sum() * 2.0 / 1000)


def test_an_exclude_click_removes_a_leak_and_the_walk_redoes_the_slices_beyond():
    truth = _truth()
    leak = {z: np.zeros((48, 48), bool) for z in (12, 13, 14)}
    for region in leak.values():
        region[20:28, 28:31] = True  # tissue right of the object that the model takes for it
    session = _session(truth, leak)
    obj = session.segment(_box(truth[8], 8), volume=True)
    assert obj.mask[12, 24, 28] and obj.mask[14, 24, 30]  # leaked, a bit more on each slice
    leaked_above = int(obj.mask[13:].sum())
    session.refine(obj, Prompt(points=(Point(29, 24, positive=False, z=12),)))
    assert not obj.mask[12, 24, 29] and obj.mask[12, 24, 20] and 12 in obj.anchors
    assert obj.anchors[12].points == (Point(29, 24, positive=False, z=12),)
    # the walk from slice 12 starts again from the corrected mask: the slices above are redone, smaller
    assert obj.mask[13:].sum() < leaked_above and not obj.mask[13:, 24, 30].any()
    # downwards it walks again too, but stops at the slice the object was prompted on (an anchor)
    np.testing.assert_array_equal(obj.mask[:9], truth[:9])
    assert not (obj.mask[9:12] & ~truth[9:12]).any() and obj.mask[9:12].sum() > 0.9 * truth[9:12].sum()
    assert set(obj.anchors) == {8, 12}


def test_a_box_beyond_a_short_result_extends_it_and_anchors_are_kept():
    truth = _truth()
    session = _session(truth)
    obj = session.segment(_box(truth[10], 10), volume=True)
    obj.mask[13:] = False  # as if the walk had stopped short at slice 12
    for z in (13, 14, 15):
        obj.slice_scores.pop(z, None)
    session.refine(obj, _box(truth[15], 15))  # a box on slice 15: the walk goes back down to the anchor 10
    np.testing.assert_array_equal(obj.mask, truth)
    assert set(obj.anchors) == {10, 15}
    # a correction on slice 12 re-walks only between the anchors 10 and 15
    anchored = obj.mask[[10, 15]].copy()
    session.refine(obj, Prompt(points=(Point(20, 24, z=12),)))
    np.testing.assert_array_equal(obj.mask[[10, 15]], anchored)
    assert 12 in obj.anchors


def test_a_correction_ends_where_it_rejoins_the_result_and_keeps_the_slices_beyond():
    """A correction on a slice walks only as far as it changes the result: where its walk segments a slice as
    the result already has it, the slices beyond keep what they had (here: a hand-made change on slice 5 that
    the old rule, re-walking up to the volume's end, would have wiped out)."""
    truth = _truth()
    session = _session(truth)
    obj = session.segment(_box(truth[13], 13), volume=True)
    np.testing.assert_array_equal(obj.mask, truth)
    obj.mask[5] = np.zeros_like(obj.mask[5])
    obj.mask[5, 20:26, 16:24] = True  # stands for anything the walk would answer differently there
    kept = obj.mask[5].copy()
    obj.mask[10, 24, 20:24] = False  # a small error on slice 10
    session.refine(obj, _box(truth[10], 10))
    np.testing.assert_array_equal(obj.mask[10], truth[10])
    np.testing.assert_array_equal(obj.mask[9], truth[9])  # reached: the walk agrees with the result here
    np.testing.assert_array_equal(obj.mask[5], kept)  # beyond the rejoin point: untouched


def test_clicks_accumulate_per_slice_and_use_the_current_extent():
    current = np.zeros((40, 40), bool)
    current[10:20, 12:22] = True
    first = Prompt(points=(Point(15, 15, z=3),))
    prompt = combine_clicks(first, Prompt(points=(Point(30, 30, z=3),)), current)
    assert prompt.points == (Point(15, 15, z=3), Point(30, 30, z=3))
    assert prompt.box.x0 < 12 and prompt.box.x1 > 30 and prompt.box.y1 > 30 and prompt.box.z == 3
    box = Prompt(box=Box(1, 1, 8, 8, z=3))
    assert combine_clicks(first, box, current) is box  # a new box replaces the clicks


def test_real_model_correction_on_the_ct_sample():
    """LiteMedSAM on the bundled CT: a liver box propagated, then an exclude click on the mask of another slice
    takes that pixel out and keeps the object; the embedding cache is reused."""
    from oncoseg.samples import list_samples, sample_path

    prompt = list_samples()["ct_abdomen"]["prompt"]
    session = Session.open(sample_path("ct_abdomen"))
    liver = session.segment(Prompt(box=Box(*prompt["box"], z=prompt["z"])), volume=True, name="Liver")
    low, high = liver.slice_range
    z = (prompt["z"] + high) // 2 if high > prompt["z"] else low
    ys, xs = np.nonzero(liver.mask[z])
    k = int(np.argmax(xs))  # an edge pixel, where leaks are corrected (deep inside an organ the model may
    before = int(liver.mask.sum())
    session.refine(liver, Prompt(points=(Point(float(xs[k]), float(ys[k]), positive=False, z=z),)))
    assert not liver.mask[z, ys[k], xs[k]] and liver.mask[z].any() and z in liver.anchors
    assert 0.25 * before < liver.mask.sum() < 1.5 * before  # keep the pixel: a click there is ambiguous)
    assert session.predictor.is_cached(z)


def test_a_cancelled_correction_changes_nothing():
    truth = _truth()
    session = _session(truth)
    obj = session.segment(_box(truth[10], 10), volume=True)
    before, scores, anchors = obj.mask.copy(), dict(obj.slice_scores), dict(obj.anchors)

    class Cancelled(Exception):
        pass

    def cancel_on_the_second_slice(z, seen=[]):  # noqa: B006 - counts calls within this test
        seen.append(z)
        if len(seen) > 1:
            raise Cancelled

    obj.mask[12:15, 24, 14:20] = False  # something for the correction to change on the way
    before = obj.mask.copy()
    with pytest.raises(Cancelled):
        session.refine(obj, Prompt(points=(Point(20, 24, z=13),)), on_slice=cancel_on_the_second_slice)
    np.testing.assert_array_equal(obj.mask, before)
    assert obj.slice_scores == scores and obj.anchors == anchors


def test_objects_added_from_masks_and_labels_never_reused():
    truth = _truth()
    session = _session(truth)
    first = session.segment(_box(truth[10], 10))
    painted = np.zeros(truth.shape, bool)
    painted[2, 5:9, 5:9] = True
    second = session.add(painted, "painted")
    third = session.segment(_box(truth[12], 12))
    assert [o.label for o in session.objects] == [1, 2, 3] and second.slice_range == (2, 2)
    session.remove(second)  # by identity, even though objects hold arrays
    assert session.objects == [first, third]
    assert session.add(painted).label == 4  # not 3 again
    assert set(np.unique(session.labels())) == {0, 1, 3, 4}
    with pytest.raises(OncoSegError, match="does not match"):
        session.add(np.zeros((3, 3), bool))


def test_box_without_moves_the_nearest_side_past_the_click():
    box = Box(10, 10, 50, 30, z=2)
    assert box_without(box, Point(46, 20, positive=False)) == Box(10, 10, 44, 30, z=2)
    assert box_without(box, Point(30, 12, positive=False)) == Box(10, 14, 50, 30, z=2)
    assert box_without(box, Point(60, 20, positive=False)) is None  # outside: nothing to leave out
    assert box_without(Box(10, 10, 13, 13), Point(11, 11, positive=False)) is None  # too little would remain


def test_an_exclude_click_inside_the_extent_is_honoured_by_a_smaller_box():
    """A model that ignores exclude clicks (as a box-trained SAM mostly does) still loses the excluded part:
    the correction tries the extent with its side moved past the click."""
    truth = _truth()
    leak = {z: np.zeros((48, 48), bool) for z in range(20)}
    for region in leak.values():
        region[20:28, 28:34] = True
    session = _session(truth, leak)
    session.predictor.backend.ignore_exclusions = True
    obj = session.segment(_box(truth[10] | leak[10], 10))
    assert obj.mask[10, 24, 32]
    session.refine(obj, Prompt(points=(Point(32, 24, positive=False, z=10),)))
    assert not obj.mask[10, 24, 32] and obj.mask[10, 24, 20]


def test_a_mask_added_from_a_file_keeps_its_slices_beyond_a_walk_that_stops():
    truth = _truth()
    session = _session(truth)
    painted = truth.copy()
    painted[16:19, 22:27, 18:23] = True  # the user's own slices beyond where the model would stop
    obj = session.add(painted, "painted", label=7)
    assert obj.label == 7 and obj.volume and obj.from_mask
    with pytest.raises(PromptError, match="label 7"):
        session.add(truth, label=7)
    session.refine(obj, _box(truth[12], 12))
    np.testing.assert_array_equal(obj.mask[16:19], painted[16:19])  # a model result would be cleared here
    assert not session.add(truth[None, 10].repeat(20, axis=0) & (np.arange(20) == 3)[:, None, None]).volume


def test_clicks_alone_only_add_or_only_take_away():
    """A second include click never loses the first click's region (the web page's report: a second include
    click made the mask smaller); an exclude click never adds; a box or mixed clicks replace the slice."""
    current = np.zeros((30, 30), bool)
    current[5:15, 5:15] = True
    new = np.zeros((30, 30), bool)
    new[10:25, 10:25] = True  # moved: half of the current region is gone from it
    include = Prompt(points=(Point(20, 20),))
    assert (monotone(new, current, include) == (new | current)).all()
    exclude = Prompt(points=(Point(6, 6, positive=False),))
    assert (monotone(new, current, exclude) == (new & current)).all()
    mixed = Prompt(points=(Point(20, 20), Point(6, 6, positive=False)))
    assert monotone(new, current, mixed) is new
    assert monotone(new, current, Prompt(box=Box(0, 0, 29, 29), points=(Point(20, 20),))) is new
    assert monotone(new, np.zeros_like(current), include) is new


def test_an_include_click_on_another_slice_keeps_what_was_there():
    truth = _truth()
    session = _session(truth)
    obj = session.segment(_box(truth[10], 10), volume=False)
    before = obj.mask[10].copy()
    ys, xs = np.nonzero(truth[10])
    session.refine(obj, Prompt(points=(Point(float(xs[0]), float(ys[0]), z=10),)))
    assert (obj.mask[10] >= before).all()


def test_a_click_offers_the_other_sizes_and_choose_swaps_them():
    """LiteMedSAM on the bundled polyp: one click's answer comes with masks of other sizes that also hold the
    click; 'smaller' and 'larger' step through them, and back."""
    from PIL import Image

    from oncoseg.samples import sample_path

    truth = np.asarray(Image.open(sample_path("polyp_mask.png")).convert("L")) > 127
    ys, xs = np.nonzero(truth)
    session = Session.open(sample_path("polyp"))
    obj = session.segment(Prompt(points=(Point(float(xs.mean()), float(ys.mean())),)))
    sizes = [int(m.sum()) for m, _ in obj.alternatives[None]]
    assert sizes and sizes == sorted(sizes) and all(s != obj.mask.sum() for s in sizes)
    first = obj.mask.copy()
    if min(sizes) < first.sum():
        session.choose(obj, "smaller")
        assert obj.mask.sum() < first.sum()
        session.choose(obj, "larger")
        assert (obj.mask == first).all()  # the mask it replaced was kept as an alternative
    with pytest.raises(OncoSegError, match="no larger answer"):
        while True:
            session.choose(obj, "larger")
    with pytest.raises(PromptError):
        session.choose(obj, "bigger")


def test_choose_on_a_volume_walks_again_from_the_slice():
    truth = _truth()
    session = _session(truth)
    obj = session.segment(_box(truth[10], 10), volume=True)
    small = truth[10] & (np.arange(48)[None, :] < 20)
    obj.alternatives[10] = ((small, 0.8),)
    session.choose(obj, "smaller", z=10)
    assert (obj.mask[10] == small).all() and obj.mask[9].any()  # the walk went on from the new mask


def test_segment_pick_and_the_json_list_the_other_sizes(tmp_path):
    """The API's pick= takes the next smaller size of a click's answer; the JSON lists the sizes."""
    from PIL import Image

    from oncoseg.api import segment
    from oncoseg.samples import sample_path

    truth = np.asarray(Image.open(sample_path("polyp_mask.png")).convert("L")) > 127
    ys, xs = np.nonzero(truth)
    click = [(float(xs.mean()), float(ys.mean()))]
    best = segment(sample_path("polyp"), points=click)
    listed = best.to_dict()["objects"][0]["alternatives"]
    assert listed and [a["pixels"] for a in listed] == sorted(a["pixels"] for a in listed)
    smaller = segment(sample_path("polyp"), points=click, pick="smaller")
    assert (smaller.labels > 0).sum() < (best.labels > 0).sum()
    with pytest.raises(PromptError, match="no other size"):
        segment(sample_path("polyp"), box=(148, 160, 424, 416), pick="larger")


def test_an_include_click_never_takes_slices_away_an_exclude_click_may():
    """A correction's walk may stop early (here: told to walk one slice each way). Beyond it, an include click
    keeps the slices as they were (it only adds), and so does an exclude click whose walk did not see the object
    end; an exclude click whose walk sees the object fade out ends the object there (it takes away)."""
    truth = _truth()
    session = _session(truth)
    obj = session.segment(_box(truth[10], 10), volume=True)
    obj.mask[13, :, :20] = False  # a slice the walk will not agree with: it does not end by rejoining there
    before = obj.mask.copy()
    session.propagation.max_slices = 1
    session.refine(obj, Prompt(points=(Point(20, 24, z=12),)))
    np.testing.assert_array_equal(obj.mask[:11], before[:11])
    np.testing.assert_array_equal(obj.mask[13], truth[13])  # walked, one slice
    np.testing.assert_array_equal(obj.mask[14:], before[14:])  # kept beyond
    session.refine(obj, Prompt(points=(Point(22, 24, positive=False, z=12),)))
    np.testing.assert_array_equal(obj.mask[14:], before[14:])  # told to stop: not a sign the object ended
    session.propagation.max_slices = None
    obj.mask[16:18, 20:28, 15:25] = True  # beyond the object's last slice (15): a leak the walk drew
    session.refine(obj, Prompt(points=(Point(25, 24, positive=False, z=15),)))
    assert obj.mask[15].any() and not obj.mask[16:].any()  # the walk from 15 saw the object end: cleared


def test_a_click_s_walk_only_adds_or_only_takes_away_on_the_slices_it_walks():
    """An include click's walk never takes from the slices it re-walks (it had cut a good BraTS whole tumour
    from Dice 0.73 to 0.59), an exclude click's never adds to them; a box or mixed clicks replace them."""
    truth = _truth()
    session = _session(truth)
    obj = session.segment(_box(truth[10], 10), volume=True)
    extra = np.zeros_like(truth)
    extra[5:10, 2:9, 2:9] = True  # the result holds more than the walk will find on slices 5-9 ...
    obj.mask |= extra
    obj.mask[11:15, :, 22:] = False  # ... and less on slices 11-14 (the walk does not rejoin it there)
    before = obj.mask.copy()
    ys, xs = np.nonzero(truth[12] & ~before[12])
    session.refine(obj, Prompt(points=(Point(float(xs[0]), float(ys[0]), z=12),)))
    assert (obj.mask >= before).all() and (obj.mask <= truth | before).all()
    assert all(obj.mask[z].sum() > before[z].sum() for z in (11, 12, 13))  # the walk carried the addition
    assert obj.mask[extra].all()  # kept where the walk saw nothing
    kept = obj.mask.copy()
    session.refine(obj, Prompt(points=(Point(3.0, 3.0, positive=False, z=9),)))
    # the walk cut what it did not find
    assert (obj.mask <= kept).all() and not obj.mask[5:9][extra[5:9]].any()
    assert clicks_merge(_box(truth[10], 10)) is None  # a box's walk replaces (the tests above)
    assert clicks_merge(Prompt(points=(Point(3.0, 3.0, z=9), Point(5.0, 5.0, positive=False, z=9)))) is None


def test_a_click_beyond_the_object_s_end_takes_the_smaller_answer():
    """On a slice the object does not reach, clicks alone may answer with the structure around the object; the
    nearest held slice's extent as the box keeps the answer to the object's size."""
    truth = _truth()
    around = np.zeros_like(truth)
    around[14, 2:46, 34:46] = True  # on slice 14 a larger structure beside the object
    session = _session(truth, leak={14: around[14]})
    obj = session.segment(_box(truth[10], 10), volume=True)
    obj.mask[14:] = False
    ys, xs = np.nonzero(truth[14])
    session.refine(obj, Prompt(points=(Point(float(xs[len(xs) // 2]), float(ys[len(ys) // 2]), z=14),)))
    assert obj.mask[14].sum() >= truth[14].sum() and not (obj.mask[14] & around[14] & ~truth[14]).any()


def test_an_exclude_click_on_the_rim_trims_the_edge_instead_of_shrinking_the_object():
    """A model that answers an exclude click on the mask's rim with a fraction of the object (as LiteMedSAM did on
    a CT kidney) gets the edge trimmed around the click instead; a click deep inside keeps the model's answer."""
    current = np.zeros((40, 40), bool)
    current[10:30, 10:30] = True
    trimmed = rim_cut(current, [Point(10.0, 20.0, positive=False)])
    assert (
        trimmed is not None
        and not trimmed[20, 10]
        and trimmed[20, 14]
        and trimmed.sum() > 0.95 * current.sum()
    )
    assert rim_cut(current, [Point(20.0, 20.0, positive=False)]) is None  # deep inside: not a rim
    assert rim_cut(current[8:16, 8:16], [Point(3.0, 3.0, positive=False)]) is None  # too thin to have a rim

    class Shrinking(OracleBackend):  # once told, answers anything on slice ``shrink_at`` with a sliver
        shrink_at = None

        def decode(self, embedding, prompts, mask_input=None):
            out = super().decode(embedding, prompts, mask_input)
            if embedding.cache["z"] == self.shrink_at:
                for i in range(len(prompts)):
                    ys, xs = np.nonzero(out.masks[i])
                    out.masks[i][ys[5:], xs[5:]] = False
            return out

    truth = _truth()
    backend = Shrinking(truth)
    session = Session(_volume(), Predictor(backend), modality="mri")
    backend.slices = {session.predictor.slice_pixels(z).tobytes(): z for z in range(20)}
    obj = session.segment(_box(truth[10], 10), volume=True)
    before = obj.mask.copy()
    ys, xs = np.nonzero(truth[10])
    edge = Point(float(xs.min()), float(ys[np.argmin(xs)]), positive=False, z=10)
    backend.shrink_at = 10
    session.refine(obj, Prompt(points=(edge,)))
    assert 0.9 * before[10].sum() < obj.mask[10].sum() < before[10].sum()
    assert obj.mask.sum() > 0.9 * before.sum()  # the object is still there on the other slices


def test_a_walk_from_a_click_alone_is_flagged_until_a_box_guides_it():
    """A 3D walk from clicks alone carries the doubt "walked from a click alone" (the click left the size to the
    model), also after more clicks; a box on any slice lifts it. One slice from a click is not flagged for it, and
    a box-started walk never is."""
    from oncoseg.session import CLICK_ONLY

    truth = _truth()
    session = _session(truth)
    ys, xs = np.nonzero(truth[10])
    click = Prompt(points=(Point(float(xs.mean()), float(ys.mean()), z=10),))
    walked = session.segment(click, volume=True)
    assert walked.clicks_only and walked.quality.review and walked.quality.reasons[0] == CLICK_ONLY
    ys8, xs8 = np.nonzero(truth[8])
    session.refine(walked, Prompt(points=(Point(float(xs8.mean()), float(ys8.mean()), z=8),)))
    assert CLICK_ONLY in walked.quality.reasons  # clicks again: the size is still the model's guess
    session.refine(walked, _box(truth[12], 12))
    assert not walked.clicks_only and CLICK_ONLY not in walked.quality.reasons

    one_slice = session.segment(click, volume=False)
    assert one_slice.clicks_only and CLICK_ONLY not in one_slice.quality.reasons
    boxed = session.segment(_box(truth[10], 10), volume=True)
    assert not boxed.clicks_only and CLICK_ONLY not in boxed.quality.reasons
