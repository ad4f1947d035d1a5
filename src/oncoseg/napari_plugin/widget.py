"""The Onco-Seg dock widget: buttons, fields, a progress bar and keyboard shortcuts over `Controller` (itself a
thin shell over `oncoseg.session.Session`, one per image).

Model work (loading, encoding, propagation, export) runs on one long-lived model thread, the service's
`oncoseg.service.worker.ModelWorker`: the viewer stays responsive, a progress bar follows the job and Cancel stops
it at the next slice. Only that thread calls into the model: torch keeps one OpenMP pool per thread that runs
parallel work, and two pools on a small machine run the encoder up to 1.9x slower. While it is idle it encodes
the slice shown and its neighbours ahead (`oncoseg.napari_plugin.ahead`), yielding to a job at once; the panel
shows how many slices are ready.
"""

from __future__ import annotations

import functools
import logging
import time

import napari
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtGui import QFont
from qtpy.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from oncoseg.errors import OncoSegError
from oncoseg.napari_plugin._runtime import avoid_triton_crash
from oncoseg.napari_plugin.ahead import EncodeAhead, Ready
from oncoseg.napari_plugin.controller import (
    BOXES,
    CURRENT,
    EXPORT_KINDS,
    OBJECTS,
    POINTS,
    SHORTCUTS,
    Controller,
    Job,
    JobCancelled,
    modality_choices,
)
from oncoseg.render import DEFAULT_CT_PRESET
from oncoseg.service.worker import ModelWorker

log = logging.getLogger(__name__)

CHECKPOINT_TIP = (
    "LiteMedSAM: a fine-tuned checkpoint (LoRA adapter, state dict or a name from `oncoseg train`); "
    "SAM3: the weights folder (default $ONCOSEG_SAM3_WEIGHTS)"
)

EXPORT_FILTERS = {
    "nifti": "Label map (*.nii.gz *.nii *.nrrd *.mha)",
    "dicom_seg": "DICOM SEG (*.dcm)",
    "rtstruct": "DICOM RTSTRUCT (*.dcm)",
}


class _Relay(QObject):
    """Hands the model thread's news to the Qt thread (signals emitted elsewhere are queued to the receiver's)."""

    finished = Signal(object)  # the job's concurrent Future
    ready = Signal(object)  # an `ahead.Ready`


def _stop_model_thread(ahead: EncodeAhead, worker: ModelWorker, *_args) -> None:
    ahead.stop()
    worker.stop(timeout=0)


class OncoSegWidget(QWidget):
    """Dock widget: model, modality and window, prompts, actions, measurements, export."""

    def __init__(
        self, viewer: napari.viewer.Viewer, backend: str = "litemedsam", checkpoint: str | None = None
    ):
        super().__init__()
        avoid_triton_crash()  # before anything imports torchvision/MONAI into a process with an OpenGL canvas
        self.viewer = viewer
        self.controller = Controller(viewer, backend=backend, checkpoint=checkpoint)
        self.job: Job | None = None
        # the one thread for all model work, for the widget's life
        self._model_thread = ModelWorker(max_queue=2)
        self._relay = _Relay(self)
        self._relay.finished.connect(self._on_finished)
        self._relay.ready.connect(self._on_ready)
        self.ahead = EncodeAhead(
            self._model_thread,
            lambda opened: self.controller.predictor(opened.session),
            self._relay.ready.emit,
        )
        self.ready_state: Ready | None = None  # the chosen image's slices encoded ahead, as last reported
        self.destroyed.connect(functools.partial(_stop_model_thread, self.ahead, self._model_thread))
        self._started = 0.0
        self.last_error: str | None = None
        self._build()
        self._timer = QTimer(self)
        self._timer.setInterval(100)
        self._timer.timeout.connect(self._show_progress)
        self._measure_timer = QTimer(self)
        self._measure_timer.setSingleShot(True)
        self._measure_timer.setInterval(250)
        self._measure_timer.timeout.connect(self.update_measurements)
        viewer.layers.events.inserted.connect(self._on_layers_changed)
        viewer.layers.events.removed.connect(self._on_layers_changed)
        viewer.dims.events.current_step.connect(self._on_step)
        self._bind_keys()
        self._on_layers_changed()

    # -- layout ------------------------------------------------------------------------------------------------
    def _build(self) -> None:
        from oncoseg.models import available_backends

        layout = QVBoxLayout(self)

        setup = QGroupBox("Image and model")
        form = QFormLayout(setup)
        self.image_combo = QComboBox()
        self.image_combo.currentIndexChanged.connect(self._on_image_chosen)
        form.addRow("image", self.image_combo)
        self.backend_combo = QComboBox()
        self.backend_combo.addItems(available_backends())
        self.backend_combo.setCurrentText(self.controller.backend)
        self.backend_combo.currentTextChanged.connect(self._on_model_changed)
        form.addRow("backend", self.backend_combo)
        row = QHBoxLayout()
        self.checkpoint_edit = QLineEdit(self.controller.checkpoint or "")
        self.checkpoint_edit.setPlaceholderText("bundled weights")
        self.checkpoint_edit.setToolTip(CHECKPOINT_TIP)
        self.checkpoint_edit.editingFinished.connect(self._on_model_changed)
        browse = QPushButton("…")
        browse.setMaximumWidth(30)
        browse.clicked.connect(self._browse_checkpoint)
        row.addWidget(self.checkpoint_edit)
        row.addWidget(browse)
        form.addRow("checkpoint", row)
        self.modality_combo = QComboBox()
        self.modality_combo.addItems(modality_choices())
        self.modality_combo.currentTextChanged.connect(self._on_modality_changed)
        form.addRow("modality", self.modality_combo)
        self.window_combo = QComboBox()
        self.window_combo.activated.connect(lambda _i: self._safely(self._apply_window))
        form.addRow("window", self.window_combo)
        row = QHBoxLayout()
        self.ahead_check = QCheckBox("encode ahead")
        self.ahead_check.setChecked(True)
        self.ahead_check.setToolTip(
            "while the model is idle, encode the slice shown and its neighbours, so a click there answers at once"
        )
        self.ahead_check.toggled.connect(self._on_ahead_toggled)
        self.ready_label = QLabel("ready: -")
        self.ready_bar = QProgressBar()
        self.ready_bar.setRange(0, 1)
        self.ready_bar.setValue(0)
        self.ready_bar.setTextVisible(False)
        self.ready_bar.setMaximumHeight(8)
        row.addWidget(self.ahead_check)
        row.addWidget(self.ready_label)
        row.addWidget(self.ready_bar)
        form.addRow("slices", row)
        layout.addWidget(setup)

        prompts = QGroupBox("Prompts")
        box = QVBoxLayout(prompts)
        row = QHBoxLayout()
        self.click_button = QPushButton("Click")
        self.click_button.setToolTip(f"add clicks on the '{POINTS}' layer (right click: exclude)")
        self.click_button.clicked.connect(lambda: self._safely(self.activate_points))
        self.box_button = QPushButton("Draw box")
        self.box_button.setToolTip(f"draw rectangles on the '{BOXES}' layer")
        self.box_button.clicked.connect(lambda: self._safely(self.activate_boxes))
        self.include_radio, self.exclude_radio = QRadioButton("include"), QRadioButton("exclude")
        self.include_radio.setChecked(True)
        group = QButtonGroup(self)
        group.addButton(self.include_radio)
        group.addButton(self.exclude_radio)
        self.include_radio.toggled.connect(lambda on: self._safely(self.controller.set_polarity, on))
        for w in (self.click_button, self.box_button, self.include_radio, self.exclude_radio):
            row.addWidget(w)
        box.addLayout(row)
        row = QHBoxLayout()
        self.text_edit = QLineEdit()
        self.text_edit.setPlaceholderText("text prompt, e.g. liver")
        self.text_edit.returnPressed.connect(self.find_text)
        self.text_button = QPushButton("Find")
        self.text_button.clicked.connect(self.find_text)
        row.addWidget(self.text_edit)
        row.addWidget(self.text_button)
        box.addLayout(row)
        layout.addWidget(prompts)

        actions = QGroupBox("Segment")
        grid = QVBoxLayout(actions)
        self.segment_button = QPushButton("Segment slice  [Shift-S]")
        self.segment_button.setToolTip(
            "segment the prompts on this slice; on a slice of a propagated object: correct it there and "
            "re-propagate up to the next slice you annotated"
        )
        self.segment_button.clicked.connect(self.segment_slice)
        self.propagate_button = QPushButton("Propagate 3D  [Shift-D]")
        self.propagate_button.clicked.connect(self.propagate)
        self.boxes_button = QPushButton("Segment all boxes  [Shift-B]")
        self.boxes_button.clicked.connect(self.segment_all_boxes)
        sizes = QHBoxLayout()
        self.smaller_button = QPushButton("Smaller")
        self.larger_button = QPushButton("Larger")
        for button, which in ((self.smaller_button, "smaller"), (self.larger_button, "larger")):
            button.setToolTip(f"the next {which} of the masks the model offered for these clicks")
            button.setEnabled(False)
            button.clicked.connect(functools.partial(self.choose, which))
            sizes.addWidget(button)
        self.size_label = QLabel("")
        sizes.addWidget(self.size_label)
        row = QHBoxLayout()
        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("name, e.g. GTV (optional)")
        self.commit_button = QPushButton("Commit  [Shift-C]")
        self.commit_button.clicked.connect(self.commit)
        row.addWidget(self.name_edit)
        row.addWidget(self.commit_button)
        options = QHBoxLayout()
        self.slices_spin = QSpinBox()
        self.slices_spin.setRange(0, 2000)
        self.slices_spin.setSpecialValueText("all")
        self.slices_spin.setToolTip(
            "propagation: slices walked each way from the prompt (all: until it ends)"
        )
        self.slices_spin.valueChanged.connect(self._on_slices_changed)
        self.boxes_3d = QCheckBox("boxes in 3D")
        self.boxes_3d.toggled.connect(lambda on: setattr(self.controller, "boxes_in_3d", on))
        options.addWidget(QLabel("slices each way"))
        options.addWidget(self.slices_spin)
        options.addWidget(self.boxes_3d)
        for w in (self.segment_button, self.propagate_button, self.boxes_button):
            grid.addWidget(w)
        grid.addLayout(sizes)
        grid.addLayout(row)
        grid.addLayout(options)
        row = QHBoxLayout()
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        row.addWidget(self.progress)
        row.addWidget(self.cancel_button)
        grid.addLayout(row)
        self.status = QLabel("open an image to start")
        self.status.setWordWrap(True)
        grid.addWidget(self.status)
        layout.addWidget(actions)

        readout = QGroupBox("Measurements")
        box = QVBoxLayout(readout)
        self.measurements = QLabel("no objects yet")
        font = QFont("Monospace")
        font.setStyleHint(QFont.TypeWriter)
        self.measurements.setFont(font)
        self.measurements.setWordWrap(False)
        box.addWidget(self.measurements)
        layout.addWidget(readout)

        export = QGroupBox("Export committed objects")
        row = QHBoxLayout(export)
        self.export_combo = QComboBox()
        for kind, title in EXPORT_KINDS.items():
            self.export_combo.addItem(title, kind)
        self.export_button = QPushButton("Export…")
        self.export_button.clicked.connect(self._export_dialog)
        row.addWidget(self.export_combo)
        row.addWidget(self.export_button)
        layout.addWidget(export)

        keys = [f"{key:<8}{help_text}" for key, (_name, help_text) in SHORTCUTS.items()]
        keys.append(f"{'right':<8}exclude click")
        half = (len(keys) + 1) // 2
        shortcuts = QLabel("\n".join(f"{a:<27}{b}" for a, b in zip(keys[:half], keys[half:] + [""])))
        shortcuts.setFont(font)
        layout.addWidget(shortcuts)
        self.setMaximumWidth(520)
        layout.addStretch(1)
        self._action_buttons = (
            self.segment_button, self.propagate_button, self.boxes_button, self.text_button, self.export_button,
            self.commit_button,
        )  # fmt: skip

    def _bind_keys(self) -> None:
        for key, (name, _help) in SHORTCUTS.items():
            self.viewer.bind_key(key, self._key_handler(name), overwrite=True)

    def _key_handler(self, name: str):
        def handler(_viewer):
            getattr(self, name)()

        return handler

    # -- image, model, display ---------------------------------------------------------------------------------
    def _on_layers_changed(self, event=None) -> None:
        layers = self.controller.image_layers()
        current = self.image_combo.currentText()
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems([layer.name for layer in layers])
        added = getattr(event, "value", None) if event is not None else None
        if added in layers:  # a newly opened image becomes the one to segment
            self.image_combo.setCurrentText(added.name)
        elif current in [layer.name for layer in layers]:
            self.image_combo.setCurrentText(current)
        elif layers:
            self.image_combo.setCurrentIndex(len(layers) - 1)
        self.image_combo.blockSignals(False)
        if layers and (event is None or added in layers or current != self.image_combo.currentText()):
            self._on_image_chosen()
        if not layers:  # nothing left to encode ahead (also what closing the viewer does first)
            self.ahead.stop()
            self.ready_state = None
            self.ready_label.setText("ready: -")
            self.ready_bar.setValue(0)
        self._watch_own_layers()

    def _on_image_chosen(self, _index=None) -> None:
        name = self.image_combo.currentText()
        if not name or name not in self.viewer.layers:
            return

        def choose():
            self.controller.set_image_layer(self.viewer.layers[name])
            self._attach_points_callback()
            image = self.controller.image()
            source = image.metadata.get("modality_source", "guessed")
            self.modality_combo.setItemText(0, f"auto ({image.modality}, {source})")
            self._fill_windows()
            shape = " x ".join(map(str, image.shape))
            spacing = " x ".join(f"{s:g}" for s in image.spacing_zyx)
            unit = image.spacing_unit  # px: a picture without a physical pixel size
            self._say(f"{name}: {shape} voxels of {spacing} {unit}; draw a box or click, then Shift-S")
            self.ready_state = None
            self._show_ahead()
            self._update_sizes()

        self._safely(choose)

    def _fill_windows(self) -> None:
        self.window_combo.clear()
        if getattr(self.controller.image_layer, "rgb", False):
            return
        self.window_combo.addItems(list(self.controller.window_presets()))
        if DEFAULT_CT_PRESET in self.controller.window_presets():
            self.window_combo.setCurrentText(DEFAULT_CT_PRESET)

    def _apply_window(self) -> None:
        name = self.window_combo.currentText()
        if name:
            low, high = self.controller.apply_window(name)
            self._say(f"window {name}: {low:g} to {high:g}")

    def _on_model_changed(self, *_args) -> None:
        self.controller.set_model(
            self.backend_combo.currentText(), self.checkpoint_edit.text().strip() or None
        )
        self._show_ahead()  # the new model is built and encodes ahead when idle

    def _browse_checkpoint(self) -> None:
        if self.backend_combo.currentText() == "sam3":
            path = QFileDialog.getExistingDirectory(self, "SAM3 weights folder")
        else:
            path, _ = QFileDialog.getOpenFileName(
                self, "Fine-tuned checkpoint", "", "Checkpoints (*.pt *.pth *.safetensors);;All (*)"
            )
        if path:
            self.checkpoint_edit.setText(path)
            self._on_model_changed()

    def _on_modality_changed(self, text: str) -> None:
        def change():
            self.controller.set_modality(None if text.startswith("auto") else text)
            self._fill_windows()
            self._say(f"model normalisation: {self.controller.modality}")
            self._show_ahead()

        if self.controller.image_layers():
            self._safely(change)

    def _on_slices_changed(self, value: int) -> None:
        self.controller.max_slices = value or None

    # -- encoding ahead ----------------------------------------------------------------------------------------
    def _on_step(self, _event=None) -> None:
        """napari's slider moved: the slice shown is the new centre of encoding ahead."""
        if self.controller.image_layers():
            self._show_ahead()
            self._update_sizes()

    def _on_ahead_toggled(self, on: bool) -> None:
        self.ahead.enabled = on
        if on:
            self._show_ahead()
        else:
            self.ahead.stop()

    def _show_ahead(self) -> None:
        """Tell the model thread which slice of which image is on screen (during a job: once it has ended)."""
        if self.busy or not self.ahead.enabled or not self.controller.image_layers():
            return
        try:
            self.ahead.show(*self.controller.shown())
        except OncoSegError:
            return

    def _on_ready(self, ready: Ready) -> None:
        """The model thread's report after a step of encoding ahead (shown when it is about the chosen image)."""
        try:
            chosen = self.controller.open_image()
        except OncoSegError:
            return
        if ready.opened is not chosen:
            return
        self.ready_state = ready
        self.ready_label.setText(ready.text())
        self.ready_bar.setRange(0, ready.num_slices)
        self.ready_bar.setValue(ready.count)

    # -- prompts -----------------------------------------------------------------------------------------------
    def activate_points(self) -> None:
        self.controller.ensure_layers()
        layer = self.viewer.layers[POINTS]
        self.viewer.layers.selection.active = layer
        layer.mode = "add"

    def activate_boxes(self) -> None:
        self.controller.ensure_layers()
        layer = self.viewer.layers[BOXES]
        self.viewer.layers.selection.active = layer
        layer.mode = "add_rectangle"

    def toggle_polarity(self) -> None:
        self._safely(self.controller.toggle_polarity)
        radio = self.include_radio if self.controller.positive else self.exclude_radio
        radio.blockSignals(True)
        radio.setChecked(True)
        radio.blockSignals(False)
        self._say(f"new clicks {'include' if self.controller.positive else 'exclude'}")

    def clear_prompts(self) -> None:
        self._safely(lambda: self._say(self.controller.clear_prompts()))
        self._update_sizes()

    def _attach_points_callback(self) -> None:
        layer = self.viewer.layers[POINTS]
        if self._click_polarity not in layer.mouse_drag_callbacks:
            layer.mouse_drag_callbacks.append(self._click_polarity)

    def _click_polarity(self, layer, event) -> None:
        """On a mouse press in click mode: a right click adds an exclude point, a left click follows the
        include/exclude switch (napari's own handler adds the point on release, with these defaults)."""
        if layer.mode == "add":
            layer.feature_defaults = {"positive": event.button != 2 and self.controller.positive}

    # -- actions -----------------------------------------------------------------------------------------------
    def segment_slice(self) -> None:
        self._start(self.controller.segment_slice)

    def propagate(self) -> None:
        self._start(self.controller.propagate)

    def segment_all_boxes(self) -> None:
        self._start(self.controller.segment_all_boxes)

    def find_text(self) -> None:
        self._start(lambda: self.controller.segment_text(self.text_edit.text()))

    def export_to(self, path, kind: str = "nifti") -> None:
        self._start(lambda: self.controller.export(path, kind))

    def choose(self, which: str, *_args) -> None:
        """Swap the current object to the next smaller or larger mask offered for its clicks."""
        self._start(lambda: self.controller.choose(which))

    def _update_sizes(self) -> None:
        """Smaller / Larger: enabled when the model offered another size on the slice shown; which one is shown."""
        sizes = None if self.busy else self._safely(self.controller.sizes)
        k, n, smaller, larger = sizes or (0, 0, 0, 0)
        self.smaller_button.setEnabled(bool(smaller))
        self.larger_button.setEnabled(bool(larger))
        self.size_label.setText(f"size {k} of {n}" if sizes else "")

    def commit(self) -> None:
        if self.busy:
            return
        self._safely(lambda: self._say(self.controller.commit(self.name_edit.text().strip() or None)))
        self.name_edit.clear()
        self.update_measurements()
        self._update_sizes()

    def _export_dialog(self) -> None:
        kind = self.export_combo.currentData()
        path, _ = QFileDialog.getSaveFileName(self, f"Export {EXPORT_KINDS[kind]}", "", EXPORT_FILTERS[kind])
        if path:
            self.export_to(path, kind)

    # -- jobs --------------------------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self.job is not None

    def _start(self, plan) -> None:
        """Plan a job on the main thread (prompt errors show at once), run it in a worker thread."""
        if self.busy:
            self._say("busy: wait for the running job or cancel it")
            return
        try:
            job = plan()
        except OncoSegError as error:
            self._fail(str(error))
            return
        self.job, self._started, self.last_error = job, time.monotonic(), None
        for button in (*self._action_buttons, self.smaller_button, self.larger_button):
            button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setRange(0, job.total if job.total > 1 else 0)  # 0..0: busy indicator
        self.progress.setValue(0)
        self._say(f"{job.title}…")
        self._timer.start()
        try:  # a slice being encoded ahead right now that this job needs is finished, not abandoned
            self.ahead.needs(self.controller.open_image(), self.controller.current_slice())
        except OncoSegError:
            pass
        future = self._model_thread.submit(job.run)  # before any background step (requests come first)
        future.add_done_callback(self._relay.finished.emit)

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self._say(f"{self.job.title}: cancelling…")

    def _show_progress(self) -> None:
        if self.job is not None and self.job.total > 1:
            self.progress.setValue(self.job.done)

    def _on_finished(self, future) -> None:
        error = future.exception()
        if error is None:
            self._on_returned(future.result())
        else:
            self._on_errored(error)
        self._update_sizes()
        self._show_ahead()  # the slice shown now; the job may have changed the model or the result's slices

    def _end(self) -> Job:
        job, self.job = self.job, None
        self._timer.stop()
        self.progress.setRange(0, 1)
        self.progress.setValue(1 if not job.cancelled else 0)
        for button in self._action_buttons:
            button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        return job

    def _on_returned(self, result) -> None:
        job = self._end()
        try:
            message = job.finish(result)
        except OncoSegError as error:
            self._fail(str(error))
            return
        self._say(f"{message}  ({time.monotonic() - self._started:.1f} s)")
        self.update_measurements()

    def _on_errored(self, error: Exception) -> None:
        self._end()
        if isinstance(error, JobCancelled):
            self._say(str(error))
        elif isinstance(error, OncoSegError):
            self._fail(str(error))
        else:
            log.error("Onco-Seg job failed", exc_info=error)
            self._fail(f"{type(error).__name__}: {error}")

    # -- readout -----------------------------------------------------------------------------------------------
    def _watch_own_layers(self) -> None:
        for name in (CURRENT, OBJECTS):
            if name in self.viewer.layers:
                layer = self.viewer.layers[name]
                for emitter in (layer.events.data, layer.events.paint):
                    emitter.connect(self._schedule_measurements)

    def _schedule_measurements(self, _event=None) -> None:
        self._measure_timer.start()

    def update_measurements(self) -> None:
        try:
            self.measurements.setText(self.controller.measurement_text())
        except OncoSegError as error:
            self.measurements.setText(str(error))

    # -- messages ----------------------------------------------------------------------------------------------
    def _say(self, text: str) -> None:
        self.status.setStyleSheet("")
        self.status.setText(text)

    def _fail(self, text: str) -> None:
        self.last_error = text
        self.status.setStyleSheet("color: #ff6060")
        self.status.setText(text)

    def _safely(self, action, *args):
        try:
            return action(*args)
        except OncoSegError as error:
            self._fail(str(error))
            return None
