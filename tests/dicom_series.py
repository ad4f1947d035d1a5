"""Test helpers for the DICOM writers: real example paths, label masks, synthetic series in any orientation,
and the dciodvfy validator."""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalsegmentator-example"
CT_DICOM = DATA / "example_ct_dicom"
SEG_NIFTI = DATA / "example_seg_dicom.nii.gz"
LABEL_MAP = DATA / "label_map_total_and_total_mr.json"


def require_example() -> None:
    if not CT_DICOM.is_dir():
        pytest.skip(f"real example data not found at {DATA}")


@functools.cache
def example_masks() -> dict[str, np.ndarray]:
    """The TotalSegmentator example's organs (TotalSegmentator names) on the example DICOM series' grid
    (cached: do not modify the arrays)."""
    from oncoseg.io import load_image

    labels = load_image(SEG_NIFTI).array
    names = json.loads(LABEL_MAP.read_text(encoding="utf-8"))["total"]
    return {names[str(v)]: labels == v for v in np.unique(labels) if v}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def rotation(z_degrees: float, x_degrees: float) -> np.ndarray:
    """Rotation about the patient z axis, then about x."""
    a, b = np.radians(z_degrees), np.radians(x_degrees)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rx @ rz


def write_series(
    folder: Path,
    frames: np.ndarray,
    row_cosine,
    column_cosine,
    *,
    pixel_spacing=(1.5, 1.25),
    slice_step: float = 2.5,
    origin=(-100.0, -80.0, 40.0),
) -> Path:
    """Write ``frames`` (file, row, column; uint16) as a CT series whose rows run along ``row_cosine`` and
    columns along ``column_cosine``; file k lies at origin + k * slice_step * (row × column)."""
    folder.mkdir(parents=True, exist_ok=True)
    row_cosine, column_cosine = np.asarray(row_cosine, float), np.asarray(column_cosine, float)
    normal = np.cross(row_cosine, column_cosine)
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    for k, frame in enumerate(frames):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_reference
        ds.Modality, ds.PatientName, ds.PatientID, ds.PatientSex = "CT", "Test^Phantom", "T1", "O"
        ds.PatientBirthDate = ds.AccessionNumber = ds.ReferringPhysicianName = ""
        ds.StudyDate, ds.StudyTime, ds.StudyID = "20260101", "120000", "1"
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [f"{v:.10f}" for v in (*row_cosine, *column_cosine)]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in np.asarray(origin) + k * slice_step * normal]
        ds.PixelSpacing = [str(v) for v in pixel_spacing]
        ds.SliceThickness = str(abs(slice_step))
        ds.Rows, ds.Columns = frame.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = "0", "1"
        ds.PixelData = np.ascontiguousarray(frame, dtype="<u2").tobytes()
        ds.save_as(folder / f"slice{k:03d}.dcm", enforce_file_format=True)
    return folder


def dciodvfy_errors(path: Path) -> tuple[list[str], list[str]]:
    """(error lines, warning lines) of dicom3tools' validator on ``path``; fails the test if it is missing."""
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.fail("dciodvfy is not installed: apt-get install dicom3tools (see scripts/system-deps.sh)")
    run = subprocess.run(
        [tool, str(path)], capture_output=True, encoding="utf-8", errors="replace", check=False
    )
    lines = (run.stdout + run.stderr).splitlines()
    errors = [line for line in lines if re.match(r"\s*Error", line)]
    warnings = [line for line in lines if re.match(r"\s*Warning", line)]
    return errors, warnings


def read_modality(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).Modality)
