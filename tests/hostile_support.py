"""Helpers for the hostile-input tests: a tiny complete model folder and JSON-aware config mutations."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from tests.fuzz import seeds
from tests.reference_models import write_tiny_tokenizer

TINY_CONFIG: dict[str, Any] = json.loads(seeds.config_json())


def complete_model(folder: Path, *, quantized: bool = True, config: dict | None = None) -> Path:
    """A tiny complete model folder: weights (4-bit, group 64, or float32), config.json, tokenizer,
    template."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    from mlx_model.model import Model, ModelConfig

    folder.mkdir(parents=True, exist_ok=True)
    config = dict(config or TINY_CONFIG)
    mx.random.seed(0)
    model = Model(ModelConfig.from_dict(config))
    if quantized:
        nn.quantize(model, group_size=64, bits=4)
        config["quantization"] = {"group_size": 64, "bits": 4, "mode": "affine"}
    mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (folder / "config.json").write_text(json.dumps(config))
    text = config.get("text_config", config)
    write_tiny_tokenizer(folder, text.get("vocab_size", 512))
    return folder


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**64, 2**64) | st.sampled_from([0, -1, 1, 3, 64, 2**31, 2**62])
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=5)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into a JSON object (nested objects included)."""
    found = []
    if isinstance(value, dict):
        for key, inner in value.items():
            found.append(prefix + (key,))
            found += _paths(inner, prefix + (key,))
    return found


def _nudged(draw, value: Any) -> Any:
    """A plausible wrong value of the same type: what a hand edit or another model's config gives."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return draw(st.sampled_from([value * 2, value // 2, value + 1, max(value - 1, 0), value * 3 // 2]))
    if isinstance(value, float):
        return value * draw(st.sampled_from([0.5, 2.0, 10.0]))
    return draw(JSON_VALUES)


@st.composite
def mutated_json(draw, document: dict) -> dict:
    """`document` with one to three keys nudged (same type, other value), replaced by any JSON value,
    dropped, or a list's item changed."""
    result = copy.deepcopy(document)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(result)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = result
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["nudge", "replace", "drop", "item"]))
        if action == "drop":
            del parent[path[-1]]
        elif action == "item" and isinstance(parent[path[-1]], list) and parent[path[-1]]:
            items = parent[path[-1]]
            items[draw(st.integers(0, len(items) - 1))] = draw(JSON_VALUES)
        elif action == "nudge":
            parent[path[-1]] = _nudged(draw, parent[path[-1]])
        else:
            parent[path[-1]] = draw(JSON_VALUES)
    return result
