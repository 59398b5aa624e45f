"""The models the server can serve: the app's library (`model_manager.list_models`) and the loaded one.

Each model has an id (its folder's name; `org/name` for a Hugging Face cache snapshot), a context length
and abilities read from its config.json. A request names a model by id:

- `python -m gemma4_mac serve` owns its model thread: a known model that is not loaded is loaded on
  demand (one at a time, the previous one unloaded first), and unloaded again after `keep_alive` idle
  seconds (Ollama's keep_alive; a negative value keeps it until the server stops).
- In the app, the window owns the model: the server serves the window's model and never swaps it under
  the person at the window. Naming another known model is refused (409) with the loaded model's id.

An unknown id is answered 404 with the list of known ids.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .errors import APIError, ModelNotFound, NoModelLoaded, ServerError
from ..worker import ModelSlot, ModelWorker, QueueFullError, WorkerJob, WorkerStoppedError

log = logging.getLogger(__name__)
LISTING_SECONDS = 5.0  # how long a scan of the models folders is reused
DEFAULT_KEEP_ALIVE = 300.0


class ModelConflict(APIError):
    """409: the app's window has another model loaded; the server does not swap it."""

    status, code = 409, "model_not_loaded"


@dataclass
class KnownModel:
    """A model the server can name, with what it can do."""

    id: str
    path: Optional[Path]
    name: str
    context_length: Optional[int] = None
    vision: bool = False
    audio: bool = False
    tools: bool = False
    thinking: bool = False
    chat: bool = True

    def card(self, created: int, loaded: bool) -> dict:
        """The model's entry in GET /v1/models."""
        return {"id": self.id, "object": "model", "created": created, "owned_by": "gemma4-mac",
                "name": self.name, "loaded": loaded, "context_length": self.context_length,
                "max_model_len": self.context_length,
                "capabilities": {"vision": self.vision, "audio": self.audio, "tools": self.tools,
                                 "thinking": self.thinking, "chat": self.chat}}


def model_id_for(path: Path) -> str:
    """The id clients use: the folder's name, or `org/name` for a Hugging Face cache snapshot."""
    path = Path(path)
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.parent.parent.name[len("models--"):].replace("--", "/")
    return path.name


def describe_folder(path: Path, *, name: Optional[str] = None, chat: Optional[bool] = None,
                    context_limit: Optional[int] = None) -> KnownModel:
    """A model folder's id, context length (what this machine can hold) and abilities, from its files."""
    from mlx_model.model_folder import ModelLoadError, has_chat_template, read_config

    path = Path(path)
    try:
        config = read_config(path)
    except ModelLoadError:
        config = {}
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    model_type = str(config.get("model_type") or text.get("model_type") or "")
    chat = has_chat_template(path) if chat is None else chat
    gemma4 = model_type.startswith("gemma4")
    return KnownModel(id=model_id_for(path), path=path, name=name or path.name,
                      context_length=context_limit or _context_length(path, config),
                      vision=bool(config.get("vision_config")) and gemma4,
                      audio=bool(config.get("audio_config")),
                      tools=chat and gemma4, thinking=chat and gemma4, chat=chat)


def _context_length(path: Path, config: dict) -> Optional[int]:
    """The longest context this machine can hold for the model (the planner's figure, as at load)."""
    try:
        from mlx_model.config import ModelConfig, ModelConfigError
        from mlx_model.planner import largest_context

        from ..model_manager import total_memory, weight_bytes

        text_config = ModelConfig.from_dict(config).text_config
        return int(largest_context(text_config, total_memory(), weights=weight_bytes(path))) or None
    except (ImportError, ModelConfigError, ValueError, TypeError, OSError) as error:
        log.info("no context length for %s: %s", path, error)
        return None


def model_accepts(model, kind: str) -> bool:
    """Whether the model has a tower for "vision" or "audio" (a test double may declare `capabilities`)."""
    declared = getattr(model, "capabilities", None)
    if declared is not None:
        return kind in declared
    inner = getattr(model, "model", None)
    return bool(getattr(inner, "has_vision" if kind == "vision" else "has_audio", False))


def _library_entries() -> list:
    from ..model_manager import list_models

    return list_models()


class ModelLibrary:
    """Which models exist, which is loaded, and getting the one a request names onto the model thread.

    `owns_model`: load and unload on demand (the `serve` command); otherwise the window decides (the app).
    `loader(path)` builds a ModelSlot on the model thread. `extra_paths` are served besides the library
    (the `--model` folder). `alias` is another id for the loaded model (`--model-id`).
    """

    def __init__(self, worker: ModelWorker, *, owns_model: bool, loader: Optional[Callable] = None,
                 keep_alive: float = DEFAULT_KEEP_ALIVE, extra_paths: tuple = (), alias: Optional[str] = None,
                 entries: Callable[[], list] = _library_entries):
        self.worker, self.owns_model, self.loader = worker, owns_model, loader
        self.keep_alive, self.extra_paths, self.alias = keep_alive, tuple(extra_paths), alias
        self._entries = entries
        self._listing: tuple[float, list[KnownModel]] = (0.0, [])
        self._described: Optional[tuple[weakref.ref, KnownModel]] = None  # the loaded slot, described once
        self._loading: dict[str, WorkerJob] = {}
        self._lock = threading.Lock()
        self.last_used = time.monotonic()
        self._busy = 0  # server requests between resolving their model and the end of their generation
        self._busy_lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: Optional[threading.Thread] = None
        if owns_model and keep_alive >= 0:
            self._watcher = threading.Thread(target=self._watch_idle, name="gemma-keep-alive", daemon=True)
            self._watcher.start()

    def close(self) -> None:
        self._stop.set()

    # -- what exists --------------------------------------------------------------------------------------

    def loaded(self) -> Optional[KnownModel]:
        """The loaded model's description (from the slot's info), or None."""
        slot = self.worker.slot
        if slot is None:
            return None
        cached = self._described
        if cached is not None and cached[0]() is slot:
            return cached[1]
        info = slot.info
        path = Path(info["path"]) if info.get("path") else None
        model_id = self.alias or info.get("id") or (model_id_for(path) if path else None) or "gemma-4"
        if path is not None and path.is_dir():
            known = describe_folder(path, name=info.get("name"), context_limit=info.get("context_limit"),
                                    chat=info.get("chat"))
        else:
            known = KnownModel(id=model_id, path=path, name=str(info.get("name") or model_id),
                               context_length=info.get("context_limit"))
        known.id = model_id
        known.vision = known.vision or model_accepts(slot.model, "vision")
        known.audio = known.audio or model_accepts(slot.model, "audio")
        self._described = (weakref.ref(slot), known)  # weak: an unloaded model's memory is freed
        return known

    def known(self) -> list[KnownModel]:
        """Every model a request may name, the loaded one first."""
        loaded = self.loaded()
        now = time.monotonic()
        with self._lock:
            stamp, listing = self._listing
            if now - stamp > LISTING_SECONDS:
                listing = self._scan()
                self._listing = (now, listing)
        models = [loaded] if loaded else []
        taken = {loaded.id} if loaded else set()
        loaded_path = loaded.path.resolve() if loaded and loaded.path else None
        for model in listing:
            if model.id in taken or (model.path is not None and model.path.resolve() == loaded_path):
                continue
            taken.add(model.id)
            models.append(model)
        return models

    def listed(self) -> list[KnownModel]:
        """What GET /v1/models lists: the models a request can use here. `serve` can load any known
        model; the app serves the window's model only (naming another gets a 409 that says so)."""
        if self.owns_model:
            return self.known()
        loaded = self.loaded()
        return [loaded] if loaded else []

    def _scan(self) -> list[KnownModel]:
        found: list[KnownModel] = []
        try:
            entries = list(self._entries())
        except OSError as error:
            log.warning("the models folder cannot be read: %s", error)
            entries = []
        for entry in entries:  # the starter base model too: it serves /v1/completions
            found.append(describe_folder(entry.path, name=getattr(entry, "label", None),
                                         chat=getattr(entry, "has_chat_template", None)))
        for extra in self.extra_paths:
            if extra and Path(extra).is_dir():
                found.append(describe_folder(Path(extra)))
        return found

    def find(self, requested: str) -> KnownModel:
        """The known model with this id; ModelNotFound (404) listing the known ids. In the app with no model
        loaded, NoModelLoaded (503): the window has to load one first."""
        if not self.owns_model and self.worker.slot is None:
            raise NoModelLoaded("no model is loaded in the app: open one in its window")
        models = self.known()
        for model in models:
            if model.id == requested:
                return model
        loaded = models[0] if models and self.worker.slot is not None else None
        if loaded is not None and loaded.path is not None and requested in (loaded.path.name, loaded.name):
            return loaded
        ids = ", ".join(repr(m.id) for m in models) or "none (load a model in the app or pass --model)"
        raise ModelNotFound(f"the model {requested!r} does not exist here; known models: {ids} "
                            "(GET /v1/models lists them)", param="model")

    # -- getting it loaded --------------------------------------------------------------------------------

    def needs_load(self, requested: str) -> bool:
        """Whether serving `requested` means loading it first (ModelNotFound for an unknown id)."""
        wanted = self.find(requested)
        loaded = self.loaded()
        return self.owns_model and (loaded is None or loaded.id != wanted.id)

    async def ensure(self, requested: str) -> tuple[ModelSlot, KnownModel]:
        """The loaded slot for the model `requested` names, loading it first when this server may.

        ModelNotFound (404) for an unknown id, ModelConflict (409) in the app when the window has another
        model, NoModelLoaded (503) when nothing is loaded and nothing may be."""
        wanted = self.find(requested)
        loaded = self.loaded()
        slot = self.worker.slot
        if slot is not None and loaded is not None and wanted.id == loaded.id:
            return slot, loaded
        if not self.owns_model:
            if slot is None:
                raise NoModelLoaded("no model is loaded in the app: open one in its window")
            raise ModelConflict(f"the app has {loaded.id!r} loaded and this server serves the app's model; "
                                f"send model {loaded.id!r}, or switch to {wanted.id!r} in the app's window",
                                param="model")
        if wanted.path is None:
            raise NoModelLoaded(f"the model {wanted.id!r} has no folder to load it from")
        job = self._loading.get(wanted.id)
        if job is None or job.finished.is_set():
            job = self._submit_load(wanted)
        while not job.finished.is_set():
            await asyncio.sleep(0.05)
        try:
            job.wait(0)
        except (OSError, ValueError, RuntimeError, MemoryError) as error:
            raise ServerError(f"the model {wanted.id!r} could not be loaded: {error}") from error
        slot = self.worker.slot
        if slot is None:
            raise NoModelLoaded(f"the model {wanted.id!r} was unloaded before this request ran; "
                                "send it again")
        return slot, self.loaded() or wanted

    def _submit_load(self, wanted: KnownModel) -> WorkerJob:
        path, loader = wanted.path, self.loader

        def load(_previous: Optional[ModelSlot]) -> ModelSlot:
            self.worker.set_slot(None)  # free the old weights before the new ones arrive
            log.info("loading %s for a request", path)
            slot = loader(path)
            self.worker.set_slot(slot)
            return slot

        try:
            job = self.worker.submit("server", load, label=f"load {wanted.id}")
        except QueueFullError as error:
            from .errors import RateLimited

            raise RateLimited(str(error)) from error
        except WorkerStoppedError as error:
            raise NoModelLoaded(str(error)) from error
        self._loading[wanted.id] = job
        return job

    # -- keep_alive ---------------------------------------------------------------------------------------

    @property
    def busy(self) -> int:
        return self._busy

    def hold(self) -> None:
        """A request needs the loaded model: it is not unloaded for idleness until `release`."""
        with self._busy_lock:
            self._busy += 1

    def release(self) -> None:
        """A request is done with the model: the idle clock starts again."""
        with self._busy_lock:
            self._busy = max(0, self._busy - 1)
        self.last_used = time.monotonic()

    def _watch_idle(self) -> None:
        period = min(max(self.keep_alive / 4, 0.05), 5.0)
        while not self._stop.wait(period):
            if self.worker.slot is None or self.busy or self.worker.current is not None:
                continue
            if self.worker.queued() or time.monotonic() - self.last_used < self.keep_alive:
                continue
            try:
                self.worker.submit("server", self._unload_if_idle, label="unload idle model")
            except (QueueFullError, WorkerStoppedError):
                return

    def _unload_if_idle(self, slot: Optional[ModelSlot]) -> None:
        if slot is not None and not self.busy and time.monotonic() - self.last_used >= self.keep_alive:
            log.info("unloading %s after %.0f s idle", slot.info.get("id"), self.keep_alive)
            self.worker.set_slot(None)
