"""Two tubes found from CT numbers, guided by the carried atlas label: the contrast-filled aorta and the spinal
cord inside the bony canal.

- **A_Aorta** (`aorta_from_contrast`): on a contrast CT the aortic lumen is a bright, round blob on every
  slice. On each slice of the carried label, the voxels above ``lumen_hu`` are opened with a disk of
  ``open_mm`` (cuts thin bridges to the vertebra and to enhancing bowel); the round piece (area within
  ``area_cm2``, at least ``min_roundness`` of its circumscribed disk) nearest to the carried label's centre,
  within ``search_mm``, is a *seed*. Seeds whose centres stray more than ``seed_spread_mm`` from their median
  centre are dropped. With fewer seeds than ``min_seed_share`` of the label's slices the scan is taken as
  non-contrast (or the aorta as not found) and the carried label is kept. Otherwise the lumen is followed
  slice to slice from the seeds (bright voxels within ``track_mm`` of the neighbouring slice's lumen) and a
  wall of ``wall_mm`` is added (non-fat voxels around the lumen).
- **SpinalCord** (`cord_in_canal`): on each slice where the bony spinal canal (`oncoseg.contour.anatomy`) lies
  within ``canal_shift_mm`` of the carried cord's centre (on the nearest slice of the carried cord, at most
  ``canal_gap_mm`` away), the cord is the canal without its edge pixels (partial volume with bone and epidural
  fat); other slices keep the carried label.

Every parameter here was chosen on the two TotalSegmentator example patients (the only labelled multi-organ
CTs we hold; benchmarks/contour.py, each the other's atlas): the contrast series (0.98 mm, portal phase, aorta
~150 HU) and the 3 mm non-contrast CT (aorta ~45 HU, where the rule correctly finds no lumen). Treat them as
a first setting, not a validated one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass
class TubeSettings:
    lumen_hu: float = 130.0  # contrast-filled blood; unenhanced blood and soft tissue lie well below
    max_hu: float = 600.0  # brighter voxels are bone or calcium, not lumen
    smooth_mm: float = 0.5
    open_mm: float = 4.0
    area_cm2: tuple[float, float] = (1.0, 15.0)
    min_roundness: float = 0.5
    search_mm: float = 30.0
    seed_spread_mm: float = 15.0
    min_seed_share: float = 1.0 / 3.0
    track_mm: float = 3.0
    wall_mm: float = 1.0
    wall_min_hu: float = -30.0  # the wall ring stops at fat
    canal_shift_mm: float = 10.0
    canal_gap_mm: float = (
        10.0  # the cord is also drawn on canal slices this close to the carried cord's slices
    )


def _disk(radius_mm: float, spacing_xy) -> np.ndarray:
    ry, rx = (max(1, round(radius_mm / float(s))) for s in (spacing_xy[1], spacing_xy[0]))
    yy, xx = np.ogrid[-ry : ry + 1, -rx : rx + 1]
    return (yy / ry) ** 2 + (xx / rx) ** 2 <= 1.0


def _centre(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask).mean(axis=0)


def _seed(bright: np.ndarray, target: np.ndarray, spacing_xy, s: TubeSettings) -> np.ndarray | None:
    """The round bright piece nearest to ``target`` (row, column) on one slice, or None."""
    sy, sx = float(spacing_xy[1]), float(spacing_xy[0])
    opened = ndimage.binary_opening(bright, _disk(s.open_mm, spacing_xy))
    pieces, count = ndimage.label(opened)
    best, best_mm = None, s.search_mm
    for index in range(1, count + 1):
        piece = pieces == index
        area_mm2 = float(piece.sum()) * sy * sx
        if not s.area_cm2[0] * 100 <= area_mm2 <= s.area_cm2[1] * 100:
            continue
        ys, xs = np.nonzero(piece)
        radius = float(np.hypot((ys - ys.mean()) * sy, (xs - xs.mean()) * sx).max()) + 0.5 * min(sy, sx)
        if area_mm2 / (np.pi * radius**2) < s.min_roundness:
            continue
        distance = float(np.hypot((ys.mean() - target[0]) * sy, (xs.mean() - target[1]) * sx))
        if distance < best_mm:
            best, best_mm = piece, distance
    return best


def aorta_from_contrast(
    ct: np.ndarray, prior: np.ndarray, spacing_xyz, settings: TubeSettings | None = None
) -> tuple[np.ndarray | None, str]:
    """(the aorta found as a contrast-filled lumen on the carried label's slices, or None; why / how)."""
    s = settings or TubeSettings()
    spacing_xy = spacing_xyz[:2]
    sy, sx = float(spacing_xy[1]), float(spacing_xy[0])
    slices = [int(z) for z in np.nonzero(prior.any(axis=(1, 2)))[0]]
    if not slices:
        return None, "no carried label"
    lo, hi = slices[0], slices[-1] + 1
    # only a window around the carried label: its extent plus the search distance and the largest lumen
    margin_mm = s.search_mm + np.sqrt(s.area_cm2[1] * 100 / np.pi) + s.open_mm
    _, ys, xs = np.nonzero(prior)
    my, mx = int(np.ceil(margin_mm / sy)), int(np.ceil(margin_mm / sx))
    window = (slice(lo, hi), slice(max(0, ys.min() - my), ys.max() + my + 1))
    window += (slice(max(0, xs.min() - mx), xs.max() + mx + 1),)
    carried = prior[window]
    sigma = [s.smooth_mm / float(v) for v in spacing_xyz[::-1]]
    image = ndimage.gaussian_filter(ct[window].astype(np.float32), sigma, truncate=2.0)
    bright = np.zeros(image.shape, bool)
    lumen = np.zeros(image.shape, bool)
    centres = {}
    for z in slices:
        bright[z - lo] = ndimage.binary_fill_holes((image[z - lo] > s.lumen_hu) & (image[z - lo] < s.max_hu))
        piece = _seed(bright[z - lo], _centre(carried[z - lo]), spacing_xy, s)
        if piece is not None:
            lumen[z - lo] = piece
            centres[z] = _centre(piece)
    if centres:
        middle = np.median(np.array(list(centres.values())), axis=0)
        for z, c in centres.items():
            if np.hypot((c[0] - middle[0]) * sy, (c[1] - middle[1]) * sx) > s.seed_spread_mm:
                lumen[z - lo] = False
    seeds = int(lumen.any(axis=(1, 2)).sum())
    if seeds < max(2, s.min_seed_share * len(slices)):
        return None, f"no contrast-filled lumen (round bright piece on {seeds} of {len(slices)} slices)"
    track = _disk(s.track_mm, spacing_xy)
    grown = True
    while grown:  # follow the lumen from the seeds into the slices without one
        grown = False
        for z in slices:
            if lumen[z - lo].any():
                continue
            for near in (z - 1, z + 1):
                if lo <= near < hi and lumen[near - lo].any():
                    found = bright[z - lo] & ndimage.binary_dilation(lumen[near - lo], track)
                    if found.sum() >= 0.5 * lumen[near - lo].sum():
                        lumen[z - lo], grown = found, True
                        break
    wall = _disk(s.wall_mm, spacing_xy)
    out = np.zeros(ct.shape, bool)
    for z in slices:
        if lumen[z - lo].any():
            out[z][window[1:]] = ndimage.binary_dilation(lumen[z - lo], wall) & (
                image[z - lo] > s.wall_min_hu
            )
    drawn = int(out.any(axis=(1, 2)).sum())
    return out, f"contrast-filled lumen on {drawn} of {len(slices)} slices ({seeds} seeds)"


def cord_in_canal(
    prior: np.ndarray, canal: np.ndarray, spacing_xyz, settings: TubeSettings | None = None
) -> tuple[np.ndarray, int]:
    """(the cord: the canal without its edge pixels where the canal lies near the carried cord, else the
    carried cord; the number of slices taken from the canal)."""
    s = settings or TubeSettings()
    sy, sx = float(spacing_xyz[1]), float(spacing_xyz[0])
    out = prior.copy()
    used = 0
    carried = np.nonzero(prior.any(axis=(1, 2)))[0]
    if not len(carried):
        return out, 0
    for z in np.nonzero(canal.any(axis=(1, 2)))[0]:
        nearest = int(carried[np.argmin(np.abs(carried - z))])
        if abs(nearest - z) * float(spacing_xyz[2]) > s.canal_gap_mm:
            continue
        c, p = _centre(canal[z]), _centre(prior[nearest])
        if np.hypot((c[0] - p[0]) * sy, (c[1] - p[1]) * sx) > s.canal_shift_mm:
            continue
        pieces, count = ndimage.label(ndimage.binary_erosion(canal[z]))
        if count:
            largest = 1 + int(np.argmax(ndimage.sum(pieces > 0, pieces, range(1, count + 1))))
            out[z] = ndimage.binary_fill_holes(pieces == largest)
            used += 1
    return out, used
