"""`oncoseg.pacs.PacsClient` against a real Orthanc (REST + DICOMweb) started on loopback."""

from __future__ import annotations

import http.server
import logging
import threading
import time

import numpy as np
import pytest
from orthanc import OrthancServer, uploadable_series

from oncoseg.errors import OncoSegError
from oncoseg.io import load_image
from oncoseg.pacs import PacsClient, PacsError, PacsUnavailableError, parse_multipart

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    with OrthancServer(tmp_path_factory.mktemp("orthanc"), stable_age=1) as server:
        yield server


@pytest.fixture(scope="module")
def stored(orthanc, tmp_path_factory):
    """The example CT series (20 slices of 512x512) uploaded once; returns (client, folder, study, series)."""
    folder, study_uid, series_uid = uploadable_series(dest=tmp_path_factory.mktemp("ct"))
    client = PacsClient(orthanc.url)
    ids = client.upload(folder)
    assert len(ids) == 20
    return client, folder, study_uid, series_uid


def test_lists_studies_and_series_with_modality(stored):
    client, _, study_uid, series_uid = stored
    assert study_uid in [s.study_uid for s in client.studies()]
    series = {s.series_uid: s for s in client.series(study=study_uid)}
    assert series[series_uid].modality == "CT"
    assert series[series_uid].num_instances == 20
    assert series_uid in [s.series_uid for s in client.series(modality="CT")]
    assert series_uid not in [s.series_uid for s in client.series(modality="MR")]
    info = client.series_info(series_uid)
    assert info.study_uid == study_uid and info.orthanc_id == client.find_series(series_uid)


def test_download_rest_and_wado_give_the_original_pixels(stored, tmp_path):
    client, folder, study_uid, series_uid = stored
    original = load_image(folder)
    rest = client.load_series(series_uid, tmp_path / "rest")
    wado = client.load_dicomweb_series(study_uid, series_uid, tmp_path / "wado")
    assert rest.shape == wado.shape == original.shape == (20, 512, 512)
    np.testing.assert_array_equal(rest.array, original.array)
    np.testing.assert_array_equal(wado.array, original.array)
    assert wado.metadata["SeriesInstanceUID"] == series_uid and wado.modality == "ct"
    assert len(list((tmp_path / "wado").iterdir())) == 20


def test_qido_search_by_uid(stored):
    client, _, study_uid, series_uid = stored
    studies = client.qido_studies(StudyInstanceUID=study_uid)
    assert [s.study_uid for s in studies] == [study_uid] and "CT" in studies[0].modalities
    series = client.qido_series(study_uid)
    assert [(s.series_uid, s.modality, s.num_instances) for s in series] == [(series_uid, "CT", 20)]
    assert client.qido_studies(StudyInstanceUID="1.2.3.4.5.999") == []


def test_change_feed_reports_new_series_once(orthanc, stored, tmp_path):
    client = stored[0]
    deadline = time.monotonic() + 15  # the fixture's own series turns stable StableAge after its upload:
    while stored[3] not in [s.series_uid for s in client.new_series(0)[0]] and time.monotonic() < deadline:
        time.sleep(0.3)  # wait for that, so its StableSeries event cannot land after `start`
    start = client.last_change()
    assert client.new_series(start, change_type="NewSeries") == ([], start)
    folder, _, series_uid = uploadable_series(dest=tmp_path)
    client.stow(sorted(folder.iterdir())[:3])  # DICOMweb STOW-RS this time
    found, after = client.new_series(start, change_type="NewSeries", modality="CT")
    assert [s.series_uid for s in found] == [series_uid] and found[0].num_instances == 3
    assert after > start
    assert client.new_series(after, change_type="NewSeries")[0] == []
    deadline = time.monotonic() + 15  # StableSeries arrives StableAge (1 s) after the last instance
    while not (stable := client.new_series(start)[0]) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert [s.series_uid for s in stable] == [series_uid]
    client.delete_series(series_uid)
    with pytest.raises(PacsError) as caught:
        client.series_info(series_uid)
    assert caught.value.status_code == 404


def test_unknown_uid_and_bad_input_raise_clear_errors(stored, tmp_path):
    client = stored[0]
    with pytest.raises(PacsError, match="no series with that UID") as caught:
        client.load_series("1.2.3.4.5.6.7", tmp_path)
    assert caught.value.status_code == 404 and isinstance(caught.value, OncoSegError)
    with pytest.raises(PacsError, match="neither a DICOM UID"):
        client.series_info("../../system")
    with pytest.raises(PacsError, match="400"):
        client.upload(b"not a dicom file")
    with pytest.raises(PacsError, match="not an http"):
        PacsClient("orthanc:8042")


def test_logs_hold_no_uids(stored, tmp_path, caplog):
    client, _, study_uid, series_uid = stored
    with caplog.at_level(logging.DEBUG, logger="oncoseg"):
        client.load_dicomweb_series(study_uid, series_uid, tmp_path)
        with pytest.raises(PacsError) as caught:
            client.wado_series(study_uid, "1.2.3.4.5.6.7", tmp_path / "none")
    assert "downloaded" in caplog.text or "retrieved" in caplog.text
    for text in (caplog.text, str(caught.value)):
        assert series_uid not in text and study_uid not in text and "1.2.3.4.5.6.7" not in text


def test_basic_auth(tmp_path):
    with OrthancServer(tmp_path, user="alice", password="s3cret") as server:
        with pytest.raises(PacsError) as caught:
            PacsClient(server.url).system()
        assert caught.value.status_code == 401
        assert PacsClient(server.url, auth=server.auth).system()["Name"] == "OncoSegTest"


class _Flaky(http.server.BaseHTTPRequestHandler):
    """Answers 503 to the first two requests, then 200 (a real HTTP server, for the retry logic)."""

    calls = 0

    def do_GET(self):
        type(self).calls += 1
        status = 503 if type(self).calls <= 2 else 200
        body = b'{"Name": "flaky"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_retries_transient_errors_with_backoff():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        start = time.monotonic()
        assert PacsClient(url, retries=3, backoff=0.05).system() == {"Name": "flaky"}
        assert _Flaky.calls == 3 and time.monotonic() - start >= 0.05 + 0.1
        _Flaky.calls = 0
        with pytest.raises(PacsUnavailableError, match="503 .* after 2 attempts"):
            PacsClient(url, retries=1, backoff=0.01).system()
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(PacsUnavailableError, match="cannot reach"):
        PacsClient(url, retries=1, backoff=0.01).system()


def test_parse_multipart():
    body = (
        b"--xy\r\nContent-Type: application/dicom\r\n\r\nAB\r\n--xy\r\nContent-Type: a\r\n\r\nC\r\n--xy--\r\n"
    )
    assert parse_multipart('multipart/related; type="application/dicom"; boundary=xy', body) == [b"AB", b"C"]
    with pytest.raises(PacsError, match="multipart"):
        parse_multipart("application/json", b"{}")
