"""What Onco-Seg shows a person: CT display presets, slice pictures, overlays, and masks as polygons.

Display windows live here, in `CT_PRESETS` (the service, its web page through ``/api/windows``, napari and the
overlays all read this one table). The model-input intensity windows that normalise CT for the network are a
different thing and stay in `oncoseg.preprocess.normalize` (``CT_WINDOWS``).

Masks become polygons in one place, `mask_to_polygons`: the service's outlines and the RTSTRUCT writer both
call it, each naming the axis order it wants (``"rc"`` = ``(row, column)``, ``"xy"`` = ``(column, row)``).
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image

from oncoseg.errors import OncoSegError

if TYPE_CHECKING:
    from oncoseg.io.write import OutputFiles

# --- display windows ------------------------------------------------------------------------------------------

CT_PRESETS: dict[str, tuple[float, float]] = {  # name → (centre, width) in HU
    "soft-tissue": (40.0, 400.0),
    "liver": (60.0, 160.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}
DEFAULT_CT_PRESET = "soft-tissue"
AUTO = "auto"  # the slice's 1st-99th percentile stretch


def preset_limits(name: str) -> tuple[float, float]:
    """``(low, high)`` HU of CT preset ``name`` (a key of `CT_PRESETS`)."""
    centre, width = CT_PRESETS[name]
    return centre - width / 2, centre + width / 2


def window_limits(window: str) -> tuple[float, float]:
    """``(low, high)`` of a preset name or a ``"CENTRE,WIDTH"`` string; OncoSegError for anything else."""
    if window in CT_PRESETS:
        return preset_limits(window)
    match = re.fullmatch(r"(-?\d+(?:\.\d+)?),(\d+(?:\.\d+)?)", window)
    if not match or float(match.group(2)) <= 0:
        raise OncoSegError(
            f"unknown window {window!r}: use one of {', '.join([AUTO, *CT_PRESETS])} or CENTRE,WIDTH"
        )
    centre, width = float(match.group(1)), float(match.group(2))
    return centre - width / 2, centre + width / 2


def window_slice(pixels: np.ndarray, channels: int, window: str) -> np.ndarray:
    """8-bit picture of a slice. ``window``: a name of `CT_PRESETS`, ``"CENTRE,WIDTH"``, or ``"auto"`` (the
    1st-99th percentile stretch); colour images (``channels > 1``) keep their own 0-255 or 0-1 range."""
    pixels = np.asarray(pixels, dtype=np.float32)
    if channels > 1:
        low, high = float(np.nanmin(pixels)), float(np.nanmax(pixels))
        if high <= 255 and low >= 0:
            low, high = 0.0, 255.0 if high > 1 else 1.0
    elif window == AUTO:
        low, high = (float(v) for v in np.nanpercentile(pixels, [1, 99]))
    else:
        low, high = window_limits(window)
    scaled = (np.nan_to_num(pixels, nan=low) - low) / max(high - low, 1e-6)
    picture = (np.clip(scaled, 0, 1) * 255).astype(np.uint8)
    return picture[..., :3] if channels > 1 else picture


# --- overlays ------------------------------------------------------------------------------------------------

FILL = (255, 64, 64, 90)  # mask_rgba: tinted fill and opaque outline (RGBA)
EDGE = (255, 255, 80, 255)
MIN_SIZE = 384  # render_overlay enlarges smaller images to at least this many pixels on the longer side
COLOURS = [(255, 64, 64), (64, 200, 255), (255, 210, 0), (120, 255, 120), (255, 120, 255), (255, 150, 40)]


def mask_rgba(mask: np.ndarray) -> Image.Image:
    """A transparent overlay of a 2D mask (palette PNG: 0 clear, 1 tinted fill, 2 opaque outline)."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    indices = mask.astype(np.uint8)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size:  # the outline is found on the mask's extent only (plus a border row), not the whole slice
        y0, y1 = max(rows[0] - 1, 0), rows[-1] + 2
        x0, x1 = max(cols[0] - 1, 0), cols[-1] + 2
        crop = mask[y0:y1, x0:x1]
        indices[y0:y1, x0:x1][crop & ~ndimage.binary_erosion(crop)] = 2
    picture = Image.fromarray(indices, mode="P")
    picture.putpalette([0, 0, 0, *FILL[:3], *EDGE[:3]])
    picture.info["transparency"] = bytes([0, FILL[3], EDGE[3]])
    return picture


def png_bytes(picture: np.ndarray | Image.Image) -> bytes:
    """``picture`` (a uint8 array or a PIL image) as PNG bytes, compressed for speed rather than size."""
    buffer = io.BytesIO()
    if isinstance(picture, np.ndarray):
        picture = Image.fromarray(picture)
    picture.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def render_overlay(
    pixels: np.ndarray,
    labels: np.ndarray,
    axes: list[tuple[tuple[float, float], tuple[float, float]] | None] | None = None,
    alpha: float = 0.35,
) -> Image.Image:
    """The slice with each object's mask tinted and outlined and its RECIST long axis drawn.

    ``pixels``: ``[H, W]`` or ``[H, W, 3]`` in [0, 1]; ``labels``: ``[H, W]`` ints (0 = background, object i
    has label i); ``axes``: per object an optional pair of ``(x, y)`` endpoints to draw as its long axis.
    Small images (a CT downsampled, an MRI crop) are enlarged by a whole factor so the result is at least
    ``MIN_SIZE`` pixels on its longer side."""
    from PIL import ImageDraw
    from scipy import ndimage

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
    from oncoseg.io.write import check_output_path

    path = Path(path)
    if not path.name.lower().endswith(".png"):
        raise OncoSegError(f"{path}: the overlay is a picture; give a .png file name")
    return check_output_path(path, "overlay")


def save_overlay(picture: Image.Image, path: str | Path, outputs: OutputFiles | None = None) -> Path:
    """Write a PNG atomically (never a partial file); with ``outputs`` as part of that transaction."""
    from oncoseg.io.write import OutputFiles

    if outputs is None:
        with OutputFiles() as own:
            return save_overlay(picture, path, own)
    return outputs.write(path, lambda tmp: picture.save(tmp, format="PNG"))


# --- masks as polygons ---------------------------------------------------------------------------------------


def mask_to_polygons(
    mask: np.ndarray, order: Literal["rc", "xy"] = "rc", tolerance: float = 0.0, inset: float = 0.0
) -> list[np.ndarray]:
    """Closed polygons ``(n, 2)`` (last point not repeated) around every boundary of a 2D mask: the outer edge
    of each island and the edge of each hole, in pixel coordinates (pixel centres are integers).

    ``order``: ``"rc"`` gives ``(row, column)`` points (DICOM contours), ``"xy"`` gives ``(x, y)`` =
    ``(column, row)`` (drawing, the service's JSON). ``tolerance``: 0 keeps the exact outline (traced on the
    half-pixel lattice by marching squares at level 0.5, collinear vertices dropped; filling the polygons with
    the even-odd rule gives back exactly the mask's pixels); above 0 the outline is simplified by
    Douglas-Peucker (`simplify_polyline`) to within ``tolerance`` pixels, and polygons of under 3 points are
    kept (exact outlines always have 3 or more).

    ``inset`` (0 <= inset < 0.5 pixel): every vertex, which lies midway between an inside and an outside pixel
    centre, is moved this far toward the inside centre. Point-in-polygon of pixel centres still gives back the
    mask exactly, and so does rounding the vertices to the nearest pixel and filling the polygon with its
    edges included (what rt-utils and OpenCV's ``fillPoly`` do); with 0, such readers draw a mask grown by up
    to a pixel ring. The RTSTRUCT writer uses it (docs/dicom.md, "Contour convention")."""
    if order not in ("rc", "xy"):
        raise ValueError(f"order must be 'rc' or 'xy', not {order!r}")
    if not 0.0 <= inset < 0.5:
        raise ValueError(f"inset must be at least 0 and below 0.5 pixel, not {inset!r}")
    mask = np.asarray(mask)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return []
    from skimage.measure import find_contours

    crop = np.pad(np.asarray(mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], dtype=np.float32), 1)
    offset = np.array([rows[0] - 1.0, cols[0] - 1.0])  # the padding closes contours that touch the border
    polygons = []
    for line in find_contours(crop, 0.5):  # closed lines: the last point repeats the first
        if inset > 0:
            line = _toward_inside(line, crop, inset)
        if tolerance > 0:
            points = simplify_polyline(line, tolerance)[:-1]
        else:
            points = _drop_collinear(line[:-1])
            if len(points) < 3:
                continue
        points = points + offset
        polygons.append(points[:, ::-1] if order == "xy" else points)
    return polygons


def _toward_inside(line: np.ndarray, mask: np.ndarray, inset: float) -> np.ndarray:
    """Marching-squares vertices (each midway between two neighbouring pixel centres, one in, one out) moved
    ``inset`` pixel toward the centre that is in the mask."""
    # a vertex between rows r and r + 1 has a half-integer row (else it lies between two columns)
    on_row_edge = line[:, 0] % 1.0 != 0.0
    low = np.floor(line).astype(np.int64)
    rows, cols = low[:, 0], low[:, 1]
    step = np.where(mask[rows, cols] > 0.5, -inset, inset)  # toward the lower neighbour when it is inside
    moved = line.copy()
    moved[on_row_edge, 0] += step[on_row_edge]
    moved[~on_row_edge, 1] += step[~on_row_edge]
    return moved


def _drop_collinear(points: np.ndarray) -> np.ndarray:
    """Remove vertices that lie on the straight line through their neighbours (the shape stays the same)."""
    before = points - np.roll(points, 1, axis=0)
    after = np.roll(points, -1, axis=0) - points
    cross = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    keep = np.abs(cross) > 1e-9
    return points[keep] if keep.sum() >= 3 else points


def simplify_polyline(coords: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas–Peucker simplification of ``(K, 2)`` points: the points skimage's ``approximate_polygon`` keeps
    (same distances, the first farthest point splits), but every segment of one recursion level is handled in
    one pass of array arithmetic instead of one Python step per segment (4× faster on mask outlines)."""
    if tolerance <= 0 or len(coords) < 3:
        return coords
    rows, cols = coords[:, 0], coords[:, 1]
    keep = np.zeros(len(coords), bool)
    keep[[0, -1]] = True
    starts, ends = np.array([0]), np.array([len(coords) - 1])
    while starts.size:
        inner = ends - starts - 1
        starts, ends, inner = starts[inner > 0], ends[inner > 0], inner[inner > 0]
        if not starts.size:
            break
        owner = np.repeat(np.arange(starts.size), inner)  # the segment of each point between ends
        first = np.cumsum(inner) - inner
        points = np.arange(inner.sum()) - first[owner] + starts[owner] + 1
        angle = -np.arctan2(rows[ends] - rows[starts], cols[ends] - cols[starts])
        cos, sin = np.cos(angle)[owner], np.sin(angle)[owner]
        r0, c0, r1, c1 = rows[starts][owner], cols[starts][owner], rows[ends][owner], cols[ends][owner]
        dr, dc = r1 - r0, c1 - c0
        r, c = rows[points], cols[points]
        dr0, dc0, dr1, dc1 = r - r0, c - c0, r - r1, c - c1
        # distance to the segment's line where the point projects inside it, else to the nearer end
        inside = ((dr0 * dr + dc0 * dc) > 0) & ((-dr1 * dr - dc1 * dc) > 0)
        dists = np.where(
            inside,
            np.abs(r * cos + c * sin - (c0 * sin + r0 * cos)),
            np.minimum(np.sqrt(dc0**2 + dr0**2), np.sqrt(dc1**2 + dr1**2)),
        )
        peak = np.maximum.reduceat(dists, first)
        hits = np.flatnonzero(dists == peak[owner])
        segment, at = np.unique(owner[hits], return_index=True)  # each segment's first farthest point
        split = peak[segment] > tolerance
        segment, new = segment[split], points[hits[at]][split]
        keep[new] = True
        starts, ends = np.concatenate([starts[segment], new]), np.concatenate([new, ends[segment]])
    return coords[keep]


def polygons_to_mask(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Rasterise closed polygons of ``(row, column)`` onto a 2D grid with the even-odd rule (holes and
    nested islands given as separate polygons come out right); a pixel is in when its centre is inside.
    The inverse of ``mask_to_polygons(mask, "rc")``.

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
