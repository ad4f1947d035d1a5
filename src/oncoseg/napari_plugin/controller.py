"""The plugin's logic, free of Qt: prompts read from napari layers, model work as cancellable `Job`s, results
written back to layers, measurements and exports. Works on a plain `napari.components.ViewerModel` (tests) and
on a real `napari.Viewer` (the dock widget in `widget.py` only adds buttons, a progress bar and a worker thread).

A thin shell over `oncoseg.session.Session`: one session per image layer (made when the image is chosen; the
model is built from `model_spec()` once and shared by every image). Prompts are checked by `Session.check`;
"segment slice" is `Session.segment`, "propagate 3D" is `Session.segment(volume=True)`, a prompt on another
slice of a propagated object is `Session.refine` (that slice is re-segmented and the volume re-walked from it
up to the next annotated slice), measurements are `Session.measure`, files go through `oncoseg.io.write` /
`oncoseg.dicom` with the checks the CLI makes. Text prompts go through `oncoseg.api.segment`.

Layers the controller owns (created over the chosen image, with its millimetre scale):

* ``oncoseg points``: clicks, feature ``positive`` (green = include, red = exclude);
* ``oncoseg boxes``: rectangles, one object each, on the slice they are drawn on;
* ``oncoseg current``: the object being edited (not yet committed), one label per prompt object;
* ``oncoseg objects``: committed objects (the session's objects), label ``i`` = object ``i`` (what is measured
  and exported). Both mask layers can be painted on: what they show is what is committed, measured and exported.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from oncoseg.errors import EmptyResultError, OncoSegError
from oncoseg.image import MedicalImage
from oncoseg.modality import MODALITIES, canonical_modality
from oncoseg.napari_plugin._reader import METADATA_KEY, percentile_window
from oncoseg.prompts import Box, Point, Prompt, box_from_mask, build_prompts
from oncoseg.session import SegmentedObject, Session
from oncoseg.volume import PropagationSettings

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
    unit: str = "mm"  # "px": a picture without a physical pixel size (then volume_ml is in 1000 voxels)

    def text(self) -> str:
        if self.unit == "px":
            size = (
                f"{self.volume_ml * 1000:7.0f} px³"
                if self.volume_ml is not None
                else f"{self.area_mm2:7.0f} px²"
            )
        else:
            size = f"{self.volume_ml:7.2f} mL" if self.volume_ml is not None else f"{self.area_mm2:7.0f} mm²"
        where = f" z{self.slice}" if self.slice is not None else ""
        return (
            f"{self.label:>2} {self.name[:12]:<12} {size}  RECIST {self.long_mm:.1f} x {self.short_mm:.1f} "
            f"{self.unit}{where}"
        )


@dataclass
class OpenImage:
    """One image layer open for segmentation: its `Session` (committed objects: ``session.objects``) and the
    object(s) being edited, made by the session but not yet committed (``current``, shown as labels 1, 2, ...
    of the ``oncoseg current`` layer)."""

    layer: Any
    data: Any  # the layer's data the session was made from (a new array: a new session)
    session: Session
    model_key: tuple
    current: list[SegmentedObject] = field(default_factory=list)
    committed: set[int] = field(default_factory=set)  # id() of the session objects shown in `oncoseg objects`


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
        self._open: dict[int, OpenImage] = {}  # id(image layer) -> its session
        self._shown: OpenImage | None = None  # the image whose objects the mask layers show
        self._predictor = None  # the model, shared by the sessions of every image
        self._predictor_key: tuple | None = None

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

    def _opened(self) -> OpenImage:
        """The chosen layer's `OpenImage`: its session is made once per layer (again when its data changes)."""
        layer = self.image_layer
        opened = self._open.get(id(layer))
        if opened is None or opened.layer is not layer or opened.data is not layer.data:
            session = Session(image_from_layer(layer), self._model, modality=self.modality_override)
            opened = OpenImage(layer, layer.data, session, self._model_key)
            layers = self.viewer.layers
            self._open = {k: v for k, v in self._open.items() if v.layer in layers}  # closed images go
            self._open[id(layer)] = opened
        return opened

    def open_image(self) -> OpenImage:
        """The chosen layer's `OpenImage` (its session and the object being edited)."""
        return self._opened()

    def shown(self) -> tuple[OpenImage, int | None]:
        """What to encode ahead: the chosen image, its session set to the panel's model and modality, and the
        slice shown. No model work here: the model is built and set on the image on the model thread."""
        return self._ready(), self.current_slice()

    def session(self) -> Session:
        """The `Session` of the chosen image."""
        return self._opened().session

    def _ready(self) -> OpenImage:
        """The chosen image's `OpenImage`, its session set to the panel's model, modality and propagation."""
        opened = self._opened()
        if opened.model_key != self._model_key:
            old = opened.session  # a session keeps its model: a new session over the same objects
            opened.session = Session(old.image, self._model, modality=old.modality)
            opened.session.objects = old.objects
            opened.model_key = self._model_key
        opened.session.modality = self.modality
        opened.session.propagation = PropagationSettings(max_slices=self.max_slices)
        return opened

    def image(self) -> MedicalImage:
        """The chosen layer as a `MedicalImage` (made once per layer and data)."""
        return self._opened().session.image

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

    @property
    def _model_key(self) -> tuple:
        return (self.backend, self.checkpoint)

    def _model(self):
        """The `Predictor` of the chosen model, built from `model_spec` once and shared by every image's session
        (each session sets its image on it)."""
        if self._predictor is None or self._predictor_key != self._model_key:
            self._predictor = self.model_spec().build_predictor()
            self._predictor_key = self._model_key
        return self._predictor

    def predictor(self, session: Session | None = None):
        """The model set on ``session``'s image (default: the chosen image's session). Called in the worker thread
        at the start of each job (loading a model and normalising a volume take a while)."""
        session = session or self.session()
        predictor = session.predictor  # first use: the shared model, the session sets its image on it
        chosen = session.modality or session.image.modality
        if predictor.image is not session.image or predictor.modality != (
            canonical_modality(chosen) if chosen else None
        ):  # another image's session used it since, or the modality changed
            predictor.set_image(session.image, modality=session.modality)
        return predictor

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
        """Create the prompt and mask layers over the chosen image (once; again if it changed shape), showing the
        objects of the chosen image's session."""
        layer, opened = self.image_layer, self._opened()
        image = opened.session.image
        layers = self.viewer.layers
        shown = self._shown
        if shown is not opened and shown is not None and self._mask_layers_fit(shown.session.image.shape):
            self._read_objects(shown)  # keep what was painted on the previous image's layers
            self._read_current(shown)
        if not (all(name in layers for name in OWN_LAYERS) and self._mask_layers_fit(image.shape)):
            self._make_layers(layer, image)
            self._shown = None
        if self._shown is not opened:
            self._shown = opened
            self._show(opened)

    def _mask_layers_fit(self, shape: tuple[int, ...]) -> bool:
        layers = self.viewer.layers
        return all(name in layers and tuple(layers[name].data.shape) == shape for name in (CURRENT, OBJECTS))

    def _make_layers(self, layer, image: MedicalImage) -> None:
        scale = tuple(np.asarray(layer.scale)[-image.ndim :])
        translate = tuple(np.asarray(layer.translate)[-image.ndim :])
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

    # -- the mask layers and the session -----------------------------------------------------------------------
    def _show(self, opened: OpenImage) -> None:
        """Draw ``opened``'s committed objects and current object(s) on the mask layers."""
        layers = self.viewer.layers
        layers[OBJECTS].data = opened.session.labels()
        layers[OBJECTS].metadata["names"] = self._names(opened)
        current = np.zeros(opened.session.image.shape, np.uint8)
        for label, obj in enumerate(opened.current, start=1):
            current[obj.mask & (current == 0)] = label
        layers[CURRENT].data = current

    def _read_objects(self, opened: OpenImage) -> list[SegmentedObject]:
        """The committed objects as the ``oncoseg objects`` layer shows them (painted edits kept: each object's
        mask is replaced by its label there; a label painted by hand becomes an object). Returns those present."""
        data = np.asarray(self.viewer.layers[OBJECTS].data)
        objects = [obj for obj in list(opened.session.objects) if id(obj) in opened.committed]
        for obj in objects:
            obj.mask = data == obj.label
        known = {obj.label for obj in objects}
        for label in np.flatnonzero(np.bincount(data.ravel()))[1:]:
            if int(label) not in known:
                obj = SegmentedObject(int(label), f"Object_{label}", data == label, volume=data.ndim == 3)
                opened.session.objects.append(obj)
                opened.committed.add(id(obj))
                objects.append(obj)
        return sorted((obj for obj in objects if obj.mask.any()), key=lambda obj: obj.label)

    def _read_current(self, opened: OpenImage) -> list[SegmentedObject]:
        """The current object(s) as the ``oncoseg current`` layer shows them: label ``i`` is the ``i``-th (its
        mask replaced by what the layer shows); a label painted by hand becomes a current object too."""
        data = np.asarray(self.viewer.layers[CURRENT].data)
        current = []
        for label in np.flatnonzero(np.bincount(data.ravel()))[1:]:
            mask = data == label
            if label <= len(opened.current):
                obj = opened.current[label - 1]
                obj.mask = mask
            else:
                obj = SegmentedObject(int(label), "current", mask)
            current.append(obj)
        opened.current = current
        return current

    def _commit(self, opened: OpenImage, objects: list[SegmentedObject], name: str | None) -> list[int]:
        """Add ``objects`` to the session as committed objects with new labels (not over earlier objects) and
        names, and show them; returns their labels."""
        session, labels = opened.session, opened.session.labels()
        names = set(self._names(opened).values())
        top = max((obj.label for obj in session.objects), default=0)
        base = (name or "").strip()
        added = []
        for obj in objects:
            mask = np.asarray(obj.mask, bool) & (labels == 0)
            if not mask.any():
                continue
            label = top + len(added) + 1
            if label > 255:
                raise OncoSegError(
                    "255 objects is the most one label map holds: export, then start a new one"
                )
            unique = base and len(objects) == 1 and base not in names
            obj.label, obj.mask, obj.name = label, mask, base if unique else f"{base or 'Object'}_{label}"
            labels[mask] = label
            added.append(obj)
        session.objects.extend(added)
        opened.committed.update(id(obj) for obj in added)
        self._show(opened)
        return [obj.label for obj in added]

    def _names(self, opened: OpenImage) -> dict[int, str]:
        return {obj.label: obj.name for obj in opened.session.objects if id(obj) in opened.committed}

    # -- prompts -----------------------------------------------------------------------------------------------
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
        """Remove all points and boxes and drop the current object."""
        points, boxes, current = (self._layer_named(n) for n in (POINTS, BOXES, CURRENT))
        points.data = np.empty((0, points.ndim))
        boxes.data = []
        current.data = np.zeros_like(current.data)
        self._opened().current = []
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
        """Segment the current slice from its prompts into the current object: a new object per prompt, or, when
        there is a current object, a correction of it on this slice (`Session.refine`: only this slice is
        replaced; a propagated object is re-walked from this slice up to its next annotated slice)."""
        opened = self._ready()
        session, z = opened.session, self.current_slice()
        prompts = self.slice_prompts(z)
        current = self._read_current(opened)
        fixes = [(obj, correction(obj, prompt, z)) for obj, prompt in zip(current, prompts)]
        new = prompts[len(current) :]
        for label, prompt in enumerate(new, start=len(session.objects) + 1):
            session.check(prompt, label=label)  # before any model work
        walks = any(obj.volume for obj, _ in fixes)
        image = session.image
        total = len(prompts) if not walks else (image.num_slices if self.max_slices is None
                                                else min(image.num_slices, 2 * self.max_slices + 1))  # fmt: skip

        def work(job: Job) -> list[SegmentedObject]:
            self.predictor(session)
            made = []
            # A cancelled or failed re-walk leaves no half-corrected object behind.
            with _restored_on_error(obj for obj, _ in fixes):
                for obj, prompt in fixes:
                    session.refine(obj, prompt, on_slice=lambda _z: job.step())
                    job.step()
                for prompt in new:
                    made.append(_kept_out(session, session.segment(prompt)))
                    job.step()
            return [obj for obj, _ in fixes] + made

        def finish(objects: list[SegmentedObject]) -> str:
            opened.current = objects + current[len(objects) :]
            self._show(opened)
            where = f" on slice {z}" if z is not None else ""
            if walks:
                walked = next(obj for obj, _ in fixes if obj.volume)
                first, last = walked.slice_range
                return (
                    f"corrected{where} and re-propagated: slices {first}-{last}, {walked.quality.describe()}: "
                    "Shift-C commits"
                )
            scores = [obj.slice_scores.get(z, obj.score) for obj in objects]
            worst = min((obj.quality for obj in objects), key=lambda q: q.estimate)
            return (
                f"{len(objects)} object(s){where}, score {float(np.mean(scores)):.2f}, {worst.describe()}: "
                "Shift-C commits"
            )

        return Job("correct and re-propagate" if walks else "segment slice", total, work, finish)

    def propagate(self) -> Job:
        """Follow the current object through the volume from the current slice (its prompts, else the current
        object's mask there) into the current object (`Session.segment` with ``volume=True``)."""
        opened = self._ready()
        session, z = opened.session, self.current_slice()
        image = session.image
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
        session.check(prompt, volume=True, label=len(session.objects) + 1)
        total = (
            image.num_slices if self.max_slices is None else min(image.num_slices, 2 * self.max_slices + 1)
        )

        def work(job: Job) -> SegmentedObject:
            self.predictor(session)
            return _kept_out(session, session.segment(prompt, volume=True, on_slice=lambda _z: job.step()))

        def finish(obj: SegmentedObject) -> str:
            opened.current = [obj]
            self._show(opened)
            first, last = obj.slice_range
            return (
                f"propagated over slices {first}-{last}, {obj.quality.describe()}: Shift-C commits, Shift-S on a "
                "slice corrects"
            )

        return Job("propagate 3D", total, work, finish)

    def sizes(self) -> tuple[int, int, int, int] | None:
        """The object being edited as one of the sizes the model offered for its clicks on the slice shown:
        ``(k, n, smaller, larger)``, candidate ``k`` of ``n`` (1: the smallest) with ``smaller``/``larger`` others
        on either side; None when there is no single current object or no other size was offered there."""
        opened = self._opened()
        if len(opened.current) != 1:
            return None
        obj, z = opened.current[0], self.current_slice()
        options = obj.alternatives.get(z, ())
        if not options:
            return None
        current = obj.mask[z] if z is not None else obj.mask
        area = int(current.sum())
        areas = [int(mask.sum()) for mask, _score in options]
        smaller, larger = sum(a < area for a in areas), sum(a > area for a in areas)
        return smaller + 1, len(areas) + 1, smaller, larger

    def choose(self, which: str) -> Job:
        """Swap the object being edited to the next ``"smaller"`` or ``"larger"`` of the masks that also answered
        its clicks on the slice shown (`Session.choose`; a propagated object is walked again from there)."""
        opened = self._ready()
        session, z = opened.session, self.current_slice()
        current = self._read_current(opened)
        sizes = self.sizes()
        if sizes is None or not sizes[2 if which == "smaller" else 3]:
            where = f" on slice {z}" if z is not None else ""
            raise OncoSegError(f"no {which} answer to the clicks{where}: the model offered none")
        obj = current[0]
        walks = obj.volume
        image = session.image
        total = 1 if not walks else (image.num_slices if self.max_slices is None
                                     else min(image.num_slices, 2 * self.max_slices + 1))  # fmt: skip

        def work(job: Job) -> SegmentedObject:
            if walks:
                self.predictor(session)
            session.choose(obj, which, z=z, on_slice=lambda _z: job.step())  # changes obj only at its end
            job.step()
            return obj

        def finish(chosen: SegmentedObject) -> str:
            opened.current = [chosen]
            self._show(opened)
            k, n, _smaller, _larger = self.sizes() or (1, 1, 0, 0)
            return f"size {k} of {n} ({which}): Shift-C commits"

        return Job(f"{which} answer", total, work, finish)

    def segment_all_boxes(self) -> Job:
        """Segment every box (any slice), one committed object each; propagated in 3D when ``boxes_in_3d``."""
        opened = self._ready()
        session = opened.session
        boxes = self.boxes(every_slice=True)
        if not boxes:
            raise OncoSegError("no boxes: draw rectangles on the 'oncoseg boxes' layer first")
        volume = self.boxes_in_3d and session.image.is_3d
        prompts = [Prompt(box=box) for box in boxes]
        for label, prompt in enumerate(prompts, start=len(session.objects) + 1):
            session.check(prompt, volume, label)

        def work(job: Job) -> list[SegmentedObject]:
            self.predictor(session)
            made = []
            for prompt in prompts:
                try:
                    made.append(_kept_out(session, session.segment(prompt, volume=volume)))
                except EmptyResultError:
                    pass  # nothing in this box: the others still count
                job.step()
            return made

        def finish(objects: list[SegmentedObject]) -> str:
            labels = self._commit(opened, objects, "Box")
            self._layer_named(BOXES).data = []
            return f"{len(labels)} object(s) from {len(boxes)} box(es)" + (" in 3D" if volume else "")

        return Job("segment all boxes", len(boxes), work, finish)

    def segment_text(self, text: str) -> Job:
        """Every instance of ``text`` on the current slice (backends with text prompts), one object each."""
        from oncoseg.api import segment

        text = (text or "").strip()
        if not text:
            raise OncoSegError("type what to find first, e.g. 'liver' or 'polyp'")
        opened = self._ready()
        session, z = opened.session, self.current_slice()

        def work(job: Job) -> list[SegmentedObject]:
            predictor = self.predictor(session)
            if not predictor.backend.supports_text:
                raise OncoSegError(
                    f"the {predictor.backend.name} backend has no text prompts: choose a backend that has "
                    "(e.g. sam3), or draw a box"
                )
            result = segment(session.image, text=text, slice_index=z, predictor=predictor,
                             modality=session.modality)  # fmt: skip
            job.step()
            prompt = result.prompts[0] if result.prompts else Prompt(text=text)
            return [
                SegmentedObject(i, text, result.labels == i, {z: score}, {z: prompt})
                for i, score in enumerate(result.scores, start=1)
            ]

        def finish(objects: list[SegmentedObject]) -> str:
            labels = self._commit(opened, objects, text)
            return f"{len(labels)} instance(s) of {text!r}"

        return Job(f"find {text!r}", 1, work, finish)

    def export(self, path: str | Path, kind: str = "nifti") -> Job:
        """Write the committed objects: a NIfTI/NRRD/MHA label map (format by extension), or a DICOM SEG or
        RTSTRUCT over the source series (images opened from a DICOM folder only). The output is checked as the
        CLI checks it, before any work, and written through `oncoseg.io.write.OutputFiles`."""
        from oncoseg.api import check_outputs
        from oncoseg.io.write import check_output_path

        if kind not in EXPORT_KINDS:
            raise OncoSegError(f"unknown export {kind!r}; expected one of: {', '.join(EXPORT_KINDS)}")
        opened = self._ready()
        session, path = opened.session, Path(path)
        self.ensure_layers()
        objects = self._read_objects(opened)
        if not objects:
            raise OncoSegError("nothing to export: segment an object and commit it (Shift-C) first")
        folder = self.image_layer.metadata.get(METADATA_KEY, {}).get("dicom_folder")
        if kind == "nifti":
            check_outputs(session.image, path)
        elif folder is None or not session.image.is_3d:
            raise OncoSegError(
                f"{EXPORT_KINDS[kind]} is written over the source DICOM series: open a DICOM series folder "
                "(this image did not come from one); export a NIfTI label map instead"
            )
        else:
            from oncoseg.dicom import standard_name
            from oncoseg.dicom.reference import check_text

            check_output_path(path, "DICOM output (e.g. rt.dcm)")
            for obj in objects:
                check_text(standard_name(obj.name), "LO", "structure name")
        labels = session.labels()
        masks = {obj.name: labels == obj.label for obj in objects}

        def work(job: Job) -> Path:
            from oncoseg.io.write import OutputFiles

            with OutputFiles() as outputs:
                if kind == "nifti":
                    from oncoseg.io import save_mask

                    save_mask(labels, session.image, path, outputs)
                else:
                    from oncoseg.dicom import write_rtstruct, write_seg

                    write = write_rtstruct if kind == "rtstruct" else write_seg
                    write(masks, folder, path, outputs=outputs)
            job.step()
            return path

        def finish(written) -> str:
            return f"{EXPORT_KINDS[kind]} with {len(objects)} object(s) written to {written}"

        return Job(f"export {EXPORT_KINDS[kind]}", 1, work, finish)

    def run(self, job: Job) -> str:
        """Run ``job`` here and now (tests, scripts); the widget runs ``job.run`` in a worker thread instead."""
        return job.finish(job.run())

    # -- objects -----------------------------------------------------------------------------------------------
    @property
    def current(self) -> list[SegmentedObject]:
        """The object(s) being edited (not yet committed), as the session made them."""
        return list(self._opened().current)

    def commit(self, name: str | None = None) -> str:
        """Commit the current object(s) to the session: each current label becomes a new object."""
        self.ensure_layers()
        opened = self._opened()
        current = self._read_current(opened)
        if not current:
            raise OncoSegError("nothing to commit: segment a slice (Shift-S) or propagate (Shift-D) first")
        labels = self._commit(opened, current, name)
        self.clear_prompts()
        return f"committed as object {', '.join(map(str, labels))}"

    def names(self) -> dict[int, str]:
        """Object names by label (given at commit, else ``Object_<label>``)."""
        self.ensure_layers()
        return self._names(self._opened())

    def rename(self, label: int, name: str) -> None:
        self.ensure_layers()
        opened = self._opened()
        for obj in opened.session.objects:
            if obj.label == int(label) and id(obj) in opened.committed:
                obj.name = name
        self.viewer.layers[OBJECTS].metadata["names"] = self._names(opened)

    def measurements(self) -> list[ObjectRow]:
        """Volume (or area) and RECIST diameters of each committed object and of the current object (label 0),
        as the mask layers show them (`Session.measure`)."""
        self.ensure_layers()
        opened = self._opened()
        session = opened.session
        rows = []
        unit = session.image.spacing_unit  # mm, or px for a picture without a physical pixel size
        for obj in self._read_objects(opened):
            m = session.measure(obj)
            rows.append(ObjectRow(obj.label, obj.name, m.volume_ml, m.area_mm2, m.recist_long_mm,
                                  m.recist_short_mm, m.recist_slice, unit))  # fmt: skip
        current = np.asarray(self.viewer.layers[CURRENT].data)
        if current.shape == session.image.shape and current.any():
            m = session.measure(SegmentedObject(0, "current", current > 0))
            rows.append(ObjectRow(0, "current", m.volume_ml, m.area_mm2, m.recist_long_mm, m.recist_short_mm,
                                  m.recist_slice, unit))  # fmt: skip
        return rows

    def measurement_text(self) -> str:
        rows = self.measurements()
        return "\n".join(row.text() for row in rows) if rows else "no objects yet"


def correction(obj: SegmentedObject, prompt: Prompt, z: int | None) -> Prompt:
    """What a slice's prompts add to ``obj`` there, for `Session.refine`: a box is taken whole (with the clicks
    on that slice); clicks alone are added to the clicks already given there, so only the new ones are sent."""
    given = obj.anchors.get(z)
    if prompt.box is not None or given is None:
        return prompt
    new = tuple(point for point in prompt.points if point not in given.points)
    if not new:
        where = f" on slice {z}" if z is not None else ""
        raise OncoSegError(f"no new click{where}: click to include or exclude, or draw a box")
    return Prompt(points=new)


def _kept_out(session: Session, obj: SegmentedObject) -> SegmentedObject:
    """``obj``, just made by ``session``, taken out of its objects again: the controller adds objects to the
    session itself, on the main thread, when they are committed (the current object is not one yet)."""
    for i in range(len(session.objects) - 1, -1, -1):  # by identity: == compares the masks
        if session.objects[i] is obj:
            del session.objects[i]
    return obj


class _restored_on_error:
    """Put the masks, scores and anchors of ``objects`` back as they were if the block raises (e.g. a refine
    cancelled half-way through its re-walk): a failed or cancelled job leaves no half-corrected object."""

    def __init__(self, objects):
        self.saved = [(obj, obj.mask.copy(), dict(obj.slice_scores), dict(obj.anchors)) for obj in objects]

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is not None:
            for obj, mask, scores, anchors in self.saved:
                obj.mask, obj.slice_scores, obj.anchors = mask, scores, anchors


def _kind(layer) -> str:
    return type(layer).__name__.lower()


def modality_choices() -> list[str]:
    return ["auto", *MODALITIES]
