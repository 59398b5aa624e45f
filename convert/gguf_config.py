"""Rebuild a Hugging Face config.json (and generation_config.json) from GGUF metadata.

Keys follow llama.cpp's writer (conversion/gemma.py Gemma3Model/Gemma4Model.set_gguf_parameters) and
its reader (src/models/gemma3.cpp, gemma4.cpp); what GGUF does not store is filled with the values
transformers and llama.cpp assume.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from .errors import UnsupportedSourceError
from .gguf_reader import GGUFFile

SUPPORTED_ARCHITECTURES = ("gemma3", "gemma4")
_BLOCK = re.compile(r"^blk\.(\d+)\.")


def _float(value: Any) -> float:
    """GGUF floats are float32: 9.999999974752427e-07 -> 1e-06."""
    return float(str(np.float32(value)))


def _required(gguf: GGUFFile, key: str) -> Any:
    value = gguf.field(key)
    if value is None:
        raise UnsupportedSourceError(f"{gguf.path}: metadata key {key.replace('{arch}', gguf.architecture)!r} "
                                     "is missing; the file was not written by llama.cpp's converter.")
    return value


def _per_layer(value: Any, num_layers: int) -> list:
    return list(value) if isinstance(value, list) else [value] * num_layers


def _layer_types(gguf: GGUFFile, num_layers: int, default_pattern: int) -> list[str]:
    pattern = gguf.field("{arch}.attention.sliding_window_pattern")
    if isinstance(pattern, list):
        return ["sliding_attention" if is_swa else "full_attention" for is_swa in pattern]
    period = int(pattern) if pattern else default_pattern
    # llama.cpp load_swa_pattern / HF: every period-th layer is full attention
    return ["sliding_attention" if (i + 1) % period else "full_attention" for i in range(num_layers)]


def _common(gguf: GGUFFile) -> dict[str, Any]:
    token_embd = gguf.tensors.get("token_embd.weight")
    tokens = gguf.field("tokenizer.ggml.tokens")
    vocab_size = token_embd.shape[0] if token_embd else len(tokens or [])
    config = {
        "hidden_size": int(_required(gguf, "{arch}.embedding_length")),
        "num_hidden_layers": int(_required(gguf, "{arch}.block_count")),
        "num_attention_heads": int(_required(gguf, "{arch}.attention.head_count")),
        "rms_norm_eps": _float(gguf.field("{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
        "max_position_embeddings": int(gguf.field("{arch}.context_length", 131072)),
        "vocab_size": int(vocab_size),
        "hidden_activation": "gelu_pytorch_tanh",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": "output.weight" not in gguf.tensors,
        "bos_token_id": int(gguf.field("tokenizer.ggml.bos_token_id", 2)),
        "eos_token_id": int(gguf.field("tokenizer.ggml.eos_token_id", 1)),
        "pad_token_id": int(gguf.field("tokenizer.ggml.padding_token_id", 0)),
        "use_cache": True,
    }
    softcap = gguf.field("{arch}.final_logit_softcapping")
    config["final_logit_softcapping"] = _float(softcap) if softcap else None
    return config


def gemma3_config(gguf: GGUFFile) -> dict[str, Any]:
    """A gemma3_text config.json (hub style: rope_theta/rope_local_base_freq, plus rope_parameters)."""
    config = _common(gguf)
    num_layers = config["num_hidden_layers"]
    head_dim = int(gguf.field("{arch}.attention.key_length", 256))
    sliding_window = gguf.field("{arch}.attention.sliding_window")
    # llama.cpp src/models/gemma3.cpp: the 27B (62 layers) scales queries by (hidden/heads)^-0.5, the others by head_dim
    query_pre_attn_scalar = (config["hidden_size"] // config["num_attention_heads"]) if num_layers == 62 else head_dim
    rope_theta = _float(gguf.field("{arch}.rope.freq_base", 1_000_000.0))
    rope_local = _float(gguf.field("{arch}.rope.freq_base_swa", 10_000.0))
    rope_scaling = None
    if str(gguf.field("{arch}.rope.scaling.type", "none")) == "linear":
        rope_scaling = {"rope_type": "linear", "factor": _float(gguf.field("{arch}.rope.scaling.factor", 1.0))}
    layer_types = (_layer_types(gguf, num_layers, 6) if sliding_window
                   else ["full_attention"] * num_layers)
    full_rope = {"rope_type": "default", "rope_theta": rope_theta, **(rope_scaling or {})}
    config.update({
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "intermediate_size": int(_required(gguf, "{arch}.feed_forward_length")),
        "num_key_value_heads": int(gguf.field("{arch}.attention.head_count_kv", config["num_attention_heads"])),
        "head_dim": head_dim,
        "query_pre_attn_scalar": query_pre_attn_scalar,
        "sliding_window": int(sliding_window) if sliding_window else None,
        "layer_types": layer_types,
        "attn_logit_softcapping": None,
        "rope_theta": rope_theta,
        "rope_local_base_freq": rope_local,
        "rope_scaling": rope_scaling,
        "rope_parameters": {"full_attention": full_rope,
                            "sliding_attention": {"rope_type": "default", "rope_theta": rope_local}},
        "use_bidirectional_attention": False,
    })
    return config


def _layers_with(gguf: GGUFFile, suffix: str) -> set[int]:
    found = set()
    for name in gguf.tensors:
        match = _BLOCK.match(name)
        if match and name.endswith(suffix):
            found.add(int(match.group(1)))
    return found


def _full_rotary_factor(gguf: GGUFFile, global_head_dim: int) -> float:
    # llama.cpp Gemma4Model.generate_extra_tensors: rope_freqs = [1.0]*n_rot + [1e30]*(head_dim/2 - n_rot)
    if "rope_freqs.weight" not in gguf.tensors:
        return 0.25
    factors = gguf.read_rows_1d("rope_freqs.weight")
    rotated = int(np.sum(factors < 1e10))
    return rotated * 2 / global_head_dim


def gemma4_config(gguf: GGUFFile) -> dict[str, Any]:
    """A gemma4_text config.json (text decoder only: GGUF keeps vision/audio in a separate mmproj file)."""
    config = _common(gguf)
    num_layers = config["num_hidden_layers"]
    layer_types = _layer_types(gguf, num_layers, 6)
    shared = int(gguf.field("{arch}.attention.shared_kv_layers", 0))
    head_dim = int(gguf.field("{arch}.attention.key_length_swa", 256))
    global_head_dim = int(gguf.field("{arch}.attention.key_length", 512))
    kv_heads = _per_layer(gguf.field("{arch}.attention.head_count_kv", config["num_attention_heads"]), num_layers)
    sliding_kv = [int(n) for n, t in zip(kv_heads, layer_types) if t == "sliding_attention"] or [int(kv_heads[0])]
    full_kv = [int(n) for n, t in zip(kv_heads, layer_types) if t == "full_attention"] or [int(kv_heads[0])]
    feed_forward = _per_layer(_required(gguf, "{arch}.feed_forward_length"), num_layers)
    intermediate = int(feed_forward[0])
    first_shared = num_layers - shared
    # llama.cpp writes a per-layer list with doubled width on the KV-shared layers when use_double_wide_mlp
    double_wide = shared > 0 and all(int(feed_forward[i]) == 2 * intermediate for i in range(first_shared, num_layers))
    # attention_k_eq_v: full-attention layers that own their KV have no attn_v (llama.cpp gemma4.cpp wv optional)
    own_full = [i for i, t in enumerate(layer_types) if t == "full_attention" and i < first_shared]
    with_v = _layers_with(gguf, ".attn_v.weight")
    k_eq_v = bool(gguf.tensors) and bool(own_full) and not any(i in with_v for i in own_full)
    ple_dim = int(gguf.field("{arch}.embedding_length_per_layer_input", 0) or 0)
    ple_table = gguf.tensors.get("per_layer_token_embd.weight")
    experts = int(gguf.field("{arch}.expert_count", 0) or 0)
    rope_theta_swa = _float(gguf.field("{arch}.rope.freq_base_swa", 10_000.0))
    swa_rot = int(gguf.field("{arch}.rope.dimension_count_swa", head_dim))
    sliding_rope: dict[str, Any] = {"rope_type": "default", "rope_theta": rope_theta_swa}
    if swa_rot != head_dim:
        sliding_rope["partial_rotary_factor"] = swa_rot / head_dim
    eos = config["eos_token_id"]
    config.update({
        "architectures": ["Gemma4ForCausalLM"],
        "model_type": "gemma4_text",
        # transformers modeling_gguf_pytorch_utils.py: GGUF keeps one eos; Gemma 4 stops on <eos>, <turn|>, <|tool_response>
        "eos_token_id": [eos, 106, 50] if eos == 1 else [eos],
        "intermediate_size": intermediate,
        "num_key_value_heads": sliding_kv[0],
        "num_global_key_value_heads": full_kv[0] if k_eq_v or full_kv[0] != sliding_kv[0] else None,
        "head_dim": head_dim,
        "global_head_dim": global_head_dim,
        "layer_types": layer_types,
        "sliding_window": int(gguf.field("{arch}.attention.sliding_window", 512)),
        "rope_parameters": {
            "sliding_attention": sliding_rope,
            "full_attention": {"rope_type": "proportional",
                               "partial_rotary_factor": _full_rotary_factor(gguf, global_head_dim),
                               "rope_theta": _float(gguf.field("{arch}.rope.freq_base", 1_000_000.0))},
        },
        "num_kv_shared_layers": shared,
        "use_double_wide_mlp": double_wide,
        "attention_k_eq_v": k_eq_v,
        "hidden_size_per_layer_input": ple_dim,
        "vocab_size_per_layer_input": int(ple_table.shape[0]) if ple_table else config["vocab_size"],
        "enable_moe_block": experts > 0,
        "num_experts": experts or None,
        "top_k_experts": int(gguf.field("{arch}.expert_used_count", 0)) or None,
        "moe_intermediate_size": int(_per_layer(gguf.field("{arch}.expert_feed_forward_length", 0), 1)[0]) or None,
        "use_bidirectional_attention": None,
    })
    return config


def config_from_gguf(gguf: GGUFFile) -> dict[str, Any]:
    """config.json for the model a GGUF file holds (values checked later by mlx_model.config, naming the
    key)."""
    build = {"gemma3": gemma3_config, "gemma4": gemma4_config}.get(gguf.architecture)
    if build is not None:
        try:
            return build(gguf)
        except (TypeError, ValueError, ZeroDivisionError, IndexError, OverflowError) as error:
            raise UnsupportedSourceError(
                f"{gguf.path}: its {gguf.architecture} metadata holds a value of the wrong type or range "
                f"({error}); "
                "the file is damaged or was not written by llama.cpp's converter. Download it again."
            ) from error
    raise UnsupportedSourceError(
        f"{gguf.path}: architecture {gguf.architecture!r} is not supported; this converter reads Gemma 3 "
        f"and Gemma 4 GGUF files ({', '.join(SUPPORTED_ARCHITECTURES)}).")


def generation_config(config: dict[str, Any]) -> dict[str, Any]:
    """generation_config.json matching the rebuilt config (ids only; sampling is the app's business)."""
    return {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"],
            "pad_token_id": config["pad_token_id"]}
