"""`FrameTransform`: the one mapping between an image's pixel grid and a model's square input frame.

Every backend owns one. It answers, for an image of ``original_size`` (H, W):

* where the image lands in the ``size`` × ``size`` frame (`input_size`): LiteMedSAM resizes the longest side to
  256 keeping the aspect ratio and pads the bottom/right (``keep_aspect=True``); SAM3 stretches the image to its
  square input (``keep_aspect=False``);
* prompts in the model's frame: `apply_coords` (points, ``[..., 2]`` as x, y) and `apply_boxes` (``[..., 4]`` as
  x0, y0, x1, y1), and back (`undo_coords`, `undo_boxes`);
* the image itself in the frame (`image_to_frame`, torch);
* mask logits from the model's (possibly lower-resolution) frame back onto the image grid (`logits_to_image`),
  and the logit pixel a click falls on (`logit_pixels`).

Numbers only here (no torch until a tensor method is called), so `oncoseg.models` stays light to import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class FrameTransform:
    """Image pixels ↔ a ``size`` × ``size`` model frame (see the module docstring)."""

    size: int
    keep_aspect: bool = (
        True  # True: longest side to ``size``, padded bottom/right; False: stretched to square
    )

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"the model frame must be a positive number of pixels, got {self.size!r}")

    # -- sizes ----------------------------------------------------------------------------------------------
    def scale(self, original_size: tuple[int, int]) -> tuple[float, float]:
        """``(sx, sy)``: frame pixels per image pixel along x (columns) and y (rows)."""
        h, w = _checked(original_size)
        if self.keep_aspect:
            factor = self.size / max(h, w)
            return factor, factor
        return self.size / w, self.size / h

    def input_size(self, original_size: tuple[int, int]) -> tuple[int, int]:
        """``(h, w)``: the part of the frame the resized image fills (the rest is padding)."""
        h, w = _checked(original_size)
        if not self.keep_aspect:
            return self.size, self.size
        factor = self.size / max(h, w)
        return max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5))

    # -- prompts --------------------------------------------------------------------------------------------
    def apply_coords(self, coords: Any, original_size: tuple[int, int]) -> Any:
        """Points ``[..., 2]`` (x, y) in image pixels → the model frame (an array or tensor like the one given)."""
        sx, sy = self.scale(original_size)
        return _times(coords, (sx, sy))

    def undo_coords(self, coords: Any, original_size: tuple[int, int]) -> Any:
        """Points ``[..., 2]`` in the model frame → image pixels."""
        sx, sy = self.scale(original_size)
        return _times(coords, (1.0 / sx, 1.0 / sy))

    def apply_boxes(self, boxes: Any, original_size: tuple[int, int]) -> Any:
        """Boxes ``[..., 4]`` (x0, y0, x1, y1) in image pixels → the model frame."""
        sx, sy = self.scale(original_size)
        return _times(boxes, (sx, sy, sx, sy))

    def undo_boxes(self, boxes: Any, original_size: tuple[int, int]) -> Any:
        """Boxes ``[..., 4]`` in the model frame → image pixels."""
        sx, sy = self.scale(original_size)
        return _times(boxes, (1.0 / sx, 1.0 / sy, 1.0 / sx, 1.0 / sy))

    def logit_pixels(
        self, coords: Any, original_size: tuple[int, int], logit_size: int | None = None
    ) -> tuple[list[int], list[int]]:
        """Rows and columns of the points ``[..., 2]`` (image pixels) in a ``logit_size`` × ``logit_size`` grid
        of mask logits covering the frame (default: the frame itself), rounded and kept inside the grid."""
        logit_size = self.size if logit_size is None else logit_size
        framed = np.asarray(self.apply_coords(np.asarray(coords, dtype=np.float64), original_size))
        framed = framed.reshape(-1, 2)
        if logit_size != self.size:
            framed = framed * (logit_size / self.size)
        last = logit_size - 1
        cols = [min(last, max(0, round(float(x)))) for x in framed[:, 0]]
        rows = [min(last, max(0, round(float(y)))) for y in framed[:, 1]]
        return rows, cols

    # -- pixels (torch) -------------------------------------------------------------------------------------
    def resize(self, image, antialias: bool | None = None):
        """A ``[C, H, W]`` or ``[B, C, H, W]`` float tensor resized (bilinear) to `input_size`, unpadded.
        ``antialias`` defaults to smoothing only when shrinking."""
        import torch.nn.functional as F

        batched = image.ndim == 4
        tensor = image if batched else image[None]
        original = (int(tensor.shape[-2]), int(tensor.shape[-1]))
        h, w = self.input_size(original)
        if antialias is None:
            antialias = h < original[0] or w < original[1]
        resized = F.interpolate(tensor, (h, w), mode="bilinear", align_corners=False, antialias=antialias)
        return resized if batched else resized[0]

    def image_to_frame(self, image, antialias: bool | None = None):
        """A ``[C, H, W]`` or ``[B, C, H, W]`` float tensor in the ``size`` × ``size`` frame: `resize`, then zero
        padding at the bottom and right."""
        import torch.nn.functional as F

        resized = self.resize(image, antialias)
        h, w = resized.shape[-2:]
        if (h, w) == (self.size, self.size):
            return resized
        return F.pad(resized, (0, self.size - w, 0, self.size - h))

    def logits_to_image(self, logits, original_size: tuple[int, int]):
        """Mask logits ``[..., L, L]`` over the frame (any resolution L) → ``[..., H, W]`` on the image grid: the
        padding cropped off, then bilinear resizing (a float tensor; threshold at 0 for the mask)."""
        import torch.nn.functional as F

        h, w = _checked(original_size)
        grid = logits.shape[-1]
        if logits.shape[-2] != grid:
            raise ValueError(f"mask logits must be square over the model frame, got {tuple(logits.shape)}")
        inner_h, inner_w = self.input_size((h, w))
        if grid != self.size:  # the image's part of a lower-resolution grid
            inner_h = max(1, min(grid, round(inner_h * grid / self.size)))
            inner_w = max(1, min(grid, round(inner_w * grid / self.size)))
        lead = logits.shape[:-2]
        flat = logits[..., :inner_h, :inner_w].reshape(-1, 1, inner_h, inner_w).float()
        full = F.interpolate(flat, (h, w), mode="bilinear", align_corners=False)
        return full.reshape(*lead, h, w)


def _checked(original_size) -> tuple[int, int]:
    h, w = (int(v) for v in original_size)
    if h < 1 or w < 1:
        raise ValueError(f"an image must have at least one pixel each way, got size {tuple(original_size)}")
    return h, w


def _times(values: Any, factors: tuple[float, ...]) -> Any:
    """``values[..., i] * factors[i]`` for numpy arrays or torch tensors; a floating-point input keeps its dtype
    (and device), anything else becomes float64 (numpy) or float32 (torch)."""
    if hasattr(values, "new_tensor"):  # a torch tensor
        values = values if values.is_floating_point() else values.float()
        if values.shape[-1:] != (len(factors),):
            raise ValueError(f"expected [..., {len(factors)}] coordinates, got shape {tuple(values.shape)}")
        return values * values.new_tensor(factors)
    array = np.asarray(values)
    array = array if np.issubdtype(array.dtype, np.floating) else array.astype(np.float64)
    if array.shape[-1:] != (len(factors),):
        raise ValueError(f"expected [..., {len(factors)}] coordinates, got shape {array.shape}")
    return array * np.asarray(factors, dtype=array.dtype)
