"""Write masks and images atomically, on the grid and in the orientation of the file they came from.

`OutputFiles` writes all outputs of one call as a transaction: each file goes to a temporary name next to its
target, and only when every one was written are they renamed into place; on any failure the temporary files
(and folders made for them) are removed and no existing file is touched. `check_output_path` finds a path
that cannot be written (under a file, in a read-only folder, a folder itself) before any work is done.
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from oncoseg.errors import OncoSegError
from oncoseg.image import MedicalImage
from oncoseg.io.read import suffix_of

if TYPE_CHECKING:
    import SimpleITK as sitk
    from typing_extensions import Self

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


_TMP_PREFIX = ".tmp-"
_NAME_MAX = 255 - len(_TMP_PREFIX) - 9  # room for ".tmp-1a2b3c4d." in front of the name

_REASONS = {
    errno.EACCES: "no permission to write there",
    errno.EPERM: "no permission to write there",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "disk full",
    errno.ENOTDIR: "a folder on its path is a file",
    errno.EISDIR: "it is a folder",
    errno.ENAMETOOLONG: "file name too long",
    errno.ENOENT: "its folder does not exist",
    errno.EEXIST: "a file is in the way of its folder",
}


def os_reason(error: OSError) -> str:
    """A short reason for an OS error (``disk full``, ``read-only file system``, ...)."""
    return _REASONS.get(error.errno) or error.strerror or type(error).__name__


def check_output_path(path: str | os.PathLike, what: str = "output") -> Path:
    """Raise OncoSegError now, before any work, if ``path`` cannot be written: it is a folder, a file stands
    where a folder of its path should be, its folder is read-only, or its name is too long."""
    path = Path(path)
    if path.is_dir():
        raise OncoSegError(f"{path}: is a folder; give a file name for the {what}")
    if len(os.fsencode(path.name)) > _NAME_MAX:
        raise OncoSegError(f"{path}: cannot write (file name too long)")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OncoSegError(f"{path}: cannot write ({folder} is a file, not a folder)")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OncoSegError(f"{path}: cannot write (read-only folder {folder})")
    return path


def check_distinct(*paths: str | os.PathLike | None) -> None:
    """Raise OncoSegError if two of the outputs of one call are the same file."""
    seen: dict[Path, str] = {}
    for given in paths:
        if given is None:
            continue
        key = Path(os.path.abspath(given))
        if key in seen:
            raise OncoSegError(f"{given}: given for two outputs; give each output its own file")
        seen[key] = str(given)


class OutputFiles:
    """The outputs of one call, written as a transaction (use as a context manager).

    `write` writes one output to a temporary file next to its target; leaving the ``with`` block without an
    error renames them all into place, an error removes every temporary file and every folder made for them.
    An OSError of a writer becomes one OncoSegError line naming the output (``overlay.png: cannot write
    (disk full)``).
    """

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path]] = []  # (temporary, target)
        self._made: list[Path] = []  # folders created for the outputs, outermost first

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is not None:
            self.discard()
            return
        for number, (tmp, target) in enumerate(self._pending):
            try:
                os.replace(tmp, target)
            except OSError as exc:
                done = [str(t) for _, t in self._pending[:number]]
                self._pending = self._pending[number:]
                self.discard()
                also = f"; already written: {', '.join(done)}" if done else ""
                raise OncoSegError(f"{target}: cannot write ({os_reason(exc)}){also}") from None
        self._pending = []

    def temporary(self, path: str | os.PathLike) -> Path:
        """A new temporary path next to ``path`` (its folders are made), renamed to ``path`` on success."""
        path = Path(path)
        check_output_path(path)
        try:
            self._make_folders(path.parent)
        except OSError as exc:
            raise OncoSegError(f"{path}: cannot write ({os_reason(exc)})") from None
        tmp = path.with_name(f"{_TMP_PREFIX}{secrets.token_hex(4)}.{path.name}")
        self._pending.append((tmp, path))
        return tmp

    def write(self, path: str | os.PathLike, writer: Callable[[Path], object]) -> Path:
        """Call ``writer(temporary_path)`` for the output ``path``; returns ``path``."""
        tmp = self.temporary(path)
        try:
            writer(tmp)
        except OSError as exc:
            raise OncoSegError(f"{path}: cannot write ({os_reason(exc)})") from None
        if not tmp.is_file():
            raise OncoSegError(f"{path}: cannot write (the writer made no file)")
        return Path(path)

    def discard(self) -> None:
        """Remove every temporary file and the folders made for them (when left empty)."""
        for tmp, _target in self._pending:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
        self._pending = []
        for folder in reversed(self._made):
            try:
                folder.rmdir()
            except OSError:
                pass
        self._made = []

    def _make_folders(self, folder: Path) -> None:
        missing = []
        while not folder.exists() and folder != folder.parent:
            missing.append(folder)
            folder = folder.parent
        for new in reversed(missing):
            new.mkdir()
            self._made.append(new)


def save_mask(
    mask: np.ndarray, reference: MedicalImage, path: str | os.PathLike, outputs: OutputFiles | None = None
) -> Path:
    """Write a label mask (integers 0-255) as uint8 on ``reference``'s grid, in its original orientation.

    Formats by extension: .nii, .nii.gz, .nrrd, .mha; for 2D references also .png (a binary mask is
    written as 0/255, other labels as they are). With ``outputs`` the file is part of that transaction.
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
    return _write(labels, reference, 1, path, suffix, outputs)


def check_mask_path(path: str | os.PathLike, reference: MedicalImage) -> Path:
    """Raise OncoSegError now, before any work, if a mask for ``reference`` cannot be written to ``path``."""
    path = Path(path)
    _output_suffix(path, (".png",) if reference.ndim == 2 else ())
    return check_output_path(path, "mask")


def save_image(image: MedicalImage, path: str | os.PathLike, outputs: OutputFiles | None = None) -> Path:
    """Write an image in its original orientation: .nii, .nii.gz, .nrrd, .mha, or for 2D images also
    .png/.jpg/.jpeg/.tif/.tiff/.bmp (8-bit grey or RGB; 16-bit grey for PNG and TIFF)."""
    path = Path(path)
    suffix = _output_suffix(path, PHOTO_OUTPUTS if image.ndim == 2 else ())
    return _write(image.array, image, image.channels, path, suffix, outputs)


def _output_suffix(path: Path, photo: tuple[str, ...]) -> str:
    allowed = (*VOLUME_OUTPUTS, *photo)
    suffix = suffix_of(path, allowed)
    if suffix is None:
        raise OncoSegError(f"{path}: cannot write this file type here; use one of {', '.join(allowed)}")
    return suffix


def _write(
    array: np.ndarray,
    reference: MedicalImage,
    channels: int,
    path: Path,
    suffix: str,
    outputs: OutputFiles | None = None,
) -> Path:
    if outputs is None:
        with OutputFiles() as own:
            return _write(array, reference, channels, path, suffix, own)

    def encode(tmp: Path) -> None:
        try:
            if suffix in PHOTO_OUTPUTS:
                Image.fromarray(array).save(tmp)
            else:
                import SimpleITK as sitk  # here: pictures are written without it

                sitk.WriteImage(_to_sitk(array, reference, channels), str(tmp), True)
        except OSError:
            raise
        except (RuntimeError, TypeError, ValueError) as exc:
            raise OncoSegError(
                f"{path}: cannot write a {array.dtype} image with {channels} channel(s) as {suffix} "
                f"({_last_line(exc)})"
            ) from None

    return outputs.write(path, encode)


def _to_sitk(array: np.ndarray, reference: MedicalImage, channels: int) -> sitk.Image:
    """``array`` on ``reference``'s LPS grid, turned back to the orientation of the file it came from."""
    import SimpleITK as sitk

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
