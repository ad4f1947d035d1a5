"""`evaluate`: run a backend over a dataset split with a prompt protocol and score every case.

2D datasets: one prompt per picture and target. 3D datasets, in two modes: ``propagate`` (one prompt on the
slice where the target is largest, followed through the volume by `oncoseg.session.Session.segment`) and
``per_slice`` (a prompt on every slice that holds the target: an upper bound for propagation). Metrics per case
(`oncoseg.evaluate.metrics`) in mm for volumes, in pixels for plain pictures.

Each row records the exact prompt the model got (`Protocol.record`); ``prompts=`` runs an evaluation from such
records instead (`RecordedPrompts`: an earlier run's folder or another tool's file), and `replay` re-runs a
folder with its own settings and prompts.

    >>> from oncoseg.evaluate import evaluate
    >>> summary = evaluate("kvasir-seg", "runs/kvasir", split="test")
    >>> again = replay("runs/kvasir", "runs/kvasir-replay")   # same cases, prompts and model: same Dice
"""

from __future__ import annotations

import json
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
from oncoseg.evaluate.protocols import Protocol, RecordedPrompts, parse_protocol, record_prompts
from oncoseg.evaluate.results import EMPTY_TRUTH, ResultStore, save_prediction
from oncoseg.models.spec import ModelSpec
from oncoseg.predictor import Predictor
from oncoseg.session import Session

MODES_3D = ("propagate", "per_slice")
PROMPT_FRAME = {  # the coordinates of the prompt records, as written to run.json
    "2d": "pixel indices of the picture as stored: x the column, y the row, from the top-left pixel (0, 0)",
    "3d": "voxel indices of the volume as oncoseg.load_image returns it (reoriented to LPS: x the column, y the "
    "row, slice the index along the third axis); the record's orientation is the file's own",
}


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
    encoder: str = "auto"  # LiteMedSAM's image encoder; run.json records what "auto" resolved to
    limit: int | None = None  # at most this many cases, evenly spread over the split
    data_root: str | None = None
    prompts: str | None = None  # run the prompts recorded here (`RecordedPrompts`) instead of the protocol

    def __post_init__(self) -> None:
        if isinstance(self.protocol, str):
            self.protocol = parse_protocol(self.protocol)
        self.encoder = self.model_spec().resolved_encoder()
        unknown = set(self.modes) - set(MODES_3D)
        if unknown or not self.modes:
            raise OncoSegError(
                f"3D modes must be among {', '.join(MODES_3D)}, got {', '.join(self.modes) or 'none'}"
            )
        if self.split not in (None, "train", "val", "test"):
            raise OncoSegError(f"split must be train, val, test or all, not {self.split!r}")
        if self.limit is not None and self.limit < 1:
            raise OncoSegError("--limit must be at least 1")

    def model_spec(self) -> ModelSpec:
        return ModelSpec(
            backend=self.backend, checkpoint=self.checkpoint, precision=self.precision, encoder=self.encoder
        )

    def run_record(self, dataset: Dataset, recorded: RecordedPrompts | None = None) -> dict[str, Any]:
        """What identifies this run in ``run.json`` (a resumed run must match it): only what applies (2D
        datasets run the mode ``2d``; recorded prompts replace the protocol)."""
        record = asdict(self)
        record.update(
            protocol=self.protocol.as_dict() if recorded is None else {"kind": "recorded"},
            modes=self.run_modes(dataset.info.dim, recorded),
            prompt=self.protocol.describe() if recorded is None else recorded.description,
            prompt_frame=PROMPT_FRAME[dataset.info.dim],
            data_root=str(dataset.folder.resolve()),
            dim=dataset.info.dim,
            started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        if recorded is None:
            del record["prompts"]
        else:
            record["prompts"] = str(recorded.source.resolve())
        return record

    def run_modes(self, dim: str, recorded: RecordedPrompts | None = None) -> list[str]:
        """The modes this run evaluates: ``2d`` for pictures; for volumes the asked ones (with recorded
        prompts, those of them the records hold)."""
        if dim != "3d":
            return ["2d"]
        if recorded is None:
            return list(self.modes)
        return [mode for mode in self.modes if mode in recorded.modes()]


def select_cases(
    dataset: Dataset, split: str | None, limit: int | None, recorded: RecordedPrompts | None = None
) -> list[Case]:
    """The cases of ``split`` (with ``recorded`` prompts: those the records name), ``limit`` spread evenly."""
    cases = dataset.cases(split)
    if not cases:
        raise OncoSegError(
            f"{dataset.info.name}: the {split or 'whole'} split has no cases in {dataset.folder}"
        )
    if recorded is not None:
        named = recorded.case_ids()
        unknown = sorted(named - {case.case_id for case in dataset.cases()})
        if unknown:
            raise OncoSegError(
                f"{recorded.source} names {len(unknown)} case(s) that {dataset.info.name} in {dataset.folder} "
                f"does not have (first: {unknown[0]!r})"
            )
        outside = sorted(named - {case.case_id for case in cases})
        if outside:
            raise OncoSegError(
                f"{recorded.source} names {len(outside)} case(s) not in the {split or 'whole'} split of "
                f"{dataset.info.name} (first: {outside[0]!r}): use the run's --split, or --split all"
            )
        cases = [case for case in cases if case.case_id in named]
    if limit and limit < len(cases):
        picks = np.linspace(0, len(cases) - 1, limit).round().astype(int)
        cases = [cases[i] for i in sorted(set(picks.tolist()))]
    return cases


def make_predictor(config: EvaluationConfig) -> Predictor:
    """The predictor an evaluation uses; ``config.checkpoint`` is a LoRA adapter, a full state dict or a name
    registered by ``oncoseg train`` (see `oncoseg.train.checkpoints`)."""
    return config.model_spec().build_predictor(cache_slices=1024)


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
    recorded = load_recorded(config, opened)
    cases = select_cases(opened, config.split, config.limit, recorded)
    store = ResultStore(out, config.run_record(opened, recorded), overwrite=overwrite)
    done = store.finished()
    todo = [case for case in cases if case.case_id not in done]
    if todo:
        predictor = predictor or make_predictor(config)
        run_cases(predictor, todo, config, opened.info.dim, store, progress=progress, recorded=recorded)
    return store.write_tables([case.case_id for case in cases], opened.info.paper_dice)


def load_recorded(config: EvaluationConfig, dataset: Dataset) -> RecordedPrompts | None:
    """The recorded prompts of ``config.prompts`` (None without), checked against the dataset's modes."""
    if not config.prompts:
        return None
    recorded = RecordedPrompts(config.prompts)
    if not config.run_modes(dataset.info.dim, recorded):
        found = ", ".join(sorted(recorded.modes()))
        wanted = "2d" if dataset.info.dim != "3d" else ", ".join(config.modes)
        raise OncoSegError(
            f"{recorded.source} holds prompts for the mode(s) {found}, none of the {wanted} this run asks for"
        )
    return recorded


def replay(
    source: str | Path,
    out: str | Path,
    overwrite: bool = False,
    progress: bool = True,
    predictor: Predictor | None = None,
    data_root: str | None = None,
) -> dict[str, Any]:
    """Run the evaluation in folder ``source`` again into ``out``: its dataset, split, modes, tolerance and model
    settings from its ``run.json``, its cases and prompts from its per-case files. ``data_root`` replaces the
    recorded data folder (e.g. on another machine). Returns the summary."""
    source = Path(source)
    run_file = source / "run.json"
    if not run_file.is_file():
        raise OncoSegError(f"no run.json in {source}: --replay needs the folder of an `oncoseg evaluate` run")
    run = json.loads(run_file.read_text(encoding="utf-8"))
    if Path(out).resolve() == source.resolve():
        raise OncoSegError(f"the replay of {source} needs another output folder (--out)")
    modes = tuple(m for m in run.get("modes", MODES_3D) if m in MODES_3D) or MODES_3D
    keys = ("tolerance", "backend", "checkpoint", "precision", "encoder")
    settings = {key: run[key] for key in keys if key in run}
    if run.get("backend", "litemedsam") == "litemedsam":
        settings.setdefault("encoder", "teacher")  # runs from before the student encoder used the teacher
    return evaluate(
        run["dataset"], out, run.get("split"), "box", overwrite=overwrite, progress=progress,
        predictor=predictor, modes=modes, data_root=data_root or run.get("data_root"),
        prompts=str(source), **settings,
    )  # fmt: skip


def run_cases(
    predictor: Predictor,
    cases: list[Case],
    config: EvaluationConfig,
    dim: str,
    store: ResultStore,
    rank: int = 0,
    progress: bool = True,
    recorded: RecordedPrompts | None = None,
) -> None:
    """Evaluate ``cases`` one by one, recording each as soon as it is finished."""
    from tqdm import tqdm

    dices: list[float] = []
    bar = tqdm(cases, desc=config.dataset, unit="case", disable=not progress, dynamic_ncols=True)
    for case in bar:
        rows = evaluate_case(predictor, case, config, dim, store, recorded)
        store.record(case.case_id, rows, rank)
        dices += [row["dice"] for row in rows if row["dice"] is not None and row["mode"] != "per_slice"]
        if dices:
            bar.set_postfix(dice=f"{np.mean(dices):.3f}")


def evaluate_case(
    predictor: Predictor,
    case: Case,
    config: EvaluationConfig,
    dim: str,
    store: ResultStore,
    recorded: RecordedPrompts | None = None,
) -> list[dict[str, Any]]:
    """All rows of one case: one per target (2D) or per target and mode (3D), each with its prompt record."""
    image, truths = case.load()
    predictor.set_image(image, case.modality)
    spacing = image.spacing_zyx if image.is_3d else (1.0, 1.0)
    units = "mm" if image.is_3d else "px"
    geometry = {
        "image_shape": list(image.shape),
        "orientation": image.source_orientation if image.is_3d else None,
    }
    rows = []
    for target, truth in truths.items():
        base = {
            "dataset": case.dataset, "case_id": case.case_id, "patient_id": case.patient_id,
            "category": case.category or "", "target": target, "units": units,
        }  # fmt: skip
        text = Protocol.text_for(case.dataset, target) if config.protocol.kind == "text" else None
        if recorded is None and config.protocol.kind == "text" and text is None:
            continue  # no concept names this target
        for mode in config.run_modes(dim, recorded):
            if recorded is None:
                record = config.protocol.record(truth, mode, case.case_id, target, text)
                if record is not None:
                    record.update(geometry)
            else:
                found, record = recorded.get(case.case_id, target, mode)
                if not found:
                    continue  # the source did not prompt this target in this mode
                _check_geometry(
                    record, geometry, f"{recorded.source}: case {case.case_id!r} target {target!r}"
                )
            row = dict(base, mode=mode, prompt=record)
            if not truth.any():
                empty = dict(row, note=EMPTY_TRUTH, dice=None, iou=None, nsd=None, hd95=None)
                if record is not None:  # e.g. a text prompt should find nothing here: record what it found
                    prediction, _, _ = run_prompt(predictor, truth, mode, record, case.case_id)
                    empty["pred_voxels"] = float(np.count_nonzero(prediction))
                rows.append(empty)
                continue
            if record is None:
                continue  # an imported file that left this target unprompted
            began = time.perf_counter()
            prediction, prompt_slice, note = run_prompt(predictor, truth, mode, record, case.case_id)
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


def _check_geometry(record: dict[str, Any] | None, geometry: dict[str, Any], where: str) -> None:
    shape = (record or {}).get("image_shape")
    if shape is not None and list(shape) != geometry["image_shape"]:
        raise OncoSegError(
            f"{where}: the prompt was recorded on an image of shape {shape}, this one has {geometry['image_shape']}"
        )


def run_prompt(
    predictor: Predictor, truth: np.ndarray, mode: str, record: dict[str, Any], case_id: str
) -> tuple[np.ndarray, int | None, str]:
    """The prediction for one prompt record (`Protocol.record`), the prompted slice (propagation) and a note."""
    if record.get("text"):
        return _predict_text(predictor, truth, mode, record["text"]), None, ""
    where = f"case {case_id!r} ({mode})"
    prompts = record_prompts(record, where)
    if mode != "per_slice" and len(prompts) != 1:
        raise OncoSegError(f"{where}: mode {mode} takes exactly one prompt, the record has {len(prompts)}")
    if mode == "2d":
        return predictor.predict(prompts[0]).masks[0], None, ""
    if any(prompt.z is None for prompt in prompts):
        raise OncoSegError(f"{where}: a volume's prompt needs its slice")
    if mode == "per_slice":
        prediction = np.zeros_like(truth)
        for prompt in prompts:
            prediction[prompt.z] = predictor.predict(prompt, z=prompt.z).masks[0]
        return prediction, None, ""
    (prompt,) = prompts
    try:
        found = Session(predictor.image, predictor).segment(prompt, volume=True)
    except EmptyResultError:
        return np.zeros_like(truth), prompt.z, "empty prediction on the prompted slice"
    return found.mask, prompt.z, ""


def _predict_text(predictor: Predictor, truth: np.ndarray, mode: str, text: str) -> np.ndarray:
    """The union of every instance of ``text`` the backend finds (a volume: on every slice, joined in 3D)."""
    if predictor.image.is_3d:
        labels, _ = predictor.backend.segment_text_volume(predictor, text)
        return labels > 0
    found = predictor.backend.detect(predictor.embedding(None), text)
    return np.logical_or.reduce(found.masks, axis=0) if len(found.masks) else np.zeros_like(truth)
