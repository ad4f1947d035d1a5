"""The assistant's memory: which series it has seen and how far it has read the PACS change feed (SQLite).

Series are keyed by the SHA-256 of their SeriesInstanceUID, so the file holds no DICOM identifiers. Every
change is one committed transaction, so the state survives a ``kill -9`` at any point:

* ``claim`` turns a new (or ``pending``) series into ``processing``; a series found ``processing`` when it is
  claimed again was left by a crash and is retried, at most ``max_attempts`` times in all, then ``failed``;
* ``finish`` records ``done`` or ``failed`` (with a reason), ``release`` puts it back to ``pending`` (a
  transient PACS error: try again later).
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

STATUSES = ("pending", "processing", "done", "failed")

SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    key TEXT PRIMARY KEY,
    pacs_id TEXT,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS cursor (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def series_key(series_uid: str) -> str:
    """The full SHA-256 of a SeriesInstanceUID (the state's primary key)."""
    return hashlib.sha256(series_uid.encode("utf-8")).hexdigest()


@dataclass
class SeriesState:
    key: str
    pacs_id: str | None
    status: str
    attempts: int
    reason: str | None


class StateStore:
    """A small SQLite file; one instance per process, used by one thread at a time."""

    def __init__(self, path: str | Path, max_attempts: int = 3):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_attempts = max_attempts
        # check_same_thread=False: the store may be made in one thread and used by the loop in another
        self._db = sqlite3.connect(
            str(self.path), isolation_level=None, timeout=30.0, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def _transaction(self):
        return _Immediate(self._db)

    def get(self, series_uid: str) -> SeriesState | None:
        row = self._db.execute(
            "SELECT key, pacs_id, status, attempts, reason FROM series WHERE key = ?",
            (series_key(series_uid),),
        ).fetchone()
        return SeriesState(*row) if row else None

    def claim(self, series_uid: str, pacs_id: str | None = None) -> bool:
        """Mark the series ``processing`` and return True if it should be processed now."""
        key = series_key(series_uid)
        with self._transaction() as db:
            row = db.execute("SELECT status, attempts FROM series WHERE key = ?", (key,)).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO series (key, pacs_id, status, attempts, updated) VALUES (?, ?, 'processing', 1, ?)",
                    (key, pacs_id, time.time()),
                )
                return True
            status, attempts = row
            if status in ("done", "failed"):
                return False
            if attempts >= self.max_attempts:
                db.execute(
                    "UPDATE series SET status = 'failed', reason = ?, updated = ? WHERE key = ?",
                    (f"gave up after {attempts} attempts (crash or repeated PACS errors)", time.time(), key),
                )
                return False
            db.execute(
                "UPDATE series SET status = 'processing', attempts = attempts + 1, pacs_id = COALESCE(?, pacs_id),"
                " updated = ? WHERE key = ?",
                (pacs_id, time.time(), key),
            )
            return True

    def finish(self, series_uid: str, status: str, reason: str | None = None) -> None:
        if status not in ("done", "failed"):
            raise ValueError(f"finish() takes done or failed, not {status!r}")
        with self._transaction() as db:
            db.execute(
                "UPDATE series SET status = ?, reason = ?, updated = ? WHERE key = ?",
                (status, reason, time.time(), series_key(series_uid)),
            )

    def release(self, series_uid: str, reason: str) -> None:
        """Back to ``pending`` after a transient error (the attempt still counts)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE series SET status = 'pending', reason = ?, updated = ? WHERE key = ?",
                (reason, time.time(), series_key(series_uid)),
            )

    def unfinished(self) -> list[SeriesState]:
        """Series left ``pending`` or ``processing`` (to retry), oldest first."""
        rows = self._db.execute(
            "SELECT key, pacs_id, status, attempts, reason FROM series"
            " WHERE status IN ('pending', 'processing') ORDER BY updated"
        ).fetchall()
        return [SeriesState(*row) for row in rows]

    def counts(self) -> dict[str, int]:
        rows = self._db.execute("SELECT status, COUNT(*) FROM series GROUP BY status").fetchall()
        return {status: 0 for status in STATUSES} | dict(rows)

    def get_cursor(self, name: str = "changes") -> int | None:
        row = self._db.execute("SELECT value FROM cursor WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else None

    def set_cursor(self, value: int, name: str = "changes") -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO cursor (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = ?",
                (name, int(value), int(value)),
            )


class _Immediate:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (or ``ROLLBACK`` on error) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
