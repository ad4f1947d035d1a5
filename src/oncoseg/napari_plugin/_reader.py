"""napari reader: NIfTI, NRRD/MetaImage files and DICOM series folders through `oncoseg.io.load_image`.

Layers are scaled in millimetres (``scale`` = voxel spacing in z, y, x) and carry the image's geometry in
``metadata["oncoseg"]``, so the plugin can rebuild the `MedicalImage` (and write masks and DICOM objects over the
source) from the layer alone. No patient identifiers are put in the metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from oncoseg.image import MedicalImage
from oncoseg.io.read import VOLUME_FORMATS, load_image, suffix_of
from oncoseg.render import DEFAULT_CT_PRESET, preset_limits

LayerData = tuple[Any, dict[str, Any], str]

METADATA_KEY = "oncoseg"
SOFT_TISSUE_HU = preset_limits(DEFAULT_CT_PRESET)  # the CT display window a volume opens with (W400/L40 HU)


def get_reader(path: str | list[str]):
    """The npe2 reader hook: a function for paths Onco-Seg reads, else None (napari then tries others)."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    target = Path(path)
    if target.is_dir():
        return read_image if any(p.is_file() for p in target.iterdir()) else None
    if suffix_of(target, VOLUME_FORMATS) or target.suffix.lower() == ".dcm":
        return read_image
    return None


def read_image(path: str | list[str], modality: str | None = None) -> list[LayerData]:
    """Load ``path`` (a file or a DICOM series folder) as napari layer data."""
    if isinstance(path, list):
        path = path[0]
    image = load_image(path, modality=modality)
    return [image_layer_data(image, _display_name(Path(path)))]


def image_layer_data(image: MedicalImage, name: str) -> LayerData:
    """``(data, kwargs, "image")`` for ``image``: millimetre scale, geometry in the metadata, a display window
    suited to its modality (soft tissue for CT, 1st-99th percentiles otherwise)."""
    source = Path(image.source_path) if image.source_path else None
    dicom_folder = None
    if image.metadata.get("format") == "dicom" and image.metadata.get("dicom_files"):
        dicom_folder = str(Path(image.metadata["dicom_files"][0]).parent)
    info = {
        "spacing": tuple(image.spacing),
        "origin": tuple(image.origin),
        "direction": tuple(image.direction),
        "modality": image.modality,
        "source_orientation": image.source_orientation,
        "source_path": str(source) if source else None,
        "dicom_folder": dicom_folder,
        "image_metadata": dict(image.metadata),
    }
    kwargs: dict[str, Any] = {
        "name": name,
        "scale": tuple(image.spacing_zyx),
        "metadata": {METADATA_KEY: info},
    }
    if image.channels == 3:
        kwargs["rgb"] = True
    elif image.channels == 1:
        kwargs["colormap"] = "gray"
        kwargs["contrast_limits"] = default_window(image.array, image.modality)
    else:
        kwargs["channel_axis"] = -1  # one layer per channel (e.g. MRI sequences)
        kwargs["name"] = [f"{name} [{i}]" for i in range(image.channels)]
    return image.array, kwargs, "image"


def default_window(array: np.ndarray, modality: str | None) -> tuple[float, float]:
    """Display window: CT soft tissue (W400/L40 HU), otherwise the 1st-99th percentiles."""
    if modality == "ct":
        return SOFT_TISSUE_HU
    return percentile_window(array)


def percentile_window(array: np.ndarray, low: float = 1.0, high: float = 99.0) -> tuple[float, float]:
    """The ``low``-``high`` percentiles of ``array`` (on a regular subsample of about a million values)."""
    values = np.asarray(array)
    step = max(1, int(np.ceil(values.size / 1_000_000)))
    sample = values.ravel()[::step].astype(np.float32)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(sample, [low, high]))
    if hi <= lo:
        lo, hi = float(sample.min()), float(sample.max())
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _display_name(path: Path) -> str:
    name = path.name
    for suffix in VOLUME_FORMATS:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name
