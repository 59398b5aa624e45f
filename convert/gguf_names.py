"""GGUF tensor names (llama.cpp) -> Hugging Face names, for Gemma 3 and Gemma 4 text models.

The tables invert llama.cpp's conversion (conversion/gemma.py Gemma3Model/Gemma4Model and gguf-py's
tensor_mapping.py); tests check them against `gguf.get_tensor_name_map` on every name of a real model.
Output names are the text-only HF layout (`model.layers.N...`, as in Gemma3ForCausalLM / Gemma4ForCausalLM);
`Model.sanitize` moves them into our multimodal layout.
"""

from __future__ import annotations

import re

TEXT_PREFIX = "model."

_GLOBAL = {
    "token_embd.weight": "embed_tokens.weight",
    "output_norm.weight": "norm.weight",
    "per_layer_token_embd.weight": "embed_tokens_per_layer.weight",
    "per_layer_model_proj.weight": "per_layer_model_projection.weight",
    "per_layer_proj_norm.weight": "per_layer_projection_norm.weight",
}

_BLOCK = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "ffn_norm.weight": "pre_feedforward_layernorm.weight",
    "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    # Gemma 4 MoE block (llama.cpp conversion/gemma.py Gemma4Model.modify_tensors)
    "pre_ffw_norm_2.weight": "pre_feedforward_layernorm_2.weight",
    "post_ffw_norm_1.weight": "post_feedforward_layernorm_1.weight",
    "post_ffw_norm_2.weight": "post_feedforward_layernorm_2.weight",
    "ffn_gate_inp.weight": "router.proj.weight",
    "ffn_gate_inp.scale": "router.scale",
    "ffn_down_exps.scale": "router.per_expert_scale",
    "ffn_gate_up_exps.weight": "experts.gate_up_proj",
    "ffn_down_exps.weight": "experts.down_proj",
    "layer_output_scale.weight": "layer_scalar",
    # Gemma 4 per-layer embeddings (PLE)
    "inp_gate.weight": "per_layer_input_gate.weight",
    "proj.weight": "per_layer_projection.weight",
    "post_norm.weight": "post_per_layer_input_norm.weight",
}

# Stored in GGUF as separate tensors but one tensor in HF: concatenated along axis 1 (gate rows first).
SPLIT_EXPERT_PARTS = ("ffn_gate_exps.weight", "ffn_up_exps.weight")
# Derived by llama.cpp from the config (rope_freqs: proportional RoPE factors); rebuilt from config.json.
DERIVED = {"rope_freqs.weight"}

_BLOCK_NAME = re.compile(r"^blk\.(\d+)\.(.+)$")


def hf_name(gguf_name: str) -> str | None:
    """The HF (text-only layout) name for a GGUF tensor name; None when the tensor is derived and dropped.

    Raises KeyError for a name we do not know (the caller turns it into an UnexpectedTensorError).
    """
    if gguf_name in DERIVED:
        return None
    if gguf_name in _GLOBAL:
        return TEXT_PREFIX + _GLOBAL[gguf_name]
    match = _BLOCK_NAME.match(gguf_name)
    if match and match.group(2) in _BLOCK:
        return f"{TEXT_PREFIX}layers.{match.group(1)}.{_BLOCK[match.group(2)]}"
    raise KeyError(gguf_name)


def is_split_expert_part(gguf_name: str) -> bool:
    """True for ffn_gate_exps / ffn_up_exps, which together form experts.gate_up_proj."""
    match = _BLOCK_NAME.match(gguf_name)
    return bool(match) and match.group(2) in SPLIT_EXPERT_PARTS


def adds_one_to_norms(architecture: str, hf_tensor_name: str) -> bool:
    """Gemma 3 GGUF norms hold (HF weight + 1); Gemma 4 ones hold the HF weight.

    llama.cpp conversion/gemma.py Gemma3Model.norm_shift adds 1.0 to every `*norm.weight`;
    Gemma4Model.norm_shift returns 0. transformers' GGUF loader (Gemma2TensorProcessor) subtracts it back.
    """
    return architecture == "gemma3" and hf_tensor_name.endswith("norm.weight")
