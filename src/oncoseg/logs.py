"""Log text without patient data: DICOM UIDs hashed, tracebacks without messages, Python warnings routed
through the same formatter. Used by the service, the assistant and the CLI."""

from __future__ import annotations

import hashlib
import logging
import re
import traceback

UID_PATTERN = re.compile(r"\d+(\.\d+){4,}")


def uid_hash(uid: str | None) -> str:
    """A short, stable, non-reversible tag for a UID, safe to log."""
    return hashlib.sha256((uid or "").encode()).hexdigest()[:10]


def hide_uids(text: str) -> str:
    """Replace DICOM-UID-like strings (5+ dotted numbers) with a short hash."""
    return UID_PATTERN.sub(lambda m: f"<uid:{uid_hash(m.group(0))}>", text)


class SafeFormatter(logging.Formatter):
    """Log lines without patient data: UIDs hashed, and tracebacks reduced to the exception types and the code
    locations (file, line, function). Exception messages and local values never reach the log: they can hold
    file names, DICOM tags or request parameters."""

    def format(self, record: logging.LogRecord) -> str:
        return hide_uids(super().format(record))

    def formatException(self, ei) -> str:
        _, error, tb = ei
        lines = ["Traceback (messages hidden; no patient data in logs):"]
        seen: set[int] = set()
        while error is not None and id(error) not in seen:
            seen.add(id(error))
            frames = traceback.extract_tb(error.__traceback__ if error.__traceback__ is not None else tb)
            lines += [f"  {f.filename.rsplit('/', 1)[-1]}:{f.lineno} in {f.name}" for f in frames]
            lines.append(f"{type(error).__module__}.{type(error).__qualname__}")
            error = error.__cause__ or error.__context__
        return "\n".join(lines)

    def formatStack(self, stack_info: str) -> str:
        return "(stack hidden)"


class WarningLine(SafeFormatter):
    """A captured Python warning as one line, ``PREFIX Category: message`` (no file path, no source line)."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        lines = record.getMessage().strip().splitlines() or [""]
        where, _, what = lines[0].partition(": ")  # "path:line: Category: message"
        return hide_uids(self.prefix + (what or where))


def route_warnings(handler: logging.Handler) -> None:
    """Send Python warnings (e.g. pydicom's "Invalid value for VR UI: '1.2.3…'") through ``handler`` instead of
    straight to stderr, so they pass the same formatter as every log line."""
    # off first: an earlier capture whose saved hook was since replaced (pytest restores warnings.showwarning
    # after each test) would make captureWarnings(True) a no-op
    logging.captureWarnings(False)
    logging.captureWarnings(True)
    logger = logging.getLogger("py.warnings")
    logger.handlers[:] = [handler]
    logger.propagate = False
    # a library's logging.config call (disable_existing_loggers) may have switched it off
    logger.disabled = False
