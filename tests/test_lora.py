"""LoRA on the real LiteMedSAM: targets, freezing, counts, training, adapter files, strict loading, merging.

The image encoder's forward pass is slow on a small CPU, so the full-encoder outputs are computed once per model
state in module-scoped fixtures (original, freshly adapted, trained, reloaded, merged).
"""

from __future__ import annotations

import copy
import json
import re
import sys

import pytest
import torch
from torch import nn

pytest.importorskip("peft")

from oncoseg.errors import OncoSegError
from oncoseg.models.litemedsam import CHECKPOINT_SIZE, LiteMedSAMBackend, build_model
from oncoseg.train import lora
from oncoseg.train.lora import (
    LoraSettings,
    adapter_info,
    adapter_state,
    apply_lora,
    default_targets,
    describe,
    load_adapter,
    lora_settings,
    merge_lora,
    parameter_counts,
    save_adapter,
)

ENCODER_ATTENTION = re.compile(r"image_encoder\.layers\.[123]\.blocks\.\d+\.attn\.(qkv|proj)")
R = 16


def encode(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.image_encoder(image)


def lora_layer_names(model: nn.Module) -> list[str]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [name for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]


@pytest.fixture(scope="module")
def base() -> nn.Module:
    return build_model()


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def base_output(base, image) -> torch.Tensor:
    return encode(base, image)


@pytest.fixture(scope="module")
def adapted(base) -> nn.Module:
    return apply_lora(copy.deepcopy(base))


def toy_loss(model: nn.Module, generator: torch.Generator) -> torch.Tensor:
    """Touches every LoRA layer (through its own forward) and the mask decoder's two-way transformer and IoU head
    (on a small random embedding: the full decoder at 256 × 256 is too slow for a unit test)."""
    loss = torch.zeros(())
    for name in lora_layer_names(model):
        layer = model.get_submodule(name)
        x = torch.randn(8, layer.in_features, generator=generator)
        loss = loss + (layer(x) - 1.0).pow(2).mean()
    decoder = model.mask_decoder
    embedding, position = (torch.randn(1, 256, 8, 8, generator=generator) for _ in range(2))
    tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight])[None]
    queries, keys = decoder.transformer(embedding, position, tokens)
    return loss + decoder.iou_prediction_head(queries[:, 0]).pow(2).mean() + keys.pow(2).mean()


@pytest.fixture(scope="module")
def training(base):
    """A LoRA model after two SGD steps on the toy loss (the first moves B, zero at the start, and so gives A a
    gradient for the second), with its parameters before."""
    model = apply_lora(copy.deepcopy(base))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    generator = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(2):
        optimizer.zero_grad()
        toy_loss(model, generator).backward()
        optimizer.step()
    model.eval()
    return model, before


@pytest.fixture(scope="module")
def trained(training) -> nn.Module:
    return training[0]


@pytest.fixture(scope="module")
def trained_output(trained, image) -> torch.Tensor:
    return encode(trained, image)


@pytest.fixture(scope="module")
def adapter_file(trained, tmp_path_factory):
    return save_adapter(
        trained,
        tmp_path_factory.mktemp("lora") / "adapter.safetensors",
        LoraSettings(),
        extra={"phase": "test", "best_val_dice": 0.5},
    )


def expected_lora_parameters(model: nn.Module, r: int = R) -> int:
    return sum(
        r * (m.in_features + m.out_features)
        for n, m in model.named_modules()
        if ENCODER_ATTENTION.fullmatch(n)
    )


# -- targets, freezing, counts ----------------------------------------------------------------------------------
def test_default_targets_litemedsam(base):
    assert default_targets(base) == r"image_encoder\.layers\.\d+\.blocks\.\d+\.attn\.(qkv|proj)"


def test_adapters_on_the_20_encoder_attention_layers_only(base, adapted):
    names = lora_layer_names(adapted)
    expected = [
        n for n, m in base.named_modules() if isinstance(m, nn.Linear) and ENCODER_ATTENTION.fullmatch(n)
    ]
    assert len(expected) == 20 and sorted(names) == sorted(expected)
    decoder_linears = [
        n for n, m in adapted.named_modules() if n.startswith("mask_decoder") and isinstance(m, nn.Linear)
    ]
    assert any(n.endswith(("q_proj", "k_proj", "v_proj", "out_proj")) for n in decoder_linears)
    assert not any(n.startswith("mask_decoder") for n in names)
    assert type(adapted) is type(base)


def test_freezing(adapted):
    for name, parameter in adapted.named_parameters():
        if name.startswith("mask_decoder") or ".lora_" in name:
            assert parameter.requires_grad, name
        else:
            assert not parameter.requires_grad, name
    assert not any(p.requires_grad for p in adapted.prompt_encoder.parameters())
    assert all(p.requires_grad for p in adapted.mask_decoder.parameters())


def test_trainable_count_by_hand(base, adapted):
    lora_count = expected_lora_parameters(base)
    # 16·(128+384 + 128+128)·2 + 16·(160+480 + 160+160)·6 + 16·(320+960 + 320+320)·2
    assert lora_count == 178_176
    decoder = sum(p.numel() for p in base.mask_decoder.parameters())
    total = sum(p.numel() for p in base.parameters())
    counts = parameter_counts(adapted)
    assert counts["trainable"] == lora_count + decoder == 4_236_516
    assert counts["total"] == total + lora_count == 9_969_476
    assert counts["fraction"] == pytest.approx(counts["trainable"] / counts["total"])
    assert describe(adapted) == (
        "LoRA r=16 on 20 layers + mask_decoder: 4.24 M of 9.97 M parameters trainable (42.5 %)"
    )
    assert describe(base).startswith("no LoRA: ")

    encoder_only = apply_lora(copy.deepcopy(base), LoraSettings(unfreeze=()))
    assert parameter_counts(encoder_only)["trainable"] == lora_count
    assert set(adapter_state(encoder_only)) == {
        n for n, p in encoder_only.named_parameters() if ".lora_" in n
    }


def test_output_unchanged_right_after_apply(adapted, image, base_output):
    assert torch.equal(encode(adapted, image), base_output)  # LoRA B starts at zero


def test_apply_twice_is_refused(adapted):
    with pytest.raises(OncoSegError, match="already has LoRA"):
        apply_lora(adapted)


def test_frozen_batchnorm_statistics_stay_fixed_in_train_mode(adapted, image):
    bn = adapted.image_encoder.patch_embed.seq[0].bn
    mean, count = bn.running_mean.clone(), bn.num_batches_tracked.clone()
    adapted.train()
    try:
        with torch.no_grad():
            adapted.image_encoder.patch_embed(image)
    finally:
        adapted.eval()
    assert torch.equal(bn.running_mean, mean) and torch.equal(bn.num_batches_tracked, count)


# -- training ---------------------------------------------------------------------------------------------------
def test_training_changes_only_trainable_parameters(training, trained_output, base_output):
    model, before = training
    changed = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert changed <= trainable
    lora_names = {name for name in trainable if ".lora_" in name}
    assert len(lora_names) == 40 and lora_names <= changed  # every A and B moved
    assert any(name.startswith("mask_decoder") for name in changed)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    assert (trained_output - base_output).abs().max() > 1e-3


# -- adapter files ----------------------------------------------------------------------------------------------
def test_adapter_file_is_small_and_describes_itself(trained, adapter_file, base, tmp_path):
    size = adapter_file.stat().st_size
    assert 15e6 < size < 20e6 < CHECKPOINT_SIZE  # LoRA + the full mask decoder (4.24 M float32)
    info = adapter_info(adapter_file)
    assert info["settings"] == lora_settings(trained) and info["settings"].targets == default_targets(base)
    assert info["extra"] == {"phase": "test", "best_val_dice": 0.5}
    assert info["parameters"] == parameter_counts(trained)["trainable"]
    assert not list(adapter_file.parent.glob(".tmp-*"))

    encoder_only = apply_lora(copy.deepcopy(base), LoraSettings(unfreeze=()))
    small = save_adapter(encoder_only, tmp_path / "encoder_only.safetensors")
    assert small.stat().st_size < 1e6  # 178 k float32 parameters


def test_load_adapter_reproduces_outputs(base, trained, adapter_file, image, trained_output):
    model = build_model()
    settings = load_adapter(model, adapter_file)
    assert settings == lora_settings(trained)
    assert parameter_counts(model) == parameter_counts(trained)
    state, expected = adapter_state(model), adapter_state(trained)
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)
    assert torch.equal(encode(model, image), trained_output)


def test_load_into_other_base_weights_is_refused(base, adapter_file):
    model = copy.deepcopy(base)
    with torch.no_grad():
        model.image_encoder.patch_embed.seq[0].c.weight.add_(1e-3)
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(OncoSegError, match="other base weights"):
        load_adapter(model, adapter_file)
    # nothing half-done: the model is as it was
    assert lora_settings(model) is None and not lora_layer_names(model)
    assert list(model.state_dict()) == list(base.state_dict())
    assert [p.requires_grad for p in model.parameters()] == flags


def test_damaged_files_are_refused(adapter_file, tmp_path):
    model = nn.Linear(2, 2)  # the file is refused before the model is looked at
    data = adapter_file.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(OncoSegError, match="damaged or truncated"):
        load_adapter(model, truncated)
    header = tmp_path / "header.safetensors"
    header.write_bytes(data[:5])
    with pytest.raises(OncoSegError, match="damaged or truncated"):
        load_adapter(model, header)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(bytes(flipped))
    with pytest.raises(OncoSegError, match="SHA-256"):
        load_adapter(model, corrupt)
    with pytest.raises(OncoSegError, match="not found"):
        load_adapter(model, tmp_path / "absent.safetensors")
    checkpoint = tmp_path / "model.pth"
    torch.save(model.state_dict(), checkpoint)
    with pytest.raises(OncoSegError, match="not an Onco-Seg LoRA adapter"):
        load_adapter(model, checkpoint)
    pytorch_truncated = tmp_path / "truncated.pt"
    pytorch_truncated.write_bytes(checkpoint.read_bytes()[:300])
    with pytest.raises(OncoSegError, match="damaged or truncated"):
        load_adapter(model, pytorch_truncated)


def _rewrite(source, target, change):
    """Copy an adapter file with its tensors changed by ``change`` (checksum updated, so only the fit is wrong)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    change(tensors)
    metadata["tensor_sha256"] = lora._digest(tensors.items())
    save_file(tensors, str(target), metadata=metadata)
    return target


def test_missing_unexpected_and_misshaped_tensors_are_refused(base, adapter_file, tmp_path):
    model = copy.deepcopy(base)  # a refused load leaves it as it was, so it serves all three cases
    key = "image_encoder.layers.1.blocks.0.attn.qkv.lora_A.default.weight"
    missing = _rewrite(adapter_file, tmp_path / "missing.safetensors", lambda t: t.pop(key))
    with pytest.raises(OncoSegError, match="1 missing"):
        load_adapter(model, missing)
    extra = _rewrite(adapter_file, tmp_path / "extra.safetensors", lambda t: t.update(stray=torch.zeros(2)))
    with pytest.raises(OncoSegError, match="1 unexpected"):
        load_adapter(model, extra)
    shaped = _rewrite(
        adapter_file, tmp_path / "shaped.safetensors", lambda t: t.update({key: torch.zeros(16, 7)})
    )
    with pytest.raises(OncoSegError, match="1 differently shaped"):
        load_adapter(model, shaped)
    assert lora_settings(model) is None and list(model.state_dict()) == list(base.state_dict())


def test_settings_must_agree_with_the_model(base, adapted, adapter_file, tmp_path):
    other = apply_lora(copy.deepcopy(base), LoraSettings(r=4))
    with pytest.raises(OncoSegError, match="the model has LoRA"):
        load_adapter(other, adapter_file)
    with pytest.raises(OncoSegError, match="differ from the model's LoRA"):
        save_adapter(adapted, tmp_path / "x.safetensors", LoraSettings(r=8))
    with pytest.raises(OncoSegError, match="no LoRA adapters"):
        save_adapter(copy.deepcopy(base), tmp_path / "y.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_torch_save_fallback(base, monkeypatch, tmp_path):
    model = apply_lora(copy.deepcopy(base), LoraSettings(unfreeze=(), r=4))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".lora_B." in name:
                parameter.normal_()
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)  # as if safetensors were not installed
    path = save_adapter(model, tmp_path / "adapter.pt")
    monkeypatch.undo()
    assert path.read_bytes()[:2] == b"PK"
    fresh = copy.deepcopy(base)
    assert load_adapter(fresh, path) == lora_settings(model)
    state, expected = adapter_state(fresh), adapter_state(model)
    assert all(torch.equal(state[k], expected[k]) for k in expected)


# -- merging ----------------------------------------------------------------------------------------------------
def test_merge_gives_the_plain_model(base, trained, image, trained_output):
    merged = merge_lora(copy.deepcopy(trained))
    assert type(merged) is type(base)
    assert list(merged.state_dict()) == list(base.state_dict())
    assert (
        not lora_layer_names(merged) and lora_settings(merged) is None and not hasattr(merged, "peft_config")
    )
    assert all(p.requires_grad for p in merged.parameters())
    assert all(not module._forward_pre_hooks for module in merged.modules())
    copy.deepcopy(base).load_state_dict(merged.state_dict(), strict=True)
    torch.testing.assert_close(encode(merged, image), trained_output, atol=1e-5, rtol=0)
    backend = LiteMedSAMBackend(model=merged, precision="fp32")
    assert backend.model is merged
    with pytest.raises(OncoSegError, match="no LoRA adapters"):
        merge_lora(merged)


# -- settings and other backends --------------------------------------------------------------------------------
def test_settings_round_trip():
    settings = LoraSettings(
        r=8, alpha=16, dropout=0.05, bias="lora_only", targets=r"a\.b", unfreeze=["mask_decoder"]
    )
    assert settings.unfreeze == ("mask_decoder",)
    assert LoraSettings.from_dict(settings.as_dict()) == settings
    assert LoraSettings.from_dict(json.loads(json.dumps(settings.as_dict()))) == settings
    assert LoraSettings.from_dict({}) == LoraSettings() == LoraSettings.from_dict(LoraSettings().as_dict())
    assert LoraSettings().as_dict() == {
        "r": 16,
        "alpha": 32,
        "dropout": 0.1,
        "bias": "none",
        "targets": None,
        "unfreeze": ["mask_decoder"],
    }
    with pytest.raises(OncoSegError, match="unknown LoRA setting"):
        LoraSettings.from_dict({"rank": 4})
    for bad in ({"r": 0}, {"dropout": 1.0}, {"bias": "some"}, {"targets": "("}, {"alpha": -1}):
        with pytest.raises(OncoSegError):
            LoraSettings(**bad)


class _Attention(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(width, width) for _ in range(4))


class _Layer(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.attention = _Attention(width)
        self.mlp = nn.Linear(width, width)


class _Sam3Like(nn.Module):
    """The naming of SAM3's vision backbone (transformers), in miniature."""

    def __init__(self) -> None:
        super().__init__()
        self.vision_encoder = nn.Module()
        self.vision_encoder.backbone = nn.Module()
        self.vision_encoder.backbone.layers = nn.ModuleList(_Layer(8) for _ in range(2))
        self.mask_decoder = nn.Linear(8, 1)


def test_sam3_style_targets_and_unknown_models():
    model = _Sam3Like()
    assert "vision_encoder" in default_targets(model)
    apply_lora(model)
    assert len(lora_layer_names(model)) == 8
    assert all(".attention." in name for name in lora_layer_names(model))
    with pytest.raises(OncoSegError, match="no default LoRA targets"):
        default_targets(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(OncoSegError, match="match no module"):
        apply_lora(_Sam3Like(), LoraSettings(targets=r"nothing\.here"))
    with pytest.raises(OncoSegError, match="unfreeze prefix"):
        apply_lora(_Sam3Like(), LoraSettings(unfreeze=("decoder",)))
