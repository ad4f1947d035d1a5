"""One thread runs all model work, fed by a bounded queue: requests beyond it are refused at once (HTTP 503)
instead of piling up, and the event loop stays free to answer health checks.

Background jobs (encoding ahead the slice a user is looking at and its neighbours) run only when no request
waits, and never count against the queue limit. A running torch operation cannot be interrupted, but an encode
is a few hundred of them called from Python: background work runs under `ModelWorker.yielding`, where a request
arriving (or `abandon`) makes the next call of a model-code function raise `Preempted`, so a request waits for
the step in flight (milliseconds to tens of them), not for a whole encode; the abandoned encode is
started again later.

Every torch computation of the service belongs on this thread, the model's construction included. torch's CPU
parallelism is OpenMP (libgomp), which keeps one pool of worker threads per thread that starts parallel work;
once the pools together hold more threads than there are cores, libgomp stops letting idle workers spin and
puts them to sleep after every parallel region, and the many short regions of an encoder then run nearly on one
core. Measured on 2 cores: the encoder took 1.2–1.9× longer on a second thread after one parallel torch
operation on the main thread than with all torch work on one thread.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import queue
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from oncoseg.errors import BusyError

log = logging.getLogger(__name__)

REQUEST, BACKGROUND, STOP = 0, 1, 2


MODEL_CODE = str(Path(__file__).resolve().parent.parent / "models")  # where background work may be abandoned
RESUMABLE = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


class Preempted(Exception):
    """Background model work abandoned between two steps: a request arrived (or `abandon` was called)."""


class ModelWorker:
    """``await worker.run(fn, *args)`` runs ``fn`` on the single model thread (requests FIFO, at most
    ``max_queue`` waiting); ``worker.background(fn, *args)`` queues low-priority work."""

    def __init__(self, max_queue: int = 8):
        self.max_queue = max_queue
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()
        self._lock = threading.Lock()
        self._waiting = 0  # requests queued, not yet running
        self.completed = 0
        self.rejected = 0
        self.preempted = 0  # background computations abandoned for a request
        self._abandon = threading.Event()
        self._finish = (
            threading.Event()
        )  # let the background work in flight finish: a request needs its result
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="oncoseg-model", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Requests waiting for the model (background jobs not counted)."""
        return self._waiting

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        with self._lock:
            if self._waiting >= self.max_queue:
                self.rejected += 1
                raise BusyError(f"the model is busy ({self.max_queue} requests waiting): retry in a moment")
            self._waiting += 1
        future: Future = Future()
        self._queue.put((REQUEST, next(self._order), future, fn, args))
        return future

    def background(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn`` behind every request; errors are logged, not raised."""
        self._queue.put((BACKGROUND, next(self._order), None, fn, args))

    def finish_background(self) -> None:
        """Let the background computation in flight finish although requests wait (one of them needs it)."""
        self._finish.set()

    def abandon(self) -> None:
        """Make the background computation in flight (if any) stop at its next step."""
        self._abandon.set()

    @contextmanager
    def yielding(self):
        """Around background model work on the model thread: a waiting request (or `abandon`) raises `Preempted`
        at the next call of a plain function of the model code (`oncoseg.models`: an encoder's steps), where
        no cleanup can be skipped (never at a context manager's enter/exit or a generator's resumption). A
        trace function of this thread only, there only while this runs (a debugger's or coverage's is put back
        after)."""
        before = sys.gettrace()

        def check(frame, event, arg):
            code = frame.f_code
            if (
                event == "call"
                and ((self._waiting and not self._finish.is_set()) or self._abandon.is_set())
                and code.co_filename.startswith(MODEL_CODE)
                and not code.co_name.startswith("__")
                and not code.co_flags & RESUMABLE
            ):
                raise Preempted
            # no per-line tracing

        sys.settrace(check)
        try:
            yield
        finally:
            sys.settrace(before)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.wrap_future(self.submit(fn, *args))

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` on the model thread and wait for it (directly when already on it)."""
        if threading.current_thread() is self._thread:
            return fn(*args)
        return self.submit(fn, *args).result()

    def _loop(self) -> None:
        while True:
            kind, _, future, fn, args = self._queue.get()
            if kind == STOP:
                return
            if kind == BACKGROUND:
                if self._stopping:
                    continue
                self._abandon.clear()
                self._finish.clear()
                try:
                    fn(*args)
                except Preempted:
                    self.preempted += 1
                except Exception as error:  # noqa: BLE001 - encoding ahead is best effort
                    log.warning("background job failed: %s", type(error).__name__)
                continue
            with self._lock:
                self._waiting -= 1
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as error:  # noqa: BLE001 - handed to the waiting request
                future.set_exception(error)
            finally:
                self.completed += 1

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the requests queued, drop background work (the one in flight stops at its next step)."""
        self._stopping = True
        self._abandon.set()
        self._queue.put((STOP, next(self._order), None, None, ()))
        self._thread.join(timeout)
