"""Named checkpoints: ``latest``, ``brain``, ``breast`` … resolve to adapter files that ``oncoseg segment`` and
``oncoseg evaluate --checkpoint NAME`` load.

The index is ``$ONCOSEG_HOME/checkpoints.json`` (default ``~/.oncoseg``), written by ``oncoseg train`` when a
phase finishes. ``--checkpoint`` also accepts a path: a LoRA adapter file (written by `oncoseg.train.lora.save_adapter`) or a
full state dict, told apart by their content (`oncoseg.models.spec`).
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from oncoseg.errors import ModelError
from oncoseg.io import atomic_write_path

HOME_VAR = "ONCOSEG_HOME"


def index_path() -> Path:
    return Path(os.environ.get(HOME_VAR) or Path.home() / ".oncoseg") / "checkpoints.json"


def read_index() -> dict[str, dict]:
    path = index_path()
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise ModelError(f"the checkpoint index {path} is damaged: delete it and register again") from None


def register(name: str, adapter: str | Path, **facts) -> None:
    """Make ``name`` resolve to ``adapter`` (an absolute path is stored)."""
    index = read_index()
    index[name] = {
        "path": str(Path(adapter).resolve()),
        "registered": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **facts,
    }
    path = index_path()
    with atomic_write_path(path) as temporary:
        Path(temporary).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def resolve(value: str | Path) -> Path:
    """A checkpoint path from a path or a registered name."""
    path = Path(value)
    if path.exists():
        return path
    index = read_index()
    if str(value) in index:
        registered = Path(index[str(value)]["path"])
        if not registered.exists():
            raise ModelError(f"checkpoint {value!r} points to {registered}, which no longer exists")
        return registered
    names = ", ".join(sorted(index)) or "none registered yet"
    raise ModelError(f"no checkpoint file or name {str(value)!r} (names: {names})")
