"""Register an atlas CT to a patient CT with SimpleITK and carry the atlas labels over.

Stages, all on copies resampled to a coarse isotropic grid (``spacing`` mm, 4 by default) for speed:

1. start: align the body centres in x and y, then search the head-foot shift exhaustively (Mattes mutual
   information), because an atlas and a patient scan rarely cover the same stretch of the body;
2. affine: rigid, then affine (Mattes MI, two resolutions);
3. deformable: a dense displacement field from symmetric-forces demons on soft-tissue-windowed HU (a B-spline
   with Mattes MI took ~3 minutes here and scored worse on the example data).

The result maps patient points to atlas points, so atlas labels are resampled onto the patient's own grid
(nearest neighbour: labels stay labels).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from oncoseg.errors import OncoSegError
from oncoseg.image import MedicalImage

BODY_HU = -400.0  # voxels above this are "body" for the starting alignment
SOFT_TISSUE_HU = (-250.0, 350.0)  # the window the deformable stage compares


@dataclass
class Registration:
    """The patient → atlas transform and how long each stage took (seconds)."""

    transform: sitk.Transform
    timings: dict[str, float] = field(default_factory=dict)


def to_sitk(image: MedicalImage, dtype=np.float32) -> sitk.Image:
    """A SimpleITK image with ``image``'s pixels (as ``dtype``) and LPS geometry."""
    if not image.is_3d or image.channels != 1:
        raise OncoSegError("registration needs a single-channel 3D volume")
    itk = sitk.GetImageFromArray(np.ascontiguousarray(image.array, dtype=dtype))
    itk.SetSpacing(tuple(float(s) for s in image.spacing))
    itk.SetOrigin(tuple(float(o) for o in image.origin))
    itk.SetDirection(tuple(float(d) for d in image.direction))
    return itk


def resample_isotropic(image: sitk.Image, spacing: float, default: float = -1024.0) -> sitk.Image:
    """Smooth (against aliasing) and resample ``image`` to ``spacing`` mm in all three axes."""
    old_spacing = np.array(image.GetSpacing())
    size = np.array(image.GetSize())
    new_size = [max(2, round(float(n))) for n in size * old_spacing / spacing]
    sigma = [max(0.01, (spacing - s) / 2.0) for s in old_spacing]  # ITK refuses a zero sigma
    smoothed = sitk.SmoothingRecursiveGaussian(image, sigma) if max(sigma) > 0.01 else image
    return sitk.Resample(
        smoothed,
        new_size,
        sitk.Transform(),
        sitk.sitkLinear,
        image.GetOrigin(),
        (spacing,) * 3,
        image.GetDirection(),
        default,
        sitk.sitkFloat32,
    )


def _body_centre(image: sitk.Image) -> np.ndarray:
    """Physical centre (x, y, z) of the voxels above ``BODY_HU`` (the image centre if there are none)."""
    array = sitk.GetArrayViewFromImage(image)
    zyx = np.argwhere(array > BODY_HU)
    if len(zyx) == 0:
        index = (np.array(image.GetSize()) - 1) / 2.0
    else:
        index = zyx.mean(axis=0)[::-1]
    return np.array(image.TransformContinuousIndexToPhysicalPoint(index.tolist()))


def _z_extent(image: sitk.Image) -> tuple[float, float]:
    """Lowest and highest physical z of the image's corners."""
    size = image.GetSize()
    zs = [
        image.TransformIndexToPhysicalPoint((i, j, k))[2]
        for i in (0, size[0] - 1)
        for j in (0, size[1] - 1)
        for k in (0, size[2] - 1)
    ]
    return min(zs), max(zs)


def _mattes(method: sitk.ImageRegistrationMethod, bins: int = 32, fraction: float = 0.25, seed: int = 7):
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(fraction, seed)
    method.SetInterpolator(sitk.sitkLinear)


def initial_translation(
    fixed: sitk.Image, moving: sitk.Image, step_mm: float = 8.0
) -> sitk.TranslationTransform:
    """Body centres aligned in x/y; the head-foot shift found by exhaustive search over the atlas' length."""
    shift = _body_centre(moving) - _body_centre(fixed)
    f_lo, f_hi = _z_extent(fixed)
    m_lo, m_hi = _z_extent(moving)
    # candidate shifts: every placement where the two scans overlap by at least a third of the shorter one
    overlap = min(f_hi - f_lo, m_hi - m_lo) / 3.0
    lo, hi = m_lo - f_hi + overlap, m_hi - f_lo - overlap
    if hi <= lo:
        lo = hi = (m_lo + m_hi - f_lo - f_hi) / 2.0
    centre = (lo + hi) / 2.0
    steps = int(np.ceil((hi - lo) / 2.0 / step_mm))
    transform = sitk.TranslationTransform(3, (float(shift[0]), float(shift[1]), float(centre)))
    if steps == 0:
        return transform
    # exhaustive search: the metric at every candidate shift, keep the best
    best, best_value = None, np.inf
    for k in range(-steps, steps + 1):
        candidate = sitk.TranslationTransform(3, (float(shift[0]), float(shift[1]), centre + k * step_mm))
        probe = sitk.ImageRegistrationMethod()
        _mattes(probe, fraction=0.5)
        probe.SetInitialTransform(candidate, inPlace=True)
        try:
            value = probe.MetricEvaluate(fixed, moving)
        except RuntimeError:  # too little overlap at this shift
            continue
        if value < best_value:
            best, best_value = candidate, value
    return best or transform


def _affine(fixed: sitk.Image, moving: sitk.Image, start: sitk.Transform, iterations: int) -> sitk.Transform:
    """Rigid, then affine; returns the affine (which already includes ``start``)."""
    centre = _body_centre(fixed).tolist()
    rigid = sitk.Euler3DTransform()
    rigid.SetCenter(centre)
    rigid.SetTranslation(start.GetOffset())
    affine = sitk.AffineTransform(3)
    affine.SetCenter(centre)
    for transform in (rigid, affine):
        if transform is affine:
            affine.SetTranslation(rigid.GetTranslation())
            affine.SetMatrix(rigid.GetMatrix())
        method = sitk.ImageRegistrationMethod()
        _mattes(method)
        method.SetOptimizerAsRegularStepGradientDescent(
            learningRate=2.0, minStep=1e-3, numberOfIterations=iterations, relaxationFactor=0.6
        )
        method.SetOptimizerScalesFromPhysicalShift()
        method.SetShrinkFactorsPerLevel([2, 1])
        method.SetSmoothingSigmasPerLevel([1.0, 0.0])
        method.SetInitialTransform(transform, inPlace=True)
        method.Execute(fixed, moving)
    return affine


def _demons(
    fixed: sitk.Image, moving: sitk.Image, bulk: sitk.Transform, iterations: int, sigma: float
) -> sitk.Transform:
    """A dense displacement field on top of ``bulk`` (symmetric-forces demons on soft-tissue-windowed HU)."""
    aligned = sitk.Resample(moving, fixed, bulk, sitk.sitkLinear, -1024.0, sitk.sitkFloat32)
    low, high = SOFT_TISSUE_HU
    demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
    demons.SetNumberOfIterations(iterations)
    demons.SetStandardDeviations(sigma)
    field = demons.Execute(
        sitk.Clamp(fixed, sitk.sitkFloat32, low, high), sitk.Clamp(aligned, sitk.sitkFloat32, low, high)
    )
    displacement = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    return sitk.CompositeTransform([bulk, displacement])  # applied last-added first: field, then bulk


def register(
    patient: MedicalImage,
    atlas: MedicalImage,
    *,
    spacing: float = 4.0,
    deformable: bool = True,
    iterations: int = 60,
    demons_iterations: int = 80,
    demons_sigma: float = 1.5,
    on_stage: Callable[[str], None] | None = None,
) -> Registration:
    """Transform mapping ``patient`` points to ``atlas`` points (CT to CT, Mattes mutual information)."""
    timings: dict[str, float] = {}
    start = time.perf_counter()
    fixed = resample_isotropic(to_sitk(patient), spacing)
    moving = resample_isotropic(to_sitk(atlas), spacing)
    timings["resample"] = time.perf_counter() - start

    def stage(name: str, began: float) -> float:
        timings[name] = time.perf_counter() - began
        if on_stage:
            on_stage(name)
        return time.perf_counter()

    t = time.perf_counter()
    try:
        translation = initial_translation(fixed, moving)
        t = stage("initial", t)
        transform: sitk.Transform = _affine(fixed, moving, translation, iterations)
        t = stage("affine", t)
        if deformable:
            transform = _demons(fixed, moving, transform, demons_iterations, demons_sigma)
            stage("deformable", t)
    except RuntimeError as exc:
        lines = str(exc).strip().splitlines()
        raise OncoSegError(f"atlas registration failed: {lines[-1] if lines else exc}") from exc
    return Registration(transform, timings)


def warp_labels(labels: MedicalImage, registration: Registration | sitk.Transform, patient: MedicalImage):
    """Atlas label map resampled (nearest neighbour) onto the patient's grid, as a ``[z, y, x]`` uint16 array."""
    transform = registration.transform if isinstance(registration, Registration) else registration
    reference = to_sitk(patient.with_array(np.zeros(patient.shape, np.uint8)), np.uint8)
    warped = sitk.Resample(
        to_sitk(labels, np.uint16), reference, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt16
    )
    return sitk.GetArrayFromImage(warped)


def warp_image(
    image: MedicalImage, transform: sitk.Transform, reference: MedicalImage, default: float = -1024.0
):
    """``image`` resampled (linear) onto ``reference``'s grid through ``transform`` (reference → image points)."""
    ref = to_sitk(reference.with_array(np.zeros(reference.shape, np.uint8)), np.uint8)
    warped = sitk.Resample(to_sitk(image), ref, transform, sitk.sitkLinear, default, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(warped)
