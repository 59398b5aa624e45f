"""The memory planner counts exactly what our model and caches allocate."""

from __future__ import annotations

import numpy as np
import pytest
from mlx.utils import tree_flatten

import mlx.core as mx

from mlx_model import load_model
from mlx_model.config import TextConfig
from mlx_model.planner import (PREFILL_CHUNKS, VARIANT_CONFIGS, prefill_scratch_bytes, count_text_weights, format_table, kv_bytes, kv_bytes_per_token,
                               largest_context, variant_table)
from tests.reference_models import TINY_VOCAB, VARIANTS, build_gemma4


@pytest.mark.parametrize("name", list(VARIANTS))
def test_weight_count_and_kv_bytes_match_the_model(tmp_path, name):
    build_gemma4(name, tmp_path)
    model = load_model(tmp_path)
    params = sum(v.size for _, v in tree_flatten(model.parameters()))
    count = count_text_weights(model.config.text_config)
    assert count.quantizable + count.router + count.floats == params

    context = 3 * 256 + 17  # a few growth steps of the full-attention cache, ring long wrapped
    cache = model.make_cache()
    model(mx.array(np.random.default_rng(0).integers(3, TINY_VOCAB, (1, context))), cache=cache)
    mx.eval([c.state for c in cache])
    measured = sum(c.nbytes for c in cache)
    assert measured == kv_bytes(model.config.text_config, context, float_bytes=4)


def test_published_kv_per_token_figures():
    per_token = {n: kv_bytes_per_token(TextConfig.from_dict(c)) for n, c in VARIANT_CONFIGS.items()}
    assert per_token == {"E2B": 6 * 1024, "E4B": 16 * 1024, "12B": 16 * 1024, "26B-A4B": 20 * 1024,
                         "31B": 80 * 1024}
    eight_bit = kv_bytes_per_token(TextConfig.from_dict(VARIANT_CONFIGS["31B"]), kv_bits=8)
    assert eight_bit <= 0.55 * per_token["31B"]


def test_largest_context_fits_and_grows_with_memory():
    config = TextConfig.from_dict({**VARIANT_CONFIGS["E2B"], "max_position_embeddings": 131072})
    small = largest_context(config, 5 * 1024 ** 3)  # the 4-bit recipe's E2B text weights are 3.8 GiB
    large = largest_context(config, 32 * 1024 ** 3)
    assert 0 < small < large <= 131072
    assert largest_context(config, 1 * 1024 ** 3) == 0  # weights alone do not fit


def test_variant_table_prints_every_row():
    rows = variant_table()
    assert len(rows) == len(VARIANT_CONFIGS) * 4 * 3
    text = format_table(rows)
    assert "31B" in text and "256K" in text


def test_generation_takes_the_planners_chunk_for_the_memory_it_has():
    from types import SimpleNamespace

    from gemma4_mac.prefill import planned_chunk_size

    config = TextConfig.from_dict({**VARIANT_CONFIGS["31B"], "max_position_embeddings": 262_144})
    model = SimpleNamespace(config=SimpleNamespace(text_config=config))
    roomy = planned_chunk_size(model, 8192, available_bytes=64 << 30)
    tight = planned_chunk_size(model, 200_000, available_bytes=1 << 30)
    assert roomy == PREFILL_CHUNKS[0]  # past it prefill is no faster: plenty of memory buys no bigger chunk
    assert tight < roomy
    # the chunk chosen where memory is short is the largest whose scratch fits its share of free memory
    budget = (1 << 30) * 0.1
    assert tight == PREFILL_CHUNKS[-1] or prefill_scratch_bytes(config, tight, 200_000) <= budget \
        < prefill_scratch_bytes(config, 2 * tight, 200_000)


def test_block_attention_keeps_scratch_flat_in_the_context():
    """Past one tile, attention temporaries no longer grow with the context (only the running outputs do)."""
    config = TextConfig.from_dict({**VARIANT_CONFIGS["E4B"], "max_position_embeddings": 131_072})
    short, long = prefill_scratch_bytes(config, 512, 16_384), prefill_scratch_bytes(config, 512, 131_072)
    assert long == short
    assert prefill_scratch_bytes(config, 512, 16_384, kv_bits=8) < 1.2 * short
