"""Helpers for the converter tests (no tests here): tiny checkpoints, a llama.cpp-style GGUF writer,
dequantized weights and quantization-quality figures.

The GGUF writer follows llama.cpp's conversion/gemma.py (Gemma4Model) and names tensors with
gguf-py's own `get_tensor_name_map`, independently of convert/gguf_names.py, so a round trip
through it checks our inverse table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import mlx.core as mx
from mlx.utils import tree_flatten

from tests.reference_models import COMMON, VARIANTS, randomize_, write_tiny_tokenizer

# Dimensions divisible by 32 and 64 everywhere, so the quantization tests quantize every module
# (reference_models' widths of 96, 24 and 8 would leave some layers in float).
QUANT_FRIENDLY = dict(intermediate_size=128, moe_intermediate_size=64, hidden_size_per_layer_input=32,
                      head_dim=32, global_head_dim=64)
CHAT_TEMPLATE = "{{ bos_token }}{% for m in messages %}<|turn>{{ m['role'] }}\n{{ m['content'] }}<turn|>\n{% endfor %}"


def build_text_checkpoint(variant: str, out_dir: Path, *, seed: int = 0, overrides: dict | None = None,
                          max_shard_size: str | None = None):
    """A random tiny Gemma4ForCausalLM (text-only layout) saved to out_dir; returns the torch model."""
    from transformers import Gemma4ForCausalLM, Gemma4TextConfig

    torch.manual_seed(seed)
    config = Gemma4TextConfig(**{**VARIANTS[variant], **(overrides or {})})
    model = Gemma4ForCausalLM(config).float().eval()
    randomize_(model, seed)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out_dir, safe_serialization=True, **kwargs)
    write_tiny_tokenizer(out_dir, config.vocab_size)
    return model


def build_multimodal_checkpoint(out_dir: Path, *, seed: int = 0):
    """A random tiny Gemma4ForConditionalGeneration with vision and audio towers (E2B-like)."""
    from transformers import Gemma4AudioConfig, Gemma4Config, Gemma4ForConditionalGeneration, Gemma4VisionConfig

    torch.manual_seed(seed)
    text = {**VARIANTS["e2b"], **QUANT_FRIENDLY}
    vision = Gemma4VisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                                num_key_value_heads=2, head_dim=32, position_embedding_size=64)
    audio = Gemma4AudioConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                              subsampling_conv_channels=[128, 8], output_proj_dims=64)
    config = Gemma4Config(text_config=text, vision_config=vision.to_dict(), audio_config=audio.to_dict())
    model = Gemma4ForConditionalGeneration(config).float().eval()
    randomize_(model, seed)
    model.save_pretrained(out_dir, safe_serialization=True)
    write_tiny_tokenizer(out_dir, text["vocab_size"])
    (Path(out_dir) / "processor_config.json").write_text("{}")  # the towers' settings: the published defaults
    return model


# --- a small, valid Gemma 4 style BPE vocabulary for GGUF metadata ---------------------------------

def tiny_vocabulary(size: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges): specials, byte fallbacks, "▁", letters, "▁x" and "xy" pieces."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    types = [3] * len(tokens)
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [6] * 256
    pieces = ["\u2581", *letters, *("\u2581" + c for c in letters)]
    merges = ["\u2581 " + c for c in letters]
    for a in letters:
        for b in letters:
            pieces.append(a + b)
            merges.append(f"{a} {b}")
    room = size - len(tokens)
    pieces, merges = pieces[:room], [m for m in merges if m.replace(" ", "") in pieces[:room]]
    tokens += pieces
    types += [1] * len(pieces)
    return tokens, types, merges


def write_gemma4_gguf(model, path: Path) -> Path:
    """Write a text-only Gemma 4 torch model as llama.cpp's convert_hf_to_gguf.py would (F32 tensors)."""
    import gguf

    config = model.config.to_dict()  # plain dict: per-layer attributes are ambiguous on the config object
    layers = config["num_hidden_layers"]
    swa = [t == "sliding_attention" for t in config["layer_types"]]
    writer = gguf.GGUFWriter(str(path), "gemma4")
    writer.add_name("tiny gemma4")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(layers)
    first_shared = layers - config["num_kv_shared_layers"]
    if config["use_double_wide_mlp"]:
        size = config["intermediate_size"]
        writer.add_feed_forward_length([size if i < first_shared else 2 * size for i in range(layers)])
    else:
        writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    # every full-attention layer carries the same overrides (configuration_gemma4.py per_layer_config)
    full_layer = next(iter(config["per_layer_config"].values()))
    full_kv, full_head_dim = full_layer.get("num_key_value_heads"), full_layer["head_dim"]
    if full_kv is not None:
        writer.add_head_count_kv([config["num_key_value_heads"] if s else full_kv for s in swa])
    else:
        writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_key_length(full_head_dim)
    writer.add_value_length(full_head_dim)
    writer.add_key_length_swa(config["head_dim"])
    writer.add_value_length_swa(config["head_dim"])
    writer.add_rope_freq_base(config["rope_parameters"]["full_attention"]["rope_theta"])
    writer.add_rope_freq_base_swa(config["rope_parameters"]["sliding_attention"]["rope_theta"])
    writer.add_final_logit_softcapping(config["final_logit_softcapping"])
    writer.add_sliding_window(config["sliding_window"])
    writer.add_shared_kv_layers(config["num_kv_shared_layers"])
    writer.add_embedding_length_per_layer_input(config["hidden_size_per_layer_input"] or 0)
    writer.add_sliding_window_pattern(swa)
    if config["enable_moe_block"]:
        writer.add_expert_count(config["num_experts"])
        writer.add_expert_used_count(config["top_k_experts"])
        writer.add_expert_feed_forward_length(config["moe_intermediate_size"])
    writer.add_rope_dimension_count(full_head_dim)
    writer.add_rope_dimension_count_swa(config["head_dim"])
    tokens, types, merges = tiny_vocabulary(config["vocab_size"])
    writer.add_tokenizer_model("gemma4")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_chat_template(CHAT_TEMPLATE)
    # llama.cpp Gemma4Model.generate_extra_tensors: proportional RoPE as frequency factors
    rotated = int(full_head_dim * config["rope_parameters"]["full_attention"]["partial_rotary_factor"] / 2)
    writer.add_tensor("rope_freqs.weight",
                      np.array([1.0] * rotated + [1e30] * (full_head_dim // 2 - rotated), dtype=np.float32))
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA4, layers)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied
        writer.add_tensor(_gguf_name(name, name_map), tensor.detach().float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _gguf_name(hf_name: str, name_map) -> str:
    """llama.cpp's name for an HF tensor (conversion/gemma.py Gemma4Model.filter_tensors/modify_tensors)."""
    block = hf_name.split(".")[2] if hf_name.startswith("model.layers.") else None
    if hf_name.endswith("router.scale"):
        return f"blk.{block}.ffn_gate_inp.scale"
    if hf_name.endswith("router.per_expert_scale"):
        return f"blk.{block}.ffn_down_exps.scale"
    if hf_name.endswith(("layer_scalar", "experts.gate_up_proj", "experts.down_proj")):
        hf_name += ".weight"
    mapped = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if mapped is None:
        raise KeyError(f"gguf-py has no name for {hf_name}")
    return mapped


# --- weights and quality figures ---------------------------------------------------------------

def dequantized_parameters(model) -> dict[str, np.ndarray]:
    """Every parameter of an MLX model as float32 numpy, quantized modules dequantized."""
    modules = dict(model.named_modules())
    out = {}
    for name, value in tree_flatten(model.parameters()):
        path, leaf = name.rsplit(".", 1)
        module = modules.get(path)
        if leaf in ("scales", "biases") and hasattr(module, "bits"):
            continue
        if leaf == "weight" and module is not None and hasattr(module, "scales"):
            value = mx.dequantize(module.weight, module.scales, module.biases, group_size=module.group_size,
                                  bits=module.bits)
        out[name] = np.array(value.astype(mx.float32))
    return out


def quality(reference_logits: np.ndarray, logits: np.ndarray, targets: np.ndarray | None = None) -> dict:
    """Mean KL(reference || candidate), top-1 agreement, and perplexity on `targets` if given."""
    ref = reference_logits.reshape(-1, reference_logits.shape[-1]).astype(np.float64)
    got = logits.reshape(-1, logits.shape[-1]).astype(np.float64)
    ref_logp = ref - np.logaddexp.reduce(ref, axis=-1, keepdims=True)
    got_logp = got - np.logaddexp.reduce(got, axis=-1, keepdims=True)
    result = {"kl": float(np.mean(np.sum(np.exp(ref_logp) * (ref_logp - got_logp), axis=-1))),
              "top1": float(np.mean(ref.argmax(-1) == got.argmax(-1)))}
    if targets is not None:
        picked = np.take_along_axis(got_logp, targets.reshape(-1, 1), axis=-1)
        result["ppl"] = float(np.exp(-picked.mean()))
    return result


def mlx_lm_quantized(model_dir: Path, bits: int, group_size: int):
    """Our float model quantized the way mlx-lm quantizes: mlx_lm.utils.quantize_model (nn.quantize,
    round-to-nearest min/max) with the model's quant_predicate (Gemma 4's recipe, as mlx-lm's tools would apply
    it to our model), so the comparison is of the rounding at the same bits per module."""
    import json

    import mlx_lm.utils as mlx_lm_utils

    from mlx_model import load_model

    model = load_model(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    mlx_lm_utils.quantize_model(model, config, group_size, bits)
    return model


def torch_logits_with(reference, parameters: dict[str, np.ndarray], ids: np.ndarray) -> np.ndarray:
    """Logits of the transformers reference model carrying `parameters` (our names, e.g. dequantized
    weights): transformers' fast CPU kernels measure a weight set's quality in a fraction of MLX-CPU's time."""
    import copy

    model = copy.deepcopy(reference)
    state = {}
    for name, value in parameters.items():
        hf_name = name.replace("model.language_model.", "model.")
        if hf_name.endswith((".experts.gate_up_proj.weight", ".experts.down_proj.weight")):
            hf_name = hf_name[: -len(".weight")]
        state[hf_name] = torch.from_numpy(np.ascontiguousarray(value))
    missing, unexpected = model.load_state_dict(state, strict=False)
    first_shared = model.config.num_hidden_layers - model.config.num_kv_shared_layers

    def unused_by_transformers(key: str) -> bool:  # tied head; KV-shared layers' own k/v (never run)
        shared_layer = key.startswith("model.layers.") and int(key.split(".")[2]) >= first_shared
        return key == "lm_head.weight" or (shared_layer and (".self_attn.k_" in key or ".self_attn.v_" in key))

    unexplained = [key for key in missing if not unused_by_transformers(key)]
    assert not unexpected and not unexplained, (unexpected, unexplained)
    if model.config.tie_word_embeddings:
        model.tie_weights()
    with torch.no_grad():
        return model(torch.as_tensor(ids)).logits.float().numpy()
