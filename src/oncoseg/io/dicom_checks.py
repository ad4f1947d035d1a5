"""Checks of a DICOM series around ITK's read: a damaged series is refused or loaded with a warning, never
measured wrong. Messages name slices by count and position, never by UID, file name or patient data."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from oncoseg.errors import ImageReadError
from oncoseg.io.limits import ReadLimits, check_declared_size

if TYPE_CHECKING:  # imported where used: reading a picture needs neither
    import SimpleITK as sitk
    from pydicom.dataset import Dataset

PIXEL_DATA = 0x7FE00010
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
# What pydicom raises on damaged files.
DAMAGED = (
    OSError,
    EOFError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    RuntimeError,
    struct.error,
)
NO_SPACING = "no PixelSpacing: pixel sizes unknown, measurements in pixels"


def read_series_headers(
    folder: Path, files: Sequence[str], series_uid: str, listed: set[str], limits: ReadLimits
) -> tuple[list[Dataset], list[str]]:
    """Headers of the series' files (pixel data not read) after checking the declared size, that no slice is
    truncated and that no other file of the series was left out; returns (headers, warnings)."""
    import pydicom

    name, n = folder.name, len(files)
    headers = []
    for k, path in enumerate(files):
        try:
            headers.append(pydicom.dcmread(path, defer_size=1024))
        except DAMAGED as exc:
            raise ImageReadError(f"{name}: slice {k} of {n} cannot be read (damaged DICOM header)") from exc
    shapes = [_pixel_shape(ds) for ds in headers]
    if any(s is None for s in shapes):
        raise ImageReadError(
            f"{name}: {sum(s is None for s in shapes)} of {n} files lack usable Rows/Columns"
        )
    frames = sum(s[0] for s in shapes)
    rows, columns, samples, bits = (max(s[i] for s in shapes) for i in range(1, 5))
    shape = (frames, rows, columns) + ((samples,) if samples > 1 else ())
    check_declared_size(name, shape, (bits + 7) // 8, limits)
    short = [k for k, (ds, path, s) in enumerate(zip(headers, files, shapes)) if _is_truncated(ds, path, s)]
    if short:
        raise ImageReadError(
            f"{name}: {len(short)} of {n} slices are truncated (pixel data shorter than declared)"
        )

    skipped, missing = _unlisted_files(folder, listed, series_uid)
    if missing:
        raise ImageReadError(
            f"{name}: {missing} file(s) of this series cannot be read (damaged or truncated); refusing an incomplete scan"
        )
    warnings = (
        [f"{skipped} DICOM file(s) in the folder could not be read and were skipped"] if skipped else []
    )
    return headers, warnings


def _pixel_shape(ds: Dataset) -> tuple[int, int, int, int, int] | None:
    """(frames, rows, columns, samples per pixel, bits allocated), or None if unusable."""
    try:
        shape = tuple(int(ds.get(key) or default) for key, default in _SHAPE_TAGS)
    except (TypeError, ValueError):
        return None
    return shape if min(shape) > 0 else None


_SHAPE_TAGS = [
    ("NumberOfFrames", 1),
    ("Rows", 0),
    ("Columns", 0),
    ("SamplesPerPixel", 1),
    ("BitsAllocated", 16),
]


def _is_truncated(ds: Dataset, path: str, shape: tuple[int, ...]) -> bool:
    element = ds.get_item(PIXEL_DATA, keep_deferred=True)
    if element is None:
        return True
    frames, rows, columns, samples, bits = shape
    expected = (frames * rows * columns * samples * bits + 7) // 8
    if getattr(element, "value", None) is not None:  # read (small): its length is what the file holds
        if getattr(element, "is_undefined_length", False) or not isinstance(element.value, bytes):
            return False  # encapsulated (compressed) frames: the decoder reports damage
        return len(element.value) < expected
    if element.length == 0xFFFFFFFF:
        return False
    return element.length < expected or element.value_tell + element.length > Path(path).stat().st_size


def _unlisted_files(folder: Path, listed: set[str], series_uid: str) -> tuple[int, int]:
    """(DICOM-looking files no series holds that are unreadable or images, such files of ``series_uid``).

    Readable non-image objects of other series (RTSTRUCT, SR) and DICOMDIR are not counted."""
    import pydicom

    skipped = missing = 0
    for path in sorted(folder.iterdir()):
        if path.name in listed or path.name.upper() == "DICOMDIR" or not path.is_file():
            continue
        if path.suffix.lower() != ".dcm" and not _has_preamble(path):
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, defer_size=1024)
            uid, sop_class = str(ds.get("SeriesInstanceUID", "")), str(ds.get("SOPClassUID", ""))
            image = "Rows" in ds
        except DAMAGED:
            uid, sop_class, image = "", "", True
        if uid and series_uid.startswith(uid):  # a cut-off file keeps a prefix of the UID
            missing += 1
        elif sop_class != DICOMDIR_CLASS and (not uid or image):
            skipped += 1
    return skipped, missing


def _has_preamble(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(128)
        return f.read(4) == b"DICM"


def _floats(ds: Dataset, keyword: str, count: int) -> np.ndarray | None:
    """The tag's ``count`` numbers if all finite; None if absent; raises ValueError if present but unusable."""
    if keyword not in ds or ds.get(keyword) in (None, ""):
        return None
    value = ds.get(keyword)
    values = np.array(
        [float(v) for v in (value if isinstance(value, Sequence) and not isinstance(value, str) else [value])]
    )
    if values.shape != (count,) or not np.all(np.isfinite(values)):
        raise ValueError(keyword)
    return values


def _tag(ds: Dataset, keyword: str, count: int) -> np.ndarray | None | str:
    try:
        return _floats(ds, keyword, count)
    except DAMAGED:
        return "bad"


def check_positions(name: str, headers: Sequence[Dataset]) -> tuple[float, np.ndarray] | None:
    """Refuse a multi-file series whose slice positions or orientations are missing, mixed, repeated, sheared or
    unevenly spaced; return (slice step in mm, slice normal), or None for a single file."""
    n = len(headers)
    if n < 2:
        return None
    positions = [_tag(ds, "ImagePositionPatient", 3) for ds in headers]
    orientations = [_tag(ds, "ImageOrientationPatient", 6) for ds in headers]
    for keyword, values in (("ImagePositionPatient", positions), ("ImageOrientationPatient", orientations)):
        bad = sum(not isinstance(v, np.ndarray) for v in values)
        if bad:
            raise ImageReadError(
                f"{name}: {bad} of {n} slices have no usable {keyword}; slice geometry unknown"
            )
    differ = sum(np.max(np.abs(o - orientations[0])) > 1e-4 for o in orientations)
    if differ:
        raise ImageReadError(
            f"{name}: {differ} of {n} slices have an ImageOrientationPatient different from the others"
        )
    row, column = orientations[0][:3], orientations[0][3:]
    if (
        abs(np.linalg.norm(row) - 1) > 1e-3
        or abs(np.linalg.norm(column) - 1) > 1e-3
        or abs(row @ column) > 1e-3
    ):
        raise ImageReadError(f"{name}: ImageOrientationPatient is not two perpendicular unit vectors")
    normal = np.cross(row, column)
    positions = np.array(positions)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    steps = np.diff(along[order])
    same = steps < 1e-3
    if same.any():
        shared = int(np.sum(np.r_[same, False] | np.r_[False, same]))
        i = int(np.argmax(same))
        raise ImageReadError(
            f"{name}: {shared} of {n} slices share a position with another (first at slices {i} and {i + 1},"
            " 0-based, sorted by position)"
        )
    travel = along - along[order[0]]
    shift = np.linalg.norm(positions - positions[order[0]] - np.outer(travel, normal), axis=1)
    if np.any(shift > 0.01 + 0.01 * np.abs(travel)):
        raise ImageReadError(
            f"{name}: slices are shifted in-plane along the stack (up to {shift.max():.3g} mm; gantry tilt or mixed"
            " stacks), which this reader cannot place correctly"
        )
    if steps.max() > 1.01 * steps.min() + 0.01:
        median = float(np.median(steps))
        i = int(np.argmax(np.abs(steps - median)))
        raise ImageReadError(
            f"{name}: uneven slice spacing: {steps[i]:.4g} mm between slices {i} and {i + 1} of {n} (0-based, sorted"
            f" by position) where the median step is {median:.4g} mm; missing or extra slices?"
        )
    return float((along[order[-1]] - along[order[0]]) / (n - 1)), normal


def check_spacing(
    name: str, headers: Sequence[Dataset], itk_image: sitk.Image, stack: tuple[float, np.ndarray] | None
) -> tuple[sitk.Image, list[str]]:
    """Refuse unless ITK's spacing agrees with PixelSpacing and the slice positions; a single file without
    PixelSpacing is returned in pixel units with a warning. Returns (image, warnings)."""
    n = len(headers)
    pixel = [_pixel_spacing(ds) for ds in headers]
    if any(isinstance(p, str) or (p is not None and np.any(p <= 0)) for p in pixel):
        raise ImageReadError(f"{name}: bad geometry: PixelSpacing is not two finite numbers > 0")
    missing = sum(p is None for p in pixel)
    if 0 < missing < n:
        raise ImageReadError(f"{name}: PixelSpacing missing in {missing} of {n} slices")
    if not missing and any(np.max(np.abs(p - pixel[0])) > 1e-4 * pixel[0].max() for p in pixel):
        raise ImageReadError(f"{name}: PixelSpacing differs between slices")
    spacing = np.array(itk_image.GetSpacing(), float)
    in_plane = spacing[1::-1]  # (row spacing, column spacing) as PixelSpacing orders them
    imager = _tag(headers[0], "ImagerPixelSpacing", 2)
    imager = imager if isinstance(imager, np.ndarray) and np.all(imager > 0) else None
    warnings = []
    if missing:
        if n > 1:
            raise ImageReadError(f"{name}: no PixelSpacing in a multi-slice series: voxel sizes unknown")
        if imager is not None and _close(in_plane, imager) and itk_image.GetDimension() == 2:
            warnings.append(
                "no PixelSpacing: using ImagerPixelSpacing (sizes at the detector, not the patient)"
            )
        else:
            itk_image.SetSpacing([1.0] * itk_image.GetDimension())
            warnings.append(NO_SPACING)
    elif not any(ref is not None and _close(in_plane, ref) for ref in (pixel[0], imager)):
        raise ImageReadError(f"{name}: pixel spacing read {tuple(in_plane)} disagrees with PixelSpacing")
    if stack is not None:
        step, normal = stack
        axis = np.reshape(itk_image.GetDirection(), (3, 3))[:, 2]
        if abs(axis @ normal) < 0.999 or not _close(spacing[2:3], np.array([step])):
            raise ImageReadError(
                f"{name}: slice spacing read ({spacing[2]:.4g} mm) disagrees with the slice positions ({step:.4g} mm)"
            )
    return itk_image, warnings


def _pixel_spacing(ds: Dataset) -> np.ndarray | None | str:
    """PixelSpacing, also from the functional groups of an enhanced multi-frame object."""
    value = _tag(ds, "PixelSpacing", 2)
    for group in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        if value is None and group in ds:
            try:
                value = _tag(ds[group][0].PixelMeasuresSequence[0], "PixelSpacing", 2)
            except (IndexError, AttributeError, KeyError, TypeError):
                continue
    return value


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.all(np.abs(np.asarray(a) - np.asarray(b)) <= np.maximum(0.01 * np.abs(b), 0.01)))
