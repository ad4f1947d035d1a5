"""MONAI Label compatibility: MONAI Label's own Python client (`monailabel.client.MONAILabelClient`, the
class its Slicer plugin is built on) drives a real ``oncoseg serve`` on loopback, with a real Orthanc for the
OHIF-style flow (image id = SeriesInstanceUID)."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import SimpleITK as sitk
from oncoseg_server import OncoSegServer
from orthanc import OrthancServer, upload_example_ct

from oncoseg.io import load_image
from oncoseg.prompts import points_from_mask

pytestmark = pytest.mark.service

TOKEN = "monailabel-token-0123456789"

try:
    from monailabel.client import MONAILabelClient
    from monailabel.client.client import MONAILabelClientException
except ImportError as error:  # a clear failure, never a silent skip
    raise ImportError("monailabel is needed: pip install --no-deps monailabel (see the Makefile)") from error


@pytest.fixture(scope="module")
def pacs(tmp_path_factory, shared_data):
    with OrthancServer(tmp_path_factory.mktemp("orthanc")) as orthanc:
        orthanc.series_uid = upload_example_ct(orthanc, tmp_path_factory.mktemp("ct"))
        yield orthanc


@pytest.fixture(scope="module")
def server(tmp_path_factory, pacs):
    with OncoSegServer(tmp_path_factory.mktemp("serve"), "--pacs", pacs.url, token=TOKEN) as running:
        yield running


@pytest.fixture(scope="module")
def token(server):
    client = MONAILabelClient(server.url)
    assert client.auth_enabled()
    return client.auth_token("radiologist", TOKEN)


def make_client(server, token, tmp_path) -> MONAILabelClient:
    """A fresh client per call: MONAILabelClient keeps the Content-Length of its last upload in its shared
    header dict, which would corrupt the next GET (a quirk of the client, not of the server)."""
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    client.update_auth(token)
    return client


def raw_array(path) -> np.ndarray:
    """Voxels as stored in the file, indexed [k, j, i] (no reorientation)."""
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_login_with_the_token_as_password(server, token, tmp_path):
    assert token["access_token"] == TOKEN and token["token_type"].lower() == "bearer"
    with pytest.raises(MONAILabelClientException) as caught:
        MONAILabelClient(server.url).auth_token("radiologist", "wrong-password")
    assert caught.value.status_code == 401
    with pytest.raises(MONAILabelClientException):
        MONAILabelClient(server.url).info()  # no token → 401
    info = make_client(server, token, tmp_path).info()
    assert info["name"] == "Onco-Seg" and info["labels"] == ["lesion"]
    assert {m: info["models"][m]["type"] for m in info["models"]} == {
        "oncoseg": "deepgrow",
        "oncoseg_slice": "deepgrow",
    }


def test_slicer_flow_upload_infer_save(server, token, tmp_path):
    """Upload a NIfTI stored in RAS order, click in file voxel coordinates, get a label on the file's grid."""
    from oncoseg.samples import __file__ as samples_init

    samples = __import__("pathlib").Path(samples_init).parent
    image_file, truth_file = samples / "ct_abdomen.nii.gz", samples / "ct_abdomen_liver.nii.gz"
    answer = make_client(server, token, tmp_path).upload_image(str(image_file), image_id="ct_abdomen")
    assert answer == {"image": "ct_abdomen"}
    objects = make_client(server, token, tmp_path).datastore()["objects"]
    assert objects["ct_abdomen"]["image"]["ext"] == ".nii.gz"

    truth = raw_array(truth_file) > 0  # [k, j, i] of the file
    k = int(np.argmax(truth.sum(axis=(1, 2))))
    point = points_from_mask(truth[k])[0]
    clicks = {"foreground": [[point.x, point.y, k]], "background": [], "result_extension": ".nii.gz"}

    label_path, params = make_client(server, token, tmp_path).infer("oncoseg_slice", "ct_abdomen", clicks)
    assert params["label_names"] == {"lesion": 1} and params["z"] is not None
    label = raw_array(label_path)
    reference = sitk.ReadImage(str(image_file))
    written = sitk.ReadImage(label_path)
    assert written.GetSize() == reference.GetSize() and np.allclose(
        written.GetDirection(), reference.GetDirection()
    )
    assert np.allclose(written.GetOrigin(), reference.GetOrigin(), atol=1e-3)
    assert set(np.flatnonzero(label.any(axis=(1, 2)))) == {k}  # only the clicked slice
    dice = 2 * ((label[k] > 0) & truth[k]).sum() / ((label[k] > 0).sum() + truth[k].sum())
    assert dice > 0.6, dice  # the same click read without the RAS→LPS flip would give Dice ≈ 0.00

    clicks["max_slices"] = 2
    label_path, params = make_client(server, token, tmp_path).infer("oncoseg", "ct_abdomen", clicks)
    slices = np.flatnonzero(raw_array(label_path).any(axis=(1, 2)))
    assert k in slices and 3 <= len(slices) <= 5 and params["measurements"]["volume_ml"] > 0

    saved = make_client(server, token, tmp_path).save_label("ct_abdomen", label_path, tag="final")
    assert saved["image"] == "ct_abdomen"
    assert make_client(server, token, tmp_path).datastore()["objects"]["ct_abdomen"]["labels"] == {
        "final": {"ext": ".nii.gz"}
    }
    downloaded = make_client(server, token, tmp_path).download_label("ct_abdomen", "final")
    np.testing.assert_array_equal(raw_array(downloaded), raw_array(label_path))


def test_ohif_flow_series_uid_from_dicomweb(server, token, pacs, tmp_path, shared_data):
    """OHIF names the image by its SeriesInstanceUID; the server fetches it from the PACS with DICOMweb."""
    liver = load_image(shared_data / "totalsegmentator-example/example_seg_dicom.nii.gz").array == 5
    clicks = {"foreground": [[156, 303, 10]], "background": [[250, 330, 10]], "result_extension": ".nrrd"}
    label_path, _params = make_client(server, token, tmp_path).infer("oncoseg_slice", pacs.series_uid, clicks)
    assert label_path.endswith(".nrrd")
    label = load_image(label_path).array > 0  # back in LPS, like the series
    assert label.shape == (20, 512, 512) and set(np.flatnonzero(label.any(axis=(1, 2)))) == {10}
    dice = 2 * (label[10] & liver[10]).sum() / (label[10].sum() + liver[10].sum())
    assert dice > 0.6, dice


def test_output_modes_and_errors(server, token):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    url = f"{server.url}/infer/oncoseg_slice"
    form = {"params": json.dumps({"foreground": [[60, 50, 20]]})}
    as_json = httpx.post(
        url, params={"image": "ct_abdomen", "output": "json"}, data=form, headers=headers, timeout=300
    )
    assert as_json.status_code == 200 and as_json.json()["label_names"] == {"lesion": 1}
    as_image = httpx.post(
        url, params={"image": "ct_abdomen", "output": "image"}, data=form, headers=headers, timeout=300
    )
    assert as_image.status_code == 200 and as_image.content[:4] != b"{"  # a NIfTI file, gzip-compressed
    cases = [
        ("/infer/nope", {"image": "ct_abdomen"}, form, 404),
        ("/infer/oncoseg", {"image": "not-there"}, form, 404),
        ("/infer/oncoseg", {"image": "ct_abdomen"}, {"params": json.dumps({"foreground": []})}, 422),
        (
            "/infer/oncoseg",
            {"image": "ct_abdomen"},
            {"params": json.dumps({"foreground": [[60, 50, 99]]})},
            422,
        ),
        ("/infer/oncoseg", {"image": "ct_abdomen"}, {"params": "{not json"}, 400),
    ]
    for path, query, data, status in cases:
        answer = httpx.post(f"{server.url}{path}", params=query, data=data, headers=headers, timeout=300)
        assert answer.status_code == status and answer.json()["detail"], (path, query, answer.text)
