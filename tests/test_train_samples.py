"""Training samples for fine-tuning (`oncoseg.train.samples`) on the real shared datasets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from oncoseg.data.adapters import open_dataset
from oncoseg.prompts import box_from_mask
from oncoseg.train.samples import (
    MixedSamples,
    SampleSettings,
    TrainingSamples,
    _frame_mask,
    collate_samples,
    validation_samples,
)

SIZE = 256
JITTER = SampleSettings().box_jitter


@pytest.fixture(scope="module")
def kvasir_cases(shared_data):
    return open_dataset("kvasir-seg", shared_data).cases("train")[:5]


@pytest.fixture(scope="module")
def kvasir(kvasir_cases):
    return TrainingSamples(kvasir_cases, SampleSettings(seed=3))


@pytest.fixture(scope="module")
def hippocampus_cases(shared_data):
    return open_dataset("msd-hippocampus", shared_data).cases("train")[:3]


@pytest.fixture(scope="module")
def hippocampus(hippocampus_cases):
    return TrainingSamples(hippocampus_cases, SampleSettings(seed=1), samples_per_epoch=240)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return xs.min(), ys.min(), xs.max(), ys.max()


def _check_frame(sample: dict) -> tuple[int, int]:
    """Shapes, dtypes, value range, zero padding, box inside the valid region; returns the valid (h, w)."""
    assert sample["image"].shape == (3, SIZE, SIZE) and sample["image"].dtype == torch.float32
    assert sample["mask"].shape == (1, SIZE, SIZE) and sample["mask"].dtype == torch.float32
    assert sample["box"].shape == (4,) and sample["box"].dtype == torch.float32
    assert sample["size"].dtype == torch.int64 and sample["has_object"].dtype == torch.bool
    h, w = sample["size"].tolist()
    assert max(h, w) == SIZE
    image, mask = sample["image"].numpy(), sample["mask"].numpy()
    assert image.min() >= 0.0 and image.max() <= 1.0 and image.max() > 0.5
    assert set(np.unique(mask).tolist()) <= {0.0, 1.0}
    assert not mask[:, h:, :].any() and not mask[:, :, w:].any()
    assert not image[:, h:, :].any() and not image[:, :, w:].any()
    x0, y0, x1, y1 = sample["box"].tolist()
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    assert bool(sample["has_object"]) == bool(mask.any())
    return h, w


def test_kvasir_samples_frame_box_and_aspect(kvasir, kvasir_cases):
    assert len(kvasir) == 5
    for index, case in enumerate(kvasir_cases):
        sample = kvasir[index]
        h, w = _check_frame(sample)
        assert sample["case_id"] == case.case_id and sample["modality"] == "endoscopy"
        assert sample["target"] == "polyp" and bool(sample["has_object"])
        image, masks = case.load()
        height, width = image.shape
        assert abs(h / w - height / width) < 0.01  # aspect kept
        scale = SIZE / max(height, width)
        tight = box_from_mask(masks["polyp"]).as_array() * scale
        box = sample["box"].numpy()
        sides = np.array([tight[2] - tight[0], tight[3] - tight[1]] * 2)
        assert np.all(np.abs(box - tight) <= JITTER * (sides + scale) + 1e-3)  # sides moved by ≤ 10 %
        assert not np.allclose(box, tight)  # jittered
        # the mask's own box lies within the prompt enlarged by the jitter (plus a pixel of resizing)
        mx0, my0, mx1, my1 = _bbox(sample["mask"].numpy()[0])
        bw, bh = box[2] - box[0], box[3] - box[1]
        dx, dy = JITTER / (1 - 2 * JITTER) * bw + 1.5, JITTER / (1 - 2 * JITTER) * bh + 1.5
        assert box[0] - dx <= mx0 and mx1 <= box[2] + dx and box[1] - dy <= my0 and my1 <= box[3] + dy


def test_draws_are_deterministic_per_epoch(kvasir_cases):
    samples = TrainingSamples(kvasir_cases[:2], SampleSettings(seed=3))
    first, again = samples[1], TrainingSamples(kvasir_cases[:2], SampleSettings(seed=3))[1]
    for key in ("image", "mask", "box", "size", "has_object"):
        assert torch.equal(first[key], again[key])
    samples.set_epoch(1)
    later = samples[1]
    assert torch.equal(first["image"], later["image"]) and torch.equal(first["mask"], later["mask"])
    assert not torch.equal(first["box"], later["box"])  # another jitter
    samples.set_epoch(0)
    assert torch.equal(samples[1]["box"], first["box"])
    with pytest.raises(IndexError):
        samples[2]


def test_volume_draws_foreground_fraction_and_empty_slices(hippocampus):
    draws = [hippocampus[i] for i in range(200)]
    expected = []
    for index, sample in enumerate(draws):
        loaded = hippocampus.load(index % 3)
        share = len(loaded.present[sample["target"]]) / loaded.num_slices
        expected.append(0.8 + 0.2 * share)  # 80 % foreground slices, 20 % any slice
    has_object = np.array([bool(s["has_object"]) for s in draws])
    assert 0.7 <= has_object.mean() <= 0.97
    assert abs(has_object.mean() - np.mean(expected)) < 0.07
    assert (~has_object).sum() >= 5
    for sample in draws:
        _check_frame(sample)
        assert sample["modality"] == "mri" and 0 <= int(sample["slice"]) < 40
        if not sample["has_object"]:
            assert not sample["mask"].any()


def test_volume_targets_cycle_by_visit(hippocampus, hippocampus_cases):
    targets = hippocampus.load(0).targets
    assert set(targets) == {"Anterior", "Posterior", "whole"}
    n = len(hippocampus_cases)
    for position in range(n):
        cycle = [hippocampus[position + n * visit]["target"] for visit in range(6)]
        assert cycle == targets * 2
        assert {hippocampus[position + n * v]["case_id"] for v in range(3)} == {
            hippocampus_cases[position].case_id
        }


def test_default_length_counts_foreground_slices(hippocampus_cases):
    samples = TrainingSamples(hippocampus_cases)
    expected = 0
    for case in hippocampus_cases:
        _, masks = case.load()
        expected += int(np.logical_or.reduce([m.any(axis=(1, 2)) for m in masks.values()]).sum())
    assert len(samples) == expected


def test_brats_targets_cycle_and_three_channels(shared_data):
    case = open_dataset("brats2015", shared_data).cases("train")[0]
    samples = TrainingSamples([case], samples_per_epoch=6)
    draws = [samples[i] for i in range(6)]
    assert [s["target"] for s in draws] == ["WT", "TC", "ET"] * 2
    for sample in draws:
        _check_frame(sample)
        image = sample["image"]
        assert image.shape[0] == 3
    assert any(not torch.equal(s["image"][0], s["image"][2]) for s in draws)  # FLAIR and T1c both there


def test_picture_without_target_gets_empty_mask_and_random_box(shared_data):
    busi = open_dataset("busi", shared_data)
    normal = [c for c in busi.cases("train") if c.category == "normal"][:1]
    samples = TrainingSamples(normal, samples_per_epoch=1)
    sample = samples[0]
    _check_frame(sample)
    assert not sample["has_object"] and not sample["mask"].any() and sample["modality"] == "ultrasound"


def test_tiny_target_keeps_a_pixel():
    mask = np.zeros((1024, 1024), bool)
    mask[500, 700] = True
    framed = _frame_mask(mask, SIZE).numpy()[0]
    assert framed.sum() >= 1
    ys, xs = np.nonzero(framed)
    assert abs(ys.mean() - 500 / 4) <= 1 and abs(xs.mean() - 700 / 4) <= 1


def test_collate_with_dataloader(kvasir):
    batch = next(iter(DataLoader(kvasir, batch_size=4, collate_fn=collate_samples)))
    assert batch["image"].shape == (4, 3, SIZE, SIZE) and batch["mask"].shape == (4, 1, SIZE, SIZE)
    assert batch["box"].shape == (4, 4) and batch["size"].shape == (4, 2)
    assert batch["has_object"].dtype == torch.bool and batch["has_object"].shape == (4,)
    for key in ("modality", "target", "case_id", "dataset"):
        assert isinstance(batch[key], list) and len(batch[key]) == 4 and isinstance(batch[key][0], str)


def test_validation_samples_fixed_and_unjittered(kvasir_cases, hippocampus_cases):
    cases = kvasir_cases[:2] + hippocampus_cases[:1]
    first, second = validation_samples(cases), validation_samples(cases)
    assert len(first) == 2 + 3
    for a, b in zip(first, second, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in ("image", "mask", "box", "slice"))
    for sample in first[:2]:
        case = next(c for c in kvasir_cases if c.case_id == sample["case_id"])
        image, masks = case.load()
        tight = box_from_mask(masks["polyp"]).as_array() * (SIZE / max(image.shape))
        assert np.allclose(sample["box"].numpy(), tight, atol=1e-4)
        assert int(sample["slice"]) == -1
    _, masks = hippocampus_cases[0].load()
    for sample in first[2:]:
        mask = masks[sample["target"]]
        z = int(np.argmax(mask.sum(axis=(1, 2))))
        assert int(sample["slice"]) == z
        tight = box_from_mask(mask[z]).as_array() * (SIZE / max(mask.shape[1:]))
        assert np.allclose(sample["box"].numpy(), tight, atol=1e-4)
        _check_frame(sample)


def test_short_epochs_walk_through_every_case(kvasir_cases):
    """An epoch shorter than the case list continues where the previous epoch stopped."""
    samples = TrainingSamples(kvasir_cases, SampleSettings(seed=3), samples_per_epoch=2)
    seen = []
    for epoch in range(3):
        samples.set_epoch(epoch)
        seen += [samples[i]["case_id"] for i in range(len(samples))]
    assert seen[:5] == [case.case_id for case in kvasir_cases] and seen[5] == kvasir_cases[0].case_id


def test_mixed_samples_keep_their_shares(kvasir_cases, hippocampus_cases):
    main = TrainingSamples(hippocampus_cases, SampleSettings(seed=1), samples_per_epoch=60)
    replay = TrainingSamples(kvasir_cases, SampleSettings(seed=1))
    mixed = MixedSamples([main, replay], [0.8, 0.2], samples_per_epoch=50)
    sources = [mixed.source_of(n) for n in range(200)]
    assert sum(1 for s, _ in sources if s == 1) == 40  # exactly the share
    assert max(n for s, n in sources if s == 1) == 39 and max(n for s, n in sources if s == 0) == 159
    # evenly spread: every window of 10 draws holds 2 replayed ones
    assert all(sum(1 for s, _ in sources[i : i + 10] if s == 1) == 2 for i in range(0, 200, 10))
    mixed.set_epoch(1)
    source, number = mixed.source_of(50 + 7)
    sample = mixed[7]
    expected_case = (hippocampus_cases if source == 0 else kvasir_cases)[number % (3 if source == 0 else 5)]
    assert sample["case_id"] == expected_case.case_id
    assert torch.equal(sample["box"], mixed[7]["box"])  # deterministic
    with pytest.raises(Exception, match="sum to 1"):
        MixedSamples([main, replay], [0.9, 0.2])
