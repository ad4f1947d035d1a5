"""The plugin's logic, free of Qt: prompts read from napari layers, model work as cancellable `Job`s, results
written back to layers, measurements and exports. Works on a plain `napari.components.ViewerModel` (tests) and
on a real `napari.Viewer` (the dock widget in `widget.py` only adds buttons, a progress bar and a worker thread).

Every model call goes through the Python API (`Predictor`, `oncoseg.volume.propagate`, `oncoseg.api.segment`),
every measurement through `oncoseg.measure.measure`, every file through `oncoseg.io` / `oncoseg.dicom`.

Layers the controller owns (created over the chosen image, with its millimetre scale):

* ``oncoseg points``: clicks, feature ``positive`` (green = include, red = exclude);
* ``oncoseg boxes``: rectangles, one object each, on the slice they are drawn on;
* ``oncoseg current``: the object being edited (not yet committed), one label per prompt object;
* ``oncoseg objects``: committed objects, label ``i`` = object ``i`` (what is measured and exported).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from oncoseg.errors import OncoSegError
from oncoseg.image import MedicalImage
from oncoseg.modality import MODALITIES, canonical_modality
from oncoseg.napari_plugin._reader import METADATA_KEY, percentile_window
from oncoseg.prompts import Box, Point, Prompt, box_from_mask, build_prompts

POINTS = "oncoseg points"
BOXES = "oncoseg boxes"
CURRENT = "oncoseg current"
OBJECTS = "oncoseg objects"
OWN_LAYERS = (POINTS, BOXES, CURRENT, OBJECTS)

EXPORT_KINDS = {"nifti": "NIfTI label map", "dicom_seg": "DICOM SEG", "rtstruct": "DICOM RTSTRUCT"}

# Keyboard shortcuts (napari key names), bound on the viewer by the widget and listed in it.
SHORTCUTS = {
    "Shift-S": ("segment_slice", "segment this slice"),
    "Shift-C": ("commit", "commit the object"),
    "Shift-D": ("propagate", "propagate in 3D"),
    "Shift-B": ("segment_all_boxes", "segment all boxes"),
    "Shift-N": ("toggle_polarity", "include/exclude"),
    "Shift-X": ("clear_prompts", "clear the prompts"),
}


class JobCancelled(OncoSegError):
    """The user cancelled a running job."""


@dataclass
class Job:
    """Model work planned on the main thread: ``work(job)`` runs in a worker thread (calling ``job.step()`` after
    each unit, which raises `JobCancelled` once `cancel` was asked), ``finish(result)`` applies the result to
    the layers on the main thread and returns a status line."""

    title: str
    total: int
    work: Callable[[Job], Any]
    finish: Callable[[Any], str]
    done: int = 0
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    def step(self, count: int = 1) -> None:
        if self._cancel.is_set():
            raise JobCancelled(f"{self.title}: cancelled")
        self.done = min(self.total, self.done + count)

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def run(self) -> Any:
        """The worker-thread part."""
        result = self.work(self)
        self.step(0)  # a cancel asked during the last unit still counts
        return result


@dataclass
class ObjectRow:
    """One line of the measurements readout."""

    label: int
    name: str
    volume_ml: float | None
    area_mm2: float | None
    long_mm: float
    short_mm: float
    slice: int | None

    def text(self) -> str:
        size = f"{self.volume_ml:7.2f} mL" if self.volume_ml is not None else f"{self.area_mm2:7.0f} mm²"
        where = f" z{self.slice}" if self.slice is not None else ""
        return f"{self.label:>2} {self.name[:12]:<12} {size}  RECIST {self.long_mm:.1f} x {self.short_mm:.1f} mm{where}"


def image_from_layer(layer) -> MedicalImage:
    """The `MedicalImage` behind an image layer: geometry from our reader's metadata, else from the layer's
    scale (unit origin and direction; e.g. an image napari's own reader opened)."""
    array = np.asarray(layer.data)
    rgb = bool(getattr(layer, "rgb", False))
    spatial = array.ndim - (1 if rgb else 0)
    if spatial not in (2, 3):
        raise OncoSegError(
            f"layer {layer.name!r} has {spatial} dimensions: Onco-Seg segments 2D and 3D images"
        )
    info = layer.metadata.get(METADATA_KEY)
    if info:
        return MedicalImage(
            array=array,
            spacing=tuple(info["spacing"]),
            origin=tuple(info["origin"]),
            direction=tuple(info["direction"]),
            modality=info.get("modality"),
            channels=3 if rgb else 1,
            source_path=info.get("source_path"),
            source_orientation=info.get("source_orientation"),
            metadata=dict(info.get("image_metadata") or {}),
        )
    spacing = tuple(float(s) for s in reversed(np.asarray(layer.scale)[-spatial:]))
    image = MedicalImage(
        array,
        spacing,
        (0.0,) * spatial,
        tuple(float(v) for v in np.eye(spatial).ravel()),
        channels=3 if rgb else 1,
    )
    if rgb:
        image.modality = "endoscopy"
    else:
        from oncoseg.io import guess_modality

        image.modality = guess_modality("image", image)
    image.metadata["modality_source"] = "guessed"
    return image


class Controller:
    """State and actions of the Onco-Seg panel for one napari viewer."""

    def __init__(self, viewer, backend: str = "litemedsam", checkpoint: str | None = None):
        self.viewer = viewer
        self.backend = backend
        self.checkpoint = checkpoint or None
        self.modality_override: str | None = None
        self.max_slices: int | None = None  # propagation: slices walked each way (None: until it ends)
        self.boxes_in_3d = False  # "segment all boxes": propagate each box through the volume
        self.positive = True
        self._layer = None
        self._image: tuple[Any, Any, MedicalImage] | None = None  # (layer, its data, image)
        self._predictor = None
        self._predictor_key: tuple | None = None
        self._predictor_image: tuple | None = None

    # -- image and model ---------------------------------------------------------------------------------------
    def image_layers(self) -> list:
        return [
            layer for layer in self.viewer.layers if _kind(layer) == "image" and layer.name not in OWN_LAYERS
        ]

    @property
    def image_layer(self):
        """The chosen image layer (else the most recently added one)."""
        layers = self.image_layers()
        if self._layer is not None and self._layer in layers:
            return self._layer
        if not layers:
            raise OncoSegError("no image open: File > Open (NIfTI, NRRD/MHA, DICOM folder) or a sample")
        return layers[-1]

    def set_image_layer(self, layer) -> None:
        self._layer = layer
        self.ensure_layers()

    def image(self) -> MedicalImage:
        """The chosen layer as a `MedicalImage` (rebuilt only when the layer or its data changes)."""
        layer = self.image_layer
        if self._image is None or self._image[0] is not layer or self._image[1] is not layer.data:
            self._image = (layer, layer.data, image_from_layer(layer))
        return self._image[2]

    @property
    def detected_modality(self) -> str | None:
        return self.image().modality

    @property
    def modality(self) -> str | None:
        """The modality the model normalises for: the user's choice, else the detected one."""
        return self.modality_override or self.detected_modality

    def set_modality(self, name: str | None) -> None:
        """Override the detected modality (None or "auto": back to the detected one)."""
        self.modality_override = None if name in (None, "", "auto") else canonical_modality(name)

    def set_model(self, backend: str, checkpoint: str | None = None) -> None:
        """Choose the backend and a fine-tuned checkpoint (LiteMedSAM) or weights folder (SAM3)."""
        self.backend, self.checkpoint = backend, (checkpoint or None)

    def model_spec(self):
        """The `ModelSpec` of the chosen model: for SAM3 a folder in the checkpoint field is its weights folder,
        a file or a registered name a checkpoint, as for LiteMedSAM."""
        from oncoseg.models.spec import ModelSpec

        if self.backend == "sam3" and self.checkpoint and Path(self.checkpoint).is_dir():
            return ModelSpec(backend="sam3", weights=self.checkpoint)
        return ModelSpec(backend=self.backend, checkpoint=self.checkpoint)

    def predictor(self, image: MedicalImage | None = None, modality: str | None = None):
        """The `Predictor` for the chosen backend/checkpoint, set on ``image`` (default: the chosen image) for
        ``modality``. Called in the worker thread (loading a model and normalising a volume take a while), with
        the image and modality taken on the main thread."""
        from oncoseg.predictor import Predictor

        if image is None:
            image, modality = self.image(), self.modality

        key = (self.backend, self.checkpoint)
        if self._predictor is None or self._predictor_key != key:
            self._predictor = Predictor(self.model_spec().build_backend())
            self._predictor_key, self._predictor_image = key, None
        if self._predictor_image != (id(image), modality) or self._predictor.image is not image:
            self._predictor.set_image(image, modality=modality)
            self._predictor_image = (id(image), modality)
        return self._predictor

    # -- display -----------------------------------------------------------------------------------------------
    def window_presets(self) -> dict[str, tuple[float, float] | None]:
        """Display windows for the modality: CT presets in HU (`oncoseg.render.CT_PRESETS` as low, high);
        otherwise percentile and full-range windows."""
        from oncoseg.render import CT_PRESETS, preset_limits

        if self.modality == "ct":
            return {name: preset_limits(name) for name in CT_PRESETS}
        return {"auto (1-99 %)": None, "full range": (float("nan"), float("nan"))}

    def apply_window(self, name: str) -> tuple[float, float]:
        """Set the image layer's contrast limits to preset ``name``; returns them."""
        presets = self.window_presets()
        if name not in presets:
            raise OncoSegError(f"unknown window {name!r}; expected one of: {', '.join(presets)}")
        layer = self.image_layer
        if getattr(layer, "rgb", False):
            raise OncoSegError("colour images have no intensity window")
        window = presets[name]
        data = np.asarray(layer.data)
        if window is None:
            window = percentile_window(data)
        elif np.isnan(window[0]):
            window = (float(np.nanmin(data)), float(np.nanmax(data)))
            window = window if window[1] > window[0] else (window[0], window[0] + 1)
        low, high = layer.contrast_limits_range
        layer.contrast_limits_range = (min(low, window[0]), max(high, window[1]))
        layer.contrast_limits = window
        return window

    # -- layers ------------------------------------------------------------------------------------------------
    def ensure_layers(self) -> None:
        """Create the prompt and mask layers over the chosen image (once; again if it changed shape)."""
        layer, image = self.image_layer, self.image()
        scale = tuple(np.asarray(layer.scale)[-image.ndim :])
        translate = tuple(np.asarray(layer.translate)[-image.ndim :])
        layers = self.viewer.layers
        if all(name in layers for name in OWN_LAYERS) and all(
            tuple(layers[name].data.shape) == image.shape for name in (CURRENT, OBJECTS)
        ):
            return
        for name in OWN_LAYERS:
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
        where = {"scale": scale, "translate": translate}
        objects = self.viewer.add_labels(np.zeros(image.shape, np.uint8), name=OBJECTS, opacity=0.45, **where)
        objects.metadata["names"] = {}
        self.viewer.add_labels(np.zeros(image.shape, np.uint8), name=CURRENT, opacity=0.6, **where)
        self.viewer.add_shapes(
            ndim=image.ndim, name=BOXES, edge_color="yellow", face_color="transparent", edge_width=2, **where
        )
        points = self.viewer.add_points(
            np.empty((0, image.ndim)),
            name=POINTS,
            features={"positive": np.array([], dtype=bool)},
            face_color="positive",
            face_color_cycle={True: "lime", False: "red"},
            size=max(3.0, 0.02 * max(image.shape[-2:])),
            **where,
        )
        points.feature_defaults = {"positive": self.positive}
        self.viewer.layers.selection.active = points

    def _layer_named(self, name: str):
        self.ensure_layers()
        return self.viewer.layers[name]

    def set_polarity(self, positive: bool) -> None:
        """New clicks include (True) or exclude (False) what is under them."""
        self.positive = bool(positive)
        self._layer_named(POINTS).feature_defaults = {"positive": self.positive}

    def toggle_polarity(self) -> str:
        self.set_polarity(not self.positive)
        return f"new clicks {'include' if self.positive else 'exclude'}"

    def add_point(self, position, positive: bool | None = None) -> None:
        """Add a click at ``position`` (data coordinates of the image: ``(z, y, x)`` or ``(y, x)``)."""
        points = self._layer_named(POINTS)
        keep = self.positive
        points.feature_defaults = {"positive": self.positive if positive is None else bool(positive)}
        points.add(np.asarray(position, dtype=float)[None])
        points.feature_defaults = {"positive": keep}

    def add_box(self, y0: float, x0: float, y1: float, x1: float, z: int | None = None) -> None:
        """Add a rectangle (data coordinates of the image) on slice ``z`` of a volume."""
        corners = np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], dtype=float)
        if z is not None:
            corners = np.column_stack([np.full(4, float(z)), corners])
        self._layer_named(BOXES).add_rectangles(corners)

    def clear_prompts(self) -> str:
        """Remove all points and boxes and empty the current object."""
        points, boxes, current = (self._layer_named(n) for n in (POINTS, BOXES, CURRENT))
        points.data = np.empty((0, points.ndim))
        boxes.data = []
        current.data = np.zeros_like(current.data)
        return "prompts cleared"

    def current_slice(self) -> int | None:
        """The slice shown in the viewer (data index of the image), None for 2D images."""
        image, layer = self.image(), self.image_layer
        if not image.is_3d:
            return None
        world = np.asarray(self.viewer.dims.point)[-layer.ndim :]
        z = round(float(layer.world_to_data(world)[0]))
        return int(np.clip(z, 0, image.num_slices - 1))

    def _to_image(self, layer, coordinates: np.ndarray) -> np.ndarray:
        """Data coordinates of a prompt layer → data coordinates (pixel indices) of the image."""
        image_layer = self.image_layer
        return np.array([image_layer.world_to_data(layer.data_to_world(c)) for c in coordinates]).reshape(
            len(coordinates), -1
        )

    def points(self, z: int | None = None) -> list[Point]:
        """Clicks on slice ``z`` (all clicks for a 2D image)."""
        layer = self._layer_named(POINTS)
        if len(layer.data) == 0:
            return []
        coords = self._to_image(layer, np.asarray(layer.data))
        positive = np.asarray(layer.features["positive"], dtype=bool)
        out = []
        for c, pos in zip(coords, positive):
            if z is not None and round(float(c[0])) != z:
                continue
            y, x = c[-2:]
            out.append(Point(float(x), float(y), bool(pos), z))
        return out

    def boxes(self, z: int | None = None, every_slice: bool = False) -> list[Box]:
        """Boxes on slice ``z`` (or all, with ``every_slice``), clipped to the image, in pixel coordinates."""
        layer, image = self._layer_named(BOXES), self.image()
        h, w = image.shape[-2:]
        out = []
        for shape in layer.data:
            c = self._to_image(layer, np.asarray(shape))
            box_z = round(float(np.median(c[:, 0]))) if image.is_3d else None
            if image.is_3d and not every_slice and box_z != z:
                continue
            y0, y1 = np.clip([c[:, -2].min(), c[:, -2].max()], 0, h - 1)
            x0, x1 = np.clip([c[:, -1].min(), c[:, -1].max()], 0, w - 1)
            if x1 > x0 and y1 > y0:
                out.append(Box(float(x0), float(y0), float(x1), float(y1), box_z))
        return out

    def slice_prompts(self, z: int | None) -> list[Prompt]:
        """The objects prompted on slice ``z``: one per box (clicks go with a single box), or the clicks alone."""
        boxes, points = self.boxes(z), self.points(z)
        if not boxes and not points:
            where = f" on slice {z}" if z is not None else ""
            raise OncoSegError(f"no prompt{where}: click on the object or draw a box around it")
        return build_prompts(boxes, points)

    # -- jobs --------------------------------------------------------------------------------------------------
    def segment_slice(self) -> Job:
        """Segment the current slice from its prompts into the current object (that slice only is replaced)."""
        z = self.current_slice()
        prompts = self.slice_prompts(z)
        image, modality = self.image(), self.modality

        def work(job: Job):
            prediction = self.predictor(image, modality).predict(prompts, z=z)
            job.step()
            return prediction.masks, prediction.scores

        def finish(result) -> str:
            masks, scores = result
            current = self._layer_named(CURRENT)
            data = np.array(current.data)
            target = np.zeros(masks.shape[1:], np.uint8)
            for label, mask in enumerate(masks, start=1):
                target[mask & (target == 0)] = label
            if z is None:
                data[:] = target
            else:
                data[z] = target
            current.data = data
            found = sum(bool(m.any()) for m in masks)
            where = f" on slice {z}" if z is not None else ""
            return f"{found} object(s){where}, score {float(np.mean(scores)):.2f}: Shift-C commits"

        return Job("segment slice", 1, work, finish)

    def propagate(self) -> Job:
        """Follow the current object through the volume from the current slice (its prompts, else the current
        object's mask there) into the current object."""
        from oncoseg.volume import PropagationSettings, propagate

        image, z = self.image(), self.current_slice()
        if not image.is_3d:
            raise OncoSegError("propagation needs a volume; this image is 2D (use Segment slice)")
        current = np.asarray(self._layer_named(CURRENT).data)
        if self.boxes(z) or self.points(z):
            prompts = self.slice_prompts(z)
            if len(prompts) > 1:
                raise OncoSegError(
                    "propagation follows one object: keep one box on this slice (or use Segment all boxes with 3D)"
                )
            prompt = prompts[0]
        elif current[z].any():
            prompt = Prompt(box=box_from_mask(current[z] > 0, z=z))
        else:
            raise OncoSegError(f"nothing to propagate on slice {z}: draw a box or click on the object first")
        settings = PropagationSettings(max_slices=self.max_slices)
        total = (
            image.num_slices if self.max_slices is None else min(image.num_slices, 2 * self.max_slices + 1)
        )
        modality = self.modality

        def work(job: Job):
            return propagate(
                self.predictor(image, modality), prompt, settings, on_slice=lambda _z: job.step()
            )

        def finish(result) -> str:
            self._layer_named(CURRENT).data = result.mask.astype(np.uint8)
            first, last = result.slice_range
            return f"propagated over slices {first}-{last}: Shift-C commits"

        return Job("propagate 3D", total, work, finish)

    def segment_all_boxes(self) -> Job:
        """Segment every box (any slice), one committed object each; propagated in 3D when ``boxes_in_3d``."""
        from oncoseg.volume import PropagationSettings, propagate

        image = self.image()
        boxes = self.boxes(every_slice=True)
        if not boxes:
            raise OncoSegError("no boxes: draw rectangles on the 'oncoseg boxes' layer first")
        volume = self.boxes_in_3d and image.is_3d
        settings = PropagationSettings(max_slices=self.max_slices)
        modality = self.modality

        def work(job: Job):
            predictor, masks = self.predictor(image, modality), []
            for box in boxes:
                if volume:
                    masks.append(propagate(predictor, Prompt(box=box), settings).mask)
                else:
                    mask2d = predictor.predict(Prompt(box=box), z=box.z).masks[0]
                    mask = np.zeros(image.shape, bool)
                    if image.is_3d:
                        mask[box.z] = mask2d
                    else:
                        mask = mask2d
                    masks.append(mask)
                job.step()
            return masks

        def finish(masks) -> str:
            labels = self._add_objects(masks, "Box")
            self._layer_named(BOXES).data = []
            return f"{len(labels)} object(s) from {len(boxes)} box(es)" + (" in 3D" if volume else "")

        return Job("segment all boxes", len(boxes), work, finish)

    def segment_text(self, text: str) -> Job:
        """Every instance of ``text`` on the current slice (backends with text prompts), one object each."""
        from oncoseg.api import segment

        text = (text or "").strip()
        if not text:
            raise OncoSegError("type what to find first, e.g. 'liver' or 'polyp'")
        image, z, modality = self.image(), self.current_slice(), self.modality

        def work(job: Job):
            predictor = self.predictor(image, modality)
            if not predictor.backend.supports_text:
                raise OncoSegError(
                    f"the {predictor.backend.name} backend has no text prompts: choose a backend that has "
                    "(e.g. sam3), or draw a box"
                )
            result = segment(image, text=text, slice_index=z, predictor=predictor, modality=modality)
            job.step()
            return [result.labels == i for i in range(1, int(result.labels.max()) + 1)]

        def finish(masks) -> str:
            labels = self._add_objects(masks, text)
            return f"{len(labels)} instance(s) of {text!r}"

        return Job(f"find {text!r}", 1, work, finish)

    def export(self, path: str | Path, kind: str = "nifti") -> Job:
        """Write the committed objects: a NIfTI/NRRD/MHA label map (format by extension), or a DICOM SEG or
        RTSTRUCT over the source series (images opened from a DICOM folder only)."""
        from oncoseg.io import check_mask_path, save_mask

        if kind not in EXPORT_KINDS:
            raise OncoSegError(f"unknown export {kind!r}; expected one of: {', '.join(EXPORT_KINDS)}")
        image, path = self.image(), Path(path)
        labels = np.asarray(self._layer_named(OBJECTS).data)
        present = [int(v) for v in np.flatnonzero(np.bincount(labels.ravel()))[1:]]
        if not present:
            raise OncoSegError("nothing to export: segment an object and commit it (Shift-C) first")
        names = self.names()
        folder = self.image_layer.metadata.get(METADATA_KEY, {}).get("dicom_folder")
        if kind == "nifti":
            check_mask_path(path, image)
        elif folder is None or not image.is_3d:
            raise OncoSegError(
                f"{EXPORT_KINDS[kind]} is written over the source DICOM series: open a DICOM series folder "
                "(this image did not come from one); export a NIfTI label map instead"
            )
        elif path.is_dir():
            raise OncoSegError(f"{path}: is a folder; give a file name for the DICOM output (e.g. rt.dcm)")

        def work(job: Job):
            if kind == "nifti":
                save_mask(labels, image, path)
            else:
                from oncoseg.dicom import write_rtstruct, write_seg

                masks = {names.get(i, f"Object_{i}"): labels == i for i in present}
                (write_rtstruct if kind == "rtstruct" else write_seg)(masks, folder, path)
            job.step()
            return path

        def finish(written) -> str:
            return f"{EXPORT_KINDS[kind]} with {len(present)} object(s) written to {written}"

        return Job(f"export {EXPORT_KINDS[kind]}", 1, work, finish)

    def run(self, job: Job) -> str:
        """Run ``job`` here and now (tests, scripts); the widget runs ``job.run`` in a worker thread instead."""
        return job.finish(job.run())

    # -- objects -----------------------------------------------------------------------------------------------
    def commit(self, name: str | None = None) -> str:
        """Move the current object into the committed objects (each current label becomes a new object)."""
        current = self._layer_named(CURRENT)
        data = np.asarray(current.data)
        masks = [data == v for v in np.unique(data) if v]
        if not masks:
            raise OncoSegError("nothing to commit: segment a slice (Shift-S) or propagate (Shift-D) first")
        labels = self._add_objects(masks, name)
        self.clear_prompts()
        return f"committed as object {', '.join(map(str, labels))}"

    def _add_objects(self, masks: list[np.ndarray], name: str | None) -> list[int]:
        """Write masks as new labels of the objects layer (not over earlier objects); returns their labels."""
        objects = self._layer_named(OBJECTS)
        data = np.array(objects.data)
        names = objects.metadata.setdefault("names", {})
        added = []
        for mask in masks:
            mask = np.asarray(mask, bool) & (data == 0)
            if not mask.any():
                continue
            label = int(data.max()) + 1
            if label > 255:
                raise OncoSegError(
                    "255 objects is the most one label map holds: export, then start a new one"
                )
            data[mask] = label
            base = (name or "").strip()
            unique = base and len(masks) == 1 and base not in names.values()
            names[label] = base if unique else f"{base or 'Object'}_{label}"
            added.append(label)
        objects.data = data
        return added

    def names(self) -> dict[int, str]:
        """Object names by label (given at commit, else ``Object_<label>``)."""
        return {int(k): v for k, v in self._layer_named(OBJECTS).metadata.get("names", {}).items()}

    def rename(self, label: int, name: str) -> None:
        self._layer_named(OBJECTS).metadata.setdefault("names", {})[int(label)] = name

    def measurements(self) -> list[ObjectRow]:
        """Volume (or area) and RECIST diameters of each committed object and of the current object (label 0)."""
        from oncoseg.measure import measure

        image = self.image()
        rows = []
        names = self.names()
        layers = ((OBJECTS, None), (CURRENT, "current"))
        for layer_name, fixed in layers:
            data = np.asarray(self._layer_named(layer_name).data)
            if data.shape != image.shape or not data.any():
                continue
            if fixed:
                m = measure(data > 0, image.spacing)
                rows.append(ObjectRow(0, fixed, m.volume_ml, m.area_mm2, m.recist_long_mm, m.recist_short_mm,
                                      m.recist_slice))  # fmt: skip
                continue
            for label in np.flatnonzero(np.bincount(data.ravel()))[1:]:
                m = measure(data == label, image.spacing)
                name = names.get(int(label), f"Object_{label}")
                rows.append(ObjectRow(int(label), name, m.volume_ml, m.area_mm2, m.recist_long_mm,
                                      m.recist_short_mm, m.recist_slice))  # fmt: skip
        return rows

    def measurement_text(self) -> str:
        rows = self.measurements()
        return "\n".join(row.text() for row in rows) if rows else "no objects yet"


def _kind(layer) -> str:
    return type(layer).__name__.lower()


def modality_choices() -> list[str]:
    return ["auto", *MODALITIES]
