"""The assistant's audit log: one JSON object per line, appended and flushed to disk for each event.

Each line says when, which series (a truncated SHA-256 of its SeriesInstanceUID — never the UID or any patient
data), the outcome (``done``, ``failed``, ``retry``, ``skipped``), the model, the Onco-Seg version and timings.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from oncoseg import __version__

_UID = re.compile(r"\b\d+(\.\d+){3,}\b")


def uid_tag(uid: str | None) -> str:
    """The first 16 hex digits of the SHA-256 of a UID (what the audit log and the logs show)."""
    return hashlib.sha256((uid or "").encode("utf-8")).hexdigest()[:16]


def scrub(text: str, limit: int = 300) -> str:
    """A message without DICOM UIDs (replaced by their tags), on one line, at most ``limit`` characters."""
    text = _UID.sub(lambda m: f"uid:{uid_tag(m.group(0))}", str(text))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class AuditLog:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, series_uid: str | None, outcome: str, **fields: Any) -> dict[str, Any]:
        record = {
            "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
            "series": uid_tag(series_uid),
            "outcome": outcome,
            "oncoseg_version": __version__,
            **fields,
        }
        line = json.dumps(record, sort_keys=False) + "\n"
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        return record

    def records(self) -> list[dict[str, Any]]:
        """Every record so far (a half-written last line, from a crash, is skipped)."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out
