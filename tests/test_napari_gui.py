"""The napari plugin in a real viewer on a real X server (Xvfb): open the real example CT DICOM series through the
plugin's reader, draw a box, segment (keyboard shortcut), propagate over a few slices in the worker thread while
the viewer keeps answering, cancel a propagation, commit, export an RTSTRUCT that dciodvfy accepts, and save a
screenshot to test-artifacts/napari.png."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from dicom_series import dciodvfy_errors, dice, require_example
from orthanc import EXAMPLE_CT_DICOM, stop_process, uploadable_series

pytestmark = pytest.mark.gui

REPO = Path(__file__).resolve().parents[1]
SCREENSHOT = REPO / "test-artifacts" / "napari.png"
SEG_NIFTI = EXAMPLE_CT_DICOM.parent / "example_seg_dicom.nii.gz"
LIVER = 5  # TotalSegmentator's label of the liver in the example's segmentation
SLICE = 10


@pytest.fixture(scope="session")
def xvfb():
    """A private X server (Xvfb picks a free display number itself and reports it), stopped by PID."""
    binary = shutil.which("Xvfb")
    if binary is None:
        pytest.fail("Xvfb is not installed: run scripts/system-deps.sh (Debian package xvfb)")
    # setpriv (util-linux) makes the kernel end Xvfb if this process dies before the teardown (e.g. a crash).
    guard = [shutil.which("setpriv"), "--pdeathsig", "TERM"] if shutil.which("setpriv") else []
    read_end, write_end = os.pipe()
    process = subprocess.Popen(
        [*guard, binary, "-displayfd", str(write_end), "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
        pass_fds=(write_end,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_end)
    try:
        with os.fdopen(read_end, encoding="utf-8") as pipe:
            number = pipe.readline().strip()  # written once the server accepts connections
        if not number.isdigit():
            pytest.fail(f"Xvfb did not start (exit code {process.poll()})")
        # opencv-python (pulled in by rt-utils, a test-only reader) points Qt at its own bundled plugins when any
        # library imports cv2 in this process; PyQt5 then cannot load its xcb plugin and aborts
        qt_paths = ("QT_QPA_PLATFORM_PLUGIN_PATH", "QT_QPA_FONTDIR", "QT_PLUGIN_PATH")
        saved = {key: os.environ.get(key) for key in ("DISPLAY", "QT_QPA_PLATFORM", *qt_paths)}
        for key in qt_paths:
            os.environ.pop(key, None)
        os.environ.update(DISPLAY=f":{number}", QT_QPA_PLATFORM="xcb")
        yield f":{number}"
    finally:
        close_qt_application()  # else Qt dies with "XIO: fatal IO error" (exit code 1) once Xvfb is gone
        stop_process(process)
        for key, value in locals().get("saved", {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def close_qt_application() -> None:
    """Destroy the QApplication (and with it its X connection), if napari made one."""
    import sys

    if "qtpy" not in sys.modules:
        return
    from qtpy import sip
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    if app is not None:
        app.closeAllWindows()
        app.processEvents()
        sip.delete(app)


def wait_until_idle(widget, timeout: float = 180.0, on_tick=None) -> None:
    """Run the Qt event loop until the widget's job has ended."""
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + timeout
    while widget.busy:
        QApplication.processEvents()
        if on_tick:
            on_tick()
        if time.monotonic() > end:
            widget.cancel()
            pytest.fail(f"job did not end within {timeout} s")
        time.sleep(0.01)
    QApplication.processEvents()


def test_real_viewer_box_segment_propagate_commit_export_rtstruct(xvfb, tmp_path):
    from qtpy.QtCore import QPoint, Qt, QTimer
    from qtpy.QtTest import QTest
    from qtpy.QtWidgets import QApplication

    from oncoseg.dicom import read_rtstruct
    from oncoseg.io import load_image
    from oncoseg.napari_plugin import launch
    from oncoseg.napari_plugin.controller import BOXES, CURRENT, OBJECTS

    require_example()  # ../shared/data (skipped with the reason shown when absent, like the other real-data tests)
    series, _study, _series_uid = uploadable_series(dest=tmp_path / "ct")  # the example has empty UIDs
    widget = launch(show=True, run=False)
    viewer = widget.viewer
    viewer.window._qt_window.resize(1280, 900)
    try:
        layers = viewer.open(str(series), plugin="oncoseg")  # the npe2 manifest's reader
        image_layer = layers[0]
        assert image_layer.data.shape == (20, 512, 512)
        assert tuple(image_layer.scale) == pytest.approx(load_image(series).spacing_zyx)
        assert image_layer.metadata["oncoseg"]["dicom_folder"] == str(series)
        assert widget.image_combo.currentText() == image_layer.name
        assert widget.modality_combo.itemText(0) == "auto (ct, dicom)"
        assert tuple(image_layer.contrast_limits) == (-160.0, 240.0)  # CT soft tissue window

        truth = load_image(SEG_NIFTI).array == LIVER
        ys, xs = np.nonzero(truth[SLICE])
        viewer.dims.set_current_step(0, SLICE)
        widget.activate_boxes()
        assert viewer.layers.selection.active.name == BOXES
        widget.controller.add_box(ys.min(), xs.min(), ys.max(), xs.max(), z=SLICE)

        canvas = viewer.window._qt_viewer.canvas.native
        canvas.setFocus()
        QTest.keyClick(canvas, Qt.Key_S, Qt.ShiftModifier)  # Shift-S: segment slice
        assert widget.busy, "Shift-S did not start the segmentation"
        wait_until_idle(widget)
        assert widget.last_error is None, widget.last_error
        current = np.asarray(viewer.layers[CURRENT].data)
        slice_dice = dice(current[SLICE] > 0, truth[SLICE])
        print(f"slice {SLICE} liver Dice {slice_dice:.3f}")
        assert slice_dice > 0.85
        assert "current" in widget.measurements.text()

        # Propagation in the worker thread: the Qt event loop keeps running (a 50 ms timer keeps firing).
        widget.slices_spin.setValue(1)
        ticks = []
        timer = QTimer()
        timer.timeout.connect(lambda: ticks.append(time.monotonic()))
        timer.start(50)
        started = time.monotonic()
        widget.propagate()
        seen_progress = []
        wait_until_idle(widget, on_tick=lambda: seen_progress.append(widget.progress.value()))
        timer.stop()
        elapsed = time.monotonic() - started
        assert widget.last_error is None, widget.last_error
        gaps = np.diff([started, *ticks])
        print(f"propagation {elapsed:.1f} s, {len(ticks)} timer ticks, longest gap {gaps.max():.2f} s")
        assert gaps.max() < 1.5, "the event loop was blocked during propagation"
        assert max(seen_progress) >= 1, "the progress bar never moved"
        current = np.asarray(viewer.layers[CURRENT].data) > 0
        slices = np.nonzero(current.any(axis=(1, 2)))[0]
        assert slices.tolist() == [SLICE - 1, SLICE, SLICE + 1]
        volume_dice = dice(current[slices], truth[slices])
        print(f"liver Dice over slices {slices.min()}-{slices.max()}: {volume_dice:.3f}")
        assert volume_dice > 0.85

        widget.name_edit.setText("Liver")
        QTest.keyClick(canvas, Qt.Key_C, Qt.ShiftModifier)  # Shift-C: commit
        QApplication.processEvents()
        objects = np.asarray(viewer.layers[OBJECTS].data)
        assert np.array_equal(objects == 1, current) and objects.max() == 1
        assert not np.asarray(viewer.layers[CURRENT].data).any() and len(viewer.layers[BOXES].data) == 0
        readout = widget.measurements.text()
        expected = widget.controller.measurements()[0]
        assert "Liver" in readout and f"{expected.volume_ml:.2f} mL" in readout
        assert expected.volume_ml == pytest.approx(
            current.sum() * np.prod(image_layer.scale) / 1000, rel=1e-6
        )

        # Cancel: a whole-volume propagation from a new box stops at the next slice and leaves no result.
        widget.slices_spin.setValue(0)
        widget.controller.add_box(ys.min(), xs.min(), ys.max(), xs.max(), z=SLICE)
        widget.propagate()
        wait_until_idle(
            widget, timeout=60, on_tick=lambda: widget.job and widget.job.done >= 1 and widget.cancel()
        )
        assert "cancelled" in widget.status.text()
        assert not np.asarray(viewer.layers[CURRENT].data).any()
        widget.clear_prompts()

        # Clicks on the canvas in click mode: left = include, right = exclude (then left clicks include again).
        widget.activate_points()
        centre = canvas.rect().center()
        for button, dx in ((Qt.LeftButton, 0), (Qt.RightButton, 20), (Qt.LeftButton, 40)):
            QTest.mouseClick(canvas, button, Qt.NoModifier, centre + QPoint(dx, 0))
            QApplication.processEvents()
        assert [p.positive for p in widget.controller.points(SLICE)] == [True, False, True]
        widget.clear_prompts()

        rtstruct = tmp_path / "liver_rt.dcm"
        widget.export_to(rtstruct, "rtstruct")
        wait_until_idle(widget)
        assert widget.last_error is None, widget.last_error
        errors, warnings = dciodvfy_errors(rtstruct)
        print("dciodvfy warnings:", *warnings, sep="\n  ")
        assert errors == []
        back = read_rtstruct(rtstruct, series)
        assert list(back) == ["Liver"]
        assert dice(back["Liver"], current) > 0.97

        viewer.dims.set_current_step(0, SLICE)
        viewer.layers.selection.active = image_layer
        viewer.reset_view()
        SCREENSHOT.parent.mkdir(exist_ok=True)
        picture = viewer.screenshot(str(SCREENSHOT), canvas_only=False, flash=False)
        assert SCREENSHOT.stat().st_size > 10_000
        assert picture.shape[0] >= 500 and picture.shape[1] >= 800
        assert picture[..., :3].std() > 20  # not a blank window
    finally:
        viewer.close()


def test_panel_from_the_plugins_menu_segments_a_2d_sample(xvfb):
    """The npe2 widget contribution (Plugins > Onco-Seg) on a colour 2D sample opened from File > Open Sample."""
    import napari
    from qtpy.QtCore import QThreadPool

    from oncoseg.napari_plugin.controller import CURRENT
    from oncoseg.napari_plugin.widget import OncoSegWidget
    from oncoseg.samples import list_samples, sample_path

    # Qt's shared pool retires idle threads at once now: jobs on it would each get a new thread (and torch a new
    # OpenMP pool); the plugin's model work (jobs and encoding ahead) must all run on its one model thread.
    shared_pool = QThreadPool.globalInstance()
    expiry = shared_pool.expiryTimeout()
    shared_pool.setExpiryTimeout(0)
    viewer = napari.Viewer(show=False)
    try:
        _dock, widget = viewer.window.add_plugin_dock_widget("oncoseg", "Onco-Seg")
        assert isinstance(widget, OncoSegWidget)
        job_threads = []
        predictor = widget.controller.predictor

        def recording_predictor(*args, **kwargs):
            job_threads.append(threading.get_native_id())
            return predictor(*args, **kwargs)

        widget.controller.predictor = recording_predictor
        viewer.open_sample("oncoseg", "polyp")
        assert widget.image_combo.currentText() == "polyp"
        assert widget.modality_combo.itemText(0) == "auto (endoscopy, argument)"
        assert widget.window_combo.count() == 0  # colour images have no intensity window
        x0, y0, x1, y1 = list_samples()["polyp"]["prompt"]["box"]
        widget.controller.add_box(y0, x0, y1, x1)
        widget.segment_slice()
        wait_until_idle(widget)
        assert widget.last_error is None, widget.last_error
        from oncoseg.io import load_image

        truth = load_image(sample_path("polyp_mask.png")).array > 0
        mask = np.asarray(viewer.layers[CURRENT].data) > 0
        print(f"polyp Dice {dice(mask, truth):.3f}; readout: {widget.measurements.text()}")
        assert dice(mask, truth) > 0.8 and "px²" in widget.measurements.text()  # a picture: pixels
        widget.segment_slice()  # while this job runs, another is refused
        widget.propagate()
        assert "busy" in widget.status.text()
        wait_until_idle(widget)
        widget.propagate()  # on a 2D image: a clear message, no job
        assert not widget.busy and "needs a volume" in widget.last_error
        # the two jobs and the steps encoding the picture ahead (it needs one embedding: they are over at once)
        assert len(job_threads) >= 2 and len(set(job_threads)) == 1, job_threads
        wait_for(
            lambda: widget.ready_label.text() == "ready: 1/1 slice", timeout=30, what="the picture ready"
        )
        assert job_threads[0] != threading.get_native_id()
    finally:
        viewer.close()
        shared_pool.setExpiryTimeout(expiry)


HIPPOCAMPUS = "msd-task04-hippocampus/{}/hippocampus_001.nii.gz"
CROP = slice(5, 16)  # 11 slices; the label's largest slice (13 of the full volume) is 8 of the crop


def wait_for(condition, timeout: float = 120.0, what: str = "condition") -> None:
    """Run the Qt event loop until ``condition()`` holds."""
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + timeout
    while not condition():
        QApplication.processEvents()
        if time.monotonic() > end:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(0.02)
    QApplication.processEvents()


def test_encoding_ahead_readies_slices_a_click_meanwhile_is_answered_and_smaller_larger_swap_sizes(
    xvfb, shared_data
):
    """A cropped real MRI volume (MSD hippocampus case 001, 11 slices): with no click, the slice shown (napari
    opens it at the middle) and its neighbours (2 each way here) become ready; moving the slider recentres it; a
    click queued at once there, while the model thread is encoding ahead, is answered with the same mask as a
    model that never encoded ahead; Smaller / Larger swap the candidate sizes offered for the click, and back."""
    import napari
    import torch

    from oncoseg.io import load_image
    from oncoseg.napari_plugin.controller import CURRENT
    from oncoseg.napari_plugin.widget import OncoSegWidget
    from oncoseg.predictor import Predictor
    from oncoseg.prompts import Point, Prompt
    from oncoseg.session import Session

    torch.set_num_threads(1)
    volume = load_image(shared_data / HIPPOCAMPUS.format("imagesTr")).array[CROP]
    labels = load_image(shared_data / HIPPOCAMPUS.format("labelsTr")).array[CROP]
    z = int(np.argmax((labels > 0).sum(axis=(1, 2))))
    assert z == 8
    truth = labels == 1  # the click: in the middle of label 1 (hippocampus proper) on that slice
    ys, xs = np.nonzero(truth[z])
    y, x = float(np.median(ys)), float(np.median(xs))
    viewer = napari.Viewer(show=False)
    widget = OncoSegWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Onco-Seg")
    widget.ahead.radius = 2
    ready = lambda: widget.ready_state.count if widget.ready_state else 0
    try:
        viewer.add_image(volume, name="hippocampus")
        assert widget.controller.current_slice() == 5
        wait_for(lambda: ready() == 5 and not widget.ready_state.encoding, what="5 slices encoded ahead")
        assert widget.ready_state.slices == (3, 4, 5, 6, 7)
        assert widget.ready_label.text() == "ready: 5/11 slices" and widget.ready_bar.value() == 5
        assert widget.job is None and widget.last_error is None  # no job ran: all of it was background work

        # The slider moves to the click's slice, which becomes the centre; the click is queued at once, while
        # the model thread encodes ahead around it.
        viewer.dims.set_current_step(0, z)
        widget.controller.add_point((z, y, x))
        widget.segment_slice()
        assert widget.busy
        wait_until_idle(widget)
        assert widget.last_error is None, widget.last_error
        shown = np.asarray(viewer.layers[CURRENT].data) > 0
        wait_for(lambda: ready() == 8 and not widget.ready_state.encoding, what="3 more slices encoded ahead")
        assert (
            widget.ready_state.slices == tuple(range(3, 11))
            and widget.ready_label.text() == "ready: 8/11 slices"
        )
        print(f"encoded ahead {widget.ahead.encoded}, abandoned for a job {widget._model_thread.preempted}")

        reference = Predictor()  # a model that never encoded ahead
        alone = Session(widget.controller.image(), reference, modality=widget.controller.modality)
        expected = alone.segment(Prompt(points=(Point(x, y, True, z),)))
        assert np.array_equal(shown, expected.mask), "the click's answer differs from the model's alone"
        print(f"click: {shown.sum()} px, Dice vs label {dice(shown[z], truth[z]):.3f}")

        # Smaller / Larger: the other sizes the model offered for the click, and back.
        areas = sorted([int(expected.mask.sum())] + [int(m.sum()) for m, _ in expected.alternatives[z]])
        k = areas.index(int(shown.sum())) + 1
        assert 1 < k < len(areas), areas  # this click was offered a smaller and a larger answer
        assert widget.size_label.text() == f"size {k} of {len(areas)}"
        assert widget.smaller_button.isEnabled() and widget.larger_button.isEnabled()
        widget.smaller_button.click()
        wait_until_idle(widget)
        assert widget.last_error is None, widget.last_error
        smaller = np.asarray(viewer.layers[CURRENT].data) > 0
        assert smaller.sum() == areas[k - 2] and not np.array_equal(smaller, shown)
        assert widget.size_label.text() == f"size {k - 1} of {len(areas)}"
        widget.larger_button.click()
        wait_until_idle(widget)
        back = np.asarray(viewer.layers[CURRENT].data) > 0
        assert np.array_equal(back, shown) and widget.size_label.text() == f"size {k} of {len(areas)}"
        while widget.larger_button.isEnabled():  # up to the largest: then Larger is disabled
            widget.larger_button.click()
            wait_until_idle(widget)
        largest = np.asarray(viewer.layers[CURRENT].data) > 0
        assert largest.sum() == areas[-1] and widget.size_label.text() == f"size {len(areas)} of {len(areas)}"
        assert widget.smaller_button.isEnabled()
        widget.clear_prompts()
        assert not widget.smaller_button.isEnabled() and widget.size_label.text() == ""
    finally:
        viewer.close()
    from qtpy.QtCore import QEvent
    from qtpy.QtWidgets import QApplication

    model_thread = widget._model_thread._thread
    QApplication.sendPostedEvents(None, QEvent.DeferredDelete)  # what napari's event loop does after a close
    wait_for(lambda: not model_thread.is_alive(), timeout=30, what="the model thread ending with the viewer")
