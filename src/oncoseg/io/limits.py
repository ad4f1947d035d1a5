"""`ReadLimits` and the checks `load_image` makes before allocating pixels and after reading geometry."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from oncoseg.errors import ImageReadError, ImageTooLargeError


@dataclass(frozen=True)
class ReadLimits:
    """What `load_image` accepts from a file, checked against the header before any pixels are read.

    ``max_voxels`` counts spatial voxels x channels (x frames); ``max_bytes`` bounds the decoded pixel bytes and
    how far a compressed stream may inflate. ``external_data=False`` refuses any header naming a separate data
    file; with True a detached header may only name a plain file next to it.
    """

    max_voxels: int = 2**30
    max_bytes: int = 8 * 2**30
    external_data: bool = True


DEFAULT_LIMITS = ReadLimits()


def check_declared_size(name: str, shape: Sequence[int], itemsize: int, limits: ReadLimits) -> int:
    """Raise unless ``shape`` (every axis, channels included) of ``itemsize``-byte samples fits ``limits``;
    return the declared number of bytes."""
    shape = [int(n) for n in shape]
    dims = " x ".join(str(n) for n in shape)
    if not shape or any(n <= 0 for n in shape):
        raise ImageReadError(f"{name}: header declares an empty or negative size ({dims})")
    voxels = math.prod(shape)
    nbytes = voxels * max(int(itemsize), 1)
    if voxels > limits.max_voxels:
        raise ImageTooLargeError(
            f"{name}: header declares {dims} = {voxels:,} voxels, over the limit of {limits.max_voxels:,}"
        )
    if nbytes > limits.max_bytes:
        raise ImageTooLargeError(
            f"{name}: header declares {dims} voxels of {itemsize} byte(s) = {nbytes:,} bytes, "
            f"over the limit of {limits.max_bytes:,}"
        )
    return nbytes


def check_geometry(name: str, spacing, origin, direction) -> None:
    """Raise unless spacing is finite and > 0, origin finite and direction a finite, non-degenerate matrix."""
    spacing, origin = np.asarray(spacing, float), np.asarray(origin, float)
    direction = np.asarray(direction, float)
    if not (np.all(np.isfinite(spacing)) and np.all(spacing > 0)):
        raise ImageReadError(f"{name}: bad geometry: spacing {_show(spacing)} is not finite and > 0")
    if not np.all(np.isfinite(origin)):
        raise ImageReadError(f"{name}: bad geometry: origin {_show(origin)} is not finite")
    n = len(spacing)
    if direction.size != n * n or not np.all(np.isfinite(direction)):
        raise ImageReadError(f"{name}: bad geometry: direction {_show(direction)} is not a finite matrix")
    if abs(np.linalg.det(direction.reshape(n, n))) < 1e-3:
        raise ImageReadError(f"{name}: bad geometry: direction {_show(direction)} is degenerate")


def _show(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in np.ravel(values)) + ")"
