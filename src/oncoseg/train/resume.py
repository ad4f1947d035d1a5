"""What lets a training phase stop anywhere and go on as if it never stopped.

* `ResumableLoader`: the training DataLoader saves its place in the epoch in every Lightning checkpoint; a run
  killed mid-epoch resumes with the next unseen batch (`EpochSampler.resume` skips the ones already trained).
* `StepCheckpoint`: writes ``last.ckpt`` every N optimizer steps, or every M minutes (default 10), besides the
  epoch-end checkpoint; the file is written to a temporary name and renamed (`AtomicCheckpointIO`).
* `ResumableCSVLogger` and `log_step`: one ``logs/version_0/metrics.csv`` (and one TensorBoard folder) per phase
  across resumes; rows logged after the checkpoint by a killed process are dropped and logged again.
* `RunClock`: ``time.json`` notes the seconds of every process that worked on the phase (a killed one up to its
  last note), so ``done.json`` counts them all.
"""

from __future__ import annotations

import csv
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Callback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from torch.utils.data import DataLoader

from oncoseg.errors import OncoSegError
from oncoseg.io import atomic_write_path

CLOCK_FILE = "time.json"


class ResumableLoader(DataLoader):
    """A training DataLoader over `oncoseg.train.phases.EpochSampler` with Lightning's ``state_dict`` /
    ``load_state_dict``: its state (epoch, batches handed out) goes into every checkpoint, and a resume starts
    after those batches. The underlying iterator starts at the first batch asked for, i.e. after Lightning has
    set the sampler's epoch (also with worker processes, which read indices as soon as they start)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches_out = 0

    def __iter__(self):
        self.batches_out = 0
        for batch in super().__iter__():
            self.batches_out += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.sampler.epoch), "batches": int(self.batches_out)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.resume(int(state["epoch"]), int(state["batches"]) * int(self.batch_size))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary name beside the target and renamed: a kill while writing leaves the
    previous checkpoint whole (Lightning's own writer may stage the file in another file system and copy it)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        import torch

        with atomic_write_path(path) as temporary:
            torch.save(checkpoint, temporary)


def remove_stale_temporaries(folder: Path) -> None:
    """Delete checkpoint files a killed process left half-written (``.tmp-*.ckpt``)."""
    for stale in folder.glob(".tmp-*.ckpt"):
        stale.unlink(missing_ok=True)


class StepCheckpoint(Callback):
    """Save ``path`` every ``every_steps`` optimizer steps, or when ``every_minutes`` have passed since the last
    save (the decision is rank 0's, shared by all processes), skipping an epoch's last batch (the epoch-end
    checkpoint follows) and batches inside a gradient accumulation (their gradients are not saved).

    Lightning logs a step's metrics after this hook, so the checkpoint carries them (``pending``, from the
    module's ``step_metrics``) and the resumed run logs them at ``on_train_start``: the log then has every step
    once, whenever the kill came (`log_step` says where the logs go back to). Loggers are flushed before every
    checkpoint, so the rows of the checkpointed past are on disk when its file appears."""

    def __init__(
        self, path: Path, every_steps: int | None = None, every_minutes: float | None = 10.0
    ) -> None:
        self.path = Path(path)
        self.every_steps, self.every_minutes = every_steps, every_minutes
        self.saved_at = time.monotonic()
        self.steps_at_save = -1
        self.log_step = 0
        self.pending: dict[str, float] | None = None  # the step's metrics, while its checkpoint is written
        self.relog: dict[str, float] | None = None  # ... read back from the checkpoint, to log on resume
        self.trainer = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.trainer = trainer

    def on_train_start(self, trainer, pl_module) -> None:
        self.saved_at = time.monotonic()
        if self.relog:
            for logger in trainer.loggers:
                logger.log_metrics(self.relog, step=self.log_step - 1)
            self.relog = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        # the previous epoch's last rows (its mean loss, logged after the epoch-end checkpoint) go to disk now
        for logger in trainer.loggers:
            logger.save()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_index: int) -> None:
        done = batch_index + 1
        if done % trainer.accumulate_grad_batches or done >= trainer.num_training_batches:
            return
        step = trainer.global_step
        if self.every_steps:
            due = step % self.every_steps == 0 and step != self.steps_at_save
        else:
            due = time.monotonic() - self.saved_at >= 60.0 * float(self.every_minutes or 0.0)
            due = bool(trainer.strategy.broadcast(due, src=0))
        if due:
            self.pending = {**getattr(pl_module, "step_metrics", {}), "epoch": trainer.current_epoch}
            try:
                trainer.save_checkpoint(self.path, weights_only=False)
            finally:
                self.pending = None
            self.saved_at, self.steps_at_save = time.monotonic(), step

    def state_dict(self) -> dict[str, Any]:
        # Lightning logs a step's rows at the count of optimizer steps before it, so rows at steps below the
        # steps done when the checkpoint is written belong to the checkpointed past (see `log_step`).
        if self.trainer is None:
            return {"log_step": 0, "pending": None}
        for logger in self.trainer.loggers:
            logger.save()
        return {"log_step": int(self.trainer.global_step), "pending": self.pending}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.log_step = int(state.get("log_step", 0))
        self.relog = state.get("pending")


def log_step(checkpoint: dict[str, Any]) -> int:
    """The first logged step that is not the checkpointed past's: a run resumed from ``checkpoint`` drops what
    a killed process logged from there on (and logs it again). A mid-epoch checkpoint's own step is logged
    again from the checkpoint itself (`StepCheckpoint`)."""
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if str(key).startswith("StepCheckpoint") and isinstance(state, dict):
            step = int(state.get("log_step", 0))
            return step - 1 if state.get("pending") else step
    return int(checkpoint.get("global_step", 0))


class _KeptRowsWriter(ExperimentWriter):
    """Lightning's CSV writer, but an existing ``metrics.csv`` is kept (its rows at steps below ``keep_before``)
    and appended to, instead of deleted."""

    def __init__(self, log_dir: str, keep_before: int | None) -> None:
        self.keep_before = keep_before
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        if self.keep_before is None:  # a fresh start of the phase
            path.unlink()
            return
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            keys = list(reader.fieldnames or [])
            rows = [row for row in reader if _step(row) < self.keep_before]
        with (
            atomic_write_path(path) as temporary,
            open(temporary, "w", newline="", encoding="utf-8") as handle,
        ):
            writer = csv.DictWriter(handle, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        self.metrics_keys = sorted(keys)


def _step(row: dict[str, str]) -> float:
    try:
        return float(row.get("step") or 0)
    except ValueError:
        return 0.0


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` writing one ``NAME/version_0/metrics.csv`` across resumes, flushed after every step (a
    killed run loses no logged row). ``keep_before``: None for a fresh phase, else the step to go back to."""

    def __init__(self, save_dir: Path, name: str, keep_before: int | None) -> None:
        super().__init__(save_dir, name=name, version=0, flush_logs_every_n_steps=1)
        self.keep_before = keep_before

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeptRowsWriter(self.log_dir, self.keep_before)
        return self._experiment


class RunClock:
    """Seconds spent on a phase by every process, noted in ``FOLDER/time.json`` as
    ``{"processes": [{"started": ISO time, "seconds": s}, ...]}``. Only the writing process (rank 0) notes."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / CLOCK_FILE
        self.began = time.perf_counter()
        self.started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.earlier = self._read()
        self.writer = True

    def _read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        try:
            processes = json.loads(self.path.read_text(encoding="utf-8"))["processes"]
            return [{"started": str(p["started"]), "seconds": float(p["seconds"])} for p in processes]
        except (ValueError, KeyError, TypeError):
            raise OncoSegError(
                f"{self.path} is damaged: delete it (the phase's time so far is then not counted)"
            ) from None

    @property
    def seconds(self) -> float:
        """This process's seconds so far."""
        return time.perf_counter() - self.began

    @property
    def processes(self) -> list[dict[str, Any]]:
        return [*self.earlier, {"started": self.started, "seconds": round(self.seconds, 1)}]

    @property
    def total(self) -> float:
        """Seconds of every process, this one included."""
        return sum(p["seconds"] for p in self.earlier) + self.seconds

    def note(self) -> None:
        if not self.writer:
            return
        with atomic_write_path(self.path) as temporary:
            Path(temporary).write_text(
                json.dumps({"processes": self.processes}, indent=1) + "\n", encoding="utf-8"
            )


class ClockNotes(Callback):
    """Note the clock when training starts, at every checkpoint and every ``every`` seconds of training."""

    def __init__(self, clock: RunClock, every: float = 30.0) -> None:
        self.clock, self.every, self.noted = clock, every, 0.0

    def _note(self) -> None:
        self.clock.note()
        self.noted = time.monotonic()

    def on_train_start(self, trainer, pl_module) -> None:
        self._note()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_index: int) -> None:
        if time.monotonic() - self.noted >= self.every:
            self._note()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        self._note()
