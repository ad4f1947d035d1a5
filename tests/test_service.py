"""`oncoseg serve` as a real uvicorn process, with a real Orthanc behind it (REST API, security, errors,
store back to the PACS, backpressure, logs)."""

from __future__ import annotations

import base64
import io
import subprocess
import threading

import httpx
import numpy as np
import pydicom
import pytest
from oncoseg_server import ONCOSEG, OncoSegServer
from orthanc import OrthancServer, uploadable_series
from PIL import Image

from oncoseg.dicom import read_rtstruct, read_seg
from oncoseg.io import load_image
from oncoseg.service.core import rle_decode

pytestmark = pytest.mark.service

TOKEN = "test-token-0123456789abcdef"
Z = 10  # slice of the example CT used for clicks; the liver is label 5 of TotalSegmentator's labels


@pytest.fixture(scope="module")
def liver(shared_data):
    seg = load_image(shared_data / "totalsegmentator-example/example_seg_dicom.nii.gz")
    return seg.array == 5


@pytest.fixture(scope="module")
def pacs(tmp_path_factory, shared_data):
    with OrthancServer(tmp_path_factory.mktemp("orthanc")) as orthanc:
        folder, study_uid, series_uid = uploadable_series(
            shared_data / "totalsegmentator-example/example_ct_dicom", tmp_path_factory.mktemp("ct")
        )
        for path in sorted(folder.iterdir()):
            httpx.post(f"{orthanc.url}/instances", content=path.read_bytes()).raise_for_status()
        orthanc.study_uid, orthanc.series_uid = study_uid, series_uid
        yield orthanc


@pytest.fixture(scope="module")
def server(tmp_path_factory, pacs):
    args = ("--pacs", pacs.url, "--max-queue", "2", "--max-upload-mb", "1", "--memory-budget-mb", "120")
    with OncoSegServer(tmp_path_factory.mktemp("serve"), *args, token=TOKEN) as running:
        yield running


@pytest.fixture(scope="module")
def api(server):
    with server.client() as client:
        yield client


@pytest.fixture(scope="module")
def opened(api, pacs):
    response = api.post("/api/images", json={"series_uid": pacs.series_uid})
    assert response.status_code == 201, response.text
    return response.json()


def test_health_is_open_everything_else_needs_the_token(server):
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    for method, path in [("GET", "/api/series"), ("GET", "/api/images"), ("GET", "/openapi.json"),
                         ("GET", "/info/"), ("POST", "/api/images/x/segment")]:  # fmt: skip
        answer = httpx.request(method, f"{server.url}{path}")
        assert answer.status_code == 401, path
        assert "bearer token" in answer.json()["detail"]
    wrong = httpx.get(f"{server.url}/api/images", headers={"Authorization": "Bearer wrong-token-xxxxxxxx"})
    assert wrong.status_code == 401
    assert httpx.get(f"{server.url}/", timeout=10).status_code == 200  # the page itself holds no data


def test_openapi_documents_the_routes(api):
    spec = api.get("/openapi.json").json()
    for path in ["/api/images", "/api/images/upload", "/api/images/{image_id}/segment",
                 "/api/images/{image_id}/propagate", "/api/images/{image_id}/measurements",
                 "/api/images/{image_id}/store", "/infer/{model}", "/info/", "/health",
                 "/api/images/{image_id}/jobs", "/api/images/{image_id}/jobs/{job_id}",
                 "/api/images/{image_id}/jobs/{job_id}/result/{z}", "/api/images/{image_id}/download"]:  # fmt: skip
        assert path in spec["paths"], path


def test_lists_series_and_opens_one_by_uid(api, pacs, opened):
    series = {s["series_uid"]: s for s in api.get("/api/series").json()}
    assert series[pacs.series_uid]["modality"] == "CT" and series[pacs.series_uid]["num_instances"] == 20
    assert opened["shape"] == [20, 512, 512] and opened["dicom"] and opened["modality"] == "ct"
    again = api.post("/api/images", json={"series_uid": pacs.series_uid, "study_uid": pacs.study_uid})
    assert again.json()["image_id"] == opened["image_id"]  # reused, not downloaded twice


def test_click_segments_the_liver_and_the_second_click_reuses_the_embedding(api, opened, liver):
    url = f"/api/images/{opened['image_id']}/segment"
    first = api.post(url, json={"z": Z, "points": [{"x": 156, "y": 303}]})
    assert first.status_code == 200, first.text
    answer = first.json()
    mask = rle_decode(answer["mask"])
    assert mask.shape == (512, 512) and not answer["empty"]
    dice = 2 * (mask & liver[Z]).sum() / (mask.sum() + liver[Z].sum())
    assert dice > 0.6, dice  # one click on a large organ: the box prompt below does better
    m = answer["measurements"]
    assert m["voxel_count"] == mask.sum() and m["area_mm2"] == pytest.approx(
        mask.sum() * 0.9765625**2, rel=1e-3
    )
    assert m["recist_long_mm"] > m["recist_short_mm"] > 20
    assert answer["contours"] and all(len(c) >= 3 for c in answer["contours"])
    overlay = Image.open(io.BytesIO(base64.b64decode(answer["overlay_png"]))).convert("RGBA")
    assert overlay.size == (512, 512)
    np.testing.assert_array_equal(np.asarray(overlay)[..., 3] > 0, mask)
    second = api.post(
        url, json={"z": Z, "points": [{"x": 156, "y": 303}, {"x": 240, "y": 330, "positive": False}]}
    )
    assert second.json()["embedding_cached"] and not answer["embedding_cached"]
    # the second call repeats the first click and adds one: it refines the result (one decode from its box)
    assert second.json()["refined"] and not answer["refined"]
    refined = rle_decode(second.json()["mask"])
    # still the liver, without the excluded pixel (which lies outside the liver): the refined mask is smaller and
    # lies almost wholly inside the liver (the teacher encoder: 98 % in fp32 and bf16, against 94-95 % for the
    # first click's; the student encoder: 92 %). Its Dice drops (0.49-0.53 from 0.62) by an amount that moves
    # with the precision, so Dice is not the check.
    assert not refined[330, 240] and refined[303, 156]
    assert (refined & liver[Z]).sum() >= 0.9 * refined.sum()
    assert refined.sum() > 0.5 * mask.sum()
    third = api.post(url, json={"z": Z, "points": [{"x": 240, "y": 330}], "contours": False}).json()
    assert not third["refined"]  # a click on its own starts afresh
    assert "contours" not in third and third["mask"] and third["overlay_png"]  # as the web page asks
    box = api.post(url, json={"z": Z, "box": [107, 196, 269, 374]}).json()
    box_mask = rle_decode(box["mask"])
    assert 2 * (box_mask & liver[Z]).sum() / (box_mask.sum() + liver[Z].sum()) > 0.85


def test_bad_input_gets_clear_json_errors(api, opened):
    url = f"/api/images/{opened['image_id']}/segment"
    cases = [
        ({"z": 20, "points": [{"x": 10, "y": 10}]}, 422, "slice 20 is outside the volume"),
        ({"z": Z, "points": [{"x": 600, "y": 10}]}, 422, "outside the image"),
        ({"z": Z, "box": [50, 50, 40, 60]}, 422, "zero area"),
        ({"points": [{"x": 10, "y": 10}]}, 422, "give the slice index"),
        ({"z": Z}, 422, "no prompt"),
        ({"z": "ten", "box": [1, 2]}, 422, "z:"),
    ]
    for body, status, text in cases:
        answer = api.post(url, json=body)
        assert answer.status_code == status and text in answer.json()["detail"], (body, answer.text)
    unknown = api.post("/api/images/no-such-image/segment", json={"z": 1, "points": [{"x": 1, "y": 1}]})
    assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"
    missing = api.post("/api/images", json={"series_uid": "1.2.3.4.5.6.7.8"})
    assert missing.status_code == 404 and "no series" in missing.json()["detail"]
    assert api.get(f"/api/images/{opened['image_id']}/slices/99").status_code == 422
    assert api.get(f"/api/images/{opened['image_id']}/slices/3?window=nonsense").status_code == 400


def test_slice_png_with_window_presets(api, opened):
    pictures = {}
    for window in ("soft-tissue", "lung", "40,400"):
        answer = api.get(f"/api/images/{opened['image_id']}/slices/{Z}", params={"window": window})
        assert answer.headers["content-type"] == "image/png"
        pictures[window] = np.asarray(Image.open(io.BytesIO(answer.content)))
    assert pictures["soft-tissue"].shape == (512, 512)
    np.testing.assert_array_equal(pictures["soft-tissue"], pictures["40,400"])
    assert not np.array_equal(pictures["soft-tissue"], pictures["lung"])


def test_propagate_measure_and_store_rtstruct_and_seg_back(api, opened, pacs, liver, tmp_path):
    image_id = opened["image_id"]
    answer = api.post(
        f"/api/images/{image_id}/propagate", json={"z": Z, "box": [107, 196, 269, 374], "max_slices": 2}
    )
    assert answer.status_code == 200, answer.text
    result = answer.json()
    low, high = result["slices"]
    assert low >= Z - 2 and high <= Z + 2 and high - low >= 2
    m = api.get(f"/api/images/{image_id}/measurements").json()["measurements"]
    assert m["volume_ml"] == result["measurements"]["volume_ml"] > 10
    assert m["bbox"][0] == [low, high]
    stored = api.post(f"/api/images/{image_id}/store", json={"format": "rtstruct", "name": "Liver"})
    assert stored.status_code == 200, stored.text
    rt = httpx.get(f"{pacs.url}/instances/{stored.json()['orthanc_ids'][0]}/file").content
    (tmp_path / "rt.dcm").write_bytes(rt)
    assert pydicom.dcmread(tmp_path / "rt.dcm").Modality == "RTSTRUCT"
    reference = tmp_path / "ct"
    reference.mkdir()
    for index, instance in enumerate(
        httpx.get(f"{pacs.url}/series/{_orthanc_series(pacs)}/instances").json()
    ):
        (reference / f"{index}.dcm").write_bytes(
            httpx.get(f"{pacs.url}/instances/{instance['ID']}/file").content
        )
    contours = read_rtstruct(tmp_path / "rt.dcm", reference)
    back = next(iter(contours.values()))
    assert back.shape == (20, 512, 512)
    assert set(np.flatnonzero(back.any(axis=(1, 2)))) == set(range(low, high + 1))
    overlap = 2 * (back[Z] & liver[Z]).sum() / (back[Z].sum() + liver[Z].sum())
    assert overlap > 0.8

    stored = api.post(f"/api/images/{image_id}/store", json={"format": "seg", "name": "Liver"})
    assert stored.status_code == 200, stored.text
    (tmp_path / "seg.dcm").write_bytes(
        httpx.get(f"{pacs.url}/instances/{stored.json()['orthanc_ids'][0]}/file").content
    )
    assert pydicom.dcmread(tmp_path / "seg.dcm").Modality == "SEG"
    segments = read_seg(tmp_path / "seg.dcm", reference)
    np.testing.assert_array_equal(next(iter(segments.values())), back_seg_expected(api, image_id, back))


def back_seg_expected(api, image_id, rtstruct_mask):
    """The SEG must hold exactly the service's result; rebuild it from the per-slice result PNGs."""
    slices = []
    for z in range(rtstruct_mask.shape[0]):
        picture = Image.open(io.BytesIO(api.get(f"/api/images/{image_id}/result/{z}").content)).convert(
            "RGBA"
        )
        slices.append(np.asarray(picture)[..., 3] > 0)
    return np.stack(slices)


def _orthanc_series(pacs) -> str:
    return httpx.post(f"{pacs.url}/tools/lookup", content=pacs.series_uid.encode()).json()[0]["ID"]


def test_store_needs_a_result_and_a_dicom_image(api, tmp_path, shared_data):
    data = (shared_data / "totalsegmentator-example/example_ct_sm.nii.gz").read_bytes()
    opened = api.post("/api/images/upload", files={"file": ("ct.nii.gz", data)})
    assert opened.status_code == 201, opened.text
    image_id = opened.json()["image_id"]
    assert api.post(f"/api/images/{image_id}/store", json={"format": "seg"}).status_code == 409
    assert api.get(f"/api/images/{image_id}/measurements").status_code == 409
    assert api.delete(f"/api/images/{image_id}").json()["closed"]
    assert api.get(f"/api/images/{image_id}").status_code == 404


def test_upload_limits_and_bad_files(api):
    too_big = api.post("/api/images/upload", files={"file": ("big.nii.gz", b"\0" * (2 * 2**20))})
    assert too_big.status_code == 413 and "limit" in too_big.json()["detail"]

    def chunks():  # a multipart upload streamed without Content-Length: the limit applies while reading
        yield b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="big.nii.gz"\r\n\r\n'
        for _ in range(3):
            yield b"\0" * 2**20
        yield b"\r\n--xyz--\r\n"

    streamed = api.post(
        "/api/images/upload", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=xyz"}
    )
    assert streamed.status_code == 413
    garbage = api.post("/api/images/upload", files={"file": ("scan.nii.gz", b"not a nifti")})
    assert garbage.status_code == 400 and garbage.json()["code"] == "unreadable_image"
    wrong_type = api.post("/api/images/upload", files={"file": ("notes.txt", b"hello")})
    assert wrong_type.status_code == 400 and "unsupported upload type" in wrong_type.json()["detail"]


def test_backpressure_503_while_health_stays_responsive(server, opened):
    """--max-queue 2: of 8 simultaneous first clicks on new slices, the ones beyond the queue get 503."""
    statuses, health_times = [], []

    def click(z):
        with server.client() as client:
            answer = client.post(
                f"/api/images/{opened['image_id']}/segment", json={"z": z, "box": [100, 100, 300, 300]}
            )
            statuses.append((answer.status_code, answer.headers.get("retry-after")))

    threads = [threading.Thread(target=click, args=(z,)) for z in (0, 1, 2, 3, 4, 5, 6, 7)]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        answer = httpx.get(f"{server.url}/health", timeout=5)
        health_times.append(answer.elapsed.total_seconds())
        assert answer.status_code == 200
    for thread in threads:
        thread.join()
    codes = sorted(code for code, _ in statuses)
    assert set(codes) <= {200, 503} and codes.count(503) >= 1 and codes.count(200) >= 2, statuses
    assert all(retry == "1" for code, retry in statuses if code == 503)
    assert max(health_times) < 1.0, health_times


def test_memory_budget_is_respected(api):
    health = api.get("/health").json()
    assert 0 < health["cache_bytes"] <= health["budget_bytes"] == 120 * 2**20
    assert health["high_water_bytes"] <= health["budget_bytes"]


def test_logs_hold_no_patient_identifiers(server, pacs, api, opened):
    api.get(f"/infer/oncoseg?image={pacs.series_uid}")  # a UID in a query string (wrong method: 405)
    log = server.log()
    assert "POST /api/images/{image_id}/segment 200" in log
    for secret in (
        pacs.series_uid,
        pacs.study_uid,
        "Test^Phantom",
        "ONCOSEG-TEST",
        opened["image_id"],
        TOKEN,
    ):
        assert secret not in log, secret


def test_refuses_to_listen_beyond_loopback_without_a_token(tmp_path):
    result = subprocess.run(
        [str(ONCOSEG), "serve", "--host", "0.0.0.0", "--port", "0", "--no-warmup"],
        capture_output=True, encoding="utf-8", check=False, timeout=120, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 2 and "refusing to listen on 0.0.0.0 without a token" in result.stderr


LIVER_BOX = [107, 196, 269, 374]


def _poll(api, url: str, until=("done", "cancelled", "failed"), timeout: float = 600) -> tuple[dict, list]:
    """Poll a job until it reaches one of ``until``; returns it and every state seen on the way."""
    import time

    seen, deadline = [], time.monotonic() + timeout
    while True:
        job = api.get(url).json()
        seen.append(job)
        if job["state"] in until:
            return job, seen
        assert time.monotonic() < deadline, job
        time.sleep(0.1)


def _result_volume(api, image_id: str, slices: int = 20) -> np.ndarray:
    pictures = [api.get(f"/api/images/{image_id}/result/{z}").content for z in range(slices)]
    return np.stack([np.asarray(Image.open(io.BytesIO(p)).convert("RGBA"))[..., 3] > 0 for p in pictures])


def test_3d_jobs_correct_any_slice_cancel_and_download(api, opened, pacs, tmp_path):
    """Propagation as a job (progress to its total, per-slice scores), a box on another slice corrects the 3D
    result there and re-walks up to the propagation's slice only, a cancelled job leaves the result as it was,
    and the download (NIfTI, DICOM SEG) holds exactly that result on the image's grid."""
    image_id = opened["image_id"]
    url = f"/api/images/{image_id}/jobs"
    started = api.post(url, json={"z": Z, "box": LIVER_BOX, "max_slices": 3})
    assert started.status_code == 202, started.text
    job, seen = _poll(api, f"{url}/{started.json()['job_id']}")
    assert job["state"] == "done" and job["done"] == job["total"] >= 5, job
    dones = [j["done"] for j in seen]
    assert dones == sorted(dones) and all(j["total"] == 7 for j in seen if j["state"] != "done")
    result = job["result"]
    low, high = result["slices"]
    assert Z - 3 <= low < Z < high <= Z + 3 and result["anchors"] == [Z]
    assert set(result["slice_scores"]) == {str(z) for z in range(low, high + 1)} == set(job["slice_scores"])
    assert all(0 < s <= 1 for s in result["slice_scores"].values())
    before = _result_volume(api, image_id)
    assert set(np.flatnonzero(before.any(axis=(1, 2)))) == set(range(low, high + 1))

    # a box over the liver's left half on slice Z + 2: that slice follows the box, the walk starts again
    # from it (Z + 1 below, up to 3 slices above) and stops before slice Z, the propagation's anchor
    half = [107, 196, 188, 374]
    fix = api.post(url, json={"action": "refine", "z": Z + 2, "box": half})
    assert fix.status_code == 202, fix.text
    job, _ = _poll(api, f"{url}/{fix.json()['job_id']}")
    assert job["state"] == "done", job
    assert job["result"]["anchors"] == [Z, Z + 2] and job["result"]["refined"]
    assert str(Z + 2) in job["result"]["slice_scores"]
    after = _result_volume(api, image_id)
    np.testing.assert_array_equal(after[: Z + 1], before[: Z + 1])  # the anchor and beyond: unchanged
    assert after[Z + 2, :, 200:].sum() < 0.2 * before[Z + 2, :, 200:].sum()  # the right half is gone
    assert after[Z + 2].any() and not np.array_equal(after[Z + 1], before[Z + 1])  # re-walked neighbour

    # a propagation cancelled once it has started leaves the corrected result as it was
    started = api.post(url, json={"z": Z - 1, "box": LIVER_BOX})
    assert started.status_code == 202, started.text
    job_url = f"{url}/{started.json()['job_id']}"
    _poll(api, job_url, until=("running", "done", "cancelled", "failed"))
    cancel = api.delete(job_url)
    assert cancel.status_code == 200 and cancel.json()["job_id"] == started.json()["job_id"]
    job, _ = _poll(api, job_url)
    assert job["state"] == "cancelled" and job["result"] is None and job["done"] < job["total"], job
    np.testing.assert_array_equal(_result_volume(api, image_id), after)
    assert api.get(f"/api/images/{image_id}/measurements").json()["anchors"] == [Z, Z + 2]

    # the download: a NIfTI label mask on the image's grid, a DICOM SEG over the series
    answer = api.get(f"/api/images/{image_id}/download")
    assert answer.status_code == 200, answer.text
    (tmp_path / "label.nii.gz").write_bytes(answer.content)
    label = load_image(tmp_path / "label.nii.gz")
    assert label.shape == (20, 512, 512) and set(np.unique(label.array)) == {0, 1}
    assert label.spacing == pytest.approx(opened["spacing_mm"], abs=1e-3)
    assert label.origin == pytest.approx(opened["origin_mm"], abs=1e-3)
    np.testing.assert_array_equal(label.array > 0, after)
    seg = api.get(f"/api/images/{image_id}/download", params={"format": "seg", "name": "Liver"})
    assert seg.status_code == 200, seg.text
    (tmp_path / "seg.dcm").write_bytes(seg.content)
    reference = tmp_path / "ct"
    reference.mkdir()
    for index, instance in enumerate(
        httpx.get(f"{pacs.url}/series/{_orthanc_series(pacs)}/instances").json()
    ):
        (reference / f"{index}.dcm").write_bytes(
            httpx.get(f"{pacs.url}/instances/{instance['ID']}/file").content
        )
    (name, mask), *_ = read_seg(tmp_path / "seg.dcm", reference).items()
    assert name == "Liver"
    np.testing.assert_array_equal(mask, after)


def test_shown_slices_are_encoded_ahead_and_clicks_offer_other_sizes(api, opened):
    """Over HTTP with the real model: a shown slice is listed as ready once the idle server has encoded it, the
    click there finds its embedding; a click answer counts its other sizes, /choose takes one, and refuses
    with one line what it cannot do."""
    import time

    image_id, z = opened["image_id"], Z + 2
    assert api.get(f"/api/images/{image_id}/slices/{z}").status_code == 200
    deadline = time.monotonic() + 180
    while z not in (ready := api.get(f"/api/images/{image_id}/ready").json())["ready"]:
        assert time.monotonic() < deadline, ready
        time.sleep(0.1)
    assert ready["viewed"] == z and ready["num_slices"] == 20
    answer = api.post(
        f"/api/images/{image_id}/segment", json={"z": z, "points": [{"x": 156, "y": 303}]}
    ).json()
    assert answer["embedding_cached"]
    offered = answer["alternatives"]
    assert set(offered) == {"smaller", "larger"} and offered["smaller"] + offered["larger"] >= 1, offered
    which = "larger" if offered["larger"] else "smaller"
    chosen = api.post(f"/api/images/{image_id}/choose", json={"which": which, "z": z})
    assert chosen.status_code == 200, chosen.text
    area, before = rle_decode(chosen.json()["mask"]).sum(), rle_decode(answer["mask"]).sum()
    assert (area > before) if which == "larger" else (area < before)
    assert chosen.json()["measurements"]["voxel_count"] == area
    bad = api.post(f"/api/images/{image_id}/choose", json={"which": "huge", "z": z})
    assert bad.status_code == 422 and "which" in bad.json()["detail"]
    api.post(f"/api/images/{image_id}/segment", json={"z": z, "box": [107, 196, 269, 374]})
    none = api.post(f"/api/images/{image_id}/choose", json={"which": "larger", "z": z})
    assert none.status_code == 409 and "\n" not in none.json()["detail"]
