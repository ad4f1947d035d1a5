"""Where an evaluation keeps its results, and the summary statistics over them.

An output folder holds:

``run.json``        what was evaluated (dataset, split, protocol, modes run, backend, …); a resumed run must
                    match it
``cases.jsonl``     the append-only log: one line per finished case with its rows (resuming skips these cases;
                    a half-written last line from an interrupted run is ignored). Distributed runs write one log
                    per process (``cases.rank1.jsonl`` …). Each row holds its exact prompt (``prompt``: the
                    record of `oncoseg.evaluate.protocols.Protocol.record`; format in docs/evaluation.md)
``masks/``          each predicted mask, bit-packed (``load_prediction``)
``cases.csv``       one row per case × target × mode (written at the end); ``prompt`` is the record as JSON
``summary.json``    mean ± sd, median per dataset / target / category / mode, beside the paper's number
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from oncoseg.errors import OncoSegError
from oncoseg.io import atomic_write_path

COLUMNS = (
    "dataset", "case_id", "patient_id", "category", "target", "mode", "prompt_slice",
    "dice", "iou", "nsd", "hd95", "pred_voxels", "true_voxels", "units", "seconds", "mask_file", "note",
    "prompt",
)  # fmt: skip
METRICS = ("dice", "iou", "nsd", "hd95")
EMPTY_TRUTH = "empty ground truth"  # the note of a row whose target is absent (not scored)


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "case"


def save_prediction(path: Path, mask: np.ndarray) -> None:
    """A boolean mask, bit-packed and compressed, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, bits=np.packbits(mask.astype(bool), axis=None), shape=np.array(mask.shape))
    with atomic_write_path(path) as temporary:
        Path(temporary).write_bytes(buffer.getvalue())


def load_prediction(path: Path) -> np.ndarray:
    with np.load(path) as data:
        shape = tuple(int(s) for s in data["shape"])
        return np.unpackbits(data["bits"], count=int(np.prod(shape))).reshape(shape).astype(bool)


class ResultStore:
    """The output folder of one evaluation."""

    def __init__(self, folder: str | Path, run: dict[str, Any], overwrite: bool = False):
        self.folder = Path(folder)
        self.run = run
        run_file = self.folder / "run.json"
        if run_file.exists() and not overwrite:
            previous = json.loads(run_file.read_text(encoding="utf-8"))
            different = [key for key in run if key != "started" and previous.get(key) != run[key]]
            if different:
                raise OncoSegError(
                    f"{self.folder} holds an evaluation with other settings ({', '.join(different)}): "
                    "use another --out, or --overwrite to start again"
                )
            self.run = {**run, "started": previous.get("started", run.get("started"))}
        elif overwrite and self.folder.exists():
            for old in [
                *self.folder.glob("cases*.jsonl"),
                self.folder / "cases.csv",
                self.folder / "summary.json",
            ]:
                old.unlink(missing_ok=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json(run_file, self.run)

    def log_path(self, rank: int = 0) -> Path:
        return self.folder / ("cases.jsonl" if rank == 0 else f"cases.rank{rank}.jsonl")

    def finished(self) -> dict[str, list[dict[str, Any]]]:
        """case id → rows, from every process's log (complete lines only)."""
        done: dict[str, list[dict[str, Any]]] = {}
        for log in sorted(self.folder.glob("cases*.jsonl")):
            for line in log.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the half-written last line of an interrupted run
                done[entry["case_id"]] = entry["rows"]
        return done

    def record(self, case_id: str, rows: list[dict[str, Any]], rank: int = 0) -> None:
        """Append one finished case to this process's log (one line, flushed)."""
        with self.log_path(rank).open("a", encoding="utf-8") as log:
            log.write(json.dumps({"case_id": case_id, "rows": rows}, default=_plain) + "\n")
            log.flush()

    def mask_path(self, case_id: str, target: str, mode: str) -> Path:
        return self.folder / "masks" / f"{safe_name(case_id)}__{safe_name(target)}__{mode}.npz"

    def write_tables(self, case_order: Iterable[str], paper_dice: float | None) -> dict[str, Any]:
        """Write ``cases.csv`` (in ``case_order``) and ``summary.json``; return the summary."""
        done = self.finished()
        rows = [row for case_id in case_order if case_id in done for row in done[case_id]]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows({**row, "prompt": _prompt_text(row.get("prompt"))} for row in rows)
        with atomic_write_path(self.folder / "cases.csv") as temporary:
            Path(temporary).write_text(buffer.getvalue(), encoding="utf-8")
        summary = {"run": self.run, "paper_dice": paper_dice, "groups": summarise(rows)}
        write_json(self.folder / "summary.json", summary)
        return summary


def read_rows(folder: str | Path) -> list[dict[str, Any]]:
    """The rows of ``cases.csv`` with numbers as floats (NaN where a metric is undefined)."""
    path = Path(folder) / "cases.csv"
    if not path.exists():
        raise OncoSegError(f"no cases.csv in {folder}: run `oncoseg evaluate` there first")
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key in (*METRICS, "pred_voxels", "true_voxels", "seconds"):
            row[key] = float(row[key]) if row.get(key) not in (None, "") else math.nan
        row["prompt"] = json.loads(row["prompt"]) if row.get("prompt") else None
    return rows


def _prompt_text(record: dict[str, Any] | None) -> str:
    """A prompt record as one line of JSON for ``cases.csv`` (empty when the row had no prompt)."""
    return "" if record is None else json.dumps(record, separators=(",", ":"), default=_plain)


def describe(values: list[float]) -> dict[str, Any]:
    """n, mean, sd, median, min, max over the defined values, and how many were undefined (NaN)."""
    array = np.asarray(values, dtype=float)
    defined = array[np.isfinite(array)]
    if len(defined) == 0:
        return {"n": 0, "undefined": len(array)}
    return {
        "n": len(defined),
        "undefined": int(len(array) - len(defined)),
        "mean": float(defined.mean()),
        "sd": float(defined.std(ddof=1)) if len(defined) > 1 else 0.0,
        "median": float(np.median(defined)),
        "min": float(defined.min()),
        "max": float(defined.max()),
    }


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Statistics per (mode, target) over all cases, and per (mode, target, category) where cases have one."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row.get("note") == EMPTY_TRUTH:
            continue
        groups[(row["mode"], row["target"], "all")].append(row)
        if row.get("category"):
            groups[(row["mode"], row["target"], row["category"])].append(row)
    out = []
    for (mode, target, category), members in sorted(groups.items(), key=lambda item: _group_order(item[0])):
        entry: dict[str, Any] = {"mode": mode, "target": target, "category": category, "cases": len(members)}
        for metric in METRICS:
            entry[metric] = describe([float(row[metric]) for row in members])
        out.append(entry)
    return out


def _group_order(key: tuple[str, str, str]) -> tuple:
    mode, target, category = key
    return (mode, target, category != "all", category)


def write_json(path: Path, document: Any) -> None:
    with atomic_write_path(path) as temporary:
        Path(temporary).write_text(json.dumps(document, indent=2, default=_plain) + "\n", encoding="utf-8")


def _plain(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
