"""Between HTTP and the model thread: turn a parsed request into a worker job and its events into a stream.

Everything that touches the model or the tokenizer (rendering, tokenizing, grammar compilation,
generation) runs as one job on the ModelWorker's thread. The job reports to an asyncio queue: first
"ready" (the prompt was accepted, so a 200 may be sent) or "error" (an APIError with its status),
then "event" items (GenerationEvent), then "end". Cancelling the stream cancels the job, queued or running.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from .. import speculative
from ..generate import GenerationError, PreparedPrompt, SamplingSettings, prepare_prompt, run_prompt
from .constrained import ConstraintFactory, ReplyShape
from .errors import APIError, BadRequest, NoModelLoaded, RateLimited, ServerError
from .messages import Conversation, MediaFolder
from .sessions import DEFAULT_SESSIONS, SessionPool
from ..worker import ModelSlot, ModelWorker, QueueFullError, WorkerStoppedError

log = logging.getLogger(__name__)

READY, EVENT, ERROR, END = "ready", "event", "error", "end"
NO_MODEL = "no model is loaded: open one in the app, or start the server with --model PATH"


@dataclass
class GenerationJob:
    """One request's generation, independent of HTTP."""

    sampling: SamplingSettings
    conversation: Optional[Conversation] = None  # chat requests
    raw_prompt: Optional[Union[str, list[int]]] = None  # /v1/completions
    tools: Optional[list[dict]] = None
    enable_thinking: bool = False
    shape: Optional[ReplyShape] = None  # constrained decoding, or None
    ban_tool_calls: bool = False  # tool_choice "none"
    media: MediaFolder = field(default_factory=MediaFolder)
    shape_param: str = "response_format"
    max_tokens_explicit: bool = False  # else max_tokens shrinks to what the context has left


class Stream:
    """The events of one job as an async iterator of (kind, payload); `cancel()` stops the job."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancel_event = threading.Event()

    def push(self, kind: str, payload: Any = None) -> None:
        """Called on the model thread; a closed loop (server stopping) cancels the job instead."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, payload))
        except RuntimeError:
            self.cancel_event.set()

    def cancel(self) -> None:
        self.cancel_event.set()

    async def get(self, timeout: Optional[float] = None) -> tuple[str, Any]:
        """The next item; asyncio.TimeoutError after `timeout` seconds without one."""
        if timeout is None:
            return await self.queue.get()
        return await asyncio.wait_for(self.queue.get(), timeout)


class GenerationService:
    """The server's handle on the shared model: submits jobs with source "server" to the ModelWorker."""

    def __init__(self, worker: ModelWorker, *, sessions: int = DEFAULT_SESSIONS,
                 model_id: Optional[str] = None, context_limit: Optional[int] = None, observer=None):
        self.worker = worker
        self.pool = SessionPool(sessions)
        self._model_id = model_id
        self.context_limit = context_limit
        self.created = int(time.time())
        self.observer = observer  # observer(prepared, job) on the model thread: tests and benchmarks
        self._constraints: Optional[ConstraintFactory] = None
        self.finished: collections.deque = collections.deque(maxlen=32)  # GenerationStats of recent jobs
        worker.add_slot_listener(self._slot_changed)

    def close(self) -> None:
        """Stop following the worker's model and free this server's conversation caches."""
        self.worker.remove_slot_listener(self._slot_changed)
        try:  # the pool belongs to the model thread: clear it there, after any request still running
            self.worker.submit("server", lambda slot: self._slot_changed(None), label="drop server caches")
        except WorkerStoppedError:
            self.pool.clear()
        except QueueFullError:
            log.info("server caches left to the garbage collector: the model queue is full")

    # -- any thread ----------------------------------------------------------------------------------------

    @property
    def slot(self) -> Optional[ModelSlot]:
        return self.worker.slot

    def model_id(self) -> Optional[str]:
        """The id clients name in `model`: the one given at start, else the model folder's name."""
        slot = self.slot
        if slot is None:
            return None
        return self._model_id or slot.info.get("id") or slot.info.get("name") or "gemma-4"

    def require_model(self, requested: Optional[str] = None) -> ModelSlot:
        """The loaded slot; NoModelLoaded (503), or ModelNotFound (404) when `requested` is another model."""
        from .errors import ModelNotFound

        slot = self.slot
        if slot is None:
            raise NoModelLoaded(NO_MODEL)
        if requested is not None and requested != self.model_id():
            raise ModelNotFound(f"the model {requested!r} does not exist; this server has "
                                f"{self.model_id()!r} (see GET /v1/models)", param="model")
        return slot

    def start(self, job: GenerationJob, loop: asyncio.AbstractEventLoop) -> Stream:
        """Queue the job on the model thread; RateLimited (429) when too many wait."""
        stream = Stream(loop)

        def dropped() -> None:  # cancelled while queued, or the worker stopped: the job never ran
            job.media.cleanup()
            stream.push(ERROR, NoModelLoaded("the model thread stopped before this request ran"))
            stream.push(END)

        try:
            self.worker.submit("server", lambda slot: self._run(slot, job, stream),
                               cancel=stream.cancel_event, label="server generation", on_dropped=dropped)
        except QueueFullError as error:
            job.media.cleanup()
            raise RateLimited(str(error)) from error
        except WorkerStoppedError as error:
            job.media.cleanup()
            raise NoModelLoaded(str(error)) from error
        return stream

    # -- the model thread ----------------------------------------------------------------------------------

    def _slot_changed(self, slot: Optional[ModelSlot]) -> None:
        """Another model (or none): the caches of the old one would only hold its memory."""
        self.pool.clear()
        self._constraints = None

    def _factory(self, slot: ModelSlot) -> ConstraintFactory:
        tokenizer = slot.processor.tokenizer
        if self._constraints is None or self._constraints.tokenizer is not tokenizer:
            text_config = getattr(getattr(slot.model, "config", None), "text_config", None)
            vocab = getattr(text_config, "vocab_size", None)
            self._constraints = ConstraintFactory(tokenizer, int(vocab or tokenizer.vocab_size))
        return self._constraints

    def _prepare(self, slot: ModelSlot, job: GenerationJob) -> PreparedPrompt:
        if slot.processor is None:
            raise NoModelLoaded("the loaded model has no tokenizer, so it cannot read text; "
                                "load a chat model")
        if job.raw_prompt is not None:
            if isinstance(job.raw_prompt, list):
                return PreparedPrompt(list(job.raw_prompt), None, parse_output=False)
            return prepare_prompt(slot.processor, prompt=job.raw_prompt)
        conversation = job.conversation
        _check_media(slot.model, conversation)
        return prepare_prompt(slot.processor, conversation.messages, tools=job.tools,
                              enable_thinking=job.enable_thinking)

    def _processors(self, slot: ModelSlot, job: GenerationJob) -> list:
        processors = []
        if job.shape is not None:
            processors.append(self._factory(slot).grammar_processor(job.shape, param=job.shape_param))
        if job.ban_tool_calls:
            processors.append(self._factory(slot).banned(["<|tool_call>"]))
        return processors

    def _check_length(self, prepared: PreparedPrompt, job: GenerationJob, slot: ModelSlot) -> None:
        limit = self.context_limit or slot.info.get("context_limit")
        if not limit:
            return
        room = limit - len(prepared.tokens)
        if room > 0 and not job.max_tokens_explicit:
            job.sampling.max_tokens = min(job.sampling.max_tokens, room)
        if job.sampling.max_tokens > room:
            raise BadRequest(f"this model's context is {limit} tokens, but the prompt has "
                             f"{len(prepared.tokens)} and max_tokens asks for {job.sampling.max_tokens} "
                             "more; shorten the conversation or lower max_tokens", param="messages",
                             code="context_length_exceeded")

    def _run(self, slot: Optional[ModelSlot], job: GenerationJob, stream: Stream) -> None:
        try:
            if slot is None:
                raise NoModelLoaded(NO_MODEL)
            _check_draft(job.sampling)
            prepared = self._prepare(slot, job)
            self._check_length(prepared, job, slot)
            processors = self._processors(slot, job)
            digests = job.conversation.media_digests if job.conversation else []
            session = self.pool.acquire(slot.model, prepared.keys, digests)
            if self.observer is not None:
                self.observer(prepared, job)
            stream.push(READY, len(prepared.tokens))
            events = run_prompt(slot.model, slot.processor, prepared, job.sampling, session=session,
                                cancel=stream.cancel_event, logits_processors=processors or None)
            for event in events:
                if event.kind == "done":
                    self.finished.append(event.stats)
                stream.push(EVENT, event)
        except APIError as error:
            stream.push(ERROR, error)
        except (GenerationError, ValueError) as error:
            # ValueError covers the chat format's, the attachments' and MLX's complaints about the input
            stream.push(ERROR, BadRequest(str(error)))
        except MemoryError:
            stream.push(ERROR, ServerError("out of memory: load a smaller model or send a shorter "
                                           "conversation"))
        except Exception as error:  # reported to the client as a 500 and logged with its traceback
            log.exception("generation failed")
            stream.push(ERROR, ServerError(f"generation failed: {type(error).__name__}: {error}"))
        finally:
            job.media.cleanup()
            stream.push(END)


def _check_draft(sampling: SamplingSettings) -> None:
    """The per-request speculative decoding option (`SamplingSettings.draft`): auto, mtp, lookup or off."""
    try:
        speculative.check_mode(sampling.draft)
    except speculative.DraftModeError as error:
        raise BadRequest(str(error), param="draft") from None


def model_accepts(model, kind: str) -> bool:
    """Whether the model has a tower for "vision" or "audio" (a test double may declare `capabilities`)."""
    declared = getattr(model, "capabilities", None)
    if declared is not None:
        return kind in declared
    inner = getattr(model, "model", None)
    return bool(getattr(inner, "has_vision" if kind == "vision" else "has_audio", False))


def _check_media(model, conversation: Conversation) -> None:
    if conversation.images and not model_accepts(model, "vision"):
        raise BadRequest("the loaded model has no vision tower, so it cannot look at images; load a Gemma 4 "
                         "model with vision or send text only", param="messages", code="images_not_supported")
    if conversation.audio and not model_accepts(model, "audio"):
        raise BadRequest("the loaded model has no audio tower; audio needs Gemma 4 E2B or E4B",
                         param="messages", code="audio_not_supported")
