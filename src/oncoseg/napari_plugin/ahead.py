"""Encoding ahead in napari: while the model thread is idle, the slice on screen and then its neighbours outward
are encoded, so that a click there only runs the decoder.

The rule is the service's (`oncoseg.service.ahead`: which slice next, which cached embeddings may go) and so is
the thread (`oncoseg.service.worker.ModelWorker`): the panel's jobs are the worker's requests and this is its
background work, one slice per step, abandoned at the next model-code call when a job arrives
(`ModelWorker.yielding`) and taken up again after it. Only that one thread ever calls into the model. Moving
napari's slider, choosing another image or changing the modality only changes the target; the next step follows
it. Qt-free: the widget passes the slice shown and gets a `Ready` after every step.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from oncoseg.service import ahead as rule
from oncoseg.service.worker import ModelWorker, Preempted

RADIUS = 24  # slices each way around the one on screen (the service's default)
BUDGET_MB = 1024.0  # cached embeddings of the image at most (LiteMedSAM: 4 MiB a slice)


@dataclass(eq=False)
class Ready:
    """Which slices of an image (``opened``, the controller's `OpenImage`) have their embedding cached, and
    whether encoding ahead still has work on it."""

    opened: Any
    slices: tuple[int | None, ...]
    num_slices: int
    encoding: bool

    @property
    def count(self) -> int:
        return len(self.slices)

    def text(self) -> str:
        unit = "slice" if self.num_slices == 1 else "slices"
        return f"ready: {self.count}/{self.num_slices} {unit}" + (", encoding…" if self.encoding else "")


@dataclass(eq=False)
class _View:
    """What `oncoseg.service.ahead` reads of an open image: its image and predictor, the slice shown and the
    result whose slices are kept."""

    image: Any
    predictor: Any
    last_viewed: int | None
    obj: Any


class EncodeAhead:
    """Background encoding for one panel. ``prepare(opened)`` runs on the model thread and returns the model set
    on ``opened``'s image (the controller's `predictor`); ``on_ready(Ready)`` is called on the model thread after
    every step (the widget hands it to the Qt thread)."""

    def __init__(
        self,
        worker: ModelWorker,
        prepare: Callable[[Any], Any],
        on_ready: Callable[[Ready], None] | None = None,
        radius: int = RADIUS,
        budget_mb: float = BUDGET_MB,
    ):
        self.worker, self.prepare, self.on_ready = worker, prepare, on_ready
        self.radius, self.budget_mb = radius, budget_mb
        self.enabled = True
        self.encoded = 0  # slices encoded ahead to the end (not abandoned)
        self._target: tuple[Any, int | None] | None = None  # (opened, slice shown)
        self._encoding: tuple[Any, int | None] | None = None  # the encode in flight
        self._lock = threading.Lock()
        self._queued = False

    def order(self, image, z: int | None, cache_slices: int | None = None) -> list[int | None]:
        """The slices to encode, most wanted first (no more than the predictor's cache holds)."""
        order = rule.outward(z if image.is_3d else None, image.num_slices if image.is_3d else 1, self.radius)
        return order[:cache_slices] if cache_slices else order

    # -- main thread -------------------------------------------------------------------------------------------
    def show(self, opened, z: int | None) -> None:
        """Slice ``z`` of ``opened`` is on screen (again): encode it and its neighbours when the model is idle. An
        encode in flight that is no longer wanted stops at its next step."""
        self._target = (opened, z)
        busy = self._encoding
        if busy is not None and (busy[0] is not opened or busy[1] not in self.order(opened.session.image, z)):
            self.worker.abandon()
        self._schedule()

    def needs(self, opened, z: int | None) -> None:
        """A job on slice ``z`` of ``opened`` is about to be queued: when that slice is being encoded right now,
        the encode finishes (the job would redo it from the start) instead of being abandoned."""
        busy = self._encoding
        if busy is not None and busy[0] is opened and busy[1] == z:
            self.worker.finish_background()

    def stop(self) -> None:
        """No more encoding ahead (until `show`); the encode in flight stops at its next step."""
        self._target = None
        self.worker.abandon()

    def _schedule(self) -> None:
        with self._lock:
            if self._queued:
                return
            self._queued = True
        self.worker.background(self._step)

    # -- model thread ------------------------------------------------------------------------------------------
    def _step(self) -> None:
        """Encode the next wanted slice of the image shown (within the budget, dropping less wanted embeddings of
        it), report what is ready and queue the next step."""
        with self._lock:
            self._queued = False
        target = self._target
        if target is None or not self.enabled:
            return
        opened, z = target
        predictor = self.prepare(opened)  # the first time: the model is built (seconds)
        if self._target is not target:  # another slice or image was shown meanwhile
            return self._schedule()
        image = predictor.image
        view = _View(
            image, predictor, z if image.is_3d else None, opened.current[0] if opened.current else None
        )
        order = self.order(image, z, predictor.cache_slices)
        budget = int(self.budget_mb * 2**20)
        slice_ = rule.next_slice(view, order, budget - predictor.cache_nbytes)
        if slice_ is not None:
            self._encoding = (opened, slice_)
            try:
                with self.worker.yielding():
                    predictor.embedding(slice_)
                self.encoded += 1
            except Preempted:
                self.worker.preempted += 1
            finally:
                self._encoding = None
            over = predictor.cache_nbytes - budget
            if over > 0:
                rule.trim(view, order, over)
            rule.arrange(view, order)
        if self.on_ready is not None and self._target is not None:  # (not after `stop`)
            slices = tuple(rule.cached_slices(view))
            self.on_ready(Ready(opened, slices, image.num_slices if image.is_3d else 1, slice_ is not None))
        if slice_ is not None:
            self._schedule()
