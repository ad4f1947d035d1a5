"""A plain-text progress line for training whose output is not a terminal (nohup, SLURM, a pipe), where a
progress bar prints nothing or control characters:

    step 120/900  loss 0.412  val_dice 0.811  3.2 samples/s  ETA 4m05s

printed by rank 0 every ``every`` seconds (0: every step) and once when training ends. ``loss`` is the mean
training loss of the steps since the previous line, ``val_dice`` the last validation's, samples/s and ETA are
measured over this process's steps (all processes' samples counted).
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

from lightning.pytorch import Callback


def duration(seconds: float) -> str:
    """``35s``, ``4m05s``, ``2h07m``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ProgressLine(Callback):
    """Print the progress line to ``stream`` (default stdout). ``samples_per_step``: samples one optimizer
    step takes over all processes (batch size × accumulation × processes)."""

    def __init__(self, every: float = 30.0, samples_per_step: int = 1, stream: TextIO | None = None) -> None:
        self.every, self.samples_per_step, self.stream = float(every), samples_per_step, stream
        self.began = self.printed = 0.0
        self.first_step, self.total = 0, math.inf
        self.losses: list[float] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.began = self.printed = time.monotonic()
        self.first_step = trainer.global_step
        self.total = trainer.estimated_stepping_batches

    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch, batch_index: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:
            self.losses.append(float(loss))
        if time.monotonic() - self.printed >= self.every:
            self._print(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.losses:  # steps since the last line
            self._print(trainer)

    def line(self, trainer) -> str:
        step = trainer.global_step
        total = f"/{int(self.total)}" if math.isfinite(self.total) else ""
        loss = f"{sum(self.losses) / len(self.losses):.3f}" if self.losses else "-"
        dice = trainer.callback_metrics.get("val_dice")
        dice = "-" if dice is None else f"{float(dice):.3f}"
        elapsed = max(time.monotonic() - self.began, 1e-9)
        done = step - self.first_step
        rate = done * self.samples_per_step / elapsed
        if done and math.isfinite(self.total):
            eta = duration(max(0, self.total - step) * elapsed / done)
        else:
            eta = "-"
        return f"step {step}{total}  loss {loss}  val_dice {dice}  {rate:.1f} samples/s  ETA {eta}"

    def _print(self, trainer) -> None:
        self.printed = time.monotonic()
        if trainer.is_global_zero:
            print(self.line(trainer), file=self.stream or sys.stdout, flush=True)
        self.losses = []
