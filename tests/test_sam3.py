"""The SAM3 backend, tested with tiny random configurations of the real transformers classes (no SAM3 weights
here): a ``Sam3VideoModel`` folder in the Hugging Face layout of facebook/sam3 (config.json, model.safetensors,
tokenizer.json, processor_config.json) is written by ``save_pretrained`` and loaded through the user path."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from oncoseg.errors import EmptyResultError, ModelError, OncoSegError, PromptError
from oncoseg.image import MedicalImage
from oncoseg.prompts import Box, Point, Prompt

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
KVASIR_CASE = "cju0u82z3cuma0835wlxrnrjv"
SIZE = 112  # tiny model input (8×8 ViT tokens); the real model reads 1008 from its config the same way
LOW = 4 * (SIZE // 14)  # mask logits: 4× the ViT grid (288 for the real 1008 px input)
WORDS = ["liver", "tumour", "left", "parotid", "gland", "visual", "kidney", "cyst", "polyp", "lesion"]


# -- a tiny SAM3 folder ---------------------------------------------------------------------------------------
def tiny_config(size: int = SIZE, width: int = 128):
    """A ``Sam3VideoConfig`` with every part shrunk (the tracker's memory attention reads 64-channel memories, so
    the feature width must be a multiple of 64 larger than it, as in the full model's 256)."""
    from transformers import Sam3VideoConfig

    grid = size // 14
    backbone = {
        "model_type": "sam3_vit_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "image_size": size, "patch_size": 14, "window_size": 4,
        "global_attn_indexes": [1], "pretrain_image_size": size,
    }  # fmt: skip
    vision = {
        "model_type": "sam3_vision_model", "backbone_config": backbone, "fpn_hidden_size": width,
        "backbone_feature_sizes": [[4 * grid, 4 * grid], [2 * grid, 2 * grid], [grid, grid]],
    }  # fmt: skip
    small = {"hidden_size": width, "num_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    text = {
        "model_type": "clip_text_model", "vocab_size": 128, "hidden_size": 32, "intermediate_size": 64,
        "projection_dim": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 16,
        "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1,
    }  # fmt: skip
    detector = {
        "vision_config": vision, "text_config": text, "geometry_encoder_config": small,
        "detr_encoder_config": small, "detr_decoder_config": {**small, "num_queries": 8},
        "mask_decoder_config": {"hidden_size": width, "num_attention_heads": 2},
    }  # fmt: skip
    tracker = {
        "vision_config": vision, "prompt_encoder_config": {"hidden_size": width, "image_size": size},
        "mask_decoder_config": {"hidden_size": width, "mlp_dim": 64, "num_attention_heads": 2,
                                "iou_head_hidden_dim": 32},
        "memory_attention_hidden_size": width, "memory_attention_num_layers": 1,
        "memory_attention_feed_forward_hidden_size": 64, "memory_encoder_hidden_size": width,
        "memory_encoder_output_channels": 64, "mask_downsampler_embed_dim": width,
        "memory_fuser_embed_dim": width, "memory_fuser_intermediate_dim": 64, "image_size": size,
    }  # fmt: skip
    return Sam3VideoConfig(detector_config=detector, tracker_config=tracker)


def tiny_tokenizer():
    """A CLIP BPE tokenizer over a few words, built offline from a vocab dict and merge list."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in sorted(set("".join(WORDS))):
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    merges = []
    for word in WORDS:
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            merges.append((parts[0], parts[1]))
            vocab.setdefault(parts[0] + parts[1], len(vocab))
            parts = [parts[0] + parts[1], *parts[2:]]
    return CLIPTokenizer(vocab=vocab, merges=merges)


def make_folder(folder: Path, seed: int = 0) -> Path:
    from transformers import Sam3VideoModel

    torch.manual_seed(seed)
    model = Sam3VideoModel(tiny_config())
    for (
        module
    ) in model.modules():  # torch's default (fan-in scaled) init: signals survive the tiny random FPN
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            module.reset_parameters()
    with torch.no_grad():  # random object-presence head: make the tracker see an object
        model.tracker_model.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(10.0)
    model.save_pretrained(folder)
    tokenizer = tiny_tokenizer()
    assert len(tokenizer) <= 128 and tokenizer("liver tumour")["input_ids"][1:3] != [1, 1]
    tokenizer.save_pretrained(folder)
    processor = {"image_processor": {"image_mean": [0.5] * 3, "image_std": [0.5] * 3}}
    (folder / "processor_config.json").write_text(json.dumps(processor), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("sam3"))


@pytest.fixture(scope="module")
def predictor(folder):
    from oncoseg.predictor import Predictor

    return Predictor("sam3", weights=str(folder))


def kvasir() -> tuple[np.ndarray, np.ndarray]:
    """One real Kvasir-SEG picture ([H, W, 3] uint8) and its polyp mask."""
    from PIL import Image

    root = DATA / "kvasir-seg"
    if not root.is_dir():
        pytest.fail(f"the shared data folder {root} is missing: these tests read a real image from it")
    image = np.asarray(Image.open(root / "images" / f"{KVASIR_CASE}.jpg").convert("RGB"))
    mask = np.asarray(Image.open(root / "masks" / f"{KVASIR_CASE}.jpg").convert("L")) > 127
    return image, mask


def box_of(mask: np.ndarray) -> Box:
    ys, xs = np.nonzero(mask)
    return Box(float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))


# -- loading -------------------------------------------------------------------------------------------------
def test_weights_folder_errors_say_what_to_do(folder, tmp_path, monkeypatch):
    from oncoseg.models import load_backend
    from oncoseg.models.sam3 import WEIGHTS_ENV

    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    with pytest.raises(ModelError, match="huggingface.co/facebook/sam3.*--weights DIR"):
        load_backend("sam3")
    with pytest.raises(ModelError, match="weights folder not found"):
        load_backend("sam3", weights=tmp_path / "nowhere")
    with pytest.raises(ModelError, match="no config.json"):
        load_backend("sam3", weights=tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "sam2"}), encoding="utf-8")
    with pytest.raises(ModelError, match="'sam2' model, not SAM3"):
        load_backend("sam3", weights=tmp_path)
    (tmp_path / "config.json").write_text(
        (folder / "config.json").read_text(encoding="utf-8"), encoding="utf-8"
    )
    with pytest.raises(ModelError, match=r"incomplete \(no model.safetensors, tokenizer.json\)"):
        load_backend("sam3", weights=tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    (tmp_path / "tokenizer.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ModelError, match="cannot load SAM3"):
        load_backend("sam3", weights=tmp_path)
    monkeypatch.setitem(sys.modules, "torchvision", None)  # as if torchvision were not installed
    with pytest.raises(ModelError, match=r"SAM3 needs torchvision.*oncoseg\[sam3\]"):
        load_backend("sam3", weights=folder)


def test_loads_offline_from_the_folder_or_the_environment(folder, monkeypatch):
    from oncoseg.models import available_backends, load_backend
    from oncoseg.models.sam3 import WEIGHTS_ENV

    assert "sam3" in available_backends()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv(WEIGHTS_ENV, str(folder))
    backend = load_backend("sam3")
    assert backend.describe() == {
        "backend": "sam3",
        "device": "cpu",
        "precision": "float32",
        "image_size": SIZE,
    }
    assert backend.supports_text and backend.size == SIZE


def test_device_and_precision_are_automatic_and_overridable(folder):
    from oncoseg.models.sam3 import Sam3Backend, pick_device, pick_dtype

    assert pick_device("auto") == torch.device("cpu")  # no GPU on this machine
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_dtype(torch.device("cpu")) == torch.float32
    assert pick_dtype(torch.device("mps")) == torch.float16
    assert pick_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    with pytest.raises(ModelError, match="precision must be"):
        pick_dtype(torch.device("cpu"), "int8")
    backend = Sam3Backend(weights=folder, precision="bf16")
    assert next(backend.model.parameters()).dtype == torch.bfloat16
    embedding = backend.encode(np.random.default_rng(0).random((40, 50, 3), dtype=np.float32))
    assert embedding.features.dtype == torch.bfloat16
    prediction = backend.decode(embedding, [Prompt(box=Box(5, 5, 30, 25))])
    assert prediction.masks.shape == (1, 40, 50) and np.isfinite(prediction.scores).all()


# -- preprocessing -------------------------------------------------------------------------------------------
def test_preprocessing_feeds_sam3_its_input_for_any_channel_count(predictor):
    backend = predictor.backend
    grey = np.linspace(0, 1, 30 * 40, dtype=np.float32).reshape(30, 40)
    one = backend.preprocess(grey)
    assert one.shape == (1, 3, SIZE, SIZE)
    assert torch.allclose(one, backend.preprocess(grey[..., None]))
    assert torch.allclose(one, backend.preprocess(np.repeat(grey[..., None], 3, axis=2)))
    assert float(one.min()) == pytest.approx(-1, abs=0.02) and float(one.max()) == pytest.approx(1, abs=0.02)
    middle = backend.preprocess(np.full((20, 20, 3), 0.5, np.float32))  # (0.5 - mean 0.5) / std 0.5 = 0
    assert torch.allclose(middle, torch.zeros_like(middle))
    four = backend.preprocess(np.random.default_rng(1).random((30, 40, 4), dtype=np.float32))
    assert four.shape == (1, 3, SIZE, SIZE) and four.min() >= -1 and four.max() <= 1
    # through the predictor: a 4-channel MRI volume slice and an RGB picture both reach 3 channels
    volume = MedicalImage.from_array(
        np.random.default_rng(2).random((3, 24, 24, 4)).astype(np.float32), channels=4
    )
    predictor.set_image(volume, modality="mri")
    assert predictor.slice_pixels(1).shape == (24, 24, 3)
    assert predictor.embedding(1).features.shape == (1, (SIZE // 14) ** 2, 32)


# -- prompts -------------------------------------------------------------------------------------------------
def test_box_and_point_prompts_use_the_tracker_and_the_embedding_cache(predictor):
    image, mask = kvasir()
    predictor.set_image(image, modality="endoscopy")
    h, w = mask.shape
    box = Prompt(box=box_of(mask))
    first = predictor.predict(box)
    assert first.masks.shape == (1, h, w) and first.masks.dtype == bool
    assert first.logits.shape == (1, LOW, LOW) and first.scores.shape == (1,)
    embedding = predictor.embedding()
    assert predictor.is_cached() and any(k[0] == "sam3-tracker" for k in embedding.cache)
    calls = []
    original = predictor.backend.encode
    predictor.backend.encode = lambda pixels: calls.append(1) or original(pixels)
    try:
        again = predictor.predict(box)
        clicks = predictor.predict(Prompt(points=(Point(w / 2, h / 2), Point(5, 5, positive=False))))
        one_click = predictor.predict(Prompt(points=(Point(w / 2, h / 2),)))
        refined = predictor.predict(box, mask_input=first.logits)
        both = predictor.predict([box, Prompt(box=Box(0, 0, w / 3, h / 3))])
    finally:
        predictor.backend.encode = original
    assert calls == []  # every prompt reused the cached slice embedding
    assert np.array_equal(again.masks, first.masks)
    assert clicks.masks.shape == one_click.masks.shape == refined.masks.shape == (1, h, w)
    assert not np.array_equal(refined.logits, first.logits)  # the mask prompt changed the answer
    assert both.masks.shape == (2, h, w) and np.array_equal(both.masks[0], first.masks[0])


def _raw_scores(backend, embedding, text):
    """SAM3's instance scores computed directly with the transformers model (no Onco-Seg code)."""
    from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

    detector = backend.model.detector_model
    hidden = embedding.features
    grid = SIZE // 14
    tokens = backend.tokenizer([text], padding="max_length", max_length=16, return_tensors="pt")
    with torch.inference_mode():
        fpn, position = detector.vision_encoder.neck(hidden.reshape(1, grid, grid, -1).permute(0, 3, 1, 2))
        out = detector(
            vision_embeds=Sam3VisionEncoderOutput(fpn_hidden_states=fpn, fpn_position_encoding=position),
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
        )
    return (out.pred_logits.sigmoid() * out.presence_logits.sigmoid())[0].numpy()


def test_text_prompts_return_every_instance_above_the_threshold(predictor):
    image, mask = kvasir()
    predictor.set_image(image, modality="endoscopy")
    backend = predictor.backend
    embedding = predictor.embedding()
    raw = np.sort(_raw_scores(backend, embedding, "polyp"))[::-1]
    assert len(raw) == 8  # one candidate per DETR query
    for threshold in (0.0, float(raw[2] + raw[3]) / 2, 1.0):
        found = backend.detect(embedding, "polyp", threshold=threshold)
        expected = int((raw > threshold).sum())
        assert len(found.masks) == len(found.scores) == expected
        assert np.allclose(found.scores, raw[:expected], atol=1e-5)  # best first
        assert found.masks.shape[1:] == mask.shape
    assert len(backend.detect(embedding, "polyp", threshold=float(raw[2] + raw[3]) / 2).scores) == 3
    via_predictor = predictor.predict(Prompt(text="polyp"))
    assert len(via_predictor.scores) == int((raw > backend.threshold).sum())
    # box exemplars alone ("visual" concept) and together with text
    exemplar = box_of(mask)
    alone = backend.detect(embedding, None, [exemplar], threshold=0.0)
    with_text = backend.detect(embedding, "polyp", [exemplar], threshold=0.0)
    assert len(alone.scores) == len(with_text.scores) == 8
    assert not np.allclose(with_text.scores, found.scores if len(found.scores) == 8 else raw)
    assert not np.allclose(alone.scores, with_text.scores)
    # cached text features follow the model when it moves to another dtype (or device)
    backend.model.to(torch.bfloat16)
    backend.dtype = torch.bfloat16
    try:
        text_embeds, _ = backend._text_embeds("polyp")
        assert text_embeds.pooler_output.dtype == torch.bfloat16
        assert (
            len(backend.detect(predictor.backend.encode(image / 255.0), "polyp", threshold=0.0).scores) == 8
        )
    finally:
        backend.model.to(torch.float32)
        backend.dtype = torch.float32
    with pytest.raises(PromptError, match="text prompt is empty"):
        predictor.predict(Prompt(text="  "))


def test_the_default_backend_answers_text_through_its_concept_head_only():
    """LiteMedSAM reads text with its concept head (tests/test_concepts.py): a text prompt does not go through
    the box/click decoder, and text outside its vocabulary fails with the list of what it knows."""
    from oncoseg.api import segment
    from oncoseg.predictor import Predictor

    predictor = Predictor("litemedsam")
    predictor.set_image(np.zeros((32, 32), np.float32))
    with pytest.raises(OncoSegError, match="goes through detect"):
        predictor.predict(Prompt(text="liver tumour"))
    with pytest.raises(OncoSegError, match="not in this model's vocabulary.*polyp"):
        segment(np.zeros((32, 32), np.float32), text="lung nodule", predictor=predictor)


def test_segment_api_and_cli_with_text_and_boxes(folder, tmp_path):
    from PIL import Image

    from oncoseg.api import segment
    from oncoseg.cli import main

    image, mask = kvasir()
    result = segment(
        image, text="polyp", backend="sam3", weights=folder, threshold=0.0, json_path=tmp_path / "r.json"
    )
    assert result.labels.shape == mask.shape and 1 <= result.labels.max() <= 8
    assert len(result.scores) == result.labels.max() == len(result.measurements)
    saved = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert saved["objects"][0]["prompt"]["text"] == "polyp"
    with pytest.raises(EmptyResultError, match="no instance of 'polyp'"):
        segment(
            image, text="polyp", backend="sam3", weights=folder, threshold=1.0, output=tmp_path / "none.png"
        )
    assert not (tmp_path / "none.png").exists()

    source = tmp_path / "polyp.png"
    Image.fromarray(image).save(source)
    b = box_of(mask)
    box = f"{b.x0:g},{b.y0:g},{b.x1:g},{b.y1:g}"
    out = tmp_path / "mask.png"
    assert (
        main(
            [
                "segment",
                str(source),
                "--backend",
                "sam3",
                "--weights",
                str(folder),
                "--box",
                box,
                "-o",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    assert np.asarray(Image.open(out)).shape == mask.shape
    out2 = tmp_path / "text.png"
    assert main(["segment", str(source), "--backend", "sam3", "--weights", str(folder), "--text", "polyp",
                 "--threshold", "0", "-o", str(out2)]) == 0  # fmt: skip
    assert np.asarray(Image.open(out2)).max() >= 1
    assert main(["segment", str(source), "--backend", "sam3", "--weights", str(tmp_path / "missing"),
                 "--box", box, "-o", str(tmp_path / "x.png")]) == 2  # fmt: skip
    assert not (tmp_path / "x.png").exists()


def test_evaluation_runs_on_sam3_without_special_cases(folder, tmp_path, monkeypatch):
    from oncoseg.cli import main
    from oncoseg.models.sam3 import WEIGHTS_ENV

    monkeypatch.setenv(WEIGHTS_ENV, "unset")  # restored after the test; --weights replaces it
    out = tmp_path / "eval"
    code = main(["evaluate", "kvasir-seg", "--backend", "sam3", "--weights", str(folder), "--limit", "1",
                 "--no-report", "-q", "-o", str(out)])  # fmt: skip
    assert code == 0 and os.environ[WEIGHTS_ENV] == str(folder.resolve())
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert "sam3" in json.dumps(summary) and (out / "cases.csv").is_file()


def test_oncoseg_train_yaml_runs_a_sam3_phase(folder, tmp_path, monkeypatch, shared_data):
    """`oncoseg train` with ``backend: sam3`` trains LoRA on the tiny model and registers a usable adapter."""
    from oncoseg.cli import main
    from oncoseg.train.lora import adapter_info

    monkeypatch.setenv("ONCOSEG_HOME", str(tmp_path / "home"))
    config = tmp_path / "sam3.yaml"
    config.write_text(
        f"name: tiny-sam3\noutput: {tmp_path / 'run'}\nbackend: sam3\nweights: {folder}\n"
        f"data_root: {shared_data}\nbatch_size: 1\nmax_steps_per_epoch: 2\nloggers: [csv]\n"
        "phases:\n  - name: polyp\n    datasets: [kvasir-seg]\n    epochs: 1\n    samples_per_epoch: 2\n"
        "    val_limit: 1\n",
        encoding="utf-8",
    )
    assert main(["train", str(config), "-q"]) == 0
    adapter = tmp_path / "run" / "01-polyp" / "adapter.safetensors"
    info = adapter_info(adapter)
    assert "Sam3" in str(info["model"]) and info["tensors"] > 0 and "q_proj" in str(info["settings"].targets)
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        config.read_text(encoding="utf-8").replace("backend: sam3", "backend: sam9"), encoding="utf-8"
    )
    assert main(["train", str(bad), "-q"]) == 2


# -- volumes -------------------------------------------------------------------------------------------------
def test_volume_tracking_and_text_over_a_volume(predictor, tmp_path):
    from oncoseg.api import segment
    from oncoseg.volume import PropagationSettings, propagate

    rng = np.random.default_rng(3)
    array = rng.random((5, 48, 40)).astype(np.float32)
    image = MedicalImage.from_array(array, spacing=(0.8, 0.8, 2.5))
    prompt = Prompt(box=Box(8, 10, 30, 36, z=2))
    predictor.set_image(image)
    flat = predictor.predict(prompt).masks[0]
    seen = []
    result = propagate(predictor, prompt, on_slice=seen.append)  # SAM3's video tracker answers each slice
    assert result.mask.shape == (5, 48, 40) and result.start_slice == 2
    assert np.array_equal(result.mask[2], flat)  # the conditioning slice is the 2D answer
    assert seen[0] == 2 and set(result.slice_scores) <= set(seen)
    zs = sorted(result.slice_scores)
    assert zs == list(range(zs[0], zs[-1] + 1))  # one connected run of slices around the prompt
    assert all(result.mask[z].any() for z in zs) and not any(
        result.mask[z].any() for z in set(range(5)) - set(zs)
    )

    tracker = predictor.backend.tracker(predictor, prompt)
    assert np.array_equal(tracker.first()[0], flat)
    boxed = propagate(predictor, prompt, PropagationSettings(tracker=False))  # the walk's box prompts instead
    assert np.array_equal(boxed.mask[2], flat) and boxed.start_slice == 2

    out = tmp_path / "tracked.nii.gz"
    tracked = segment(image, box=(8, 10, 30, 36, 2), volume=True, predictor=predictor, output=out)
    assert np.array_equal(tracked.labels > 0, result.mask) and out.is_file()

    labelled = segment(image, text="kidney", volume=True, predictor=predictor, threshold=0.0)
    assert labelled.labels.shape == (5, 48, 40) and labelled.labels.max() == len(labelled.scores) >= 1
    sizes = [int((labelled.labels == i).sum()) for i in range(1, labelled.labels.max() + 1)]
    assert sizes == sorted(sizes, reverse=True)  # largest object first
    one = segment(image, text="kidney", slice_index=4, predictor=predictor, threshold=0.0)
    assert one.labels[4].any() and not one.labels[:4].any() and all(s == (4, 4) for s in one.slices)
    raw = predictor.backend.detect(predictor.embedding(4), "kidney", threshold=0.0)
    assert len(one.scores) <= len(raw.scores) and one.scores[0] == pytest.approx(float(raw.scores[0]))
    with pytest.raises(EmptyResultError):
        segment(image, text="kidney", slice_index=4, predictor=predictor, threshold=1.0)
    with pytest.raises(OncoSegError, match="needs the slice"):
        segment(image, text="kidney", predictor=predictor)


# -- LoRA ------------------------------------------------------------------------------------------------------
def test_lora_on_full_size_sam3_counts_parameters_without_allocating():
    from oncoseg.models.sam3 import full_size_lora_report
    from oncoseg.train.lora import LoraSettings

    report = full_size_lora_report()
    assert report["device"] == "meta"  # shapes only: nothing allocated
    assert 850e6 < report["total"] < 870e6  # SAM3 (859.9 M) + its LoRA tensors
    assert "LoRA r=16 on 128 layers + mask_decoder" in report["summary"]  # 32 ViT blocks × q/k/v/o
    lora_only = full_size_lora_report(LoraSettings(unfreeze=()))
    # r=16 on 4 projections of 1024×1024 in 32 blocks: 32 × 4 × 16 × (1024 + 1024)
    assert lora_only["trainable"] == 32 * 4 * 16 * 2048 == 4_194_304
    assert report["total"] == lora_only["total"]
    # + both mask decoders (tracker 4.2 M, detector 2.3 M)
    assert 10e6 < report["trainable"] < 11e6


def test_lora_gradients_flow_only_into_adapters_and_unfrozen_heads(folder):
    from oncoseg.models.sam3 import box_forward, training_model
    from oncoseg.train.lora import LoraSettings, apply_lora

    model = training_model(folder)
    apply_lora(model, LoraSettings(r=4, alpha=8, dropout=0.0, unfreeze=("tracker_model.mask_decoder",)))
    wrapped = [n for n, m in model.named_modules() if hasattr(m, "lora_A")]
    assert len(wrapped) == 2 * 4  # 2 ViT blocks × q/k/v/o, nothing in the text encoder, DETR or tracker
    assert all(n.startswith("detector_model.vision_encoder.backbone.layers.") for n in wrapped)
    image = torch.rand(2, 3, 256, 256)
    box = torch.tensor([[40.0, 50, 200, 180], [10, 20, 120, 250]])
    logits = box_forward(model, image, box)
    assert logits.shape == (2, 1, LOW, LOW)
    logits.square().mean().backward()
    for name, parameter in model.named_parameters():
        trainable = ".lora_" in name or name.startswith("tracker_model.mask_decoder.")
        assert parameter.requires_grad == trainable, name
        if not trainable:
            assert parameter.grad is None, name
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n
    )
    assert all(
        p.grad is not None
        for n, p in model.named_parameters()
        if n.startswith("tracker_model.mask_decoder.transformer")
    )
    # with the detector's heads trainable, the box also trains them as an exemplar (a second output)
    model = training_model(folder)
    apply_lora(model, LoraSettings(r=4, dropout=0.0, unfreeze=("mask_decoder", "detr_decoder")))
    tracker, detector = box_forward(model, image, box)
    assert tracker.shape == detector.shape == (2, 1, LOW, LOW)
    (tracker.square().mean() + detector.square().mean()).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert any(
        g is not None and g.abs().sum() > 0
        for n, g in grads.items()
        if n.startswith("detector_model.detr_decoder")
    )
    assert any(g is not None for n, g in grads.items() if n.startswith("detector_model.mask_decoder"))
    assert all(
        p.grad is None for n, p in model.named_parameters() if n.startswith("detector_model.text_encoder")
    )


@pytest.mark.slow
def test_tiny_sam3_overfits_one_real_image_then_saves_reloads_and_merges(folder, tmp_path):
    """The proof that the training path is wired right: LoRA on a tiny SAM3 learns one Kvasir polyp."""
    from PIL import Image

    from oncoseg.models.sam3 import Sam3Backend, box_forward, training_model
    from oncoseg.train.lora import LoraSettings, apply_lora, load_adapter, merge_lora, save_adapter
    from oncoseg.train.module import SegmentationModule, dice_iou

    picture, truth = kvasir()
    image = torch.from_numpy(np.asarray(Image.fromarray(picture).resize((256, 256)), np.float32) / 255)
    image = image.permute(2, 0, 1)[None]
    mask = torch.from_numpy(np.asarray(Image.fromarray(truth).resize((256, 256))).astype(np.float32))[
        None, None
    ]
    b = box_of(mask[0, 0].numpy() > 0)
    box = torch.tensor([[b.x0, b.y0, b.x1, b.y1]])

    torch.manual_seed(0)
    model = training_model(folder)
    # the tracker head only: the detector branch (see the gradient test) would quadruple this test's time
    apply_lora(model, LoraSettings(r=8, alpha=16, dropout=0.0, unfreeze=("tracker_model.mask_decoder",)))
    module = SegmentationModule(model, lr=1e-2, weight_decay=0.0)
    optimizer = module.configure_optimizers()
    batch = {"image": image, "box": box, "mask": mask, "modality": ["endoscopy"]}
    losses, dices = [], []
    began = time.perf_counter()
    for _step in range(36):
        heads = module.predictions(batch)  # what training_step computes
        loss = sum(module.loss(logits.float(), mask, batch["modality"]) for logits in heads)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        dices.append(float(dice_iou(heads[0].detach(), mask)[0]))
    seconds = time.perf_counter() - began
    print(
        f"overfit: loss {losses[0]:.3f} -> {losses[-1]:.3f}, Dice {dices[0]:.3f} -> {dices[-1]:.3f}, {seconds:.1f} s"
    )
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    assert np.mean(dices[-3:]) > 0.7 and dices[-1] > dices[0] + 0.3

    model.eval()
    with torch.no_grad():
        trained = box_forward(model, image, box)
    adapter = save_adapter(model, tmp_path / "sam3-lora.safetensors", extra={"dice": dices[-1]})
    fresh = training_model(folder).eval()
    load_adapter(fresh, adapter)
    fresh.eval()
    with torch.no_grad():
        assert torch.allclose(box_forward(fresh, image, box), trained, atol=1e-5)
    merge_lora(fresh)
    assert not any("lora" in n for n, _ in fresh.named_parameters())
    with torch.no_grad():
        assert torch.allclose(box_forward(fresh, image, box), trained, atol=1e-4)
    # the merged model serves the backend directly, and so does the adapter file on top of the weights folder
    pixels = np.asarray(Image.fromarray(picture).resize((256, 256))) / 255.0
    backend = Sam3Backend(model=fresh, tokenizer=tiny_tokenizer())
    prediction = backend.decode(backend.encode(pixels), [Prompt(box=b)])
    overlap = (prediction.masks[0] & (mask[0, 0].numpy() > 0)).sum()
    assert 2 * overlap / (prediction.masks[0].sum() + (mask[0, 0].numpy() > 0).sum()) > 0.7
    from_file = Sam3Backend(weights=folder, adapter=adapter)
    assert np.array_equal(from_file.decode(from_file.encode(pixels), [Prompt(box=b)]).masks, prediction.masks)


DDP_WORKER = r"""
import hashlib, os, sys
import torch, torch.distributed as dist
from oncoseg.models.sam3 import training_model
from oncoseg.train.lora import LoraSettings, apply_lora
from oncoseg.train.module import SegmentationModule, match_size

rank = int(os.environ["RANK"])
dist.init_process_group("gloo")
torch.manual_seed(0)
model = training_model(sys.argv[1])
apply_lora(model, LoraSettings(r=4, alpha=8, dropout=0.1))  # some unfrozen detector parameters go unused
module = SegmentationModule(model, lr=1e-3)


def fingerprint():
    digest = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if p.requires_grad:
            digest.update(name.encode()); digest.update(p.detach().numpy().tobytes())
    return digest.hexdigest()


print("START", fingerprint(), flush=True)
ddp = torch.nn.parallel.DistributedDataParallel(module, find_unused_parameters=True)
optimizer = module.configure_optimizers()
torch.manual_seed(100 + rank)  # each process sees its own data
for step in range(3):
    image, target = torch.rand(1, 3, 256, 256), (torch.rand(1, 1, 256, 256) > 0.5).float()
    heads = ddp(image, torch.tensor([[30.0, 40, 200, 220]]))
    loss = sum(module.loss(match_size(h, target), target, "ct") for h in heads)
    optimizer.zero_grad(); loss.backward(); optimizer.step()
print("FINGERPRINT", fingerprint(), flush=True)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_two_process_ddp_gloo_trains_sam3_lora_identically(folder, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER, encoding="utf-8")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2"}
    processes = [
        subprocess.Popen(
            [sys.executable, str(script), str(folder)],
            env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            encoding="utf-8",
        )
        for rank in range(2)
    ]
    outputs = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=240)
            assert process.returncode == 0, err[-2000:]
            outputs.append(out)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    prints = [
        line.split()[1] for out in outputs for line in out.splitlines() if line.startswith("FINGERPRINT")
    ]
    starts = [line.split()[1] for out in outputs for line in out.splitlines() if line.startswith("START")]
    assert len(prints) == 2 and prints[0] == prints[1]  # gradients were averaged: the same weights everywhere
    assert starts[0] == starts[1] != prints[0]  # ... and they did train


def test_embeddings_from_the_store_give_the_same_sam3_masks(predictor, tmp_path):
    """SAM3 through the on-disk embedding store: a second predictor reads every slice instead of running the
    backbone and gets the same tracker masks (box prompt) and volume; the key names SAM3's weights and dtype."""
    from oncoseg.predictor import Predictor
    from oncoseg.volume import propagate

    backend = predictor.backend
    identity = backend.embedding_identity()
    assert identity.startswith("sam3/v1/float32/112/") and identity == backend.embedding_identity()
    image = MedicalImage.from_array(np.random.default_rng(4).random((4, 40, 36)).astype(np.float32))
    prompt = Prompt(box=Box(6, 8, 28, 30, z=1))
    fresh = Predictor(backend, embedding_store=tmp_path)
    fresh.set_image(image)
    first, flat = propagate(fresh, prompt), fresh.predict(prompt).masks
    stored = Predictor(backend, embedding_store=tmp_path)
    stored.set_image(image)
    second = propagate(stored, prompt)
    assert stored.store.writes == 0 and stored.store.hits >= 1
    assert np.array_equal(first.mask, second.mask) and np.array_equal(flat, stored.predict(prompt).masks)
