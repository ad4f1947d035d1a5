"""Open images ("sessions") and their cached slice embeddings, kept under one memory budget (LRU).

Each session holds an image, a `Predictor` (normalised pixels + per-slice embeddings) and the latest result
mask. When the total exceeds the budget, the least recently used sessions first lose their cached embeddings,
then are closed; the session in use keeps at least its newest embedding.

Thread rule: `add` and `enforce` (which touch predictors' caches) run on the model thread only; other threads
read the byte counts they leave behind.
"""

from __future__ import annotations

import secrets
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from oncoseg.errors import NotFoundError, TooLargeError
from oncoseg.image import MedicalImage
from oncoseg.predictor import Predictor


@dataclass
class Session:
    id: str
    image: MedicalImage
    predictor: Predictor
    folder: Path | None = None  # files this session owns (uploaded file, downloaded DICOM series)
    source: str = "upload"  # "upload", "pacs" or "datastore"
    study_uid: str | None = None
    series_uid: str | None = None
    result: np.ndarray | None = None  # bool mask with the image's spatial shape
    result_info: dict[str, Any] = field(default_factory=dict)
    last_clicks: tuple = ()  # the clicks (no box) behind a slice result, to recognise a refining click
    last_region: tuple | None = None  # (z, x0, y0, x1, y1) of the last non-empty result of those clicks
    last_used: float = field(default_factory=time.monotonic)
    last_viewed: int | None = None  # the slice last shown to the user (for embedding prefetch)
    size: int = 0  # bytes at the last `SessionStore.enforce` (readable from any thread)

    @property
    def nbytes(self) -> int:
        result = 0 if self.result is None else self.result.nbytes
        return int(
            self.image.array.nbytes + self.predictor.pixels_nbytes + self.predictor.cache_nbytes + result
        )

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
            has_result=self.result is not None and bool(self.result.any()),
            warnings=list(self.image.metadata.get("warnings", [])),  # e.g. skipped unreadable DICOM files
        )
        return facts

    def close(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


class SessionStore:
    """Sessions by id, least recently used first, under ``budget_bytes`` (thread-safe)."""

    def __init__(self, budget_bytes: int):
        self.budget_bytes = int(budget_bytes)
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.RLock()
        self.evicted_sessions = 0
        self.high_water_bytes = 0
        self.current_bytes = 0  # total at the last enforce (or after a removal)

    @staticmethod
    def new_id() -> str:
        return secrets.token_urlsafe(9)

    def add(self, session: Session) -> Session:
        size = session.nbytes
        if size > self.budget_bytes:
            session.close()
            raise TooLargeError(
                f"this image needs {size / 2**20:.0f} MiB, more than the service's memory budget "
                f"({self.budget_bytes / 2**20:.0f} MiB): start it with a larger --memory-budget"
            )
        with self._lock:
            self._sessions[session.id] = session
            self.enforce(session.id)
        return session

    def get(self, session_id: str) -> Session:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                raise NotFoundError(
                    f"unknown image id {session_id!r}: open the image first (it may have been closed)"
                )
            self._sessions.move_to_end(session_id)
            session.last_used = time.monotonic()
            return session

    def find(self, key: str) -> Session | None:
        """A session by id without raising (and without refreshing its place in the LRU order)."""
        with self._lock:
            return self._sessions.get(key)

    def remove(self, session_id: str) -> None:
        with self._lock:
            session = self._sessions.pop(session_id, None)
            if session is None:
                raise NotFoundError(f"unknown image id {session_id!r}")
            self.current_bytes = max(0, self.current_bytes - session.size)
        session.close()

    def list(self) -> list[Session]:
        with self._lock:
            return list(self._sessions.values())

    def nbytes(self) -> int:
        """Bytes held now (model thread only: it walks the predictors' caches)."""
        with self._lock:
            return sum(s.nbytes for s in self._sessions.values())

    def enforce(self, active_id: str | None = None) -> None:
        """Free memory until the total fits the budget: embeddings of idle sessions, then idle sessions,
        then older embeddings of the active one (its newest embedding is always kept)."""
        with self._lock:
            total = self.nbytes()
            for session in list(self._sessions.values()):
                if total <= self.budget_bytes:
                    break
                if session.id == active_id:
                    continue
                before = session.nbytes
                session.predictor.trim_cache(0)
                total -= before - session.nbytes
            for session_id in list(self._sessions):
                if total <= self.budget_bytes:
                    break
                if session_id == active_id:
                    continue
                session = self._sessions.pop(session_id)
                total -= session.nbytes
                session.close()
                self.evicted_sessions += 1
            active = self._sessions.get(active_id) if active_id else None
            if total > self.budget_bytes and active is not None:
                others = total - active.nbytes
                fixed = active.nbytes - active.predictor.cache_nbytes
                active.predictor.trim_cache(max(0, self.budget_bytes - others - fixed), keep=1)
                total = self.nbytes()
            for session in self._sessions.values():
                session.size = session.nbytes
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
        for session in sessions:
            session.close()
