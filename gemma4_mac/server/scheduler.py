"""Continuous batching of the server's requests on the model thread.

Requests wait in `BatchScheduler`'s own queue (a client that leaves is taken out at once). One worker job,
the batch loop, runs on the ModelWorker's thread while there is work: between decode steps it reads the
next waiting request's prompt one prefill chunk at a time (in a pooled `ChatSession`, as a lone request
would), and once read, that request's choices join the running `DecodeBatch` as rows; a row leaves at end
of turn, a stop string, max_tokens, a cancel (the client left) or an error. So a new request never waits
for the others' whole answers, and a stream already running only pauses for a prefill chunk.

The loop takes turns with the window on the model thread: when a window job waits, the loop finishes
reading the prompt it is reading, decodes a step, queues its own continuation behind the window's job and
returns; the batch keeps its state and goes on where it stopped. While another server job waits (a model
load for another request, a cache cleanup) no request joins, so that job runs as soon as the running
replies end (a load never swaps the model under them). A request prepared for another model joins
only an empty batch (the service then loads its model again where it may).

When a row ends (end of turn, a stop string, max_tokens, or a cancel, as `run_prompt` keeps a cancelled
reply too), its reply goes back into the pooled session its prompt was read in (`SessionPool.hand_back`),
so the conversation's next turn reuses prompt and answer; of a request's n choices only choice 0 does, and
never into a session that another request has reacquired or is reading into. A row that failed leaves
nothing behind.

A model that cannot batch (a split model, whose caches the other Macs mirror: `supports_batching = False`)
decodes one request at a time on its own cache, through `run_prompt` (the "solo" path); so does a lone
request that may be drafted (speculative decoding: nothing else running or waiting when it starts), and
requests that arrive meanwhile wait for it to end. Batched rows decode plainly, never drafted.

Memory: a request joins only while (rows after joining) x (the longest row, or its prompt) stays within
the context this Mac can hold for one request (the planner's figure); an empty batch takes any request.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Generator, Optional

from ..batch import BatchRow, DecodeBatch
from .. import speculative
from ..distributed import PeerLostError
from ..generate import GenerationError, GenerationEvent, GenerationStats, ReplyDecoder, SamplingSettings, \
    TokenPicker, run_prompt
from ..worker import ModelSlot, ModelWorker, QueueFullError, WorkerJob, WorkerStoppedError
from .errors import APIError, BadRequest, GroupDegraded, NoModelLoaded, ServerError
from .library import ModelConflict
from .processors import TokenTap, settle, stop_sequence, token_piece

log = logging.getLogger(__name__)

READY, EVENT, ERROR, END = "ready", "event", "error", "end"
DEFAULT_MAX_BATCH = 8


@dataclass
class Output:
    """One piece of one choice: a generation event, the logprobs of its tokens, and on "done" which stop
    sequence ended it (None for end of turn, max_tokens or cancel)."""

    event: GenerationEvent
    choice: int = 0
    logprobs: list[dict] = field(default_factory=list)
    stop_sequence: Optional[str] = None

    @property
    def kind(self) -> str:
        return self.event.kind


@dataclass
class Request:
    """A prepared job with its stream, from the queue to its last choice's end."""

    job: Any  # a service.GenerationJob, prepared
    stream: Any  # its service.Stream
    dropped: Callable[[], None]  # it never ran: the service releases what it holds
    rows_left: int = 0
    started: float = 0.0
    slot: Optional[ModelSlot] = None  # the model its prompt is read with, once reading began
    session: Any = None  # the pooled ChatSession its prompt is read in, once reading began
    done: bool = False


@dataclass
class Choice:
    """What one row's events need on the way to the client: the token tap, held calls and timings."""

    request: Request
    index: int
    tap: TokenTap
    sampling: SamplingSettings
    started: float
    prompt_done: float
    reused: int
    held: list = field(default_factory=list)  # calls whose block is still open: cut off unless the turn ends


class BatchScheduler:
    """The server's requests on the one model, decoded together; see the module docstring. `service` is
    the GenerationService whose pool, prepare step and figures the requests use."""

    def __init__(self, service: Any, worker: ModelWorker, *,
                 max_batch: int = DEFAULT_MAX_BATCH):
        if max_batch < 1:
            raise ValueError("a batch needs room for at least one reply")
        self.service, self.worker = service, worker
        self.max_batch = max_batch
        self._pending: collections.deque[Request] = collections.deque()
        self._lock = threading.Lock()
        self._scheduled = False  # the loop job is queued or running
        self._loop_job: Optional[WorkerJob] = None
        self.most_rows = 0  # the most rows one step has decoded together (tests and benchmarks read it)
        # the model thread's own state
        self._batch: Optional[DecodeBatch] = None
        self._batch_slot: Optional[ModelSlot] = None
        self._joining: Optional[tuple[Request, Generator]] = None
        self._solo: Optional[tuple[Request, Generator]] = None  # a request decoded on its own (see above)

    # -- any thread ----------------------------------------------------------------------------------------

    @property
    def queue_limit(self) -> int:
        """The most requests that may wait: the model thread's limit per source."""
        return self.worker.queue_limit

    def waiting(self) -> int:
        """Requests that have not joined the batch yet."""
        with self._lock:
            return len(self._pending)

    def active(self) -> int:
        """Rows being decoded now."""
        batch, solo = self._batch, self._solo
        return (len(batch) if batch is not None else 0) + (solo is not None)

    def submit(self, request: Request) -> None:
        """Queue a prepared request; QueueFullError past `queue_limit` waiting, WorkerStoppedError when the
        model thread has stopped."""
        if not self.worker.running:
            raise WorkerStoppedError("The model thread has stopped.")
        with self._lock:
            if len(self._pending) >= self.queue_limit:
                raise QueueFullError(f"{len(self._pending)} requests are already waiting for the model; "
                                     "try again when some have finished.")
            self._pending.append(request)
            start = not self._scheduled
            self._scheduled = True
        if start:
            self._queue_loop()

    def withdraw(self, request: Request) -> bool:
        """Take a request that has not joined out of the queue at once (its `dropped` runs here)."""
        with self._lock:
            if request not in self._pending:
                return False
            self._pending.remove(request)
        request.dropped()
        return True

    def _queue_loop(self) -> None:
        try:
            self._loop_job = self.worker.submit("server", self._run, label="server batch",
                                                on_dropped=self._worker_gone)
        except (QueueFullError, WorkerStoppedError):
            self._worker_gone()

    def _worker_gone(self) -> None:
        """The loop will not run again (the worker stopped): every request ends."""
        with self._lock:
            pending, self._pending = list(self._pending), collections.deque()
            self._scheduled = False
        for request in pending:
            request.dropped()
        self._fail_all(NoModelLoaded("the model thread stopped before this request ended"))

    # -- the model thread ----------------------------------------------------------------------------------

    def _run(self, slot: Optional[ModelSlot]) -> None:
        """The batch loop: admit, read a prefill chunk, decode a step; until idle or another job waits."""
        loop_job = self._loop_job
        decoded = False  # a turn of the loop reads any prompt it began and decodes a step before it yields
        try:
            while True:
                if loop_job is not None and loop_job.cancel.is_set():  # the worker is stopping
                    self._worker_gone()
                    return
                self._check_model(self.worker.slot)
                self._admit(self.worker.slot)
                if self._joining is not None:
                    self._read_chunk()
                if self._solo is not None:
                    self._solo_step()
                    decoded = True
                if self._batch is not None and len(self._batch):
                    self._decode()
                    decoded = True
                idle = self._joining is None and self._solo is None and not (self._batch is not None
                                                                             and len(self._batch))
                if idle:
                    with self._lock:
                        if not self._pending:
                            self._scheduled = False
                            return
                if idle or (decoded and self._joining is None and self.worker.queued("window")):
                    break  # another job's turn; this loop goes on after it
        except Exception as error:  # a failure of the batch itself: its requests end with a 500
            log.exception("the batch loop failed")
            self._fail_all(ServerError(f"generation failed: {type(error).__name__}: {error}"))
        self._queue_loop()

    def _check_model(self, slot: Optional[ModelSlot]) -> None:
        """A model swapped under running replies (the window loaded another): they end, and say why."""
        conflict = ModelConflict("the model was switched while this reply was being written; send the "
                                 "request again", param="model")
        if self._batch is not None and len(self._batch) and slot is not self._batch_slot:
            for request in {id(row.owner.request): row.owner.request for row in self._batch.rows}.values():
                self._fail(request, conflict)
            self._batch = None
        reading_with = self._joining[0].slot if self._joining is not None else None
        if reading_with is not None and reading_with is not slot:
            request, reading = self._joining
            self._joining = None
            reading.close()
            self._fail(request, conflict)
        if self._solo is not None and self._solo[0].slot is not None and self._solo[0].slot is not slot:
            request, steps = self._solo
            self._solo = None
            steps.close()
            self._fail(request, conflict)

    def _admit(self, slot: Optional[ModelSlot]) -> None:
        """Start reading the next waiting request's prompt when it may join now (not while a load or
        another server job waits: that one goes first once the running replies end)."""
        if self._joining is not None or self._solo is not None or self.worker.queued("server"):
            return
        rows = len(self._batch) if self._batch is not None else 0
        with self._lock:
            if not self._pending:
                return
            request = self._pending[0]
            job = request.job
            solo = not rows and self._decodes_alone(slot, job, lone=len(self._pending) == 1)
            if rows:
                if job.prepared_for is not None and job.prepared_for is not slot:
                    return  # prepared for another model: it waits for an empty batch
                if rows + job.n > self.max_batch or not self._fits(slot, job, rows):
                    return
            self._pending.popleft()
        if request.stream.cancel_event.is_set():
            request.dropped()
            return
        if solo:
            self._solo = (request, self._solo_run(slot, request))
        else:
            self._joining = (request, self._reading(slot, request))

    @staticmethod
    def _decodes_alone(slot: Optional[ModelSlot], job, lone: bool) -> bool:
        """A model that cannot batch decodes every request alone; a lone request that may draft does too."""
        if slot is None or (job.prepared_for is not None and job.prepared_for is not slot):
            return False  # prepared afresh for its model once it runs: it goes the batch's way
        if not getattr(slot.model, "supports_batching", True):
            return True
        processors = job.processors[0] if job.processors else []
        return lone and speculative.applicable(slot.model, job.sampling, processors)

    def _fits(self, slot: Optional[ModelSlot], job, rows: int) -> bool:
        context = self.service._context(slot) if slot is not None else None
        prompt = len(job.prepared.tokens) if job.prepared is not None else 0
        return not context or (rows + job.n) * max(self._batch.longest, prompt) <= context

    def _read_chunk(self) -> None:
        request, reading = self._joining
        try:
            next(reading)
            return
        except StopIteration:
            pass
        except Exception as error:  # the request's own failure (its prompt, its attachments, its grammar)
            self._fail(request, error)
        self._joining = None

    def _reading(self, slot: Optional[ModelSlot], request: Request) -> Generator[None, None, None]:
        """Prepare (if the model changed), read the prompt a chunk per step, then join the batch."""
        service, job, stream = self.service, request.job, request.stream
        request.started = time.monotonic()
        if slot is None or (job.prepared_for is not None and slot is not job.prepared_for):
            slot = service._model_changed(slot, job)
        request.slot = slot
        if job.prepared is None:
            service.prepare(slot, job)
        if service.observer is not None:
            service.observer(job.prepared, job)
        prepared = job.prepared
        stream.push(READY, len(prepared.tokens))
        for choice in range(job.n):
            for note in prepared.notes:
                stream.push(EVENT, Output(GenerationEvent("notice", note), choice))
        started = time.perf_counter()
        digests = job.conversation.media_digests if job.conversation else []
        session = request.session = service.pool.acquire(slot.model, prepared.keys, digests)
        steps = session.reading(prepared, cancel=stream.cancel_event,
                                reserve_after=min(job.sampling.max_tokens, 4096))
        while True:
            try:
                read, total = next(steps)
            except StopIteration as done:
                logits, reused = done.value
                break
            stream.push(EVENT, Output(GenerationEvent("progress", progress=(read, total)), 0))
            yield
        prompt_done = time.perf_counter()
        if logits is None:  # cancelled while reading
            for choice in range(job.n):
                stats = GenerationStats(prompt_tokens=len(prepared.tokens), cached_tokens=reused,
                                        finish_reason="cancelled")
                service.finished.append(stats)
                stream.push(EVENT, Output(GenerationEvent("done", stats=stats), choice))
            self._finish(request)
            return
        rows = [self._row(slot, request, choice, logits, started, prompt_done, reused)
                for choice in range(job.n)]
        if self._batch is None or not len(self._batch):
            self._batch, self._batch_slot = DecodeBatch(slot.model), slot
        self._batch.add(rows, [session.cache] * len(rows))
        request.rows_left = len(rows)

    def _solo_step(self) -> None:
        request, steps = self._solo
        try:
            next(steps)
            return
        except StopIteration:
            pass
        except Exception as error:  # its prompt, its attachments, its grammar, or a Mac of the group lost
            self._fail(request, error)
        self._solo = None

    def _solo_run(self, slot: ModelSlot, request: Request) -> Generator[None, None, None]:
        """One request's choices one after another through `run_prompt` on a pooled session's own cache
        (mirrored to the other Macs for a split model), an event per step."""
        service, job, stream = self.service, request.job, request.stream
        request.started, request.slot = time.monotonic(), slot
        if job.prepared is None:
            service.prepare(slot, job)
        if service.observer is not None:
            service.observer(job.prepared, job)
        stream.push(READY, len(job.prepared.tokens))
        tokenizer = slot.processor.tokenizer
        digests = job.conversation.media_digests if job.conversation else []
        for index in range(job.n):
            tap, processors, sampling = _choice_setup(job, tokenizer, index)
            choice = Choice(request, index, tap, sampling, 0.0, 0.0, 0)
            session = service.pool.acquire(slot.model, job.prepared.keys, digests)
            for event in run_prompt(slot.model, slot.processor, job.prepared, sampling, session=session,
                                    cancel=stream.cancel_event, logits_processors=processors):
                if event.kind != "done":
                    self._push(choice, event)
                else:
                    for held in settle(choice.held, event, tap, tokenizer):
                        stream.push(EVENT, Output(held, index))
                    stop = stop_sequence(event, tap, tokenizer, sampling)
                    service.finished.append(event.stats)
                    stream.push(EVENT, Output(event, index, stop_sequence=stop))
                yield
        self._finish(request)

    def _row(self, slot: ModelSlot, request: Request, choice: int, logits, started: float, prompt_done: float,
             reused: int) -> BatchRow:
        job = request.job
        tokenizer = slot.processor.tokenizer
        tap, processors, sampling = _choice_setup(job, tokenizer, choice)
        stats = GenerationStats(prompt_tokens=len(job.prepared.tokens), cached_tokens=reused)
        row = BatchRow(TokenPicker(sampling, processors),
                       ReplyDecoder(tokenizer, job.prepared, sampling, stats),
                       history=job.prepared.tokens, max_tokens=sampling.max_tokens,
                       temperature=sampling.temperature, seed=sampling.seed,
                       cancel=request.stream.cancel_event,
                       owner=Choice(request, choice, tap, sampling, started, prompt_done, reused))
        row.start(logits)
        return row

    def _decode(self) -> None:
        self.most_rows = max(self.most_rows, len(self._batch))
        stepped = self._batch.step()
        ended = []
        for row, token in stepped:
            if row.error is None:
                for event in row.feed(token):
                    self._push(row.owner, event)
            if row.ended:
                ended.append(row)
                if row.error is None and row.owner.index == 0:
                    self._hand_back(row)
        self._batch.remove(ended)
        for row in ended:
            if row.error is not None:
                self._fail(row.owner.request, row.error)
            else:
                self._close(row)

    def _hand_back(self, row: BatchRow) -> None:
        """Choice 0's reply into the session its prompt was read in, unless a request is reading into it."""
        request = row.owner.request
        reading = self._joining[0].session if self._joining is not None else None
        if request.session is None or request.session is reading:
            return
        self.service.pool.hand_back(request.session, request.job.prepared.keys, row.reply,
                                    lambda cache: self._batch.copy_reply(row, cache))

    def _push(self, choice: Choice, event: GenerationEvent) -> None:
        if event.kind == "tool_call" and choice.tap.call_is_open:
            choice.held.append(event)
            return
        entries = choice.tap.take_logprobs()
        entries = entries if event.kind == "answer" else []
        choice.request.stream.push(EVENT, Output(event, choice.index, entries))

    def _close(self, row: BatchRow) -> None:
        """A row ended: its last events, its figures, and the request's end after its last row."""
        choice, request = row.owner, row.owner.request
        if request.done:
            return
        for event in row.decoder.close():
            self._push(choice, event)
        ended = time.perf_counter()
        done = row.decoder.time(choice.started, choice.prompt_done, row.first_token_at or ended, ended,
                                choice.reused)
        tokenizer = self._batch_slot.processor.tokenizer
        for held in settle(choice.held, done, choice.tap, tokenizer):
            request.stream.push(EVENT, Output(held, choice.index))
        stop = stop_sequence(done, choice.tap, tokenizer, choice.sampling)
        self.service.finished.append(done.stats)
        request.stream.push(EVENT, Output(done, choice.index, stop_sequence=stop))
        request.rows_left -= 1
        if request.rows_left <= 0:
            self._finish(request)

    def _fail(self, request: Request, error: BaseException) -> None:
        """End a request with its error (as an APIError), taking its other rows out of the batch."""
        if request.done:
            return
        if self._batch is not None:
            self._batch.remove([row for row in self._batch.rows if row.owner.request is request])
        request.stream.push(ERROR, as_api_error(error))
        self._finish(request)

    def _fail_all(self, error: APIError) -> None:
        requests = []
        if self._joining is not None:
            requests.append(self._joining[0])
            self._joining = None
        if self._batch is not None:
            requests += [row.owner.request for row in self._batch.rows]
            self._batch = None
        if self._solo is not None:
            requests.append(self._solo[0])
            self._solo[1].close()
            self._solo = None
        for request in {id(r): r for r in requests}.values():
            self._fail(request, error)

    def _finish(self, request: Request) -> None:
        if request.done:
            return
        request.done = True
        request.job.media.cleanup()
        if request.started:  # it was read: its length tells the next 429 how long to wait
            self.service._durations.append(time.monotonic() - request.started)
        self.service.library.release()
        request.stream.push(END)


def _choice_setup(job, tokenizer, index: int) -> tuple[TokenTap, list, SamplingSettings]:
    """Choice `index` of a request: its token tap (logprobs, tool-call bounds), its logits processors with the
    tap last, and its sampling (a seeded request's later choices draw from seed + index)."""
    tap = TokenTap(top=job.logprobs, describe=lambda token: token_piece(tokenizer, token),
                   call_open=tokenizer.token_id("<|tool_call>"), call_close=tokenizer.token_id("<tool_call|>"))
    processors = (job.processors[index] if index < len(job.processors) else []) + [tap]
    sampling = job.sampling
    if index and sampling.seed is not None:
        sampling = replace(sampling, seed=sampling.seed + index)
    return tap, processors, sampling


def as_api_error(error: BaseException) -> APIError:
    """What the client is told about a failure of its request."""
    if isinstance(error, APIError):
        return error
    if isinstance(error, PeerLostError):  # the model is split across Macs and one of them is gone
        return GroupDegraded(str(error))
    if isinstance(error, (GenerationError, ValueError)):  # the chat format's, attachments', MLX's complaints
        return BadRequest(str(error))
    if isinstance(error, MemoryError):
        return ServerError("out of memory: load a smaller model or send a shorter conversation")
    log.error("generation failed", exc_info=error)
    return ServerError(f"generation failed: {type(error).__name__}: {error}")
