"""The service's pieces without HTTP: mask encodings, windows, click-coordinate mapping for MONAI Label
clients, the memory budget, the model queue, the binding rules."""

from __future__ import annotations

import io
import threading

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image
from stand_in_models import BoxBackend

from oncoseg.errors import OncoSegError
from oncoseg.image import MedicalImage
from oncoseg.io import load_image
from oncoseg.logs import hide_uids
from oncoseg.models.base import Backend, ImageEmbedding, MaskPrediction
from oncoseg.predictor import Predictor
from oncoseg.render import mask_rgba, png_bytes, simplify_polyline, window_slice
from oncoseg.service.cache import NotFoundError, OpenImage, SessionStore, TooLargeError
from oncoseg.service.core import contours, rle_decode, rle_encode
from oncoseg.service.monailabel import file_to_array_index
from oncoseg.service.security import check_bind
from oncoseg.service.worker import BusyError, ModelWorker
from oncoseg.session import Session


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


def _session(store: SessionStore, name: str, slices: int = 4) -> OpenImage:
    predictor = Predictor(TinyBackend(), cache_slices=1000)
    image = MedicalImage.from_array(np.zeros((slices, 64, 64), np.float32))  # 64 KiB, + 64 KiB normalised
    return store.add(OpenImage(name, Session(image, predictor)))


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


# ---------------------------------------------------------------------- 3D jobs and corrections (stand-in model)
class GatedBoxBackend(BoxBackend):
    """BoxBackend whose decoder waits at ``gate`` once it has answered ``free`` prompts (a job in the middle)."""

    def __init__(self, free: int = 10**9):
        super().__init__()
        self.free, self.gate, self.waiting = free, threading.Event(), threading.Event()

    def decode(self, embedding, prompts, mask_input=None):
        if self.decodes >= self.free:
            self.waiting.set()
            assert self.gate.wait(60)
        return super().decode(embedding, prompts, mask_input)


def _volume_client(tmp_path, backend, slices: int = 12, **config):
    from fastapi.testclient import TestClient

    from oncoseg.service.app import create_app
    from oncoseg.service.core import Engine, ServiceConfig

    engine = Engine(ServiceConfig(workdir=str(tmp_path / "work"), warmup=False, **config), backend=backend)
    client = TestClient(create_app(engine.config, engine), base_url="http://127.0.0.1:8765")
    volume = np.random.default_rng(3).integers(50, 200, (slices, 64, 64)).astype(np.int16)  # nowhere blank
    image = nibabel.Nifti1Image(volume.T, np.diag([0.8, 0.7, 2.5, 1.0]))
    return client, engine, image


def _wait(client, url: str, states=("done", "cancelled", "failed"), timeout: float = 60) -> dict:
    import time

    deadline = time.monotonic() + timeout
    while (job := client.get(url).json())["state"] not in states:
        assert time.monotonic() < deadline, job
        time.sleep(0.02)
    return job


def _png_mask(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))[..., 3] > 0


def _result(client, image_id: str, slices: int) -> np.ndarray:
    return np.stack(
        [_png_mask(client.get(f"/api/images/{image_id}/result/{z}").content) for z in range(slices)]
    )


def test_a_correction_on_another_slice_rewalks_up_to_the_next_anchor_only(tmp_path):
    client, engine, image = _volume_client(tmp_path, BoxBackend())
    with client:
        image_id = client.post("/api/images/upload", files={"file": ("ct.nii", image.to_bytes())}).json()[
            "image_id"
        ]
        url = f"/api/images/{image_id}/jobs"
        started = client.post(url, json={"z": 5, "box": [10, 10, 20, 20]})
        assert started.status_code == 202 and started.json()["state"] in ("queued", "running", "done")
        job = _wait(client, f"{url}/{started.json()['job_id']}")
        assert job["state"] == "done" and job["done"] == job["total"] == 12  # the box walks to both ends
        assert job["result"]["slices"] == [0, 11] and set(job["result"]["slice_scores"]) == {
            str(z) for z in range(12)
        }
        before = _result(client, image_id, 12)
        assert before[5, 10:21, 10:21].all() and before[5].sum() == 121
        # an include click far right of the object on slice 8: that slice grows to take it in, the walk
        # starts again from it both ways, down to slice 6 (slice 5 is the propagation's anchor: kept)
        refine = client.post(url, json={"action": "refine", "z": 8, "points": [{"x": 50, "y": 15}]})
        assert refine.status_code == 202, refine.text
        job = _wait(client, f"{url}/{refine.json()['job_id']}")
        assert job["state"] == "done", job
        assert job["done"] == job["total"] == 6  # slice 8, then 9-11 and 7-6
        result = job["result"]
        assert result["refined"] and result["anchors"] == [5, 8] and result["refined_slice"] == 8
        obj = engine.store.get(image_id).obj
        assert result["quality"] == obj.quality.to_dict() and set(result["quality"]) >= {
            "estimate",
            "review",
            "reasons",
        }  # the 3D answer carries the object's quality estimate and review flag
        assert set(result["slice_scores"]) == {str(z) for z in range(12)}
        after = _result(client, image_id, 12)
        np.testing.assert_array_equal(after[:6], before[:6])  # up to and including the anchor: unchanged
        assert after[8, 15, 50] and not before[8, 15, 50]
        for z in (6, 7, 9, 10, 11):  # the re-walked neighbours follow the corrected slice
            assert after[z].sum() > before[z].sum(), z
        measured = client.get(f"/api/images/{image_id}/measurements").json()
        assert measured["anchors"] == [5, 8] and measured["slices"] == [0, 11]
        assert measured["slice_scores"] == result["slice_scores"]  # the measurements keep per-slice scores
        # the web page sends every click on the slice: the ones already applied are not added twice
        again = client.post(
            url,
            json={"action": "refine", "z": 8, "points": [{"x": 50, "y": 15}, {"x": 52, "y": 40}]},
        )
        job = _wait(client, f"{url}/{again.json()['job_id']}")
        assert job["state"] == "done"
        obj = engine.store.get(image_id).obj
        assert [(p.x, p.y) for p in obj.anchors[8].points] == [(50, 15), (52, 40)]
        same = client.post(
            url, json={"action": "refine", "z": 8, "points": [{"x": 50, "y": 15}, {"x": 52, "y": 40}]}
        )
        failed = _wait(client, f"{url}/{same.json()['job_id']}")
        assert failed["state"] == "failed" and failed["error"]["code"] == "bad_prompt"
        assert "already applied" in failed["error"]["detail"]


def test_progress_shows_finished_slices_and_cancel_keeps_the_previous_result(tmp_path):
    backend = GatedBoxBackend()
    client, engine, image = _volume_client(tmp_path, backend, slices=16)
    with client:
        image_id = client.post("/api/images/upload", files={"file": ("ct.nii", image.to_bytes())}).json()[
            "image_id"
        ]
        url = f"/api/images/{image_id}/jobs"
        first = _wait(
            client, f"{url}/{client.post(url, json={'z': 8, 'box': [20, 20, 30, 30]}).json()['job_id']}"
        )
        assert first["state"] == "done"
        before = _result(client, image_id, 16)
        obj = engine.store.get(image_id).obj
        scores_before = dict(obj.slice_scores)

        backend.free = backend.decodes + 5  # the next job stops in the middle: 5 slices answered
        body = {"action": "refine", "z": 3, "box": [5, 5, 25, 25]}
        job_id = client.post(url, json=body).json()["job_id"]
        assert backend.waiting.wait(30)
        running = client.get(f"{url}/{job_id}").json()  # polling answers while the model is busy
        # slice 3, then up 4-7 (8 is the anchor), then down 2-0: 8 at most; the 6th (slice 2) waits
        assert running["state"] == "running" and running["done"] == 5 and running["total"] == 8
        assert running["slices"] == [3, 4, 5, 6]  # 7 is kept only once the walk goes on from it
        assert set(running["slice_scores"]) == {"3", "4", "5", "6"}
        # the job's picture of a finished slice is the new mask; of a slice not yet walked, the old one
        shown = _png_mask(client.get(f"{url}/{job_id}/result/3").content)
        assert shown[5:26, 5:26].all() and shown.sum() == 21 * 21
        np.testing.assert_array_equal(_png_mask(client.get(f"{url}/{job_id}/result/1").content), before[1])
        np.testing.assert_array_equal(_png_mask(client.get(f"{url}/{job_id}/result/15").content), before[15])
        assert client.post(url, json={"z": 2, "box": [5, 5, 25, 25]}).status_code == 409  # one job at a time
        assert client.delete(f"{url}/{job_id}").status_code == 200
        backend.gate.set()
        cancelled = _wait(client, f"{url}/{job_id}")
        assert cancelled["state"] == "cancelled" and cancelled["result"] is None
        np.testing.assert_array_equal(_result(client, image_id, 16), before)
        assert engine.store.get(image_id).obj is obj and obj.slice_scores == scores_before
        assert sorted(obj.anchors) == [8]
        assert client.get(f"{url}/{job_id}/result/3").status_code == 409

        # a queued job cancelled before the model reaches it never runs
        release = threading.Event()
        engine.worker.submit(release.wait)
        queued = client.post(url, json={"z": 8, "box": [1, 1, 40, 40]}).json()
        assert queued["state"] == "queued"
        assert client.delete(f"{url}/{queued['job_id']}").json()["state"] == "cancelled"
        decodes = backend.decodes
        release.set()
        engine.worker.call(lambda: None)
        assert backend.decodes == decodes
        np.testing.assert_array_equal(_result(client, image_id, 16), before)


def test_download_gives_a_nifti_on_the_image_grid(tmp_path):
    client, engine, image = _volume_client(tmp_path, BoxBackend())
    source = tmp_path / "ct.nii.gz"
    ras = nibabel.Nifti1Image(
        np.asarray(image.dataobj),
        np.array([[-0.8, 0, 0, 30], [0, 0.7, 0, -20], [0, 0, 2.5, 7], [0, 0, 0, 1]]),
    )
    nibabel.save(ras, source)
    with client:
        image_id = client.post(
            "/api/images/upload", files={"file": ("ct.nii.gz", source.read_bytes())}
        ).json()["image_id"]
        assert client.get(f"/api/images/{image_id}/download").status_code == 409  # no result yet
        url = f"/api/images/{image_id}/jobs"
        job = _wait(
            client,
            f"{url}/{client.post(url, json={'z': 4, 'box': [10, 12, 20, 30], 'max_slices': 2}).json()['job_id']}",
        )
        assert job["state"] == "done" and job["result"]["slices"] == [2, 6]
        answer = client.get(f"/api/images/{image_id}/download")
        assert answer.status_code == 200 and "oncoseg-result.nii.gz" in answer.headers["content-disposition"]
        path = tmp_path / "label.nii.gz"
        path.write_bytes(answer.content)
        label = nibabel.load(path)
        np.testing.assert_allclose(label.affine, ras.affine)
        assert label.shape == ras.shape
        back = load_image(path)
        original = load_image(source)
        assert back.spacing == pytest.approx(original.spacing) and back.origin == pytest.approx(
            original.origin
        )
        np.testing.assert_array_equal(back.array > 0, engine.store.get(image_id).result)
        assert set(np.unique(back.array)) == {0, 1}
        assert not list((tmp_path / "work" / "downloads").rglob("*.nii.gz"))  # the temporary file is gone
        seg = client.get(f"/api/images/{image_id}/download", params={"format": "seg"})
        assert seg.status_code == 409 and "DICOM" in seg.json()["detail"]  # not a DICOM series


class ExcludingBoxBackend(BoxBackend):
    """BoxBackend that finds nothing when a prompt has as many exclude clicks as include clicks."""

    def decode(self, embedding, prompts, mask_input=None):
        found = super().decode(embedding, prompts, mask_input)
        for i, prompt in enumerate(prompts):
            excluded = sum(not p.positive for p in prompt.points)
            if excluded and excluded >= len(prompt.points) - excluded:
                found.masks[i] = False
        return found


def test_clicks_refine_a_slice_result_through_the_core_even_after_an_emptying_click(tmp_path):
    """The web page sends every click on the slice each time: a prompt that repeats the clicks behind the
    result and adds one is `Session.refine` (the grown-box rule); one that emptied the result is answered as
    empty, and the next click still refines the region from before it. A blank slice is refused and keeps the
    result."""
    client, engine, image = _volume_client(tmp_path, ExcludingBoxBackend(), slices=4)
    volume = np.asarray(image.dataobj).copy()
    volume[:, :, 3] = 7  # slice 3 is blank
    with client:
        data = nibabel.Nifti1Image(volume, image.affine).to_bytes()
        image_id = client.post("/api/images/upload", files={"file": ("ct.nii", data)}).json()["image_id"]
        url = f"/api/images/{image_id}/segment"
        first = {"x": 30, "y": 30}
        exclude = {"x": 31, "y": 31, "positive": False}
        again = {"x": 50, "y": 29}
        answer = client.post(url, json={"z": 1, "points": [first]}).json()
        assert not answer["refined"] and not answer["empty"]
        assert rle_decode(answer["mask"]).sum() == 49  # the stand-in's 7x7 square round the click
        assert 0.0 <= answer["quality"]["estimate"] <= 1.0 and isinstance(answer["quality"]["review"], bool)
        emptied = client.post(url, json={"z": 1, "points": [first, exclude]})
        assert emptied.status_code == 200 and emptied.json()["refined"] and emptied.json()["empty"]
        assert emptied.json()["quality"] is None  # nothing shown, nothing to rate
        assert client.get(f"/api/images/{image_id}/measurements").status_code == 409  # the result is empty
        opened = engine.store.get(image_id)
        assert [(p.x, p.y) for p in opened.obj.anchors[1].points] == [(30, 30)]  # the object is kept
        refined = client.post(url, json={"z": 1, "points": [first, exclude, again]}).json()
        assert refined["refined"] and not refined["empty"]
        mask = rle_decode(refined["mask"])
        # the 7x7 square's extent (27..33) grown to take in (50, 29), plus 4 px: the stand-in paints that box
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        assert (cols[0], cols[-1], rows[0], rows[-1]) == (23, 54, 23, 37)
        assert [(p.x, p.y) for p in opened.obj.anchors[1].points] == [(30, 30), (31, 31), (50, 29)]
        assert len(opened.core.objects) == 1 and opened.core.objects[0] is opened.obj
        other = client.post(url, json={"z": 1, "points": [again]}).json()  # not a continuation: afresh
        assert not other["refined"] and rle_decode(other["mask"]).sum() == 49
        assert opened.obj.label == 1 and len(opened.core.objects) == 1  # the old object left the core session
        blank = client.post(url, json={"z": 3, "box": [4, 4, 30, 30]})
        assert blank.status_code == 422 and "blank" in blank.json()["detail"]
        kept = client.get(f"/api/images/{image_id}/measurements").json()
        assert kept["z"] == 1 and kept["measurements"]["voxel_count"] == 49


def test_a_request_abandons_background_model_work_at_its_next_step():
    """Background work under `ModelWorker.yielding` stops at the next call into the model code when a request
    arrives, or when `abandon` is called (an image closed): the request does not wait for it to end; after
    `finish_background` (a request needs that very encode) it runs to its end."""
    import time

    import torch

    from oncoseg.models import fast_encoder

    worker = ModelWorker()
    started, finished = threading.Event(), []

    def background() -> None:
        with worker.yielding():
            started.set()
            x, deadline = torch.zeros(4), time.monotonic() + 120
            while time.monotonic() < deadline:  # a long encode's many steps
                fast_encoder.gelu(x)
            finished.append(True)

    worker.background(background)
    assert started.wait(30)
    assert worker.call(lambda: "answered") == "answered"
    assert not finished and worker.preempted == 1
    started.clear()
    worker.background(background)
    assert started.wait(30)
    worker.abandon()
    deadline = time.monotonic() + 60
    while worker.preempted < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not finished and worker.call(lambda: sum(range(10))) == 45

    def short() -> None:  # the slice a request needs, being encoded: it finishes (the request would redo it)
        with worker.yielding():
            started.set()
            for _ in range(2000):
                fast_encoder.gelu(torch.zeros(4))
            finished.append(True)

    started.clear()
    worker.background(short)
    assert started.wait(30)
    worker.finish_background()
    assert worker.call(lambda: list(finished)) == [True] and worker.preempted == 2
    worker.stop()


def _ready(client, image_id: str, timeout: float = 60) -> list[int]:
    """The slices ready once encoding ahead has finished."""
    import time

    deadline = time.monotonic() + timeout
    while (answer := client.get(f"/api/images/{image_id}/ready").json())["encoding"]:
        assert time.monotonic() < deadline, answer
        time.sleep(0.02)
    return answer["ready"]


def test_showing_a_slice_encodes_it_and_its_neighbours_within_the_budget(tmp_path):
    """Showing slice z encodes z, then z+1, z-1, ... up to --encode-ahead each way, as far as the budget
    allows; showing another slice replaces the least wanted embeddings, never the result's slice nor another
    image's; closing the image ends it."""
    client, engine, image = _volume_client(tmp_path, TinyBackend(), slices=12, encode_ahead=3)
    with client:
        data = nibabel.Nifti1Image(np.asarray(image.dataobj), image.affine).to_bytes()
        image_id = client.post("/api/images/upload", files={"file": ("ct.nii", data)}).json()["image_id"]
        fixed = engine.store.get(image_id).nbytes  # pixels and their normalised copy
        engine.store.budget_bytes = fixed + int(4.5 * 2**20)  # room for 4 embeddings of 1 MiB
        assert client.get(f"/api/images/{image_id}/ready").json() == {
            "image_id": image_id, "num_slices": 12, "viewed": None, "ready": [], "encoding": False,
        }  # fmt: skip
        assert client.get(f"/api/images/{image_id}/slices/5").status_code == 200
        assert _ready(client, image_id) == [4, 5, 6, 7]  # 5, then 6, 4, 7: the budget's 4
        assert engine.store.current_bytes <= engine.store.budget_bytes
        answer = client.post(f"/api/images/{image_id}/segment", json={"z": 7, "points": [{"x": 30, "y": 30}]})
        assert answer.json()["embedding_cached"]
        client.get(f"/api/images/{image_id}/slices/2")
        # wanted: 2, 3, 1, 4, 0, 5; slice 7 holds the result: 6, 5, 4 make room, 7 stays
        assert _ready(client, image_id) == [1, 2, 3, 7]
        assert engine.store.current_bytes <= engine.store.budget_bytes
        engine.store.budget_bytes += fixed  # a second image's pixels, no room for its embeddings
        other_id = client.post("/api/images/upload", files={"file": ("b.nii", data)}).json()["image_id"]
        assert _ready(client, image_id) == [1, 2, 3, 7]
        client.get(f"/api/images/{other_id}/slices/0")
        assert _ready(client, other_id) == [0]  # the slice on screen is made room for, its neighbours are not
        assert _ready(client, image_id) == [2, 3, 7]  # it made room for the shown slice: 1 went, 2 and 7 stay
        assert client.delete(f"/api/images/{image_id}").status_code == 200
        assert client.get(f"/api/images/{image_id}/ready").status_code == 404


class SizesBackend(BoxBackend):
    """The stand-in, whose answer to clicks alone also offers a 3x3 and a 15x15 square round the first click
    (as LiteMedSAM's other candidate sizes)."""

    def decode(self, embedding, prompts, mask_input=None):
        found = super().decode(embedding, prompts, mask_input)
        if len(prompts) == 1 and prompts[0].box is None and prompts[0].points:
            h, w = embedding.original_size
            x, y = int(prompts[0].points[0].x), int(prompts[0].points[0].y)
            squares = []
            for r, score in ((1, 0.5), (7, 0.6)):
                square = np.zeros((h, w), bool)
                square[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1] = True
                squares.append((square, score))
            found.alternatives = tuple(squares)
        return found


def test_click_answers_count_other_sizes_and_choose_swaps_them_in(tmp_path):
    client, _, image = _volume_client(tmp_path, SizesBackend(), slices=4)
    with client:
        data = nibabel.Nifti1Image(np.asarray(image.dataobj), image.affine).to_bytes()
        image_id = client.post("/api/images/upload", files={"file": ("ct.nii", data)}).json()["image_id"]
        choose = f"/api/images/{image_id}/choose"

        def refused(body: dict, status: int, words: str) -> None:
            answer = client.post(choose, json=body)
            assert answer.status_code == status, answer.text
            detail = answer.json()["detail"]
            assert words in detail and "\n" not in detail

        refused({"which": "larger", "z": 1}, 409, "no click result")  # nothing segmented yet
        answer = client.post(f"/api/images/{image_id}/segment", json={"z": 1, "points": [{"x": 30, "y": 30}]})
        assert answer.json()["alternatives"] == {"smaller": 1, "larger": 1}
        assert rle_decode(answer.json()["mask"]).sum() == 49
        smaller = client.post(choose, json={"which": "smaller", "z": 1}).json()
        assert rle_decode(smaller["mask"]).sum() == 9 and smaller["measurements"]["voxel_count"] == 9
        assert smaller["alternatives"] == {"smaller": 0, "larger": 2} and smaller["quality"] is not None
        assert smaller["z"] == 1 and smaller["overlay_png"] and smaller["score"] == 0.5
        refused({"which": "smaller", "z": 1}, 409, "no smaller answer")
        refused({"which": "bigger", "z": 1}, 422, "which")
        refused({"which": "larger", "z": 9}, 422, "outside the volume")
        refused({"which": "larger", "z": 2}, 409, "no larger answer")  # no clicks on slice 2
        for area in (49, 225):  # the slice the result was made on is the default
            larger = client.post(choose, json={"which": "larger"}).json()
            assert rle_decode(larger["mask"]).sum() == area
        assert larger["alternatives"] == {"smaller": 2, "larger": 0}
        assert client.get(f"/api/images/{image_id}/measurements").json()["measurements"]["voxel_count"] == 225
        box = client.post(f"/api/images/{image_id}/segment", json={"z": 1, "box": [10, 10, 20, 20]}).json()
        assert box["alternatives"] == {"smaller": 0, "larger": 0}
        refused({"which": "larger", "z": 1}, 409, "no larger answer")
