"""A batched reply goes back into its conversation's cache, exactly as decoding it alone would have left it.

The tiny random Gemma 4 with the real tokenizer (sliding window 16), float32, greedy. Each row's prompt is
read into its own `ChatSession` as the server does, the rows decode together (one joins the running batch
later, so rows are padded differently), and as each ends `DecodeBatch.copy_reply` puts its reply into that
session; the session's tokens and every layer's keys and values must then equal what `run_prompt` leaves
on a session of its own. A variant with a KV-shared layer (which has no cache) is checked too.
"""

from __future__ import annotations

import mlx.core as mx
import pytest

from gemma4_mac.batch import BatchRow, DecodeBatch
from gemma4_mac.generate import GenerationStats, ReplyDecoder, SamplingSettings, TokenPicker, \
    prepare_prompt, run_prompt
from gemma4_mac.server.sessions import SessionPool
from gemma4_mac.session import ChatSession
from mlx_model.cache import SlidingKVCache

WINDOW = 16
SHORT = "Hi"  # its prompt is under the window: the ring wraps while the reply is decoded
LONG = "Tell me about the sea and the ships that sail on it, please."  # wrapped before the reply starts


@pytest.fixture(scope="module")
def loaded(tiny_chat_model_dir):
    from mlx_model import load

    return load(tiny_chat_model_dir)


@pytest.fixture(scope="module")
def shared_kv_model(loaded):
    """The tiny model with a fourth layer that reads the keys and values of the last sliding layer."""
    from mlx.utils import tree_flatten

    from mlx_model.model import Model, ModelConfig
    from tests.tiny_chat_model import TINY_CHAT_CONFIG

    config = dict(TINY_CHAT_CONFIG, num_hidden_layers=4, num_kv_shared_layers=1,
                  layer_types=["sliding_attention", "sliding_attention", "full_attention",
                               "sliding_attention"])
    mx.random.seed(1)
    model = Model(ModelConfig.from_dict(config))
    model.load_weights([(k, 0.05 * mx.random.normal(v.shape)) for k, v in tree_flatten(model.parameters())])
    mx.eval(model.parameters())
    assert len(model.make_cache()) == 3  # the shared layer has no cache of its own
    return model


def greedy(max_tokens: int) -> SamplingSettings:
    return SamplingSettings(temperature=0.0, max_tokens=max_tokens, draft="off")


def alone(model, processor, text: str, max_tokens: int) -> ChatSession:
    """The session `run_prompt` leaves after answering `text` on its own."""
    session = ChatSession(model)
    prepared = prepare_prompt(processor, [{"role": "user", "content": text}])
    list(run_prompt(model, processor, prepared, greedy(max_tokens), session=session))
    return session


def read(model, processor, pool: SessionPool, text: str,
         max_tokens: int) -> tuple[BatchRow, ChatSession, list]:
    """A row whose prompt was read into the session the pool gives it, as the server's scheduler does."""
    prepared = prepare_prompt(processor, [{"role": "user", "content": text}])
    session = pool.acquire(model, prepared.keys)
    logits, _ = session.read_prompt(prepared)
    sampling = greedy(max_tokens)
    decoder = ReplyDecoder(processor.tokenizer, prepared, sampling, GenerationStats())
    row = BatchRow(TokenPicker(sampling), decoder, history=prepared.tokens, max_tokens=max_tokens,
                   temperature=0.0, seed=None)
    row.start(logits)
    return row, session, prepared.keys


def step(batch: DecodeBatch) -> list[BatchRow]:
    """One decode step; the rows that ended."""
    ended = []
    for row, token in batch.step():
        row.feed(token)
        if row.ended:
            ended.append(row)
    return ended


def decode_and_hand_back(model, processor, requests: list[tuple[str, int]], join_after: int) -> list:
    """Decode the requests together (the last joins after `join_after` steps), handing each reply back to its
    pooled session as it ends; returns the sessions."""
    pool = SessionPool(len(requests))
    rows = [read(model, processor, pool, text, n) for text, n in requests]
    assert len({id(session) for _, session, _ in rows}) == len(rows)  # other conversations: their own caches
    batch = DecodeBatch(model)
    batch.add([r for r, _, _ in rows[:-1]], [s.cache for _, s, _ in rows[:-1]])
    steps = 0
    while len(batch) or steps <= join_after:
        if steps == join_after:
            batch.add([rows[-1][0]], [rows[-1][1].cache])
        ended = step(batch)
        for row in ended:
            _, session, keys = next(r for r in rows if r[0] is row)
            copy = lambda cache, row=row: batch.copy_reply(row, cache)  # noqa: E731
            assert pool.hand_back(session, keys, row.reply, copy)
        batch.remove(ended)
        steps += 1
    return [session for _, session, _ in rows]


def assert_same_cache(batched: ChatSession, single: ChatSession) -> None:
    assert batched.tokens == single.tokens
    points = [[p.n_tokens for p in session.restore_points][-2:] for session in (batched, single)]
    assert points[0] == points[1]  # after the prompt and after the reply
    for ours, theirs in zip(batched.cache, single.cache, strict=True):
        assert type(ours) is type(theirs) and ours.offset == theirs.offset
        (k, v), (k_ref, v_ref) = ours.held(), theirs.held()
        assert k.shape == k_ref.shape
        assert mx.allclose(k, k_ref, atol=1e-5).item() and mx.allclose(v, v_ref, atol=1e-5).item()
        if isinstance(ours, SlidingKVCache):  # the ring's slots too, not just its order: decoding goes on
            kept = min(ours.offset, WINDOW)
            assert mx.allclose(ours.keys[:, :, :kept], theirs.keys[:, :, :kept], atol=1e-5).item()


@pytest.mark.parametrize("variant", ["tiny", "kv-shared"])
def test_a_batched_reply_handed_back_leaves_the_cache_run_prompt_leaves(loaded, shared_kv_model, variant):
    model, processor = loaded
    if variant == "kv-shared":
        model = shared_kv_model
    requests = [(LONG, 9), (SHORT, 14)]
    prompt_lengths = [len(prepare_prompt(processor, [{"role": "user", "content": text}]).tokens)
                      for text, _ in requests]
    assert prompt_lengths[0] > WINDOW > prompt_lengths[1] and prompt_lengths[1] + 14 > WINDOW
    sessions = decode_and_hand_back(model, processor, requests, join_after=3)
    for session, (text, n), length in zip(sessions, requests, prompt_lengths):
        reference = alone(model, processor, text, n)
        assert len(reference.tokens) == length + n  # every reply ran to max_tokens: the ring wrapped in both
        assert_same_cache(session, reference)


def test_a_session_that_holds_another_prompt_now_is_not_written(loaded):
    model, processor = loaded
    pool = SessionPool(1)
    row, session, keys = read(model, processor, pool, SHORT, 4)
    batch = DecodeBatch(model)
    batch.add([row], [session.cache])
    while not step(batch):
        pass
    other = prepare_prompt(processor, [{"role": "user", "content": LONG}])
    assert pool.acquire(model, other.keys) is session  # the pool is full: reacquired by another request
    session.read_prompt(other)
    before = (list(session.tokens), [c.offset for c in session.cache])
    assert not pool.hand_back(session, keys, row.reply, lambda cache: batch.copy_reply(row, cache))
    assert not batch.copy_reply(row, session.cache)  # and the row does not line up with that cache anyway
    assert (session.tokens, [c.offset for c in session.cache]) == before
    assert not pool.hand_back(ChatSession(model), keys, row.reply, lambda cache: True)  # not the pool's
