"""The engine: the window's handle on the model thread; results come back as Qt signals.

The model thread is the server's `ModelWorker`: MLX streams belong to the thread that made them, so
loading, generation and conversion run as jobs there, and the local server (gemma4_mac.server_control)
submits its requests to the same worker and model, taking turns fairly with the window. `cancel()`
sets an event that generation checks between tokens. A conversion downloads on its own thread (no
MLX) and converts on the model thread, letting waiting generations run between tensors. A backend
seam (`MlxBackend`, and `fake_backend.FakeBackend`) lets the window be tested without MLX.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Protocol

from PySide6.QtCore import QObject, Signal

from . import qt_signal_fix
from .documents import estimate_tokens
from .paths import downloads_dir
from .server.worker import ModelSlot, ModelWorker, WorkerError, WorkerJob

qt_signal_fix.apply()  # the engine streams thousands of signals: PySide 6.12 would abort the app without it

DEFAULT_CONTEXT = 8192
CONVERT_BITS = 4  # what the model manager offers: 4-bit fits Gemma 4 E2B/E4B on 16 GB Macs
CANCELLED_DOWNLOAD = "Download cancelled. Start it again to resume."
log = logging.getLogger(__name__)


@dataclass
class GenerationRequest:
    """One turn to answer. `messages` are HF-style dicts; `raw_prompt` is used for base models instead."""

    conversation_id: int
    messages: list[dict]
    enable_thinking: bool = False
    sampling: dict[str, Any] = field(default_factory=dict)
    tools: Optional[list[dict]] = None
    kv_bits: Optional[int] = None
    image_token_budget: int = 280
    raw_prompt: Optional[str] = None
    request_id: int = 0


# The model in memory: the worker's slot, shared with the server (model, processor, info).
LoadedModel = ModelSlot


class Backend(Protocol):
    """What the engine thread needs from a model runtime."""

    def load(self, path: Optional[Path]) -> LoadedModel: ...

    def generate(self, loaded: LoadedModel, request: GenerationRequest,
                 cancel: threading.Event) -> Iterator[Any]: ...

    def download(self, repo_id: str, progress: Callable[[dict], None], cancel: threading.Event) -> str:
        """Fetch what `convert` reads (network and files, no MLX: runs off the model thread)."""

    def convert(self, repo_id: str, destination: Path, label: str, progress: Callable[[dict], None],
                cancel: threading.Event, source: Optional[str] = None) -> Path:
        """Convert `source` (what `download` returned) on the model thread."""

    def count_tokens(self, loaded: Optional[LoadedModel], text: str) -> int: ...


class EngineError(RuntimeError):
    """A job the engine cannot run; the message is shown to the person as is."""


def _stats_dict(stats: Any) -> dict:
    if stats is None:
        return {}
    if dataclasses.is_dataclass(stats):
        return dataclasses.asdict(stats)
    return dict(stats)


class MlxBackend:
    """The real runtime: our MLX model, the lead's streaming generation, the converter."""

    def __init__(self):
        self._session = None
        self._session_key: Optional[tuple] = None
        self._document_cache = None

    def load(self, path: Optional[Path]) -> LoadedModel:
        from mlx_model import ModelLoadError, load

        from . import model_manager

        starter = path is None
        self._session, self._session_key = None, None  # the old model's cache goes with it
        try:
            folder = model_manager.ensure_starter() if starter else Path(path).expanduser()
            _refuse_if_too_large(folder)
            model, processor = load(folder)
        except (ModelLoadError, model_manager.ModelManagerError, OSError, ValueError) as error:
            raise EngineError(str(error)) from error
        self._session, self._session_key = None, None
        entry = model_manager.describe(folder)
        starter = starter or entry.is_starter
        info = {"path": str(folder), "name": entry.label, "id": folder.name, "is_starter": starter,
                "chat": processor is not None and not starter, "size_bytes": entry.size_bytes,
                "context_limit": self._context_limit(model, entry.size_bytes)}
        try:
            from .document_cache import DocumentCacheStore, model_fingerprint
            from .paths import document_cache_dir

            self._document_cache = DocumentCacheStore(document_cache_dir())
            info["fingerprint"] = model_fingerprint(folder)
        except OSError:
            self._document_cache = None  # a read-only data folder: long documents are simply recomputed
        return LoadedModel(model, processor, info)

    @staticmethod
    def _context_limit(model, weights: int) -> int:
        from mlx_model.planner import largest_context

        from .model_manager import total_memory

        config = getattr(getattr(model, "config", None), "text_config", None)
        if config is None:
            return DEFAULT_CONTEXT
        try:
            return int(largest_context(config, total_memory(), weights=weights))
        except (ValueError, TypeError, AttributeError):
            return DEFAULT_CONTEXT

    def _session_for(self, loaded: LoadedModel, request: GenerationRequest):
        from .session import ChatSession

        key = (request.conversation_id, request.kv_bits)
        if self._session is None or self._session_key != key:
            self._session = ChatSession(loaded.model)
            if request.kv_bits:
                self._session.cache = loaded.model.make_cache(kv_bits=request.kv_bits)
                self._session.reset = lambda s=self._session: _reset_quantized(s, request.kv_bits)
            self._session_key = key
        return self._session

    def generate(self, loaded: LoadedModel, request: GenerationRequest, cancel: threading.Event) -> Iterator[Any]:
        from .generate import GenerationError, SamplingSettings, stream_generate

        if loaded.processor is not None and hasattr(loaded.processor, "image_token_budget"):
            loaded.processor.image_token_budget = request.image_token_budget
        sampling = SamplingSettings(**request.sampling)
        try:
            yield from stream_generate(
                loaded.model, loaded.processor, None if request.raw_prompt is not None else request.messages,
                prompt=request.raw_prompt, tools=request.tools, enable_thinking=request.enable_thinking,
                sampling=sampling, cancel=cancel, session=self._session_for(loaded, request),
                document_cache=self._document_cache, model_id=loaded.info.get("fingerprint"))
        except GenerationError as error:
            raise EngineError(str(error)) from error

    def download(self, repo_id: str, progress: Callable[[dict], None], cancel: threading.Event) -> str:
        """Download a hub checkpoint into the app's downloads folder (resumable); a local path is returned as is."""
        try:
            from convert import ConversionCancelled, ConversionError
            from convert.hf_source import download, looks_like_repo_id
            from convert.progress import Reporter
        except ImportError as error:
            raise EngineError(f"The converter is not available in this build ({error}).") from error
        if Path(repo_id).expanduser().exists() or not looks_like_repo_id(repo_id):
            return repo_id
        try:
            return str(download(repo_id, Reporter(_forward(progress), cancel), cache_dir=downloads_dir()))
        except ConversionCancelled as error:
            raise EngineError(CANCELLED_DOWNLOAD) from error
        except (ConversionError, OSError) as error:
            raise EngineError(str(error)) from error

    def convert(self, repo_id: str, destination: Path, label: str, progress: Callable[[dict], None],
                cancel: threading.Event, source: Optional[str] = None) -> Path:
        """Convert to 4-bit MLX (MLX work: on the model thread); `repo_id` is recorded as the source."""
        try:
            from convert import ConversionCancelled, ConversionError, convert_checkpoint
        except ImportError as error:
            raise EngineError(f"The converter is not available in this build ({error}).") from error
        try:
            converted = Path(convert_checkpoint(source or repo_id, destination, bits=CONVERT_BITS,
                                                progress=_forward(progress), cancel=cancel, label=label or None,
                                                metadata={"source": repo_id}))
        except ConversionCancelled as error:
            raise EngineError(CANCELLED_DOWNLOAD) from error
        except (ConversionError, OSError) as error:
            raise EngineError(str(error)) from error
        if source:
            from convert.hub_download import discard_download

            discard_download(Path(source), root=downloads_dir())  # the 4-bit copy replaces the bf16 download
        return converted

    def count_tokens(self, loaded: Optional[LoadedModel], text: str) -> int:
        tokenizer = getattr(loaded.processor, "tokenizer", loaded.processor) if loaded else None
        if tokenizer is None or not hasattr(tokenizer, "encode"):
            return estimate_tokens(text)
        return len(tokenizer.encode(text, add_special_tokens=False))


def _forward(progress: Callable[[dict], None]) -> Callable[[Any], None]:
    """The converter's ConversionProgress as the dict the window's signal carries."""
    def report(p) -> None:
        progress({"stage": p.stage, "fraction": p.fraction, "message": p.message, "item": p.item,
                  "done": p.done, "total": p.total})

    return report


def _reset_quantized(session, kv_bits: int) -> None:
    session.cache = session.model.make_cache(kv_bits=kv_bits)
    session.tokens, session.restore_points = [], []


def _refuse_if_too_large(folder: Path) -> None:
    """Refuse, with the numbers, a model the planner says this machine cannot hold (instead of swapping)."""
    from . import model_manager

    fit = model_manager.estimate_fit(folder)
    if fit.fits:
        return
    gib = model_manager.GIB
    usable = fit.total_bytes * (1 - model_manager.SYSTEM_SHARE)
    weights = fit.required_bytes - model_manager.RUNTIME_ALLOWANCE  # estimate_fit adds the allowance
    raise EngineError(
        f"{folder.name} needs about {fit.required_bytes / gib:.1f} GB ({weights / gib:.1f} GB "
        f"of weights plus room for a conversation), but this computer has {fit.total_bytes / gib:.0f} GB of memory, "
        f"of which about {usable / gib:.1f} GB can hold a model. Choose a smaller model (E4B or E2B) in the model "
        "manager.")


class Engine(QObject):
    """The window's handle on the model thread. Methods queue jobs; results come back as signals.

    `worker` is the model thread (a `ModelWorker`): the engine makes one unless given one, and the local
    server submits to `engine.worker` to share the loaded model.
    """

    modelLoading = Signal(str)
    modelLoaded = Signal(dict)
    modelLoadFailed = Signal(str)
    generationStarted = Signal(int)
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

    THREAD_NAME = "gemma-engine"
    CONVERT_THREAD_NAME = "gemma-convert"

    def __init__(self, backend: Optional[Backend] = None, parent: Optional[QObject] = None, *,
                 worker: Optional[ModelWorker] = None):
        super().__init__(parent)
        self.backend = backend if backend is not None else MlxBackend()
        self._owns_worker = worker is None
        self.worker = worker if worker is not None else ModelWorker(name=self.THREAD_NAME)
        self._thread = self.worker.thread
        self._generation_cancel = threading.Event()
        self._request_cancels: dict[int, threading.Event] = {}
        self._conversion_cancel = threading.Event()
        self._conversions: "queue.Queue[Optional[tuple]]" = queue.Queue()
        self._convert_thread: Optional[threading.Thread] = None
        self._stopping = False
        self._ids = itertools.count(1)
        self._pending = 0
        self._pending_lock = threading.Lock()

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
        """Load a model folder (None: the offline starter model) on the model thread."""
        folder = Path(path) if path else None
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

    def convert_model(self, repo_id: str, destination: Path, label: str = "") -> None:
        """Download (on its own thread) and convert (on the model thread) a hub checkpoint; one at a time."""
        cancel = self._conversion_cancel = threading.Event()
        self._begin()
        if self._convert_thread is None:
            self._convert_thread = threading.Thread(target=self._conversion_loop, name=self.CONVERT_THREAD_NAME,
                                                    daemon=True)
            self._convert_thread.start()
        self._conversions.put((repo_id, Path(destination), label, cancel))

    def cancel_conversion(self) -> None:
        self._conversion_cancel.set()

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` with the loaded tokenizer (an estimate before a model is loaded)."""
        return self.backend.count_tokens(self.worker.slot, text)

    def shutdown(self, timeout: float = 5.0) -> bool:
        """Cancel generation and conversion, stop the model thread (when the engine made it); True once ended."""
        deadline = time.monotonic() + timeout
        self._stopping = True
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

    def _submit(self, fn: Callable[[Optional[LoadedModel]], None], *, label: str, failed: Any,
                cancel: Optional[threading.Event] = None, on_dropped: Optional[Callable[[], None]] = None) -> None:
        """Queue `fn(slot)` as a window job; `failed` is the signal that reports what went wrong."""
        def run(slot: Optional[LoadedModel]) -> None:
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
        self.modelLoading.emit(str(path) if path else "")
        self.worker.set_slot(None)  # free the old weights (and the server's caches) before the new ones arrive
        try:
            loaded = self.backend.load(path)
        except (EngineError, MemoryError) as error:
            self.modelLoadFailed.emit(_message(error))
            return
        self.worker.set_slot(loaded)
        self.modelLoaded.emit(dict(loaded.info))

    def _generate(self, slot: Optional[LoadedModel], request: GenerationRequest, cancel: threading.Event) -> None:
        self.generationStarted.emit(request.request_id)  # first, so every failure below has an owner
        if slot is None:
            self._request_cancels.pop(request.request_id, None)
            self.generationFailed.emit("No model is loaded. Choose one in the model manager.")
            return
        stats: dict = {}
        try:
            for event in self.backend.generate(slot, request, cancel):
                if event.kind == "answer":
                    self.answerDelta.emit(event.text)
                elif event.kind == "thought":
                    self.thoughtDelta.emit(event.text)
                elif event.kind == "tool_call":
                    self.toolCallReceived.emit(dict(event.tool_call or {}))
                elif event.kind == "notice":
                    self.noticeReceived.emit(event.text)
                elif event.kind == "done":
                    stats = _stats_dict(event.stats)
        except (EngineError, MemoryError, ValueError, RuntimeError) as error:
            # RuntimeError covers MLX's own errors (out of memory on Metal, shape problems in a damaged model)
            self.generationFailed.emit(_message(error))
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

    # the conversion thread

    def _conversion_loop(self) -> None:
        while True:
            item = self._conversions.get()
            if item is None:
                return
            try:
                if not self._stopping:
                    self._convert(*item)
            finally:
                self._end()

    def _convert(self, repo_id: str, destination: Path, label: str, cancel: threading.Event) -> None:
        try:
            source = self.backend.download(repo_id, self.conversionProgress.emit, cancel)
            job: WorkerJob = self.worker.submit(
                "window", lambda slot: self.backend.convert(repo_id, destination, label, self._progress_and_serve,
                                                            cancel, source=source),
                cancel=cancel, label="conversion", exclusive=True)
            result = job.wait()
        except (EngineError, OSError, MemoryError, WorkerError) as error:
            self.conversionFailed.emit(_message(error))
            return
        except Exception as error:  # a bug must not leave the model manager waiting: report it and log the trace
            log.exception("conversion of %s failed", repo_id)
            self.conversionFailed.emit(f"Conversion failed: {type(error).__name__}: {error}")
            return
        if job.skipped:  # cancelled while a generation held the model thread
            self.conversionFailed.emit(CANCELLED_DOWNLOAD)
            return
        self.conversionFinished.emit(str(result))


def _message(error: BaseException) -> str:
    if isinstance(error, MemoryError):
        return "Out of memory. Choose a smaller model or a shorter context in Settings."
    return str(error) or type(error).__name__
