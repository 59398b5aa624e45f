"""`Engine`: the window's handle on the model thread; results come back as Qt signals.

The model thread is a `gemma4_mac.worker.ModelWorker`: loading, generation and conversion run as jobs
there, and the local server (gemma4_mac.server.control) submits its requests to the same worker and
model, taking turns fairly with the window. `cancel()` sets an event that generation checks between
tokens. A conversion downloads on its own thread (no MLX) and converts on the model thread, letting
waiting generations run between tensors. The backend (`gemma4_mac.engine.MlxBackend`, or
`gemma4_mac.fake_backend.FakeBackend` in tests and demos) does the work.

A request with tools (`request.agent`) runs the agent loop (gemma4_mac.agent) on a thread of its own: each
model turn is a job on the model thread, the tool calls run on the MCP client's thread, and the person's
approval is waited for there too, so neither the window nor the model thread ever waits for a tool.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from PySide6.QtCore import QObject, Signal

from gemma4_mac.engine import (CANCELLED_DOWNLOAD, Backend, EngineError, GenerationRequest, MlxBackend,
                               error_message, stats_dict)
from gemma4_mac.agent import AgentRun, StepResult
from gemma4_mac.documents import estimate_tokens
from gemma4_mac.mcp_client import McpCancelled
from gemma4_mac.mcp_config import ServerConfig
from gemma4_mac.runtime import import_runtime
from gemma4_mac.token_count import CountRequest, TokenCounter
from gemma4_mac.toolbox import ToolBox, ToolCallRecord, ToolRegistry
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
    # (request id, a ToolCallRecord as a dict) for each call of the agent and each change of it; status
    # "waiting" asks the person to allow it (answer with `answer_approval`)
    toolCallUpdated = Signal(int, object)  # a plain dict: its keys keep their order (a QVariantMap sorts them)
    toolsListed = Signal(object)  # {"tools": [ToolInfo], "problems": {server: why it has none}}
    toolsUnavailable = Signal(object)  # {server: why}: servers of the turn just started that offer no tools
    APPROVAL_POLL_S = 0.1

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
        self.tools: Optional[ToolRegistry] = None  # the configured MCP servers and built-in tools
        self._approvals: dict[str, tuple[threading.Event, list[bool]]] = {}
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
        """Queue a turn; returns its request id (also sent with generationStarted). A request with `agent`
        options runs with the configured tools (see the module docstring)."""
        request.request_id = next(self._ids)
        cancel = self._generation_cancel = threading.Event()
        self._request_cancels[request.request_id] = cancel
        if request.agent is not None and self.tools:
            self._begin()
            threading.Thread(target=self._run_agent, args=(request, cancel), name="gemma-agent",
                             daemon=True).start()
            return request.request_id
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

    def configure_tools(self, servers: Iterable[ServerConfig], *, approval: Optional[dict[str, str]] = None,
                        builtins: Iterable[str] = ()) -> None:
        """Use these MCP servers and built-in tools from now on (servers start when first needed); the old
        servers are stopped in the background."""
        old = self.tools
        registry = ToolRegistry(servers, approval=approval, builtins=builtins)
        self.tools = registry if registry else None
        if old is not None:
            threading.Thread(target=old.close, name="gemma-mcp-close", daemon=True).start()

    def list_tools(self, preview: Optional[tuple[list[ServerConfig], list[str]]] = None) -> None:
        """List every configured tool on a thread of its own (servers start); `toolsListed` carries them.
        `preview` (servers, built-in names): list those instead, as the tools editor has them (not yet saved;
        their servers are stopped again after)."""
        registry = self.tools if preview is None else ToolRegistry(preview[0], builtins=preview[1])
        if not registry:
            self.toolsListed.emit({"tools": [], "problems": {}, "preview": preview is not None})
            return

        def run() -> None:
            try:
                tools, problems = registry.available()
            finally:
                if preview is not None:
                    registry.close()
            self.toolsListed.emit({"tools": tools, "problems": problems, "preview": preview is not None})

        threading.Thread(target=run, name="gemma-mcp-list", daemon=True).start()

    def answer_approval(self, call_id: str, granted: bool) -> None:
        """The person's answer to a call waiting for approval (any thread; an unknown id is ignored)."""
        waiting = self._approvals.get(call_id)
        if waiting is not None:
            waiting[1].append(bool(granted))
            waiting[0].set()

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
        for cancel in list(self._request_cancels.values()):
            cancel.set()  # agent runs too: each stops at its next step, call or approval
        if self.tools is not None:  # the servers get their orderly shutdown without holding up quitting
            threading.Thread(target=self.tools.close, name="gemma-mcp-close", daemon=True).start()
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

    # the agent's thread

    def _run_agent(self, request: GenerationRequest, cancel: threading.Event) -> None:
        options, registry = request.agent, self.tools
        notices: list[dict] = []  # the servers' problems, told to the window with the first turn
        try:
            try:
                toolbox, problems = registry.toolbox(options.tools_off, cancel)
            except McpCancelled:
                toolbox, problems = ToolBox([]), {}
            if problems:
                notices.append(problems)
            slot = self.worker.slot
            run = AgentRun(toolbox, step=lambda messages, allow: self._agent_step(request, toolbox, notices,
                                                                                   messages, allow, cancel),
                           approve=lambda record: self._wait_for_approval(request.request_id, record, cancel),
                           report=lambda _kind, record: self.toolCallUpdated.emit(request.request_id, record),
                           cancel=cancel, max_steps=options.max_steps, person_texts=options.person_texts,
                           can_see=bool(slot and slot.info.get("can_see")),
                           image_dir=Path(options.image_dir) if options.image_dir else None,
                           approved=options.approved)
            outcome = run.run(request.messages)
            self._on_model_thread(lambda: self._agent_finished(request.request_id, outcome.stats))
        except _StepEnded:
            pass  # the step reported the failure (or its cancellation) itself
        except Exception as error:  # a bug must not leave the window waiting: report it and log the trace
            log.exception("the agent failed")
            failure = error
            self._on_model_thread(lambda: self._agent_failed(request.request_id, failure))
        finally:
            self._request_cancels.pop(request.request_id, None)
            self._end()

    def _agent_step(self, request: GenerationRequest, toolbox: ToolBox, notices: list[dict], messages: list[dict],
                    allow_calls: bool, cancel: threading.Event) -> StepResult:
        """One model turn as a job on the model thread (streamed to the window); waits for it."""
        step = dataclasses.replace(request, messages=messages, tools=toolbox.offered() or None,
                                   tool_schemas=toolbox.shapes() or None,
                                   ban_tool_calls=bool(toolbox) and not allow_calls, agent=None)

        def run(slot: Optional[ModelSlot]) -> StepResult:
            # announced at each turn: a job of the quick-ask panel may have run since the last one
            self.generationStarted.emit(request.request_id)
            for problems in notices:
                self.toolsUnavailable.emit(problems)
            notices.clear()
            if slot is None:
                self.generationFailed.emit("No model is loaded. Choose one in the model manager.")
                raise _StepEnded()
            result = StepResult()
            try:
                for event in self.backend.generate(slot, step, cancel):
                    if event.kind == "tool_call":
                        result.calls.append(dict(event.tool_call or {}))
                    elif event.kind == "done":
                        result.stats = stats_dict(event.stats)
                    else:
                        self._emit_event(event, result)
            except (EngineError, MemoryError, ValueError, RuntimeError) as error:
                self.generationFailed.emit(error_message(error))
                raise _StepEnded() from error
            return result

        def dropped() -> None:  # cancelled while queued
            self.generationStarted.emit(request.request_id)
            self.generationFinished.emit({"finish_reason": "cancelled", "prompt_tokens": 0,
                                          "generation_tokens": 0})

        try:
            job = self.worker.submit("window", run, cancel=cancel, label="window agent step", on_dropped=dropped)
        except WorkerError as error:
            self.generationFailed.emit(str(error))
            raise _StepEnded() from error
        result = job.wait()
        if job.skipped:
            raise _StepEnded()
        return result

    def _emit_event(self, event: Any, result: StepResult) -> None:
        """A streamed event of an agent's turn, to the window (answer and thought kept for the history)."""
        if event.kind == "progress":
            self.readingProgress.emit(*event.progress)
        elif event.kind == "answer":
            result.answer += event.text
            self.answerDelta.emit(event.text)
        elif event.kind == "thought":
            result.thought += event.text
            self.thoughtDelta.emit(event.text)
        elif event.kind == "notice":
            self.noticeReceived.emit(event.text)

    def _wait_for_approval(self, request_id: int, record: ToolCallRecord, cancel: threading.Event) -> bool:
        """Block the agent's thread until the person answers (the window got the "waiting" record)."""
        event, answer = threading.Event(), []
        self._approvals[record.id] = (event, answer)
        try:
            while not event.wait(self.APPROVAL_POLL_S):
                if cancel.is_set() or self._stopping:
                    return False
            return bool(answer and answer[0])
        finally:
            self._approvals.pop(record.id, None)

    def _on_model_thread(self, emit: Callable[[], None]) -> None:
        """Run `emit` as a job on the model thread, so its signals never land inside another job's stream."""
        try:
            self.worker.submit("window", lambda _slot: emit(), label="agent end")
        except WorkerError:
            emit()

    def _agent_finished(self, request_id: int, stats: dict) -> None:
        self.generationStarted.emit(request_id)
        self.generationFinished.emit(stats)

    def _agent_failed(self, request_id: int, error: Exception) -> None:
        self.generationStarted.emit(request_id)
        why = str(error) or type(error).__name__
        self.generationFailed.emit(f"Answering with tools stopped on an unexpected error ({why}). Try again, or "
                                   "switch the tools off for this chat; the log has the details.")

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


class _StepEnded(Exception):
    """An agent's turn ended the run (it failed or was cancelled, and said so to the window)."""
