"""`evaluate`: run a backend over a dataset split with a prompt protocol and score every case.

2D datasets: one prompt per picture and target. 3D datasets, in two modes: ``propagate`` (one prompt on the
slice where the target is largest, followed through the volume by `oncoseg.session.Session.segment`) and
``per_slice`` (a prompt on every slice that holds the target: an upper bound for propagation). Metrics per case (`oncoseg.evaluate.metrics`) in mm
for volumes, in pixels for plain pictures.

    >>> from oncoseg.evaluate import evaluate
    >>> summary = evaluate("kvasir-seg", "runs/kvasir", split="test")
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from oncoseg.data import open_dataset
from oncoseg.data.adapters import Case, Dataset
from oncoseg.errors import EmptyResultError, OncoSegError
from oncoseg.evaluate.metrics import score
from oncoseg.evaluate.protocols import Protocol, parse_protocol
from oncoseg.evaluate.results import EMPTY_TRUTH, ResultStore, save_prediction
from oncoseg.models.spec import ModelSpec
from oncoseg.predictor import Predictor
from oncoseg.session import Session

MODES_3D = ("propagate", "per_slice")


@dataclass
class EvaluationConfig:
    dataset: str
    split: str | None = "test"  # "train", "val", "test" or None for every case
    protocol: Protocol = field(default_factory=Protocol)
    modes: tuple[str, ...] = MODES_3D  # for 3D datasets
    tolerance: float = 2.0  # NSD tolerance (mm for volumes, pixels for pictures)
    backend: str = "litemedsam"
    checkpoint: str | None = None
    precision: str = "auto"
    limit: int | None = None  # at most this many cases, evenly spread over the split
    data_root: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.protocol, str):
            self.protocol = parse_protocol(self.protocol)
        unknown = set(self.modes) - set(MODES_3D)
        if unknown or not self.modes:
            raise OncoSegError(
                f"3D modes must be among {', '.join(MODES_3D)}, got {', '.join(self.modes) or 'none'}"
            )
        if self.split not in (None, "train", "val", "test"):
            raise OncoSegError(f"split must be train, val, test or all, not {self.split!r}")
        if self.limit is not None and self.limit < 1:
            raise OncoSegError("--limit must be at least 1")

    def run_record(self, dataset: Dataset) -> dict[str, Any]:
        """What identifies this run in ``run.json`` (a resumed run must match it)."""
        record = asdict(self)
        record.update(
            protocol=self.protocol.as_dict(),
            modes=list(self.modes),
            prompt=self.protocol.describe(),
            data_root=str(dataset.folder.resolve()),
            dim=dataset.info.dim,
            started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        return record


def select_cases(dataset: Dataset, split: str | None, limit: int | None) -> list[Case]:
    cases = dataset.cases(split)
    if not cases:
        raise OncoSegError(
            f"{dataset.info.name}: the {split or 'whole'} split has no cases in {dataset.folder}"
        )
    if limit and limit < len(cases):
        picks = np.linspace(0, len(cases) - 1, limit).round().astype(int)
        cases = [cases[i] for i in sorted(set(picks.tolist()))]
    return cases


def make_predictor(config: EvaluationConfig) -> Predictor:
    """The predictor an evaluation uses; ``config.checkpoint`` is a LoRA adapter, a full state dict or a name
    registered by ``oncoseg train`` (see `oncoseg.train.checkpoints`)."""
    spec = ModelSpec(backend=config.backend, checkpoint=config.checkpoint, precision=config.precision)
    return spec.build_predictor(cache_slices=1024)


def evaluate(
    dataset: str,
    out: str | Path,
    split: str | None = "test",
    protocol: str | Protocol = "box",
    overwrite: bool = False,
    progress: bool = True,
    predictor: Predictor | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Evaluate ``dataset`` (a registry name) and write the results to ``out``; returns the summary.

    ``options`` are the other `EvaluationConfig` fields. Cases already in ``out`` (same settings) are skipped."""
    config = EvaluationConfig(dataset, split, protocol, **options)
    opened = open_dataset(config.dataset, config.data_root)
    cases = select_cases(opened, config.split, config.limit)
    store = ResultStore(out, config.run_record(opened), overwrite=overwrite)
    done = store.finished()
    todo = [case for case in cases if case.case_id not in done]
    if todo:
        predictor = predictor or make_predictor(config)
        run_cases(predictor, todo, config, opened.info.dim, store, progress=progress)
    return store.write_tables([case.case_id for case in cases], opened.info.paper_dice)


def run_cases(
    predictor: Predictor,
    cases: list[Case],
    config: EvaluationConfig,
    dim: str,
    store: ResultStore,
    rank: int = 0,
    progress: bool = True,
) -> None:
    """Evaluate ``cases`` one by one, recording each as soon as it is finished."""
    from tqdm import tqdm

    dices: list[float] = []
    bar = tqdm(cases, desc=config.dataset, unit="case", disable=not progress, dynamic_ncols=True)
    for case in bar:
        rows = evaluate_case(predictor, case, config, dim, store)
        store.record(case.case_id, rows, rank)
        dices += [row["dice"] for row in rows if row["dice"] is not None and row["mode"] != "per_slice"]
        if dices:
            bar.set_postfix(dice=f"{np.mean(dices):.3f}")


def evaluate_case(
    predictor: Predictor, case: Case, config: EvaluationConfig, dim: str, store: ResultStore
) -> list[dict[str, Any]]:
    """All rows of one case: one per target (2D) or per target and mode (3D)."""
    image, truths = case.load()
    predictor.set_image(image, case.modality)
    spacing = image.spacing_zyx if image.is_3d else (1.0, 1.0)
    units = "mm" if image.is_3d else "px"
    rows = []
    for target, truth in truths.items():
        base = {
            "dataset": case.dataset, "case_id": case.case_id, "patient_id": case.patient_id,
            "category": case.category or "", "target": target, "units": units,
        }  # fmt: skip
        text = Protocol.text_for(case.dataset, target) if config.protocol.kind == "text" else None
        if config.protocol.kind == "text" and text is None:
            continue  # no concept names this target
        modes = config.modes if image.is_3d else ("2d",)
        for mode in modes:
            row = dict(base, mode=mode)
            if not truth.any():
                empty = dict(row, note=EMPTY_TRUTH, dice=None, iou=None, nsd=None, hd95=None)
                if text is not None:  # a text prompt should find nothing here: record what it found
                    empty["pred_voxels"] = float(
                        np.count_nonzero(_predict_text(predictor, truth, mode, text))
                    )
                rows.append(empty)
                continue
            began = time.perf_counter()
            if text is not None:
                prediction, prompt_slice, note = _predict_text(predictor, truth, mode, text), None, ""
            else:
                prediction, prompt_slice, note = _predict(
                    predictor, truth, mode, config.protocol, (case.case_id, target)
                )
            row.update(score(prediction, truth, spacing, config.tolerance))
            mask_path = store.mask_path(case.case_id, target, mode)
            save_prediction(mask_path, prediction)
            row.update(
                prompt_slice=prompt_slice,
                seconds=round(time.perf_counter() - began, 3),
                mask_file=str(mask_path.relative_to(store.folder)),
                note=note,
            )
            rows.append(row)
    return rows


def _predict_text(predictor: Predictor, truth: np.ndarray, mode: str, text: str) -> np.ndarray:
    """The union of every instance of ``text`` the backend finds (a volume: on every slice, joined in 3D)."""
    if predictor.image.is_3d:
        labels, _ = predictor.backend.segment_text_volume(predictor, text)
        return labels > 0
    found = predictor.backend.detect(predictor.embedding(None), text)
    return np.logical_or.reduce(found.masks, axis=0) if len(found.masks) else np.zeros_like(truth)


def _predict(
    predictor: Predictor, truth: np.ndarray, mode: str, protocol: Protocol, keys: tuple
) -> tuple[np.ndarray, int | None, str]:
    """The predicted mask for one target, the prompted slice (3D propagation) and a note."""
    if mode == "2d":
        return predictor.predict(protocol.prompt(truth, *keys)).masks[0], None, ""
    if mode == "per_slice":
        prediction = np.zeros_like(truth)
        for z in np.flatnonzero(truth.any(axis=(1, 2))):
            prediction[z] = predictor.predict(protocol.prompt(truth[z], *keys, z=int(z)), z=int(z)).masks[0]
        return prediction, None, ""
    start = int(np.argmax(truth.sum(axis=(1, 2))))
    try:
        found = Session(predictor.image, predictor).segment(
            protocol.prompt(truth[start], *keys, z=start), volume=True
        )
    except EmptyResultError:
        return np.zeros_like(truth), start, "empty prediction on the prompted slice"
    return found.mask, start, ""
