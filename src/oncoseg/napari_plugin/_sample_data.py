"""napari sample data: the demo cases bundled in `oncoseg.samples` (File > Open Sample > Onco-Seg)."""

from __future__ import annotations

from oncoseg.io import load_image
from oncoseg.napari_plugin._reader import LayerData, image_layer_data
from oncoseg.samples import list_samples, sample_path


def load_sample(name: str) -> list[LayerData]:
    """The bundled sample ``name`` as an image layer (its modality from the manifest)."""
    entry = list_samples()[name]
    image = load_image(sample_path(name), modality=entry["modality"])
    data, kwargs, kind = image_layer_data(image, name)
    kwargs["metadata"]["oncoseg"]["suggested_prompt"] = entry.get("prompt")
    return [(data, kwargs, kind)]


def ct_abdomen() -> list[LayerData]:
    return load_sample("ct_abdomen")


def hippocampus() -> list[LayerData]:
    return load_sample("hippocampus")


def polyp() -> list[LayerData]:
    return load_sample("polyp")


def breast_ultrasound() -> list[LayerData]:
    return load_sample("breast_ultrasound")
