"""The source DICOM series that RTSTRUCT and SEG objects refer to, and its pixel ↔ array geometry.

Masks live in the array of ``oncoseg.io.load_image(folder)`` (``[z, y, x]``, reoriented to LPS). DICOM objects
live in the stored pixel frame of every source file (row ``r``, column ``c``). For each file this module keeps
the integer map ``(r, c) → (z, y, x)`` so masks turn into per-file frames and back without any resampling, for
axial, flipped, transposed or oblique series alike.
"""

from __future__ import annotations

import hashlib
import logging
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from oncoseg.errors import DicomExportError
from oncoseg.image import MedicalImage

log = logging.getLogger(__name__)

_TOLERANCE = 1e-2  # voxels: the file geometry must map onto the array grid to within this


@dataclass
class _FrameMap:
    base: np.ndarray  # (x, y, z) array index of pixel (0, 0)
    step_r: np.ndarray  # (x, y, z) index step for one row down
    step_c: np.ndarray  # (x, y, z) index step for one column right


@dataclass
class ReferenceSeries:
    """A loaded source series: the image, one header per file (array order) and the UIDs to refer to."""

    image: MedicalImage
    headers: list[pydicom.Dataset]
    sop_instance_uids: list[str]
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    rows: int
    columns: int
    positions: np.ndarray  # (n, 3) ImagePositionPatient per file
    row_cosine: np.ndarray  # direction of increasing column index
    column_cosine: np.ndarray  # direction of increasing row index
    pixel_spacing: tuple[float, float]  # (between rows, between columns)
    maps: list[_FrameMap]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.image.shape

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_cosine, self.column_cosine)

    def pixel_to_patient(self, index: int, rc: np.ndarray) -> np.ndarray:
        """Patient coordinates (mm, LPS) of ``(row, column)`` points (float, shape (n, 2)) in file ``index``."""
        dr, dc = self.pixel_spacing
        return (
            self.positions[index]
            + np.outer(rc[:, 1] * dc, self.row_cosine)
            + np.outer(rc[:, 0] * dr, self.column_cosine)
        )

    def patient_to_pixel(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(row, column)`` of patient points in the common image plane, and their distance along the normal
        from the first file's plane (mm)."""
        rel = np.asarray(points, dtype=float) - self.positions[0]
        dr, dc = self.pixel_spacing
        rc = np.stack([rel @ self.column_cosine / dr, rel @ self.row_cosine / dc], axis=1)
        return rc, rel @ self.normal

    def slice_offsets(self) -> np.ndarray:
        """Distance of every file's plane from the first along the normal (mm)."""
        return (self.positions - self.positions[0]) @ self.normal

    def to_frames(self, mask: np.ndarray) -> np.ndarray:
        """An array-layout mask ``[z, y, x]`` as stored-pixel frames ``[file, row, column]``."""
        frames = np.empty((len(self.maps), self.rows, self.columns), dtype=mask.dtype)
        for k in range(len(self.maps)):
            frames[k] = self.frame_view(mask, k)
        return frames

    def from_frames(self, frames: np.ndarray) -> np.ndarray:
        """Stored-pixel frames ``[file, row, column]`` back to the array layout ``[z, y, x]``."""
        mask = np.zeros(self.shape, dtype=frames.dtype)
        for k in range(len(self.maps)):
            self.frame_view(mask, k)[...] = frames[k]
        return mask

    def frame_view(self, volume: np.ndarray, k: int) -> np.ndarray:
        """A writable view ``[row, column]`` of ``volume`` (array layout) on file ``k``'s pixels."""
        m = self.maps[k]
        axis_r, axis_c = 2 - int(np.flatnonzero(m.step_r)[0]), 2 - int(np.flatnonzero(m.step_c)[0])
        index: list[object] = [int(m.base[2 - a]) for a in range(3)]
        for axis, step, count in ((axis_r, m.step_r, self.rows), (axis_c, m.step_c, self.columns)):
            sign = int(step[2 - axis])
            start = int(m.base[2 - axis])
            stop = start + sign * count
            index[axis] = slice(start, None if stop < 0 else stop, sign)
        view = volume[tuple(index)]
        return view if axis_r < axis_c else view.T


def load_reference(folder: str | Path) -> ReferenceSeries:
    """Load a DICOM series folder (CT/MR) as the reference of RTSTRUCT/SEG objects."""
    from oncoseg.io import load_image

    folder = Path(folder)
    if not folder.is_dir():
        raise DicomExportError(f"{folder}: the reference must be a DICOM series folder")
    image = load_image(folder)
    if image.metadata.get("format") != "dicom" or not image.is_3d:
        raise DicomExportError(f"{folder}: the reference must be a DICOM volume (a CT or MR series)")
    files = image.metadata["dicom_files"]
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    sop_uids = [_uid(h, "SOPInstanceUID") for h in headers]
    if any(uid is None for uid in sop_uids) or len(set(sop_uids)) != len(sop_uids):
        raise DicomExportError(f"{folder}: source files lack unique SOP Instance UIDs")
    sop_class = _uid(headers[0], "SOPClassUID")
    if sop_class is None:
        raise DicomExportError(f"{folder}: source files lack a SOP Class UID")
    frame_of_reference = _uid(headers[0], "FrameOfReferenceUID") or _derived_uid("for", sop_uids, folder)
    study = _uid(headers[0], "StudyInstanceUID") or _derived_uid("study", sop_uids, folder)
    series = _uid(headers[0], "SeriesInstanceUID") or _derived_uid("series", sop_uids, folder)
    for h, sop in zip(headers, sop_uids, strict=True):
        # Fill in what anonymisers blanked, so the copies handed to highdicom refer to the same UIDs.
        h.SOPInstanceUID, h.SOPClassUID = sop, sop_class
        h.StudyInstanceUID, h.SeriesInstanceUID, h.FrameOfReferenceUID = study, series, frame_of_reference

    try:
        orientation = np.array([[float(v) for v in h.ImageOrientationPatient] for h in headers])
        positions = np.array([[float(v) for v in h.ImagePositionPatient] for h in headers])
        spacings = np.array([[float(v) for v in h.PixelSpacing] for h in headers])
        sizes = {(int(h.Rows), int(h.Columns)) for h in headers}
    except (AttributeError, TypeError, ValueError) as exc:
        raise DicomExportError(f"{folder}: source files lack image position/orientation/spacing") from exc
    if np.ptp(orientation, axis=0).max() > 1e-4 or np.ptp(spacings, axis=0).max() > 1e-4 or len(sizes) != 1:
        raise DicomExportError(f"{folder}: files differ in orientation, pixel spacing or size")
    rows, columns = sizes.pop()
    row_cosine, column_cosine = orientation[0, :3], orientation[0, 3:]
    reference = ReferenceSeries(
        image=image,
        headers=headers,
        sop_instance_uids=sop_uids,
        sop_class_uid=sop_class,
        study_instance_uid=study,
        series_instance_uid=series,
        frame_of_reference_uid=frame_of_reference,
        rows=rows,
        columns=columns,
        positions=positions,
        row_cosine=row_cosine / np.linalg.norm(row_cosine),
        column_cosine=column_cosine / np.linalg.norm(column_cosine),
        pixel_spacing=(float(spacings[0, 0]), float(spacings[0, 1])),
        maps=[],
    )
    reference.maps = [_frame_map(reference, k, folder) for k in range(len(headers))]
    return reference


def _frame_map(ref: ReferenceSeries, k: int, folder: Path) -> _FrameMap:
    """The integer map from file ``k``'s pixels to array indices; refuse a geometry that is not a pure
    permutation/flip of the array grid (e.g. gantry tilt, uneven slices)."""
    image = ref.image
    to_index = np.linalg.inv(np.reshape(image.direction, (3, 3)) @ np.diag(image.spacing))
    corners = ref.pixel_to_patient(k, np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    idx = (corners - np.asarray(image.origin)) @ to_index.T
    base, step_r, step_c = idx[0], idx[1] - idx[0], idx[2] - idx[0]
    rounded = [np.round(v) for v in (base, step_r, step_c)]
    if max(
        np.abs(v - r).max() for v, r in zip((base, step_r, step_c), rounded, strict=True)
    ) > _TOLERANCE or not (np.abs(rounded[1]).sum() == 1 == np.abs(rounded[2]).sum()):
        raise DicomExportError(
            f"{folder}: slice geometry does not fit a regular grid (tilted or unevenly spaced slices?)"
        )
    m = _FrameMap(*(r.astype(int) for r in rounded))
    far = m.base + (ref.rows - 1) * m.step_r + (ref.columns - 1) * m.step_c
    size_xyz = np.array(image.shape[::-1])
    if (np.minimum(m.base, far) < 0).any() or (np.maximum(m.base, far) >= size_xyz).any():
        raise DicomExportError(f"{folder}: a source file lies outside the loaded volume")
    return m


def _uid(dataset: pydicom.Dataset, keyword: str) -> str | None:
    value = dataset.get(keyword) or getattr(dataset, "file_meta", {}).get(f"MediaStorage{keyword}")
    return str(value).strip() or None if value else None


def _derived_uid(kind: str, sop_uids: list[str], folder: Path) -> str:
    """A stable UID for a source series whose Study/Series/Frame-of-Reference UID was blanked (anonymised)."""
    uid = generate_uid(entropy_srcs=[kind, *sop_uids])
    digest = hashlib.sha256(uid.encode()).hexdigest()[:8]
    log.warning("%s: source series has no %s UID; using a derived one (%s…)", folder.name, kind, digest)
    return uid


def validate_masks(masks, reference: ReferenceSeries, *, allow_empty: bool = False) -> dict[str, np.ndarray]:
    """Check ``masks`` (name → binary array in the reference's array layout) and return bool copies keyed by
    their TG-263 names; raise DicomExportError naming the first problem."""
    from oncoseg.dicom.tg263 import standard_name

    if not hasattr(masks, "items") or len(masks) == 0:
        raise DicomExportError("no masks given: pass at least one structure (name → mask)")
    checked: dict[str, np.ndarray] = {}
    for name, mask in masks.items():
        if not isinstance(name, str) or not name.strip():
            raise DicomExportError(f"structure name {name!r} is not a non-empty string")
        mask = np.asarray(getattr(mask, "array", mask))  # a MedicalImage or an array
        if mask.shape != reference.shape:
            raise DicomExportError(
                f"mask {name!r} has shape {mask.shape}, but the reference series is {reference.shape} (z, y, x)"
            )
        if mask.dtype != bool:
            if not (np.issubdtype(mask.dtype, np.number)):
                raise DicomExportError(f"mask {name!r} has dtype {mask.dtype}; expected bool or 0/1 numbers")
            if np.issubdtype(mask.dtype, np.floating) and not np.isfinite(mask).all():
                raise DicomExportError(f"mask {name!r} contains NaN or infinite values")
            values = np.unique(mask)
            if not np.isin(values, (0, 1)).all():
                shown = ", ".join(f"{v:g}" for v in values[:6])
                raise DicomExportError(
                    f"mask {name!r} is not binary (values {shown}{'…' if len(values) > 6 else ''})"
                )
        mask = mask.astype(bool)
        if not allow_empty and not mask.any():
            raise DicomExportError(
                f"mask {name!r} is empty (pass allow_empty=True to write it without contours)"
            )
        std = standard_name(name)
        if std in checked:
            raise DicomExportError(f"two masks map to the same structure name {std!r}")
        checked[std] = mask
    return checked


def require(module: str, package: str):
    """Import an optional dependency of the DICOM extra, or raise a clear error saying how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DicomExportError(
            f"DICOM export needs {package}: pip install 'oncoseg[dicom]' (or pip install {package})"
        ) from exc


def software_version() -> str:
    """Onco-Seg's version for the generated-by fields."""
    try:
        from oncoseg import __version__

        return str(__version__)
    except ImportError:  # pragma: no cover - only without the package's own __init__
        from importlib.metadata import version

        return version("oncoseg")


# DICOM value representations of the user-given text the writers store (PS3.5 6.2): most characters, whether a
# backslash is allowed (it separates values in SH/LO), and the control characters allowed.
_TEXT_RULES = {
    "SH": (16, False, "\x1b"),
    "LO": (64, False, "\x1b"),
    "ST": (1024, True, "\n\r\f\t\x1b"),
    "LT": (10240, True, "\n\r\f\t\x1b"),
}


def check_text(value: str, vr: str, what: str) -> str:
    """Return ``value`` if DICOM allows it as one value of ``vr`` (SH, LO, ST, LT); else raise DicomExportError
    naming ``what`` and the rule it breaks. The one check of user text (names, descriptions) for both writers."""
    if not isinstance(value, str):
        raise DicomExportError(f"{what} must be text, got {type(value).__name__}")
    limit, backslash, controls = _TEXT_RULES[vr]
    if "\\" in value and not backslash:
        raise DicomExportError(
            f"{what} {value!r} contains a backslash, which DICOM reserves to separate values ({vr}): remove it"
        )
    bad = sorted({ch for ch in value if unicodedata.category(ch) in ("Cc", "Cs") and ch not in controls})
    if bad:
        shown = ", ".join(f"U+{ord(ch):04X}" for ch in bad)
        raise DicomExportError(f"{what} {value!r} contains control characters DICOM does not allow ({shown})")
    if len(value) > limit:
        raise DicomExportError(
            f"{what} is {len(value)} characters long; DICOM allows at most {limit} here ({vr}): shorten it"
        )
    return value
