"""Receive series by DICOM C-STORE (pynetdicom) and hand complete CT series to the assistant.

Instances are written to ``inbox/<series tag>/`` beside the state file as they arrive; a series counts as
complete when nothing new arrived for ``stable_age`` seconds (Orthanc's StableSeries rule). The assistant's
loop then processes it like a series found in the PACS (same state file, so it is done exactly once) and stores
the RTSTRUCT into the PACS given by ``--pacs``. Series left in the inbox by a crash are picked up at start.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom

from oncoseg.assistant.audit import uid_tag

log = logging.getLogger("oncoseg.assistant.scp")

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"


@dataclass
class ReceivedSeries:
    series_uid: str
    study_uid: str | None
    modality: str | None
    folder: Path
    last_arrival: float


class StoreSCP:
    def __init__(
        self, assistant, host: str = "127.0.0.1", port: int = 11112, aet: str = "ONCOSEG", stable_age=3.0
    ):
        self.assistant = assistant
        self.host, self.port, self.aet = host, port, aet
        self.stable_age = stable_age
        self.inbox = Path(assistant.config.state).with_name("inbox")
        self.inbox.mkdir(parents=True, exist_ok=True)
        self._series: dict[str, ReceivedSeries] = {}
        self._lock = threading.Lock()
        self._server = None
        assistant.sources.append(self.ready)

    def _recover(self) -> None:
        """Untracked series folders (left by an earlier run, or kept for a retry): treat them as just received."""
        for folder in sorted(p for p in self.inbox.iterdir() if p.is_dir() and p.name not in self._series):
            files = sorted(folder.glob("*.dcm"))
            if not files:
                shutil.rmtree(folder, ignore_errors=True)
                continue
            try:
                ds = pydicom.dcmread(files[0], stop_before_pixels=True)
            except Exception:  # noqa: BLE001 - an unreadable leftover is dropped, not fatal
                shutil.rmtree(folder, ignore_errors=True)
                continue
            self._series[folder.name] = ReceivedSeries(
                str(ds.SeriesInstanceUID), ds.get("StudyInstanceUID"), ds.get("Modality"), folder, time.time()
            )

    def start(self) -> StoreSCP:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.aet)
        for context in StoragePresentationContexts:  # every storage class, compressed or not, kept as sent
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        self._server = ae.start_server(
            (self.host, self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        log.info("C-STORE SCP %s listening on %s:%d", self.aet, self.host, self.port)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_store(self, event) -> int:
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            series_uid = str(ds.SeriesInstanceUID)
            tag = uid_tag(series_uid)
            folder = self.inbox / tag
            with self._lock:  # the inbox scan in ready() must not see a half-made folder
                folder.mkdir(parents=True, exist_ok=True)
                target = folder / f"{uid_tag(str(ds.SOPInstanceUID))}.dcm"
                tmp = folder / f".tmp-{target.name}.part"
                ds.save_as(tmp, enforce_file_format=True)
                tmp.replace(target)
                self._series[tag] = ReceivedSeries(
                    series_uid, ds.get("StudyInstanceUID"), ds.get("Modality"), folder, time.time()
                )
            return 0x0000
        except Exception as exc:  # noqa: BLE001 - answer the sender with a failure status, keep serving
            log.warning("C-STORE of an instance failed: %s", type(exc).__name__)
            return 0xC210  # cannot understand

    def ready(self) -> list[tuple[object, Path]]:
        """Series complete for ``stable_age`` seconds, as (SeriesInfo, folder); non-CT series are dropped."""
        from oncoseg.pacs import SeriesInfo

        now, out = time.time(), []
        with self._lock:
            self._recover()
            for tag, item in list(self._series.items()):
                if now - item.last_arrival < self.stable_age:
                    continue
                del self._series[tag]
                if (item.modality or "").upper() != "CT":
                    shutil.rmtree(item.folder, ignore_errors=True)
                    continue
                out.append((SeriesInfo(item.study_uid, item.series_uid, "CT"), item.folder))
        return out
