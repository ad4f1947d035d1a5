"""Write masks and images atomically, on the grid and in the orientation of the file they came from."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image

from oncoseg.errors import OncoSegError
from oncoseg.image import MedicalImage
from oncoseg.io.read import suffix_of

VOLUME_OUTPUTS = (".nii.gz", ".nii", ".nrrd", ".mha")
PHOTO_OUTPUTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@contextmanager
def atomic_write_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (e.g. ``.tmp-1a2b3c4d.mask.nii.gz``) for the caller to write.

    On success the temporary file replaces ``path``; on any error it is deleted and the error re-raised,
    so a partial output is never left behind. Missing parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{secrets.token_hex(4)}.{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_mask(mask: np.ndarray, reference: MedicalImage, path: str | os.PathLike) -> Path:
    """Write a label mask (integers 0-255) as uint8 on ``reference``'s grid, in its original orientation.

    Formats by extension: .nii, .nii.gz, .nrrd, .mha; for 2D references also .png (a binary mask is
    written as 0/255, other labels as they are).
    """
    path = Path(path)
    mask = np.asarray(mask)
    if mask.shape != reference.shape:
        raise OncoSegError(f"{path}: mask shape {mask.shape} does not match image shape {reference.shape}")
    if (
        mask.size
        and mask.dtype != bool
        and (not np.array_equal(mask, np.round(mask)) or mask.min() < 0 or mask.max() > 255)
    ):
        raise OncoSegError(
            f"{path}: mask values must be integer labels 0-255, got {mask.dtype} "
            f"in [{mask.min()}, {mask.max()}]"
        )
    labels = mask.astype(np.uint8)
    suffix = _output_suffix(path, (".png",) if reference.ndim == 2 else ())
    if suffix == ".png" and labels.max(initial=0) <= 1:
        labels = labels * np.uint8(255)
    return _write(labels, reference, 1, path, suffix)


def check_mask_path(path: str | os.PathLike, reference: MedicalImage) -> Path:
    """Raise OncoSegError now, before any work, if a mask for ``reference`` cannot be written to ``path``."""
    path = Path(path)
    _output_suffix(path, (".png",) if reference.ndim == 2 else ())
    if path.is_dir():
        raise OncoSegError(f"{path}: is a folder; give a file name for the mask")
    return path


def save_image(image: MedicalImage, path: str | os.PathLike) -> Path:
    """Write an image in its original orientation: .nii, .nii.gz, .nrrd, .mha, or for 2D images also
    .png/.jpg/.jpeg/.tif/.tiff/.bmp (8-bit grey or RGB; 16-bit grey for PNG and TIFF)."""
    path = Path(path)
    suffix = _output_suffix(path, PHOTO_OUTPUTS if image.ndim == 2 else ())
    return _write(image.array, image, image.channels, path, suffix)


def _output_suffix(path: Path, photo: tuple[str, ...]) -> str:
    allowed = (*VOLUME_OUTPUTS, *photo)
    suffix = suffix_of(path, allowed)
    if suffix is None:
        raise OncoSegError(f"{path}: cannot write this file type here; use one of {', '.join(allowed)}")
    return suffix


def _write(array: np.ndarray, reference: MedicalImage, channels: int, path: Path, suffix: str) -> Path:
    try:
        with atomic_write_path(path) as tmp:
            if suffix in PHOTO_OUTPUTS:
                Image.fromarray(array).save(tmp)
            else:
                sitk.WriteImage(_to_sitk(array, reference, channels), str(tmp), True)
    except (RuntimeError, OSError, TypeError, ValueError) as exc:
        raise OncoSegError(
            f"{path}: cannot write a {array.dtype} image with {channels} channel(s) as {suffix} "
            f"({_last_line(exc)})"
        ) from exc
    return path


def _to_sitk(array: np.ndarray, reference: MedicalImage, channels: int) -> sitk.Image:
    """``array`` on ``reference``'s LPS grid, turned back to the orientation of the file it came from."""
    itk_image = sitk.GetImageFromArray(array, isVector=channels > 1)
    itk_image.SetSpacing(reference.spacing)
    itk_image.SetOrigin(reference.origin)
    itk_image.SetDirection(reference.direction)
    if reference.ndim == 3 and reference.source_orientation not in (None, "LPS"):
        itk_image = sitk.DICOMOrient(itk_image, reference.source_orientation)
    return itk_image


def _last_line(exc: BaseException) -> str:
    """The last line of an error message (SimpleITK's span many lines; the reason comes last)."""
    lines = str(exc).strip().splitlines()
    return lines[-1] if lines else type(exc).__name__
