"""3D work as jobs: a propagation, or a correction on one slice of a 3D result with its re-walk, runs on the model
thread while the client polls its progress (slices the model answered / the most it may visit), sees the slices
finished so far, and may cancel it. Cancelling raises `JobCancelled` from the walk's ``on_slice`` callback; the
core `Session` then changes nothing, so the result from before the job stays.

A slice shows as finished once the walk has gone on from it (the walk only leaves a slice it keeps); the last
slice of each direction shows when the job is done, with the whole result.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from oncoseg.models.base import MaskPrediction
from oncoseg.volume import keep_touching

QUEUED, RUNNING, DONE, CANCELLED, FAILED = "queued", "running", "done", "cancelled", "failed"
FINISHED = (DONE, CANCELLED, FAILED)
KEEP_JOBS = 8  # finished jobs remembered per image (the newest)


class JobCancelled(Exception):
    """Raised from ``on_slice`` when the client cancelled the job."""


def walk_extent(num_slices: int, z: int, max_slices: int | None, anchors=()) -> int:
    """The most slices a walk from slice ``z`` answers: ``z`` itself and the slices each way up to the volume's
    end or the next of ``anchors`` (not included), at most ``max_slices`` each way."""
    up = min([a for a in anchors if a is not None and a > z], default=num_slices) - z - 1
    down = z - max([a for a in anchors if a is not None and a < z], default=-1) - 1
    if max_slices is not None:
        up, down = min(up, max_slices), min(down, max_slices)
    return 1 + up + down


@dataclass(eq=False)
class Job:
    """One 3D job on an open image. ``base`` is the result before the job (a correction's slices show it until
    they are walked again; None for a new propagation)."""

    image_id: str
    action: str  # "propagate" or "refine"
    z: int
    total: int
    base: np.ndarray | None = None
    id: str = field(default_factory=lambda: secrets.token_urlsafe(9))
    state: str = QUEUED
    done: int = 0  # slices the model answered (or the walk reached: a backend's own tracker answers unseen)
    result: dict[str, Any] | None = None  # the 3D answer, once done
    error: BaseException | None = None
    final: np.ndarray | None = None  # the result mask the job made
    created: float = field(default_factory=time.monotonic)
    finished: float | None = None
    _cancel: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _answers: dict = field(default_factory=dict)  # z -> (mask, score) the model gave, not yet walked from
    _candidates: dict = field(default_factory=dict)  # z -> (mask, score) walked to, kept if the walk goes on
    _finished_slices: dict = field(default_factory=dict)  # z -> (mask, score) the walk kept
    _seen: set = field(default_factory=set)  # slices answered or reached

    # ------------------------------------------------------------------ control
    def cancel(self) -> None:
        """Ask the job to stop (a queued job is cancelled at once; a running one at its next slice)."""
        with self._lock:
            self._cancel.set()
            if self.state == QUEUED:
                self._finish(CANCELLED)

    def release(self) -> None:
        """Forget the result mask of a finished job (a newer job on the image supersedes it)."""
        with self._lock:
            self.final = None

    def start(self) -> bool:
        """Called on the model thread: False when the job was cancelled before it started."""
        with self._lock:
            if self.state != QUEUED:
                return False
            self.state = RUNNING
            return True

    def finish(self, state: str, result=None, final=None, error: BaseException | None = None) -> None:
        with self._lock:
            self._finish(state, result, final, error)

    def _finish(self, state, result=None, final=None, error=None) -> None:
        self.state, self.result, self.final, self.error = state, result, final, error
        self.finished = time.monotonic()
        if state == DONE and self.done:
            self.total = self.done  # the walk stopped where the object ended: all there was to do is done
        self.base = None
        self._answers.clear()
        self._candidates.clear()
        if state != DONE:
            self._finished_slices.clear()

    # ------------------------------------------------------------------ callbacks (model thread)
    def answered(self, z: int | None, prediction: MaskPrediction) -> None:
        """The predictor's listener: the model answered slice ``z``."""
        mask, score = prediction.masks[0], float(prediction.scores[0])
        with self._lock:
            self._seen.add(z)
            self.done = len(self._seen)
            if z == self.z:
                # the start slice as the model gave it; a correction with exclude clicks tries several boxes
                # there and keeps the best-scoring mask that honours the clicks: shown here is the best-scoring
                # one (the job's result, once done, is the core's choice)
                kept = self._finished_slices.get(z)
                if mask.any() and (kept is None or score > kept[1]):
                    self._finished_slices[z] = (mask, score)
            else:
                self._answers[z] = (mask, score)

    def on_slice(self, z: int) -> None:
        """The walk's ``on_slice``: raises JobCancelled when cancelled; otherwise the slice walked from before
        this one was kept, and this one is a candidate (with the walk's own rule: the pieces touching its
        neighbour)."""
        if self._cancel.is_set():
            raise JobCancelled(f"job {self.id} cancelled")
        with self._lock:
            self._seen.add(z)
            self.done = len(self._seen)
        if z == self.z:
            return
        previous = z - (1 if z > self.z else -1)
        with self._lock:
            if previous in self._candidates:
                self._finished_slices[previous] = self._candidates.pop(previous)
            reference = self._finished_slices.get(previous)
            answer = self._answers.pop(z, None)
        if reference is not None and answer is not None:  # outside the lock: polls never wait for it
            candidate = (keep_touching(answer[0], reference[0]), answer[1])
            with self._lock:
                self._candidates[z] = candidate

    # ------------------------------------------------------------------ views
    def view(self, z: int, shape: tuple[int, int]) -> np.ndarray | None:
        """The job's mask on slice ``z``: the slices finished so far over the result from before (running), the
        job's result (done, until a newer job supersedes it); None when it was cancelled or failed (the image's
        result is unchanged) or superseded."""
        with self._lock:
            if self.state == DONE:
                return None if self.final is None else self.final[z]
            if self.state in (CANCELLED, FAILED):
                return None
            if z in self._finished_slices:
                return self._finished_slices[z][0]
            return self.base[z] if self.base is not None else np.zeros(shape, dtype=bool)

    def as_dict(self, describe_error: Callable[[BaseException], dict[str, Any]]) -> dict[str, Any]:
        with self._lock:
            if self.state == DONE and self.result is not None:
                scores = dict(self.result["slice_scores"])
            else:
                scores = {str(z): round(s, 4) for z, (_, s) in sorted(self._finished_slices.items())}
            end = self.finished if self.finished is not None else time.monotonic()
            return {
                "job_id": self.id,
                "image_id": self.image_id,
                "action": self.action,
                "z": self.z,
                "state": self.state,
                "done": self.done,
                "total": self.total,
                "slices": [int(z) for z in scores],  # finished so far (all the result's slices once done)
                "slice_scores": scores,
                "result": self.result,
                "error": describe_error(self.error) if self.error is not None else None,
                "elapsed_ms": round(1000 * (end - self.created), 1),
            }
