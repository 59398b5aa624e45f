"""Speculative decoding: draft k tokens, verify them in one forward of k+1, keep what the model agrees with.

Drafters: Gemma 4's MTP drafter (mlx_model/assistant.py) where the model folder has one, and prompt lookup
(gemma4_mac/draft_policy.py) for every model. The draft depth adapts (DepthPolicy) to the acceptance seen in
the conversation and to the forward costs measured for the loaded model; depth 0 is plain decoding,
pipelined exactly as `generate.generate_tokens`.

Output is unchanged: greedy answers are the target's argmax at every position; sampled answers use standard
speculative rejection sampling (accept a draft x with probability min(1, p(x)/q(x)), else sample from
max(0, p - q) renormalised; the bonus token from p), so every token is distributed as plain sampling would
draw it. The caches hold exactly the tokens yielded: rejected positions are rolled back after each verify
(full caches by offset; sliding rings that wrapped by their restore point plus the kept tokens' keys and
values, recorded during the verify), and so are accepted tokens the caller did not take (stop string, end of
turn, cancel) when it closes the generator.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Protocol, Sequence

import mlx.core as mx
from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p

from mlx_model.assistant import attached_drafter, draft_inputs
from mlx_model.cache import SlidingKVCache
from mlx_model.model import Model

from .draft_policy import UNSEEN, DepthPolicy, ForwardCosts, PromptLookup

DRAFT_MODES = ("auto", "mtp", "lookup", "off")
MTP, LOOKUP = "mtp", "lookup"
MAX_PROPOSAL = 8  # the most tokens one step drafts (DepthPolicy.max_depth)


class DraftModeError(ValueError):
    """An unknown draft mode was asked for; the message lists the valid ones."""


def check_mode(mode: str) -> str:
    if mode not in DRAFT_MODES:
        raise DraftModeError(f"draft must be one of {', '.join(DRAFT_MODES)}, not {mode!r}.")
    return mode


@dataclass
class SpeculationState:
    """What one conversation has learned: the depth policy, and the lookup index of its tokens."""

    policy: DepthPolicy = field(default_factory=DepthPolicy)
    lookup: Optional[PromptLookup] = None

    def lookup_for(self, tokens: Sequence[int]) -> PromptLookup:
        """The index over `tokens`, extending the last turn's when it is a prefix of them."""
        if self.lookup is None or not self.lookup.matches_prefix_of(tokens):
            self.lookup = PromptLookup()
        self.lookup.extend(tokens[len(self.lookup.tokens):])
        return self.lookup


def state_for(session, model) -> SpeculationState:
    """The conversation's SpeculationState, kept on its ChatSession: its own acceptance figures, and the
    model's forward costs on this machine (learned once per loaded model, shared by its conversations)."""
    if getattr(session, "speculation", None) is None:
        session.speculation = SpeculationState(policy=DepthPolicy(costs=model_costs(model)))
    return session.speculation


def model_costs(model) -> ForwardCosts:
    """The forward costs measured for `model` so far (a plain attribute beside it, outside its parameters)."""
    costs = getattr(model, "draft_costs", None)
    if not isinstance(costs, ForwardCosts):
        costs = ForwardCosts()
        model.draft_costs = costs
    return costs


def observes_only(processor) -> bool:
    """A logits processor that only watches the tokens and their logits (the server's logprobs tap): it
    returns the logits unchanged, so drafting can run beside it (`speculative_tokens(observers=...)`)."""
    return bool(getattr(processor, "observes_only", False))


def applicable(model, sampling, logits_processors) -> bool:
    """Whether this request can draft: a mode other than "off"; no logits processors that change the logits,
    nor a repetition penalty (a grammar's state follows each accepted token); not sampled with a seed (the
    same seed must give the same answer, and the depth follows timings, which moves the random stream); and
    our model (or a stand-in whose class sets `verifies_drafts`: its logits for a position must not depend on
    how many it gets). Other requests decode plainly."""
    mode = check_mode(getattr(sampling, "draft", "off"))
    penalised = sampling.repetition_penalty and sampling.repetition_penalty != 1.0
    seeded = sampling.seed is not None and sampling.temperature > 0
    changes_logits = any(not observes_only(p) for p in logits_processors or ())
    plain_only = changes_logits or penalised or seeded
    verifies = isinstance(model, Model) or getattr(type(model), "verifies_drafts", False)
    return mode != "off" and not plain_only and verifies


def target_kv(model, cache: list) -> dict[str, tuple]:
    """The keys and values a drafter attends to: the target's last cached layer of each type (for KV-sharing
    models, the layers the shared ones read: configuration_gemma4.py:247)."""
    text = model.config.text_config
    last = {kind: i for i, kind in enumerate(text.layer_types[: text.first_shared_layer])}
    return {kind: _visible(cache[i]) for kind, i in last.items()}


def _visible(layer_cache) -> tuple:
    n = layer_cache.offset
    if isinstance(layer_cache, SlidingKVCache):
        n = min(n, layer_cache.window)
    cut = lambda store: (tuple(x[..., :n, :] for x in store) if isinstance(store, tuple)  # noqa: E731
                         else store[..., :n, :])
    return cut(layer_cache.keys), cut(layer_cache.values)


class _Recorder:
    """Stands in for a sliding cache during a verify, keeping the new tokens' keys and values."""

    def __init__(self, cache):
        self.cache, self.new = cache, None

    def update_and_fetch(self, keys, values):
        self.new = (keys, values)
        return self.cache.update_and_fetch(keys, values)

    def update_and_view(self, keys, values):  # the model's path since block attention (mlx_model/language.py)
        self.new = (keys, values)
        return self.cache.update_and_view(keys, values)

    def __getattr__(self, name):
        return getattr(self.cache, name)


class _Rollback:
    """Restore points of one verify step: `keep(n)` leaves the caches holding the first n of its tokens."""

    def __init__(self, cache: list):
        self.cache = cache
        self.start = [c.offset for c in cache]
        self.saved = [c.checkpoint() if isinstance(c, SlidingKVCache) else None for c in cache]
        self.views = [_Recorder(c) if isinstance(c, SlidingKVCache) else c for c in cache]
        self.kept = 0

    def keep(self, n: int) -> None:
        self.kept = n
        for c, start, saved, view in zip(self.cache, self.start, self.saved, self.views):
            extra = c.offset - (start + n)
            if extra <= 0 or (c.is_trimmable() and c.trim(extra) == extra):
                continue  # full caches, and rings that did not wrap, rewind by offset
            c.restore(saved)
            if n:
                keys, values = view.new
                cut = lambda x: x[..., :n, :]  # noqa: E731
                c.update_and_fetch(cut(keys), cut(values))


class Target:
    """The model's next-token distribution exactly as `generate.generate_tokens` samples it."""

    def __init__(self, sampling):
        self.temperature = sampling.temperature
        top_p = sampling.top_p if sampling.top_p < 1.0 else 0.0
        self.filters: list[Callable] = []
        if 0 < top_p < 1.0:
            self.filters.append(lambda x: apply_top_p(x, top_p))
        if sampling.min_p:
            self.filters.append(lambda x: apply_min_p(x, sampling.min_p))
        if sampling.top_k:
            self.filters.append(lambda x: apply_top_k(x, sampling.top_k))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @staticmethod
    def logprobs(logits: mx.array) -> mx.array:
        return logits - mx.logsumexp(logits, axis=-1, keepdims=True)

    def probabilities(self, logprobs: mx.array) -> mx.array:
        """The distribution mlx-lm's sampler draws from (its filters, then the temperature)."""
        for method in self.filters:
            logprobs = method(logprobs)
        return mx.softmax(logprobs.astype(mx.float32) * (1.0 / self.temperature), axis=-1)

    def pick(self, logprobs: mx.array) -> mx.array:
        """A token as mlx-lm's sampler picks it (sample_utils.py: filters, then categorical at 1/temp)."""
        if self.greedy:
            return mx.argmax(logprobs, axis=-1)
        for method in self.filters:
            logprobs = method(logprobs)
        return mx.random.categorical(logprobs * (1.0 / self.temperature))


@dataclass
class Draft:
    """Proposed tokens (an int32 array [k]) and, for sampled drafts, each one's proposal distribution `probs`
    over candidates `ids` (None: over the whole vocabulary). Without `probs` the drafts were chosen
    deterministically (q is one at the drafted token)."""

    tokens: mx.array
    probs: Optional[list] = None
    ids: Optional[list] = None

    def __len__(self) -> int:
        return self.tokens.shape[0]


class Proposer(Protocol):
    kind: str

    def available(self, context: "Context") -> int:
        """How many tokens it can propose now (0: none)."""

    def propose(self, context: "Context", depth: int) -> Draft: ...


@dataclass
class Context:
    """What a proposer sees: the token about to be verified, the tokens before it, the target's state."""

    model: Any
    cache: list
    token: int
    hidden: Optional[mx.array]  # target's final hidden state at the position before `token` (MTP)
    lookup: PromptLookup
    target: Target


class LookupProposer:
    kind = LOOKUP

    def available(self, context: Context) -> int:
        return len(context.lookup.propose(MAX_PROPOSAL, pending=[context.token]))

    def propose(self, context: Context, depth: int) -> Draft:
        return Draft(mx.array(context.lookup.propose(depth, pending=[context.token]), dtype=mx.int32))


class MtpProposer:
    """Gemma 4's drafter: `depth` steps at the position of the token, reading the target's caches."""

    kind = MTP
    needs_hidden = True

    def __init__(self, drafter):
        self.drafter = drafter

    def available(self, context: Context) -> int:
        return MAX_PROPOSAL if context.hidden is not None else 0

    def propose(self, context: Context, depth: int) -> Draft:
        model, embed = context.model, context.model.language_model.embed
        kv, position = target_kv(model, context.cache), context.cache[0].offset
        token, state = mx.array([[context.token]]), context.hidden
        tokens, probs, ids = [], [], []
        for _ in range(depth):
            state, candidates, logits = self.drafter.step(draft_inputs(embed(token), state), kv, position)
            logits = logits[0, 0]
            if context.target.greedy:
                choice = mx.argmax(logits)
            else:
                p = mx.softmax(logits.astype(mx.float32) * (1.0 / context.target.temperature))
                choice = mx.random.categorical(mx.log(p))
                probs.append(p)
                ids.append(None if candidates is None else candidates[0, 0])
            token = (choice if candidates is None else candidates[0, 0][choice]).reshape(1, 1)
            tokens.append(token.reshape(1))
        return Draft(mx.concatenate(tokens).astype(mx.int32), probs or None, ids or None)


def _forward(model, ids: mx.array, cache: list, hidden: bool) -> tuple[mx.array, Optional[mx.array]]:
    """Logits [L, V] for token ids [L], and with `hidden` the final hidden states [1, L, H] (the MTP drafter's
    input), computed as `Model.__call__` does."""
    if hidden:
        states = model.language_model(ids[None], cache=cache)
        return model.logits(states)[0], states
    return model(ids[None], cache=cache)[0], None


def _accept_sampled(target: Target, logprobs: mx.array, draft: Draft) -> tuple[int, mx.array]:
    """Rejection sampling over the k drafts against rows 0..k-1 of `logprobs` ([k+1, V]); returns how many
    were accepted and the next token (the residual sample at the first rejection, or the bonus from row k)."""
    k = len(draft)
    p = target.probabilities(logprobs)
    p_drafted = p[mx.arange(k), draft.tokens]
    q_drafted = (mx.ones((k,)) if draft.probs is None else
                 mx.stack([q[_index(ids, t)] for q, ids, t in zip(draft.probs, draft.ids, draft.tokens)]))
    accepted = (mx.random.uniform(shape=(k,)) * q_drafted < p_drafted).tolist()
    n = accepted.index(False) if False in accepted else k
    if n == k:
        return n, mx.random.categorical(mx.log(p[k]))
    q = mx.zeros_like(p[n])
    if draft.probs is None:
        q[draft.tokens[n]] = 1.0
    elif draft.ids[n] is None:
        q = draft.probs[n]
    else:
        q[draft.ids[n]] = draft.probs[n]
    residual = mx.maximum(p[n] - q, 0.0)
    residual = mx.where(residual.sum() > 0, residual, p[n])
    return n, mx.random.categorical(mx.log(residual))


def _index(ids: Optional[mx.array], token: mx.array) -> mx.array:
    return token if ids is None else mx.argmax(ids == token)


def speculative_tokens(model, first_logits: mx.array, session, sampling, step_type, *, history: Sequence[int],
                       cancel: Optional[threading.Event] = None, stats=None, media: Sequence = (),
                       proposers: Optional[list] = None, fixed_depth: Optional[int] = None,
                       observers: Sequence[Callable] = ()) -> Iterator[Any]:
    """Like `generate.generate_tokens` (every yielded `step_type(token, logprobs)` is in the session's cache),
    drafting per `sampling.draft` ("auto": the MTP drafter and prompt lookup, whichever pays; "mtp"; "lookup")
    at the depth the conversation's policy chooses, or `fixed_depth`. `proposers` replaces the drafters
    (benchmarks: an oracle, a random one). `stats` (GenerationStats) counts drafted and accepted tokens and
    the model's forwards. `observers` (processors that only watch, see `observes_only`) are called as
    `generate_tokens` calls its processors: first (prompt, first logits), then before each token is yielded
    (history through it, the logits of the token after it)."""
    if sampling.seed is not None:
        mx.random.seed(sampling.seed)
    decoder = _Decoder(model, session, sampling, stats, history, media, proposers)
    logprobs = decoder.target.logprobs(first_logits)
    token, hidden = decoder.target.pick(logprobs)[0], None
    watch = _Watch(observers, history, logprobs)
    produced, clock = 0, _Clock(decoder.policy)
    try:
        while produced < sampling.max_tokens:
            room = sampling.max_tokens - produced
            kind, depth = "", 0
            if not decoder.plain_ahead(room, fixed_depth):
                context = decoder.context(int(token.item()), hidden)
                kind, depth = decoder.depth(context, room, fixed_depth)
            if depth == 0:  # plain, pipelined: the next token is computed while the caller takes this one
                next_token, next_logprobs, hidden = decoder.plain_step(token)
                value = int(token.item())
                decoder.lookup.extend([value])
                watch.token(value, next_logprobs)
                clock.plain_token()
                with clock.outside():
                    yield step_type(value, logprobs)
                produced += 1
                token, logprobs = next_token, next_logprobs
            else:
                clock.start()
                kept, rows, token, hidden, drafted = decoder.verify_step(context, kind, depth)
                decoder.policy.record(kind, drafted, len(kept) - 1, clock.elapsed())
                for taken, kept_token in enumerate(kept, start=1):
                    decoder.taken = taken  # once yielded, the caller has it (even if it stops right there)
                    # the row a token was drawn from: the step's input token's came before the verify
                    drawn_from = logprobs if taken == 1 else rows[taken - 2:taken - 1]
                    watch.token(kept_token, rows[taken - 1:taken])
                    with clock.outside():
                        yield step_type(kept_token, drawn_from)
                    produced += 1
                    if cancel is not None and cancel.is_set():
                        return
                decoder.finish_step()
                logprobs = rows[len(kept) - 1:len(kept)]
            if cancel is not None and cancel.is_set():
                return
    finally:
        decoder.finish_step()  # the caller stopped inside a step: forget the tokens it did not take


class _Watch:
    """Calls the observers with the history so far and the logits that follow it, as plain decoding would."""

    def __init__(self, observers: Sequence[Callable], history: Sequence[int], first_logprobs: mx.array):
        self.observers, self.seen = list(observers), list(history) if observers else []
        self._call(first_logprobs)

    def token(self, token: int, next_logprobs: mx.array) -> None:
        if self.observers:
            self.seen.append(token)
            self._call(next_logprobs)

    def _call(self, logprobs: mx.array) -> None:
        for observe in self.observers:
            observe(mx.array(self.seen, dtype=mx.int32), logprobs)


class _Clock:
    """Step timings without the time the caller spends between our yields. A plain step's cost is the time
    between two plain tokens in a row (they overlap with the caller, as pipelined decoding does)."""

    def __init__(self, policy: DepthPolicy):
        self.policy = policy
        self.started = self.away = self.away_at_start = 0.0
        self.last_plain: Optional[tuple] = None  # (time, away time then) when the last plain token was ready

    def start(self) -> None:
        self.started, self.away_at_start = time.perf_counter(), self.away
        self.last_plain = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.started - (self.away - self.away_at_start)

    def plain_token(self) -> None:
        now = time.perf_counter()
        if self.last_plain is not None:
            then, away = self.last_plain
            self.policy.record("", 0, 0, now - then - (self.away - away))
        self.last_plain = (now, self.away)

    class _Away:
        def __init__(self, clock):
            self.clock = clock

        def __enter__(self):
            self.tick = time.perf_counter()

        def __exit__(self, *exc):
            self.clock.away += time.perf_counter() - self.tick

    def outside(self) -> "_Clock._Away":
        return _Clock._Away(self)


class _Decoder:
    """One answer's decoding state: caches, drafters, the lookup index, the step in progress."""

    def __init__(self, model, session, sampling, stats, history, media, proposers):
        state = state_for(session, model)
        self.model, self.cache, self.stats = model, session.cache, stats
        self.target, self.policy = Target(sampling), state.policy
        self.proposers = proposers if proposers is not None else _proposers(model, check_mode(sampling.draft))
        self.lookup = state.lookup_for(_lookup_tokens(history, media))
        self.needs_hidden = any(getattr(p, "needs_hidden", False) for p in self.proposers)
        self.rollback: Optional[_Rollback] = None
        self.taken = 0

    def context(self, token: int, hidden) -> Context:
        return Context(self.model, self.cache, token, hidden, self.lookup, self.target)

    def plain_ahead(self, room: int, fixed: Optional[int]) -> bool:
        """Whether the next step is plain before the token is even known (nothing could pay)."""
        if not self.proposers or room < 2:
            return True
        if fixed is not None:
            return fixed == 0
        return self.policy.plain_ahead([p.kind for p in self.proposers], room)

    def depth(self, context: Context, room: int, fixed: Optional[int]) -> tuple[str, int]:
        available = {p.kind: p.available(context) for p in self.proposers}
        available = {kind: most for kind, most in available.items() if most}
        if fixed is None:
            return self.policy.choose(available, room)
        kind = next(iter(available), "")
        return kind, max(0, min(fixed, available.get(kind, 0), room - 1))

    def plain_step(self, token: mx.array):
        """Feed the token (possibly still being computed); returns the next token and its logprobs (being
        computed) and the final hidden state at the token."""
        ids = token.reshape(1).astype(mx.int32)
        logits, hidden = _forward(self.model, ids, self.cache, self.needs_hidden)
        logprobs = self.target.logprobs(logits[-1:])
        next_token = self.target.pick(logprobs)[0]
        mx.async_eval(next_token, logprobs)
        self._count(0, 0)
        return next_token, logprobs, hidden[:, -1:] if hidden is not None else None

    def verify_step(self, context: Context, kind: str, depth: int):
        """Draft, verify in one forward, roll back the rejected; returns the kept tokens (the token and the
        accepted drafts, all now in the caches), their logprob rows, the next token, its hidden state and how
        many tokens were drafted."""
        draft = next(p for p in self.proposers if p.kind == kind).propose(context, depth)
        self.rollback, self.taken = _Rollback(self.cache), 0
        ids = mx.concatenate([mx.array([context.token], dtype=mx.int32), draft.tokens])
        logits, hidden = _forward(self.model, ids, self.rollback.views, self.needs_hidden)
        rows = self.target.logprobs(logits)
        drafted = draft.tokens.tolist()
        if self.target.greedy:
            picks = mx.argmax(rows, axis=-1).tolist()
            n = next((i for i, (d, t) in enumerate(zip(drafted, picks)) if d != t), len(drafted))
            token = mx.array(picks[n])
        else:
            n, token = _accept_sampled(self.target, rows, draft)
        self.rollback.keep(n + 1)
        mx.eval(token, rows)
        kept = [context.token] + drafted[:n]
        self.lookup.extend(kept)
        self._count(len(drafted), n)
        return kept, rows[: n + 1], token, hidden[:, n:n + 1] if hidden is not None else None, len(drafted)

    def finish_step(self) -> None:
        if self.rollback is not None:
            if self.taken < self.rollback.kept:
                self.rollback.keep(self.taken)
            self.rollback = None

    def _count(self, drafted: int, accepted: int) -> None:
        if self.stats is not None:
            self.stats.drafted_tokens += drafted
            self.stats.accepted_tokens += accepted
            self.stats.decode_forwards += 1


def _proposers(model, mode: str) -> list:
    drafter = attached_drafter(model) if mode in ("auto", MTP) else None
    found = []
    if mode in ("auto", LOOKUP):
        found.append(LookupProposer())
    if drafter is not None and hasattr(model, "language_model"):
        found.append(MtpProposer(drafter))
    return found


def _lookup_tokens(history: Sequence[int], media: Sequence) -> list[int]:
    """The prompt with media placeholders blanked out (runs of identical soft-token ids are no quote)."""
    tokens = list(history)
    for block in media:
        tokens[block.start:block.start + block.length] = [UNSEEN] * block.length
    return tokens
