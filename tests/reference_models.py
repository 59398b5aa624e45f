"""Tiny random checkpoints shaped like each Gemma variant, built with transformers (the reference).

Every parameter and persistent buffer is randomised (norm weights not 1, `layer_scalar` not 1,
router scales), so a missed scale or norm shows up as a logit difference.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_VOCAB = 512
WINDOW = 8

COMMON = dict(
    vocab_size=TINY_VOCAB,
    vocab_size_per_layer_input=TINY_VOCAB,
    hidden_size=64,
    num_attention_heads=4,
    head_dim=16,
    global_head_dim=32,
    sliding_window=WINDOW,
    final_logit_softcapping=30.0,
    rms_norm_eps=1e-6,
    max_position_embeddings=4096,
    pad_token_id=0,
    bos_token_id=2,
    eos_token_id=1,
)

# Reduced copies of the four published variants (see the architecture notes' table).
VARIANTS: dict[str, dict] = {
    "e2b": dict(
        COMMON, num_hidden_layers=10, intermediate_size=96, num_key_value_heads=1,
        layer_types=(["sliding_attention"] * 4 + ["full_attention"]) * 2,
        hidden_size_per_layer_input=8, num_kv_shared_layers=4, use_double_wide_mlp=True,
    ),
    "e4b": dict(
        COMMON, num_hidden_layers=12, intermediate_size=80, num_key_value_heads=2,
        hidden_size_per_layer_input=8, num_kv_shared_layers=4,
    ),
    "26b": dict(
        COMMON, num_hidden_layers=6, intermediate_size=48, num_attention_heads=8, num_key_value_heads=4,
        num_global_key_value_heads=2, attention_k_eq_v=True, hidden_size_per_layer_input=0,
        enable_moe_block=True, num_experts=8, top_k_experts=2, moe_intermediate_size=24,
    ),
    "31b": dict(
        COMMON, num_hidden_layers=6, intermediate_size=96, num_attention_heads=8, num_key_value_heads=4,
        num_global_key_value_heads=2, attention_k_eq_v=True, hidden_size_per_layer_input=0,
    ),
}

GEMMA3 = dict(
    vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=8, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, sliding_window=WINDOW,
    rope_parameters={
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
    },
    max_position_embeddings=4096, pad_token_id=0, bos_token_id=2, eos_token_id=1,
)


def randomize_(model: torch.nn.Module, seed: int = 0) -> None:
    """Fill every parameter and persistent buffer with random values of a sensible scale."""
    gen = torch.Generator().manual_seed(seed)
    persistent = dict(model.state_dict(keep_vars=True))
    with torch.no_grad():
        for name, tensor in persistent.items():
            if not tensor.is_floating_point():
                continue
            if name.endswith(("q_norm.weight", "k_norm.weight")) and "gemma3" not in type(model).__name__.lower():
                # q.k over unit-RMS heads with scale 1: weights near 0.5 keep the softmax out of the regime
                # where float32 rounding in the reference alone exceeds the tolerance
                tensor.copy_(0.5 + 0.15 * torch.randn(tensor.shape, generator=gen))
                continue
            if name.endswith(("norm.weight", "layernorm.weight", "layernorm_1.weight", "layernorm_2.weight",
                              "_norm.weight")) or name.endswith(("router.scale", "per_expert_scale")):
                base = 0.0 if "gemma3" in type(model).__name__.lower() else 1.0
                tensor.copy_(base + 0.3 * torch.randn(tensor.shape, generator=gen))
            elif name.endswith("layer_scalar"):
                tensor.copy_(0.75 + 0.5 * torch.rand(tensor.shape, generator=gen))
            elif "embed" in name:
                tensor.copy_(0.25 * torch.randn(tensor.shape, generator=gen))
            else:
                fan_in = tensor.shape[-1] if tensor.dim() > 1 else 1
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * (1.0 / fan_in ** 0.5))


TINY_CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|turn>{{ m['role'] }}\n{{ m['content'] }}"
                      "<turn|>\n{% endfor %}{% if add_generation_prompt %}<|turn>model\n{% endif %}")


def write_tiny_tokenizer(out_dir: Path, vocab_size: int = TINY_VOCAB) -> None:
    """A small valid tokenizer over `vocab_size` word tokens (pad 0, eos 1, bos 2, as COMMON) and a chat
    template, so a tiny checkpoint is a complete model the converter finishes and the loader accepts."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    words = specials + [f"w{i}" for i in range(len(specials), vocab_size)]
    tokenizer = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<bos>", "eos_token": "<eos>",
        "pad_token": "<pad>", "unk_token": "<unk>"}))
    (out_dir / "chat_template.jinja").write_text(TINY_CHAT_TEMPLATE)


def build_gemma4(variant: str, out_dir: Path, *, multimodal_layout: bool = False, seed: int = 0, **overrides):
    """A random tiny Gemma 4 checkpoint saved to `out_dir`; returns the float32 torch model (eval mode)."""
    from transformers import Gemma4Config, Gemma4ForCausalLM, Gemma4ForConditionalGeneration, Gemma4TextConfig

    torch.manual_seed(seed)
    text_config = Gemma4TextConfig(**{**VARIANTS[variant], **overrides})
    if multimodal_layout:
        config = Gemma4Config(text_config=text_config.to_dict(), vision_config=None, audio_config=None)
        model = Gemma4ForConditionalGeneration(config)
    else:
        model = Gemma4ForCausalLM(text_config)
    model = model.float().eval()
    randomize_(model, seed)
    model.save_pretrained(out_dir, safe_serialization=True)
    write_tiny_tokenizer(out_dir, text_config.vocab_size)
    return model


def build_gemma3(out_dir: Path, seed: int = 0):
    """A random tiny Gemma 3 text checkpoint saved to `out_dir`; returns the torch model."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(Gemma3TextConfig(**GEMMA3)).float().eval()
    randomize_(model, seed)
    model.save_pretrained(out_dir, safe_serialization=True)
    write_tiny_tokenizer(out_dir, GEMMA3["vocab_size"])
    return model


def reference_logits(model: torch.nn.Module, ids, dtype=torch.float64):
    """The reference's logits for token ids, computed in float64 by default.

    transformers' own float32 rounding on these checkpoints reaches ~1e-4, the tolerance itself,
    so float64 is the reference we hold float32 MLX against.
    """
    import copy

    ref = copy.deepcopy(model).to(dtype)
    ref.config._experts_implementation = "eager"  # torch's grouped_mm has no float64 kernel
    with torch.no_grad():
        return ref(torch.as_tensor(ids)).logits.double().numpy()
