"""Evaluation spread over several processes (GPUs, CPU processes, machines) through Lightning's predict loop.

Each process loads the model once and evaluates its share of the cases (Lightning's distributed sampler), writing
to its own log in the output folder; process 0 then writes the tables. Used by ``oncoseg evaluate --devices N``
(``--num-nodes`` for several machines, started the way Lightning documents for DDP); the cases, prompts and
numbers are the same as in a single process because prompts are seeded per case.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from oncoseg.errors import OncoSegError
from oncoseg.evaluate.results import ResultStore
from oncoseg.evaluate.runner import (
    EvaluationConfig,
    evaluate_case,
    load_recorded,
    make_predictor,
    select_cases,
)


def _lightning():
    try:
        import lightning
    except ImportError:
        raise OncoSegError("distributed evaluation needs Lightning: pip install 'oncoseg[train]'") from None
    return lightning


def is_launcher_process() -> bool:
    """True in the process the user started (Lightning re-runs the command for the other local ranks)."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0


def evaluate_distributed(
    config: EvaluationConfig,
    out: str | Path,
    devices: int = 2,
    num_nodes: int = 1,
    accelerator: str = "cpu",
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any] | None:
    """Like `oncoseg.evaluate.evaluate` over ``devices × num_nodes`` processes; returns the summary in process 0
    and ``None`` in the others."""
    lightning = _lightning()
    import torch
    from torch.utils.data import DataLoader

    from oncoseg.data import open_dataset

    opened = open_dataset(config.dataset, config.data_root)
    recorded = load_recorded(config, opened)
    cases = select_cases(opened, config.split, config.limit, recorded)
    store = ResultStore(
        out, config.run_record(opened, recorded), overwrite=overwrite and is_launcher_process()
    )
    done = store.finished()
    todo = [case for case in cases if case.case_id not in done]

    class CaseEvaluator(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.predictor = make_predictor(config)
            self.network = self.predictor.backend.model  # so the strategy sees the model's parameters

        def on_predict_start(self) -> None:
            # One process per core share: two processes with two threads each on two cores would slow both.
            per_process = max(1, (os.cpu_count() or 1) // max(1, self.trainer.num_devices))
            torch.set_num_threads(per_process)

        def on_predict_end(self) -> None:
            # Every process has written its last case before process 0 reads the logs.
            self.trainer.strategy.barrier("oncoseg-evaluate-done")

        def predict_step(self, batch: list[int], batch_idx: int) -> None:
            for index in batch:
                case = todo[index]
                rows = evaluate_case(self.predictor, case, config, opened.info.dim, store, recorded)
                store.record(case.case_id, rows, rank=self.global_rank)

    if todo:
        trainer = lightning.Trainer(
            accelerator=accelerator,
            devices=devices,
            num_nodes=num_nodes,
            strategy="ddp" if devices * num_nodes > 1 else "auto",
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=progress,
        )
        loader = DataLoader(list(range(len(todo))), batch_size=1, collate_fn=list)
        trainer.predict(CaseEvaluator(), loader, return_predictions=False)
        if trainer.global_rank != 0:
            return None
    return store.write_tables([case.case_id for case in cases], opened.info.paper_dice)
