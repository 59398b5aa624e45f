"""The config of Gemma 4's MTP drafter ("assistant"): hub `config.json` keys in, unknown keys dropped.

transformers 5.23: configuration_gemma4_assistant.py (`gemma4_assistant`, drafters of E2B/E4B/26B/31B)
and configuration_gemma4_unified_assistant.py (`gemma4_unified_assistant`, the 12B's). Plain Python (no MLX).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .config import (ModelConfigError, TextConfig, _check_at_least, _json_kind, check_value,
                     dataclass_from_dict)

ASSISTANT_TYPES = {"gemma4_assistant": "gemma4_text", "gemma4_unified_assistant": "gemma4_unified_text"}


@dataclass
class AssistantConfig:
    """A drafter: a small Gemma 4 decoder whose every layer reads the target's keys and values."""

    model_type: str
    text_config: TextConfig
    backbone_hidden_size: int = 1536
    use_ordered_embeddings: bool = False
    num_centroids: int = 2048
    centroid_intermediate_top_k: int = 32
    tie_word_embeddings: bool = True
    quantization: Optional[dict] = None
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def tokens_per_centroid(self) -> int:
        return self.text_config.vocab_size // self.num_centroids

    @classmethod
    def from_dict(cls, params: Any) -> "AssistantConfig":
        """Parse a drafter's config.json dict; a value the drafter cannot use is a ModelConfigError naming
        the key."""
        if not isinstance(params, dict):
            raise ModelConfigError(f"the config must be an object ({{...}}), not {_json_kind(params)}.")
        model_type = params.get("model_type")
        if model_type not in ASSISTANT_TYPES:
            raise ModelConfigError(f"model_type {model_type!r} is not a Gemma 4 drafter (expected one of "
                                   f"{', '.join(ASSISTANT_TYPES)}).")
        text_params = dict(check_value("text_config", params.get("text_config") or {}, dict))
        text_params.setdefault("model_type", ASSISTANT_TYPES[model_type])
        _refuse_unsupported(text_params)
        # configuration_gemma4_assistant.py:79: every layer reads the target's KV. TextConfig refuses that
        # (a target needs a layer that computes KV), so it is checked without sharing and marked after.
        text_params["num_kv_shared_layers"] = 0
        text_params.setdefault("hidden_size_per_layer_input", 0)
        text_params.setdefault("vocab_size_per_layer_input", 0)
        text = TextConfig.from_dict(text_params, "text_config")
        text.num_kv_shared_layers = text.num_hidden_layers
        top = dataclass_from_dict(_TopLevel, params)
        config = cls(model_type=model_type, text_config=text, backbone_hidden_size=top.backbone_hidden_size,
                     use_ordered_embeddings=top.use_ordered_embeddings, num_centroids=top.num_centroids,
                     centroid_intermediate_top_k=top.centroid_intermediate_top_k,
                     tie_word_embeddings=top.tie_word_embeddings,
                     quantization=check_value("quantization", params.get("quantization"), Optional[dict]),
                     raw=params)
        config._check()
        return config

    def _check(self) -> None:
        _check_at_least("", self, 1, ("backbone_hidden_size", "num_centroids", "centroid_intermediate_top_k"))
        if self.use_ordered_embeddings:
            if self.text_config.vocab_size % self.num_centroids:
                raise ModelConfigError(f"text_config.vocab_size {self.text_config.vocab_size} is not a "
                                       f"multiple of num_centroids {self.num_centroids}.")
            if self.centroid_intermediate_top_k > self.num_centroids:
                raise ModelConfigError(f"centroid_intermediate_top_k {self.centroid_intermediate_top_k} "
                                       f"exceeds num_centroids {self.num_centroids}.")

    def check_target(self, target: TextConfig) -> None:
        """Raise ModelConfigError unless this drafter reads `target`'s caches: same vocabulary, hidden size
        equal to backbone_hidden_size, and per layer type the target's head size and KV heads."""
        if target.vocab_size != self.text_config.vocab_size:
            raise ModelConfigError(f"the drafter's vocabulary ({self.text_config.vocab_size}) differs from "
                                   f"the model's ({target.vocab_size}).")
        if target.hidden_size != self.backbone_hidden_size:
            raise ModelConfigError(f"the drafter was trained for a model of hidden size "
                                   f"{self.backbone_hidden_size}, this model has {target.hidden_size}.")
        theirs = _kv_shape_per_type(target, range(target.first_shared_layer))
        ours = _kv_shape_per_type(self.text_config, range(self.text_config.num_hidden_layers))
        for kind, (head_dim, _) in ours.items():
            if kind not in theirs or theirs[kind][0] != head_dim:
                raise ModelConfigError(f"the drafter's {kind} layers expect keys of size {head_dim}, the "
                                       f"model's are {theirs.get(kind, (None,))[0]}.")
            if self.text_config.num_attention_heads % theirs[kind][1]:
                raise ModelConfigError(f"the drafter's {self.text_config.num_attention_heads} query heads do "
                                       f"not divide over the model's {theirs[kind][1]} {kind} KV heads.")


@dataclass
class _TopLevel:
    backbone_hidden_size: int = 1536
    use_ordered_embeddings: bool = False
    num_centroids: int = 2048
    centroid_intermediate_top_k: int = 32
    tie_word_embeddings: bool = True


def _refuse_unsupported(text: dict) -> None:
    """configuration_gemma4_assistant.py:82-98: drafters have no PLE, no experts and no double-wide MLP."""
    for key, allowed in (("hidden_size_per_layer_input", (0, None)),
                         ("vocab_size_per_layer_input", (0, None)),
                         ("enable_moe_block", (False, None)), ("use_double_wide_mlp", (False, None))):
        if text.get(key) not in allowed:
            raise ModelConfigError(f"text_config.{key} is {text.get(key)!r}; a Gemma 4 drafter has none.")
    shared, layers = text.get("num_kv_shared_layers"), text.get("num_hidden_layers")
    if shared not in (None, 0, layers):
        raise ModelConfigError(f"text_config.num_kv_shared_layers is {shared}; every drafter layer reads the "
                               f"model's keys and values ({layers}).")


def _kv_shape_per_type(text: TextConfig, layers) -> dict[str, tuple[int, int]]:
    """(head size, KV heads) per layer type, from the last of `layers` of each type."""
    return {text.layer_types[i]: (text.layer_head_dims[i], text.layer_kv_heads[i]) for i in layers}


DRAFTER_FOLDER = "drafter"  # inside the model folder, where the converter puts a model's drafter


def recorded_drafter(folder, config: dict) -> Optional[Path]:
    """The drafter folder a model folder's config.json records (`"gemma4_mac": {"drafter": {"folder": ...}}`,
    written by `convert.drafter`), when it exists; None otherwise. Plain Python: the CLI and the model
    manager ask it cheaply."""
    section = config.get("gemma4_mac") if isinstance(config, dict) else None
    entry = section.get("drafter") if isinstance(section, dict) else None
    name = entry.get("folder") if isinstance(entry, dict) else None
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
        return None
    path = Path(folder) / name
    return path if (path / "config.json").is_file() else None
