"""The mask-prompt decoder (`oncoseg.models.mask_prompt`, trained by `oncoseg.train.mask_prompt`): the shipped
adapter loads and changes only mask-prompt decodes, a walk with it follows the bundled hippocampus sample, and the
training entry point trains, checkpoints, resumes and exports a file the backend loads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oncoseg.errors import ModelError
from oncoseg.evaluate.metrics import dice
from oncoseg.io import load_image
from oncoseg.models import mask_prompt
from oncoseg.models.litemedsam import LiteMedSAMBackend
from oncoseg.predictor import Predictor
from oncoseg.prompts import Box, Prompt, box_from_mask
from oncoseg.samples import list_samples, sample_path
from oncoseg.session import Session
from oncoseg.train import mask_prompt as training
from oncoseg.volume import BOX_ONLY, PropagationSettings, follows_masks, propagate


@pytest.fixture(scope="module")
def backend():
    torch.set_num_threads(1)
    return LiteMedSAMBackend()


@pytest.fixture(scope="module")
def hippocampus():
    sample = list_samples()["hippocampus"]
    image = load_image(sample_path("hippocampus"), modality=sample["modality"])
    truth = load_image(sample_path(sample["mask"])).array > 0
    box = Box(*map(float, sample["prompt"]["box"]), z=int(sample["prompt"]["z"]))
    return image, truth, box, sample["modality"]


def test_shipped_adapter_is_small_and_changes_the_decoder(backend):
    assert mask_prompt.available()
    assert mask_prompt.WEIGHTS.stat().st_size <= 2 << 20
    parts = mask_prompt.load(backend.model)
    base = backend.model.mask_decoder.state_dict()
    tuned = parts.mask_decoder.state_dict()
    changed = [k for k in base if not torch.equal(base[k], tuned[k])]
    assert any(k.startswith("transformer.") for k in changed) and any(
        "iou_prediction_head" in k for k in changed
    )
    assert all(torch.equal(base[k], tuned[k]) for k in base if k.startswith("output_upscaling"))


def test_damaged_adapter_is_one_clear_error(backend, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(mask_prompt.WEIGHTS.read_bytes()[:5000])
    with pytest.raises(ModelError, match="cannot read mask-prompt decoder weights bad.pt"):
        mask_prompt.load(backend.model, bad)


def test_walk_with_the_trained_decoder_follows_the_sample(backend, hippocampus):
    image, truth, box, modality = hippocampus
    predictor = Predictor(backend)
    predictor.set_image(image, modality)
    scores = {}
    for source in (None, "auto"):  # the base decoder (zero-shot mask prompt), then the shipped adapter
        backend.mask_prompt = source
        result = propagate(predictor, Prompt(box=box), PropagationSettings(mask_prompt=True))
        scores[source] = float(dice(result.mask, truth))
    backend.mask_prompt = "auto"
    assert scores["auto"] >= 0.6, scores
    assert scores["auto"] > scores[None] + 0.05, scores


def test_default_walk_follows_large_objects_and_small_ones_box_only(backend, hippocampus):
    """By default the walk gives the trained decoder the neighbour's mask when the start mask covers at least
    5 % of the frame (the sample's hippocampus); a smaller object walks exactly as the box alone does."""
    image, truth, box, modality = hippocampus
    predictor = Predictor(backend)
    predictor.set_image(image, modality)
    settings = PropagationSettings()
    assert settings.mask_prompt and settings.mask_prompt_min_area == 0.05
    start = predictor.predict(Prompt(box=box), z=box.z).masks[0]
    assert follows_masks(predictor, start, settings)
    default = propagate(predictor, Prompt(box=box))
    box_only = propagate(predictor, Prompt(box=box), PropagationSettings(mask_prompt=False))
    assert dice(default.mask, truth) > dice(box_only.mask, truth) + 0.05
    # the box-only walk of an object the default walk follows is flagged (the volume estimate misreads it)
    assert default.doubts == () and box_only.doubts == (BOX_ONLY,)
    # a small part of the hippocampus (its 3x3 px core on the prompted slice): box-only
    core = np.zeros_like(start)
    y, x = (int(v) for v in np.argwhere(start).mean(axis=0))
    core[y - 1 : y + 2, x - 1 : x + 2] = True
    small = box_from_mask(core, z=box.z)
    small_start = predictor.predict(Prompt(box=small), z=box.z).masks[0]
    assert small_start.any() and not follows_masks(predictor, small_start, settings)
    walked = propagate(predictor, Prompt(box=small))
    assert np.array_equal(
        walked.mask, propagate(predictor, Prompt(box=small), PropagationSettings(mask_prompt=False)).mask
    )
    assert walked.doubts == ()  # small objects walk box-only by design, as the estimate was fitted


def test_training_runs_checkpoints_resumes_and_exports(backend, hippocampus, tmp_path):
    image, truth, _, modality = hippocampus
    cache = tmp_path / "cache"
    cache.mkdir()
    count = training.cache_volume(Predictor(backend), image, truth, modality, cache / "sample.pt")
    assert count == int(truth.any(axis=(1, 2)).sum()) + 2 * training.EDGE
    run = tmp_path / "run"
    training.train(cache, run, steps=2, batch=2, save_every=1, snapshot_every=100)
    first = torch.load(run / "last.pt", weights_only=False)
    assert first["step"] == 2 and len(first["curve"]) == 2
    training.train(cache, run, steps=3, batch=2, save_every=1, snapshot_every=100)
    resumed = torch.load(run / "last.pt", weights_only=False)
    assert resumed["step"] == 3 and [row["step"] for row in resumed["curve"]] == [1, 2, 3]
    out = training.export(run, tmp_path / "adapter.pt")
    parts = mask_prompt.load(backend.model, out)
    lora_layer = "mask_decoder.transformer.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(parts.state_dict()[lora_layer], backend.model.state_dict()[lora_layer])
    assert np.isfinite(float(first["curve"][-1]["loss"]))


def test_zoomed_out_training_volumes_keep_the_object_and_shrink_its_share(hippocampus):
    """`--zoom-out`: the slice widened with mirrored surroundings, the object where it was and nowhere else."""
    image, truth, _, _ = hippocampus
    wide, wide_truth = training.zoomed_out(image, truth, 2.0)
    z, h, w = truth.shape
    assert wide.array.shape[0] == z and wide.array.shape[1] >= 2 * h - 1 and wide.array.shape[2] >= 2 * w - 1
    assert wide_truth.sum() == truth.sum()
    top, left = (wide.array.shape[1] - h) // 2, (wide.array.shape[2] - w) // 2
    np.testing.assert_array_equal(wide.array[:, top : top + h, left : left + w], image.array)
    np.testing.assert_array_equal(wide_truth[:, top : top + h, left : left + w], truth)
    np.testing.assert_array_equal(wide.array[:, top - 1, left : left + w], image.array[:, 0])  # mirrored
    share = truth.sum(axis=(1, 2)).max() / max(h, w) ** 2
    assert wide_truth.sum(axis=(1, 2)).max() / max(wide.array.shape[1:]) ** 2 < share / 3


def test_no_training_on_the_test_split(tmp_path):
    with pytest.raises(Exception, match="never trains or chooses on the test split"):
        training.cache_cases("test", 1, tmp_path)


def test_teacher_encoder_walks_box_only(hippocampus):
    """The shipped adapter was trained on the student encoder's embeddings: with LiteMedSAM's own (teacher)
    encoder, "auto" keeps the base decoder and the default walk is the box-only walk."""
    image, _, box, modality = hippocampus
    teacher = LiteMedSAMBackend(encoder="teacher")
    predictor = Predictor(teacher)
    predictor.set_image(image, modality)
    start = predictor.predict(Prompt(box=box), z=box.z).masks[0]
    assert not follows_masks(predictor, start, PropagationSettings())
    assert teacher.mask_prompt_decoder()[0] is teacher.model.prompt_encoder
    # and says so: its volume carries the review reason into the session's quality (the README's teacher demo)
    session = Session(image, predictor)
    walked = session.segment(Prompt(box=box), volume=True)
    assert walked.doubts == (BOX_ONLY,)
    assert walked.quality.review and walked.quality.reasons[0] == BOX_ONLY
