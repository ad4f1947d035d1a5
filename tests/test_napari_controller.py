"""The napari plugin without a display: reader, npe2 manifest and sample data, and the Qt-free controller on
napari's `ViewerModel` with the real model (bundled CT sample), DICOM SEG/RTSTRUCT export over a DICOM series,
cancellation, errors, and the `oncoseg napari` command's failure paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dicom_series import dciodvfy_errors, dice, write_series

from oncoseg.errors import OncoSegError
from oncoseg.io import load_image
from oncoseg.measure import measure
from oncoseg.napari_plugin._reader import get_reader, read_image
from oncoseg.napari_plugin.controller import BOXES, CURRENT, OBJECTS, POINTS, Controller, JobCancelled
from oncoseg.samples import list_samples, sample_path

try:
    from napari.components import ViewerModel
except ImportError:
    pytest.fail("napari is not installed: pip install -e '.[dev]' (or the [napari] extra)", pytrace=False)

CT = list_samples()["ct_abdomen"]
Z = CT["prompt"]["z"]
X0, Y0, X1, Y1 = CT["prompt"]["box"]


@pytest.fixture(scope="module")
def predictor():
    from oncoseg.predictor import Predictor

    return Predictor()


@pytest.fixture
def ct_viewer(predictor):
    """A ViewerModel with the bundled CT sample opened through the plugin, a controller sharing one model."""
    from npe2 import PluginManager

    PluginManager.instance().discover()  # the manifest's samples (also when this test runs alone)
    viewer = ViewerModel()
    viewer.open_sample("oncoseg", "ct_abdomen")
    controller = Controller(viewer)
    controller._predictor, controller._predictor_key = predictor, ("litemedsam", None)
    controller.ensure_layers()
    viewer.dims.set_current_step(0, Z)
    return viewer, controller


def test_reader_keeps_spacing_and_geometry_and_declines_other_files(tmp_path):
    path = sample_path("ct_abdomen")
    assert get_reader(str(path)) is read_image
    assert get_reader(str(sample_path("polyp"))) is None  # photos: napari's own readers
    assert get_reader(str(tmp_path)) is None  # an empty folder
    [(data, kwargs, kind)] = read_image(str(path))
    image = load_image(path)
    assert kind == "image" and data.shape == image.shape
    assert kwargs["scale"] == pytest.approx(image.spacing_zyx)
    info = kwargs["metadata"]["oncoseg"]
    assert info["spacing"] == image.spacing and info["origin"] == image.origin
    assert info["modality"] == "ct" and info["dicom_folder"] is None
    from oncoseg.preprocess import CT_WINDOWS

    assert kwargs["contrast_limits"] == CT_WINDOWS["soft_tissue"] == (-160.0, 240.0)


def test_manifest_reader_and_samples_through_napari(tmp_path):
    from npe2 import PluginManager, PluginManifest

    manifest = PluginManifest.from_file(Path(__file__).parents[1] / "src/oncoseg/napari_plugin/napari.yaml")
    assert manifest.name == "oncoseg"
    installed = PluginManager.instance()
    installed.discover()
    assert installed.get_manifest("oncoseg").name == "oncoseg", "entry point napari.manifest not installed"
    viewer = ViewerModel()
    for key in ("ct_abdomen", "hippocampus", "polyp", "breast_ultrasound"):
        viewer.open_sample("oncoseg", key)
    assert [layer.name for layer in viewer.layers] == [
        "ct_abdomen",
        "hippocampus",
        "polyp",
        "breast_ultrasound",
    ]
    assert viewer.layers["polyp"].rgb
    # A DICOM series folder through the manifest's reader: scale in mm, source folder kept for DICOM export.
    frames = (np.arange(4 * 24 * 20, dtype=np.uint16).reshape(4, 24, 20) % 700) + 300
    folder = write_series(tmp_path / "series", frames, (1, 0, 0), (0, 1, 0))
    [layer] = viewer.open(str(folder), plugin="oncoseg")
    assert layer.data.shape == (4, 24, 20)
    assert tuple(layer.scale) == pytest.approx(
        (2.5, 1.5, 1.25)
    )  # slice step, then PixelSpacing rows, columns
    assert layer.metadata["oncoseg"]["dicom_folder"] == str(folder)
    assert layer.metadata["oncoseg"]["modality"] == "ct"


def test_box_segment_propagate_commit_measure_export(ct_viewer, tmp_path):
    viewer, controller = ct_viewer
    truth = load_image(sample_path(CT["mask"])).array > 0
    assert controller.current_slice() == Z
    controller.add_box(Y0, X0, Y1, X1, z=Z)
    assert controller.boxes(Z) == controller.boxes(every_slice=True) and controller.boxes(Z - 1) == []

    message = controller.run(controller.segment_slice())
    current = np.asarray(viewer.layers[CURRENT].data) > 0
    slice_dice = dice(current[Z], truth[Z])
    print(f"segment slice: {message}; Dice {slice_dice:.3f}")
    assert slice_dice > 0.85 and not current[np.arange(current.shape[0]) != Z].any()

    assert ", quality 0." in message or ", REVIEW (quality 0." in message  # the result's quality estimate
    controller.max_slices = 1
    message = controller.run(controller.propagate())
    assert message.startswith(f"propagated over slices {Z - 1}-{Z + 1}, ") and "quality 0." in message
    current = np.asarray(viewer.layers[CURRENT].data) > 0
    slices = np.nonzero(current.any(axis=(1, 2)))[0].tolist()
    assert slices == [Z - 1, Z, Z + 1]
    assert dice(current[slices], truth[slices]) > 0.8

    [row] = controller.measurements()
    expected = measure(current, controller.image().spacing)
    assert row.name == "current" and row.volume_ml == pytest.approx(expected.volume_ml)
    assert controller.commit("Liver") == "committed as object 1"
    assert len(viewer.layers[BOXES].data) == 0 and not np.asarray(viewer.layers[CURRENT].data).any()
    [row] = controller.measurements()
    assert (row.label, row.name) == (1, "Liver") and row.long_mm == pytest.approx(expected.recist_long_mm)
    assert f"{expected.volume_ml:7.2f} mL" in controller.measurement_text()

    out = tmp_path / "liver.nii.gz"
    controller.run(controller.export(out))
    assert np.array_equal(load_image(out).array, np.asarray(viewer.layers[OBJECTS].data))
    assert load_image(out).spacing == pytest.approx(controller.image().spacing)
    with pytest.raises(OncoSegError, match="open a DICOM series folder"):
        controller.export(tmp_path / "liver.dcm", "rtstruct")
    assert not (tmp_path / "liver.dcm").exists()


def test_clicks_all_boxes_and_names(ct_viewer):
    viewer, controller = ct_viewer
    truth = load_image(sample_path(CT["mask"])).array > 0
    cy, cx = (round(float(v)) for v in np.argwhere(truth[Z]).mean(axis=0))
    controller.add_point((Z, cy, cx))
    controller.set_polarity(False)
    controller.add_point((Z, 5, 5))
    assert [p.positive for p in controller.points(Z)] == [True, False]
    assert controller.toggle_polarity() == "new clicks include"
    controller.run(controller.segment_slice())
    assert np.asarray(viewer.layers[CURRENT].data)[Z].any()
    controller.clear_prompts()
    assert len(viewer.layers[POINTS].data) == 0 and not np.asarray(viewer.layers[CURRENT].data).any()

    controller.add_box(Y0, X0, Y1, X1, z=Z)
    controller.add_box(Y0, X0, Y1, X1, z=Z - 1)
    message = controller.run(controller.segment_all_boxes())
    objects = np.asarray(viewer.layers[OBJECTS].data)
    assert message == "2 object(s) from 2 box(es)"
    assert objects[Z].max() == 1 and set(np.unique(objects[Z - 1])) == {0, 2}
    assert controller.names() == {1: "Box_1", 2: "Box_2"}
    assert len(viewer.layers[BOXES].data) == 0


def test_cancel_stops_propagation_and_changes_nothing(ct_viewer):
    viewer, controller = ct_viewer
    controller.add_box(Y0, X0, Y1, X1, z=Z)
    job = controller.propagate()
    job.cancel()
    with pytest.raises(JobCancelled, match="cancelled"):
        controller.run(job)
    assert job.done == 0 and not np.asarray(viewer.layers[CURRENT].data).any()


def test_a_click_on_another_slice_corrects_the_3d_object_up_to_its_anchor(ct_viewer, monkeypatch):
    """Segment slice on a propagated object is `Session.refine`: that slice is re-segmented from the click and the
    volume re-walked from it, up to the anchored slice one way and to the end the other; the anchored slice and
    everything beyond it stay as they were. A cancelled correction changes nothing."""
    import oncoseg.session

    viewer, controller = ct_viewer
    truth = load_image(sample_path(CT["mask"])).array > 0
    controller.add_box(Y0, X0, Y1, X1, z=Z)
    controller.max_slices = 3
    controller.run(controller.propagate())
    [obj] = controller.current
    before = np.asarray(viewer.layers[CURRENT].data) > 0
    assert obj.volume and list(obj.anchors) == [Z] and np.array_equal(obj.mask, before)

    walks = []
    real_walk = oncoseg.session.walk

    def counting_walk(predictor, start, z0, step, *args, **kwargs):
        walks.append((z0, step, args[2] if len(args) > 2 else None))
        return real_walk(predictor, start, z0, step, *args, **kwargs)

    monkeypatch.setattr(oncoseg.session, "walk", counting_walk)
    z1 = Z + 2
    viewer.dims.set_current_step(0, z1)
    cy, cx = (round(float(v)) for v in np.argwhere(truth[z1] & before[z1]).mean(axis=0))
    controller.add_point((z1, cy, cx))

    job = controller.segment_slice()
    job.cancel()
    with pytest.raises(JobCancelled, match="cancelled"):
        controller.run(job)
    assert np.array_equal(np.asarray(viewer.layers[CURRENT].data) > 0, before)
    assert np.array_equal(obj.mask, before) and list(obj.anchors) == [Z]

    walks.clear()
    message = controller.run(controller.segment_slice())
    print(f"correction: {message}")
    after = np.asarray(viewer.layers[CURRENT].data) > 0
    assert controller.current == [obj] and sorted(obj.anchors) == [Z, z1]
    assert walks == [(z1, 1, None), (z1, -1, Z)]  # up from the click; down to the anchor, not past it
    assert np.array_equal(after[: Z + 1], before[: Z + 1])  # the anchored slice and below it: kept
    assert dice(after[z1], truth[z1]) > 0.8 and "re-propagated" in message
    assert controller.commit("Liver") == "committed as object 1"
    assert np.array_equal(np.asarray(viewer.layers[OBJECTS].data) == 1, after)


def test_no_loop_of_its_own_and_one_session_per_image(ct_viewer, monkeypatch):
    """Propagation (one box, or every box in 3D) runs through the Session's one propagation routine; committed
    objects are the session's objects, measured by it; each image layer has its own session, one model for all."""
    import oncoseg.napari_plugin.controller as module
    import oncoseg.session

    assert not hasattr(module, "propagate") and not hasattr(module, "walk")
    viewer, controller = ct_viewer
    calls = []
    real_propagate = oncoseg.session.propagate

    def counting_propagate(predictor, prompt, *args, **kwargs):
        calls.append(prompt)
        return real_propagate(predictor, prompt, *args, **kwargs)

    monkeypatch.setattr(oncoseg.session, "propagate", counting_propagate)
    controller.max_slices = 1
    controller.add_box(Y0, X0, Y1, X1, z=Z)
    controller.run(controller.propagate())
    assert [prompt.z for prompt in calls] == [Z]
    controller.commit("Liver")
    controller.boxes_in_3d = True
    controller.add_box(Y0, X0, Y1, X1, z=Z + 4)
    assert controller.run(controller.segment_all_boxes()) == "1 object(s) from 1 box(es) in 3D"
    assert [prompt.z for prompt in calls] == [Z, Z + 4]

    session = controller.session()
    assert [(obj.label, obj.name) for obj in session.objects] == [(1, "Liver"), (2, "Box")]
    objects = np.asarray(viewer.layers[OBJECTS].data)
    assert np.array_equal(session.labels(), objects)
    rows = controller.measurements()
    assert [row.volume_ml for row in rows] == [session.measure(obj).volume_ml for obj in session.objects]
    assert session.predictor is controller._predictor

    viewer.open_sample("oncoseg", "hippocampus")
    controller.set_image_layer(viewer.layers["hippocampus"])
    other = controller.session()
    assert other is not session and other.objects == [] and controller.names() == {}
    assert viewer.layers[OBJECTS].data.shape == other.image.shape and not viewer.layers[OBJECTS].data.any()
    assert controller.predictor(other) is controller._predictor and controller._predictor.image is other.image
    controller.set_image_layer(viewer.layers["ct_abdomen"])
    assert controller.session() is session and controller.names() == {1: "Liver", 2: "Box"}
    assert np.array_equal(np.asarray(viewer.layers[OBJECTS].data), objects)
    assert controller.predictor(session).image is session.image


def test_prompt_errors_are_one_clear_line(ct_viewer):
    _viewer, controller = ct_viewer
    with pytest.raises(OncoSegError, match="no prompt on slice"):
        controller.segment_slice()
    with pytest.raises(OncoSegError, match="nothing to propagate"):
        controller.propagate()
    with pytest.raises(OncoSegError, match="nothing to commit"):
        controller.commit()
    with pytest.raises(OncoSegError, match="nothing to export"):
        controller.export("out.nii.gz")
    controller.add_box(Y0, X0, Y1, X1, z=Z)
    controller.add_box(0, 0, 10, 10, z=Z)
    with pytest.raises(OncoSegError, match="follows one object"):
        controller.propagate()
    with pytest.raises(OncoSegError, match="unknown modality"):
        controller.set_modality("xyz")


def test_text_prompt_goes_through_the_api(ct_viewer):
    """The text field calls `oncoseg.api.segment(text=...)`: instances become objects, or the API's one-line
    error (no text prompts, nothing found, text weights missing) is what the user sees, and nothing changes."""
    viewer, controller = ct_viewer
    with pytest.raises(OncoSegError, match="type what to find"):
        controller.segment_text("  ")
    job = controller.segment_text("liver")
    if not controller.predictor().backend.supports_text:
        with pytest.raises(OncoSegError, match="has no text prompts"):
            controller.run(job)
        assert not np.asarray(viewer.layers[OBJECTS].data).any()
        return
    try:
        message = controller.run(job)
    except OncoSegError as error:
        print(f"text prompt: {error}")
        assert "\n" not in str(error).strip()
        assert not np.asarray(viewer.layers[OBJECTS].data).any()
        return
    objects = np.asarray(viewer.layers[OBJECTS].data)
    assert message.endswith("instance(s) of 'liver'") and objects[Z].any()
    assert not objects[np.arange(objects.shape[0]) != Z].any()


def test_modality_override_and_window_presets(ct_viewer):
    _viewer, controller = ct_viewer
    layer = controller.image_layer
    assert controller.modality == "ct" and "lung" in controller.window_presets()
    assert controller.apply_window("lung") == (-1350.0, 150.0)
    assert tuple(layer.contrast_limits) == (-1350.0, 150.0)
    controller.set_modality("MR")
    assert controller.modality == "mri" and controller.detected_modality == "ct"
    low, high = controller.apply_window("auto (1-99 %)")
    data = np.asarray(layer.data)
    assert low == pytest.approx(np.percentile(data, 1)) and high == pytest.approx(np.percentile(data, 99))
    controller.set_modality("auto")
    assert controller.modality == "ct"


def test_plain_napari_layer_uses_its_scale():
    from oncoseg.napari_plugin.controller import image_from_layer

    viewer = ViewerModel()
    layer = viewer.add_image(
        np.full((3, 8, 9), -1000, np.int16) + np.arange(9, dtype=np.int16) * 200, scale=(4, 2, 1)
    )
    image = image_from_layer(layer)
    assert image.spacing == (1.0, 2.0, 4.0) and image.modality == "ct"
    with pytest.raises(OncoSegError, match="4 dimensions"):
        image_from_layer(viewer.add_image(np.zeros((2, 3, 8, 9))))


def test_dicom_seg_and_rtstruct_export_over_the_source_series(tmp_path):
    """Objects painted by hand (no model) exported over a DICOM series: both files validate and read back."""
    from oncoseg.dicom import read_rtstruct, read_seg

    frames = np.full((5, 40, 36), 1000, np.uint16)
    folder = write_series(tmp_path / "series", frames, (1, 0, 0), (0, 1, 0))
    viewer = ViewerModel()
    viewer.open(str(folder), plugin="oncoseg")
    controller = Controller(viewer)
    controller.ensure_layers()
    mask = np.zeros((5, 40, 36), np.uint8)
    mask[1:4, 10:25, 8:20] = 1
    viewer.layers[CURRENT].data = mask
    controller.commit("GTV")
    controller.run(controller.export(tmp_path / "seg.dcm", "dicom_seg"))
    controller.run(controller.export(tmp_path / "rt.dcm", "rtstruct"))
    for path in (tmp_path / "seg.dcm", tmp_path / "rt.dcm"):
        errors, _warnings = dciodvfy_errors(path)
        assert errors == [], path.name
    assert dice(read_seg(tmp_path / "seg.dcm", folder)["GTV"], mask > 0) == 1.0
    assert dice(read_rtstruct(tmp_path / "rt.dcm", folder)["GTV"], mask > 0) > 0.99


def test_cli_help_teaches_and_bad_input_is_one_line(tmp_path, capsys):
    """`oncoseg napari`: examples in --help; a bad image or sample fails with one line before napari starts."""
    from oncoseg.cli import main

    with pytest.raises(SystemExit):
        main(["napari", "--help"])
    assert "oncoseg napari ct_dicom_folder/" in capsys.readouterr().out
    for args, expected in (
        ([str(tmp_path / "missing.nii.gz")], "no such file or folder"),
        (["--sample", "nope"], "unknown sample 'nope'"),
    ):
        assert main(["napari", *args]) == 2
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1


def test_encoding_ahead_yields_to_a_job_which_answers_as_the_model_alone(ct_viewer, predictor):
    """Qt-free, on the widget's arrangement (one `ModelWorker` thread; jobs are its requests, encoding ahead its
    background work): a click job queued while a slice is being encoded ahead abandons that encode at its next
    model step, answers with the mask the model gives with nothing encoded ahead, and the abandoned slice is
    encoded afterwards with the rest."""
    import time

    from oncoseg.napari_plugin.ahead import EncodeAhead
    from oncoseg.prompts import Point, Prompt
    from oncoseg.service.worker import ModelWorker
    from oncoseg.session import Session

    viewer, controller = ct_viewer
    truth = load_image(sample_path(CT["mask"])).array > 0
    cy, cx = (float(v) for v in np.argwhere(truth[Z]).mean(axis=0))
    alone = Session(controller.image(), predictor, modality=controller.modality)
    expected = alone.segment(Prompt(points=(Point(cx, cy, True, Z),))).mask
    predictor.trim_cache(0)  # encoding ahead starts cold
    with pytest.raises(OncoSegError, match="no smaller answer"):
        controller.choose("smaller")  # no object yet

    worker = ModelWorker()
    reports = []
    ahead = EncodeAhead(worker, lambda opened: controller.predictor(opened.session), reports.append, radius=1)
    opened = controller.open_image()
    try:
        ahead.show(opened, Z - 3)  # wants Z-3, Z-2, Z-4
        end = time.monotonic() + 60
        while ahead._encoding is None:  # an encode (about 1 s) is in flight
            assert time.monotonic() < end, "encoding ahead did not start"
            time.sleep(0.001)
        controller.add_point((Z, cy, cx))
        job = controller.segment_slice()
        ahead.needs(opened, Z)  # another slice than the one in flight: that encode is abandoned
        message = job.finish(worker.submit(job.run).result(timeout=120))
        assert worker.preempted == 1, message
        assert np.array_equal(np.asarray(viewer.layers[CURRENT].data) > 0, expected)
        while not reports or reports[-1].encoding:
            assert time.monotonic() < end + 120, "encoding ahead did not finish"
            time.sleep(0.05)
        assert reports[-1].slices == (Z - 4, Z - 3, Z - 2, Z) and ahead.encoded == 3  # Z: the job's own
        assert reports[-1].text() == f"ready: 4/{controller.image().num_slices} slices"
    finally:
        ahead.stop()
        worker.stop()


def test_smaller_and_larger_on_a_slice_and_on_a_propagated_object(ct_viewer):
    """Smaller / Larger (`Controller.choose` over `Session.choose`): on a click's slice result the mask becomes the
    next smaller offered size and back; on a propagated object the start slice takes the other size and the
    neighbours are walked again from it."""
    viewer, controller = ct_viewer
    truth = load_image(sample_path(CT["mask"])).array > 0
    cy, cx = (float(v) for v in np.argwhere(truth[Z]).mean(axis=0))
    controller.add_point((Z, cy, cx))
    controller.run(controller.segment_slice())
    first = np.asarray(viewer.layers[CURRENT].data) > 0
    k, n, smaller, larger = controller.sizes()
    assert n == smaller + larger + 1 >= 2 and k == smaller + 1
    which, back = ("smaller", "larger") if smaller else ("larger", "smaller")
    message = controller.run(controller.choose(which))
    other = np.asarray(viewer.layers[CURRENT].data) > 0
    assert (other.sum() < first.sum()) == (which == "smaller") and other.sum() != first.sum()
    assert message.startswith(f"size {k - 1 if which == 'smaller' else k + 1} of {n}")
    controller.run(controller.choose(back))
    assert np.array_equal(np.asarray(viewer.layers[CURRENT].data) > 0, first) and controller.sizes()[0] == k
    controller.clear_prompts()
    assert controller.sizes() is None
    with pytest.raises(OncoSegError, match=f"no {which} answer"):
        controller.choose(which)

    controller.max_slices = 1
    controller.add_point((Z, cy, cx))
    controller.run(controller.propagate())
    walked = np.asarray(viewer.layers[CURRENT].data) > 0
    assert np.flatnonzero(walked.any(axis=(1, 2))).tolist() == [Z - 1, Z, Z + 1]
    assert controller.sizes() is not None
    controller.run(controller.choose(which))
    chosen = np.asarray(viewer.layers[CURRENT].data) > 0
    assert (chosen[Z].sum() < walked[Z].sum()) == (which == "smaller")
    assert not np.array_equal(chosen[Z - 1], walked[Z - 1]) or not np.array_equal(
        chosen[Z + 1], walked[Z + 1]
    )
