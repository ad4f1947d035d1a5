"""Prompt protocols: how an evaluation prompts the model from a ground-truth mask.

``box``            tight bounding box of the mask (all its pieces), optionally with each side moved at random by
                   up to ``jitter`` × the box size (``box:jitter=0.1``)
``points``         ``n`` positive clicks inside the mask, the first at its most interior pixel (``points:3``)
``text``           the target's concept name as a text prompt, nothing else (no box, no click): every instance
                   the backend finds is united into the prediction (LiteMedSAM: its concept head; SAM3: its own
                   text path). Images whose target is absent are still run, and their row records
                   ``pred_voxels`` (0 = correctly empty); they stay out of the Dice means, as for every protocol. Targets without a concept
                   (e.g. the hippocampus's Anterior/Posterior parts) are not scored

Random choices are seeded per case and target (not per run order), so results do not depend on how the cases
are split between processes or on resuming.

Every prompt an evaluation gives the model is written down as a *prompt record* (`Protocol.record`, stored with
each row of ``cases.jsonl``/``cases.csv``; the format is in docs/evaluation.md), and an evaluation can run from
such records instead of a protocol (`RecordedPrompts`: a replay, or prompts made by another tool).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from oncoseg.errors import OncoSegError
from oncoseg.prompts import Box, Point, Prompt, box_from_mask, points_from_mask

KINDS = ("box", "points", "text")


@dataclass(frozen=True)
class Protocol:
    kind: str = "box"
    jitter: float = 0.0  # box: fraction of the box size each side may move
    points: int = 1  # points: how many clicks
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise OncoSegError(f"unknown prompt protocol {self.kind!r}: choose one of {', '.join(KINDS)}")
        if not 0 <= self.jitter < 1:
            raise OncoSegError(f"box jitter must be in [0, 1), got {self.jitter}")
        if self.points < 1:
            raise OncoSegError(f"points protocol needs at least 1 point, got {self.points}")

    def describe(self) -> str:
        if self.kind == "box":
            return "GT box" + (
                f", jitter ±{self.jitter:g} of its size (seed {self.seed})" if self.jitter else ""
            )
        if self.kind == "points":
            return f"{self.points} positive GT point{'s' if self.points > 1 else ''} (seed {self.seed})"
        return "target name as text"

    def as_dict(self) -> dict:
        """The settings that made the prompts (only those that apply to this kind)."""
        if self.kind == "box" and self.jitter:
            return {"kind": "box", "jitter": self.jitter, "seed": self.seed}
        if self.kind == "points":
            return {"kind": "points", "points": self.points, "seed": self.seed}
        return {"kind": self.kind}

    def rng(self, *keys: object) -> np.random.Generator:
        """A generator seeded by the protocol's seed and ``keys`` (case, target, slice)."""
        digest = hashlib.sha256("\0".join(map(str, (self.seed, *keys))).encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))

    def prompt(self, mask: np.ndarray, *keys: object, z: int | None = None) -> Prompt:
        """The prompt for one 2D ``mask`` (a slice ``z`` of a volume, or a picture)."""
        if self.kind == "box":
            rng = self.rng(*keys, z) if self.jitter else None
            return Prompt(box=box_from_mask(mask, jitter=self.jitter, rng=rng, z=z))
        if self.kind == "points":
            return Prompt(points=points_from_mask(mask, self.points, rng=self.rng(*keys, z), z=z))
        raise OncoSegError("a text protocol has no prompt from a mask: use text_for(dataset, target)")

    def record(
        self, truth: np.ndarray, mode: str, case_id: str, target: str, text: str | None = None
    ) -> dict[str, Any] | None:
        """The prompt record of one target in one mode (``2d``, ``propagate``: one prompt on the slice where the
        target is largest, ``per_slice``: one on every slice that holds it); None when a box or point protocol
        has nothing to prompt (an empty ground truth)."""
        keys = (case_id, target)
        if self.kind == "text":
            entries = []
        elif not truth.any():
            return None
        elif mode == "2d":
            entries = [prompt_entry(self.prompt(truth, *keys))]
        elif mode == "per_slice":
            slices = np.flatnonzero(truth.any(axis=(1, 2)))
            entries = [prompt_entry(self.prompt(truth[z], *keys, z=int(z))) for z in slices]
        else:
            start = int(np.argmax(truth.sum(axis=(1, 2))))
            entries = [prompt_entry(self.prompt(truth[start], *keys, z=start))]
        return {**self.as_dict(), "text": text, "prompts": entries}

    @staticmethod
    def text_for(dataset: str, target: str) -> str | None:
        """The text prompt for ``target`` of ``dataset``: the name of the concept of that target (busi/lesion →
        "breast lesion", msd-hippocampus/whole → "hippocampus"), else None (the target is not scored)."""
        from oncoseg.concepts.vocabulary import CONCEPTS

        for concept in CONCEPTS:
            if (dataset, target) in concept.sources:
                return concept.name
        return None


def parse_protocol(text: str, seed: int = 0) -> Protocol:
    """``box``, ``box:jitter=0.1``, ``points``, ``points:3`` or ``text``."""
    kind, _, option = text.strip().partition(":")
    kind = kind.strip().lower()
    try:
        if kind == "box" and option:
            name, _, value = option.partition("=")
            if name.strip() != "jitter":
                raise ValueError
            return Protocol("box", jitter=float(value), seed=seed)
        if kind == "points" and option:
            return Protocol("points", points=int(option), seed=seed)
        if option:
            raise ValueError
    except ValueError:
        raise OncoSegError(
            f"cannot read prompt protocol {text!r}: use box, box:jitter=0.1, points, points:3 or text"
        ) from None
    return Protocol(kind, seed=seed)


# ------------------------------------------------------------------------------------------ prompt records


def prompt_entry(prompt: Prompt) -> dict[str, Any]:
    """One prompt as a record entry: ``slice`` (None for a picture), ``box`` ``[x0, y0, x1, y1]`` (inclusive
    pixel indices, x the column, y the row) or None, ``points`` ``[[x, y, label], ...]`` in click order (label 1
    include, 0 exclude)."""
    box = prompt.box
    return {
        "slice": prompt.z,
        "box": None if box is None else [float(box.x0), float(box.y0), float(box.x1), float(box.y1)],
        "points": [[float(p.x), float(p.y), int(p.positive)] for p in prompt.points],
    }


def entry_prompt(entry: Any, where: str) -> Prompt:
    """The `Prompt` of a record entry (`prompt_entry`); a malformed entry is a one-line error naming ``where``."""
    if not isinstance(entry, dict):
        raise OncoSegError(f"{where}: each prompt must be an object with slice, box and points")
    z = entry.get("slice")
    if z is not None and (not isinstance(z, int) or isinstance(z, bool) or z < 0):
        raise OncoSegError(f"{where}: slice must be a whole number >= 0 or null, not {z!r}")
    box = entry.get("box")
    if box is not None:
        if not _numbers(box, 4):
            raise OncoSegError(f"{where}: box must be 4 numbers [x0, y0, x1, y1], not {box!r}")
        box = Box(*(float(v) for v in box), z=z)
    points = []
    for point in entry.get("points") or []:
        if not _numbers(point, 3) or point[2] not in (0, 1):
            raise OncoSegError(f"{where}: a point must be [x, y, label] with label 1 or 0, not {point!r}")
        points.append(Point(float(point[0]), float(point[1]), bool(point[2]), z))
    if box is None and not points:
        raise OncoSegError(f"{where}: a prompt needs a box or at least one point")
    return Prompt(box=box, points=tuple(points))


def _numbers(values: Any, count: int) -> bool:
    return (
        isinstance(values, list)
        and len(values) == count
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
    )


def record_prompts(record: dict[str, Any], where: str) -> list[Prompt]:
    """The prompts of a record, checked."""
    entries = record.get("prompts")
    if not isinstance(entries, list):
        raise OncoSegError(f"{where}: the prompt record has no list 'prompts'")
    return [entry_prompt(entry, where) for entry in entries]


class RecordedPrompts:
    """Prompt records read back from an evaluation's per-case files (or another tool's file in that format),
    to run an evaluation on exactly these prompts.

    ``source``: an evaluation folder (its ``cases*.jsonl`` logs, else ``cases.csv``), a ``.jsonl`` file whose
    lines are either a case (``{"case_id", "rows": [...]}``, as in ``cases.jsonl``) or one row, or a ``.csv``
    file with the columns ``case_id``, ``target``, ``mode`` (default ``2d``) and ``prompt`` (the record as
    JSON). Rows without a ``prompt`` key are refused; ``"prompt": null`` means the target was not prompted."""

    def __init__(self, source: str | Path):
        self.source = Path(source)
        self.records: dict[tuple[str, str, str], dict[str, Any] | None] = {}
        for row in self._rows():
            if (
                not isinstance(row, dict)
                or "case_id" not in row
                or "target" not in row
                or "prompt" not in row
            ):
                raise OncoSegError(f"{self.source}: every row needs case_id, target and prompt")
            record = row["prompt"]
            if isinstance(record, str):
                record = json.loads(record) if record.strip() else None
            where = f"{self.source}: case {row['case_id']!r} target {row['target']!r}"
            if record is not None and not isinstance(record, dict):
                raise OncoSegError(f"{where}: the prompt must be an object (a prompt record)")
            if record is not None and not record.get("text"):
                record_prompts(record, where)
            self.records[(str(row["case_id"]), str(row["target"]), str(row.get("mode") or "2d"))] = record
        if not self.records:
            raise OncoSegError(f"{self.source}: no prompts found")

    @property
    def description(self) -> str:
        """Where the prompts come from, with the original run's prompt protocol when the source is a folder."""
        run = self.source / "run.json" if self.source.is_dir() else self.source.parent / "run.json"
        original = json.loads(run.read_text(encoding="utf-8")).get("prompt") if run.is_file() else None
        return f"recorded prompts from {self.source}" + (f" ({original})" if original else "")

    def case_ids(self) -> set[str]:
        return {case_id for case_id, _, _ in self.records}

    def modes(self) -> set[str]:
        return {mode for _, _, mode in self.records}

    def get(self, case_id: str, target: str, mode: str) -> tuple[bool, dict[str, Any] | None]:
        """(whether the source has this row, its record)."""
        key = (case_id, target, mode)
        return key in self.records, self.records.get(key)

    def _rows(self) -> list[Any]:
        source = self.source
        if source.is_dir():
            logs = sorted(source.glob("cases*.jsonl"))
            if logs:
                return [row for log in logs for row in _jsonl_rows(log)]
            source = source / "cases.csv"
        if not source.is_file():
            raise OncoSegError(
                f"no prompts at {self.source}: give an evaluation folder, a .jsonl or a .csv file"
            )
        if source.suffix.lower() == ".csv":
            with source.open(encoding="utf-8", newline="") as handle:
                return list(csv.DictReader(handle))
        return _jsonl_rows(source)


def _jsonl_rows(path: Path) -> list[Any]:
    rows = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                continue  # the half-written last line of an interrupted run
            raise OncoSegError(f"{path}: line {number} is not JSON") from None
        rows += entry["rows"] if isinstance(entry, dict) and "rows" in entry else [entry]
    return rows
