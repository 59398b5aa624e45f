"""One thread that owns the model; jobs from the window and the server take turns on it.

MLX streams belong to the thread that made them, so every load and every generation runs here.
The queue is fair between sources: after a "window" job comes a "server" job when one waits, and
the other way round, so a busy API client never starves the person at the keyboard. Within one
source jobs run first come, first served. Qt-free: the window's engine and the HTTP server both
submit plain callables.

A long job (a model conversion, submitted `exclusive`) calls `serve_waiting()` now and then: the jobs
waiting at that moment run inline, on this same thread, so generation never waits for the whole of it.

Before its first job the thread runs `startup` (by default `runtime.import_runtime`: the heavy imports,
done here once so that no other thread races them); `ready` is set when it has.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .runtime import import_runtime

SOURCES = ("window", "server")
log = logging.getLogger(__name__)
DEFAULT_QUEUE_LIMIT = 64


class WorkerError(RuntimeError):
    """A job cannot be accepted or run; the message says why."""


class QueueFullError(WorkerError):
    """Too many jobs wait for this source; try again once some finished."""


class WorkerStoppedError(WorkerError):
    """The worker has shut down."""


@dataclass
class ModelSlot:
    """The model in memory and what was learned when loading it ."""

    model: Any
    processor: Any
    info: dict = field(default_factory=dict)


class WorkerJob:
    """A queued callable; `cancel` is the event its generation checks between tokens."""

    def __init__(self, job_id: int, source: str, fn: Callable[[Optional[ModelSlot]], Any],
                 cancel: threading.Event, label: str, on_dropped: Optional[Callable[[], None]] = None,
                 exclusive: bool = False):
        self.id, self.source, self.fn, self.cancel, self.label = job_id, source, fn, cancel, label
        self.exclusive = exclusive  # never run inside another job's serve_waiting()
        self.on_dropped = on_dropped  # called instead of `fn` when the job never runs
        self.started = threading.Event()
        self.finished = threading.Event()
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.skipped = False  # cancelled before it ran

    def wait(self, timeout: Optional[float] = None) -> Any:
        """Block until the job ended; returns its result or raises its error."""
        if not self.finished.wait(timeout):
            raise TimeoutError(f"job {self.label or self.id} still running after {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result


class ModelWorker:
    """The model's thread. `submit(source, fn)` queues `fn(slot)`; `load(fn)` replaces the model."""

    def __init__(self, *, name: str = "gemma-model", queue_limit: int = DEFAULT_QUEUE_LIMIT,
                 startup: Optional[Callable[[], None]] = import_runtime):
        self._startup = startup
        self.ready = threading.Event()
        self._loop_ended = threading.Event()
        self.startup_error: Optional[BaseException] = None  # the jobs then fail on their own imports, and say so
        self._queues: dict[str, collections.deque[WorkerJob]] = {s: collections.deque() for s in SOURCES}
        self._condition = threading.Condition()
        self._next_source = 0
        self._ids = itertools.count(1)
        self._stopping = False
        self._slot: Optional[ModelSlot] = None
        self._slot_listeners: list[Callable[[Optional[ModelSlot]], None]] = []
        self.queue_limit = queue_limit
        self._running: list[WorkerJob] = []  # the outer job first, then any it runs through serve_waiting()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    # -- any thread ----------------------------------------------------------------------------------------

    @property
    def current(self) -> Optional[WorkerJob]:
        """The job running now (the innermost one while a long job serves others), or None."""
        with self._condition:
            return self._running[-1] if self._running else None

    @property
    def running(self) -> bool:
        """Whether the thread still takes jobs (False once `stop` has ended its loop)."""
        return not self._loop_ended.is_set()

    @property
    def slot(self) -> Optional[ModelSlot]:
        """The loaded model, or None."""
        return self._slot

    def set_slot(self, slot: Optional[ModelSlot]) -> None:
        """Record a model loaded on this thread (or None while unloading); listeners hear of it."""
        self._slot = slot
        for listener in list(self._slot_listeners):
            listener(slot)

    def add_slot_listener(self, listener: Callable[[Optional[ModelSlot]], None]) -> None:
        """Call `listener(slot)` on the model thread whenever the model changes (to drop stale caches)."""
        self._slot_listeners.append(listener)

    def remove_slot_listener(self, listener: Callable[[Optional[ModelSlot]], None]) -> None:
        if listener in self._slot_listeners:
            self._slot_listeners.remove(listener)

    def submit(self, source: str, fn: Callable[[Optional[ModelSlot]], Any], *,
               cancel: Optional[threading.Event] = None, label: str = "",
               on_dropped: Optional[Callable[[], None]] = None, exclusive: bool = False) -> WorkerJob:
        """Queue `fn(slot)` to run on the model thread; raises QueueFullError past `queue_limit`.

        A job cancelled while it waits, or still waiting when the worker stops, never runs: then
        `on_dropped()` is called (on the model thread, or on the one calling `stop`). An `exclusive`
        job (a long one that calls `serve_waiting`) only ever starts on its own, never nested.
        """
        if source not in self._queues:
            raise ValueError(f"unknown job source {source!r}; use one of {SOURCES}")
        job = WorkerJob(next(self._ids), source, fn, cancel or threading.Event(), label, on_dropped, exclusive)
        with self._condition:
            if self._stopping:
                raise WorkerStoppedError("The model thread has stopped.")
            waiting = self._queues[source]
            if len(waiting) >= self.queue_limit:
                raise QueueFullError(f"{len(waiting)} requests are already waiting for the model; "
                                     "try again when some have finished.")
            waiting.append(job)
            self._condition.notify()
        return job

    def load(self, loader: Callable[[], ModelSlot], *, source: str = "window") -> WorkerJob:
        """Queue `loader()` on the model thread; its ModelSlot becomes the loaded model."""
        def run(_previous):
            self.set_slot(None)  # free the old weights before the new ones arrive
            self.set_slot(loader())
            return self._slot

        return self.submit(source, run, label="load")

    def withdraw(self, job: WorkerJob) -> bool:
        """Take a job that has not started out of its queue at once (its `on_dropped` runs on this thread);
        False when it already started or ended (then its cancel event is what stops it)."""
        with self._condition:
            waiting = self._queues.get(job.source)
            if waiting is None or job not in waiting:
                return False
            waiting.remove(job)
        job.cancel.set()
        _drop(job)
        return True

    def queued(self, source: Optional[str] = None) -> int:
        """How many jobs wait (for one source, or all)."""
        with self._condition:
            if source is not None:
                return len(self._queues[source])
            return sum(len(q) for q in self._queues.values())

    def stop(self, timeout: float = 5.0) -> bool:
        """Cancel everything, finish the running job at its next token, end the job loop; True once it ended."""
        with self._condition:
            self._stopping = True
            pending = [job for q in self._queues.values() for job in q]
            for q in self._queues.values():
                q.clear()
            for running in self._running:
                running.cancel.set()
            self._condition.notify_all()
        for job in pending:
            job.cancel.set()
            job.error = WorkerStoppedError("The model thread stopped before this job ran.")
            _drop(job)
        if threading.current_thread() is not self.thread:
            self._loop_ended.wait(timeout)
        return self._loop_ended.is_set()

    # -- the model thread ----------------------------------------------------------------------------------

    def serve_waiting(self) -> int:
        """Run the jobs waiting now (fair order, exclusive ones left queued) inline; returns how many ran.

        Called by a long job on the model thread between its steps; on any other thread, or while
        stopping, it does nothing. Jobs queued while these run wait for the next call, so the long job
        always moves on.
        """
        if threading.current_thread() is not self.thread:
            return 0
        ran = 0
        for _ in range(self.queued()):
            with self._condition:
                job = None if self._stopping else self._next(nested=True)
            if job is None:
                break
            self._execute(job)
            ran += 1
        return ran

    def _next(self, nested: bool) -> Optional[WorkerJob]:
        """Pop the next job, round robin over sources (`nested`: skipping exclusive ones); None if none."""
        for step in range(len(SOURCES)):
            index = (self._next_source + step) % len(SOURCES)
            waiting = self._queues[SOURCES[index]]
            job = next((j for j in waiting if not (nested and j.exclusive)), None)
            if job is not None:
                waiting.remove(job)
                self._next_source = (index + 1) % len(SOURCES)
                self._running.append(job)
                return job
        return None

    def _take(self) -> Optional[WorkerJob]:
        """The next job; waits for one; None when stopping."""
        with self._condition:
            while True:
                if self._stopping:
                    return None
                job = self._next(nested=False)
                if job is not None:
                    return job
                self._condition.wait()

    def _execute(self, job: WorkerJob) -> None:
        try:
            if job.cancel.is_set():
                _drop(job)
                return
            job.started.set()
            try:
                job.result = job.fn(self._slot)
            except Exception as error:  # handed to whoever waits on the job
                job.error = error
        finally:
            with self._condition:
                self._running.remove(job)
            job.finished.set()

    def _run(self) -> None:
        try:
            if self._startup is not None:
                self._startup()
        except Exception as error:  # a damaged installation: each job meets the same import error and reports it
            self.startup_error = error
            log.exception("the model runtime could not be imported")
        finally:
            self.ready.set()
        while True:
            job = self._take()
            if job is None:
                break
            self._execute(job)
        self._loop_ended.set()
        # Parked, never ended: a thread that used MLX runs MLX's thread-local destructors as it ends, and
        # those take the GIL; if the interpreter is shutting down by then, the process aborts ("terminate
        # called without an active exception"). A parked daemon thread simply ends with the process.
        threading.Event().wait()


def _drop(job: WorkerJob) -> None:
    """Mark a job that will never run, and tell its owner."""
    job.skipped = True
    if job.on_dropped is not None:
        job.on_dropped()
    job.finished.set()
