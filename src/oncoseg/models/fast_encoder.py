"""An inference-only evaluation of LiteMedSAM's TinyViT image encoder that gives the same embedding as
``TinyViT.forward`` (to the rounding of the dtype) but runs faster on a CPU.

It calls the encoder's own submodules (so BatchNorm-folded, fine-tuned or LoRA-wrapped layers are used as they
are) and changes only the glue between them:

* a plain convolution or linear layer followed by GELU, or by the block's residual sum, is one oneDNN call
  (``torch.ops.mkldnn._convolution_pointwise`` / ``_linear_pointwise``, the fused ops PyTorch's own compiler
  emits on CPUs); anything else (an unfolded Conv2d_BN, a LoRA wrapper, another device, or a call that
  records gradients, as the student encoder's training does) takes the plain path;
* GELU on a channels-last image runs on the flat ``[pixels, channels]`` view of the same memory (PyTorch's
  elementwise kernel is 2–3× slower on the 4-D channels-last view);
* window attention is one fused ``scaled_dot_product_attention`` call with the relative-position bias as its
  additive mask, instead of matrix product, bias add, softmax and matrix product;
* the depthwise "local" convolution between attention and MLP reads and writes the token layout through
  channels-last views instead of transposed copies.

Any square input size runs (the stages' resolutions follow the input, windows are padded as TinyViT pads them):
the student encoder (`oncoseg.models.student`) is this network on a 168×168 frame, its last features resized
to the 64×64 grid the mask decoder expects.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _fusable(layer: nn.Module, x: torch.Tensor, kind: type) -> bool:
    """Whether oneDNN can run ``layer`` with its activation/sum fused (a plain layer on a CPU tensor)."""
    return (
        type(layer) is kind
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.bfloat16)
        and _ONEDNN
        and layer.weight.dtype == x.dtype
        and not torch.is_grad_enabled()  # the fused oneDNN ops have no backward
        and not torch.is_autocast_enabled("cpu")  # nor autocast's dtype casts
    )


_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact GELU; a channels-last 4-D tensor goes through its flat view (same values, faster kernel)."""
    if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        n, c, h, w = x.shape
        flat = F.gelu(x.permute(0, 2, 3, 1).reshape(-1, c))
        return flat.view(n, h, w, c).permute(0, 3, 1, 2)
    return F.gelu(x)


def _conv_args(conv: nn.Conv2d) -> tuple:
    return conv.weight, conv.bias, conv.padding, conv.stride, conv.dilation, conv.groups


def conv_gelu(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``gelu(conv(x))``, one oneDNN call where possible."""
    if _fusable(conv, x, nn.Conv2d):
        return torch.ops.mkldnn._convolution_pointwise(x, *_conv_args(conv), "gelu", [], "none")
    return gelu(conv(x))


def conv_add_gelu(conv: nn.Module, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``gelu(conv(x) + residual)``: the sum fused into the oneDNN convolution where possible (oneDNN has no
    sum-then-GELU fusion), the GELU on the flat view."""
    layout = (
        torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    )
    if _fusable(conv, x, nn.Conv2d) and residual.is_contiguous(memory_format=layout):
        summed = torch.ops.mkldnn._convolution_pointwise.binary(
            x, residual, *_conv_args(conv), "add", None, None, [], None
        )
        return gelu(summed)
    return gelu(conv(x) + residual)


def linear_gelu(linear: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``gelu(linear(x))``, one oneDNN call where possible."""
    if _fusable(linear, x, nn.Linear):
        return torch.ops.mkldnn._linear_pointwise(x, linear.weight, linear.bias, "gelu", [], "none")
    return F.gelu(linear(x))


def linear_add(linear: nn.Module, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``linear(x) + residual``, one oneDNN call where possible."""
    if _fusable(linear, x, nn.Linear) and residual.is_contiguous():
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, linear.weight, linear.bias, "add")
    return linear(x) + residual


def _mbconv(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    hidden = conv_gelu(block.conv2, conv_gelu(block.conv1, x))
    return conv_add_gelu(block.conv3, hidden, x)


def _patch_merging(merge: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` (any memory format) → tokens ``[B, h*w, C']``."""
    x = conv_gelu(merge.conv2, conv_gelu(merge.conv1, x))
    x = merge.conv3(x)
    return x.flatten(2).transpose(1, 2) if x.is_contiguous() else x.permute(0, 2, 3, 1).flatten(1, 2)


def _window_attention(attn: nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """TinyViT ``Attention`` on ``[windows, N, C]`` with one fused attention call."""
    b, n, _ = windows.shape
    heads, key_dim = attn.num_heads, attn.key_dim
    qkv = attn.qkv(attn.norm(windows)).view(b, n, heads, -1).permute(0, 2, 1, 3)
    q, k, v = qkv.split([key_dim, key_dim, attn.d], dim=-1)
    # the relative-position bias, as TinyViT's own forward takes it: gathered once when put in eval mode
    bias = (
        attn.ab
        if not attn.training and hasattr(attn, "ab")
        else attn.attention_biases[:, attn.attention_bias_idxs]
    )
    # a 4-D mask keeps PyTorch on its fused (flash) CPU kernel; a 3-D one falls back to plain arithmetic
    bias = bias.to(q.dtype)[None]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=attn.scale)
    return attn.proj(out.transpose(1, 2).reshape(b, n, attn.dh))


def _vit_block(block: nn.Module, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """One ``TinyViTBlock`` on tokens ``[B, H*W, C]`` of an ``h`` × ``w`` grid."""
    b, length, c = x.shape
    size = block.window_size
    if h == size and w == size:
        attended = _window_attention(block.attn, x)
    else:
        grid = x.view(b, h, w, c)
        pad_b, pad_r = (size - h % size) % size, (size - w % size) % size
        if pad_b or pad_r:
            grid = F.pad(grid, (0, 0, 0, pad_r, 0, pad_b))
        ph, pw = h + pad_b, w + pad_r
        nh, nw = ph // size, pw // size
        windows = grid.view(b, nh, size, nw, size, c).transpose(2, 3).reshape(b * nh * nw, size * size, c)
        attended = _window_attention(block.attn, windows)
        attended = attended.view(b, nh, nw, size, size, c).transpose(2, 3).reshape(b, ph, pw, c)
        attended = attended[:, :h, :w].reshape(b, length, c)
    x = x + attended
    image = x.view(b, h, w, c).permute(0, 3, 1, 2)  # channels-last view, no copy
    x = block.local_conv(image).permute(0, 2, 3, 1).reshape(b, length, c)
    mlp = block.mlp
    return linear_add(mlp.fc2, linear_gelu(mlp.fc1, mlp.norm(x)), x)


def encode(encoder: nn.Module, image: torch.Tensor, grid: int = 64) -> torch.Tensor:
    """``(B, 3, S, S)`` → ``(B, 256, grid, grid)`` image embedding. At LiteMedSAM's own S = 256 it is what
    ``encoder(image)`` gives; at another S the last stage's features are resized (bilinear) to ``grid`` before
    the neck."""
    seq = encoder.patch_embed.seq
    x = seq[2](conv_gelu(seq[0], image))
    first = encoder.layers[0]
    for block in first.blocks:
        x = _mbconv(block, x)
    x = _patch_merging(first.downsample, x)
    side = math.isqrt(x.shape[1])
    for layer in encoder.layers[1:]:
        for block in layer.blocks:
            x = _vit_block(block, x, side, side)
        if layer.downsample is not None:
            x = _patch_merging(layer.downsample, x.view(x.shape[0], side, side, -1).permute(0, 3, 1, 2))
            side = math.isqrt(x.shape[1])
    b, _, c = x.shape
    features = x.view(b, side, side, c).permute(0, 3, 1, 2)
    if side != grid:
        features = F.interpolate(features, size=(grid, grid), mode="bilinear", align_corners=False)
    return encoder.neck(features)
