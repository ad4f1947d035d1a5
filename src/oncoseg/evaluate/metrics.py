"""Segmentation metrics on boolean masks: Dice, IoU, HD95 and normalised surface Dice (NSD).

Masks are 2D ``[y, x]`` or 3D ``[z, y, x]`` arrays of anything that casts to bool. ``spacing`` is the voxel
size per array axis, in the same order as the axes (``(z, y, x)`` for volumes). Distances and tolerances are
in the units of ``spacing``: mm for volumes read with their geometry, pixels for plain pictures
(``spacing=None`` means 1.0 per axis).

Surfaces: a surface voxel is a foreground voxel with at least one background voxel among its face neighbours
(MONAI's and medpy's definition, so the numbers compare with published ones); outside the array counts as
background, so an object touching the edge has a surface there. Surface distances are Euclidean distances
between surface-voxel centres.

Empty masks:

* ``dice``, ``iou``, ``nsd``: both empty -> 1.0 (agreement that there is nothing); one empty -> 0.0.
* ``hd95``: both empty -> 0.0; exactly one empty -> ``nan``, because a distance to nothing is undefined.
  Summaries must count these cases, not drop them silently (``nanmean`` would hide a missed lesion).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from oncoseg.errors import OncoSegError

_PAD = 2  # voxels of background kept around the union bounding box when cropping

Spacing = Sequence[float] | np.ndarray | None


def dice(pred: Any, truth: Any) -> float:
    """Dice coefficient ``2|P∩T| / (|P| + |T|)``; both empty -> 1.0, one empty -> 0.0."""
    p, t = _pair(pred, truth)
    return _dice(p, t)


def iou(pred: Any, truth: Any) -> float:
    """Intersection over union ``|P∩T| / |P∪T|``; both empty -> 1.0, one empty -> 0.0."""
    p, t = _pair(pred, truth)
    return _iou(p, t)


def surface_distances(pred: Any, truth: Any, spacing: Spacing) -> tuple[np.ndarray, np.ndarray]:
    """Distances from each surface voxel of ``pred`` to the nearest surface voxel of ``truth``, and back.

    Returns ``(pred_to_truth, truth_to_pred)``, one float per surface voxel of the source mask, in the units
    of ``spacing``. An empty source mask gives an empty array; a non-empty source with an empty target
    gives ``inf`` for each of its surface voxels.
    """
    p, t = _pair(pred, truth)
    return _surface_distances(p, t, _spacing(spacing, p.ndim))


def hd95(pred: Any, truth: Any, spacing: Spacing) -> float:
    """95th-percentile symmetric Hausdorff distance: the larger of the two directed 95th percentiles.

    Both empty -> 0.0; exactly one empty -> ``nan`` (undefined: count it in summaries, do not drop it).
    """
    p, t = _pair(pred, truth)
    return _hd95(*_surface_distances(p, t, _spacing(spacing, p.ndim)))


def nsd(pred: Any, truth: Any, spacing: Spacing, tolerance: float) -> float:
    """Normalised surface Dice (Nikolov et al. 2021) at ``tolerance``, counted over surface voxels.

    ``(|pred surface within tolerance of truth surface| + |truth surface within tolerance of pred surface|)
    / (|pred surface| + |truth surface|)``; "within" means distance <= tolerance. Both empty -> 1.0,
    one empty -> 0.0.
    """
    p, t = _pair(pred, truth)
    tol = _tolerance(tolerance)
    return _nsd(*_surface_distances(p, t, _spacing(spacing, p.ndim)), tol)


def score(pred: Any, truth: Any, spacing: Spacing = None, tolerance: float = 2.0) -> dict[str, float]:
    """All metrics at once: ``dice``, ``iou``, ``nsd`` (at ``tolerance``), ``hd95``, ``pred_voxels``,
    ``true_voxels``. ``spacing=None`` means 1.0 per axis (pixels)."""
    p, t = _pair(pred, truth)
    sp = _spacing(spacing, p.ndim)
    tol = _tolerance(tolerance)
    d_pt, d_tp = _surface_distances(p, t, sp)
    return {
        "dice": _dice(p, t),
        "iou": _iou(p, t),
        "nsd": _nsd(d_pt, d_tp, tol),
        "hd95": _hd95(d_pt, d_tp),
        "pred_voxels": float(np.count_nonzero(p)),
        "true_voxels": float(np.count_nonzero(t)),
    }


# ----------------------------------------------------------------------------------------------- checks


def _pair(pred: Any, truth: Any) -> tuple[np.ndarray, np.ndarray]:
    p, t = np.asarray(pred), np.asarray(truth)
    if p.shape != t.shape:
        raise OncoSegError(f"pred and truth masks differ in shape: pred {p.shape}, truth {t.shape}")
    if p.ndim not in (2, 3):
        raise OncoSegError(f"masks must be 2D [y, x] or 3D [z, y, x], got shape {p.shape}")
    try:
        return p.astype(bool, copy=False), t.astype(bool, copy=False)
    except (TypeError, ValueError) as exc:
        raise OncoSegError(f"masks cannot be read as boolean arrays ({p.dtype}, {t.dtype}): {exc}") from None


def _spacing(spacing: Spacing, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    try:
        s = np.atleast_1d(np.asarray(spacing, dtype=float))
    except (TypeError, ValueError):
        raise OncoSegError(f"spacing must be {ndim} positive numbers, got {spacing!r}") from None
    if s.ndim != 1 or s.size != ndim:
        raise OncoSegError(f"spacing must have one value per mask axis ({ndim}), got {spacing!r}")
    if not np.all(np.isfinite(s) & (s > 0)):
        raise OncoSegError(f"spacing values must be finite and > 0, got {spacing!r}")
    return tuple(float(v) for v in s)


def _tolerance(tolerance: float) -> float:
    try:
        tol = float(tolerance)
    except (TypeError, ValueError):
        raise OncoSegError(f"tolerance must be a number >= 0, got {tolerance!r}") from None
    if not (np.isfinite(tol) and tol >= 0):
        raise OncoSegError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    return tol


# ---------------------------------------------------------------------------------------------- metrics


def _dice(p: np.ndarray, t: np.ndarray) -> float:
    total = np.count_nonzero(p) + np.count_nonzero(t)
    if total == 0:
        return 1.0
    return float(2.0 * np.count_nonzero(p & t) / total)


def _iou(p: np.ndarray, t: np.ndarray) -> float:
    inter = np.count_nonzero(p & t)
    union = np.count_nonzero(p) + np.count_nonzero(t) - inter
    if union == 0:
        return 1.0
    return float(inter / union)


def _hd95(d_pt: np.ndarray, d_tp: np.ndarray) -> float:
    if d_pt.size == 0 and d_tp.size == 0:
        return 0.0
    if d_pt.size == 0 or d_tp.size == 0:
        return float("nan")
    return float(max(np.percentile(d_pt, 95), np.percentile(d_tp, 95)))


def _nsd(d_pt: np.ndarray, d_tp: np.ndarray, tolerance: float) -> float:
    total = d_pt.size + d_tp.size
    if total == 0:
        return 1.0
    within = np.count_nonzero(d_pt <= tolerance) + np.count_nonzero(d_tp <= tolerance)
    return float(within / total)


# --------------------------------------------------------------------------------------------- surfaces


def _surface_distances(
    p: np.ndarray, t: np.ndarray, spacing: tuple[float, ...], *, crop: bool = True, full: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances ``(p -> t, t -> p)`` of validated boolean masks.

    ``crop=False`` skips cropping to the union bounding box (for tests: the distances are the same).
    ``full=True`` counts edge and corner neighbours too (a thicker surface; for comparison in tests).
    """
    if crop:
        p, t = _crop(p, t)
    sp, st = _surface(p, full), _surface(t, full)
    return _directed(sp, st, spacing), _directed(st, sp, spacing)


def _crop(p: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the union bounding box of their foreground, padded by ``_PAD`` voxels.

    The padding keeps background around every object (so surfaces stay the same) except where an object
    touches the array edge, where the cut falls on the edge itself and nothing changes either.
    """
    slices = []
    for axis, n in enumerate(p.shape):
        others = tuple(a for a in range(p.ndim) if a != axis)
        hits = np.flatnonzero(p.any(axis=others) | t.any(axis=others))
        if hits.size == 0:
            return p, t
        slices.append(slice(max(int(hits[0]) - _PAD, 0), min(int(hits[-1]) + _PAD + 1, n)))
    return p[tuple(slices)], t[tuple(slices)]


def _surface(mask: np.ndarray, full: bool = False) -> np.ndarray:
    """Foreground voxels with a background neighbour (full or face connectivity); outside is background."""
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim if full else 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _directed(src: np.ndarray, dst: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Distance from each ``True`` voxel of ``src`` to the nearest ``True`` voxel of ``dst``."""
    n = int(np.count_nonzero(src))
    if n == 0:
        return np.zeros(0)
    if not dst.any():
        return np.full(n, np.inf)
    return ndimage.distance_transform_edt(~dst, sampling=spacing)[src]
