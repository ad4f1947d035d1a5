"""Start and stop a real Orthanc PACS (Debian ``orthanc`` + ``orthanc-dicomweb``) for tests.

Usage::

    from orthanc import OrthancServer

    with OrthancServer() as orthanc:        # or OrthancServer(user="alice", password="secret")
        client = PacsClient(orthanc.url, auth=orthanc.auth)
        ...

    # as a pytest fixture (in a conftest.py or a test file)
    @pytest.fixture(scope="module")
    def orthanc(tmp_path_factory):
        with OrthancServer(tmp_path_factory.mktemp("orthanc")) as server:
            yield server

The server gets its own JSON configuration in a temporary folder: free loopback HTTP and DICOM ports,
storage in that folder, ``RemoteAccessAllowed`` false, the DICOMweb plugin at ``/dicom-web/``. It is stopped by
its PID (SIGTERM, then SIGKILL). A missing binary or plugin raises ``RuntimeError`` with the install command, so a
test fails loudly instead of skipping.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pydicom
from pydicom.uid import generate_uid

ORTHANC_BINARY = "/usr/sbin/Orthanc"
EXAMPLE_CT_DICOM = (
    Path(__file__).resolve().parents[2] / "shared/data/totalsegmentator-example/example_ct_dicom"
)
INSTALL_HINT = "install it with: apt-get install -y orthanc orthanc-dicomweb (see scripts/system-deps.sh)"


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dicomweb_plugin() -> Path:
    """The DICOMweb plugin library installed by the ``orthanc-dicomweb`` package."""
    try:
        listing = subprocess.run(
            ["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, encoding="utf-8", check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError) as error:
        raise RuntimeError(f"the orthanc-dicomweb package is not installed: {INSTALL_HINT}") from error
    libraries = [Path(p) for p in listing if ".so" in Path(p).name and Path(p).is_file()]
    if not libraries:
        raise RuntimeError(f"no plugin library found in orthanc-dicomweb: {INSTALL_HINT}")
    return min(libraries, key=lambda p: "/plugins/" not in str(p))


def stop_process(process: subprocess.Popen | None, grace: float = 10.0) -> None:
    """SIGTERM by PID, then SIGKILL if it has not ended after ``grace`` seconds."""
    if process is None or process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def upload_example_ct(orthanc: OrthancServer, dest: str | os.PathLike) -> str:
    """Store a fresh copy of the example CT series (see `uploadable_series`) in ``orthanc``; its series UID."""
    folder, _study_uid, series_uid = uploadable_series(dest=dest)
    for path in sorted(folder.iterdir()):
        httpx.post(f"{orthanc.url}/instances", content=path.read_bytes()).raise_for_status()
    return series_uid


def uploadable_series(
    source: str | os.PathLike = EXAMPLE_CT_DICOM,
    dest: str | os.PathLike | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> tuple[Path, str, str]:
    """Copy a DICOM series into ``dest`` with the UIDs Orthanc requires filled in; returns (folder, study, series).

    The anonymised example CT series (``../shared/data/totalsegmentator-example/example_ct_dicom``) has empty
    Study/Series/SOP UIDs, which Orthanc refuses. Each call makes new Study and Series UIDs (unless given), so
    the copy looks like a new series to a PACS; every instance gets a new SOP Instance UID.
    """
    source = Path(source)
    dest = Path(dest or tempfile.mkdtemp(prefix="series-"))
    dest.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    for index, path in enumerate(sorted(p for p in source.iterdir() if p.is_file())):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPClassUID = ds.SOPClassUID or ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID, ds.PatientName = "ONCOSEG-TEST", "Test^Phantom"
        ds.SeriesNumber = ds.get("SeriesNumber") or 1
        ds.save_as(dest / f"{index:05d}.dcm")
    return dest, study_uid, series_uid


class OrthancServer:
    """A throw-away Orthanc on 127.0.0.1 (context manager; ``start()``/``stop()`` also work)."""

    def __init__(
        self,
        workdir: str | os.PathLike | None = None,
        user: str | None = None,
        password: str | None = None,
        stable_age: int = 2,
        startup_timeout: float = 30.0,
    ):
        if not Path(ORTHANC_BINARY).is_file():
            raise RuntimeError(f"{ORTHANC_BINARY} not found: {INSTALL_HINT}")
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="orthanc-"))
        self.user, self.password = user, password
        self.stable_age = stable_age
        self.startup_timeout = startup_timeout
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.aet = "ONCOSEGTEST"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """Base URL of the REST API, e.g. ``http://127.0.0.1:40123``."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def auth(self) -> tuple[str, str] | None:
        return (self.user, self.password) if self.user else None

    def config(self) -> dict:
        storage = self.workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "OncoSegTest",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": self.user is not None,
            "HttpThreadsCount": 10,
            "ConcurrentJobs": 1,
            "StableAge": self.stable_age,
            "SaveJobs": False,
            "OverwriteInstances": True,
            "Plugins": [str(dicomweb_plugin())],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Ssl": False},
        }
        if self.user:
            config["RegisteredUsers"] = {self.user: self.password or ""}
        return config

    def start(self) -> OrthancServer:
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(self.config(), indent=2), encoding="utf-8")
        self._log = open(self.workdir / "orthanc.log", "w", encoding="utf-8")  # noqa: SIM115
        self.process = subprocess.Popen(
            [ORTHANC_BINARY, str(config_path)], stdout=self._log, stderr=subprocess.STDOUT, cwd=self.workdir
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(
                    f"Orthanc exited at startup (code {self.process.returncode}):\n{self.log()}"
                )
            try:
                if httpx.get(f"{self.url}/system", auth=self.auth, timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer /system within {self.startup_timeout} s:\n{self.log()}")

    def log(self) -> str:
        path = self.workdir / "orthanc.log"
        return path.read_text(encoding="utf-8", errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM by PID, then SIGKILL after 10 s; removes the temporary folder if we made it."""
        stop_process(self.process, grace=10)
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> OrthancServer:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
