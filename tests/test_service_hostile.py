"""The service against hostile uploads and requests, in process (the real app and engine, a stand-in model):
no file outside the upload is read, sizes are checked before decoding, zips are unpacked in bounded chunks,
the Host header and browser headers are enforced, MONAI Label params are checked before model time, error
texts carry no server paths and logs no patient data. `test_adversarial.py` runs such inputs against a real
uvicorn server and the real model."""

from __future__ import annotations

import gzip
import io
import json
import logging
import sys
import zipfile
from pathlib import Path

import nibabel
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from stand_in_models import BoxBackend

from oncoseg.errors import OncoSegError
from oncoseg.logs import SafeFormatter
from oncoseg.service.app import create_app, without_folders
from oncoseg.service.core import Engine, ServiceConfig
from oncoseg.service.security import check_bind

FAKE_NAME, FAKE_UID = "DOE^JOHN", "1.2.826.0.1.3680043.8.498.12345"


def _client(tmp_path: Path, **config) -> TestClient:
    options = {"workdir": str(tmp_path / "work"), "warmup": False, "memory_budget_mb": 64.0, **config}
    engine = Engine(ServiceConfig(**options), backend=BoxBackend())
    return TestClient(create_app(engine.config, engine), base_url="http://127.0.0.1:8765")


@pytest.fixture()
def client(tmp_path):
    with _client(tmp_path) as c:
        yield c


def _sessions(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "work" / "sessions"
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _upload(client: TestClient, name: str, data: bytes):
    return client.post("/api/images/upload", files={"file": (name, data)})


def test_external_data_headers_are_refused_and_nothing_is_read(client, tmp_path):
    mha = (
        b"ObjectType = Image\nNDims = 2\nDimSize = 16 16\nElementType = MET_UCHAR\n"
        b"ElementDataFile = /etc/passwd\n"
    )
    nrrd = b"NRRD0004\ntype: uint8\ndimension: 2\nsizes: 16 16\nencoding: raw\ndata file: /etc/passwd\n\n"
    for name, data in (("a.mha", mha), ("b.nrrd", nrrd), ("c.mha", mha.replace(b"/etc/passwd", b"x.raw"))):
        answer = _upload(client, name, data)
        assert answer.status_code == 400, answer.text
        detail = answer.json()["detail"]
        assert "external" in detail and "\n" not in detail and "passwd" not in detail
    assert client.get("/api/images").json() == [] and _sessions(tmp_path) == []


def test_declared_sizes_are_checked_before_decoding(client, tmp_path):
    header = nibabel.Nifti1Header()
    header.set_data_shape((1000, 1000, 1000))
    header.set_data_dtype(np.int16)
    buffer = io.BytesIO()
    buffer.write(header.binaryblock + b"\0" * 4)
    nifti = gzip.compress(buffer.getvalue() + b"\0" * 2**20)  # the pixels are missing too: never read
    answer = _upload(client, "bomb.nii.gz", nifti)
    assert answer.status_code == 413 and answer.json()["code"] == "too_large", answer.text
    big = np.zeros((12_000, 9_000), np.uint8)  # 108 Mpx, ~100 KB as PNG
    answer = _upload(client, "big.png", _png(big))
    assert answer.status_code == 413, answer.text
    assert _sessions(tmp_path) == []


def _zip(entries: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_zip_uploads_are_unpacked_in_bounded_chunks(client, tmp_path):
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open(f"{FAKE_NAME}/{FAKE_UID}.dcm", "w") as entry,  # 48 MiB of zeros, > 32 MiB allowed
    ):
        for _ in range(48):
            entry.write(b"\0" * 2**20)
    bomb = buffer.getvalue()
    assert len(bomb) < 100_000
    answer = _upload(client, "series.zip", bomb)
    assert answer.status_code == 400 and "unpacks to more than 32 MiB" in answer.json()["detail"]

    # the sizes the archive declares lie (central directory says 10 bytes): the inflated bytes are counted
    lying = bytearray(bomb)
    central = lying.rfind(b"PK\x01\x02")
    lying[central + 24 : central + 28] = (10).to_bytes(4, "little")
    answer = _upload(client, "series.zip", bytes(lying))
    assert answer.status_code == 400 and "\n" not in answer.json()["detail"]

    encrypted = bytearray(_zip({"a.dcm": b"x" * 100}))
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = encrypted.find(signature)
        encrypted[at + offset] |= 1
    answer = _upload(client, "series.zip", bytes(encrypted))
    assert answer.status_code == 400 and "encrypted" in answer.json()["detail"]
    answer = _upload(client, "series.zip", _zip({"a.dcm": b"x" * 100}, zipfile.ZIP_BZIP2))
    assert answer.status_code == 400 and "compression method" in answer.json()["detail"]
    traversal = _zip({"../../escaped.dcm": b"x" * 200, "/abs/path.dcm": b"y"})
    assert _upload(client, "series.zip", traversal).status_code == 400
    assert not (tmp_path / "escaped.dcm").exists() and not (tmp_path / "work" / "escaped.dcm").exists()
    assert _sessions(tmp_path) == []


def test_uploads_beyond_the_concurrent_limit_get_503(tmp_path):
    with _client(tmp_path, max_concurrent_uploads=1) as client:
        engine = client.app.state.engine
        assert engine.upload_slots.acquire(blocking=False)  # one upload in progress
        try:
            answer = _upload(client, "slice.png", _png(np.zeros((32, 32), np.uint8) + 7))
            assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
        finally:
            engine.upload_slots.release()
        assert _upload(client, "slice.png", _png(np.arange(1024, dtype=np.uint8).reshape(32, 32))).is_success


def test_host_header_and_browser_headers(tmp_path):
    with _client(tmp_path) as client:
        page = client.get("/")
        assert page.status_code == 200
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert (
            page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
        )
        for host in ("evil.example", "evil.example:8765", "127.0.0.1.evil.example", ""):
            answer = client.get("/api/images", headers={"Host": host})
            assert answer.status_code == 421 and answer.json()["code"] == "wrong_host"
        for host in ("localhost:8765", "127.0.0.1", "[::1]:8765"):
            assert client.get("/api/images", headers={"Host": host}).status_code == 200
    with _client(tmp_path, allowed_hosts=("onco.example",)) as client:
        assert client.get("/health", headers={"Host": "onco.example:8765"}).status_code == 200
    with _client(tmp_path, token="a-long-enough-token-123") as client:  # the token guards any host name
        assert client.get("/health", headers={"Host": "workstation.lan"}).status_code == 200
        assert client.get("/api/images", headers={"Host": "workstation.lan"}).status_code == 401


def test_a_token_of_blanks_is_no_token():
    for token in (" " * 20, "\t" * 16, "abcdefgh abcdefgh", "short"):
        with pytest.raises(OncoSegError, match="too short or holds spaces"):
            check_bind("0.0.0.0", token)


def test_result_and_slice_indices_are_checked(client):
    volume = np.random.default_rng(0).integers(0, 200, (4, 32, 32)).astype(np.int16)
    buffer = io.BytesIO()
    buffer.write(nibabel.Nifti1Image(volume.T, np.eye(4)).to_bytes())
    image_id = _upload(client, "ct.nii", buffer.getvalue()).json()["image_id"]
    body = {"z": 2, "box": [4, 4, 20, 20], "overlay": False, "contours": False}
    assert client.post(f"/api/images/{image_id}/segment", json=body).status_code == 200
    assert client.get(f"/api/images/{image_id}/result/2").status_code == 200
    for z in (-1, 4, 10**6):
        for route in ("result", "slices"):
            answer = client.get(f"/api/images/{image_id}/{route}/{z}")
            assert answer.status_code == 422 and answer.json()["code"] == "bad_prompt", (route, z)
    for bad in ({"z": 2, "box": [4, 4, "NaN", 20]}, {"z": 2, "points": [{"x": 1e400, "y": 3}]}):
        answer = client.post(
            f"/api/images/{image_id}/segment",
            content=json.dumps(bad).replace('"NaN"', "NaN"),
            headers={"Content-Type": "application/json"},
        )
        assert answer.status_code in (422, 400) and "\n" not in answer.json()["detail"], answer.text


def test_choose_and_ready_refuse_what_they_cannot_answer(client):
    """/choose with any body is a 4xx with one line (never a 500), before model time; /ready of an unknown
    image is a 404; a shown slice outside the volume starts no background work."""
    volume = np.random.default_rng(0).integers(0, 200, (4, 32, 32)).astype(np.int16)
    image_id = _upload(client, "ct.nii", nibabel.Nifti1Image(volume.T, np.eye(4)).to_bytes()).json()[
        "image_id"
    ]
    url = f"/api/images/{image_id}/choose"
    bodies = [
        {"which": "larger", "z": 1},  # no result yet
        {"which": "LARGER", "z": 1},
        {"which": None},
        {"which": ["smaller"]},
        {"which": "smaller", "z": "one"},
        {"which": "smaller", "z": 10**30},
        {"which": "smaller", "z": -1},
        {},
        [],
    ]
    completed = client.app.state.engine.worker.completed
    for body in bodies:
        answer = client.post(url, json=body)
        assert 400 <= answer.status_code < 500 and "\n" not in answer.json()["detail"], (body, answer.text)
    assert client.app.state.engine.worker.completed == completed  # none reached the model
    client.post(f"/api/images/{image_id}/segment", json={"z": 1, "points": [{"x": 9, "y": 9}]})
    for body in ({"which": "smaller", "z": 5}, {"which": "larger", "z": 1}, {"which": "smaller"}):
        answer = client.post(url, json=body)  # the stand-in model offers no other sizes
        assert answer.status_code in (409, 422) and "\n" not in answer.json()["detail"], (body, answer.text)
    assert client.post("/api/images/nope/choose", json={"which": "larger"}).status_code == 404
    assert client.get("/api/images/nope/ready").status_code == 404
    assert client.get(f"/api/images/{image_id}/slices/7").status_code == 422
    assert client.get(f"/api/images/{image_id}/ready").json()["viewed"] is None


def test_monailabel_params_are_checked_before_model_time(client):
    volume = np.random.default_rng(1).integers(0, 200, (4, 32, 32)).astype(np.int16)
    data = nibabel.Nifti1Image(volume.T, np.eye(4)).to_bytes()
    assert client.put("/datastore/?image=case1", files={"file": ("case1.nii", data)}).is_success
    engine = client.app.state.engine
    decodes = engine.backend.decodes
    bad_params = [
        {"foreground": "1,2,3"},
        {"foreground": [[1, 2, "x"]]},
        {"foreground": [[1, 2]] * 65},
        {"foreground": [[1, 2, 3, 4]]},
        {"foreground": [[float("nan"), 2, 1]]},
        {"foreground": [[1e400, 2, 1]]},
        {"foreground": [[5, 5, 1]], "max_slices": "many"},
        {"foreground": [[5, 5, 1]], "max_slices": -3},
        {"foreground": [[5, 5, 1]], "result_extension": ".exe"},
        {"foreground": [[5, 5, 1]], "result_extension": ["x"]},
        {"foreground": [[500, 5, 1]]},
    ]
    for params in bad_params:
        text = json.dumps(params).replace("Infinity", "1e400")
        answer = client.post("/infer/oncoseg?image=case1", data={"params": text})
        assert 400 <= answer.status_code < 500, (params, answer.text)
        assert "\n" not in answer.json()["detail"]
    for text in ("not json", "[1, 2]", '{"foreground": [[1, 2, 3]]'):
        assert client.post("/infer/oncoseg?image=case1", data={"params": text}).status_code == 400
    assert engine.backend.decodes == decodes
    ok = client.post(
        "/infer/oncoseg_slice?image=case1&output=json", data={"params": '{"foreground": [[5,5,1]]}'}
    )
    assert ok.status_code == 200 and engine.backend.decodes > decodes


def test_datastore_refuses_outside_data_and_keeps_nothing(client, tmp_path):
    mha = (
        b"ObjectType = Image\nNDims = 3\nDimSize = 8 8 2\nElementType = MET_UCHAR\n"
        b"ElementDataFile = /proc/self/environ\n"
    )
    answer = client.put("/datastore/?image=leak", files={"file": ("leak.mha", mha)})
    assert answer.status_code == 400 and "external" in answer.json()["detail"]
    store = tmp_path / "work" / "datastore"
    assert [p for p in store.rglob("*") if p.is_file()] == []
    assert client.get("/datastore/?output=all").json()["objects"] == {}


def test_error_texts_carry_no_server_folders(client, tmp_path):
    answer = _upload(client, "scan.nii.gz", b"not a nifti at all")
    detail = answer.json()["detail"]
    assert answer.status_code == 400 and str(tmp_path) not in detail and "/sessions/" not in detail
    assert without_folders("/srv/work/sessions/ab12/image.nii.gz: truncated") == "image.nii.gz: truncated"
    assert without_folders("slices 0..4, ratio 1/2, http://x/y") == "slices 0..4, ratio 1/2, http://x/y"


def test_tracebacks_in_the_log_hold_no_patient_data():
    formatter = SafeFormatter("%(levelname)s %(name)s: %(message)s")
    try:
        try:
            raise KeyError(f"entry {FAKE_NAME}/{FAKE_UID}.dcm")
        except KeyError as inner:
            raise RuntimeError(f"params {{'patient': '{FAKE_NAME}'}}") from inner
    except RuntimeError:
        record = logging.LogRecord(
            "uvicorn.error", logging.ERROR, __file__, 1, "Exception in ASGI", None, None
        )
        record.exc_info = sys.exc_info()
        text = formatter.format(record)
    assert FAKE_NAME not in text and FAKE_UID not in text and "DOE" not in text
    assert "builtins.RuntimeError" in text and "builtins.KeyError" in text
    assert "test_service_hostile.py" in text  # where it happened is kept
    uid_record = logging.LogRecord("oncoseg", logging.INFO, __file__, 1, "opened %s", (FAKE_UID,), None)
    assert FAKE_UID not in formatter.format(uid_record)


def test_a_blank_image_gives_nothing_found_not_an_object(client):
    for name, pixels in (
        ("zeros.png", np.zeros((32, 32), np.uint8)),
        ("grey.png", np.full((32, 32), 90, np.uint8)),
    ):
        image_id = _upload(client, name, _png(pixels)).json()["image_id"]
        for body in ({"box": [2, 2, 20, 20]}, {"points": [{"x": 5, "y": 5}]}):
            answer = client.post(f"/api/images/{image_id}/segment", json=body)
            assert answer.status_code == 422 and answer.json()["code"] == "empty_result", answer.text
            assert "blank" in answer.json()["detail"]
        assert client.get(f"/api/images/{image_id}/measurements").status_code == 409  # no result was kept
    volume = np.zeros((4, 32, 32), np.int16)
    volume[1:3, 8:20, 8:20] = 100  # slices 0 and 3 are blank
    image_id = _upload(client, "ct.nii", nibabel.Nifti1Image(volume.T, np.eye(4)).to_bytes()).json()[
        "image_id"
    ]
    blank = client.post(f"/api/images/{image_id}/propagate", json={"z": 0, "box": [4, 4, 24, 24]})
    assert blank.status_code == 422 and blank.json()["code"] == "empty_result"
    assert client.post(f"/api/images/{image_id}/propagate", json={"z": 1, "box": [4, 4, 24, 24]}).is_success


def test_deeply_nested_json_is_a_bad_request(client):
    deep = "[" * 100_000 + "]" * 100_000
    answer = client.post("/infer/oncoseg?image=x", data={"params": '{"foreground": ' + deep + "}"})
    assert answer.status_code == 400 and "\n" not in answer.json()["detail"]
    answer = client.post("/infer/oncoseg?image=x", data={"params": "{" + " " * 100_001 + "}"})
    assert answer.status_code == 400 and "longer than" in answer.json()["detail"]
    body = '{"z": 0, "points": ' + deep + "}"
    answer = client.post(
        "/api/images/none/segment", content=body, headers={"Content-Type": "application/json"}
    )
    assert 400 <= answer.status_code < 500, answer.text


def test_jobs_and_downloads_refuse_what_does_not_exist(client):
    volume = np.random.default_rng(2).integers(10, 200, (6, 32, 32)).astype(np.int16)
    data = nibabel.Nifti1Image(volume.T, np.eye(4)).to_bytes()
    first, other = (_upload(client, f"{name}.nii", data).json()["image_id"] for name in ("a", "b"))
    assert client.get(f"/api/images/{first}/download").status_code == 409  # before any result
    assert client.get(f"/api/images/{first}/download?format=exe").status_code == 422
    refine = client.post(
        f"/api/images/{first}/jobs", json={"action": "refine", "z": 2, "box": [4, 4, 20, 20]}
    )
    assert refine.status_code == 409 and "propagate first" in refine.json()["detail"]
    engine = client.app.state.engine
    job = client.post(f"/api/images/{first}/jobs", json={"z": 2, "box": [4, 4, 20, 20]}).json()
    engine.worker.call(lambda: None)  # the job has run
    assert client.get(f"/api/images/{first}/jobs/{job['job_id']}").json()["state"] == "done"
    for method in ("GET", "DELETE"):
        for url in (
            f"/api/images/{other}/jobs/{job['job_id']}",  # another image's job
            f"/api/images/{first}/jobs/no-such-job",
            f"/api/images/no-such-image/jobs/{job['job_id']}",
        ):
            answer = client.request(method, url)
            assert answer.status_code == 404 and answer.json()["code"] == "not_found", (method, url)
    assert client.get(f"/api/images/{other}/jobs/{job['job_id']}/result/2").status_code == 404
    for z in (-1, 6):
        assert client.get(f"/api/images/{first}/jobs/{job['job_id']}/result/{z}").status_code == 422
    assert client.get(f"/api/images/{other}/download").status_code == 409  # the other image has no result
    assert client.get(f"/api/images/{first}/download").status_code == 200
    assert client.get(f"/api/images/{first}/jobs/{job['job_id']}/result/2").status_code == 200
    newer = client.post(f"/api/images/{first}/jobs", json={"z": 3, "box": [4, 4, 20, 20]}).json()
    engine.worker.call(lambda: None)
    assert client.get(f"/api/images/{first}/jobs/{newer['job_id']}").json()["state"] == "done"
    superseded = client.get(f"/api/images/{first}/jobs/{job['job_id']}/result/2")  # its mask is not kept
    assert superseded.status_code == 409 and "superseded" in superseded.json()["detail"]
    bad = [
        {"action": "delete", "z": 2, "box": [4, 4, 20, 20]},
        {"z": 9, "box": [4, 4, 20, 20]},
        {"z": 2, "box": [4, 4, 20, 20], "max_slices": 0},
        {"z": 2},
    ]
    for body in bad:
        answer = client.post(f"/api/images/{first}/jobs", json=body)
        assert answer.status_code == 422, (body, answer.text)
    flat = _upload(client, "flat.png", _png(np.arange(1024, dtype=np.uint8).reshape(32, 32))).json()[
        "image_id"
    ]
    answer = client.post(f"/api/images/{flat}/jobs", json={"box": [4, 4, 20, 20]})
    assert answer.status_code == 400 and "volume" in answer.json()["detail"]
    blank = np.zeros((4, 32, 32), np.int16)
    blank_id = _upload(client, "blank.nii", nibabel.Nifti1Image(blank.T, np.eye(4)).to_bytes()).json()[
        "image_id"
    ]
    answer = client.post(f"/api/images/{blank_id}/jobs", json={"z": 1, "box": [4, 4, 20, 20]})
    assert answer.status_code == 422 and answer.json()["code"] == "empty_result"  # refused before queueing
