"""The mask-prompt decoder: LiteMedSAM's prompt encoder and mask decoder fine-tuned to follow a neighbour slice's
mask in 3D propagation.

LiteMedSAM was trained with boxes only; its dense mask input (SAM's mask prompt) was never trained, so the
neighbour's logits given there did not help the walk (`oncoseg.volume`). `oncoseg.train.mask_prompt` trains a
small LoRA adapter (rank 8 on the decoder's transformer) plus the prompt encoder's mask-downscaling path, the
decoder's mask hypernetwork and its quality head, so that from the box of the neighbour's mask AND the
neighbour's mask (binarised, `binarised`) as dense prompt it gives this slice's mask. The upscaling head is not
trained (it stays the base decoder's). The adapter ships in the package (``weights/mask_prompt.pt``, float16) and is used only for
decodes that carry a mask prompt; box-only decodes keep the base decoder.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING

from oncoseg.errors import ModelError

if TYPE_CHECKING:
    import torch

WEIGHTS = Path(__file__).parent / "weights" / "mask_prompt.pt"
FORMAT = "oncoseg-mask-prompt/1"


def available() -> bool:
    """Whether the package holds the mask-prompt adapter."""
    return WEIGHTS.is_file()


def parts_of(model: torch.nn.Module) -> torch.nn.Module:
    """A module holding copies of ``model``'s ``prompt_encoder`` and ``mask_decoder`` (same names as in the
    model, so adapters trained on it name their tensors as the model does)."""
    from torch import nn

    parts = nn.Module()
    parts.prompt_encoder = copy.deepcopy(model.prompt_encoder)
    parts.mask_decoder = copy.deepcopy(model.mask_decoder)
    return parts.eval()


def base_digest(parts: torch.nn.Module, trained: set[str]) -> str:
    """SHA-256 of the parts' tensors the adapter does not replace (the LoRA layers' base weights included)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(parts.state_dict().items()):
        if name not in trained:
            digest.update(name.encode())
            digest.update(tensor.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def load(model: torch.nn.Module, path: str | Path | None = None) -> torch.nn.Module:
    """``parts_of(model)`` with the adapter at ``path`` (default the shipped `WEIGHTS`) merged into plain layers
    (no peft needed; `fast_decoder` keeps its fast path). Raises ModelError when the file is missing, damaged or
    trained on other base weights than ``model``'s."""
    import torch

    path = WEIGHTS if path is None else Path(path)
    if not path.is_file():
        raise ModelError(f"mask-prompt decoder weights not found: {path.name}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        ok = isinstance(payload, dict) and payload.get("format") == FORMAT
        lora, tensors, scale = payload["lora"], payload["tensors"], float(payload["scale"])
    except Exception as error:  # noqa: BLE001 - a damaged file can fail in many ways
        raise ModelError(
            f"cannot read mask-prompt decoder weights {path.name}: {type(error).__name__}"
        ) from None
    if not ok:
        raise ModelError(f"{path.name} is not a mask-prompt decoder adapter ({FORMAT})")
    parts = parts_of(model)
    state = parts.state_dict()
    unknown = [k for k in [*tensors, *(f"{n}.weight" for n in lora)] if k not in state]
    if unknown:
        raise ModelError(f"{path.name} does not fit LiteMedSAM's decoder ({len(unknown)} unknown tensors)")
    if base_digest(parts, set(tensors)) != payload.get("base_digest"):
        raise ModelError(f"{path.name} was trained on other base weights than this model's")
    with torch.no_grad():
        for name, (a, b) in lora.items():
            weight = state[f"{name}.weight"]
            weight += scale * (b.float() @ a.float())
        for name, value in tensors.items():
            state[name].copy_(value.float())
    for parameter in parts.parameters():
        parameter.requires_grad_(False)
    level = float(payload.get("dense_level", 0.0))
    if level:  # the adapter reads the neighbour's mask as +-level, not its raw logits
        encoder = parts.prompt_encoder
        encoder.mask_downscaling = binarised(level, encoder.mask_downscaling)
    return parts.eval()


def binarised(level: float, inner: torch.nn.Module) -> torch.nn.Module:
    """``inner`` reading its input as ``+level`` where it is positive and ``-level`` elsewhere."""
    import torch
    from torch import nn

    class Binarised(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, masks: torch.Tensor) -> torch.Tensor:
            return self.inner(torch.where(masks > 0, level, -level).to(masks.dtype))

    return Binarised()
