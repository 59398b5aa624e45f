"""The engine's Qt-free half: what a turn asks for (`GenerationRequest`), the backend seam, and
`MlxBackend`, the real runtime (our model, streaming generation, the converter).

Every backend call runs on the model thread (`gemma4_mac.worker.ModelWorker`): MLX streams belong to
the thread that made them. The window's handle on that thread, with its Qt signals, is `ui.engine.Engine`;
`fake_backend.FakeBackend` lets the window be tested without MLX.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Protocol

from .documents import estimate_tokens
from .paths import downloads_dir
from .worker import ModelSlot

DEFAULT_CONTEXT = 8192
CONVERT_BITS = 4  # what the model manager offers: 4-bit fits Gemma 4 E2B/E4B on 16 GB Macs
CANCELLED_DOWNLOAD = "Download cancelled. Start it again to resume."
CANCELLED_CONVERSION = "Conversion cancelled; nothing was written to the models folder."
log = logging.getLogger(__name__)


@dataclass
class AgentOptions:
    """Tools for one request (the app's agent, gemma4_mac.agent): the ones switched on in its chat, the step
    limit, what the person wrote (the paths they named), where returned images go, and the servers the
    person already allowed in this chat (kept by the caller across turns)."""

    tools_off: list[str] = field(default_factory=list)  # "server/tool" keys switched off in this chat
    max_steps: int = 8
    person_texts: list[str] = field(default_factory=list)
    image_dir: Optional[str] = None
    approved: set[str] = field(default_factory=set)


@dataclass
class GenerationRequest:
    """One turn to answer. `messages` are HF-style dicts; `raw_prompt` is used for base models instead.

    `tool_schemas` holds tool calls to those (name, parameters) pairs, `ban_tool_calls` forbids calls;
    `agent` runs the turn with tools (the engine's agent loop, several model turns)."""

    conversation_id: int
    messages: list[dict]
    enable_thinking: bool = False
    sampling: dict[str, Any] = field(default_factory=dict)
    tools: Optional[list[dict]] = None
    kv_bits: Optional[int] = None
    image_token_budget: int = 280
    raw_prompt: Optional[str] = None
    request_id: int = 0
    tool_schemas: Optional[list[tuple[str, Optional[dict]]]] = None
    ban_tool_calls: bool = False
    agent: Optional[AgentOptions] = None


class Backend(Protocol):
    """What the engine thread needs from a model runtime."""

    def load(self, path: Optional[Path]) -> ModelSlot: ...

    def prepare_starter(self, progress: Callable[[dict], None]) -> Optional[Path]:
        """Build the offline starter model on first use, reporting progress; returns the folder to `load`
        (None: `load(None)` means the starter)."""

    def generate(self, loaded: ModelSlot, request: GenerationRequest,
                 cancel: threading.Event) -> Iterator[Any]: ...

    def download(self, repo_id: str, progress: Callable[[dict], None], cancel: threading.Event) -> str:
        """Fetch what `convert` reads (network and files, no MLX: runs off the model thread)."""

    def convert(self, repo_id: str, destination: Path, label: str, progress: Callable[[dict], None],
                cancel: threading.Event, source: Optional[str] = None, base_model: bool = False) -> Path:
        """Convert `source` (what `download` returned) on the model thread; `base_model`: a model without
        a chat template, kept as one that continues text."""

    def count_tokens(self, loaded: Optional[ModelSlot], text: str) -> int: ...


class EngineError(RuntimeError):
    """A job the engine cannot run; the message is shown to the person as is."""


def stats_dict(stats: Any) -> dict:
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
        self._constraints = None  # the loaded model's ConstraintFactory, made on the first turn with tools
        self._drafter_downloads: dict[str, str] = {}  # repo id -> its downloaded MTP drafter, for `convert`

    def load(self, path: Optional[Path]) -> ModelSlot:
        from mlx_model import ModelLoadError, load
        from mlx_model.assistant import attached_drafter

        from . import model_manager

        starter = path is None
        self._session, self._session_key = None, None  # the old model's cache goes with it
        self._constraints = None
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
                "context_limit": self._context_limit(model, entry.size_bytes),
                "drafter": attached_drafter(model) is not None,  # its MTP drafter, loaded beside it
                "can_see": bool(getattr(processor, "can_see", False)),  # a vision tower: images and video
                "can_hear": bool(getattr(processor, "can_hear", False))}  # an audio tower (E2B and E4B)
        try:
            from .document_cache import DocumentCacheStore, model_fingerprint
            from .paths import document_cache_dir

            self._document_cache = DocumentCacheStore(document_cache_dir())
            info["fingerprint"] = model_fingerprint(folder)
        except OSError:
            self._document_cache = None  # a read-only data folder: long documents are simply recomputed
        return ModelSlot(model, processor, info)

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

    def _session_for(self, loaded: ModelSlot, request: GenerationRequest):
        from .session import ChatSession

        key = (request.conversation_id, request.kv_bits)
        if self._session is None or self._session_key != key:
            self._session = ChatSession(loaded.model, kv_bits=request.kv_bits)
            self._session_key = key
        return self._session

    def generate(self, loaded: ModelSlot, request: GenerationRequest, cancel: threading.Event) -> Iterator[Any]:
        from .generate import GenerationError, SamplingSettings, prepare_prompt, run_prompt

        if loaded.processor is not None:
            loaded.processor.image_token_budget = request.image_token_budget
        sampling = SamplingSettings(**request.sampling)
        try:
            messages = None if request.raw_prompt is not None else request.messages
            prepared = prepare_prompt(loaded.processor, messages, prompt=request.raw_prompt, tools=request.tools,
                                      enable_thinking=request.enable_thinking)
            yield from run_prompt(loaded.model, loaded.processor, prepared, sampling, cancel=cancel,
                                  session=self._session_for(loaded, request),
                                  logits_processors=self._tool_processors(loaded, request, prepared),
                                  document_cache=self._document_cache, model_id=loaded.info.get("fingerprint"))
        except GenerationError as error:
            raise EngineError(str(error)) from error

    def _tool_processors(self, loaded: ModelSlot, request: GenerationRequest, prepared) -> Optional[list]:
        """Constrained decoding for a turn with tools: calls fit their schemas (or are banned)."""
        if not (request.tool_schemas or request.ban_tool_calls) or request.raw_prompt is not None:
            return None
        from .constrained import agent_processors, factory_for

        if self._constraints is None or self._constraints.tokenizer is not loaded.processor.tokenizer:
            self._constraints = factory_for(loaded.model, loaded.processor.tokenizer)
        return agent_processors(self._constraints, request.tool_schemas or [],
                                allow_calls=not request.ban_tool_calls, in_thought=prepared.opens_thought)

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
            source = str(download(repo_id, Reporter(_forward(progress), cancel), cache_dir=downloads_dir()))
        except ConversionCancelled as error:
            raise EngineError(CANCELLED_DOWNLOAD) from error
        except (ConversionError, OSError) as error:
            raise EngineError(str(error)) from error
        self._download_drafter(repo_id, progress, cancel)
        return source

    def _download_drafter(self, repo_id: str, progress: Callable[[dict], None],
                          cancel: threading.Event) -> None:
        """Fetch the model's MTP drafter too (it makes answers faster); without it the model still works."""
        from convert import ConversionCancelled, ConversionError
        from convert.hf_source import download
        from convert.progress import Reporter

        from .model_manager import drafter_repo

        drafter = drafter_repo(repo_id)
        if drafter is None:
            return
        try:
            self._drafter_downloads[repo_id] = str(download(drafter, Reporter(_forward(progress), cancel),
                                                            cache_dir=downloads_dir()))
        except ConversionCancelled as error:
            raise EngineError(CANCELLED_DOWNLOAD) from error
        except (ConversionError, OSError) as error:
            log.warning("%s is used without its drafter %s: %s", repo_id, drafter, error)

    def prepare_starter(self, progress: Callable[[dict], None]) -> Optional[Path]:
        """The starter model's folder, converted from its packaged GGUF on first use (MLX work: on the model
        thread)."""
        from . import model_manager

        try:
            return model_manager.ensure_starter(progress=_forward(progress))
        except (model_manager.ModelManagerError, OSError) as error:
            raise EngineError(str(error)) from error

    def convert(self, repo_id: str, destination: Path, label: str, progress: Callable[[dict], None],
                cancel: threading.Event, source: Optional[str] = None, base_model: bool = False) -> Path:
        """Convert to 4-bit MLX (MLX work: on the model thread); `repo_id` is recorded as the source, a local
        folder or GGUF file as given (it is read where it lies and never deleted)."""
        try:
            from convert import ConversionCancelled, ConversionError, convert_checkpoint
        except ImportError as error:
            raise EngineError(f"The converter is not available in this build ({error}).") from error
        metadata = {"source": repo_id, **({"chat": False} if base_model else {})}
        local = Path(repo_id).expanduser().exists()
        try:
            converted = Path(convert_checkpoint(source or repo_id, destination, bits=CONVERT_BITS,
                                                progress=_forward(progress), cancel=cancel, label=label or None,
                                                metadata=metadata))
        except ConversionCancelled as error:
            raise EngineError(CANCELLED_CONVERSION if local else CANCELLED_DOWNLOAD) from error
        except (ConversionError, OSError) as error:
            raise EngineError(str(error)) from error
        self._convert_drafter(repo_id, converted, progress, cancel)
        if source:
            from convert.hub_download import discard_download

            discard_download(Path(source), root=downloads_dir())  # the 4-bit copy replaces the bf16 download
        return converted

    def _convert_drafter(self, repo_id: str, converted: Path, progress: Callable[[dict], None],
                         cancel: threading.Event) -> None:
        """Convert the downloaded MTP drafter into the model folder (quantized like the model); a drafter that
        fails is left out, and the model answers without it."""
        from convert import ConversionCancelled, ConversionError
        from convert.drafter import convert_drafter
        from convert.hub_download import discard_download

        source = self._drafter_downloads.pop(repo_id, None)
        if source is None:
            return
        try:
            convert_drafter(source, converted, progress=_forward(progress), cancel=cancel)
        except (ConversionCancelled, ConversionError, OSError) as error:  # the converted model stays usable
            log.warning("the drafter of %s was not converted: %s", converted, error or "cancelled")
        discard_download(Path(source), root=downloads_dir())

    def count_tokens(self, loaded: Optional[ModelSlot], text: str) -> int:
        """Tokens of `text` with the model's tokenizer (an estimate without one)."""
        count = self.token_counter(loaded)
        return count(text) if count is not None else estimate_tokens(text)

    def token_counter(self, loaded: Optional[ModelSlot]) -> Optional[Callable[[str], int]]:
        """A token count of a text by the model's tokenizer, usable beside the model thread; None if none."""
        tokenizer = getattr(getattr(loaded, "processor", None), "tokenizer", None)
        if tokenizer is None:
            return None
        fast = getattr(getattr(tokenizer, "hf_tokenizer", None), "backend_tokenizer", None)
        if fast is None:
            return lambda text: len(tokenizer.encode(text, add_special_tokens=False))
        # the Rust tokenizer itself: encoding only reads it, so the counting thread never changes what the
        # model thread uses (transformers' wrapper may reset truncation and padding on each call)
        return lambda text: len(fast.encode(text, add_special_tokens=False))


def _forward(progress: Callable[[dict], None]) -> Callable[[Any], None]:
    """The converter's ConversionProgress as the dict the window's signal carries."""
    def report(p) -> None:
        progress({"stage": p.stage, "fraction": p.fraction, "message": p.message, "item": p.item,
                  "done": p.done, "total": p.total})

    return report


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


def error_message(error: BaseException) -> str:
    """What the person reads for an error raised by a backend job."""
    if isinstance(error, MemoryError):
        return "Out of memory. Choose a smaller model or a shorter context in Settings."
    return str(error) or type(error).__name__
