"""Overlay pictures: the image slice with each object's mask tinted and outlined and its RECIST long axis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from oncoseg.errors import OncoSegError
from oncoseg.io.write import OutputFiles, check_output_path

MIN_SIZE = 384
COLOURS = [(255, 64, 64), (64, 200, 255), (255, 210, 0), (120, 255, 120), (255, 120, 255), (255, 150, 40)]


def render_overlay(
    pixels: np.ndarray,
    labels: np.ndarray,
    axes: list[tuple[tuple[float, float], tuple[float, float]] | None] | None = None,
    alpha: float = 0.35,
) -> Image.Image:
    """``pixels``: ``[H, W]`` or ``[H, W, 3]`` in [0, 1]; ``labels``: ``[H, W]`` ints (0 = background, object i
    has label i); ``axes``: per object an optional pair of ``(x, y)`` endpoints to draw as its long axis.
    Small images (a CT downsampled, an MRI crop) are enlarged by a whole factor so the result is at least
    ``MIN_SIZE`` pixels on its longer side."""
    zoom = max(1, -(-MIN_SIZE // max(labels.shape)))
    if zoom > 1:
        pixels = pixels.repeat(zoom, axis=0).repeat(zoom, axis=1)
        labels = labels.repeat(zoom, axis=0).repeat(zoom, axis=1)
    rgb = pixels if pixels.ndim == 3 else np.repeat(pixels[..., None], 3, axis=2)
    canvas = (np.clip(rgb, 0, 1) * 255).astype(np.float32)
    for label in range(1, int(labels.max()) + 1):
        mask = labels == label
        if not mask.any():
            continue
        colour = np.array(COLOURS[(label - 1) % len(COLOURS)], np.float32)
        canvas[mask] = (1 - alpha) * canvas[mask] + alpha * colour
        edge = mask & ~ndimage.binary_erosion(mask, iterations=max(1, zoom // 2))
        canvas[edge] = 0.3 * canvas[edge] + 0.7 * np.array((255, 255, 80), np.float32)
    picture = Image.fromarray(canvas.astype(np.uint8))
    if axes:
        draw = ImageDraw.Draw(picture)
        for label, axis in enumerate(axes, start=1):
            if axis is not None:
                (xa, ya), (xb, yb) = axis
                ends = [((xa + 0.5) * zoom, (ya + 0.5) * zoom), ((xb + 0.5) * zoom, (yb + 0.5) * zoom)]
                draw.line(ends, fill=(255, 255, 255), width=max(1, zoom // 2))
    return picture


def check_overlay_path(path: str | Path) -> Path:
    """Raise OncoSegError now if the overlay cannot be written to ``path`` (not .png, a folder, unwritable)."""
    path = Path(path)
    if not path.name.lower().endswith(".png"):
        raise OncoSegError(f"{path}: the overlay is a picture; give a .png file name")
    return check_output_path(path, "overlay")


def save_overlay(picture: Image.Image, path: str | Path, outputs: OutputFiles | None = None) -> Path:
    """Write a PNG atomically (never a partial file); with ``outputs`` as part of that transaction."""
    if outputs is None:
        with OutputFiles() as own:
            return save_overlay(picture, path, own)
    return outputs.write(path, lambda tmp: picture.save(tmp, format="PNG"))
