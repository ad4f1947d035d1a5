"""Binary slice ↔ closed planar polygons, in ``(row, column)`` pixel coordinates.

Every boundary of a slice (outer edges of each island and the edges of each hole) becomes one closed polygon
traced on the half-pixel lattice (marching squares at level 0.5), so no pixel centre lies on a polygon edge.
Filling all polygons of a slice with the even-odd rule (XOR) gives back exactly the original pixels.
"""

from __future__ import annotations

import numpy as np


def mask_to_polygons(frame: np.ndarray) -> list[np.ndarray]:
    """Closed polygons ``(n, 2)`` of ``(row, column)`` (last point not repeated) around a 2D bool mask."""
    if not frame.any():
        return []
    from oncoseg.dicom.reference import require

    find_contours = require("skimage.measure", "scikit-image").find_contours
    rows, cols = np.flatnonzero(frame.any(axis=1)), np.flatnonzero(frame.any(axis=0))
    crop = frame[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    padded = np.pad(crop.astype(np.float32), 1)  # closes contours that touch the image border
    offset = np.array([rows[0] - 1.0, cols[0] - 1.0])
    polygons = []
    for contour in find_contours(padded, 0.5):
        points = _drop_collinear(contour[:-1] + offset)
        if len(points) >= 3:
            polygons.append(points)
    return polygons


def _drop_collinear(points: np.ndarray) -> np.ndarray:
    """Remove vertices that lie on the straight line through their neighbours (the shape stays the same)."""
    before = points - np.roll(points, 1, axis=0)
    after = np.roll(points, -1, axis=0) - points
    cross = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    keep = np.abs(cross) > 1e-9
    return points[keep] if keep.sum() >= 3 else points


def polygons_to_mask(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Rasterise closed polygons of ``(row, column)`` onto a 2D grid with the even-odd rule (holes and
    nested islands given as separate polygons come out right); a pixel is in when its centre is inside.

    Scan-line fill: every polygon edge toggles, on each pixel row it crosses, the first pixel whose centre lies
    right of the crossing; a running XOR along each row then marks the inside.
    """
    rows, cols = shape
    edges = [
        np.concatenate([p, np.roll(p, -1, axis=0)], axis=1) for p in polygons if len(p) >= 3
    ]  # (r0, c0, r1, c1)
    if not edges:
        return np.zeros(shape, dtype=bool)
    r0, c0, r1, c1 = np.concatenate(edges).T
    mask = np.zeros(shape, dtype=bool)
    # Work on the polygons' bounding box only: no pixel outside it is inside.
    top = int(np.clip(np.ceil(min(r0.min(), r1.min())), 0, rows))
    bottom = int(np.clip(np.ceil(max(r0.max(), r1.max())), 0, rows))
    left = int(np.clip(np.ceil(min(c0.min(), c1.min())), 0, cols))
    right = int(np.clip(np.ceil(max(c0.max(), c1.max())), 0, cols))
    height, width = bottom - top, right - left
    if height <= 0 or width <= 0:
        return mask
    low, high = np.minimum(r0, r1), np.maximum(r0, r1)
    first = np.clip(np.ceil(low), top, bottom).astype(np.int64)  # rows r with low <= r < high
    counts = np.clip(np.ceil(high), top, bottom).astype(np.int64) - first
    keep = counts > 0
    r0, c0, r1, c1, first, counts = (a[keep] for a in (r0, c0, r1, c1, first, counts))
    edge = np.repeat(np.arange(len(counts)), counts)
    row = first[edge] + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
    x = c0[edge] + (row - r0[edge]) * (c1[edge] - c0[edge]) / (r1[edge] - r0[edge])
    col = np.clip(np.ceil(x), left, right).astype(np.int64) - left  # == width: right of the box
    flat = (row - top) * (width + 1) + col
    toggles = np.bincount(flat, minlength=height * (width + 1)).reshape(height, width + 1)
    mask[top:bottom, left:right] = np.cumsum(toggles[:, :width], axis=1) % 2 == 1
    return mask
