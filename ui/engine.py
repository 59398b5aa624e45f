"""`Engine`: the window's handle on the model thread; results come back as Qt signals.

The model thread is a `gemma4_mac.worker.ModelWorker`: loading, generation and conversion run as jobs
there, and the local server (gemma4_mac.server.control) submits its requests to the same worker and
model, taking turns fairly with the window. `cancel()` sets an event that generation checks between
tokens. A conversion downloads on its own thread (no MLX) and converts on the model thread, letting
waiting generations run between tensors. The backend (`gemma4_mac.engine.MlxBackend`, or
`gemma4_mac.fake_backend.FakeBackend` in tests and demos) does the work.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

from PySide6.QtCore import QObject, Signal

from gemma4_mac.engine import (CANCELLED_DOWNLOAD, Backend, EngineError, GenerationRequest, MlxBackend,
                               error_message, stats_dict)
from gemma4_mac.documents import estimate_tokens
from gemma4_mac.runtime import import_runtime
from gemma4_mac.token_count import CountRequest, TokenCounter
from gemma4_mac.worker import ModelSlot, ModelWorker, WorkerError, WorkerJob

from . import qt_signal_fix

qt_signal_fix.apply()  # the engine streams thousands of signals: PySide 6.12 would abort the app without it
log = logging.getLogger(__name__)


class Engine(QObject):
    """The window's handle on the model thread. Methods queue jobs; results come back as signals.

    `worker` is the model thread (a `ModelWorker`): the engine makes one unless given one, and the local
    server submits to `engine.worker` to share the loaded model.
    """

    modelLoading = Signal(str)
    modelProgress = Signal(dict)  # building the starter model on first use: a conversion report
    modelLoaded = Signal(dict)
    modelLoadFailed = Signal(str)
    generationStarted = Signal(int)
    readingProgress = Signal(int, int)  # (prompt tokens read, prompt tokens) while a prompt is read
    answerDelta = Signal(str)
    thoughtDelta = Signal(str)
    toolCallReceived = Signal(dict)
    noticeReceived = Signal(str)  # something the person should know about their request (e.g. audio split)
    generationFinished = Signal(dict)
    generationFailed = Signal(str)
    conversionProgress = Signal(dict)
    conversionFinished = Signal(str)
    conversionFailed = Signal(str)
    busyChanged = Signal(bool)
    runtimeReady = Signal()  # the model thread has imported MLX and the rest: other threads may start now
    tokensCounted = Signal(int, object)  # (the id count_prompt returned, a gemma4_mac.token_count.TokenCount)

    THREAD_NAME = "gemma-engine"
    CONVERT_THREAD_NAME = "gemma-convert"

    def __init__(self, backend: Optional[Backend] = None, parent: Optional[QObject] = None, *,
                 worker: Optional[ModelWorker] = None):
        super().__init__(parent)
        self.backend = backend if backend is not None else MlxBackend()
        self._owns_worker = worker is None
        self.worker = worker if worker is not None else ModelWorker(name=self.THREAD_NAME)
        self._generation_cancel = threading.Event()
        self._request_cancels: dict[int, threading.Event] = {}
        self._conversion_cancel = threading.Event()
        self._conversions: "queue.Queue[Optional[tuple]]" = queue.Queue()
        self._convert_thread: Optional[threading.Thread] = None
        self._stopping = False
        self._ids = itertools.count(1)
        self._pending = 0
        self._pending_lock = threading.Lock()
        self.runtime_ready = False
        self.worker.submit("window", self._announce_runtime, label="runtime")  # runs once the imports are done
        self._token_counter = TokenCounter(self._counter, self.tokensCounted.emit)

    # public API (window thread)

    @property
    def model_info(self) -> Optional[dict]:
        slot = self.worker.slot
        return dict(slot.info) if slot else None

    @property
    def busy(self) -> bool:
        """Whether a job of the window (load, generation, conversion) is queued or running."""
        return self._pending > 0

    def load_model(self, path: Optional[str | Path]) -> None:
        """Load a model folder (None: the offline starter model) on the model thread.

        `modelLoading` is emitted now, not when the thread starts on it, so a question asked meanwhile
        waits for the model (whether it is a chat model decides how the question is formatted)."""
        folder = Path(path) if path else None
        self.modelLoading.emit(str(folder) if folder else "")
        self._submit(lambda slot: self._load(folder), label="load", failed=self.modelLoadFailed)

    def generate(self, request: GenerationRequest) -> int:
        """Queue a turn; returns its request id (also sent with generationStarted)."""
        request.request_id = next(self._ids)
        cancel = self._generation_cancel = threading.Event()
        self._request_cancels[request.request_id] = cancel
        self._submit(lambda slot: self._generate(slot, request, cancel), cancel=cancel, label="window generation",
                     failed=self.generationFailed, on_dropped=lambda: self._generation_dropped(request))
        return request.request_id

    def cancel(self, request_id: Optional[int] = None) -> None:
        """Stop a running (or queued) generation at the next token: `request_id`'s, else the latest one."""
        event = self._request_cancels.get(request_id) if request_id is not None else self._generation_cancel
        if event is not None:
            event.set()

    def convert_model(self, repo_id: str, destination: Path, label: str = "",
                      base_model: bool = False) -> None:
        """Download (on its own thread) and convert (on the model thread) a hub checkpoint; one at a time.
        `repo_id` may be a local checkpoint folder or GGUF file: it is converted where it lies, no download.
        `base_model`: keep a model without a chat template as one that continues text."""
        cancel = self._conversion_cancel = threading.Event()
        self._begin()
        if self._convert_thread is None:
            self._convert_thread = threading.Thread(target=self._conversion_loop, name=self.CONVERT_THREAD_NAME,
                                                    daemon=True)
            self._convert_thread.start()
        self._conversions.put((repo_id, Path(destination), label, base_model, cancel))

    def cancel_conversion(self) -> None:
        self._conversion_cancel.set()

    def count_prompt(self, request: CountRequest) -> int:
        """Count the tokens of a prompt on the counting thread (never this one); returns the id that
        `tokensCounted` carries with the result. A newer request replaces one not yet started."""
        return self._token_counter.request(request)

    def shutdown(self, timeout: float = 5.0) -> bool:
        """Cancel generation and conversion, stop the model thread (when the engine made it); True once ended."""
        deadline = time.monotonic() + timeout
        self._stopping = True
        self._token_counter.close(timeout=0.2)
        self._generation_cancel.set()
        self._conversion_cancel.set()
        if self._convert_thread is not None:
            self._conversions.put(None)
        stopped = self.worker.stop(timeout) if self._owns_worker else True
        if self._convert_thread is not None:
            self._convert_thread.join(max(0.0, deadline - time.monotonic()))
            stopped = stopped and not self._convert_thread.is_alive()
        return stopped

    # bookkeeping (any thread)

    def _begin(self) -> None:
        with self._pending_lock:
            self._pending += 1
            became_busy = self._pending == 1
        if became_busy:
            self.busyChanged.emit(True)

    def _end(self) -> None:
        with self._pending_lock:
            self._pending -= 1
            idle = self._pending == 0
        if idle:
            self.busyChanged.emit(False)

    def _submit(self, fn: Callable[[Optional[ModelSlot]], None], *, label: str, failed: Any,
                cancel: Optional[threading.Event] = None, on_dropped: Optional[Callable[[], None]] = None) -> None:
        """Queue `fn(slot)` as a window job; `failed` is the signal that reports what went wrong."""
        def run(slot: Optional[ModelSlot]) -> None:
            try:
                fn(slot)
            except Exception as error:  # a bug must not leave the window waiting: report it and log the trace
                log.exception("%s failed", label)
                failed.emit(f"{label} failed: {type(error).__name__}: {error}")
            finally:
                self._end()

        def dropped() -> None:
            try:
                if on_dropped is not None:
                    on_dropped()
            finally:
                self._end()

        self._begin()
        try:
            self.worker.submit("window", run, cancel=cancel, label=label, on_dropped=dropped)
        except WorkerError as error:
            self._end()
            failed.emit(str(error))

    # the model thread

    def _load(self, path: Optional[Path]) -> None:
        self.worker.set_slot(None)  # free the old weights (and the server's caches) before the new ones arrive
        try:
            if path is None:  # the starter: built from its packaged weights on first use, with progress
                path = self.backend.prepare_starter(self.modelProgress.emit)
            loaded = self.backend.load(path)
        except (EngineError, MemoryError) as error:
            self.modelLoadFailed.emit(error_message(error))
            return
        self.worker.set_slot(loaded)
        self.modelLoaded.emit(dict(loaded.info))

    def _generate(self, slot: Optional[ModelSlot], request: GenerationRequest, cancel: threading.Event) -> None:
        self.generationStarted.emit(request.request_id)  # first, so every failure below has an owner
        if slot is None:
            self._request_cancels.pop(request.request_id, None)
            self.generationFailed.emit("No model is loaded. Choose one in the model manager.")
            return
        stats: dict = {}
        try:
            for event in self.backend.generate(slot, request, cancel):
                if event.kind == "progress":
                    self.readingProgress.emit(*event.progress)
                elif event.kind == "answer":
                    self.answerDelta.emit(event.text)
                elif event.kind == "thought":
                    self.thoughtDelta.emit(event.text)
                elif event.kind == "tool_call":
                    self.toolCallReceived.emit(dict(event.tool_call or {}))
                elif event.kind == "notice":
                    self.noticeReceived.emit(event.text)
                elif event.kind == "done":
                    stats = stats_dict(event.stats)
        except (EngineError, MemoryError, ValueError, RuntimeError) as error:
            # RuntimeError covers MLX's own errors (out of memory on Metal, shape problems in a damaged model)
            self.generationFailed.emit(error_message(error))
            return
        finally:
            self._request_cancels.pop(request.request_id, None)
        if cancel.is_set() and stats.get("finish_reason") not in ("cancelled",):
            stats["finish_reason"] = "cancelled"
        self.generationFinished.emit(stats)

    def _generation_dropped(self, request: GenerationRequest) -> None:
        """Cancelled before its turn came: the window still hears it start and end, as a cancelled answer."""
        self._request_cancels.pop(request.request_id, None)
        self.generationStarted.emit(request.request_id)
        self.generationFinished.emit({"finish_reason": "cancelled", "prompt_tokens": 0, "generation_tokens": 0})

    def _progress_and_serve(self, report: dict) -> None:
        self.conversionProgress.emit(report)
        self.worker.serve_waiting()  # on the model thread: generations waiting now run before the next tensor

    # the counting thread

    def _counter(self) -> tuple[Callable[[str], int], bool, object]:
        """How the loaded model counts a text: (count, exact?, a key for the counter's cache)."""
        slot = self.worker.slot
        if slot is None:
            return estimate_tokens, False, None
        make = getattr(self.backend, "token_counter", None)
        key = (id(slot), slot.info.get("path"))
        if make is None:  # a backend with no tokenizer of its own (the scripted one): its count is the count
            return (lambda text: self.backend.count_tokens(slot, text)), True, key
        count = make(slot)
        return (count, True, key) if count is not None else (estimate_tokens, False, None)

    # the conversion thread

    def _announce_runtime(self, _slot) -> None:
        self.runtime_ready = True
        self.runtimeReady.emit()

    def _conversion_loop(self) -> None:
        import_runtime()  # downloading imports huggingface_hub, which the model thread may be importing now
        while True:
            item = self._conversions.get()
            if item is None:
                return
            try:
                if not self._stopping:
                    self._convert(*item)
            finally:
                self._end()

    def _convert(self, repo_id: str, destination: Path, label: str, base_model: bool,
                 cancel: threading.Event) -> None:
        options = {"base_model": True} if base_model else {}
        try:
            source = self.backend.download(repo_id, self.conversionProgress.emit, cancel)
            job: WorkerJob = self.worker.submit(
                "window", lambda slot: self.backend.convert(repo_id, destination, label, self._progress_and_serve,
                                                            cancel, source=source, **options),
                cancel=cancel, label="conversion", exclusive=True)
            result = job.wait()
        except (EngineError, OSError, MemoryError, WorkerError) as error:
            self.conversionFailed.emit(error_message(error))
            return
        except Exception as error:  # a bug must not leave the model manager waiting: report it and log the trace
            log.exception("conversion of %s failed", repo_id)
            self.conversionFailed.emit(f"Conversion failed: {type(error).__name__}: {error}")
            return
        if job.skipped:  # cancelled while a generation held the model thread
            self.conversionFailed.emit(CANCELLED_DOWNLOAD)
            return
        self.conversionFinished.emit(str(result))
