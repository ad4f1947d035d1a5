"""DICOM-RT Structure Set (RTSTRUCT): write masks as closed planar contours over a source series; read back.

One ROI per structure (TG-263 name, stable colour), one CLOSED_PLANAR contour per boundary per source slice, in
patient coordinates (mm). Holes and separate islands are separate contours (no keyholes); the reader, like most
planning systems, fills the contours of a slice with the even-odd rule, so a hole inside an island is a hole.
Each contour refers to its source image (Contour Image Sequence); the structure set refers to the source study,
series, every source image and the frame of reference.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from oncoseg.dicom.reference import (
    DicomExportError,
    ReferenceSeries,
    check_text,
    load_reference,
    require,
    software_version,
    validate_masks,
)
from oncoseg.dicom.tg263 import default_color, lookup, standard_name
from oncoseg.io.write import OutputFiles, check_output_path
from oncoseg.render import mask_to_polygons, polygons_to_mask

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
STUDY_COMPONENT_MANAGEMENT = "1.2.840.10008.3.1.2.3.2"
MANUFACTURER = "Onco-Seg"
CONTOUR_DATA = 0x30060050
# Contour vertices sit this many pixels inside the half-pixel boundary (see `oncoseg.render.mask_to_polygons`
# and docs/dicom.md, "Contour convention"): point-in-polygon readers and rounding readers both get the mask back.
CONTOUR_INSET = 0.1

# Copied from the source so the structure set files under the same patient and study.
_PATIENT_STUDY = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientAge",
    "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyDescription",
)  # fmt: skip


def write_rtstruct(
    masks: Mapping[str, np.ndarray],
    reference: str | Path,
    path: str | Path,
    *,
    colors: Mapping[str, tuple[int, int, int]] | None = None,
    series_description: str = "Onco-Seg contours",
    allow_empty: bool = False,
    outputs: OutputFiles | None = None,
    notes: Mapping[str, str] | None = None,
) -> Path:
    """Write ``masks`` (name → bool array in ``load_image(reference)``'s layout) as an RTSTRUCT file.

    Names are turned into TG-263 names (`standard_name`); ``colors`` (keyed by given or TG-263 name) override
    the default colours. An empty mask is refused unless ``allow_empty`` (then its ROI has no contours). With
    ``outputs`` the file is part of that transaction (see `oncoseg.io.write.OutputFiles`). ``notes`` (keyed by
    given name) are added to each ROI's description, e.g. the result's quality estimate and review flag.
    """
    path = check_output_path(path, "DICOM output")  # before any work
    check_text(series_description, "LO", "series description")
    ref = reference if isinstance(reference, ReferenceSeries) else load_reference(reference)
    checked = validate_masks(masks, ref, allow_empty=allow_empty)
    for name in checked:
        check_text(name, "LO", "structure name")
    given = {standard_name(name): name for name in masks}
    notes = {
        standard_name(name): check_text(note, "ST", "structure note") for name, note in (notes or {}).items()
    }
    colors = dict(colors or {})
    ds = _structure_set(ref, series_description)
    roi_seq, contour_seq, obs_seq = Sequence(), Sequence(), Sequence()
    for number, (name, mask) in enumerate(checked.items(), start=1):
        color = colors.get(name, colors.get(given[name])) or default_color(name)
        roi_seq.append(_roi(number, name, ref, notes.get(name)))
        contour_seq.append(_roi_contours(number, _color(color, name), mask, ref))
        obs_seq.append(_observation(number, name))
    ds.StructureSetROISequence = roi_seq
    ds.ROIContourSequence = contour_seq
    ds.RTROIObservationsSequence = obs_seq
    for item in contour_seq:
        for contour in item.get("ContourSequence", []):
            # Lets pydicom copy the raw ContourData bytes instead of decoding and re-encoding them.
            contour.set_original_encoding(False, True, contour._character_set)

    def save(tmp: Path) -> None:
        ds.save_as(tmp, enforce_file_format=True)

    if outputs is None:
        with OutputFiles() as own:
            return own.write(path, save)
    return outputs.write(path, save)


def _structure_set(ref: ReferenceSeries, series_description: str) -> Dataset:
    now = dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    sop_instance_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RT_STRUCTURE_SET_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.SOPClassUID = RT_STRUCTURE_SET_STORAGE
    ds.SOPInstanceUID = sop_instance_uid
    source = ref.headers[0]
    for keyword in _PATIENT_STUDY:
        value = source.get(keyword)
        if value not in (None, ""):
            setattr(ds, keyword, value)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "StudyID", "AccessionNumber", "ReferringPhysicianName"):  # fmt: skip
        if keyword not in ds:
            setattr(ds, keyword, "")  # type 2: present, may be empty
    ds.StudyInstanceUID = ref.study_instance_uid
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 901
    ds.SeriesDescription = series_description
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.OperatorsName = ""
    ds.FrameOfReferenceUID = ref.frame_of_reference_uid
    ds.PositionReferenceIndicator = source.get("PositionReferenceIndicator", "") or ""
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "Onco-Seg"
    ds.SoftwareVersions = software_version()
    ds.InstanceNumber = 1
    ds.StructureSetLabel = "Onco-Seg"
    ds.StructureSetName = series_description
    ds.StructureSetDate, ds.StructureSetTime = date, time

    images = Sequence(_image_ref(ref, k) for k in range(len(ref.sop_instance_uids)))
    series = Dataset()
    series.SeriesInstanceUID = ref.series_instance_uid
    series.ContourImageSequence = images
    study = Dataset()
    study.ReferencedSOPClassUID = STUDY_COMPONENT_MANAGEMENT
    study.ReferencedSOPInstanceUID = ref.study_instance_uid
    study.RTReferencedSeriesSequence = Sequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = ref.frame_of_reference_uid
    frame.RTReferencedStudySequence = Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    return ds


def _image_ref(ref: ReferenceSeries, k: int) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ref.sop_class_uid
    item.ReferencedSOPInstanceUID = ref.sop_instance_uids[k]
    return item


def _roi(number: int, name: str, ref: ReferenceSeries, note: str | None = None) -> Dataset:
    roi = Dataset()
    roi.ROINumber = number
    roi.ReferencedFrameOfReferenceUID = ref.frame_of_reference_uid
    roi.ROIName = name
    entry = lookup(name)
    described = "; ".join(text for text in (entry.description if entry else None, note) if text)
    if described:
        roi.ROIDescription = described
    roi.ROIGenerationAlgorithm = "AUTOMATIC"
    roi.ROIGenerationDescription = f"Onco-Seg {software_version()}"
    return roi


def _roi_contours(number: int, color: list[int], mask: np.ndarray, ref: ReferenceSeries) -> Dataset:
    item = Dataset()
    item.ROIDisplayColor = color
    item.ReferencedROINumber = number
    contours = Sequence()
    frames = ref.to_frames(mask)
    for k in np.flatnonzero(frames.reshape(len(frames), -1).any(axis=1)):
        require("skimage.measure", "scikit-image")  # one clear line if the DICOM extra is missing
        # (row, column), as pixel_to_patient takes
        for polygon in mask_to_polygons(frames[k], order="rc", inset=CONTOUR_INSET):
            points = ref.pixel_to_patient(int(k), polygon)
            contour = Dataset()
            contour.ContourImageSequence = Sequence([_image_ref(ref, int(k))])
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = len(points)
            contour.ContourNumber = len(contours) + 1
            contour[CONTOUR_DATA] = _raw_ds(CONTOUR_DATA, points.ravel())
            contours.append(contour)
    if len(contours):
        item.ContourSequence = contours
    return item


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters, precise to 0.1 µm for coordinates below 10 km."""
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _raw_ds(tag: int, values: np.ndarray) -> RawDataElement:
    """A DS element kept as encoded bytes: pydicom writes it as is (building thousands of DSfloat objects
    would dominate the run time)."""
    data = "\\".join(_ds(float(v)) for v in values).encode("ascii")
    if len(data) % 2:
        data += b" "
    return RawDataElement(Tag(tag), "DS", len(data), data, 0, False, True)


def _floats(contour: Dataset) -> np.ndarray:
    """ContourData as floats, parsed straight from the encoded bytes when still raw."""
    element = contour.get_item(CONTOUR_DATA)
    value = element.value if element is not None else None
    if isinstance(value, bytes):
        return np.array(value.replace(b"\\", b" ").split(), dtype=float)
    return np.asarray([float(v) for v in contour.ContourData], dtype=float)


def _color(color, name: str) -> list[int]:
    values = list(color)
    if len(values) != 3 or not all(isinstance(v, int | np.integer) and 0 <= v <= 255 for v in values):
        raise DicomExportError(f"colour of {name!r} must be three integers 0-255, got {color!r}")
    return [int(v) for v in values]


def _observation(number: int, name: str) -> Dataset:
    obs = Dataset()
    obs.ObservationNumber = number
    obs.ReferencedROINumber = number
    obs.ROIObservationLabel = name[:16]
    obs.RTROIInterpretedType = "EXTERNAL" if name == "External" else ("ORGAN" if lookup(name) else "")
    obs.ROIInterpreter = ""
    return obs


def read_rtstruct(path: str | Path, reference: str | Path) -> dict[str, np.ndarray]:
    """Rasterise every ROI of an RTSTRUCT file onto the reference series: ``{ROI name: bool [z, y, x]}``.

    Contours are placed on the source slice they refer to (else the slice their plane lies on) and filled with
    the even-odd rule; a pixel is inside when its centre is. ROIs without contours come back empty; point and
    open contours are skipped. Raises DicomExportError if the file is no RTSTRUCT or does not fit the series.
    """
    path = Path(path)
    ref = reference if isinstance(reference, ReferenceSeries) else load_reference(reference)
    ds = _read(path, "RTSTRUCT")
    names = {int(roi.ROINumber): str(roi.get("ROIName", "") or f"ROI_{roi.ROINumber}")
             for roi in ds.get("StructureSetROISequence", [])}  # fmt: skip
    _check_frame_of_reference(ds, ref, path)
    by_uid = {uid: k for k, uid in enumerate(ref.sop_instance_uids)}
    offsets = ref.slice_offsets()
    thickness = float(np.median(np.abs(np.diff(offsets)))) if len(offsets) > 1 else 1.0
    result: dict[str, np.ndarray] = {}
    for item in ds.get("ROIContourSequence", []):
        number = int(item.ReferencedROINumber)
        name = names.get(number, f"ROI_{number}")
        polygons: dict[int, list[np.ndarray]] = {}
        for contour in item.get("ContourSequence", []):
            if contour.get("ContourGeometricType", "CLOSED_PLANAR") != "CLOSED_PLANAR":
                continue
            points = _floats(contour).reshape(-1, 3)
            rc, depth = ref.patient_to_pixel(points)
            k = _slice_of(contour, depth, offsets, thickness, by_uid, path, name)
            polygons.setdefault(k, []).append(rc)
        frames = np.zeros((len(offsets), ref.rows, ref.columns), dtype=bool)
        for k, polys in polygons.items():
            frames[k] = polygons_to_mask(polys, (ref.rows, ref.columns))
        mask = ref.from_frames(frames)
        result[name if name not in result else f"{name}_{number}"] = mask
    return result


def _slice_of(contour, depth, offsets, thickness, by_uid, path: Path, name: str) -> int:
    if np.ptp(depth) > 0.1 * thickness:
        raise DicomExportError(f"{path}: a contour of {name!r} is not parallel to the reference slices")
    images = contour.get("ContourImageSequence") or []
    uid = str(images[0].ReferencedSOPInstanceUID) if images else None
    k = by_uid.get(uid) if uid else None
    if k is None:
        k = int(np.argmin(np.abs(offsets - depth.mean())))
    if abs(offsets[k] - depth.mean()) > 0.5 * thickness:
        raise DicomExportError(
            f"{path}: a contour of {name!r} lies {abs(offsets[k] - depth.mean()):.1f} mm off the nearest "
            "reference slice (was it drawn on another series?)"
        )
    return k


def _read(path: Path, modality: str) -> pydicom.Dataset:
    try:
        ds = pydicom.dcmread(path)
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        raise DicomExportError(f"{path}: cannot be read as DICOM ({exc})") from exc
    if ds.get("Modality") != modality:
        raise DicomExportError(f"{path}: is a {ds.get('Modality') or 'non-'} DICOM object, not {modality}")
    return ds


def _check_frame_of_reference(ds: pydicom.Dataset, ref: ReferenceSeries, path: Path) -> None:
    uids = {str(f.FrameOfReferenceUID) for f in ds.get("ReferencedFrameOfReferenceSequence", [])
            if f.get("FrameOfReferenceUID")}  # fmt: skip
    if uids and ref.frame_of_reference_uid not in uids:
        raise DicomExportError(f"{path}: refers to another frame of reference than the reference series")
