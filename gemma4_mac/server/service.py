"""Between HTTP and the model thread: turn a parsed request into a worker job and its events into a stream.

`open(job, model)` gets the named model loaded (ModelLibrary), then prepares the prompt on a worker
thread of the event loop, not the model thread: the size bound, rendering, tokenizing, attachments and
grammar compilation never hold up another client's generation. Only then is the generation queued for
the BatchScheduler, which decodes the server's requests together on the ModelWorker's thread
(scheduler.py). The job reports to an asyncio queue: first "ready" (it started; the prompt's token
count), or "error" (an APIError with its status), then "event" items (`Output`), then "end".
Cancelling the stream cancels the job: a queued one leaves the queue at once, a running one stops at
its next token.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional, Union

from ..generate import GenerationError, PreparedPrompt, SamplingSettings, prepare_prompt
from ..constrained import ConstraintError, ConstraintFactory, ConstraintUnavailable, ReplyShape
from .errors import BadRequest, NoModelLoaded, RateLimited, ServerError
from .library import KnownModel, ModelConflict, ModelLibrary, model_accepts
from .limits import ContextExceeded, check_prompt_size, texts_of
from .messages import Conversation, MediaFolder
from .processors import PenaltyProcessor
from .scheduler import DEFAULT_MAX_BATCH, END, ERROR, EVENT, READY, BatchScheduler, Output, Request
from .sessions import DEFAULT_SESSIONS, SessionPool
from ..worker import ModelSlot, ModelWorker, QueueFullError, WorkerStoppedError

log = logging.getLogger(__name__)

__all__ = ["END", "ERROR", "EVENT", "READY", "GenerationJob", "GenerationService", "Output", "Stream"]
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
    n: int = 1  # independent choices of the same prompt
    logprobs: Optional[int] = None  # None: off; else how many top alternatives per token
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    # filled while preparing, off the model thread
    model: Optional[KnownModel] = None
    prepared: Optional[PreparedPrompt] = None
    prepared_for: Any = None  # the ModelSlot the prompt was prepared with
    processors: list[list] = field(default_factory=list)  # per choice


class Stream:
    """The events of one job as an async iterator of (kind, payload); `cancel()` stops the job, and takes
    it out of the queue at once when it has not started."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancel_event = threading.Event()
        self.withdraw: Optional[Callable[[], Any]] = None
        self.prompt_tokens = 0

    def push(self, kind: str, payload: Any = None) -> None:
        """Called on the model thread; a closed loop (server stopping) cancels the job instead."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, payload))
        except RuntimeError:
            self.cancel_event.set()

    def cancel(self) -> None:
        if self.cancel_event.is_set():
            return
        self.cancel_event.set()
        if self.withdraw is not None:
            self.withdraw()

    async def get(self, timeout: Optional[float] = None) -> tuple[str, Any]:
        """The next item; asyncio.TimeoutError after `timeout` seconds without one."""
        if timeout is None:
            return await self.queue.get()
        return await asyncio.wait_for(self.queue.get(), timeout)


class GenerationService:
    """The server's handle on the shared model: submits jobs with source "server" to the ModelWorker."""

    def __init__(self, worker: ModelWorker, *, sessions: int = DEFAULT_SESSIONS,
                 model_id: Optional[str] = None, context_limit: Optional[int] = None, observer=None,
                 library: Optional[ModelLibrary] = None, max_batch: int = DEFAULT_MAX_BATCH):
        self.worker = worker
        self.scheduler = BatchScheduler(self, worker, max_batch=max_batch)
        self.pool = SessionPool(sessions)
        self.library = library or ModelLibrary(worker, owns_model=False, alias=model_id)
        self.context_limit = context_limit
        self.created = int(time.time())
        self.observer = observer  # observer(prepared, job) on the model thread: tests and benchmarks
        self._constraints: Optional[ConstraintFactory] = None
        self._prepare_lock = threading.Lock()  # one prompt prepared at a time (the processor caches media)
        self.finished: collections.deque = collections.deque(maxlen=32)  # GenerationStats of recent choices
        self._durations: collections.deque = collections.deque(maxlen=16)  # seconds of recent jobs
        worker.add_slot_listener(self._slot_changed)
        self._warm_up(worker.slot)

    def close(self) -> None:
        """Stop following the worker's model and free this server's conversation caches."""
        self.library.close()
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
        """The loaded model's id (None when none is loaded)."""
        loaded = self.library.loaded()
        return loaded.id if loaded else None

    def retry_after(self) -> int:
        """Seconds a client refused for a full queue should wait: the queue times a recent job's length."""
        mean = sum(self._durations) / len(self._durations) if self._durations else 1.0
        waiting = self.scheduler.waiting() / self.scheduler.max_batch  # batches of waiting requests
        return max(1, min(600, math.ceil(mean * max(1.0, waiting))))

    def waiting(self) -> int:
        """Requests not generating yet (queued for the batch, or any other job on the model thread)."""
        return self.scheduler.waiting() + self.worker.queued()

    async def open(self, job: GenerationJob, requested: str) -> Stream:
        """Load the model `requested` names if needed, prepare the prompt off the model thread, then queue
        the generation. Raises the request's APIError (404, 409, 400, 413, 429, 503) before anything runs."""
        self.library.hold()
        try:
            slot, job.model = await self.library.ensure(requested)
            await self._prepare_off_thread(slot, job)
            return self.start(job, asyncio.get_running_loop(), held=True)
        except BaseException:
            self.library.release()
            job.media.cleanup()
            raise

    async def count_tokens(self, job: GenerationJob, requested: str) -> int:
        """The prompt's token count, as `open` would prepare it (nothing is generated)."""
        try:
            slot, job.model = await self.library.ensure(requested)
            await self._prepare_off_thread(slot, job, count_only=True)
            return len(job.prepared.tokens)
        finally:
            job.media.cleanup()

    async def _prepare_off_thread(self, slot: ModelSlot, job: GenerationJob, *,
                                  count_only: bool = False) -> None:
        try:
            await asyncio.to_thread(self.prepare, slot, job, count_only=count_only)
        except (GenerationError, ValueError) as error:  # the chat format's and the attachments' complaints
            param = "prompt" if job.raw_prompt is not None else "messages"
            raise BadRequest(str(error), param=param) from error
        except MemoryError as error:
            raise ServerError("out of memory while reading the prompt: send a shorter one") from error

    def prepare(self, slot: ModelSlot, job: GenerationJob, *, count_only: bool = False) -> None:
        """Bound, render and tokenize the prompt and build its logits processors (blocking); `count_only`:
        the prompt alone."""
        if slot.processor is None:
            raise NoModelLoaded("the loaded model has no tokenizer, so it cannot read text; "
                                "load a chat model")
        context = self._context(slot)
        texts = [job.raw_prompt] if isinstance(job.raw_prompt, str) else []
        if job.conversation is not None:
            texts = list(texts_of(job.conversation.messages)) + list(texts_of(job.tools or []))
        check_prompt_size(texts, context, slot.processor.tokenizer,
                          param="prompt" if job.raw_prompt is not None else "messages")
        with self._prepare_lock:
            job.prepared = self._render(slot, job)
        if count_only:
            return
        self._check_length(job.prepared, job, context)
        job.processors = [self._processors(slot, job) for _ in range(job.n)]
        job.prepared_for = slot

    def start(self, job: GenerationJob, loop: asyncio.AbstractEventLoop, *, held: bool = False) -> Stream:
        """Queue a prepared job on the model thread; RateLimited (429, with Retry-After) when too many
        wait. The job holds the model (no idle unload) until it ends; `held`: the caller took that hold."""
        stream = Stream(loop)
        if not held:
            self.library.hold()

        def dropped() -> None:  # cancelled while queued, or the worker stopped: the job never ran
            self.library.release()
            job.media.cleanup()
            stream.push(ERROR, NoModelLoaded("the model thread stopped before this request ran"))
            stream.push(END)

        request = Request(job, stream, dropped)
        try:
            self.scheduler.submit(request)
        except (QueueFullError, WorkerStoppedError) as error:
            if not held:  # else the caller, who took the hold, gives it back
                self.library.release()
            job.media.cleanup()
            if isinstance(error, QueueFullError):
                raise RateLimited(str(error), headers={"Retry-After": str(self.retry_after())}) from error
            raise NoModelLoaded(str(error)) from error
        stream.prompt_tokens = len(job.prepared.tokens) if job.prepared is not None else 0
        stream.withdraw = lambda: self.scheduler.withdraw(request)
        return stream

    # -- preparing (a worker thread, or the model thread when the model changed meanwhile) ----------------

    def _context(self, slot: ModelSlot) -> Optional[int]:
        return self.context_limit or slot.info.get("context_limit")

    def _factory(self, slot: ModelSlot) -> ConstraintFactory:
        tokenizer = slot.processor.tokenizer
        factory = self._constraints
        if factory is None or factory.tokenizer is not tokenizer:
            text_config = getattr(getattr(slot.model, "config", None), "text_config", None)
            vocab = getattr(text_config, "vocab_size", None)
            factory = self._constraints = ConstraintFactory(tokenizer, int(vocab or tokenizer.vocab_size))
        return factory

    def _render(self, slot: ModelSlot, job: GenerationJob) -> PreparedPrompt:
        if job.raw_prompt is not None:
            if isinstance(job.raw_prompt, list):
                return PreparedPrompt(list(job.raw_prompt), None, parse_output=False)
            return prepare_prompt(slot.processor, prompt=job.raw_prompt)
        _check_media(slot.model, job.conversation)
        return prepare_prompt(slot.processor, job.conversation.messages, tools=job.tools,
                              enable_thinking=job.enable_thinking)

    def _processors(self, slot: ModelSlot, job: GenerationJob) -> list:
        processors: list = []
        if job.frequency_penalty or job.presence_penalty:
            processors.append(PenaltyProcessor(job.frequency_penalty, job.presence_penalty))
        if job.shape is not None:
            shape = replace(job.shape, in_thought=bool(job.prepared and job.prepared.opens_thought))
            try:
                processors.append(self._factory(slot).grammar_processor(shape, param=job.shape_param))
            except ConstraintUnavailable as error:
                if not shape.free_text:  # asked for calls the vocabulary cannot write; "auto" goes unconstrained
                    raise BadRequest(str(error), param=error.param, code=error.code) from error
            except ConstraintError as error:
                raise BadRequest(str(error), param=error.param, code=error.code) from error
        if job.ban_tool_calls:
            processors.append(self._factory(slot).banned(["<|tool_call>"]))
        return processors

    def _check_length(self, prepared: PreparedPrompt, job: GenerationJob, limit: Optional[int]) -> None:
        if not limit:
            return
        room = limit - len(prepared.tokens)
        if room > 0 and not job.max_tokens_explicit:
            job.sampling.max_tokens = min(job.sampling.max_tokens, room)
        if job.sampling.max_tokens > room:
            raise ContextExceeded(f"this model's context is {limit} tokens, but the prompt has "
                                  f"{len(prepared.tokens)} and max_tokens asks for {job.sampling.max_tokens} "
                                  "more; shorten the conversation or lower max_tokens", param="messages")

    # -- the model thread ----------------------------------------------------------------------------------

    def _slot_changed(self, slot: Optional[ModelSlot]) -> None:
        """Another model (or none): the caches of the old one would only hold its memory."""
        self.pool.clear()
        self._constraints = None
        self._warm_up(slot)

    def _warm_up(self, slot: Optional[ModelSlot]) -> None:
        """Build the grammar engine's view of the vocabulary (seconds) on a thread of its own, so that the
        first request with tools does not wait for it."""
        tokenizer = getattr(getattr(slot, "processor", None), "tokenizer", None)
        if tokenizer is None or tokenizer.token_id("<|tool_call>") is None:
            return
        factory = self._factory(slot)
        threading.Thread(target=factory.ll_tokenizer, name="gemma-grammar-warm-up", daemon=True).start()

    def _model_changed(self, slot: Optional[ModelSlot], job: GenerationJob) -> ModelSlot:
        """Another model was loaded while this job waited: load its own again (when this server may) and
        prepare the prompt afresh, here."""
        wanted = job.model
        if slot is not None and wanted is not None and slot.info.get("path") == str(wanted.path):
            job.prepared = None
            return slot
        may_load = self.library.owns_model and self.library.loader is not None
        if not may_load or wanted is None or wanted.path is None:
            if slot is None:
                raise NoModelLoaded(NO_MODEL)
            raise ModelConflict(f"the model was switched to {slot.info.get('id')!r} while this request "
                                "waited; send it again", param="model")
        self.worker.set_slot(None)
        slot = self.library.loader(wanted.path)
        self.worker.set_slot(slot)
        job.prepared = None
        return slot


def _check_media(model, conversation: Conversation) -> None:
    if conversation.images and not model_accepts(model, "vision"):
        raise BadRequest("the loaded model has no vision tower, so it cannot look at images; load a Gemma 4 "
                         "model with vision or send text only", param="messages", code="images_not_supported")
    if conversation.audio and not model_accepts(model, "audio"):
        raise BadRequest("the loaded model cannot hear audio; audio needs Gemma 4 E2B, E4B or 12B",
                         param="messages", code="audio_not_supported")
