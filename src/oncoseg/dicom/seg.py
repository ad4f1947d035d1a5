"""DICOM Segmentation (SEG): write masks as a binary SEG over a source series (highdicom); read it back.

One segment per structure: label = TG-263 name, display colour (CIELab) from `tg263.default_color`, segmented
property coded in SNOMED CT where pydicom's code dictionary has the organ (else "Organ"/"Tissue"), laterality as
a type modifier for ``_L``/``_R`` names, algorithm "Onco-Seg" (type AUTOMATIC, family Artificial Intelligence).
Frames are written in the stored pixel frame of the source images and refer to them; empty frames are omitted.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from oncoseg.dicom.reference import (
    DicomExportError,
    ReferenceSeries,
    check_text,
    load_reference,
    require,
    software_version,
    validate_masks,
)
from oncoseg.dicom.tg263 import default_color, lookup
from oncoseg.io.write import OutputFiles, check_output_path

MANUFACTURER = "Onco-Seg"

# TG-263 name → pydicom SNOMED CT keyword of the organ (laterality goes into a modifier).
_SNOMED = {
    "Heart": "Heart", "Lung_L": "Lung", "Lung_R": "Lung", "Lungs": "Lung", "Lung_LUL": "LobeOfLung",
    "Lung_LLL": "LowerLobeOfLung", "Lung_RUL": "LobeOfLung", "Lung_RML": "MiddleLobeOfRightLung",
    "Lung_RLL": "LowerLobeOfLung", "Esophagus": "Esophagus", "Trachea": "Trachea", "A_Aorta": "Aorta",
    "V_Venacava_S": "SuperiorVenaCava", "V_Venacava_I": "InferiorVenaCava", "V_Pulmonary": "PulmonaryVein",
    "A_Brachiocephls": "BrachiocephalicTrunk", "A_Carotid_L": "CommonCarotidArtery",
    "A_Carotid_R": "CommonCarotidArtery", "A_Subclavian_L": "SubclavianArtery",
    "A_Subclavian_R": "SubclavianArtery", "BrachialPlex_L": "BrachialPlexus", "BrachialPlex_R": "BrachialPlexus",
    "Breast_L": "Breast", "Breast_R": "Breast", "SpinalCord": "SpinalCord",
    "Liver": "Liver", "Kidney_L": "Kidney", "Kidney_R": "Kidney", "Stomach": "Stomach", "Spleen": "Spleen",
    "Pancreas": "Pancreas", "Gallbladder": "Gallbladder", "Duodenum": "Duodenum",
    "Bowel_Small": "SmallIntestine", "Bowel_Large": "LargeIntestine", "Colon": "Colon",
    "Glnd_Adrenal_L": "AdrenalGland", "Glnd_Adrenal_R": "AdrenalGland", "V_Portal": "PortalVein",
    "Bladder": "Bladder", "Rectum": "Rectum", "Prostate": "Prostate", "SeminalVes": "SeminalVesicle",
    "Uterus": "Uterus", "Femur_Head_L": "HeadOfFemur", "Femur_Head_R": "HeadOfFemur", "Femur_L": "Femur",
    "Femur_R": "Femur", "Sacrum": "Sacrum", "A_Iliac_L": "IliacArtery", "A_Iliac_R": "IliacArtery",
    "V_Iliac_L": "IliacVein", "V_Iliac_R": "IliacVein", "Brain": "Brain", "Brainstem": "BrainStem",
    "Parotid_L": "ParotidGland", "Parotid_R": "ParotidGland", "Glnd_Submand_L": "SubmandibularGland",
    "Glnd_Submand_R": "SubmandibularGland", "Larynx": "Larynx", "Bone_Mandible": "Mandible",
    "Cavity_Oral": "OralCavity", "Eye_L": "Eye", "Eye_R": "Eye", "Lens_L": "Lens", "Lens_R": "Lens",
    "OpticNrv_L": "OpticNerve", "OpticNrv_R": "OpticNerve", "OpticChiasm": "OpticChiasm",
    "Pituitary": "Pituitary", "Humerus_L": "Humerus", "Humerus_R": "Humerus", "External": "EntireBody",
}  # fmt: skip


def write_seg(
    masks: Mapping[str, np.ndarray],
    reference: str | Path,
    path: str | Path,
    *,
    series_description: str = "Onco-Seg segmentation",
    allow_empty: bool = False,
    outputs: OutputFiles | None = None,
    notes: Mapping[str, str] | None = None,
) -> Path:
    """Write ``masks`` (name → bool array in ``load_image(reference)``'s layout) as a binary DICOM SEG file;
    with ``outputs`` as part of that transaction (see `oncoseg.io.write.OutputFiles`). ``notes`` (by name, at
    most 64 characters) become each segment's SegmentDescription, e.g. the quality estimate and review flag."""
    hd = require("highdicom", "highdicom")

    path = check_output_path(path, "DICOM output")  # before any work
    check_text(series_description, "LO", "series description")
    ref = reference if isinstance(reference, ReferenceSeries) else load_reference(reference)
    checked = validate_masks(masks, ref, allow_empty=allow_empty)
    names = [check_text(name, "LO", "structure name") for name in checked]
    frames = np.stack([ref.to_frames(checked[name]) for name in names], axis=-1)  # (file, row, col, segment)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="Onco-Seg", version=software_version(), family=codes.cid7162.ArtificialIntelligence
    )
    notes = {name: check_text(note, "LO", "segment note") for name, note in (notes or {}).items()}
    descriptions = [
        _segment(number, name, algorithm, notes.get(name)) for number, name in enumerate(names, start=1)
    ]
    try:
        seg = hd.seg.Segmentation(
            source_images=ref.headers,
            pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=generate_uid(),
            series_number=902,
            sop_instance_uid=generate_uid(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name="Onco-Seg",
            software_versions=software_version(),
            device_serial_number="0",
            series_description=series_description,
            content_label="ONCOSEG",
            content_description=series_description,
            omit_empty_frames=True,
            specific_character_set="ISO_IR 192",  # UTF-8: names and descriptions in any script
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise DicomExportError(f"{path}: cannot build a DICOM SEG over this series ({exc})") from exc
    if outputs is None:
        with OutputFiles() as own:
            return own.write(path, seg.save_as)
    return outputs.write(path, seg.save_as)


def _segment(number: int, name: str, algorithm, note: str | None = None):
    hd = require("highdicom", "highdicom")

    entry = lookup(name)
    keyword = _SNOMED.get(entry.name) if entry else None
    concept = getattr(codes.SCT, keyword, None) if keyword else None
    if entry is None:
        category, kind = codes.SCT.Tissue, codes.SCT.Tissue
    else:
        category, kind = codes.SCT.AnatomicalStructure, concept or codes.SCT.Organ
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=name,
        segmented_property_category=category,
        segmented_property_type=kind,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        display_color=hd.color.CIELabColor.from_rgb(*default_color(name)),
    )
    if note:
        description.SegmentDescription = note
    side = {"_L": codes.SCT.Left, "_R": codes.SCT.Right}.get(name[-2:]) if entry else None
    if side is not None:
        modifier = hd.sr.CodedConcept(side.value, side.scheme_designator, side.meaning)
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            modifier
        ]
    return description


def read_seg(path: str | Path, reference: str | Path) -> dict[str, np.ndarray]:
    """Read every segment of a DICOM SEG onto the reference series: ``{segment label: bool [z, y, x]}``.

    Frames are matched to source images by their referenced SOP instance, else by plane position; the SEG must
    share the series' frame of reference, pixel grid and orientation. FRACTIONAL segments are thresholded at
    half their maximum. Raises DicomExportError if the file is no SEG or does not fit the series.
    """
    path = Path(path)
    ref = reference if isinstance(reference, ReferenceSeries) else load_reference(reference)
    try:
        ds = pydicom.dcmread(path)
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        raise DicomExportError(f"{path}: cannot be read as DICOM ({exc})") from exc
    if ds.get("Modality") != "SEG":
        raise DicomExportError(f"{path}: is a {ds.get('Modality') or 'non-'} DICOM object, not SEG")
    for_uid = ds.get("FrameOfReferenceUID")
    if for_uid and str(for_uid) != ref.frame_of_reference_uid:
        raise DicomExportError(f"{path}: refers to another frame of reference than the reference series")
    if (int(ds.Rows), int(ds.Columns)) != (ref.rows, ref.columns):
        raise DicomExportError(
            f"{path}: SEG frames are {ds.Rows}x{ds.Columns}, the reference images {ref.rows}x{ref.columns}"
        )
    shared = ds.get("SharedFunctionalGroupsSequence", [None])[0]
    orientation = _functional(shared, "PlaneOrientationSequence", "ImageOrientationPatient")
    if orientation is not None and not np.allclose(
        [float(v) for v in orientation], [*ref.row_cosine, *ref.column_cosine], atol=1e-3
    ):
        raise DicomExportError(f"{path}: SEG frames are oriented differently from the reference images")

    labels = {int(s.SegmentNumber): str(s.get("SegmentLabel", "") or f"Segment_{s.SegmentNumber}")
              for s in ds.SegmentSequence}  # fmt: skip
    pixels = ds.pixel_array.reshape(int(ds.get("NumberOfFrames", 1)), ref.rows, ref.columns)
    if ds.get("SegmentationType") == "FRACTIONAL":
        pixels = pixels >= float(ds.get("MaximumFractionalValue", 255)) / 2
    frames = {number: np.zeros((len(ref.maps), ref.rows, ref.columns), dtype=bool) for number in labels}
    by_uid = {uid: k for k, uid in enumerate(ref.sop_instance_uids)}
    offsets = ref.slice_offsets()
    for i, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
        number = _functional(group, "SegmentIdentificationSequence", "ReferencedSegmentNumber")
        if number is None:  # a single segment may be named once for all frames
            number = _functional(shared, "SegmentIdentificationSequence", "ReferencedSegmentNumber")
        number = int(number)
        k = _frame_slice(group, shared, ref, by_uid, offsets, path)
        frames[number][k] |= pixels[i].astype(bool)
    result: dict[str, np.ndarray] = {}
    for number, name in labels.items():
        result[name if name not in result else f"{name}_{number}"] = ref.from_frames(frames[number])
    return result


def _functional(group, sequence: str, keyword: str):
    if group is None or sequence not in group:
        return None
    return group[sequence][0].get(keyword)


def _frame_slice(group, shared, ref: ReferenceSeries, by_uid, offsets, path: Path) -> int:
    position = _functional(group, "PlanePositionSequence", "ImagePositionPatient")
    if position is None:
        position = _functional(shared, "PlanePositionSequence", "ImagePositionPatient")
    if position is not None:
        rc, depth = ref.patient_to_pixel(np.array([[float(v) for v in position]]))
        k = int(np.argmin(np.abs(offsets - depth[0])))
        if np.abs(rc[0]).max() > 1e-2 or abs(offsets[k] - depth[0]) > 1e-2 * max(1.0, ref.pixel_spacing[0]):
            raise DicomExportError(f"{path}: a SEG frame does not lie on a reference image")
        return k
    for derivation in group.get("DerivationImageSequence", []):
        for source in derivation.get("SourceImageSequence", []):
            k = by_uid.get(str(source.ReferencedSOPInstanceUID))
            if k is not None:
                return k
    raise DicomExportError(f"{path}: a SEG frame has neither a plane position nor a known source image")
