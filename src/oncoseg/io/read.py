"""Read medical images (NIfTI, NRRD, MetaImage, DICOM series, PNG/JPEG/TIFF/BMP) into `MedicalImage`."""

from __future__ import annotations

import gzip
import logging
import os
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import SimpleITK as sitk
from nibabel.filebasedimages import ImageFileError
from PIL import Image
from pydicom.errors import InvalidDicomError

from oncoseg.errors import ImageReadError
from oncoseg.image import MedicalImage
from oncoseg.modality import canonical_modality

log = logging.getLogger(__name__)

VOLUME_FORMATS = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".mha": "metaimage",
    ".mhd": "metaimage",
}
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


def load_image(path: str | os.PathLike, modality: str | None = None) -> MedicalImage:
    """Load an image file or a DICOM series folder; volumes come back reoriented to LPS.

    ``modality`` (one of `MODALITIES` or an alias such as "MR") overrides the DICOM Modality tag and
    the guess; ``metadata["modality_source"]`` records which of "argument", "dicom" or "guessed" was used.
    """
    path = Path(path)
    if modality is not None:
        modality = canonical_modality(modality)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file or folder")
    if path.is_dir():
        image = _read_dicom_series(path)
    elif suffix_of(path, VOLUME_FORMATS):
        image = _read_volume_file(path)
    elif suffix_of(path, PHOTO_FORMATS):
        image = _read_photo(path)
    elif path.suffix.lower() == ".dcm" or _has_dicom_preamble(path):
        image = _read_dicom_series(path.parent, wanted=path)
    else:
        known = ", ".join([*VOLUME_FORMATS, *PHOTO_FORMATS, ".dcm"])
        raise ImageReadError(f"{path}: unknown file type (expected {known} or a DICOM folder)")

    if int(np.prod(image.shape)) < 2:
        raise ImageReadError(f"{path}: image has shape {image.shape}, too small to segment")

    if modality is not None:
        image.modality, source = modality, "argument"
    elif image.metadata.get("dicom_modality") in DICOM_MODALITIES:
        image.modality, source = DICOM_MODALITIES[image.metadata["dicom_modality"]], "dicom"
    else:
        image.modality, source = guess_modality(path, image), "guessed"
    image.metadata["modality_source"] = source
    return image


def guess_modality(path: str | os.PathLike, image: MedicalImage) -> str:
    """Best guess of the modality when neither the caller nor a DICOM tag names it.

    * Photo formats (PNG, JPEG, TIFF, BMP): colour → "endoscopy" (e.g. Kvasir), greyscale → "ultrasound"
      (e.g. BUSI). A greyscale photo could equally be an X-ray or a CT slice: pass the modality then.
    * Everything else (NIfTI, NRRD, MetaImage, DICOM with an unknown Modality tag): "ct" when the intensities
      look like Hounsfield units (integer-valued, minimum ≤ -500 and maximum ≥ 300), otherwise "mri".
    """
    if suffix_of(Path(path), PHOTO_FORMATS):
        return "endoscopy" if image.channels >= 3 else "ultrasound"
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


def _read_volume_file(path: Path) -> MedicalImage:
    fmt = VOLUME_FORMATS[suffix_of(path, VOLUME_FORMATS)]
    try:
        itk_image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ImageReadError(f"{path}: cannot be read as {fmt} (corrupt or truncated file?)") from exc
    if fmt == "nifti":
        _check_nifti_complete(path)
    image = _from_sitk(itk_image, path)
    image.metadata["format"] = fmt
    return image


def _check_nifti_complete(path: Path) -> None:
    """Raise if a NIfTI file is cut short: ITK would silently read the missing voxels as zeros.

    A complete .nii.gz ends with its uncompressed size (mod 2**32); only when that differs from the end of the
    voxel data (e.g. trailing bytes, several gzip members) is the whole stream decompressed to be sure.
    """
    error = ImageReadError(f"{path}: NIfTI file is truncated (voxel data missing)")
    try:
        proxy = nibabel.load(path).dataobj
        data_end = proxy.offset + int(np.prod(proxy.shape)) * proxy.dtype.itemsize
        if not path.name.lower().endswith(".gz"):
            if path.stat().st_size < data_end:
                raise error
            return
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            if int.from_bytes(f.read(4), "little") == data_end % 2**32:
                return
        with gzip.open(path) as f:
            while f.read(1 << 24):
                pass
    except (OSError, EOFError, ValueError, zlib.error, ImageFileError) as exc:
        raise error from exc


def _read_photo(path: Path) -> MedicalImage:
    """Greyscale → ``[y, x]`` in its own bit depth; colour → RGB ``[y, x, 3]`` (alpha dropped)."""
    fmt = PHOTO_FORMATS[suffix_of(path, PHOTO_FORMATS)]
    try:
        with Image.open(path) as pil:
            pil.load()
            if pil.mode in ("1", "LA"):
                pil = pil.convert("L")
            elif not (pil.mode in ("L", "I", "F") or pil.mode.startswith("I;16")):
                pil = pil.convert("RGB")
            array = np.array(pil)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"{path}: cannot be read as {fmt} (corrupt or truncated file?)") from exc
    array = array.astype(array.dtype.newbyteorder("="), copy=False)
    image = MedicalImage.from_array(array, channels=3 if array.ndim == 3 else 1)
    image.source_path = str(path)
    image.metadata["format"] = fmt
    return image


def _from_sitk(itk_image: sitk.Image, path: Path) -> MedicalImage:
    """Convert a SimpleITK image; 3D images are reoriented to LPS, extra components become channels-last."""
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
        f"{path}: {dim}D image with {n_components} component(s) per pixel; expected 2D or 3D (+ channels)"
    )


@contextmanager
def _itk_warnings_off() -> Iterator[None]:
    """Silence ITK's stderr warnings (e.g. "No Series were found"); we raise our own error instead."""
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


def _read_dicom_series(folder: Path, wanted: Path | None = None) -> MedicalImage:
    """Read the series holding ``wanted`` (else the folder's largest series), slices sorted by position.

    SimpleITK applies RescaleSlope/Intercept (CT comes out in HU). A single-frame single-file series
    (X-ray, mammogram, one ultrasound still) becomes a 2D image. ``metadata`` keeps what DICOM writers need:
    ``dicom_files`` and ``SOPInstanceUIDs`` in array order along ``dicom_slice_axis`` (0 = z for axial
    series, after reorientation to LPS), the Series/Study/FrameOfReference/SOPClass UIDs, the raw
    ``dicom_modality`` and ``dicom_series_count``. No patient identifiers are kept or logged.
    """
    if not any(p.is_file() for p in folder.iterdir()):
        raise ImageReadError(f"{folder}: folder holds no files")
    reader = sitk.ImageSeriesReader()
    with _itk_warnings_off():
        series = {
            sid: list(reader.GetGDCMSeriesFileNames(str(folder), sid))
            for sid in reader.GetGDCMSeriesIDs(str(folder))
        }
    if not series:
        raise ImageReadError(f"{folder}: no DICOM series found in this folder")
    if wanted is not None:
        chosen = next(
            (sid for sid, files in series.items() if any(os.path.samefile(f, wanted) for f in files)), None
        )
        if chosen is None:
            raise ImageReadError(f"{wanted}: not readable as part of a DICOM series")
    else:
        chosen = max(series, key=lambda sid: len(series[sid]))
        if len(series) > 1:
            log.info("DICOM folder holds %d series; loading the largest", len(series))
    files = series[chosen]
    reader.SetFileNames(files)
    try:
        itk_image = reader.Execute()
        first = pydicom.dcmread(files[0], stop_before_pixels=True)
        tags = ["ImagePositionPatient", "SOPInstanceUID"]
        headers = [pydicom.dcmread(f, stop_before_pixels=True, specific_tags=tags) for f in files]
    except (RuntimeError, OSError, InvalidDicomError) as exc:
        raise ImageReadError(f"{folder}: DICOM series cannot be read (corrupt or truncated file?)") from exc

    if len(files) == 1 and itk_image.GetDimension() == 3 and itk_image.GetSize()[2] == 1:
        size = list(itk_image.GetSize())
        collapse = sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOGUESS
        itk_image = sitk.Extract(itk_image, size[:2] + [0], [0, 0, 0], collapse)
    image = _from_sitk(itk_image, folder)

    # Order the files along the array axis their positions run along (z for axial slices).
    order, slice_axis = list(range(len(files))), 0
    positions = [h.get("ImagePositionPatient") for h in headers]
    if image.is_3d and len(files) > 1 and all(p is not None for p in positions):
        direction = np.reshape(image.direction, (3, 3))
        index_xyz = (np.array(positions, dtype=float) - image.origin) @ direction / image.spacing
        xyz_axis = int(np.argmax(np.ptp(index_xyz, axis=0)))
        order, slice_axis = [int(i) for i in np.argsort(index_xyz[:, xyz_axis], kind="stable")], 2 - xyz_axis

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
    )
    return image


def _uid(dataset: pydicom.Dataset, keyword: str) -> str | None:
    """A UID from the dataset; SOP Class/Instance UIDs fall back to the file meta header (anonymisers may
    blank the dataset's copy)."""
    value = dataset.get(keyword) or getattr(dataset, "file_meta", {}).get(f"MediaStorage{keyword}")
    return str(value) if value else None
