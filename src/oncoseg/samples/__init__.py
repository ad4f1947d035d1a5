"""Small real labelled images shipped with Onco-Seg (see ``README.md`` here for sources and licences)."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import Any

from oncoseg.errors import OncoSegError


def list_samples() -> dict[str, dict[str, Any]]:
    """The manifest: sample name → its file, mask, modality, shape, suggested prompt, source and licence."""
    return json.loads((files(__name__) / "manifest.json").read_text(encoding="utf-8"))


def sample_path(name: str) -> Path:
    """Path of a bundled file (``"polyp_mask.png"``) or of a sample's image (``"polyp"``).

    The package is installed as plain files, so the resource is a real path on disk.
    """
    samples = list_samples()
    listed = {entry[key] for entry in samples.values() for key in ("file", "mask")}
    file_name = samples[name]["file"] if name in samples else name
    if file_name not in listed:
        raise OncoSegError(f"unknown sample {name!r}: expected one of {', '.join(samples)} or their files")
    return Path(str(files(__name__) / file_name))
