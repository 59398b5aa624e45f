"""Gemma 4's mixed-precision quantization recipe: the one table of modules that keep more bits, and why.

The converter (convert/quantize.py), `Model.quant_predicate` (so mlx-lm's quantization tooling gets the
same recipe) and the memory planner (weight bytes) all read it. Pure Python: module paths in, bits out.

At `bits` below 8 every module a rule names gets the rule's bits (never fewer than `bits`), or stays in
float; every other quantizable module gets `bits`. At 8 bits the recipe is uniform 8-bit except for
the float rules. `UNIFORM` is the plain one-width behaviour (router at 8 bits only), kept for comparison.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

HIGH_BITS = 8
HIGH_GROUP_SIZE = 64  # of the modules the recipe raises to 8 bits, as mlx-lm's 8-bit router (when it divides)
FLOAT = None  # a rule's bits: keep the module in float (the checkpoint's dtype)


@dataclass(frozen=True)
class Rule:
    """Modules whose path matches `pattern` get `bits` (FLOAT: not quantized)."""

    kind: str
    pattern: str
    bits: Optional[int]
    more_bits_layers_only: bool = False  # only in the layers `use_more_bits` picks


# Sources: [I21] this project's issue 21 (field reports: mlx-lm 1123, mlx-vlm 895, omlx 534, llama.cpp 22407);
# [OL] Ollama server/quantization.go (newType / getTensorNewType / useMoreBits, its Q4_K_M recipe);
# [ML] mlx-lm models/gemma4_text.py quant_predicate.
RECIPE: tuple[Rule, ...] = (
    # [I21] the per-layer embedding table at 4 bits gives garbage in several MLX runtimes; [OL] keeps
    # per_layer_token_embd unquantized. 8 bits: half the size of float, and lossless in our tests.
    Rule("per-layer embeddings (PLE)", r"(^|\.)embed_tokens_per_layer$", HIGH_BITS),
    # The PLE context projection feeds the same per-layer inputs; small (hidden x layers*256): kept with it.
    Rule("PLE projection", r"(^|\.)per_layer_model_projection$", HIGH_BITS),
    # [ML] router at 8 bits; [OL] leaves ffn_gate_inp unquantized.
    Rule("MoE router", r"(^|\.)router\.proj$", HIGH_BITS),
    # [OL] token_embd (tied output head) and output.weight at Q6_K; [I21] 8 (or 6). 8 measured better at
    # almost the same size gain over float: see scripts/bench_quant_quality.py.
    Rule("token embedding / tied output head", r"(^|\.)language_model\.embed_tokens$", HIGH_BITS),
    Rule("output head", r"^lm_head$", HIGH_BITS),
    # [OL] attn_v and ffn_down at Q6_K where useMoreBits(layer) (Q4_K_M); [I21] at 8 bits. k_eq_v layers
    # (31B, 26B-A4B full attention) take their values from k_proj: it gets the v_proj rule there.
    Rule("attention values", r"\.layers\.(\d+)\.self_attn\.v_proj$", HIGH_BITS, more_bits_layers_only=True),
    Rule("MLP / expert down projection", r"\.layers\.(\d+)\.(mlp|experts)\.down_proj$", HIGH_BITS,
         more_bits_layers_only=True),
    # [OL] vision encoder ("v.") and projector ("mm.") unquantized; [I21] float or 8 bits, never lower.
    # The towers at 8 bits (they are 0.2-0.6 B parameters); their projections into text space are tiny: float.
    Rule("vision tower", r"^model\.vision_tower\.", HIGH_BITS),
    Rule("audio tower", r"^model\.audio_tower\.", HIGH_BITS),
    Rule("vision / audio projection", r"^model\.embed_(vision|audio)\.", FLOAT),
)

UNIFORM: tuple[Rule, ...] = (Rule("MoE router", r"(^|\.)router\.proj$", HIGH_BITS),)
# Gemma 4 12B has no towers: its embedders take raw pixels and audio frames to text space (0.4% of its
# weights), so they are its towers: 8 bits, in the recipe and in uniform (they were 8-bit before the recipe).
UNIFIED_EMBEDDERS = Rule("12B vision / audio embedders (its towers)",
                         r"^model\.(vision_embedder|embed_vision|embed_audio)\.", HIGH_BITS)

_LAYER = re.compile(r"\.layers\.(\d+)\.")
_COMPILED = {rule: re.compile(rule.pattern) for rule in RECIPE + UNIFORM + (UNIFIED_EMBEDDERS,)}


def use_more_bits(layer: int, num_layers: int) -> bool:
    """[OL] useMoreBits: the first and last eighth of the layers and every third layer between."""
    return layer < num_layers // 8 or layer >= 7 * num_layers // 8 or (layer - num_layers // 8) % 3 == 2


def matching_rule(path: str, num_layers: int, rules: tuple[Rule, ...] = RECIPE,
                  values_from_keys: frozenset[int] = frozenset()) -> Optional[Rule]:
    """The rule that decides module `path`, or None (the module gets the requested bits).

    values_from_keys: layers whose k_proj also makes the values (attention_k_eq_v full-attention layers).
    """
    key_as_value = re.search(r"\.layers\.(\d+)\.self_attn\.k_proj$", path)
    if key_as_value and int(key_as_value.group(1)) in values_from_keys:
        path = path[: -len("k_proj")] + "v_proj"
    for rule in rules:
        if not _COMPILED[rule].search(path):
            continue
        if rule.more_bits_layers_only:
            layer = _LAYER.search(path)
            if layer is None or not use_more_bits(int(layer.group(1)), num_layers):
                continue
        return rule
    return None


def rules_for(uniform: bool = False, unified: bool = False) -> tuple[Rule, ...]:
    """The rules in force: the recipe or UNIFORM, led by the 12B embedder rule for unified models."""
    rules = UNIFORM if uniform else RECIPE
    return (UNIFIED_EMBEDDERS,) + rules if unified else rules


def module_bits(path: str, bits: int, num_layers: int, *, uniform: bool = False, unified: bool = False,
                values_from_keys: frozenset[int] = frozenset()) -> Optional[int]:
    """Bits for quantizable module `path` when `bits` are requested (None: keep it in float).

    unified: a Gemma 4 12B (`ModelConfig.is_unified`), whose embedders stand in for the towers."""
    rule = matching_rule(path, num_layers, rules_for(uniform, unified), values_from_keys)
    if rule is None:
        return bits
    if rule.bits is FLOAT:
        return None
    return max(bits, rule.bits)


def group_size_for(chosen_bits: int, bits: int, group_size: int, in_features: int) -> int:
    """The group size of a module the recipe gives `chosen_bits` when `bits` (at `group_size`) were asked."""
    if chosen_bits != bits and in_features % HIGH_GROUP_SIZE == 0:
        return HIGH_GROUP_SIZE
    return group_size


def describe(uniform: bool = False, unified: bool = False) -> list[dict]:
    """The table as data (kind, bits, which layers), for reports and the quality file."""
    rows = []
    for rule in rules_for(uniform, unified):
        layers = "layers picked by use_more_bits" if rule.more_bits_layers_only else "all"
        bits = rule.bits if rule.bits is not None else "float"
        rows.append({"kind": rule.kind, "bits": bits, "layers": layers})
    return rows
