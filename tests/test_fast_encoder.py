"""The re-laid-out TinyViT encoder must give the encoder's own embedding, on every path it can take."""

import copy

import pytest
import torch

from oncoseg.models import fast_encoder
from oncoseg.models.litemedsam import LiteMedSAMBackend, fold_batchnorm


@pytest.fixture(scope="module")
def model():
    return LiteMedSAMBackend(precision="fp32").model


@pytest.fixture(scope="module")
def image():
    generator = torch.Generator().manual_seed(0)
    picture = torch.rand(1, 3, 256, 256, generator=generator)
    picture[..., 180:, :] = 0  # padding below the image, as a non-square input has
    return picture


def test_fp32_matches_the_encoder_with_its_own_unfolded_layers(model, image):
    encoder = model.image_encoder
    with torch.inference_mode():
        expected = encoder(image)
        got = fast_encoder.encode(encoder, image)
    assert got.shape == expected.shape == (1, 256, 64, 64)
    assert torch.allclose(got, expected, atol=1e-4)


def test_fused_fp32_path_matches_on_folded_layers(model, image):
    """With BatchNorm folded every convolution is a plain Conv2d, so the GELU and residual sums are fused
    into oneDNN calls: still the same numbers."""
    encoder = fold_batchnorm(copy.deepcopy(model.image_encoder)).eval()
    conv = encoder.layers[0].blocks[0].conv1
    assert not fast_encoder._fusable(conv, image, torch.nn.Conv2d)  # recording gradients: the plain path
    with torch.inference_mode():
        assert fast_encoder._fusable(conv, image, torch.nn.Conv2d)
        expected = model.image_encoder(image)
        got = fast_encoder.encode(encoder, image)
    assert torch.allclose(got, expected, atol=1e-4)


def test_bf16_channels_last_path_stays_within_bf16_rounding(model, image):
    backend = LiteMedSAMBackend(precision="bf16", model=model)
    batch = image.to(torch.bfloat16, memory_format=torch.channels_last)
    with torch.inference_mode():
        reference = model.image_encoder(image)
        through_modules = backend._encoder(batch).float()
        got = fast_encoder.encode(backend._encoder, batch).float()
    # the fast path must be no further from fp32 than the bf16 model's own forward is
    own_error = (through_modules - reference).abs().mean()
    fast_error = (got - reference).abs().mean()
    assert fast_error < 1.2 * own_error
    assert (got - through_modules).abs().max() < 0.05


def test_a_lora_wrapped_attention_is_used_not_bypassed(model, image):
    """Fine-tuning wraps qkv/proj; the fast path calls the modules, so an adapter changes its output."""
    encoder = copy.deepcopy(model.image_encoder).eval()
    block = encoder.layers[1].blocks[0]

    class Shifted(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x) + 0.5

    block.attn.qkv = Shifted(block.attn.qkv)
    with torch.inference_mode():
        expected = encoder(image)
        got = fast_encoder.encode(encoder, image)
        unchanged = model.image_encoder(image)
    assert torch.allclose(got, expected, atol=1e-4)
    assert not torch.allclose(got, unchanged, atol=1e-2)
