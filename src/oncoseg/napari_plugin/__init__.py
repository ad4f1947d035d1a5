"""Onco-Seg in napari: readers that keep spacing, the bundled samples, and a dock widget for box, click and text
prompts, slice propagation, measurements and NIfTI/DICOM SEG/RTSTRUCT export (``pip install "oncoseg[napari]"``).

    >>> from oncoseg.napari_plugin import launch
    >>> widget = launch("ct_dicom_folder/")          # opens napari with the image and the Onco-Seg panel

The widget is a thin shell over `controller.Controller`, itself a thin shell over the Python API.
"""

from __future__ import annotations

from pathlib import Path

from oncoseg.errors import OncoSegError
from oncoseg.napari_plugin._runtime import avoid_triton_crash, require_napari


def launch(
    image: str | Path | None = None,
    *,
    sample: str | None = None,
    modality: str | None = None,
    backend: str = "litemedsam",
    checkpoint: str | None = None,
    show: bool = True,
    run: bool = True,
):
    """Open napari with the Onco-Seg panel docked, optionally with ``image`` (a file or DICOM series folder) or a
    bundled ``sample`` loaded; ``modality`` overrides the detected one. With ``run`` the call blocks until the
    window is closed (napari's event loop). Returns the dock widget (``widget.viewer`` is the viewer)."""
    from oncoseg.napari_plugin._reader import read_image
    from oncoseg.napari_plugin._sample_data import load_sample

    layers = []  # read before napari starts: a bad path fails fast with one line
    if image is not None:
        layers += read_image(str(image), modality=modality)
    if sample is not None:
        from oncoseg.samples import list_samples

        if sample not in list_samples():
            raise OncoSegError(f"unknown sample {sample!r}; expected one of: {', '.join(list_samples())}")
        layers += load_sample(sample)
    napari = require_napari()
    avoid_triton_crash()
    from oncoseg.napari_plugin.widget import OncoSegWidget

    viewer = napari.Viewer(title="Onco-Seg", show=show)
    for data, kwargs, _kind in layers:
        viewer.add_image(data, **kwargs)
    widget = OncoSegWidget(viewer, backend=backend, checkpoint=checkpoint)
    viewer.window.add_dock_widget(widget, name="Onco-Seg", area="right")
    if layers and widget.controller.image().is_3d:
        _show_middle_slice(widget)
    if run:
        napari.run()
    return widget


def _show_middle_slice(widget) -> None:
    """Start on the bundled sample's prompt slice, else the middle slice."""
    from oncoseg.napari_plugin._reader import METADATA_KEY

    controller = widget.controller
    info = controller.image_layer.metadata.get(METADATA_KEY, {})
    prompt = info.get("suggested_prompt") or {}
    z = prompt.get("z", controller.image().num_slices // 2)
    widget.viewer.dims.set_current_step(0, z)


__all__ = ["avoid_triton_crash", "launch", "require_napari"]
