"""Evaluation: metrics, prompt protocols, the runner over dataset splits, and reports.

>>> from oncoseg.evaluate import evaluate
>>> summary = evaluate("kvasir-seg", "runs/kvasir", split="test", protocol="box")

`run_evaluation` is what ``oncoseg evaluate`` calls: it names the output folder, points SAM3 at its weights and
runs in one process or over Lightning DDP (``prompts=`` runs recorded prompts instead of a protocol; `replay`
re-runs a folder); `run_interactive_evaluation` runs the interactive protocol
(`oncoseg.evaluate.interactive`) on a dataset and writes ``interactive.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = [
    "EvaluationConfig",
    "default_output_folder",
    "evaluate",
    "evaluate_distributed",
    "replay",
    "run_evaluation",
    "run_interactive_evaluation",
    "write_report",
]


def __getattr__(name: str) -> Any:  # the runner imports torch: load it only when asked for
    if name in ("evaluate", "EvaluationConfig", "replay"):
        from oncoseg.evaluate import runner

        return getattr(runner, name)
    if name == "evaluate_distributed":
        from oncoseg.evaluate.distributed import evaluate_distributed

        return evaluate_distributed
    if name == "write_report":
        from oncoseg.evaluate.report import write_report

        return write_report
    raise AttributeError(name)


def default_output_folder(dataset: str, split: str | None, protocol: str) -> Path:
    """``eval-output/DATASET-SPLIT-PROTOCOL`` (split ``all`` for every case; ``box:jitter=0.1`` → ``box-jitter0.1``)."""
    return Path(f"eval-output/{dataset}-{split or 'all'}-{protocol.replace(':', '-').replace('=', '')}")


def use_sam3_weights(weights: str | Path | None) -> None:
    """Point SAM3 at its weights folder through its environment variable, which DDP worker processes inherit."""
    if weights:
        from oncoseg.models.sam3 import WEIGHTS_ENV

        os.environ[WEIGHTS_ENV] = str(Path(weights).expanduser().resolve())


def run_evaluation(
    dataset: str,
    out: str | Path | None = None,
    split: str | None = "test",
    protocol: str = "box",
    *,
    seed: int = 0,
    weights: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    devices: int = 1,
    num_nodes: int = 1,
    accelerator: str = "cpu",
    **options: Any,
) -> tuple[dict[str, Any] | None, Path]:
    """Evaluate ``dataset`` with ``protocol`` (``box``, ``box:jitter=0.1``, ``points:3``, ``text``) in one process,
    or over ``devices × num_nodes`` Lightning DDP processes when that is more than one. ``split`` ``"all"`` (or
    None) takes every case; ``out`` defaults to `default_output_folder`; ``options`` are the other
    `EvaluationConfig` fields (modes, tolerance, backend, checkpoint, precision, limit, data_root, prompts: a
    file or folder of recorded prompts used instead of ``protocol``). Returns the
    summary (None in DDP worker processes: process 0 reports) and the output folder."""
    from oncoseg.evaluate.protocols import parse_protocol
    from oncoseg.evaluate.runner import EvaluationConfig, evaluate

    parsed = parse_protocol(protocol, seed=seed)
    use_sam3_weights(weights)
    split = None if split == "all" else split
    config = EvaluationConfig(dataset=dataset, split=split, protocol=parsed, **options)
    out = (
        Path(out)
        if out
        else default_output_folder(dataset, split, "recorded" if options.get("prompts") else protocol)
    )
    if devices * num_nodes > 1:
        from oncoseg.evaluate.distributed import evaluate_distributed

        return evaluate_distributed(config, out, devices, num_nodes, accelerator, overwrite, progress), out
    fields = {k: v for k, v in vars(config).items() if k not in ("dataset", "split", "protocol")}
    return evaluate(dataset, out, split, parsed, overwrite=overwrite, progress=progress, **fields), out


def run_interactive_evaluation(
    dataset: str,
    out: str | Path | None = None,
    split: str | None = "test",
    *,
    clicks: int = 5,
    initial: str = "box2d",
    limit: int | None = None,
    data_root: str | None = None,
    tolerance: float = 2.0,
    backend: str = "litemedsam",
    weights: str | Path | None = None,
    checkpoint: str | None = None,
    precision: str = "auto",
    encoder: str = "auto",
    model: Any = None,
    progress=None,
):
    """The interactive protocol (a box, then ``clicks`` simulated corrective clicks; see
    `oncoseg.evaluate.interactive`) on the targets of ``dataset``'s ``split`` (``"all"``/None: every case),
    written to ``OUT/interactive.json`` (settings, summaries by dataset and target, every case's curve). ``model``
    (a `Predictor`, `ModelSpec` or backend name) replaces the one of backend/weights/checkpoint/precision.
    ``progress(i, case_result)`` is called after each target. Returns the `InteractiveResult` and the file."""
    from itertools import chain

    from oncoseg.evaluate.interactive import dataset_cases, run_interactive

    split = None if split == "all" else split
    folder = Path(out) if out else default_output_folder(dataset, split, f"interactive-{initial}-{clicks}")
    cases = dataset_cases(dataset, split=split, limit=limit, root=data_root)
    # the dataset's checks (a 3D dataset, cases in the split) before the model loads
    first = next(cases, None)
    cases = chain([first], cases) if first is not None else iter(())
    if model is None:
        from oncoseg.models.spec import ModelSpec

        use_sam3_weights(weights)
        model = ModelSpec(backend=backend, weights=weights and str(weights), checkpoint=checkpoint,
                          precision=precision, encoder=encoder)  # fmt: skip
    result = run_interactive(
        cases, model, clicks=clicks, initial=initial, progress=progress, tolerance=tolerance
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "interactive.json"
    document = {"dataset": dataset, "split": split or "all", **result.as_dict()}
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    temporary.replace(path)
    return result, path
