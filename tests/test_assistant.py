"""The silent assistant against a real Orthanc: end to end, kill -9 and restart, malformed series, PACS outage,
C-STORE reception; plus the state store and audit log on their own."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest
from orthanc import OrthancServer, free_port, uploadable_series
from pydicom.encaps import encapsulate, generate_frames
from test_nnunet_engine import example, model  # noqa: F401 - the tiny nnU-Net model fixture, reused

from oncoseg.assistant import Assistant, AssistantConfig, AuditLog, StateStore, scrub, series_key, uid_tag
from oncoseg.assistant.scp import StoreSCP
from oncoseg.cli import main
from oncoseg.pacs import PacsClient

# atlas only: the service logic, not the model, is tested; the gallbladder lies outside the example's slab
FAST = ["--no-refine", "--organs", "Liver,Spleen,Gallbladder"]


# ---------------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    with OrthancServer(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture(scope="module")
def example_series(shared_data):
    return shared_data / "totalsegmentator-example" / "example_ct_dicom"


def upload_copy(client: PacsClient, source: Path, dest: Path) -> tuple[str, str]:
    """Upload a fresh copy (new UIDs) of ``source``; returns (study UID, series UID)."""
    folder, study, series = uploadable_series(source, dest)
    client.upload(folder)
    return study, series


def rtstructs_for(client: PacsClient, series_uid: str) -> list[pydicom.Dataset]:
    """RTSTRUCT instances in the PACS whose referenced series is ``series_uid``."""
    found = []
    for info in client.series(modality="RTSTRUCT"):
        for instance in client.get_json(f"/series/{info.orthanc_id}/instances"):
            data = client.request("GET", f"/instances/{instance['ID']}/file").content
            ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
            refs = {
                s.SeriesInstanceUID
                for f in ds.ReferencedFrameOfReferenceSequence
                for st in f.RTReferencedStudySequence
                for s in st.RTReferencedSeriesSequence
            }
            if series_uid in refs:
                found.append(ds)
    return found


ATLAS = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalsegmentator-example"


def start_assistant(orthanc, workdir: Path, *extra: str) -> subprocess.Popen:
    """The real ``oncoseg assistant`` command as a subprocess (stopped by PID by the caller)."""
    command = [
        sys.executable, "-c", "import sys; from oncoseg.cli import main; sys.exit(main())",
        "assistant", "--pacs", orthanc.url, "--state", str(workdir / "state.db"), "--atlas", str(ATLAS),
        "--interval", "0.5", "--from-start", *extra,
    ]  # fmt: skip
    log = open(workdir / "assistant.log", "a", encoding="utf-8")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> int:
    if process.poll() is None:
        os.kill(process.pid, sig)
    return process.wait(timeout=30)


def status_of(workdir: Path, series_uid: str) -> tuple[str, int] | None:
    db = workdir / "state.db"
    if not db.exists():
        return None
    with sqlite3.connect(db, timeout=10) as connection:
        try:
            row = connection.execute(
                "SELECT status, attempts FROM series WHERE key = ?", (series_key(series_uid),)
            ).fetchone()
        except sqlite3.OperationalError:  # table not created yet
            return None
    return tuple(row) if row else None


def wait_for(
    condition, timeout: float, what: str, process: subprocess.Popen | None = None, log: Path | None = None
):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            text = log.read_text(encoding="utf-8") if log else ""
            raise AssertionError(
                f"assistant exited ({process.returncode}) while waiting for {what}:\n{text[-3000:]}"
            )
        time.sleep(0.2)
    text = log.read_text(encoding="utf-8") if log else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{text[-3000:]}")


def audit_records(workdir: Path, series_uid: str) -> list[dict]:
    return [r for r in AuditLog(workdir / "audit.jsonl").records() if r["series"] == uid_tag(series_uid)]


# ---------------------------------------------------------------------------------------------- unit
def test_state_store_claims_once_and_retries_crashed_work(tmp_path):
    state = StateStore(tmp_path / "state.db", max_attempts=2)
    assert state.claim("1.2.3", "orthanc-id") is True
    assert state.claim("1.2.3") is True  # found "processing": a crash left it; retried (attempt 2)
    assert state.claim("1.2.3") is False  # attempts exhausted: given up, marked failed
    assert state.get("1.2.3").status == "failed"
    assert state.claim("4.5.6") is True
    state.finish("4.5.6", "done")
    state.set_cursor(42)
    state.close()

    reopened = StateStore(tmp_path / "state.db")  # what a restart sees
    assert reopened.claim("4.5.6") is False
    assert reopened.get_cursor() == 42
    assert reopened.counts() == {"pending": 0, "processing": 0, "done": 1, "failed": 1}
    assert reopened.claim("7.8.9") is True
    reopened.release("7.8.9", "PACS down")
    assert [s.status for s in reopened.unfinished()] == ["pending"]
    # no UIDs in the file: keys are SHA-256 hashes
    assert b"7.8.9" not in (tmp_path / "state.db").read_bytes()


def test_a_series_that_keeps_crashing_is_given_up_and_audited(tmp_path):
    from oncoseg.pacs import SeriesInfo

    assistant = Assistant(AssistantConfig("http://127.0.0.1:9", state=tmp_path / "state.db", max_attempts=1))
    assert assistant.state.claim("1.2.3.4", "x")  # the attempt during which the process died
    info = SeriesInfo("1.2.3", "1.2.3.4", "CT")
    assert assistant.handle(info) == "failed"  # no PACS needed: decided from the state alone
    assert assistant.handle(info) == "skipped"
    (record,) = AuditLog(tmp_path / "audit.jsonl").records()
    assert record["outcome"] == "failed" and "gave up" in record["reason"]


def test_audit_log_and_scrub_hide_uids(tmp_path):
    uid = "1.2.826.0.1.3680043.8.498.12345678901234567890"
    assert uid not in scrub(f"cannot read {uid}/00001.dcm")
    log = AuditLog(tmp_path / "audit.jsonl")
    log.write(uid, "done", model="litemedsam", timings_s={"total": 1.0})
    with open(tmp_path / "audit.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"half a line')  # what a kill -9 during a write may leave
    (record,) = log.records()
    assert record["series"] == uid_tag(uid) and len(record["series"]) == 16
    assert record["model"] == "litemedsam" and record["oncoseg_version"]
    assert uid not in (tmp_path / "audit.jsonl").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------- service
@pytest.mark.service
def test_kill_9_and_restart_process_each_series_exactly_once(orthanc, example_series, tmp_path):
    client = PacsClient(orthanc.url)
    study_a, series_a = upload_copy(client, example_series, tmp_path / "a")
    work = tmp_path / "assistant"
    work.mkdir()
    log = work / "assistant.log"

    first = start_assistant(orthanc, work, *FAST)
    try:  # killed while it works on the series
        wait_for(
            lambda: (status_of(work, series_a) or ("",))[0] == "processing", 120, "processing", first, log
        )
    finally:
        stop(first, signal.SIGKILL)
    assert status_of(work, series_a) == ("processing", 1)

    second = start_assistant(orthanc, work, *FAST)
    try:  # the restarted assistant retries the interrupted series
        wait_for(
            lambda: (status_of(work, series_a) or ("",))[0] == "done", 180, "done after restart", second, log
        )
    finally:
        stop(second, signal.SIGKILL)  # killed again, this time after the work
    assert status_of(work, series_a) == ("done", 2)

    third = start_assistant(orthanc, work, *FAST)
    try:  # a new series proves the third run is working; the first one must not be touched again
        _, series_b = upload_copy(client, example_series, tmp_path / "b")
        wait_for(lambda: (status_of(work, series_b) or ("",))[0] == "done", 180, "second series", third, log)
    finally:
        code = stop(third)
    assert code == 0  # SIGTERM: a clean stop
    answers = rtstructs_for(client, series_a)
    assert len(answers) == 1, f"{len(answers)} RTSTRUCTs for one series"
    assert answers[0].StudyInstanceUID == study_a
    assert {r.ROIName for r in answers[0].StructureSetROISequence} == {"Liver", "Spleen"}
    (record,) = audit_records(work, series_a)
    assert record["outcome"] == "done" and set(record["confidence"]) == {"Liver", "Spleen"}
    assert all(0 < c["estimate"] <= 1 and c["reasons"] for c in record["confidence"].values())
    assert (
        list(record["not_drawn"]) == ["Gallbladder"]
        and "outside the scan" in record["not_drawn"]["Gallbladder"]
    )
    assert set(record["review_first"]) == {n for n, c in record["confidence"].items() if c["review"]}
    assert len(rtstructs_for(client, series_b)) == 1
    text = log.read_text(encoding="utf-8")
    assert text.count("ready: watching the PACS") == 3  # one per start, once it is listening
    assert series_a not in text and "ONCOSEG-TEST" not in text and "Phantom" not in text


@pytest.mark.service
def test_crash_between_upload_and_bookkeeping_does_not_duplicate(orthanc, example_series, tmp_path):
    """The narrowest window: the RTSTRUCT was stored, then the process died before recording "done"."""
    client = PacsClient(orthanc.url)
    _, series = upload_copy(client, example_series, tmp_path / "s")
    info = client.series_info(series)
    config = AssistantConfig(orthanc.url, state=tmp_path / "a" / "state.db", organs=["Liver"], refine=False)
    crashed = Assistant(config)
    assert crashed.state.claim(series, info.orthanc_id)
    crashed._process(info, {})  # uploads the RTSTRUCT; "done" is never written
    assert len(rtstructs_for(client, series)) == 1

    restarted = Assistant(config)
    (entry,) = restarted.state.unfinished()
    assert entry.status == "processing"
    assert restarted.handle(info) == "done"
    assert len(rtstructs_for(client, series)) == 1
    (record,) = AuditLog(config.audit_path).records()
    assert "already" in record["note"]


@pytest.mark.service
def test_malformed_series_are_logged_and_skipped(orthanc, example_series, tmp_path):
    client = PacsClient(orthanc.url)
    # (a) a "CT" series of one slice: not a volume
    folder, _, series_single = uploadable_series(example_series, tmp_path / "single-src")
    for path in sorted(folder.iterdir())[1:]:
        path.unlink()
    client.upload(folder)
    # (b) a series with one corrupt instance (its JPEG 2000 stream cut short; the file itself parses)
    folder, _, series_corrupt = uploadable_series(example_series, tmp_path / "corrupt")
    victim = sorted(folder.iterdir())[7]
    ds = pydicom.dcmread(victim)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) // 3]])
    ds.save_as(victim)
    client.upload(folder)
    # (c) then a good one
    _, series_good = upload_copy(client, example_series, tmp_path / "good")

    work = tmp_path / "assistant"
    work.mkdir()
    log = work / "assistant.log"
    process = start_assistant(orthanc, work, *FAST)
    try:
        wait_for(
            lambda: (status_of(work, series_good) or ("",))[0] == "done", 180, "good series", process, log
        )
    finally:
        code = stop(process)
    assert code == 0
    for uid in (series_single, series_corrupt):
        assert status_of(work, uid)[0] == "failed"
        (record,) = audit_records(work, uid)
        assert record["outcome"] == "failed" and record["reason"], record
        assert len(rtstructs_for(client, uid)) == 0
    assert "Error" in audit_records(work, series_corrupt)[0]["reason"]
    text = log.read_text(encoding="utf-8") + (work / "audit.jsonl").read_text(encoding="utf-8")
    for uid in (series_single, series_corrupt, series_good):
        assert uid not in text
    assert "ONCOSEG-TEST" not in text and "Phantom" not in text
    assert "failed" in log.read_text(encoding="utf-8")


@pytest.mark.service
def test_pacs_outage_is_waited_out(example_series, tmp_path, caplog):
    """Orthanc stops mid-run: the assistant backs off instead of crashing, and carries on when it returns."""
    server = OrthancServer(tmp_path / "orthanc").start()
    assistant = Assistant(
        AssistantConfig(
            server.url,
            state=tmp_path / "a" / "state.db",
            organs=["Liver"],
            refine=False,
            interval=0.2,
            max_backoff=1.0,
        ),
        client=PacsClient(server.url, retries=1, backoff=0.05),
    )
    thread = threading.Thread(target=assistant.run, daemon=True)
    try:
        assistant.prepare()
        thread.start()
        time.sleep(1.0)
        server.stop()  # workdir is ours: storage and ports are kept for the restart
        time.sleep(2.0)
        assert thread.is_alive()
        server.start()
        upload_copy(PacsClient(server.url), example_series, tmp_path / "s")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (assistant.state.counts()["done"] == 0):
            time.sleep(0.3)
    finally:
        assistant.stop()
        thread.join(timeout=60)
        server.stop()
    assert not thread.is_alive()
    assert "PACS unavailable" in caplog.text
    assert [r["outcome"] for r in AuditLog(tmp_path / "a" / "audit.jsonl").records()] == ["done"]


@pytest.mark.service
def test_cstore_reception(orthanc, example_series, tmp_path):
    """Series sent by DICOM C-STORE to the assistant's SCP are contoured; the RTSTRUCT goes to the PACS."""
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    folder, study, series = uploadable_series(example_series, tmp_path / "send")
    assistant = Assistant(
        AssistantConfig(orthanc.url, state=tmp_path / "a" / "state.db", organs=["Liver"], refine=False)
    )
    assistant.prepare()
    scp = StoreSCP(assistant, port=free_port(), stable_age=1.0).start()
    try:
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(
            CTImageStorage, pydicom.dcmread(next(folder.iterdir())).file_meta.TransferSyntaxUID
        )
        association = ae.associate("127.0.0.1", scp.port, ae_title="ONCOSEG")
        assert association.is_established
        statuses = [association.send_c_store(pydicom.dcmread(p)).Status for p in sorted(folder.iterdir())]
        association.release()
        assert statuses == [0] * 20
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and assistant.state.counts()["done"] == 0:
            assistant.poll()
            time.sleep(0.3)
    finally:
        scp.stop()
    (answer,) = rtstructs_for(PacsClient(orthanc.url), series)
    assert answer.StudyInstanceUID == study
    assert not any((tmp_path / "a" / "inbox").iterdir())  # received files are removed once done


@pytest.mark.service
@pytest.mark.slow
def test_end_to_end_default_path(orthanc, example_series, tmp_path):
    """The real default path (every organ the atlas has, model refinement) on the real example series."""
    client = PacsClient(orthanc.url)
    study, series = upload_copy(client, example_series, tmp_path / "s")
    work = tmp_path / "assistant"
    work.mkdir()
    process = start_assistant(orthanc, work)
    try:
        wait_for(
            lambda: (status_of(work, series) or ("",))[0] == "done",
            600,
            "done",
            process,
            work / "assistant.log",
        )
    finally:
        code = stop(process)
    assert code == 0
    (answer,) = rtstructs_for(client, series)
    assert answer.StudyInstanceUID == study and answer.Modality == "RTSTRUCT"
    names = {r.ROIName for r in answer.StructureSetROISequence}
    assert {"Liver", "Spleen", "A_Aorta"} <= names
    (record,) = audit_records(work, series)
    assert record["model"] == "litemedsam" and "Liver" in record["refined"]
    # organs not drawn are listed with the reason (the kidneys lie below this slab); drawn ones carry confidence
    assert {"Kidney_L", "Kidney_R", "Gallbladder"} <= set(record["not_drawn"]) and not names & set(
        record["not_drawn"]
    )
    assert set(record["confidence"]) == names
    descriptions = [r.get("ROIDescription", "") for r in answer.StructureSetROISequence]
    assert all("Onco-Seg confidence" in d for d in descriptions)
    print(json.dumps(record["timings_s"]))
    path = tmp_path / "answer.dcm"
    answer.save_as(path)
    check = subprocess.run(["dciodvfy", str(path)], check=False, capture_output=True, encoding="utf-8")
    errors = [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]
    assert not errors, errors


@pytest.mark.service
def test_nnunet_engine_answers_a_series(orthanc, example_series, model, tmp_path, capsys):  # noqa: F811
    """``--engine nnunet --model DIR [--label-map]`` runs `oncoseg contour`'s nnU-Net engine (the tiny model of
    tests/test_nnunet_engine.py): its organs come back as an RTSTRUCT in the same study, an organ the model has
    no label for is listed as not drawn, and the audit names the engine. Bad settings stop the start-up."""
    client = PacsClient(orthanc.url)
    study, series = upload_copy(client, example_series, tmp_path / "s")
    label_map = tmp_path / "map.json"
    label_map.write_text(json.dumps({"autochthon_left": None}), encoding="utf-8")  # leave that label out
    state = tmp_path / "a" / "state.db"
    base = ["assistant", "--pacs", orthanc.url, "--state", str(state), "--organs", "Liver,Spleen,Kidney_L"]
    nnunet = ["--engine", "nnunet", "--model", str(model), "--label-map", str(label_map)]
    # the command accepts the engine's options, checks the model folder and polls once (nothing new yet)
    assert main([*base, *nnunet, "--once"]) == 0
    for extra, message in (
        (["--engine", "nnunet"], "needs a trained nnU-Net v2 model folder"),
        (["--model", str(model)], "are for the nnunet engine"),
        ([*nnunet, "--no-refine"], "are for the atlas engine"),
        (["--engine", "nnunet", "--model", str(tmp_path)], "is not an nnU-Net v2 model folder"),
        ([*nnunet, "--organs", "Liver,Kidney_M"], "unknown organ"),
    ):
        assert main([*base, *extra, "--once"]) == 2, extra
        error = capsys.readouterr().err
        assert message in error and error.count("\n") == 1, error

    config = AssistantConfig(
        orthanc.url, state=state, organs=["Liver", "Spleen", "Kidney_L"], engine="nnunet", model=[str(model)],
        label_map=str(label_map),
    )  # fmt: skip
    assistant = Assistant(config)
    assistant.prepare()
    assert assistant.handle(client.series_info(series)) == "done"
    (answer,) = rtstructs_for(client, series)
    assert answer.StudyInstanceUID == study
    names = {r.ROIName for r in answer.StructureSetROISequence}
    assert "Liver" in names <= {"Liver", "Spleen"}  # the tiny model may find no spleen in this slab
    (record,) = AuditLog(config.audit_path).records()
    assert record["engine"] == "nnunet" and record["model"].startswith("nnunet: ")
    assert (
        set(record["not_drawn"]) == {"Liver", "Spleen", "Kidney_L"} - names
    )  # every organ asked is accounted
    assert "no label" in record["not_drawn"]["Kidney_L"] and set(record["confidence"]) == names
