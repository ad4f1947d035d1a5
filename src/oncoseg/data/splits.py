"""Fixed train/val/test splits, so that training and evaluation never share a patient.

The rule (version 1), reproducible without any random-number state:

* Cases are grouped by patient (e.g. ``10001_60.png`` → patient ``10001``); a dataset with categories
  (BUSI: benign/malignant/normal) is split within each category, so each split keeps the class mix.
* Within a group, patients are ordered by ``sha256("<dataset>:<patient_id>")`` (ties by id). The first 20 %
  (at least one) go to test, the next 10 % (at least one) to val, the rest to train; a group of fewer than
  3 patients goes wholly to test.
* Kvasir-SEG keeps its widely used test split (``splits/test.txt``, 100 images); 10 % of the other images
  (by the same hash order) form val. HyperKvasir's segmented images are Kvasir-SEG's and share this split.

The splits of the datasets in ``../shared/data`` are committed as ``splits/<dataset>.json`` (regenerate with
``scripts/make_splits.py``); for other datasets the same rule is applied to the cases found.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from oncoseg.data.registry import get_info
from oncoseg.errors import OncoSegError

if TYPE_CHECKING:
    from oncoseg.data.adapters import Dataset

log = logging.getLogger(__name__)

VERSION = 1
SPLITS = ("train", "val", "test")
FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
SPLIT_DIR = Path(__file__).resolve().parent / "splits"


def hash_order(salt: str, ids: set[str] | list[str]) -> list[str]:
    """``ids`` ordered by ``sha256("<salt>:<id>")``: a fixed shuffle that needs no random state."""
    return sorted(set(ids), key=lambda i: (hashlib.sha256(f"{salt}:{i}".encode()).hexdigest(), i))


def _cut(patients: list[str], test: float, val: float) -> dict[str, list[str]]:
    n = len(patients)
    if n < 3:
        return {"train": [], "val": [], "test": patients}
    n_test = max(1, int(n * test + 0.5)) if test else 0
    n_val = max(1, int(n * val + 0.5))
    return {
        "train": patients[n_test + n_val :],
        "val": patients[n_test : n_test + n_val],
        "test": patients[:n_test],
    }


def make_split(dataset: Dataset) -> dict[str, Any]:
    """The split document for the cases of ``dataset`` (what ``splits/<name>.json`` holds)."""
    name = dataset.info.alias_of or dataset.info.name
    cases = dataset.cases()
    official = dataset.folder / "splits" / "test.txt"
    if name == "kvasir-seg" and official.is_file():
        test = official.read_text(encoding="utf-8").split()
        rest = hash_order(name, [c.case_id for c in cases if c.case_id not in set(test)])
        parts = {**_cut(rest, test=0.0, val=FRACTIONS["val"]), "test": test}
        method = (
            f"test = splits/test.txt; the other cases ordered by sha256('{name}:<case_id>'): "
            "the first 10% val, the rest train"
        )
        stratified = None
    else:
        stratified = "category" if dataset.info.categories else None
        groups: dict[str | None, set[str]] = defaultdict(set)
        for case in cases:
            groups[case.category if stratified else None].add(case.patient_id)
        by_patient: dict[str, list[str]] = {s: [] for s in SPLITS}
        for group in sorted(groups, key=str):
            cut = _cut(hash_order(name, groups[group]), FRACTIONS["test"], FRACTIONS["val"])
            for split in SPLITS:
                by_patient[split] += cut[split]
        split_of = {patient: split for split in SPLITS for patient in by_patient[split]}
        parts = {s: [c.case_id for c in cases if split_of[c.patient_id] == s] for s in SPLITS}
        within = " within each category" if stratified else ""
        method = (
            f"patients ordered by sha256('{name}:<patient_id>'){within}: first 20% (at least 1) test, "
            "next 10% (at least 1) val, rest train; groups of fewer than 3 patients all test"
        )
    return {
        "dataset": name,
        "version": VERSION,
        "method": method,
        "salt": name,
        "fractions": FRACTIONS,
        "unit": "patient" if any(c.patient_id != c.case_id for c in cases) else "case",
        "stratified_by": stratified,
        "counts": {s: len(parts[s]) for s in SPLITS},
        **{s: sorted(parts[s]) for s in SPLITS},
    }


def split_json(document: dict[str, Any]) -> str:
    """The exact text of a committed split file."""
    return json.dumps(document, indent=1, ensure_ascii=False) + "\n"


def committed_split(name: str) -> dict[str, Any] | None:
    """The committed split document of a dataset (aliases share their original's), or None."""
    info = get_info(name)
    path = SPLIT_DIR / f"{info.alias_of or info.name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _check_split_name(split: str) -> None:
    if split not in SPLITS:
        raise OncoSegError(f"unknown split {split!r}; expected one of: {', '.join(SPLITS)}")


def split_case_ids(dataset: Dataset, split: str) -> list[str]:
    """Case ids of ``split`` in ``dataset``: the committed split if there is one, else the rule's."""
    _check_split_name(split)
    document = committed_split(dataset.info.name) or make_split(dataset)
    known = {case.case_id for case in dataset.cases()}
    missing = [i for i in document[split] if i not in known]
    if missing:
        raise OncoSegError(
            f"{dataset.info.name}: {len(missing)} {split} cases of the fixed split are missing from "
            f"{dataset.folder} (first: {missing[0]})"
        )
    unsplit = known - {i for s in SPLITS for i in document[s]}
    if unsplit:
        log.warning("%s: %d cases are in no fixed split and are left out", dataset.info.name, len(unsplit))
    return document[split]
