"""Turn-to-turn cache reuse: after wrap-around and rewinds the cache still equals a full forward."""

from __future__ import annotations

import numpy as np
import pytest

import mlx.core as mx

from gemma4_mac.prefill import prefill
from gemma4_mac.session import ChatSession
from mlx_model import load_model
from tests.reference_models import TINY_VOCAB, WINDOW, build_gemma4


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("e2b")
    build_gemma4("e2b", path)
    return load_model(path)


def _ids(seed, n):
    return np.random.default_rng(seed).integers(3, TINY_VOCAB, size=n).tolist()


def _turn(model, session: ChatSession, prompt: list[int], boundary: int | None = None):
    """Feed a prompt the way generation does; return the last position's logits and tokens reused."""
    reused = session.prepare(prompt)
    if boundary is not None and reused < boundary:
        prefill(model, prompt[reused:boundary], session.cache, want_logits=False, on_chunk=session.append)
        session.mark()
    logits = prefill(model, prompt[len(session.tokens):], session.cache, on_chunk=session.append)
    session.mark()
    return np.array(logits), reused


def _full(model, prompt):
    return np.array(model(mx.array([prompt]))[:, -1, :])


def test_second_turn_reuses_everything_cached(model):
    session = ChatSession(model)
    first = _ids(0, 4 * WINDOW)
    _turn(model, session, first)
    answer = _ids(1, WINDOW + 3)  # pretend these were generated, token by token
    for token in answer:
        model(mx.array([[token]]), cache=session.cache)
        session.append([token])
    session.mark()
    second = first + answer + _ids(2, 2 * WINDOW)
    logits, reused = _turn(model, session, second)
    assert reused == len(first) + len(answer)
    np.testing.assert_allclose(logits, _full(model, second), atol=1e-4)


def test_rewind_past_a_wrapped_window_to_a_restore_point(model):
    """A thought stripped from history: the next prompt diverges right after the last prompt."""
    session = ChatSession(model)
    head, generation_prompt = _ids(3, 3 * WINDOW), _ids(4, 3)
    first = head + generation_prompt
    _turn(model, session, first, boundary=len(head))
    thought = _ids(5, 2 * WINDOW)  # wraps the sliding ring again
    for token in thought:
        model(mx.array([[token]]), cache=session.cache)
        session.append([token])
    session.mark()
    second = first + _ids(6, WINDOW + 1)
    logits, reused = _turn(model, session, second)
    assert reused == len(first)
    np.testing.assert_allclose(logits, _full(model, second), atol=1e-4)


def test_regenerate_rewinds_to_the_generation_prompt_boundary(model):
    session = ChatSession(model)
    head, generation_prompt = _ids(7, 3 * WINDOW + 2), _ids(8, 3)
    prompt = head + generation_prompt
    first_logits, _ = _turn(model, session, prompt, boundary=len(head))
    for token in _ids(9, WINDOW):
        model(mx.array([[token]]), cache=session.cache)
        session.append([token])
    session.mark()
    again, reused = _turn(model, session, prompt, boundary=len(head))
    assert reused == len(head)
    np.testing.assert_allclose(again, first_logits, atol=1e-5)


def test_unrelated_prompt_starts_over(model):
    session = ChatSession(model)
    _turn(model, session, _ids(10, 2 * WINDOW))
    other = _ids(11, 2 * WINDOW)
    logits, reused = _turn(model, session, other)
    assert reused == 0
    np.testing.assert_allclose(logits, _full(model, other), atol=1e-4)


def test_prefill_reserves_full_layer_caches_once_and_matches_a_full_forward(model):
    from mlx_model.cache import KVCache

    prompt = _ids(7, 5 * WINDOW + 3)
    cache = model.make_cache()
    logits = prefill(model, prompt, cache, chunk_size=WINDOW, reserve_after=40)
    full_caches = [c for c in cache if isinstance(c, KVCache)]
    assert full_caches and all(c.keys.shape[2] >= len(prompt) + 40 for c in full_caches)
    capacity = [c.keys.shape[2] for c in full_caches]
    token = int(mx.argmax(logits[0]).item())
    step = model(mx.array([[token]]), cache=cache)[0, -1]
    assert [c.keys.shape[2] for c in full_caches] == capacity  # the answer's first tokens did not grow it
    expected = _full(model, prompt + [token])[-1]
    assert np.abs(np.array(step) - expected).max() < 1e-4
