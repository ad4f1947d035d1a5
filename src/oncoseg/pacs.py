"""A small PACS client: Orthanc's REST API and DICOMweb (QIDO-RS, WADO-RS, STOW-RS).

    from oncoseg.pacs import PacsClient

    pacs = PacsClient("http://127.0.0.1:8042", auth=("user", "password"))   # auth: (user, pw), a token or None
    for series in pacs.series(modality="CT"):
        print(series.series_uid, series.num_instances)
    image = pacs.load_series(series.series_uid, "downloaded/")               # a MedicalImage (LPS, [z, y, x])
    pacs.upload("rtstruct.dcm")                                              # store a file back
    changes = pacs.changes(since=0)                                          # Orthanc's change feed
    studies = pacs.qido_studies(StudyInstanceUID="1.2.3")                    # DICOMweb search
    image = pacs.load_dicomweb_series(study_uid, series_uid, "downloaded/")  # WADO-RS retrieval

Transient failures (connection errors, timeouts, HTTP 5xx) are retried with exponential backoff; what cannot
succeed (a bad URL, HTTP 4xx, an unknown UID) raises `PacsError`, and a PACS that stays unreachable raises
`PacsUnavailableError`, both `OncoSegError`s with a one-line message. Logs never contain patient identifiers:
UIDs are logged as short hashes.
"""

from __future__ import annotations

import io
import logging
import os
import re
import time
import uuid
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from oncoseg.errors import PacsError, PacsUnavailableError
from oncoseg.image import MedicalImage
from oncoseg.logs import hide_uids, uid_hash

log = logging.getLogger(__name__)

DICOM_MEDIA = "application/dicom"
DICOM_JSON = "application/dicom+json"
TRANSIENT_STATUS = range(500, 600)

# DICOM JSON tags used by QIDO-RS answers.
TAG_STUDY_UID = "0020000D"
TAG_SERIES_UID = "0020000E"
TAG_SOP_UID = "00080018"
TAG_MODALITY = "00080060"
TAG_SERIES_DESCRIPTION = "0008103E"
TAG_SERIES_NUMBER = "00200011"
TAG_NUM_SERIES_INSTANCES = "00201209"
TAG_STUDY_DATE = "00080020"
TAG_STUDY_DESCRIPTION = "00081030"
TAG_MODALITIES_IN_STUDY = "00080061"


@dataclass
class StudyInfo:
    study_uid: str
    orthanc_id: str | None = None
    date: str | None = None
    description: str | None = None
    modalities: tuple[str, ...] = ()
    num_series: int | None = None


@dataclass
class SeriesInfo:
    study_uid: str | None
    series_uid: str
    modality: str | None = None
    description: str | None = None
    number: str | None = None
    num_instances: int | None = None
    orthanc_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Change:
    """One entry of Orthanc's ``/changes`` feed (e.g. ``NewSeries``, ``StableSeries``, ``NewInstance``)."""

    seq: int
    change_type: str
    resource_type: str
    orthanc_id: str


@dataclass
class ChangeBatch:
    changes: list[Change]
    last: int
    done: bool


class PacsClient:
    """Talk to an Orthanc server (REST) and/or any DICOMweb server.

    ``url`` is the Orthanc base URL; ``dicomweb_url`` defaults to ``url + "/dicom-web"``. ``auth`` is
    ``(user, password)`` for HTTP basic auth, a string for a bearer token, or None.
    """

    def __init__(
        self,
        url: str,
        auth: tuple[str, str] | str | None = None,
        dicomweb_url: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
    ):
        url = (url or "").rstrip("/")
        if not re.match(r"^https?://[^/\s]+", url):
            raise PacsError(f"PACS URL {url!r} is not an http(s) URL (e.g. http://127.0.0.1:8042)")
        self.url = url
        self.dicomweb_url = (dicomweb_url or f"{url}/dicom-web").rstrip("/")
        self.retries = retries
        self.backoff = backoff
        headers = {}
        basic = None
        if isinstance(auth, str):
            headers["Authorization"] = f"Bearer {auth}"
        elif auth is not None:
            basic = tuple(auth)
        self._http = httpx.Client(timeout=timeout, auth=basic, headers=headers)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PacsClient:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ transport
    def request(self, method: str, url: str, **kwargs) -> httpx.Response:
        """One HTTP request with retries on connection errors and 5xx; `PacsError` on 4xx."""
        if not url.startswith("http"):
            url = f"{self.url}/{url.lstrip('/')}"
        where = _redact(url)
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(method, url, **kwargs)
            except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
                raise PacsError(f"bad PACS URL {where}: {exc}") from exc
            except httpx.TransportError as exc:
                problem = f"cannot reach the PACS at {where} ({type(exc).__name__})"
                status = None
            else:
                if response.status_code < 400:
                    return response
                status = response.status_code
                if status not in TRANSIENT_STATUS:
                    raise PacsError(
                        f"PACS answered {status} to {method} {where}: {hide_uids(_short(response.text))}",
                        status,
                    )
                problem = f"PACS answered {status} to {method} {where}"
            if attempt < self.retries:
                delay = self.backoff * 2**attempt
                log.warning("%s; retry %d/%d in %.1f s", problem, attempt + 1, self.retries, delay)
                time.sleep(delay)
        raise PacsUnavailableError(f"{problem} after {self.retries + 1} attempts", status)

    def get_json(self, path: str, **kwargs) -> Any:
        return self.request("GET", path, **kwargs).json()

    def system(self) -> dict[str, Any]:
        """Orthanc's ``/system`` (name, version, AET, ports): a cheap reachability check."""
        return self.get_json("/system")

    # ------------------------------------------------------------------ Orthanc REST: browse
    def studies(self) -> list[StudyInfo]:
        """All studies, without patient identifiers."""
        out = []
        for study in self.get_json("/studies", params={"expand": ""}):
            tags = study.get("MainDicomTags", {})
            out.append(
                StudyInfo(
                    study_uid=tags.get("StudyInstanceUID", ""),
                    orthanc_id=study["ID"],
                    date=tags.get("StudyDate"),
                    description=tags.get("StudyDescription"),
                    num_series=len(study.get("Series", [])),
                )
            )
        return out

    def series(self, study: str | None = None, modality: str | None = None) -> list[SeriesInfo]:
        """All series (or those of one study, by StudyInstanceUID or Orthanc ID), optionally of one modality."""
        if study is not None:
            study_id = self._orthanc_id(study, "Study")
            items = self.get_json(f"/studies/{study_id}/series")
            study_uids = {
                study_id: self.get_json(f"/studies/{study_id}")["MainDicomTags"]["StudyInstanceUID"]
            }
        else:
            items = self.get_json("/series", params={"expand": ""})
            study_uids = {
                s["ID"]: s.get("MainDicomTags", {}).get("StudyInstanceUID")
                for s in self.get_json("/studies", params={"expand": ""})
            }
        out = [_series_from_orthanc(item, study_uids.get(item.get("ParentStudy"))) for item in items]
        if modality:
            out = [s for s in out if (s.modality or "").upper() == modality.upper()]
        return out

    def series_info(self, series: str) -> SeriesInfo:
        """One series, by SeriesInstanceUID or Orthanc ID."""
        series_id = self._orthanc_id(series, "Series")
        item = self.get_json(f"/series/{series_id}")
        study = self.get_json(f"/series/{series_id}/study")
        return _series_from_orthanc(item, study.get("MainDicomTags", {}).get("StudyInstanceUID"))

    def find_study(self, study_uid: str) -> str:
        """The Orthanc ID of a StudyInstanceUID (`PacsError` if unknown)."""
        return self._lookup(study_uid, "Study")

    def find_series(self, series_uid: str) -> str:
        """The Orthanc ID of a SeriesInstanceUID (`PacsError` if unknown)."""
        return self._lookup(series_uid, "Series")

    def _lookup(self, uid: str, level: str) -> str:
        matches = self.request("POST", "/tools/lookup", content=uid.encode()).json()
        for match in matches:
            if match.get("Type") == level:
                return match["ID"]
        raise PacsError(f"no {level.lower()} with that UID (hash {uid_hash(uid)}) on the PACS", 404)

    def _orthanc_id(self, key: str, level: str) -> str:
        """Accept an Orthanc ID (``xxxxxxxx-xxxxxxxx-...``) or a DICOM UID (digits and dots)."""
        if re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{8}){4}", key):
            return key
        if not re.fullmatch(r"[0-9.]{1,64}", key):
            raise PacsError(f"{key!r} is neither a DICOM UID nor an Orthanc ID", 400)
        return self._lookup(key, level)

    # ------------------------------------------------------------------ Orthanc REST: transfer
    def download_series(self, series: str, folder: str | os.PathLike) -> Path:
        """Save every instance of a series (SeriesInstanceUID or Orthanc ID) as ``folder/NNNNN.dcm``."""
        series_id = self._orthanc_id(series, "Series")
        response = self.request("GET", f"/series/{series_id}/archive")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
            names = [n for n in archive.namelist() if not n.endswith("/")]
            for index, name in enumerate(sorted(names)):
                (folder / f"{index:05d}.dcm").write_bytes(archive.read(name))
        log.info("downloaded series %s: %d instances", uid_hash(series), len(names))
        return folder

    def load_series(
        self, series: str, folder: str | os.PathLike, modality: str | None = None
    ) -> MedicalImage:
        """Download a series into ``folder`` (kept: DICOM writers need the files) and load it."""
        from oncoseg.io import load_image

        return load_image(self.download_series(series, folder), modality=modality)

    def upload(self, data: bytes | str | os.PathLike | Iterable[bytes | str | os.PathLike]) -> list[str]:
        """Store DICOM instances (bytes, a file, a folder or several of these); returns their Orthanc IDs."""
        ids = []
        for payload in _payloads(data):
            answer = self.request(
                "POST", "/instances", content=payload, headers={"Content-Type": DICOM_MEDIA}
            ).json()
            ids.append(answer["ID"])
        log.info("uploaded %d instance(s)", len(ids))
        return ids

    def delete_series(self, series: str) -> None:
        self.request("DELETE", f"/series/{self._orthanc_id(series, 'Series')}")

    # ------------------------------------------------------------------ Orthanc REST: change feed
    def last_change(self) -> int:
        """The sequence number of the newest change (start watching from here to skip the past)."""
        return int(self.get_json("/changes", params={"last": ""})["Last"])

    def changes(self, since: int = 0, limit: int = 100) -> ChangeBatch:
        """Changes after sequence number ``since`` (``batch.last`` is the next ``since``)."""
        answer = self.get_json("/changes", params={"since": since, "limit": limit})
        changes = [
            Change(int(c["Seq"]), c["ChangeType"], c["ResourceType"], c["ID"]) for c in answer["Changes"]
        ]
        return ChangeBatch(changes, int(answer["Last"]), bool(answer["Done"]))

    def new_series(
        self, since: int = 0, change_type: str = "StableSeries", modality: str | None = None
    ) -> tuple[list[SeriesInfo], int]:
        """Series that appeared after ``since`` (all pages), and the sequence number to continue from.

        ``change_type="StableSeries"`` waits until Orthanc saw no new instance for ``StableAge`` seconds
        (the series is complete); ``"NewSeries"`` reports the first instance's arrival.
        """
        found, seen = [], set()
        while True:
            batch = self.changes(since)
            for change in batch.changes:
                if change.change_type == change_type and change.orthanc_id not in seen:
                    seen.add(change.orthanc_id)
                    try:
                        info = self.series_info(change.orthanc_id)
                    except PacsError as exc:
                        if exc.status_code != 404:
                            raise
                        continue  # deleted since
                    if modality is None or (info.modality or "").upper() == modality.upper():
                        found.append(info)
            since = max(since, batch.last)
            if batch.done or not batch.changes:
                return found, since

    # ------------------------------------------------------------------ DICOMweb
    def qido_studies(self, **filters: str) -> list[StudyInfo]:
        """QIDO-RS study search, e.g. ``qido_studies(StudyInstanceUID=uid)`` or ``ModalitiesInStudy="CT"``."""
        answer = self._qido(f"{self.dicomweb_url}/studies", filters)
        return [
            StudyInfo(
                study_uid=_value(item, TAG_STUDY_UID),
                date=_value(item, TAG_STUDY_DATE),
                description=_value(item, TAG_STUDY_DESCRIPTION),
                modalities=tuple(item.get(TAG_MODALITIES_IN_STUDY, {}).get("Value", [])),
            )
            for item in answer
        ]

    def qido_series(self, study_uid: str | None = None, **filters: str) -> list[SeriesInfo]:
        """QIDO-RS series search (of one study, or across studies), e.g. ``Modality="CT"``."""
        base = (
            f"{self.dicomweb_url}/studies/{study_uid}/series" if study_uid else f"{self.dicomweb_url}/series"
        )
        fields = {"includefield": f"{TAG_SERIES_DESCRIPTION},{TAG_NUM_SERIES_INSTANCES}"}
        return [
            SeriesInfo(
                study_uid=_value(item, TAG_STUDY_UID) or study_uid,
                series_uid=_value(item, TAG_SERIES_UID),
                modality=_value(item, TAG_MODALITY),
                description=_value(item, TAG_SERIES_DESCRIPTION),
                number=_str(_value(item, TAG_SERIES_NUMBER)),
                num_instances=_int(_value(item, TAG_NUM_SERIES_INSTANCES)),
            )
            for item in self._qido(base, {**fields, **filters})
        ]

    def _qido(self, url: str, params: dict[str, str]) -> list[dict]:
        response = self.request("GET", url, params=params, headers={"Accept": DICOM_JSON})
        return response.json() if response.content.strip() else []

    def wado_series(self, study_uid: str, series_uid: str, folder: str | os.PathLike) -> Path:
        """WADO-RS: save every instance of a series as ``folder/NNNNN.dcm``."""
        response = self.request(
            "GET",
            f"{self.dicomweb_url}/studies/{study_uid}/series/{series_uid}",
            # transfer-syntax=* : as stored (Orthanc cannot transcode e.g. JPEG 2000 without extra plugins).
            headers={"Accept": f'multipart/related; type="{DICOM_MEDIA}"; transfer-syntax=*'},
        )
        parts = parse_multipart(response.headers.get("Content-Type", ""), response.content)
        if not parts:
            raise PacsError(
                f"series (hash {uid_hash(series_uid)}) has no instances on the DICOMweb server", 404
            )
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for index, part in enumerate(parts):
            (folder / f"{index:05d}.dcm").write_bytes(part)
        log.info("retrieved series %s by WADO-RS: %d instances", uid_hash(series_uid), len(parts))
        return folder

    def load_dicomweb_series(
        self, study_uid: str, series_uid: str, folder: str | os.PathLike, modality: str | None = None
    ) -> MedicalImage:
        """WADO-RS retrieval into ``folder`` (kept), then `oncoseg.io.load_image`."""
        from oncoseg.io import load_image

        return load_image(self.wado_series(study_uid, series_uid, folder), modality=modality)

    def stow(self, data: bytes | str | os.PathLike | Iterable[bytes | str | os.PathLike]) -> dict:
        """STOW-RS: store DICOM instances through DICOMweb; returns the server's DICOM JSON answer."""
        boundary = uuid.uuid4().hex
        body = b"".join(
            f"--{boundary}\r\nContent-Type: {DICOM_MEDIA}\r\n\r\n".encode() + payload + b"\r\n"
            for payload in _payloads(data)
        )
        body += f"--{boundary}--\r\n".encode()
        response = self.request(
            "POST",
            f"{self.dicomweb_url}/studies",
            content=body,
            headers={
                "Content-Type": f'multipart/related; type="{DICOM_MEDIA}"; boundary={boundary}',
                "Accept": DICOM_JSON,
            },
        )
        return response.json() if response.content.strip() else {}


def parse_multipart(content_type: str, body: bytes) -> list[bytes]:
    """The part bodies of a ``multipart/related`` message (what WADO-RS returns)."""
    match = re.search(r'boundary="?([^";,\s]+)"?', content_type)
    if not match:
        raise PacsError(f"expected a multipart answer from the DICOMweb server, got {content_type!r}")
    delimiter = b"--" + match.group(1).encode()
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        header_end = chunk.find(b"\r\n\r\n")
        if header_end < 0:
            continue
        payload = chunk[header_end + 4 :]
        parts.append(payload[:-2] if payload.endswith(b"\r\n") else payload)
    return parts


def _payloads(data) -> Iterable[bytes]:
    items = [data] if isinstance(data, (bytes, bytearray, str, os.PathLike)) else list(data)
    for item in items:
        if isinstance(item, (bytes, bytearray)):
            yield bytes(item)
            continue
        path = Path(item)
        if path.is_dir():
            yield from (p.read_bytes() for p in sorted(path.iterdir()) if p.is_file())
        elif path.is_file():
            yield path.read_bytes()
        else:
            raise PacsError(f"{path}: no such DICOM file or folder to upload")


def _series_from_orthanc(item: dict, study_uid: str | None) -> SeriesInfo:
    tags = item.get("MainDicomTags", {})
    return SeriesInfo(
        study_uid=study_uid,
        series_uid=tags.get("SeriesInstanceUID", ""),
        modality=tags.get("Modality"),
        description=tags.get("SeriesDescription"),
        number=tags.get("SeriesNumber"),
        num_instances=len(item.get("Instances", [])),
        orthanc_id=item.get("ID"),
    )


def _value(item: dict, tag: str) -> Any:
    values = item.get(tag, {}).get("Value") or [None]
    return values[0]


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _redact(url: str) -> str:
    """The URL without credentials and without its query (which may hold UIDs)."""
    url = re.sub(r"//[^/@]*@", "//", url.split("?")[0])
    return hide_uids(url)


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."
