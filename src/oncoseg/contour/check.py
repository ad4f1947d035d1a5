"""Sanity checks of the contouring pipeline where no second labelled patient exists.

`synthetic_patient` bends an atlas CT and its labels with a known smooth random deformation (a small rotation
and shift plus a coarse B-spline) and adds noise; contouring that "patient" with the original atlas and scoring
against the bent labels (`dice_per_organ`) measures how well registration + refinement undo a *known*
deformation of the *same* anatomy. It says nothing about accuracy on another person's anatomy.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from oncoseg.contour.organs import Atlas
from oncoseg.contour.registration import to_sitk
from oncoseg.image import MedicalImage


def synthetic_patient(
    atlas: Atlas,
    seed: int = 0,
    max_displacement_mm: float = 10.0,
    rotation_deg: float = 4.0,
    shift_mm: float = 10.0,
    noise_hu: float = 20.0,
) -> tuple[MedicalImage, Atlas]:
    """A warped copy of the atlas CT (with Gaussian noise) and an Atlas holding its warped labels."""
    rng = np.random.default_rng(seed)
    image = to_sitk(atlas.image)
    centre = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])
    rigid = sitk.Euler3DTransform()
    rigid.SetCenter(centre)
    rigid.SetRotation(*np.deg2rad(rng.uniform(-rotation_deg, rotation_deg, 3)).tolist())
    rigid.SetTranslation(rng.uniform(-shift_mm, shift_mm, 3).tolist())
    bspline = sitk.BSplineTransformInitializer(image, [4, 4, 2], order=3)
    params = rng.uniform(-max_displacement_mm, max_displacement_mm, len(bspline.GetParameters()))
    bspline.SetParameters(params.tolist())
    transform = sitk.CompositeTransform([rigid, bspline])
    warped = sitk.Resample(image, image, transform, sitk.sitkLinear, -1024.0, sitk.sitkFloat32)
    labels = sitk.Resample(
        to_sitk(atlas.labels, np.uint16), image, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt16
    )
    pixels = sitk.GetArrayFromImage(warped) + rng.normal(0.0, noise_hu, atlas.image.shape)
    patient = atlas.image.with_array(np.clip(pixels, -1024, 3071).astype(np.int16))
    truth = Atlas(
        patient, atlas.labels.with_array(sitk.GetArrayFromImage(labels)), dict(atlas.names), "synthetic"
    )
    return patient, truth


def dice(a: np.ndarray, b: np.ndarray) -> float | None:
    """Dice of two masks (None when both are empty: nothing to score)."""
    total = int(a.sum()) + int(b.sum())
    return None if total == 0 else 2.0 * int((a & b).sum()) / total


def dice_per_organ(masks: dict[str, np.ndarray], truth: Atlas) -> dict[str, float | None]:
    """Dice of each mask against the same organ's label in ``truth``."""
    return {name: dice(mask, truth.mask(name)) for name, mask in masks.items()}
