"""3D propagation on real volumes with the real model."""

import numpy as np
import pytest

from oncoseg.errors import OncoSegError
from oncoseg.io import load_image
from oncoseg.predictor import Predictor
from oncoseg.prompts import Prompt, box_from_mask
from oncoseg.samples import sample_path
from oncoseg.volume import PropagationSettings, keep_touching, propagate


def dice(a, b):
    return 2 * (a & b).sum() / max(1, a.sum() + b.sum())


@pytest.fixture(scope="module")
def predictor():
    return Predictor(cache_slices=128)


@pytest.fixture(scope="module")
def ct_case():
    return load_image(sample_path("ct_abdomen"), modality="ct"), load_image(
        sample_path("ct_abdomen_liver.nii.gz")
    )


def test_liver_propagates_from_one_box(predictor, ct_case):
    image, label = ct_case
    truth = label.array > 0
    z0 = int(np.argmax(truth.sum(axis=(1, 2))))
    predictor.set_image(image)
    seen = []
    result = propagate(predictor, Prompt(box=box_from_mask(truth[z0], z=z0)), on_slice=seen.append)
    assert result.mask.shape == image.shape
    assert result.start_slice == z0 and seen[0] == z0
    lo, hi = result.slice_range
    assert lo < z0 < hi or hi == image.num_slices - 1  # walked in both directions
    assert all(result.mask[z].any() for z in range(lo, hi + 1))  # contiguous
    assert not result.mask[:lo].any() and not result.mask[hi + 1 :].any()
    assert dice(result.mask, truth) > 0.75
    assert dice(result.mask[z0], truth[z0]) > 0.9


def test_stops_where_the_object_ends(predictor):
    image = load_image(sample_path("hippocampus"), modality="mri")
    truth = load_image(sample_path("hippocampus_label.nii.gz")).array > 0
    z0 = int(np.argmax(truth.sum(axis=(1, 2))))
    predictor.set_image(image)
    result = propagate(predictor, Prompt(box=box_from_mask(truth[z0], z=z0)))
    present = np.nonzero(truth.any(axis=(1, 2)))[0]
    lo, hi = result.slice_range
    # the walk ends within a few slices of the structure, never running on to the edges of the volume
    assert lo >= present.min() - 3 and hi <= present.max() + 3
    assert dice(result.mask, truth) > 0.4  # zero-shot LiteMedSAM is weak on this small structure (~0.48)


def test_max_slices_limits_the_walk(predictor, ct_case):
    image, label = ct_case
    truth = label.array > 0
    predictor.set_image(image)
    result = propagate(
        predictor, Prompt(box=box_from_mask(truth[15], z=15)), PropagationSettings(max_slices=2)
    )
    lo, hi = result.slice_range
    assert lo >= 13 and hi <= 17


def test_needs_a_volume(predictor):
    predictor.set_image(np.random.default_rng(0).random((64, 64)).astype(np.float32))
    with pytest.raises(OncoSegError, match="volume"):
        propagate(predictor, Prompt(box=box_from_mask(np.ones((64, 64), bool))))


def test_keep_touching_drops_far_pieces():
    mask = np.zeros((20, 20), bool)
    mask[2:6, 2:6] = True
    mask[14:18, 14:18] = True
    reference = np.zeros((20, 20), bool)
    reference[5:8, 5:8] = True
    kept = keep_touching(mask, reference)
    assert kept[3, 3] and not kept[15, 15]
    assert not keep_touching(mask, np.zeros_like(mask)).any()


def test_brats_two_channel_mri_propagates(predictor, shared_data):
    from oncoseg.data import open_dataset

    image, masks = open_dataset("brats2015", root=shared_data).cases()[0].load()
    assert image.channels == 2  # [FLAIR, T1c] → normalised to [T1c, T1c, FLAIR] for the model
    truth = masks["WT"]
    z0 = int(np.argmax(truth.sum(axis=(1, 2))))
    predictor.set_image(image, modality="mri")
    result = propagate(
        predictor, Prompt(box=box_from_mask(truth[z0], z=z0)), PropagationSettings(max_slices=3)
    )
    lo, hi = result.slice_range
    assert result.mask.shape == image.shape and hi > lo
    assert dice(result.mask[lo : hi + 1], truth[lo : hi + 1]) > 0.45  # zero-shot whole tumour (~0.6)
