"""Document caches on disk: restored prefixes equal a full forward; damaged files are recomputed."""

from __future__ import annotations

import numpy as np
import pytest


from gemma4_mac import document_cache as dc
from gemma4_mac.document_cache import DocumentCacheStore, model_fingerprint
from gemma4_mac.prefill import prefill
from gemma4_mac.session import ChatSession
from mlx_model import load_model
from tests.reference_models import TINY_VOCAB, WINDOW


@pytest.fixture(scope="module")
def model_and_id(e4b_checkpoint_dir):
    return load_model(e4b_checkpoint_dir), model_fingerprint(e4b_checkpoint_dir)


@pytest.fixture(autouse=True)
def small_threshold(monkeypatch):
    monkeypatch.setattr(dc, "MIN_TOKENS_TO_SAVE", 2 * WINDOW)


def _doc(seed, n=5 * WINDOW + 3):
    return np.random.default_rng(seed).integers(3, TINY_VOCAB, n).tolist()


def _save(model, model_id, store, tokens, kv_bits=None):
    session = ChatSession(model)
    session.cache = model.make_cache(kv_bits=kv_bits, kv_group_size=32)
    prefill(model, tokens, session.cache, want_logits=False, on_chunk=session.append)
    return store.save(model_id, session.tokens, session.cache)


@pytest.mark.parametrize("kv_bits", [None, 8])
def test_restored_prefix_continues_like_a_full_forward(tmp_path, model_and_id, kv_bits):
    model, model_id = model_and_id
    store = DocumentCacheStore(tmp_path)
    doc = _doc(0)
    assert _save(model, model_id, store, doc, kv_bits) is not None
    prompt = doc + _doc(1, WINDOW + 2)
    session = ChatSession(model)
    session.cache = model.make_cache(kv_bits=kv_bits, kv_group_size=32)
    assert session.load_saved_prefix(store, model_id, prompt) == len(doc)
    assert session.prepare(prompt) == len(doc)
    logits = prefill(model, prompt[len(doc):], session.cache)
    fresh = model.make_cache(kv_bits=kv_bits, kv_group_size=32)
    expected = prefill(model, prompt, fresh)
    np.testing.assert_allclose(np.array(logits), np.array(expected), atol=1e-4)


def test_foreign_model_and_other_prefix_are_not_matched(tmp_path, model_and_id):
    model, model_id = model_and_id
    store = DocumentCacheStore(tmp_path)
    doc = _doc(2)
    _save(model, model_id, store, doc)
    assert store.lookup("another-model", doc + [5]) is None
    assert store.lookup(model_id, _doc(3) + [5]) is None
    assert store.lookup(model_id, doc + [5]).n_tokens == len(doc)


def test_corrupted_file_is_rejected_deleted_and_recomputed(tmp_path, model_and_id):
    model, model_id = model_and_id
    store = DocumentCacheStore(tmp_path)
    doc = _doc(4)
    entry = _save(model, model_id, store, doc)
    data = bytearray(entry.data_path.read_bytes())
    data[-10] ^= 0xFF
    entry.data_path.write_bytes(bytes(data))
    session = ChatSession(model)
    assert session.load_saved_prefix(store, model_id, doc + [7]) == 0
    assert not entry.data_path.exists() and not entry.meta_path.exists()
    assert session.tokens == []


def test_least_recently_used_entries_are_evicted(tmp_path, model_and_id):
    model, model_id = model_and_id
    store = DocumentCacheStore(tmp_path)
    first = _save(model, model_id, store, _doc(5))
    size = first.data_path.stat().st_size
    store.max_bytes = int(2.5 * size)
    second = _save(model, model_id, store, _doc(6))
    store.load_into(first, ChatSession(model).cache)  # first is now the most recently used
    third = _save(model, model_id, store, _doc(7))
    assert first.data_path.exists() and third.data_path.exists()
    assert not second.data_path.exists()
