"""Read medical images (NIfTI, NRRD, MetaImage, DICOM series, PNG/JPEG/TIFF/BMP) into `MedicalImage`."""

from __future__ import annotations

import io
import logging
import os
import re
import struct
import zlib
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from oncoseg.errors import ImageReadError, ImageTooLargeError, OncoSegError
from oncoseg.image import MedicalImage
from oncoseg.io.dicom_checks import NO_SPACING, check_positions, check_spacing, read_series_headers
from oncoseg.io.headers import (
    check_nifti_complete,
    check_nifti_header,
    check_png_complete,
    check_text_header,
    jpeg_bytes_to_decode,
)
from oncoseg.io.limits import DEFAULT_LIMITS, ReadLimits, check_declared_size, check_geometry
from oncoseg.modality import canonical_modality

if TYPE_CHECKING:  # imported where used: a picture needs neither (0.5 s)
    import pydicom
    import SimpleITK as sitk

log = logging.getLogger(__name__)

VOLUME_FORMATS = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".mha": "metaimage",
    ".mhd": "metaimage",
}
ITK_IMAGE_IO = {"nifti": "NiftiImageIO", "nrrd": "NrrdImageIO", "metaimage": "MetaImageIO"}
PHOTO_FORMATS = {
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".bmp": "bmp",
}

DICOM_MODALITIES = {
    "CT": "ct",
    "MR": "mri",
    "PT": "pet",
    "US": "ultrasound",
    "MG": "mammography",
    "DX": "xray",
    "CR": "xray",
    "RF": "xray",
    "XA": "xray",
}


def suffix_of(path: Path, known: Iterable[str]) -> str | None:
    """The known (possibly double, e.g. ``.nii.gz``) extension of ``path``, lower-cased, or None."""
    name = path.name.lower()
    return next((s for s in known if name.endswith(s)), None)


def load_image(
    path: str | os.PathLike,
    modality: str | None = None,
    *,
    limits: ReadLimits | None = None,
    spacing: tuple[float, ...] | str | None = None,
) -> MedicalImage:
    """Load an image file or a DICOM series folder; volumes come back reoriented to LPS.

    ``modality`` (one of `MODALITIES` or an alias such as "MR") overrides the DICOM Modality tag and
    the guess; ``metadata["modality_source"]`` records which of "argument", "dicom" or "guessed" was used.
    ``limits`` (default `ReadLimits()`) bounds the declared size and whether a header may name another file;
    a file over them raises `ImageTooLargeError`. Damaged input raises `ImageReadError` in one line;
    ``metadata["warnings"]`` lists what was tolerated (e.g. skipped unreadable DICOM files).

    Pictures (PNG/JPEG/TIFF/BMP) and DICOM images without PixelSpacing have no physical pixel size: they come
    back with spacing 1 and ``spacing_unit`` "px" (measured in pixels), unless ``spacing`` (mm, ``(x, y)`` or
    "X,Y") gives one; ``spacing`` is refused for an image that has its own.
    """
    path = Path(path)
    limits = limits or DEFAULT_LIMITS
    if modality is not None:
        modality = canonical_modality(modality)
    if not path.exists():
        raise ImageReadError(f"{path.name}: no such file or folder")
    try:
        image = _read_any(path, limits)
        if int(np.prod(image.shape)) < 2:
            raise ImageReadError(f"{path.name}: image has shape {image.shape}, too small to segment")
        check_geometry(path.name, image.spacing, image.origin, image.direction)
    except OncoSegError:
        raise
    except (
        ValueError,
        RuntimeError,
        OSError,
        EOFError,
        zlib.error,
        struct.error,
        OverflowError,
        MemoryError,
        IndexError,
        KeyError,
        TypeError,
    ) as exc:
        log.debug("reading %s failed", path.name, exc_info=True)
        raise ImageReadError(f"{path.name}: cannot be read ({type(exc).__name__}; corrupt file?)") from exc

    if NO_SPACING in image.metadata.get("warnings", []):
        image.metadata["spacing_unit"] = "px"
    if spacing is not None:
        image = image.with_spacing(spacing)
    warnings = image.metadata.setdefault("warnings", [])
    for warning in warnings:
        log.warning("%s", warning)
    if modality is not None:
        image.modality, source = modality, "argument"
    elif image.metadata.get("dicom_modality") in DICOM_MODALITIES:
        image.modality, source = DICOM_MODALITIES[image.metadata["dicom_modality"]], "dicom"
    else:
        image.modality, source = guess_modality(path, image), "guessed"
    image.metadata["modality_source"] = source
    return image


def _read_any(path: Path, limits: ReadLimits) -> MedicalImage:
    if path.is_dir():
        return _read_dicom_series(path, limits=limits)
    if suffix_of(path, VOLUME_FORMATS):
        return _read_volume_file(path, limits)
    if suffix_of(path, PHOTO_FORMATS):
        return _read_photo(path, limits)
    if path.suffix.lower() == ".dcm" or _has_dicom_preamble(path):
        return _read_dicom_series(path.parent, wanted=path, limits=limits)
    known = ", ".join([*VOLUME_FORMATS, *PHOTO_FORMATS, ".dcm"])
    raise ImageReadError(f"{path.name}: unknown file type (expected {known} or a DICOM folder)")


RADIOGRAPH_SIDE = 1500  # px: a greyscale picture this large is guessed to be a radiograph


def guess_modality(path: str | os.PathLike, image: MedicalImage) -> str:
    """Best guess of the modality when neither the caller nor a DICOM tag names it.

    * Photo formats (PNG, JPEG, TIFF, BMP): colour → "endoscopy" (e.g. Kvasir). Greyscale → "xray" when it
      has more than 8 bits per pixel or a side of `RADIOGRAPH_SIDE` pixels or more (radiographs; ultrasound
      stills are 8-bit and smaller: all 687 BUSI images, at most 1048 px wide, stay "ultrasound"), else
      "ultrasound". A small 8-bit greyscale picture could equally be an X-ray or a CT slice: the guess is
      marked (``metadata["modality_source"]`` "guessed", shown by the CLI): pass the modality then.
    * Everything else (NIfTI, NRRD, MetaImage, DICOM with an unknown Modality tag): "ct" when the intensities
      look like Hounsfield units (integer-valued, minimum ≤ -500 and maximum ≥ 300), otherwise "mri".
    """
    if suffix_of(Path(path), PHOTO_FORMATS):
        if image.channels >= 3:
            return "endoscopy"
        deep = image.array.dtype.itemsize > 1
        return "xray" if deep or max(image.shape) >= RADIOGRAPH_SIDE else "ultrasound"
    return "ct" if _looks_like_hounsfield(image.array) else "mri"


def _looks_like_hounsfield(array: np.ndarray) -> bool:
    values = array[np.isfinite(array)] if np.issubdtype(array.dtype, np.floating) else array
    if values.size == 0 or values.min() > -500 or values.max() < 300:
        return False
    return bool(np.issubdtype(values.dtype, np.integer) or np.all(values == np.round(values)))


def _has_dicom_preamble(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(128)
        return f.read(4) == b"DICM"


def _read_volume_file(path: Path, limits: ReadLimits) -> MedicalImage:
    """NIfTI, NRRD or MetaImage after checking the header; ITK is told the format so it reads no other."""
    import SimpleITK as sitk

    fmt = VOLUME_FORMATS[suffix_of(path, VOLUME_FORMATS)]
    if fmt == "nifti":  # truncation is checked first: ITK would allocate the declared size, then read zeros
        check_nifti_complete(path, check_nifti_header(path, limits))
    else:
        check_text_header(path, fmt, limits)
    reader = sitk.ImageFileReader()
    reader.SetImageIO(ITK_IMAGE_IO[fmt])
    reader.SetFileName(str(path))
    try:
        with _itk_warnings_off():
            itk_image = reader.Execute()
    except RuntimeError as exc:
        raise ImageReadError(f"{path.name}: cannot be read as {fmt} (corrupt or truncated file?)") from exc
    image = _from_sitk(itk_image, path)
    image.metadata["format"] = fmt
    return image


def _read_photo(path: Path, limits: ReadLimits) -> MedicalImage:
    """Greyscale → ``[y, x]`` in its own bit depth; colour → RGB ``[y, x, 3]`` (alpha dropped).

    The size is checked from the header before decoding; Pillow's own decompression-bomb refusal (about
    179 megapixels) becomes an `ImageTooLargeError` too. Image data that ends before the declared picture
    (which Pillow fills with zeros or grey) is refused: see `check_png_complete` and `jpeg_bytes_to_decode`."""
    fmt = PHOTO_FORMATS[suffix_of(path, PHOTO_FORMATS)]
    try:
        with ExitStack() as stack:
            pil = stack.enter_context(Image.open(path))
            grey = pil.mode in ("1", "L", "LA", "I", "F") or pil.mode.startswith("I;16")
            itemsize = 4 if pil.mode in ("I", "F") else 2 if pil.mode.startswith("I;16") else 1
            channels = max(len(pil.getbands()), 1 if grey else 3)
            check_declared_size(path.name, (pil.height, pil.width, channels), itemsize, limits)
            if pil.format == "JPEG" and (data := jpeg_bytes_to_decode(path)) is not None:
                pil = stack.enter_context(Image.open(io.BytesIO(data)))
                try:
                    pil.load()
                except OSError as exc:
                    raise ImageReadError(
                        f"{path.name}: JPEG image data is corrupt or ends before its declared {pil.width} x"
                        f" {pil.height} frame is decoded; truncated file or wrong size in its header?"
                    ) from exc
            pil.load()
            if pil.format == "PNG":
                check_png_complete(path)
            if pil.mode in ("1", "LA"):
                pil = pil.convert("L")
            elif not grey:
                pil = pil.convert("RGB")
            array = np.array(pil)
    except OncoSegError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{path.name}: {_bomb_message(exc)}") from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as exc:
        raise ImageReadError(f"{path.name}: cannot be read as {fmt} (corrupt or truncated file?)") from exc
    array = array.astype(array.dtype.newbyteorder("="), copy=False)
    image = MedicalImage.from_array(array, channels=3 if array.ndim == 3 else 1)  # no physical size: px
    image.source_path = str(path)
    image.metadata["format"] = fmt
    return image


def _bomb_message(exc: Exception) -> str:
    found = re.search(r"\((\d+) pixels\) exceeds limit of (\d+)", str(exc))
    if found is None:
        return "photo declares more pixels than Pillow's decompression-bomb limit"
    pixels, limit = (int(v) for v in found.groups())
    return f"photo declares {pixels:,} pixels, over Pillow's decompression-bomb limit of {limit:,}"


def _from_sitk(itk_image: sitk.Image, path: Path) -> MedicalImage:
    """Convert a SimpleITK image; 3D images are reoriented to LPS, extra components become channels-last."""
    import SimpleITK as sitk

    components = _split_components(itk_image, path)
    orientation = None
    if components[0].GetDimension() == 3:
        direction = components[0].GetDirection()
        orientation = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(direction)
        components = [sitk.DICOMOrient(c, "LPS") for c in components]
    arrays = [sitk.GetArrayFromImage(c) for c in components]
    first = components[0]
    return MedicalImage(
        array=arrays[0] if len(arrays) == 1 else np.stack(arrays, axis=-1),
        spacing=tuple(first.GetSpacing()),
        origin=tuple(first.GetOrigin()),
        direction=tuple(first.GetDirection()),
        channels=len(arrays),
        source_path=str(path),
        source_orientation=orientation,
    )


def _split_components(itk_image: sitk.Image, path: Path) -> list[sitk.Image]:
    """One scalar 2D/3D image per channel: vector pixels and the 4th axis of a 4D image are channels."""
    import SimpleITK as sitk

    dim, n_components = itk_image.GetDimension(), itk_image.GetNumberOfComponentsPerPixel()
    if dim == 4 and n_components == 1:
        size = list(itk_image.GetSize())
        extract = sitk.ExtractImageFilter()
        extract.SetSize(size[:3] + [0])
        extract.SetDirectionCollapseToStrategy(sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOSUBMATRIX)
        volumes = []
        for t in range(size[3]):
            extract.SetIndex([0, 0, 0, t])
            volumes.append(extract.Execute(itk_image))
        return volumes
    if dim in (2, 3):
        if n_components == 1:
            return [itk_image]
        return [sitk.VectorIndexSelectionCast(itk_image, i) for i in range(n_components)]
    raise ImageReadError(
        f"{path.name}: {dim}D image with {n_components} component(s) per pixel; expected 2D or 3D (+ channels)"
    )


@contextmanager
def _itk_warnings_off() -> Iterator[None]:
    """Silence ITK's stderr warnings (e.g. "No Series were found"); we raise our own error instead."""
    import SimpleITK as sitk

    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


def _read_dicom_series(
    folder: Path, wanted: Path | None = None, limits: ReadLimits = DEFAULT_LIMITS
) -> MedicalImage:
    """Read the series holding ``wanted`` (else the folder's largest series), slices sorted by position.

    SimpleITK applies RescaleSlope/Intercept (CT comes out in HU). A single-frame single-file series
    (X-ray, mammogram, one ultrasound still) becomes a 2D image. ``metadata`` keeps what DICOM writers need:
    ``dicom_files`` and ``SOPInstanceUIDs`` in array order along ``dicom_slice_axis`` (0 = z for axial
    series, after reorientation to LPS), the Series/Study/FrameOfReference/SOPClass UIDs, the raw
    ``dicom_modality`` and ``dicom_series_count``. No patient identifiers are kept or logged.

    A damaged series is refused (slices without position or with another orientation, repeated positions,
    gaps or uneven spacing, bad PixelSpacing, truncated or unreadable slices of the series) or loaded with
    ``metadata["warnings"]`` (unreadable stray files skipped, a 2D image without PixelSpacing in pixels).
    """
    import SimpleITK as sitk

    name = folder.name
    if not any(p.is_file() for p in folder.iterdir()):
        raise ImageReadError(f"{name}: folder holds no files")
    reader = sitk.ImageSeriesReader()
    with _itk_warnings_off():
        series = {
            sid: list(reader.GetGDCMSeriesFileNames(str(folder), sid))
            for sid in reader.GetGDCMSeriesIDs(str(folder))
        }
    if not series:
        raise ImageReadError(f"{name}: no DICOM series found in this folder")
    if wanted is not None:
        chosen = next(
            (sid for sid, files in series.items() if any(os.path.samefile(f, wanted) for f in files)), None
        )
        if chosen is None:
            raise ImageReadError(f"{wanted.name}: not readable as part of a DICOM series")
    else:
        chosen = max(series, key=lambda sid: len(series[sid]))
        if len(series) > 1:
            log.info("DICOM folder holds %d series; loading the largest", len(series))
    files = series[chosen]
    listed = {Path(f).name for group in series.values() for f in group}
    headers, warnings = read_series_headers(folder, files, chosen, listed, limits)
    stack = check_positions(name, headers)
    reader.SetFileNames(files)
    try:
        with _itk_warnings_off():
            itk_image = reader.Execute()
    except RuntimeError as exc:
        raise ImageReadError(f"{name}: DICOM series cannot be read (corrupt or truncated file?)") from exc

    if len(files) == 1 and itk_image.GetDimension() == 3 and itk_image.GetSize()[2] == 1:
        size = list(itk_image.GetSize())
        collapse = sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOGUESS
        itk_image = sitk.Extract(itk_image, size[:2] + [0], [0, 0, 0], collapse)
    itk_image, spacing_warnings = check_spacing(name, headers, itk_image, stack)
    image = _from_sitk(itk_image, folder)

    # Order the files along the array axis their positions run along (z for axial slices).
    order, slice_axis = list(range(len(files))), 0
    if image.is_3d and stack is not None:
        positions = [[float(v) for v in h.ImagePositionPatient] for h in headers]
        direction = np.reshape(image.direction, (3, 3))
        index_xyz = (np.array(positions) - image.origin) @ direction / image.spacing
        xyz_axis = int(np.argmax(np.ptp(index_xyz, axis=0)))
        order, slice_axis = [int(i) for i in np.argsort(index_xyz[:, xyz_axis], kind="stable")], 2 - xyz_axis

    first = headers[0]
    image.metadata.update(
        format="dicom",
        dicom_modality=str(first.get("Modality", "")) or None,
        dicom_files=[str(files[i]) for i in order],
        SOPInstanceUIDs=[_uid(headers[i], "SOPInstanceUID") for i in order],
        dicom_slice_axis=slice_axis,
        dicom_series_count=len(series),
        SeriesInstanceUID=_uid(first, "SeriesInstanceUID"),
        StudyInstanceUID=_uid(first, "StudyInstanceUID"),
        FrameOfReferenceUID=_uid(first, "FrameOfReferenceUID"),
        SOPClassUID=_uid(first, "SOPClassUID"),
        warnings=warnings + spacing_warnings,
    )
    return image


def _uid(dataset: pydicom.Dataset, keyword: str) -> str | None:
    """A UID from the dataset; SOP Class/Instance UIDs fall back to the file meta header (anonymisers may
    blank the dataset's copy)."""
    value = dataset.get(keyword) or getattr(dataset, "file_meta", {}).get(f"MediaStorage{keyword}")
    return str(value) if value else None
