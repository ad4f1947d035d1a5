"""Read an RTSTRUCT back with independent readers: rt-utils 1.2.7, dicompyler-core 0.5.6 and Debian's
plastimatch 1.9.4. Shared by benchmarks/rtstruct_readers.py and tests/test_rtstruct_readers.py.

Each reader returns TG-263 name → bool ``[z, y, x]`` on the grid of ``reference``
(`oncoseg.dicom.load_reference` of the original series). Reader limitations, handled here and not by changing
Onco-Seg's output:

* rt-utils refuses a series whose datasets carry an empty SOPInstanceUID (the example CT has it only in the file
  meta), and plastimatch ignores a CT series without Study/Series Instance UIDs and cannot decode its JPEG 2000
  pixels (it then silently rasterises onto a grid guessed from the contours). Both therefore read
  `reader_copy`: the series with SOPInstanceUID filled from the file meta, the Study/Series UIDs the structure
  set refers to, and the pixels decompressed; the geometry is untouched.
* dicompyler-core 0.5.6 imports ``pydicom.dicomio.read_file``, which pydicom 3 removed: that name is pointed at
  ``pydicom.dcmread`` before the import. Its rasteriser (`dvhcalc.get_contour_mask`: matplotlib point-in-polygon
  of pixel centres, contours of a plane XOR-ed as in its DVH code) runs unchanged, on the pixel-centre grid cut
  to each plane's contour extents (as its ``use_structure_extents`` option does).
* plastimatch ORs the contours of a plane unless given ``--xor-contours``, so by default it fills holes.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom

from oncoseg.io import load_image


def reader_copy(series: Path, rtstruct: Path, folder: Path) -> Path:
    """A copy of ``series`` in ``folder`` (created) that rt-utils and plastimatch can read (see above)."""
    ds = pydicom.dcmread(rtstruct)
    study = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    series_uid = study.RTReferencedSeriesSequence[0].SeriesInstanceUID
    folder.mkdir(parents=True)
    for source in sorted(Path(series).iterdir()):
        image = pydicom.dcmread(source)
        image.SOPInstanceUID = image.get("SOPInstanceUID") or image.file_meta.MediaStorageSOPInstanceUID
        image.StudyInstanceUID = image.get("StudyInstanceUID") or ds.StudyInstanceUID
        image.SeriesInstanceUID = image.get("SeriesInstanceUID") or series_uid
        image.decompress(generate_instance_uid=False)
        image.save_as(folder / source.name)
    return folder


def read_rt_utils(rtstruct: Path, copy: Path, reference) -> dict[str, np.ndarray]:
    """rt-utils' masks of every ROI (over `reader_copy`), put in the reference's slice order."""
    from rt_utils import RTStructBuilder

    builder = RTStructBuilder.create_from(dicom_series_path=str(copy), rt_struct_path=str(rtstruct))
    order = [str(item.SOPInstanceUID) for item in builder.series_data]
    position = [order.index(uid) for uid in reference.sop_instance_uids]  # rt-utils' order → the reference's
    masks = {}
    for name in builder.get_roi_names():
        volume = builder.get_roi_mask_by_name(name)  # (rows, columns, slices in rt-utils' order)
        masks[name] = reference.from_frames(np.stack([volume[:, :, i] for i in position]).astype(bool))
    return masks


def read_dicompyler(rtstruct: Path, series: Path, reference) -> dict[str, np.ndarray]:
    """dicompyler-core's rasterisation of every ROI (over the original series)."""
    import pydicom.dicomio

    if not hasattr(pydicom.dicomio, "read_file"):
        pydicom.dicomio.read_file = pydicom.dcmread  # dicompyler-core 0.5.6 imports the pydicom 2 name
    from dicompylercore import dicomparser, dvhcalc

    by_uid = {uid: k for k, uid in enumerate(reference.sop_instance_uids)}
    planes_of = {}  # dicompyler's plane key (z rounded, as GetStructureCoordinates keys it) → CT parser, slice
    for source in Path(series).iterdir():
        image = dicomparser.DicomParser(str(source))
        key = str(round(float(image.ds.ImagePositionPatient[2]), 2)) + "0"
        planes_of[key] = (image, by_uid[str(image.ds.file_meta.MediaStorageSOPInstanceUID)])
    structure_set = dicomparser.DicomParser(str(rtstruct))
    masks = {}
    for number, structure in structure_set.GetStructures().items():
        frames = np.zeros((len(by_uid), reference.rows, reference.columns), dtype=bool)
        for key, plane in structure_set.GetStructureCoordinates(number).items():
            image, k = planes_of[key]
            columns_mm, rows_mm = image.GetPatientToPixelLUT()
            contours = [[point[:2] for point in contour["data"]] for contour in plane]
            xy = np.concatenate([np.asarray(c, dtype=float) for c in contours])
            # the pixel-centre grid cut to the plane's extents (one pixel margin), as use_structure_extents does
            cols = np.flatnonzero((columns_mm >= xy[:, 0].min() - 2) & (columns_mm <= xy[:, 0].max() + 2))
            rows = np.flatnonzero((rows_mm >= xy[:, 1].min() - 2) & (rows_mm <= xy[:, 1].max() + 2))
            lut = (columns_mm[cols], rows_mm[rows])
            x, y = np.meshgrid(lut[0], lut[1])
            points = np.vstack((x.ravel(), y.ravel())).T
            grid = np.zeros((len(rows), len(cols)), dtype=bool)
            for contour in contours:  # XOR: holes, as dvhcalc.calculate_plane_histogram does
                grid ^= dvhcalc.get_contour_mask({"lut": lut, "x_lut_index": 0}, None, points, contour)
            frames[k][np.ix_(rows, cols)] = grid
        masks[structure["name"]] = reference.from_frames(frames)
    return masks


def read_plastimatch(rtstruct: Path, copy: Path, out: Path, xor: bool) -> dict[str, np.ndarray]:
    """``plastimatch convert`` of every ROI (over `reader_copy`; ``xor``: ``--xor-contours``), as NRRD files in
    ``out``. Raises RuntimeError when plastimatch is missing, fails, or guesses the grid instead of reading it
    from the CT."""
    tool = shutil.which("plastimatch")
    if tool is None:
        raise RuntimeError(
            "plastimatch is not installed: apt-get install plastimatch (see scripts/system-deps.sh)"
        )
    command = [tool, "convert", "--input", str(rtstruct), "--referenced-ct", str(copy)]
    command += ["--output-prefix", str(out)] + (["--xor-contours"] if xor else [])
    run = subprocess.run(command, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise RuntimeError(f"plastimatch convert failed: {run.stderr[-2000:]}")
    if "Setting PIH from RDD" not in run.stdout:  # the grid must come from the CT, not from the contours
        raise RuntimeError("plastimatch did not take its grid from the referenced CT")
    return {file.name.split(".")[0]: load_image(file).array.astype(bool) for file in Path(out).iterdir()}
