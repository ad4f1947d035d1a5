"""Organs found from CT numbers alone (no atlas, no model): body outline, lungs split left/right, bone, spinal
canal.

- **External** (body outline): voxels above −300 HU, the largest connected piece plus any piece of at least
  ``min_part_ml`` whose median is soft tissue (arms lying beside the trunk; a couch is mostly foam and air),
  holes filled slice by slice.
- **Lungs / Lung_L / Lung_R**: air-like voxels (< −500 HU) inside the body outline, in connected pieces of at
  least ``min_lung_ml`` that look like lung parenchyma rather than gas: median between −950 and −600 HU and
  fewer than a fifth of their voxels below −950 HU (gas in the stomach or bowel is darker: on the example CTs
  its pieces had 49–76 % of their voxels below −950 HU, lung bases none). A piece is left or right by the side
  of the body's midline its centre lies on (patient left = +x in the scanner's LPS frame); a piece that spans
  both sides is cut at the midline.
- **Bone**: voxels above ``bone_hu`` inside the body.
- **SpinalCanal**: on each slice, the hole enclosed by bone above 150 HU (after a closing that shuts the gaps
  of the vertebral arch) nearest to a seed (the carried SpinalCord when there is one, else the body's midline
  behind its centre), of cord/CSF density (median below 120 HU, area 0.5–8 cm²).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from oncoseg.image import MedicalImage

BODY_HU = -300.0
AIR_HU = -500.0
GAS_HU = -950.0


@dataclass
class AnatomySettings:
    min_part_ml: float = 50.0  # a separate body piece this large with soft-tissue median joins the outline
    min_lung_ml: float = 10.0
    max_gas_fraction: float = 0.2  # lung pieces have fewer voxels below GAS_HU than this
    bone_hu: float = 200.0
    canal_area_cm2: tuple[float, float] = (0.5, 8.0)
    canal_max_hu: float = 120.0
    canal_bone_hu: float = 150.0  # the vertebral ring around the canal (lower than bone_hu: thin laminae)
    canal_max_shift_mm: float = 25.0  # the canal lies within this distance of its seed on each slice


def _voxel_ml(image: MedicalImage) -> float:
    return float(np.prod(image.spacing)) / 1000.0


def _fill_slices(mask: np.ndarray) -> np.ndarray:
    return np.stack([ndimage.binary_fill_holes(s) for s in mask]) if mask.size else mask


def body(image: MedicalImage, settings: AnatomySettings | None = None) -> np.ndarray:
    """The body outline (bool ``[z, y, x]``)."""
    settings = settings or AnatomySettings()
    ct = image.array
    labels, count = ndimage.label(ct > BODY_HU)
    if count == 0:
        return np.zeros(ct.shape, bool)
    sizes = ndimage.sum(np.ones(ct.shape), labels, range(1, count + 1))
    keep = [int(np.argmax(sizes)) + 1]
    min_voxels = settings.min_part_ml / _voxel_ml(image)
    for index in np.nonzero(sizes >= min_voxels)[0] + 1:
        if index not in keep and -100.0 <= float(np.median(ct[labels == index])) <= 150.0:
            keep.append(int(index))
    return _fill_slices(np.isin(labels, keep))


def _patient_x(image: MedicalImage, columns: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Physical x (LPS: larger = patient left) of pixel positions on an axial slice."""
    d = np.asarray(image.direction, float).reshape(3, 3)
    sx, sy = float(image.spacing[0]), float(image.spacing[1])
    return image.origin[0] + d[0, 0] * columns * sx + d[0, 1] * rows * sy


def lungs(
    image: MedicalImage, outline: np.ndarray | None = None, settings: AnatomySettings | None = None
) -> dict[str, np.ndarray]:
    """``Lung_L``, ``Lung_R`` and ``Lungs`` (bool ``[z, y, x]``; empty when the scan holds no lung)."""
    settings = settings or AnatomySettings()
    ct = image.array
    outline = body(image, settings) if outline is None else outline
    labels, count = ndimage.label((ct < AIR_HU) & outline)
    min_voxels = settings.min_lung_ml / _voxel_ml(image)
    lung = np.zeros(ct.shape, bool)
    if count:
        sizes = ndimage.sum(np.ones(ct.shape), labels, range(1, count + 1))
        for index in np.nonzero(sizes >= min_voxels)[0] + 1:
            piece = labels == index
            values = ct[piece]
            median = float(np.median(values))
            if GAS_HU < median < -600.0 and float((values < GAS_HU).mean()) < settings.max_gas_fraction:
                lung |= piece
    lung = _fill_slices(lung)
    left, right = np.zeros_like(lung), np.zeros_like(lung)
    if lung.any():
        _, ys, xs = np.nonzero(outline)
        midline = float(np.median(_patient_x(image, xs, ys)))
        rows, columns = np.indices(ct.shape[1:])
        on_left = _patient_x(image, columns, rows) > midline
        pieces, count = ndimage.label(lung)
        for index in range(1, count + 1):
            piece = pieces == index
            share_left = float((piece & on_left[None]).sum()) / float(piece.sum())
            if share_left > 0.9:
                left |= piece
            elif share_left < 0.1:
                right |= piece
            else:  # joined across the midline: cut there
                left |= piece & on_left[None]
                right |= piece & ~on_left[None]
    return {"Lung_L": left, "Lung_R": right, "Lungs": left | right}


def bone(image: MedicalImage, outline: np.ndarray | None = None, settings: AnatomySettings | None = None):
    """Voxels of bone density inside the body (bool ``[z, y, x]``)."""
    settings = settings or AnatomySettings()
    outline = body(image, settings) if outline is None else outline
    return (image.array > settings.bone_hu) & outline


def spinal_canal(
    image: MedicalImage,
    seed: np.ndarray | None = None,
    outline: np.ndarray | None = None,
    settings: AnatomySettings | None = None,
) -> np.ndarray:
    """The spinal canal (bool ``[z, y, x]``): per slice, the bone-enclosed hole of CSF/cord density that holds
    (else lies nearest to) ``seed``'s centre (e.g. the carried SpinalCord; default: the body's midline, behind
    its centre). The bone is closed by 2, 4, then 6 mm until such a hole holds the seed; a slice where it never is (the arch is open between vertebrae)
    takes the canal of the nearest slice that has one, within 10 mm."""
    settings = settings or AnatomySettings()
    ct = image.array
    outline = body(image, settings) if outline is None else outline
    bones = (ct > settings.canal_bone_hu) & outline
    sx, sy, sz = (float(s) for s in image.spacing)
    pixel_cm2 = sx * sy / 100.0
    lo, hi = (a / pixel_cm2 for a in settings.canal_area_cm2)
    cross = ndimage.generate_binary_structure(2, 1)
    canal = np.zeros(ct.shape, bool)
    for z in range(ct.shape[0]):
        target = _seed_point(seed[z] if seed is not None else None, outline[z])
        if target is None or not bones[z].any():
            continue
        # a window of 2 x 40 mm around the target is enough and keeps this fast on 512² slices
        wy, wx = round(40.0 / sy), round(40.0 / sx)
        y0, x0 = max(0, round(target[0]) - wy), max(0, round(target[1]) - wx)
        window = (slice(y0, round(target[0]) + wy + 1), slice(x0, round(target[1]) + wx + 1))
        ring, values = bones[z][window], ct[z][window]
        ty = min(round(target[0]) - y0, ring.shape[0] - 1)
        tx = min(round(target[1]) - x0, ring.shape[1] - 1)
        chosen, chosen_distance = None, settings.canal_max_shift_mm
        for radius_mm in (2.0, 4.0, 6.0):
            iterations = max(1, round(radius_mm / min(sx, sy)))
            shut = ndimage.binary_closing(ring, cross, iterations=iterations)
            holes, count = ndimage.label(ndimage.binary_fill_holes(shut) & ~shut)
            for index in range(1, count + 1):
                piece = holes == index
                area = int(piece.sum())
                if not lo <= area <= hi or float(np.median(values[piece])) > settings.canal_max_hu:
                    continue
                ys, xs = np.nonzero(piece)
                distance = (
                    0.0 if piece[ty, tx] else float(np.hypot((ys.mean() - ty) * sy, (xs.mean() - tx) * sx))
                )
                if distance < chosen_distance:
                    grown = ndimage.binary_dilation(piece, cross, iterations=iterations)
                    chosen, chosen_distance = grown & ~ring, distance
            if chosen is not None and chosen_distance == 0.0:
                break
        if chosen is not None:
            canal[z][window] = chosen
    found = np.nonzero(canal.any(axis=(1, 2)))[0]
    if len(found):
        for z in range(ct.shape[0]):
            nearest = int(found[np.argmin(np.abs(found - z))])
            if nearest != z and abs(nearest - z) * sz <= 10.0:
                canal[z] = canal[nearest] & ~bones[z]
    return canal


def _seed_point(seed: np.ndarray | None, outline: np.ndarray) -> tuple[float, float] | None:
    if seed is not None and seed.any():
        ys, xs = np.nonzero(seed)
        return float(ys.mean()), float(xs.mean())
    if not outline.any():
        return None
    ys, xs = np.nonzero(outline)
    return float(ys.mean() + 0.6 * (ys.max() - ys.mean())), float(np.median(xs))  # posterior = larger row


def anatomy(
    image: MedicalImage, seed_cord: np.ndarray | None = None, settings: AnatomySettings | None = None
):
    """Every HU-based structure: External, Lung_L, Lung_R, Lungs, SpinalCanal (name → bool ``[z, y, x]``)."""
    settings = settings or AnatomySettings()
    outline = body(image, settings)
    found = {"External": outline, **lungs(image, outline, settings)}
    found["SpinalCanal"] = spinal_canal(image, seed_cord, outline, settings)
    return found
