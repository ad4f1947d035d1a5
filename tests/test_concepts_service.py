"""The sidecar service answers a text prompt (every instance of a concept) on an uploaded image."""

from __future__ import annotations

import numpy as np
import pytest
from oncoseg_server import OncoSegServer
from PIL import Image

from oncoseg import samples
from oncoseg.service.core import rle_decode

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    server = OncoSegServer(tmp_path_factory.mktemp("serve"), token="concept-test-token-0123456789")
    with server, server.client() as client:
        yield client


def test_segment_with_text_instead_of_clicks(api):
    data = samples.sample_path("polyp").read_bytes()
    opened = api.post("/api/images/upload", files={"file": ("polyp.jpg", data)})
    assert opened.status_code == 201, opened.text
    image_id = opened.json()["image_id"]
    answer = api.post(f"/api/images/{image_id}/segment", json={"text": "colorectal polyp"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["instances"] >= 1 and not body["empty"] and body["text"] == "colorectal polyp"
    mask = rle_decode(body["mask"])
    truth = np.asarray(Image.open(samples.sample_path("polyp_mask.png")).convert("L")) > 127
    assert mask.shape == truth.shape
    assert 2 * (mask & truth).sum() / (mask.sum() + truth.sum()) > 0.8
    assert api.get(f"/api/images/{image_id}/measurements").status_code == 200

    unknown = api.post(f"/api/images/{image_id}/segment", json={"text": "kidney"})
    assert unknown.status_code == 400 and "not in this model's vocabulary" in unknown.json()["detail"]
    mixed = api.post(f"/api/images/{image_id}/segment", json={"text": "polyp", "box": [1, 1, 50, 50]})
    assert mixed.status_code == 422 and "without points or box" in mixed.json()["detail"]
