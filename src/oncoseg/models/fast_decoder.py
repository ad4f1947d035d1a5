"""An inference-only evaluation of SAM's prompt → mask decoder that gives the same numbers as
``MaskDecoder.forward(..., multimask_output=False)`` but runs several times faster on a CPU.

It reads the weights of the model's own ``mask_decoder`` (so fine-tuned or LoRA-merged weights are used as they
are) and changes only how the arithmetic is laid out:

* image tokens stay in one contiguous ``[N, 4096, 256]`` layout throughout (the reference adds positional
  encodings to transposed views, which costs more than the matrix products);
* attention softmaxes run along the long axis of the score matrix;
* in the attentions between the few prompt tokens and the 4096 image tokens, the projections on the image side
  are folded into the prompt side (exact algebra, about half the multiply-adds);
* the work that does not depend on the prompt (image tokens, the first layer's keys and values for the
  token → image attention) is computed once per image embedding and cached on it;
* the two 2×2-stride transposed convolutions of the upscaling head become matrix products on the token layout;
* only the single-mask output head is evaluated (the one ``multimask_output=False`` returns).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

SMALL_KEY_COUNT = 64


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    n, tokens, channels = x.shape
    return x.view(n, tokens, heads, channels // heads).transpose(1, 2)


def _attend(
    attention: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, projected_kv=None
) -> torch.Tensor:
    """One SAM ``Attention`` layer (projections, multi-head attention, output projection)."""
    heads = attention.num_heads
    query = _heads(attention.q_proj(q), heads)
    if projected_kv is None:
        key, value = _heads(attention.k_proj(k), heads), _heads(attention.v_proj(v), heads)
    else:
        key, value = projected_kv
    scale = query.shape[-1] ** -0.5
    if key.shape[0] == 1 < query.shape[0]:  # keys shared by every prompt: all queries in one batch
        n, _, tokens, d = query.shape
        shared = query.transpose(0, 1).reshape(1, heads, n * tokens, d)
        out = F.scaled_dot_product_attention(shared, key, value).view(heads, n, tokens, d).transpose(0, 1)
    elif key.shape[-2] <= SMALL_KEY_COUNT:
        # Image → token attention, thousands of queries over a handful of keys: a softmax along the short axis of
        # the [keys, queries] score matrix is ~15x faster on a CPU than along the last axis of [queries, keys].
        weights = torch.softmax((key @ query.transpose(-1, -2)) * scale, dim=-2)
        out = weights.transpose(-1, -2) @ value
    else:
        out = F.scaled_dot_product_attention(query, key, value)
    n, _, tokens, _ = out.shape
    return attention.out_proj(out.transpose(1, 2).reshape(n, tokens, -1))


def _plain(*layers: nn.Module) -> bool:
    """Whether the layers are plain ``nn.Linear`` (their weights can be folded into the attention arithmetic)."""
    return all(type(layer) is nn.Linear for layer in layers)


def _token_to_image(attention: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """A SAM ``Attention`` from a few prompt tokens ``q`` to the thousands of image tokens ``k``/``v``, without
    projecting the image tokens: ``q·(K W_k)ᵀ = (q W_k)·Kᵀ`` (the key bias adds the same to every score of a row,
    which the softmax ignores), and ``A (V W_vᵀ + b) = (A V) W_vᵀ + b`` since each row of ``A`` sums to 1. Half
    the multiply-adds of projecting 4096 keys and values. Image tokens of batch 1 are shared by every prompt."""
    n = q.shape[0]
    if not _plain(attention.k_proj, attention.v_proj):
        return _attend(attention, q, k.expand(n, -1, -1), v.expand(n, -1, -1))
    heads = attention.num_heads
    query = _heads(attention.q_proj(q), heads)  # [N, H, T, d]
    _, _, tokens, d = query.shape
    length, channels = k.shape[1], k.shape[-1]
    folded = torch.matmul(query, attention.k_proj.weight.view(heads, d, channels))  # [N, H, T, C]
    folded = folded.reshape(n, heads * tokens, channels)
    if k.shape[0] == 1 < n:  # one product for all prompts: [N*H*T, C] x [C, HW], then x [HW, C]
        scores = torch.mm(folded.view(-1, channels), k[0].t()).view(n, heads * tokens, length)
        weights = torch.softmax(scores * d**-0.5, dim=-1)
        mixed = torch.mm(weights.view(-1, length), v[0]).view(n, heads, tokens, channels)
    else:
        weights = torch.softmax(torch.bmm(folded, k.transpose(1, 2)) * d**-0.5, dim=-1)
        mixed = torch.bmm(weights, v).view(n, heads, tokens, channels)  # [N, H, T, C]
    weight_v = attention.v_proj.weight.view(heads, d, channels).transpose(1, 2)  # [H, C, d]
    out = torch.matmul(mixed, weight_v) + attention.v_proj.bias.view(heads, 1, d)
    return attention.out_proj(out.transpose(1, 2).reshape(n, tokens, heads * d))


def _image_to_token(
    attention: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, residual: torch.Tensor
) -> torch.Tensor:
    """``residual`` + a SAM ``Attention`` from the thousands of image tokens ``q`` to a few prompt tokens
    ``k``/``v``, without projecting the image tokens in or out: the query projection is folded into the keys
    (``(q W_qᵀ + b)·kᵀ``) and the output projection into the values. Half the multiply-adds of the two 4096-token
    projections. Image tokens (``q``, ``residual``) of batch 1 are shared by every prompt: one matrix product
    serves them all, and the residual sum is done by the last product."""
    if not _plain(attention.q_proj, attention.out_proj):
        n = k.shape[0]
        return residual + _attend(attention, q.expand(n, -1, -1), k, v)
    heads = attention.num_heads
    key, value = _heads(attention.k_proj(k), heads), _heads(attention.v_proj(v), heads)  # [N, H, T, d]
    n, _, tokens, d = key.shape
    length, channels = q.shape[1], q.shape[-1]
    weight_q = attention.q_proj.weight.view(heads, d, channels)
    folded = torch.matmul(key, weight_q).reshape(n, heads * tokens, channels)  # [N, H*T, C]
    offset = (key * attention.q_proj.bias.view(1, heads, 1, d)).sum(-1).reshape(n, heads * tokens, 1)
    if q.shape[0] == 1 < n:  # shared image tokens: [N*H*T, C] x [C, HW] in one product
        scores = torch.mm(folded.reshape(-1, channels), q[0].t()).view(n, heads * tokens, length) + offset
    else:
        scores = torch.baddbmm(offset, folded, q.transpose(1, 2))  # [N, H*T, HW]
    # softmax over each head's few keys, along the short axis of the [keys, queries] layout (fast on a CPU)
    scores = scores.view(n, heads, tokens, length)
    weights = torch.softmax(scores * d**-0.5, dim=2).view(n, heads * tokens, length)
    weight_out = attention.out_proj.weight.view(channels, heads, d).permute(1, 2, 0)  # [H, d, C]
    projected = torch.matmul(value, weight_out).reshape(n, heads * tokens, channels)  # [N, H*T, C]
    start = (residual + attention.out_proj.bias).expand(n, length, channels)
    return torch.baddbmm(start, weights.transpose(1, 2), projected)


def image_state(
    decoder: nn.Module, features: torch.Tensor, image_pe: torch.Tensor, no_mask: torch.Tensor
) -> dict:
    """Everything the decoder needs from one image that no prompt changes."""
    tokens = features.flatten(2).transpose(1, 2).contiguous()  # [1, HW, C]
    keys = tokens + no_mask.flatten(2).transpose(1, 2)
    key_pe = image_pe.flatten(2).transpose(1, 2).contiguous()
    first = decoder.transformer.layers[0].cross_attn_token_to_image
    heads = first.num_heads
    kv = (_heads(first.k_proj(keys + key_pe), heads), _heads(first.v_proj(keys), heads))
    return {"features": tokens, "keys": keys, "key_pe": key_pe, "first_kv": kv, "size": features.shape[-2:]}


def decode(
    decoder: nn.Module,
    state: dict[str, Any],
    sparse: torch.Tensor,
    dense: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Low-resolution mask logits ``[N, 1, 4h, 4w]`` and quality scores ``[N, 1]`` for ``N`` sparse prompts.

    ``dense`` is the dense prompt embedding when a mask prompt was given (``None`` means SAM's "no mask" embedding,
    already folded into ``state``)."""
    outcome = decode_tokens(decoder, state, sparse, dense)
    return upscale(decoder, outcome), outcome.scores


class Decoded(NamedTuple):
    """The two-way transformer's output for ``N`` prompts, before the upscaling head: image tokens
    ``[N, h*w, C]``, the mask tokens' hypernetwork vectors ``[N, C/8]``, quality scores ``[N, 1]``, and the token
    grid's ``(h, w)``."""

    tokens: torch.Tensor
    hyper: torch.Tensor
    scores: torch.Tensor
    size: tuple[int, int]
    smoothed: bool = False  # for the caller: whether its logits get smoothed (a flag carried along)
    # per prompt: the token rows r0:r1 and columns c0:c1 that can hold its mask (None: anywhere)
    regions: tuple[tuple[int, int, int, int], ...] | None = None

    def pick(self, index: int) -> Decoded:
        """Prompt ``index`` alone."""
        one = slice(index, index + 1)
        regions = None if self.regions is None else self.regions[one]
        return self._replace(
            tokens=self.tokens[one], hyper=self.hyper[one], scores=self.scores[one], regions=regions
        )


OUTSIDE_LOGIT = -30.0  # about the decoder's own logits far from an object (-15 to -37 on a CT liver slice)


def upscale(decoder: nn.Module, decoded: Decoded) -> torch.Tensor:
    """Low-resolution mask logits ``[N, 1, 4h, 4w]``. With ``regions``, only the tokens of their union go through
    the upscaling head (each token makes its own 4×4 pixels, so they are exact there) and the rest is
    ``OUTSIDE_LOGIT``: a box prompt's mask stays near its box, and a box over a quarter of the image upscales 3×
    faster."""
    if decoded.regions is None:
        return _upscale_and_project(decoder, decoded.tokens, decoded.hyper, decoded.size)[:, None]
    r0, c0 = (min(r[i] for r in decoded.regions) for i in (0, 2))
    r1, c1 = (max(r[i] for r in decoded.regions) for i in (1, 3))
    (h, w), (n, _, channels) = decoded.size, decoded.tokens.shape
    part = decoded.tokens.view(n, h, w, channels)[:, r0:r1, c0:c1].reshape(n, -1, channels)
    inside = _upscale_and_project(decoder, part, decoded.hyper, (r1 - r0, c1 - c0))
    logits = inside.new_full((n, 4 * h, 4 * w), OUTSIDE_LOGIT)
    logits[:, 4 * r0 : 4 * r1, 4 * c0 : 4 * c1] = inside
    return logits[:, None]


def logits_at(decoder: nn.Module, decoded: Decoded, rows, cols, radius: int = 0) -> torch.Tensor:
    """``[N, len(rows)]``: the logit at each low-resolution pixel ``(row, col)``, or with ``radius`` r the mean over
    its (2r+1)² neighbourhood clipped at the border (``avg_pool2d(..., count_include_pad=False)``), without
    upscaling the whole image: only the few tokens under each neighbourhood go through the head."""
    h, w = decoded.size
    n, _, channels = decoded.tokens.shape
    grid = decoded.tokens.view(n, h, w, channels)
    values = []
    for row, col in zip(rows, cols):
        r0, r1 = max(0, row - radius), min(4 * h - 1, row + radius)
        c0, c1 = max(0, col - radius), min(4 * w - 1, col + radius)
        i0, j0 = r0 // 4, c0 // 4
        part = grid[:, i0 : r1 // 4 + 1, j0 : c1 // 4 + 1]
        patch = _upscale_and_project(decoder, part.reshape(n, -1, channels), decoded.hyper, part.shape[1:3])
        window = patch[:, r0 - 4 * i0 : r1 - 4 * i0 + 1, c0 - 4 * j0 : c1 - 4 * j0 + 1]
        values.append(window.float().mean(dim=(1, 2)))
    return torch.stack(values, dim=1) if values else torch.zeros((n, 0))


def decode_tokens(
    decoder: nn.Module,
    state: dict[str, Any],
    sparse: torch.Tensor,
    dense: torch.Tensor | None = None,
) -> Decoded:
    """The decoder up to (not including) its upscaling head; see `decode`."""
    transformer = decoder.transformer
    n = sparse.shape[0]
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    query_pe = torch.cat([output_tokens[None].expand(n, -1, -1), sparse], dim=1)
    queries = query_pe
    keys, key_pe, first_kv = state["keys"], state["key_pe"], state["first_kv"]
    if dense is not None:  # a mask prompt: its own dense embedding instead of "no mask"
        keys = state["features"] + dense.flatten(2).transpose(1, 2)
        first_kv = None
    # image tokens stay one shared batch of 1 until the first layer's image -> token attention makes them differ

    for index, layer in enumerate(transformer.layers):
        if layer.skip_first_layer_pe:
            queries = layer.norm1(_attend(layer.self_attn, queries, queries, queries))
        else:
            q = queries + query_pe
            queries = layer.norm1(queries + _attend(layer.self_attn, q, q, queries))
        keys_pe = keys + key_pe  # used by both cross attentions of this layer
        if index == 0 and first_kv is not None:
            attended = _attend(layer.cross_attn_token_to_image, queries + query_pe, None, None, first_kv)
        else:
            attended = _token_to_image(layer.cross_attn_token_to_image, queries + query_pe, keys_pe, keys)
        queries = layer.norm2(queries + attended)
        queries = layer.norm3(queries + layer.mlp(queries))
        keys = layer.norm4(
            _image_to_token(layer.cross_attn_image_to_token, keys_pe, queries + query_pe, queries, keys)
        )
    keys = keys.expand(n, -1, -1)

    final = _token_to_image(transformer.final_attn_token_to_image, queries + query_pe, keys + key_pe, keys)
    queries = transformer.norm_final_attn(queries + final)

    scores = decoder.iou_prediction_head(queries[:, 0])[:, :1]
    hyper = decoder.output_hypernetworks_mlps[0](queries[:, 1])  # [N, C/8]
    return Decoded(keys, hyper, scores, (int(state["size"][0]), int(state["size"][1])))


def _upscale_and_project(decoder: nn.Module, tokens: torch.Tensor, hyper: torch.Tensor, size) -> torch.Tensor:
    """``hyper · upscale(tokens)`` for each prompt: ``[N, h*w, C]`` image tokens (a grid of any size) →
    ``[N, 4h, 4w]`` logits.

    Each 2×2-stride transposed convolution maps one pixel to a 2×2 block, i.e. one matrix product per pixel."""
    deconv1, norm, act1, deconv2, act2 = decoder.output_upscaling
    h, w = int(size[0]), int(size[1])
    n = tokens.shape[0]
    c_in, c_mid = deconv1.weight.shape[:2]
    c_out = deconv2.weight.shape[1]
    w1 = deconv1.weight.permute(0, 2, 3, 1).reshape(c_in, 4 * c_mid)  # [in, (a, b, out)]
    hidden = torch.addmm(deconv1.bias.repeat(4), tokens.reshape(-1, c_in), w1).view(-1, c_mid)
    hidden = act1(F.layer_norm(hidden, (c_mid,), norm.weight, norm.bias, norm.eps))
    w2 = deconv2.weight.permute(0, 2, 3, 1).reshape(c_mid, 4 * c_out)  # [mid, (c, d, out)]
    upscaled = act2(torch.addmm(deconv2.bias.repeat(4), hidden, w2)).view(n, h * w * 16, c_out)
    logits = torch.bmm(upscaled, hyper[:, :, None])  # [N, (i, j, a, b, c, d), 1]
    return _pixel_order(logits, n, h, w)


def _pixel_order(logits: torch.Tensor, n: int, h: int, w: int) -> torch.Tensor:
    """``[N, (i, j, a, b), (c, d)]`` → ``[N, 4h, 4w]`` with row ``4i + 2a + c`` and column ``4j + 2b + d``."""
    grid = logits.view(n, h, w, 2, 2, 2, 2)  # n, i, j, a, b, c, d
    return grid.permute(0, 1, 3, 5, 2, 4, 6).reshape(n, 4 * h, 4 * w)
