"""Fit carried vertebrae and ribs to the patient's bone (CT numbers; no model).

Bone is the one tissue CT shows without doubt: cortical and dense trabecular bone lie above ~200 HU, far from
every soft tissue. A registered atlas vertebra or rib is in roughly the right place but has another person's
shape, and a rib is thin enough that a few millimetres of registration error miss it altogether. So:

1. **seeds**: bone voxels (above ``seed_hu``) within ``seed_mm`` of a carried label, each given to the nearest
   carried label;
2. **grow**: from the seeds over voxels of bone or marrow density (HU, raw and smoothed, above ``marrow_hu``:
   the marrow inside a vertebral body is ~100-250 HU, muscle and cord below 60, costal cartilage ~100-160 and
   often joined, hence the reach limit) within ``reach_mm`` of the carried labels; touching neighbours (two
   vertebrae, a rib and its vertebra) are split by whichever seed reaches a voxel first through connected bone
   (a watershed on a flat image: the nearest label along the bone);
3. **fill**: small holes on each slice (up to ``max_hole_cm2``: marrow below the threshold, never the spinal
   canal of 1.5-3 cm² that the vertebral arch encloses).

A carried label whose seeds number less than ``min_bone_fraction`` of its voxels landed beside the bone (a
missed rib, a level off the scan's edge): the organ is *not drawn*, with that reason (`weak`).

The *number* of a vertebra or rib is only as good as the registration, which aligns the soft organs: between the
two TotalSegmentator example patients it was off by exactly one level in both directions (the fitted shapes
matched the neighbouring level's label with Dice 0.40-0.85; docs/contour.md). Numbered bones therefore always
carry `LEVEL_CAUTION` for review; ``Rib`` (TG-263 "any rib volume", every carried rib fitted as one) does not
depend on the numbering.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

BONE_PREFIXES = ("VB_", "Rib")
GROUPS = {"Rib": "Rib"}  # TG-263 group name → the prefix of its numbered members (Rib01_L ... Rib12_R)
LEVEL_CAUTION = (
    "level not verified: numbered by registration, one level off on both test patients; check the number"
)


@dataclass
class BoneSettings:
    seed_hu: float = 200.0  # bone for certain (`oncoseg.contour.anatomy.AnatomySettings.bone_hu`)
    marrow_hu: float = 100.0  # smoothed HU above this may join a bone grown from its seeds
    smooth_mm: float = 1.0
    seed_mm: float = 3.0  # bone this close to a carried label seeds it (the nearest label's)
    reach_mm: float = 10.0  # the fitted bone stays within this distance of the carried labels
    max_hole_cm2: float = 0.5
    min_bone_fraction: float = 0.15  # carried labels with less bone than this are weak evidence


def is_bone(name: str) -> bool:
    """Whether ``name`` is a vertebra or rib that `refine_bones` fits (TG-263 ``VB_*``, ``Rib*``, ``Rib``)."""
    return name.startswith(BONE_PREFIXES)


def is_numbered(name: str) -> bool:
    """A single vertebra or rib (its number comes from the registration), not a group such as ``Rib``."""
    return is_bone(name) and name not in GROUPS


def members(group: str, names) -> list[str]:
    """The numbered bones among ``names`` that make up ``group`` (``Rib`` → every ``RibNN_L/R``)."""
    prefix = GROUPS.get(group)
    return [n for n in names if prefix and n != group and n.startswith(prefix) and is_numbered(n)]


def refine_bones(
    ct: np.ndarray,
    priors: dict[str, np.ndarray],
    spacing_xyz: tuple[float, float, float],
    settings: BoneSettings | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(fitted masks, weak-evidence reasons) for every bone in ``priors`` (name → carried bool ``[z, y, x]``)
    of ``ct`` (HU ``[z, y, x]``); an organ with a reason keeps its carried label (not to be drawn). Numbered
    bones compete for the voxels between them; a group (``Rib``) is fitted on its own."""
    settings = settings or BoneSettings()
    out, weak = _fit(ct, {n: m for n, m in priors.items() if is_numbered(n)}, spacing_xyz, settings)
    for group in [n for n in priors if n in GROUPS]:
        fitted, reasons = _fit(ct, {group: priors[group]}, spacing_xyz, settings)
        out.update(fitted)
        weak.update(reasons)
    return out, weak


def _fit(ct, priors, spacing_xyz, settings):
    names = [n for n in priors if priors[n].any()]
    out = {n: np.zeros(ct.shape, bool) for n in priors}
    weak: dict[str, str] = {}
    if not names:
        return out, weak
    from skimage.segmentation import watershed

    sp = tuple(float(s) for s in spacing_xyz[::-1])  # z, y, x
    carried = np.zeros(ct.shape, np.int32)
    for i, n in enumerate(names, start=1):
        carried[priors[n]] = i
    idx = np.argwhere(carried)
    margin = np.array([int(np.ceil(settings.reach_mm / s)) + 1 for s in sp])
    lo, hi = np.maximum(idx.min(0) - margin, 0), np.minimum(idx.max(0) + 1 + margin, ct.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    raw = ct[box].astype(np.float32)
    smooth = ndimage.gaussian_filter(raw, [settings.smooth_mm / s for s in sp], truncate=2.0)
    # every voxel's distance to, and the number of, the nearest carried label
    distance, nearest = ndimage.distance_transform_edt(carried[box] == 0, sampling=sp, return_indices=True)
    nearest = carried[box][tuple(nearest)]
    seeds = (raw > settings.seed_hu) & (distance <= settings.seed_mm)
    markers = np.where(seeds, nearest, 0)
    counts = np.bincount(markers.ravel(), minlength=len(names) + 1)
    ids = {}
    for i, n in enumerate(names, start=1):
        fraction = min(1.0, counts[i] / float(priors[n].sum()))
        if fraction < settings.min_bone_fraction:
            weak[n] = (
                f"weak evidence: bone (> {settings.seed_hu:.0f} HU) fills only {fraction:.0%} of the carried label"
            )
            out[n] = priors[n].copy()
            markers[markers == i] = 0
        else:
            ids[n] = i
    if not ids:
        return out, weak
    dense = (raw > settings.seed_hu) | ((smooth > settings.marrow_hu) & (raw > settings.marrow_hu))
    allowed = (distance <= settings.reach_mm) & dense
    regions = watershed(np.zeros(raw.shape, np.uint8), markers, mask=allowed | (markers > 0))
    max_hole = settings.max_hole_cm2 * 100.0 / (sp[1] * sp[2])
    for n, i in ids.items():
        grown = regions == i
        for z in range(grown.shape[0]):
            if grown[z].any():
                holes, count = ndimage.label(ndimage.binary_fill_holes(grown[z]) & ~grown[z])
                if count:
                    sizes = np.bincount(holes.ravel())
                    small = np.nonzero(sizes <= max_hole)[0]
                    grown[z] |= np.isin(holes, small[small > 0])
        out[n][box] = grown
    return out, weak
