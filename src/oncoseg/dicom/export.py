"""What `oncoseg export` does: NIfTI (or NRRD/MHA) masks → RTSTRUCT/SEG over a DICOM series, and back.

Masks must lie on the reference series' own grid: same shape, spacing, origin and orientation after both are
read through `oncoseg.io.load_image`. Nothing is ever resampled; a mask that does not fit is refused with a
message naming what differs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from oncoseg.dicom.reference import DicomExportError, ReferenceSeries, load_reference
from oncoseg.errors import OncoSegError
from oncoseg.image import MedicalImage

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
FORMATS = ("rtstruct", "seg", "nifti")


@dataclass
class Exported:
    """What `export` wrote: the files, and for rtstruct/seg the structures' names as written (TG-263)."""

    paths: list[Path]
    structures: list[str] = field(default_factory=list)


def export(
    kind: str,
    inputs: Sequence[str | Path],
    reference: str | Path,
    output: str | Path,
    *,
    names: str | None = None,
    description: str | None = None,
    allow_empty: bool = False,
    on_reference: Callable[[ReferenceSeries], None] | None = None,
) -> Exported:
    """``oncoseg export``: ``rtstruct``/``seg`` write the mask files ``inputs`` (named by ``names``, a
    `parse_names` spec) as one DICOM file over the ``reference`` series; ``nifti`` reads one RTSTRUCT/SEG file
    back onto it (`export_nifti`). The request (output path, description, names) is checked before the series
    is read; ``on_reference(series)`` is called once it is (e.g. to show the warnings of reading it)."""
    from oncoseg.dicom.reference import check_text
    from oncoseg.dicom.rtstruct import write_rtstruct
    from oncoseg.dicom.seg import write_seg
    from oncoseg.dicom.tg263 import standard_name
    from oncoseg.io.write import check_output_path

    if kind not in FORMATS:
        raise OncoSegError(f"export format must be one of {', '.join(FORMATS)}, not {kind!r}")
    if kind == "nifti":
        if len(inputs) != 1:
            raise OncoSegError("export nifti reads one RTSTRUCT or SEG file at a time")
        check_nifti_output(output)
    else:
        check_output_path(output, "DICOM output (e.g. rt.dcm)")
        if description is not None:
            check_text(description, "LO", "series description")
        labels = parse_names(names)
    series = load_reference(reference)
    if on_reference is not None:
        on_reference(series)
    if kind == "nifti":
        return Exported(export_nifti(inputs[0], series, output))
    masks = masks_from_files(list(inputs), series, labels)
    options = {"series_description": description} if description else {}
    write = write_rtstruct if kind == "rtstruct" else write_seg
    write(masks, series, output, allow_empty=allow_empty, **options)
    return Exported([Path(output)], [standard_name(name) for name in masks])


def parse_names(spec: str | None) -> dict[int, str]:
    """``"1=Liver,2=Kidney_L"`` or a JSON file (``{"1": "liver"}``, ``{"liver": 1}`` or nnU-Net's
    ``dataset.json`` with ``"labels"``; ``FILE.json:KEY`` picks one map of a file holding several, e.g.
    TotalSegmentator's ``label_map.json:total``) → ``{label: name}``. Bare names (``"Liver,Spleen"``) are
    labels 1, 2, ... in order."""
    if not spec:
        return {}
    path_part, _, key = spec.partition(".json:")
    path = Path(path_part + ".json") if key else Path(spec)
    if path.suffix.lower() == ".json" or key:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DicomExportError(f"{path}: cannot read the label names ({exc})") from exc
        if key:
            if not isinstance(data, dict) or key not in data:
                raise DicomExportError(f"{path}: has no label map named {key!r}")
            data = data[key]
        elif isinstance(data, dict) and isinstance(data.get("labels"), dict):
            data = data["labels"]
        if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
            raise DicomExportError(
                f"{path}: holds several label maps ({', '.join(data)}); pick one as {path}:{next(iter(data))}"
            )
        return _label_dict(data, str(path))
    if "=" not in spec:  # "Liver" or "Liver,Spleen": labels (or binary mask files) 1, 2, ... in order
        return {i: name.strip() for i, name in enumerate(spec.split(","), start=1) if name.strip()}
    pairs = {}
    for item in spec.split(","):
        label, sep, name = item.partition("=")
        pairs[label.strip()] = name.strip()
        if not sep or not name.strip():
            raise DicomExportError(f"--names: {item!r} is not LABEL=NAME (e.g. 1=Liver,2=Kidney_L)")
    return _label_dict(pairs, "--names")


def _label_dict(data, source: str) -> dict[int, str]:
    if not isinstance(data, dict):
        raise DicomExportError(f"{source}: expected a mapping of labels to names")
    names: dict[int, str] = {}
    for k, v in data.items():
        label, name = (k, v) if str(k).strip().isdigit() else (v, k)
        try:
            label = int(str(label).strip())
        except ValueError:
            raise DicomExportError(f"{source}: {k!r}: {v!r} pairs no integer label with a name") from None
        if label != 0:  # background
            names[label] = str(name)
    return names


def masks_from_files(
    paths: list[str | Path], reference: ReferenceSeries, names: dict[int, str] | None = None
) -> dict[str, np.ndarray]:
    """Read mask files that lie on the reference grid: a label map gives one structure per label (named by
    ``names``, else ``<file stem>_<label>``); the i-th binary (0/1) file gives one structure named by
    ``names[i]`` (1-based), else by its file stem."""
    from oncoseg.io import load_image

    names = names or {}
    masks: dict[str, np.ndarray] = {}
    for index, path in enumerate(map(Path, paths), start=1):
        image = load_image(path)
        for warning in image.metadata.get("warnings", []):
            log.warning("%s: %s", path.name, warning)
        check_same_grid(image, reference.image, path)
        labels = _integer_labels(image.array, path)
        present = [int(v) for v in np.unique(labels) if v != 0]
        if not present:
            raise DicomExportError(f"{path}: mask is empty (no non-zero voxel)")
        stem = _stem(path)
        if present == [1] and (len(paths) > 1 or len(names) <= 1):  # a binary mask
            items = [(names.get(index) or stem, labels == 1)]
        else:
            missing = [v for v in present if names and v not in names]
            if missing:
                raise DicomExportError(f"{path}: labels {missing} have no name in --names")
            items = [(names.get(v, f"{stem}_{v}"), labels == v) for v in present]
        for name, mask in items:
            if name in masks:
                raise DicomExportError(f"{path}: structure {name!r} is given twice")
            masks[name] = mask
    return masks


def _integer_labels(array: np.ndarray, path: Path) -> np.ndarray:
    if array.ndim != 3:
        raise DicomExportError(f"{path}: expected a 3D mask, got an array of shape {array.shape}")
    if np.issubdtype(array.dtype, np.floating) and (
        not np.isfinite(array).all() or not np.array_equal(array, np.round(array))
    ):
        raise DicomExportError(
            f"{path}: mask holds non-integer values (a probability map?); binarise it first"
        )
    if array.min() < 0:
        raise DicomExportError(f"{path}: mask holds negative labels")
    return array.astype(np.int64)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def check_same_grid(image: MedicalImage, reference: MedicalImage, path: str | Path) -> None:
    """Raise DicomExportError naming what differs when ``image`` is not on ``reference``'s voxel grid."""
    problems = []
    if image.shape != reference.shape:
        problems.append(f"shape {image.shape} vs {reference.shape} (z, y, x)")
    if not np.allclose(image.spacing, reference.spacing, rtol=1e-3, atol=1e-3):
        problems.append(f"spacing {_fmt(image.spacing)} vs {_fmt(reference.spacing)} mm")
    if not np.allclose(image.direction, reference.direction, atol=1e-3):
        problems.append(
            f"orientation {image.source_orientation or 'oblique'} vs {reference.source_orientation or 'oblique'}"
            if image.source_orientation != reference.source_orientation
            else "direction cosines differ"
        )
    tolerance = 0.05 * min(reference.spacing)  # mm: far below a voxel
    if not np.allclose(image.origin, reference.origin, atol=tolerance):
        problems.append(f"origin {_fmt(image.origin)} vs {_fmt(reference.origin)} mm")
    if problems:
        raise DicomExportError(
            f"{path}: mask does not lie on the reference series' grid ({'; '.join(problems)}); "
            "it is never resampled: export the mask on the series' own grid"
        )


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.3f}".rstrip("0").rstrip(".") for v in values) + ")"


def read_structures(path: str | Path, reference: ReferenceSeries) -> dict[str, np.ndarray]:
    """Read an RTSTRUCT or SEG file (told apart by its Modality) onto the reference series."""
    import pydicom

    from oncoseg.dicom.rtstruct import read_rtstruct
    from oncoseg.dicom.seg import read_seg

    try:
        modality = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"]).get("Modality")
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        raise DicomExportError(f"{path}: cannot be read as DICOM ({exc})") from exc
    if modality == "RTSTRUCT":
        return read_rtstruct(path, reference)
    if modality == "SEG":
        return read_seg(path, reference)
    raise DicomExportError(f"{path}: is a {modality or 'non-'} DICOM object, not RTSTRUCT or SEG")


def export_nifti(source: str | Path, reference: str | Path, output: str | Path) -> list[Path]:
    """Write the structures of an RTSTRUCT/SEG file as NIfTI on the reference series' grid.

    ``output`` ending in .nii.gz/.nii/.nrrd/.mha: one label map (labels 1..N in file order) plus a JSON file
    of label names next to it (``OUT.json``, usable as ``--names`` again); overlapping voxels go to the later
    structure (a warning names the pairs). Any other ``output`` is a folder: one binary mask per structure.
    All files are written or none (`oncoseg.io.write.OutputFiles`). Returns the files written.
    """
    from oncoseg.io import save_mask
    from oncoseg.io.write import OutputFiles

    check_nifti_output(output)
    ref = reference if isinstance(reference, ReferenceSeries) else load_reference(reference)
    structures = read_structures(source, ref)
    if not structures:
        raise DicomExportError(f"{source}: holds no structures")
    output = Path(output)
    suffix = _nifti_suffix(output)
    if suffix is None:
        files: dict[str, np.ndarray] = {}
        for name, mask in structures.items():
            safe = (
                "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name).lstrip(".") or "structure"
            )
            stem, number = safe, 2
            while stem.lower() in {k.lower() for k in files}:  # two names that differ only in odd characters
                stem, number = f"{safe}_{number}", number + 1
            files[stem] = mask
        with OutputFiles() as outputs:
            return [
                save_mask(mask.astype(np.uint8), ref.image, output / f"{stem}.nii.gz", outputs)
                for stem, mask in files.items()
            ]
    if len(structures) > 255:
        raise DicomExportError(f"{source}: {len(structures)} structures do not fit one 8-bit label map")
    labels = np.zeros(ref.shape, dtype=np.uint8)
    for number, (name, mask) in enumerate(structures.items(), start=1):
        overlap = np.unique(labels[mask & (labels > 0)])
        if overlap.size:
            others = ", ".join(list(structures)[v - 1] for v in overlap)
            log.warning("%s overlaps %s; the label map keeps %s there", name, others, name)
        labels[mask] = number
    sidecar = output.with_name(output.name[: -len(suffix)] + ".json")
    names = json.dumps({str(i): name for i, name in enumerate(structures, start=1)}, indent=2)
    with OutputFiles() as outputs:
        save_mask(labels, ref.image, output, outputs)
        outputs.write(sidecar, lambda tmp: tmp.write_text(names, encoding="utf-8"))
    return [output, sidecar]


def _nifti_suffix(path: Path) -> str | None:
    return next((s for s in NIFTI_SUFFIXES if path.name.lower().endswith(s)), None)


def check_nifti_output(output: str | Path) -> None:
    """Raise now if `export_nifti` cannot write to ``output`` (a label map file and its .json, or a folder)."""
    from oncoseg.io.write import check_output_path

    output = Path(output)
    suffix = _nifti_suffix(output)
    if suffix is not None:
        check_output_path(output, "label map")
        check_output_path(output.with_name(output.name[: -len(suffix)] + ".json"), "label names")
    elif output.exists() and not output.is_dir():
        raise DicomExportError(
            f"{output}: is a file; give a folder (one mask per structure) or a {', '.join(NIFTI_SUFFIXES)} name"
        )
    else:
        check_output_path(output / "structure.nii.gz", "mask")
