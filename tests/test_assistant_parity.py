"""Our MTP drafter (mlx_model/assistant.py) against transformers 5.23's `gemma4_assistant` and
`gemma4_unified_assistant` on tiny random checkpoints, float32 against transformers' float64: the centroid
head, the full-vocabulary head, attention over the target's sliding and full keys and values (inside and
beyond the window), and a drafter that reads a real target's caches after prefill."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest

from mlx_model import load_model
from mlx_model.assistant import Drafter, attached_drafter, draft_inputs
from mlx_model.assistant_config import AssistantConfig
from mlx_model.config import ModelConfigError
from mlx_model.loader import ModelLoadError, load_drafter
from tests.assistant_reference import build_drafter, reference_draft
from tests.reference_models import VARIANTS, WINDOW, build_gemma4

TOLERANCE = 1e-4
TARGET = dict(VARIANTS["e2b"])


def _shared_kv(rng, n_sliding: int, n_full: int, kv_heads: int = 1):
    """Random target keys/values per layer type: [1, kv_heads, n, head_dim]."""
    def pair(n, dim):
        return tuple(rng.standard_normal((1, kv_heads, n, dim)).astype(np.float32) for _ in range(2))
    return {"sliding_attention": pair(n_sliding, TARGET["head_dim"]),
            "full_attention": pair(n_full, TARGET["global_head_dim"])}


def _ours(drafter: Drafter, inputs: np.ndarray, kv: dict, position: int):
    shared = {k: (mx.array(v[0]), mx.array(v[1])) for k, v in kv.items()}
    state, logits = drafter(mx.array(inputs), shared, position)
    return np.array(state), np.array(logits)


@pytest.fixture(scope="module", params=["gemma4_assistant", "gemma4_unified_assistant"])
def drafter_pair(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    reference = build_drafter(folder, TARGET, unified=request.param.startswith("gemma4_unified"), seed=3)
    return reference, load_drafter(folder)


@pytest.mark.parametrize("n_sliding, n_full", [(5, 5), (WINDOW + 1, 20), (20, 30)])
def test_centroid_head_matches_transformers(drafter_pair, n_sliding, n_full):
    """Within the window and past it (only the last window+1 sliding entries count)."""
    queries = 1
    reference, drafter = drafter_pair
    rng = np.random.default_rng(n_sliding + n_full)
    inputs = rng.standard_normal((1, queries, 2 * TARGET["hidden_size"])).astype(np.float32)
    kv = _shared_kv(rng, n_sliding, n_full)
    expected_state, expected_logits = reference_draft(reference, inputs, kv, position=n_full)
    state, logits = _ours(drafter, inputs, kv, n_full)
    assert np.abs(state - expected_state).max() <= TOLERANCE
    assert np.abs(logits - expected_logits).max() <= TOLERANCE
    # the argmax among the chosen clusters is what a greedy draft proposes
    assert (logits.argmax(-1) == expected_logits.argmax(-1)).all()


def test_full_vocabulary_head_matches_transformers(tmp_path):
    reference = build_drafter(tmp_path, TARGET, ordered=False, seed=5)
    drafter = load_drafter(tmp_path)
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((1, 1, 2 * TARGET["hidden_size"])).astype(np.float32)
    kv = _shared_kv(rng, 12, 17)
    expected_state, expected_logits = reference_draft(reference, inputs, kv, position=17)
    state, logits = _ours(drafter, inputs, kv, 17)
    assert np.abs(state - expected_state).max() <= TOLERANCE
    assert np.abs(logits - expected_logits).max() <= TOLERANCE


def test_step_returns_only_the_chosen_clusters(drafter_pair):
    reference, drafter = drafter_pair
    rng = np.random.default_rng(9)
    inputs = mx.array(rng.standard_normal((1, 1, 2 * TARGET["hidden_size"])).astype(np.float32))
    kv = {k: (mx.array(v[0]), mx.array(v[1])) for k, v in _shared_kv(rng, 6, 6).items()}
    _, ids, logits = drafter.step(inputs, kv, 6)
    config = drafter.config
    candidates = config.centroid_intermediate_top_k * config.tokens_per_centroid
    assert ids.shape == logits.shape == (1, 1, candidates)
    _, full = drafter(inputs, kv, 6)
    assert int(ids[0, 0, int(mx.argmax(logits[0, 0]))]) == int(mx.argmax(full[0, 0]))


def test_drafter_reads_a_real_targets_caches(tmp_path):
    """After 20 tokens (the window of 8 wrapped), the drafter fed from our caches and our hidden state
    matches transformers fed from transformers' target as generation leaves it (the sliding layer returns 8
    entries)."""
    import torch

    target_dir, drafter_dir = tmp_path / "target", tmp_path / "drafter"
    torch_target = build_gemma4("e2b", target_dir)
    reference = build_drafter(drafter_dir, TARGET, seed=7)
    target, drafter = load_model(target_dir), load_drafter(drafter_dir)
    ids = np.random.default_rng(2).integers(3, TARGET["vocab_size"], 20)
    with torch.no_grad():  # as in generation: the prompt, then one decoded token (the window holds 8)
        torch_target = torch_target.double()
        past = torch_target(torch.as_tensor(ids[:-1])[None], use_cache=True).past_key_values
        out = torch_target(torch.as_tensor(ids[-1:])[None], past_key_values=past, output_hidden_states=True,
                           return_shared_kv_states=True, use_cache=True)
    kv = {k: (v[0].numpy(), v[1].numpy()) for k, v in out.shared_kv_states.items()}
    hidden = out.hidden_states[-1][:, -1:].numpy()
    next_token = int(out.logits[0, -1].argmax())
    embed = torch_target.get_input_embeddings()(torch.tensor([[next_token]])).detach().numpy()
    inputs = np.concatenate([embed, hidden], axis=-1)
    expected_state, expected_logits = reference_draft(reference, inputs, kv, position=len(ids))

    cache = target.make_cache()
    h = target.language_model(mx.array(ids)[None], cache=cache)
    from gemma4_mac.speculative import target_kv

    ours_inputs = draft_inputs(target.language_model.embed(mx.array([[next_token]])), h[:, -1:])
    state, logits = drafter(ours_inputs, target_kv(target, cache), len(ids))
    assert np.abs(np.array(state) - expected_state).max() <= TOLERANCE
    assert np.abs(np.array(logits) - expected_logits).max() <= TOLERANCE


def test_config_refuses_what_a_drafter_cannot_be():
    text = dict(vocab_size=512, hidden_size=32, num_hidden_layers=2, layer_types=["sliding_attention",
                                                                                  "full_attention"])
    AssistantConfig.from_dict({"model_type": "gemma4_assistant", "text_config": text, "num_centroids": 16})
    with pytest.raises(ModelConfigError, match="num_centroids"):
        AssistantConfig.from_dict({"model_type": "gemma4_assistant", "text_config": text, "num_centroids": 7,
                                   "use_ordered_embeddings": True})
    with pytest.raises(ModelConfigError, match="enable_moe_block"):
        AssistantConfig.from_dict({"model_type": "gemma4_assistant",
                                   "text_config": {**text, "enable_moe_block": True}})
    with pytest.raises(ModelConfigError, match="not a Gemma 4 drafter"):
        AssistantConfig.from_dict({"model_type": "gemma4", "text_config": text})


def test_a_drafter_for_another_model_is_refused_and_the_model_loads_without_it(tmp_path, tiny_chat_model_dir):
    import shutil

    from mlx_model import load

    folder = tmp_path / "model"
    shutil.copytree(tiny_chat_model_dir, folder)
    build_drafter(folder / "drafter", TARGET, seed=1)  # E2B-shaped: vocabulary and sizes differ
    config = json.loads((folder / "config.json").read_text())
    config["gemma4_mac"] = {"drafter": {"folder": "drafter"}}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="vocabulary"):
        load_drafter(folder / "drafter", load_model(folder).config)
    model, _ = load(folder)
    assert attached_drafter(model) is None
