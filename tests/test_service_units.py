"""The service's pieces without HTTP: mask encodings, windows, click-coordinate mapping for MONAI Label
clients, the memory budget, the model queue, the binding rules."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from oncoseg.errors import OncoSegError
from oncoseg.image import MedicalImage
from oncoseg.io import load_image
from oncoseg.logs import hide_uids
from oncoseg.models.base import Backend, ImageEmbedding, MaskPrediction
from oncoseg.predictor import Predictor
from oncoseg.render import mask_rgba, png_bytes, simplify_polyline, window_slice
from oncoseg.service.cache import NotFoundError, Session, SessionStore, TooLargeError
from oncoseg.service.core import contours, rle_decode, rle_encode
from oncoseg.service.monailabel import file_to_array_index
from oncoseg.service.security import check_bind
from oncoseg.service.worker import BusyError, ModelWorker


def test_rle_round_trip():
    rng = np.random.default_rng(0)
    masks = [rng.random((37, 53)) > 0.5, np.zeros((8, 9), bool), np.ones((8, 9), bool)]
    masks.append(np.pad(np.ones((3, 3), bool), 2))
    for mask in masks:
        rle = rle_encode(mask)
        assert sum(rle["counts"]) == mask.size and rle["size"] == list(mask.shape)
        np.testing.assert_array_equal(rle_decode(rle), mask)
    assert rle_encode(np.ones((2, 2), bool))["counts"] == [0, 4]  # always starts with a 0-run


def test_outline_simplification_keeps_the_points_skimage_keeps():
    """The level-at-a-time Douglas-Peucker gives skimage's approximate_polygon's points exactly, on the outlines
    of smooth random blobs (closed loops and chains cut by the border) at several tolerances."""
    from scipy import ndimage
    from skimage.measure import approximate_polygon, find_contours

    rng = np.random.default_rng(7)
    compared = 0
    for sigma in (2, 3, 4, 6):
        field = ndimage.zoom(ndimage.gaussian_filter(rng.standard_normal((48, 48)), sigma), 6, order=1)
        for line in find_contours(np.pad(field > 0, 1).astype(np.float32), 0.5) + find_contours(field, 0.0):
            for tolerance in (0.5, 1.0, 3.0):
                np.testing.assert_array_equal(
                    simplify_polyline(line, tolerance), approximate_polygon(line, tolerance)
                )
                compared += 1
    assert compared > 50
    two = np.array([[0.0, 0.0], [1.0, 1.0]])
    assert simplify_polyline(two, 0.5) is two


def test_contours_trace_the_mask():
    from skimage.draw import polygon2mask

    yy, xx = np.mgrid[:60, :80]
    mask = (xx - 40) ** 2 / 400 + (yy - 30) ** 2 / 150 < 1
    (polygon,) = contours(mask)
    xs, ys = np.array(polygon).T
    assert abs(xs.min() - (np.flatnonzero(mask.any(axis=0))[0] - 0.5)) <= 0.5
    # pixel centres inside the polygon are the mask's pixels, up to the half-pixel outline
    filled = polygon2mask(mask.shape, np.column_stack([ys, xs]))
    assert (filled & mask).sum() / (filled | mask).sum() > 0.9
    assert contours(np.zeros((4, 4), bool)) == []


def test_overlay_png_is_transparent_outside_the_mask():
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    rgba = np.asarray(Image.open(io.BytesIO(png_bytes(mask_rgba(mask)))).convert("RGBA"))
    assert (rgba[..., 3] > 0).sum() == mask.sum() and rgba[0, 0, 3] == 0
    assert rgba[10, 10, 3] < rgba[5, 5, 3] == 255  # tinted inside, opaque outline


def test_window_presets():
    hu = np.array([[-1000, -160, 40, 240, 2000]], dtype=np.int16)
    assert window_slice(hu, 1, "soft-tissue").tolist() == [[0, 0, 127, 255, 255]]
    assert window_slice(hu, 1, "40,400").tolist() == window_slice(hu, 1, "soft-tissue").tolist()
    assert window_slice(hu, 1, "auto").shape == (1, 5)
    with pytest.raises(OncoSegError, match="unknown window"):
        window_slice(hu, 1, "40,-3")


@pytest.mark.parametrize("orientation", ["RAS", "LPS", "LPI", "PLS", "SRA"])
def test_file_voxel_indices_map_to_the_lps_array(tmp_path, orientation):
    """MONAI Label clients click in the file's own voxel grid; the array Onco-Seg works on is LPS."""
    from oncoseg.samples import __file__ as samples

    source = sitk.ReadImage(str(__import__("pathlib").Path(samples).parent / "ct_abdomen.nii.gz"))
    path = tmp_path / f"{orientation}.nii.gz"
    sitk.WriteImage(sitk.DICOMOrient(source, orientation), str(path))
    raw = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))  # [k, j, i] as stored
    image = load_image(path)
    assert image.source_orientation == orientation
    rng = np.random.default_rng(1)
    for _ in range(50):
        k, j, i = (int(rng.integers(n)) for n in raw.shape)
        z, y, x = file_to_array_index([i, j, k], image)
        assert image.array[z, y, x] == raw[k, j, i]


class TinyBackend(Backend):
    """A stand-in model with exact sizes: every embedding is 1 MiB of float32."""

    name = "tiny"

    def encode(self, image):
        return ImageEmbedding(
            np.zeros(2**18, np.float32), tuple(image.shape[:2]), tuple(image.shape[:2]), "tiny"
        )

    def decode(self, embedding, prompts, mask_input=None):
        h, w = embedding.original_size
        return MaskPrediction(np.ones((len(prompts), h, w), bool), np.ones(len(prompts), np.float32))


def _session(store: SessionStore, name: str, slices: int = 4) -> Session:
    predictor = Predictor(TinyBackend(), cache_slices=1000)
    image = MedicalImage.from_array(np.zeros((slices, 64, 64), np.float32))  # 64 KiB, + 64 KiB normalised
    predictor.set_image(image)
    return store.add(Session(name, image, predictor))


def test_memory_budget_trims_idle_embeddings_then_closes_idle_images():
    mib = 2**20
    store = SessionStore(budget_bytes=int(3.5 * mib))
    a = _session(store, "a")
    for z in range(3):
        a.predictor.embedding(z)
    store.enforce("a")
    assert store.current_bytes <= 3.5 * mib and a.predictor.cache_nbytes == 3 * mib
    b = _session(store, "b")
    b.predictor.embedding(0)
    store.enforce("b")  # a is idle: its embeddings go first
    assert a.predictor.cache_nbytes <= 2 * mib and b.predictor.cache_nbytes == mib
    for z in range(4):
        b.predictor.embedding(z)
        store.enforce("b")
        assert store.current_bytes <= 3.5 * mib
    assert b.predictor.is_cached(3) and a.predictor.cache_nbytes == 0
    with pytest.raises(NotFoundError):  # a was closed to make room
        for z in range(4):
            _session(store, f"c{z}").predictor.embedding(0)
            store.enforce(f"c{z}")
        store.get("a")
    assert store.evicted_sessions >= 1 and store.high_water_bytes <= 3.5 * mib


def test_an_image_larger_than_the_budget_is_refused():
    store = SessionStore(budget_bytes=1000)
    with pytest.raises(TooLargeError, match="memory budget"):
        _session(store, "big")


def test_worker_refuses_beyond_its_queue_and_runs_background_jobs_last():
    worker = ModelWorker(max_queue=2)
    release, order = threading.Event(), []
    running = worker.submit(release.wait)
    while worker.pending:  # the blocking job has started
        pass
    worker.background(order.append, "background")
    queued = [worker.submit(order.append, i) for i in range(2)]
    with pytest.raises(BusyError, match="busy"):
        worker.submit(order.append, 99)
    assert worker.rejected == 1
    release.set()
    running.result(timeout=10)
    for future in queued:
        future.result(timeout=10)
    worker.call(lambda: None)
    assert order == [0, 1, "background"]
    assert worker.call(lambda: threading.current_thread().name) == "oncoseg-model"
    worker.stop()


MAIN_THREAD_PROBE = """
import os, torch
torch.set_num_threads(2)
from oncoseg.service.core import Engine, ServiceConfig
engine = Engine(ServiceConfig())
engine.worker.call(engine.warm_up)
threads = lambda: len(os.listdir("/proc/self/task"))
before = threads()
torch.ones(10**7).add_(1)  # the main thread's first parallel torch work starts an OpenMP worker for it
print(before, threads())
engine.close()
"""


def test_the_service_runs_torch_on_its_model_thread_only():
    """Loading the model and answering prompts must leave the main thread without an OpenMP pool of its own
    (two pools on 2 cores made the encoder 1.2-1.9x slower, see oncoseg.service.worker): so the main thread's
    first parallel operation, after the engine is built and warmed up, still has to start a worker thread."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", MAIN_THREAD_PROBE],
        check=False,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    before, after = map(int, done.stdout.split()[-2:])
    assert after > before


def test_binding_rules():
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        check_bind(host, None)
    for host in ("0.0.0.0", "192.168.1.10", "::"):
        with pytest.raises(OncoSegError, match="without a token"):
            check_bind(host, None)
        check_bind(host, "a-long-enough-token-123")
    with pytest.raises(OncoSegError, match="too short"):
        check_bind("0.0.0.0", "short")


def test_uids_are_hidden_in_log_text():
    text = "GET /infer/x?image=1.2.826.0.1.3680043.8.498.1234 from 127.0.0.1"
    hidden = hide_uids(text)
    assert "1.2.826.0.1.3680043.8.498.1234" not in hidden and "127.0.0.1" in hidden and "<uid:" in hidden


def test_a_click_after_an_emptying_exclude_click_still_refines_the_region():
    from oncoseg.prompts import Point, Prompt
    from oncoseg.service.core import bounding_box, refining_prompt

    image = MedicalImage.from_array(np.zeros((3, 64, 64), np.float32))
    session = Session("s", image, Predictor(TinyBackend()))
    first, exclude, again = Point(30, 30, z=1), Point(31, 31, positive=False, z=1), Point(33, 29, z=1)
    result = np.zeros(image.shape, bool)
    result[1, 20:40, 25:45] = True
    session.result, session.result_info = result, {"kind": "slice", "z": 1}
    session.last_clicks, session.last_region = (first,), (1, *bounding_box(result[1]))
    assert session.last_region == (1, 25.0, 20.0, 44.0, 39.0)
    session.result = np.zeros(image.shape, bool)  # the exclude click emptied the result
    session.last_clicks = (first, exclude)
    refined = refining_prompt(session, Prompt(points=(first, exclude, again)), 1)
    assert refined is not None and refined.points == (first, exclude, again)
    box = refined.box
    assert box.x0 < 25 and box.y0 < 20 and box.x1 > 44 and box.y1 > 39 and box.z == 1
    assert refining_prompt(session, Prompt(points=(again,)), 1) is None  # not a continuation
    session.last_region = (2, 25.0, 20.0, 44.0, 39.0)  # a region on another slice does not count
    assert refining_prompt(session, Prompt(points=(first, exclude, again)), 1) is None
