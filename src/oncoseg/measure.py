"""Size measurements of a segmented lesion: volume/area, RECIST 1.1 diameters, bounding box, centroid.

Geometry is voxel-edge aware: every foreground voxel is a box of size ``spacing`` centred on its index.
Diameters are distances between voxel corners on the convex hull, in physical coordinates (mm), so
anisotropic spacing is handled exactly and a line of ``n`` voxels of size ``s`` measures its full length
``n * s`` (precisely: the diagonal of the ``n * s`` by ``w`` strip it covers, ``w`` its width).

* **Long axis** (RECIST 1.1): on every axial slice, the longest distance between two points of the lesion
  (the largest distance between two hull vertices); the slice with the longest one is the RECIST slice
  (ties: larger area, then lower ``z``).
* **Units**: millimetres for an image with a physical pixel size; for a picture without one (``spacing_unit``
  "px", see `oncoseg.image`) the same numbers are pixels: `Measurements.unit` says which, and `to_dict` names
  its keys by it (``recist_long_px``, ``area_px2``, ``volume_px3``).
* **Short axis**: on that same slice, the lesion's width perpendicular to the long axis, i.e. the extent
  (max − min) of the hull vertices projected onto the direction perpendicular to the long axis. This is the
  calliper width a reader measures at right angles to the long axis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from oncoseg.errors import EmptyResultError, OncoSegError

_CHUNK = 512  # rows per block when searching the farthest pair among many hull vertices


@dataclass(frozen=True)
class Measurements:
    """Measurements of one binary mask. Per-axis tuples are in array order (``z, y, x`` or ``y, x``).

    ``bbox`` holds the inclusive ``(min, max)`` voxel index per axis and ``bbox_mm`` the extent
    ``(max - min + 1) * spacing`` per axis. A 2D mask has ``area_mm2`` and no volume, slice or 3D diameter.

    ``centroid_mm`` is the mean voxel index times the spacing (array order): a position relative to the
    centre of voxel 0, not a patient-frame coordinate (it ignores origin and direction).
    ``unit`` is "mm", or "px" for an image without a physical pixel size: then every ``_mm`` value is in
    pixels, ``area_mm2`` in px² and ``volume_ml`` in thousands of voxels (use `to_dict` or `text`).
    ``long_axis_endpoints`` are two ``(x, y)`` points in voxel coordinates of the RECIST slice, where pixel
    centres are integers (they lie on pixel corners, e.g. ``(-0.5, 3.5)``).
    """

    volume_ml: float | None
    area_mm2: float | None
    voxel_count: int
    recist_long_mm: float
    recist_short_mm: float
    recist_slice: int | None
    long_axis_endpoints: tuple[tuple[float, float], tuple[float, float]]
    bbox: tuple[tuple[int, int], ...]
    bbox_mm: tuple[float, ...]
    centroid_mm: tuple[float, ...]
    max_3d_diameter_mm: float | None
    unit: str = "mm"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values, rounded (mm to 0.01, ml to 0.001), and ``unit``. In pixels (``unit`` "px")
        the keys say so: ``area_px2``, ``volume_px3``, ``recist_long_px``, ``bbox_px``, ..."""
        values = {
            "volume_ml": None if self.volume_ml is None else round(self.volume_ml, 3),
            "area_mm2": None if self.area_mm2 is None else round(self.area_mm2, 2),
            "voxel_count": self.voxel_count,
            "recist_long_mm": round(self.recist_long_mm, 2),
            "recist_short_mm": round(self.recist_short_mm, 2),
            "recist_slice": self.recist_slice,
            "long_axis_endpoints": [[round(v, 2) for v in p] for p in self.long_axis_endpoints],
            "bbox": [list(b) for b in self.bbox],
            "bbox_mm": [round(v, 2) for v in self.bbox_mm],
            "centroid_mm": [round(v, 2) for v in self.centroid_mm],
            "max_3d_diameter_mm": (
                None if self.max_3d_diameter_mm is None else round(self.max_3d_diameter_mm, 2)
            ),
        }
        if self.unit == "px":
            volume = values.pop("volume_ml")
            values = {key.replace("_mm2", "_px2").replace("_mm", "_px"): v for key, v in values.items()}
            values = {"volume_px3": None if volume is None else self.voxel_count, **values}
        return {**values, "unit": self.unit}

    def text(self) -> str:
        """ "12.34 mL, RECIST 31.2 x 20.5 mm", "1234 mm², ..." or, in pixels, "44107 px², RECIST 434.9 x 120.3 px"."""
        return f"{size_text(self.to_dict())}, RECIST {recist_text(self.to_dict())}"


def size_text(values: dict[str, Any], digits: int = 2) -> str:
    """The volume (mL, ``digits`` decimals) or area (mm², one decimal fewer) of a `Measurements.to_dict`; in
    pixels the voxel count (px³) or area (px², no decimals)."""
    if values.get("unit") == "px":
        return (
            f"{values['volume_px3']} px³"
            if values.get("volume_px3") is not None
            else f"{values['area_px2']:.0f} px²"
        )
    if values.get("volume_ml") is not None:
        return f"{values['volume_ml']:.{digits}f} mL"
    return f"{values['area_mm2']:.{max(digits - 1, 0)}f} mm²"


def recist_text(values: dict[str, Any], long_only: bool = False) -> str:
    """ "31.2 x 20.5 mm" (long x short axis of a `Measurements.to_dict`), "434.9 x 120.3 px" in pixels."""
    unit = values.get("unit", "mm")
    long, short = values[f"recist_long_{unit}"], values[f"recist_short_{unit}"]
    return f"{long:.1f} {unit}" if long_only else f"{long:.1f} x {short:.1f} {unit}"


def measure_image(mask: np.ndarray, image, label: int | None = None) -> Measurements:
    """`measure` ``mask`` on ``image``'s grid, in its units (mm, or px for a picture without a pixel size)."""
    return measure(mask, image.spacing, label, unit=image.spacing_unit)


def measure(
    mask: np.ndarray, spacing: tuple[float, ...], label: int | None = None, *, unit: str = "mm"
) -> Measurements:
    """Measure ``mask`` (``[z, y, x]`` or ``[y, x]``) with ``spacing`` in SimpleITK ``(x, y[, z])`` order, in
    ``unit`` ("mm", or "px" for an image without a physical pixel size: `measure_image` picks it).

    Foreground is ``mask > 0``, or ``mask == label`` when ``label`` is given. Diameters follow the
    definitions in this module's docstring (a 2D mask is one axial slice). Only the bounding box of the
    foreground and the first/last foreground pixel of each row are processed, so large volumes are quick.
    Raises `EmptyResultError` when there is no foreground.
    """
    from scipy.spatial import ConvexHull  # imported here: `import oncoseg` imports this module

    mask = np.asarray(mask)
    if mask.ndim not in (2, 3):
        raise OncoSegError(f"mask must be 2D [y,x] or 3D [z,y,x], got shape {mask.shape}")
    if unit not in ("mm", "px"):
        raise OncoSegError(f"unit must be 'mm' or 'px', not {unit!r}")
    if len(spacing) != mask.ndim or not all(float(s) > 0 for s in spacing):
        raise OncoSegError(f"spacing {tuple(spacing)} must be {mask.ndim} positive values in (x,y[,z]) order")
    fg = mask > 0 if label is None else mask == label
    is_3d = fg.ndim == 3
    vol = fg if is_3d else fg[None]
    spacing_zyx = np.array([float(s) for s in spacing[::-1]])
    sz = spacing_zyx[0] if is_3d else 1.0
    sy, sx = spacing_zyx[-2:]

    # Crop to the bounding box so the rest only touches the lesion's neighbourhood.
    lo, hi = [], []
    for axis in range(3):
        present = np.flatnonzero(vol.any(axis=_other_axes(axis)))
        if present.size == 0:
            raise EmptyResultError("mask is empty: nothing to measure")
        lo.append(int(present[0]))
        hi.append(int(present[-1]))
    crop = vol[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1]
    counts = [crop.sum(axis=_other_axes(axis)) for axis in range(3)]  # foreground voxels per index
    count = int(counts[0].sum())
    centroid = [start + float(np.arange(len(c)) @ c) / count for start, c in zip(lo, counts)]

    corners = _row_extreme_corners(crop, sx, sy, lo[2], lo[1])
    hulls = {z: pts[ConvexHull(pts).vertices] for z, pts in corners.items()}
    best = None  # ((long, area, -z), z, endpoints)
    for z, hull in hulls.items():
        length, (i, j) = _farthest_pair(hull)
        key = (round(length, 9), int(counts[0][z]), -z)
        if best is None or key > best[0]:
            best = (key, z, (hull[i], hull[j]))
    _, z_best, (p, q) = best
    long_mm = float(np.linalg.norm(q - p))
    normal = np.array([-(q - p)[1], (q - p)[0]]) / long_mm
    projected = hulls[z_best] @ normal
    short_mm = float(projected.max() - projected.min())
    endpoints = ((float(p[0] / sx), float(p[1] / sy)), (float(q[0] / sx), float(q[1] / sy)))

    bbox = tuple(zip(lo, hi))
    extent_mm = tuple(float((b - a + 1) * s) for a, b, s in zip(lo, hi, (sz, sy, sx)))
    centroid_mm = tuple(float(c * s) for c, s in zip(centroid, (sz, sy, sx)))
    if not is_3d:
        bbox, extent_mm, centroid_mm = bbox[1:], extent_mm[1:], centroid_mm[1:]

    voxel_mm3 = float(np.prod(spacing_zyx))
    return Measurements(
        volume_ml=count * voxel_mm3 / 1000.0 if is_3d else None,
        area_mm2=None if is_3d else count * voxel_mm3,
        voxel_count=count,
        recist_long_mm=long_mm,
        recist_short_mm=short_mm,
        recist_slice=z_best + lo[0] if is_3d else None,
        long_axis_endpoints=endpoints,
        bbox=bbox,
        bbox_mm=extent_mm,
        centroid_mm=centroid_mm,
        max_3d_diameter_mm=_max_3d_diameter(hulls, sz, lo[0]) if is_3d else None,
        unit=unit,
    )


def _other_axes(axis: int) -> tuple[int, ...]:
    return tuple(a for a in range(3) if a != axis)


def _row_extreme_corners(crop: np.ndarray, sx: float, sy: float, x0: int, y0: int) -> dict[int, np.ndarray]:
    """Per crop slice ``z``: the outer corners (mm) of the first and last foreground pixel of every row.

    The convex hull of these points equals the hull of all the slice's pixel squares.
    """
    rows = crop.any(axis=2)
    first = crop.argmax(axis=2)
    last = crop.shape[2] - 1 - crop[:, :, ::-1].argmax(axis=2)
    result = {}
    for z in np.flatnonzero(rows.any(axis=1)):
        y = np.flatnonzero(rows[z])
        left = first[z, y] + x0 - 0.5
        right = last[z, y] + x0 + 0.5
        top = y + y0 - 0.5
        bottom = y + y0 + 0.5
        xs = np.concatenate([left, left, right, right]) * sx
        ys = np.concatenate([top, bottom, top, bottom]) * sy
        result[int(z)] = np.column_stack([xs, ys])
    return result


def _farthest_pair(points: np.ndarray) -> tuple[float, tuple[int, int]]:
    """Largest distance between two of ``points`` and their indices (upper triangle, in row blocks)."""
    from scipy.spatial.distance import cdist

    best, pair = -1.0, (0, 0)
    for start in range(0, len(points), _CHUNK):
        d2 = cdist(points[start : start + _CHUNK], points[start:], "sqeuclidean")
        i, j = np.unravel_index(int(d2.argmax()), d2.shape)
        if d2[i, j] > best:
            best, pair = float(d2[i, j]), (start + int(i), start + int(j))
    return float(np.sqrt(best)), pair


def _max_3d_diameter(hulls: dict[int, np.ndarray], sz: float, z0: int) -> float:
    """Longest distance (mm) between two voxel corners of the lesion: each slice's 2D hull is lifted to the
    slice's lower and upper face, then the farthest pair is searched among the 3D hull's vertices."""
    from scipy.spatial import ConvexHull

    layers = [
        np.column_stack([hull, np.full(len(hull), (z + z0 + dz) * sz)])
        for z, hull in hulls.items()
        for dz in (-0.5, 0.5)
    ]
    points = np.concatenate(layers)
    return _farthest_pair(points[ConvexHull(points).vertices])[0]
