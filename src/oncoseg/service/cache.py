"""Open images and their cached slice embeddings, kept under one memory budget (LRU).

Each `OpenImage` holds one core `oncoseg.session.Session` (the image, its `Predictor` with normalised pixels
and per-slice embeddings, the segmented object) and the latest result. When the total exceeds the budget, the
least recently used images first lose their cached embeddings, then are closed; the image in use keeps at least
its newest embedding.

Thread rule: `add` and `enforce` (which touch predictors' caches) run on the model thread only; other threads
read the byte counts they leave behind.
"""

from __future__ import annotations

import secrets
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from oncoseg.errors import NotFoundError, TooLargeError
from oncoseg.image import MedicalImage
from oncoseg.models.base import MaskPrediction
from oncoseg.predictor import Predictor
from oncoseg.prompts import Prompt
from oncoseg.session import SegmentedObject, Session


class WatchedPredictor(Predictor):
    """A `Predictor` that remembers its last answer and tells a listener about every answer (slice, mask,
    score): the service shows a 3D job's slices as the model answers them and tells "the model found nothing"
    from a refusal before any model work."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.last: tuple[int | None, MaskPrediction] | None = None
        self.listener: Callable[[int | None, MaskPrediction], None] | None = None

    def predict(self, prompts, z=None, mask_input=None) -> MaskPrediction:
        answer = super().predict(prompts, z, mask_input)
        if z is None and isinstance(prompts, Prompt):
            z = prompts.z
        self.last = (z, answer)
        if self.listener is not None:
            self.listener(z, answer)
        return answer


@dataclass(eq=False)
class OpenImage:
    """An image open in the service: the core `Session` that does every model action on it, and the one
    result the HTTP routes show (`obj`, an object of that session)."""

    id: str
    core: Session
    folder: Path | None = None  # files this image owns (uploaded file, downloaded DICOM series)
    source: str = "upload"  # "upload", "pacs" or "datastore"
    study_uid: str | None = None
    series_uid: str | None = None
    obj: SegmentedObject | None = None  # the current result: the core session's one object
    shown_empty: bool = (
        False  # the latest prompt found nothing: the result is empty (obj kept for more clicks)
    )
    text_mask: np.ndarray | None = None  # a text prompt's instances (no object of the core session)
    result_info: dict[str, Any] = field(default_factory=dict)
    jobs: OrderedDict = field(default_factory=OrderedDict)  # job id -> `jobs.Job`, newest last
    last_used: float = field(default_factory=time.monotonic)
    last_viewed: int | None = None  # the slice last shown to the user (encoded ahead with its neighbours)
    viewed_at: float | None = None  # when it was shown (the image viewed last is encoded ahead first)
    ahead_done: bool = False  # encoding ahead found nothing more to do (or no room) since it was shown
    size: int = 0  # bytes at the last `SessionStore.enforce` (readable from any thread)

    @property
    def image(self) -> MedicalImage:
        return self.core.image

    @property
    def predictor(self) -> WatchedPredictor:
        return self.core.predictor

    @property
    def result(self) -> np.ndarray | None:
        """The current result: a bool mask with the image's spatial shape (None before any prompt)."""
        if self.text_mask is not None:
            return self.text_mask
        if self.shown_empty:
            return np.zeros(self.image.shape, dtype=bool)
        return None if self.obj is None else self.obj.mask

    @property
    def has_result(self) -> bool:
        result = self.result
        return result is not None and bool(result.any())

    @property
    def nbytes(self) -> int:
        held = sum(mask.nbytes for mask in (self.text_mask, self.obj and self.obj.mask) if mask is not None)
        predictor = self.core.predictor
        return int(self.image.array.nbytes + predictor.pixels_nbytes + predictor.cache_nbytes + held)

    @property
    def dicom_folder(self) -> Path | None:
        """The DICOM series folder this image was read from (needed to write SEG/RTSTRUCT), if any."""
        if self.image.metadata.get("format") != "dicom":
            return None
        return Path(self.image.metadata["dicom_files"][0]).parent

    def describe(self) -> dict[str, Any]:
        facts = self.image.describe()
        facts.update(
            image_id=self.id,
            source=self.source,
            num_slices=self.image.num_slices,
            is_3d=self.image.is_3d,
            dicom=self.dicom_folder is not None,
            has_result=self.has_result,
            warnings=list(self.image.metadata.get("warnings", [])),  # e.g. skipped unreadable DICOM files
        )
        return facts

    def close(self) -> None:
        for job in list(self.jobs.values()):
            job.cancel()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


class SessionStore:
    """Open images by id, least recently used first, under ``budget_bytes`` (thread-safe)."""

    def __init__(self, budget_bytes: int):
        self.budget_bytes = int(budget_bytes)
        self._sessions: OrderedDict[str, OpenImage] = OrderedDict()
        self._lock = threading.RLock()
        self.evicted_sessions = 0
        self.high_water_bytes = 0
        self.current_bytes = 0  # total at the last enforce (or after a removal)

    @staticmethod
    def new_id() -> str:
        return secrets.token_urlsafe(9)

    def add(self, entry: OpenImage) -> OpenImage:
        size = entry.nbytes
        if size > self.budget_bytes:
            entry.close()
            raise TooLargeError(
                f"this image needs {size / 2**20:.0f} MiB, more than the service's memory budget "
                f"({self.budget_bytes / 2**20:.0f} MiB): start it with a larger --memory-budget"
            )
        with self._lock:
            self._sessions[entry.id] = entry
            self.enforce(entry.id)
        return entry

    def get(self, session_id: str) -> OpenImage:
        with self._lock:
            entry = self._sessions.get(session_id)
            if entry is None:
                raise NotFoundError(
                    f"unknown image id {session_id!r}: open the image first (it may have been closed)"
                )
            self._sessions.move_to_end(session_id)
            entry.last_used = time.monotonic()
            return entry

    def find(self, key: str) -> OpenImage | None:
        """A entry by id without raising (and without refreshing its place in the LRU order)."""
        with self._lock:
            return self._sessions.get(key)

    def remove(self, session_id: str) -> None:
        with self._lock:
            entry = self._sessions.pop(session_id, None)
            if entry is None:
                raise NotFoundError(f"unknown image id {session_id!r}")
            self.current_bytes = max(0, self.current_bytes - entry.size)
        entry.close()

    def list(self) -> list[OpenImage]:
        with self._lock:
            return list(self._sessions.values())

    def nbytes(self) -> int:
        """Bytes held now (model thread only: it walks the predictors' caches)."""
        with self._lock:
            return sum(s.nbytes for s in self._sessions.values())

    def enforce(self, active_id: str | None = None) -> None:
        """Free memory until the total fits the budget: embeddings of idle images, then idle images,
        then older embeddings of the active one (its newest embedding is always kept)."""
        with self._lock:
            total = self.nbytes()
            for entry in list(self._sessions.values()):
                if total <= self.budget_bytes:
                    break
                if entry.id == active_id:
                    continue
                before = entry.nbytes
                entry.predictor.trim_cache(0)
                total -= before - entry.nbytes
            for session_id in list(self._sessions):
                if total <= self.budget_bytes:
                    break
                if session_id == active_id:
                    continue
                entry = self._sessions.pop(session_id)
                total -= entry.nbytes
                entry.close()
                self.evicted_sessions += 1
            active = self._sessions.get(active_id) if active_id else None
            if total > self.budget_bytes and active is not None:
                others = total - active.nbytes
                fixed = active.nbytes - active.predictor.cache_nbytes
                active.predictor.trim_cache(max(0, self.budget_bytes - others - fixed), keep=1)
                total = self.nbytes()
            self.recount()

    def recount(self) -> None:
        """Note every image's bytes for readers on other threads (model thread only)."""
        with self._lock:
            for entry in self._sessions.values():
                entry.size = entry.nbytes
            self.current_bytes = sum(s.size for s in self._sessions.values())
            self.high_water_bytes = max(self.high_water_bytes, self.current_bytes)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "sessions": len(self._sessions),
                "cache_bytes": self.current_bytes,
                "budget_bytes": self.budget_bytes,
                "high_water_bytes": self.high_water_bytes,
                "evicted_sessions": self.evicted_sessions,
            }

    def close_all(self) -> None:
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for entry in sessions:
            entry.close()
