"""The silent assistant: watch a PACS for new CT series, contour their organs at risk, store an RTSTRUCT back.

    from oncoseg.assistant import Assistant, AssistantConfig

    Assistant(AssistantConfig(pacs_url="http://127.0.0.1:8042", state="assistant/state.db")).run()

Orthanc's ``/changes`` feed is polled for ``StableSeries`` events (a series that received no new instance for
Orthanc's ``StableAge`` seconds, 60 by default: the delay between the last instance and the contouring; see
docs/contour.md); each CT series is claimed in the state file, downloaded, contoured and answered with an
RTSTRUCT in the same study. The audit record of a series lists each organ's confidence, the organs to review
first and the organs asked for and not drawn, with the reason. The RTSTRUCT's Series and SOP Instance UIDs are derived from the source series UID,
so a series re-processed after a crash (killed after the upload but before "done" was recorded) overwrites
the same object instead of adding a second one, and a retry first checks whether the PACS already has it.
"""

from __future__ import annotations

import logging
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import generate_uid

from oncoseg import __version__
from oncoseg.assistant.audit import AuditLog, scrub, uid_tag
from oncoseg.assistant.state import StateStore
from oncoseg.errors import OncoSegError

log = logging.getLogger("oncoseg.assistant")


@dataclass
class AssistantConfig:
    pacs_url: str
    state: str | Path = "oncoseg-assistant/state.db"
    audit: str | Path | None = None  # default: audit.jsonl beside the state file
    auth: tuple[str, str] | str | None = None
    interval: float = 5.0  # seconds between polls of the change feed
    organs: list[str] | None = None
    atlas: str | None = None
    refine: bool = True
    checkpoint: str | None = None  # fine-tuned weights of the refining model (see `ModelSpec`)
    engine: str = "atlas"  # or "nnunet": the user's nnU-Net v2 model folder(s) in `model` (docs/nnunet.md)
    model: list[str] | None = None
    label_map: str | None = None  # nnunet: JSON file, label value or name → TG-263 name
    from_start: bool = False  # first run: also process series already in the PACS
    max_attempts: int = 3
    max_backoff: float = 60.0
    workdir: str | Path | None = None  # where series are downloaded (a temporary folder per series)

    @property
    def audit_path(self) -> Path:
        return Path(self.audit) if self.audit else Path(self.state).with_name("audit.jsonl")


def result_uids(series_uid: str) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) of the RTSTRUCT answering ``series_uid``: the same every time."""
    return (
        generate_uid(entropy_srcs=["oncoseg-assistant-rtstruct-series", series_uid]),
        generate_uid(entropy_srcs=["oncoseg-assistant-rtstruct-sop", series_uid]),
    )


def stamp_uids(path: Path, series_uid: str) -> str:
    """Give the RTSTRUCT at ``path`` its derived Series and SOP Instance UIDs; returns the SOP Instance UID."""
    new_series, new_sop = result_uids(series_uid)
    ds = pydicom.dcmread(path)
    ds.SeriesInstanceUID = new_series
    ds.SOPInstanceUID = new_sop
    ds.file_meta.MediaStorageSOPInstanceUID = new_sop
    tmp = path.with_name(f".tmp.{path.name}")
    ds.save_as(tmp, enforce_file_format=True)
    tmp.replace(path)
    return new_sop


class Assistant:
    def __init__(self, config: AssistantConfig, client=None):
        from oncoseg.pacs import PacsClient

        self.config = config
        self.client = client or PacsClient(config.pacs_url, auth=config.auth)
        self.state = StateStore(config.state, max_attempts=config.max_attempts)
        self.audit = AuditLog(config.audit_path)
        self._stop = threading.Event()
        self._atlas = None
        self._predictor = None
        self.sources: list = []  # callables giving (SeriesInfo, folder) of series received locally (C-STORE)

    def prepare(self) -> None:
        """Load the atlas and the model (or check the nnU-Net model folders) and the organ names now, so a bad
        setting stops the start-up instead of failing every series."""
        from oncoseg.contour import load_atlas, resolve_organs
        from oncoseg.contour.pipeline import ENGINES

        config = self.config
        if config.engine not in ENGINES:
            raise OncoSegError(f"unknown engine {config.engine!r}; use one of {', '.join(ENGINES)}")
        if config.engine == "nnunet" and (config.atlas or config.checkpoint or not config.refine):
            raise OncoSegError(
                "--atlas, --checkpoint and --no-refine are for the atlas engine, not --engine nnunet"
            )
        if config.engine != "nnunet" and (config.model or config.label_map):
            raise OncoSegError("a model folder and a label map are for the nnunet engine (--engine nnunet)")
        if config.engine == "nnunet" and not config.model:
            raise OncoSegError("the nnunet engine needs a trained nnU-Net v2 model folder (--model DIR)")
        self.client.system()  # a clear error now if the PACS is not there
        if config.engine == "nnunet":
            from oncoseg.contour.nnunet import prepare

            prepare(config.model, config.organs, config.label_map)  # folders, label map, organ names
            return
        self._atlas = self._atlas or load_atlas(self.config.atlas)
        resolve_organs(self.config.organs, self._atlas.organs())
        if self.config.refine and self._predictor is None:
            self._predictor = self.make_predictor()

    def make_predictor(self):
        """The predictor that refines the registered organs: LiteMedSAM with ``config.checkpoint``."""
        from oncoseg.models.spec import ModelSpec

        return ModelSpec(checkpoint=self.config.checkpoint).build_predictor()

    # ------------------------------------------------------------------ the loop
    def stop(self, *_: Any) -> None:
        self._stop.set()

    def run(self, once: bool = False) -> None:
        """Poll until stopped (SIGTERM/SIGINT or `stop`); ``once``: one pass over what is there, then return."""
        from oncoseg.pacs import PacsUnavailableError

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.stop)
        failures = 0
        log.info("assistant started (oncoseg %s); state %s", __version__, self.state.path)
        log.info(
            "ready: watching the PACS for stable CT series every %.1f s (a series counts as complete after "
            "Orthanc's StableAge without new instances)",
            self.config.interval,
        )
        while not self._stop.is_set():
            try:
                self.poll()
                failures = 0
                wait = self.config.interval
            except PacsUnavailableError as exc:
                failures += 1
                wait = min(self.config.max_backoff, self.config.interval * 2**failures)
                log.warning("PACS unavailable (%s); next try in %.0f s", scrub(exc), wait)
            if once:
                break
            self._stop.wait(wait)
        log.info("assistant stopped; series %s", self.state.counts())

    def poll(self) -> int:
        """Retry unfinished series, then process the CT series that became stable since the last poll."""
        cursor = self.state.get_cursor()
        if cursor is None:
            cursor = 0 if self.config.from_start else self.client.last_change()
            self.state.set_cursor(cursor)
        handled = 0
        for source in self.sources:
            for info, folder in source():
                outcome = self.handle(info, folder)
                handled += outcome != "skipped"
                if outcome != "retry":
                    shutil.rmtree(folder, ignore_errors=True)
        for entry in self.state.unfinished():
            if entry.pacs_id is None or self._stop.is_set():
                continue
            info = self._series_info(entry.pacs_id)
            if info is not None:
                handled += self.handle(info) != "skipped"
        found, next_cursor = self.client.new_series(cursor, "StableSeries", modality="CT")
        for info in found:
            if self._stop.is_set():
                return handled
            handled += self.handle(info) != "skipped"
        self.state.set_cursor(next_cursor)
        return handled

    def _series_info(self, pacs_id: str):
        from oncoseg.pacs import PacsError, PacsUnavailableError

        try:
            return self.client.series_info(pacs_id)
        except PacsUnavailableError:
            raise
        except PacsError:
            return None  # deleted from the PACS since; claim() gives up after max_attempts

    # ------------------------------------------------------------------ one series
    def handle(self, info, folder: Path | None = None) -> str:
        """Process one series exactly once; returns done, failed, retry or skipped (never raises on bad data).

        ``folder``: the series' files are already here (received by C-STORE), so nothing is downloaded."""
        from oncoseg.pacs import PacsUnavailableError

        uid = info.series_uid
        if not uid:
            return "skipped"
        tag = uid_tag(uid)
        before = self.state.get(uid)
        if not self.state.claim(uid, info.orthanc_id):
            after = self.state.get(uid)
            if before is not None and before.status in ("pending", "processing") and after.status == "failed":
                self.audit.write(uid, "failed", reason=after.reason, **self._model_fields())
                log.warning("series %s failed: %s", tag, after.reason)
                return "failed"
            return "skipped"
        timings: dict[str, float] = {}
        start = time.perf_counter()
        try:
            details = self._process(info, timings, folder)
        except PacsUnavailableError as exc:
            reason = scrub(exc)
            self.state.release(uid, reason)
            self.audit.write(uid, "retry", reason=reason, timings_s=_round(timings))
            log.warning("series %s: PACS error, will retry: %s", tag, reason)
            return "retry"
        except Exception as exc:  # noqa: BLE001 - a malformed series must never stop the assistant
            reason = f"{type(exc).__name__}: {scrub(exc)}"
            self.state.finish(uid, "failed", reason)
            self.audit.write(uid, "failed", reason=reason, timings_s=_round(timings), **self._model_fields())
            log.warning("series %s failed: %s", tag, reason)
            return "failed"
        timings["total"] = time.perf_counter() - start
        self.state.finish(uid, "done")
        self.audit.write(uid, "done", timings_s=_round(timings), **self._model_fields(), **details)
        log.info(
            "series %s done in %.1f s (%s organs drawn, %d to review first, %d not drawn)",
            tag,
            timings["total"],
            details.get("organs", 0),
            len(details.get("review_first", [])),
            len(details.get("not_drawn", {})),
        )
        return "done"

    def _model_fields(self) -> dict[str, Any]:
        if self.config.engine == "nnunet":
            return {"model": "nnunet: " + ", ".join(Path(m).name for m in self.config.model or [])}
        return {"model": "litemedsam" if self.config.refine else "atlas-only"}

    def _already_answered(self, series_uid: str) -> bool:
        _, sop = result_uids(series_uid)
        matches = self.client.request("POST", "/tools/lookup", content=sop.encode()).json()
        return any(m.get("Type") == "Instance" for m in matches)

    def _process(self, info, timings: dict[str, float], received: Path | None = None) -> dict[str, Any]:
        t = time.perf_counter()
        from oncoseg.contour import contour, load_atlas

        nnunet = self.config.engine == "nnunet"
        if self._atlas is None and not nnunet:
            self._atlas = load_atlas(self.config.atlas)
        if self._predictor is None and self.config.refine and not nnunet:
            self._predictor = self.make_predictor()
        timings["setup"] = time.perf_counter() - t
        t = time.perf_counter()
        if self._already_answered(info.series_uid):
            timings["check"] = time.perf_counter() - t
            return {"note": "RTSTRUCT already in the PACS (re-run after a crash)"}
        base = Path(self.config.workdir) if self.config.workdir else None
        if base:
            base.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f"series-{uid_tag(info.series_uid)[:8]}-", dir=base))
        try:
            if received is not None:
                series_folder = received
            else:
                series_folder = self.client.download_series(
                    info.orthanc_id or info.series_uid, folder / "dicom"
                )
                timings["download"] = time.perf_counter() - t
            t = time.perf_counter()
            if nnunet:
                engine = {"engine": "nnunet", "model": self.config.model, "label_map": self.config.label_map}
            else:
                engine = {"atlas": self._atlas, "refine": self.config.refine, "predictor": self._predictor}
            result = contour(series_folder, self.config.organs, **engine)
            timings["contour"] = time.perf_counter() - t
            t = time.perf_counter()
            path = result.save(folder / "rtstruct.dcm", "rtstruct", reference=series_folder)
            stamp_uids(path, info.series_uid)
            timings["write"] = time.perf_counter() - t
            t = time.perf_counter()
            self.client.upload(path)
            timings["upload"] = time.perf_counter() - t
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        written = [name for name, mask in result.masks.items() if mask.any()]
        return {
            "organs": len(written),
            "refined": sorted(n for n in written if result.methods[n].endswith("+ model")),
            "engine": self.config.engine,
            "confidence": {
                n: result.evidence[n].confidence.to_dict()
                for n in written
                if n in result.evidence and result.evidence[n].confidence
            },
            "review_first": result.review_first(),
            "not_drawn": result.omitted,
            "slices": int(result.image.shape[0]),
            "contour_timings_s": _round(result.timings),
        }


def _round(timings: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 2) for k, v in timings.items()}


def run_assistant(config: AssistantConfig, once: bool = False) -> Assistant:
    """Start the assistant and block until it is stopped; returns it (for its state) when it ends."""
    if not config.pacs_url:
        raise OncoSegError("--pacs URL is required (e.g. http://127.0.0.1:8042)")
    assistant = Assistant(config)
    assistant.prepare()
    assistant.run(once=once)
    return assistant
