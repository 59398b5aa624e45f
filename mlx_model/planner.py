"""Memory planner: exact bytes of weights, KV cache and prefill scratch for a model and a context.

On a Mac, weights, KV and scratch share one pool of unified memory; the app uses this to pick a
context that fits and to refuse a model that would not, with the numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

import mlx.core as mx

from .attention import KEY_BLOCK, TILE_BYTES, query_tile
from .config import FULL, SLIDING, TextConfig

GIB = 1024 ** 3
DEFAULT_SAFETY_MARGIN = 0.15  # of physical memory left to macOS and other apps

# Text configs of the published variants (architecture notes' table; towers excluded).
VARIANT_CONFIGS: dict[str, dict] = {
    "E2B": dict(model_type="gemma4_text", hidden_size=1536, num_hidden_layers=35, intermediate_size=6144,
                num_attention_heads=8, num_key_value_heads=1, head_dim=256, global_head_dim=512,
                sliding_window=512, sliding_window_pattern=5, num_kv_shared_layers=20,
                use_double_wide_mlp=True, hidden_size_per_layer_input=256, final_logit_softcapping=30.0),
    "E4B": dict(model_type="gemma4_text", hidden_size=2560, num_hidden_layers=42, intermediate_size=10240,
                num_attention_heads=8, num_key_value_heads=2, head_dim=256, global_head_dim=512,
                sliding_window=512, sliding_window_pattern=6, num_kv_shared_layers=18,
                hidden_size_per_layer_input=256, final_logit_softcapping=30.0),
    # google/gemma-4-12B-it's config.json (gemma4_unified; text part). Checked: these values plus the
    # embedders (vision 49,922,304, audio 2,457,600 parameters) give the hub's 11,959,730,224 exactly.
    "12B": dict(model_type="gemma4_unified_text", hidden_size=3840, num_hidden_layers=48,
                intermediate_size=15360, num_attention_heads=16, num_key_value_heads=8,
                num_global_key_value_heads=1, attention_k_eq_v=True, head_dim=256, global_head_dim=512,
                sliding_window=1024, sliding_window_pattern=6, hidden_size_per_layer_input=0,
                final_logit_softcapping=30.0),
    "26B-A4B": dict(model_type="gemma4_text", hidden_size=2816, num_hidden_layers=30, intermediate_size=2112,
                    num_attention_heads=16, num_key_value_heads=8, num_global_key_value_heads=2,
                    attention_k_eq_v=True, head_dim=256, global_head_dim=512, sliding_window=1024,
                    sliding_window_pattern=6, hidden_size_per_layer_input=0, enable_moe_block=True,
                    num_experts=128, top_k_experts=8, moe_intermediate_size=704, final_logit_softcapping=30.0),
    "31B": dict(model_type="gemma4_text", hidden_size=5376, num_hidden_layers=60, intermediate_size=21504,
                num_attention_heads=32, num_key_value_heads=16, num_global_key_value_heads=4,
                attention_k_eq_v=True, head_dim=256, global_head_dim=512, sliding_window=1024,
                sliding_window_pattern=6, hidden_size_per_layer_input=0, final_logit_softcapping=30.0),
}


def quantized_bytes(n_elements: int, bits: Optional[int], group_size: int = 64, float_bytes: int = 2) -> int:
    """Bytes of `n_elements` stored at `bits` (affine: a float scale and bias per group), or as floats."""
    if not bits:
        return n_elements * float_bytes
    return n_elements * bits // 8 + 2 * (n_elements // group_size) * float_bytes


@dataclass
class WeightCount:
    """Parameter counts of the text decoder, split by how they are stored."""

    quantizable: int  # linears and embedding tables
    router: int  # MoE routers, kept at 8 bits
    floats: int  # norms, scalars


def count_text_weights(config: TextConfig) -> WeightCount:
    """Exact parameter counts of our TextModel for `config`."""
    h, layers = config.hidden_size, config.num_hidden_layers
    quantizable = config.vocab_size * h
    floats = h
    router = 0
    for i in range(layers):
        hd, kv = config.layer_head_dims[i], config.layer_kv_heads[i]
        quantizable += h * config.num_attention_heads * hd * 2  # q_proj, o_proj
        floats += hd + 4 * h + 1  # q_norm, four sandwich norms, layer_scalar
        if i < config.first_shared_layer:
            k_eq_v = config.attention_k_eq_v and config.layer_types[i] == FULL
            quantizable += h * kv * hd * (1 if k_eq_v else 2)
            floats += hd
        double = config.use_double_wide_mlp and i >= config.first_shared_layer
        quantizable += 3 * h * config.intermediate_size * (2 if double else 1)
        if config.enable_moe_block:
            quantizable += config.num_experts * 3 * h * config.moe_intermediate_size
            router += h * config.num_experts
            floats += h + config.num_experts + 3 * h
        if config.hidden_size_per_layer_input:
            quantizable += 2 * h * config.hidden_size_per_layer_input
            floats += h
    if config.hidden_size_per_layer_input:
        total = layers * config.hidden_size_per_layer_input
        quantizable += config.vocab_size_per_layer_input * total + h * total
        floats += config.hidden_size_per_layer_input
    return WeightCount(quantizable, router, floats)


def text_modules(config: TextConfig) -> list[tuple[str, int, int]]:
    """(module path, input width, parameters) of every quantizable module of our TextModel for `config`."""
    h, lm = config.hidden_size, "model.language_model."
    modules = [(f"{lm}embed_tokens", h, config.vocab_size * h)]
    for i in range(config.num_hidden_layers):
        p, hd, kv = f"{lm}layers.{i}.", config.layer_head_dims[i], config.layer_kv_heads[i]
        q_width = config.num_attention_heads * hd
        modules += [(f"{p}self_attn.q_proj", h, h * q_width), (f"{p}self_attn.o_proj", q_width, q_width * h)]
        if i < config.first_shared_layer:
            modules.append((f"{p}self_attn.k_proj", h, h * kv * hd))
            if not (config.attention_k_eq_v and config.layer_types[i] == FULL):
                modules.append((f"{p}self_attn.v_proj", h, h * kv * hd))
        double = config.use_double_wide_mlp and i >= config.first_shared_layer
        width = config.intermediate_size * (2 if double else 1)
        modules += [(f"{p}mlp.gate_proj", h, h * width), (f"{p}mlp.up_proj", h, h * width),
                    (f"{p}mlp.down_proj", width, width * h)]
        if config.enable_moe_block:
            experts, inner = config.num_experts, config.moe_intermediate_size
            modules += [(f"{p}router.proj", h, h * experts),
                        (f"{p}experts.gate_up_proj", h, experts * 2 * inner * h),
                        (f"{p}experts.down_proj", inner, experts * h * inner)]
        if config.hidden_size_per_layer_input:
            ple = config.hidden_size_per_layer_input
            modules += [(f"{p}per_layer_input_gate", h, h * ple), (f"{p}per_layer_projection", ple, ple * h)]
    if config.hidden_size_per_layer_input:
        total = config.num_hidden_layers * config.hidden_size_per_layer_input
        modules += [(f"{lm}embed_tokens_per_layer", total, config.vocab_size_per_layer_input * total),
                    (f"{lm}per_layer_model_projection", h, h * total)]
    return modules


def weight_bytes(config: TextConfig, bits: Optional[int] = 4, group_size: int = 64,
                 uniform: bool = False) -> int:
    """Bytes of the text weights at `bits` (None = bfloat16) with Gemma 4's recipe (mlx_model/quant_recipe.py:
    PLE, router, embeddings and a third of v_proj/down_proj at 8 bits, group 64), or `uniform` (router at 8
    only), as the converter writes them; a module whose input width is not a multiple of its group stays
    bfloat16."""
    from .quant_recipe import group_size_for, module_bits

    count = count_text_weights(config)
    k_eq_v = frozenset(i for i in range(config.first_shared_layer)
                       if config.attention_k_eq_v and config.layer_types[i] == FULL)
    total = count.floats * 2
    for path, in_features, n in text_modules(config):
        chosen = (module_bits(path, bits, config.num_hidden_layers, uniform=uniform, values_from_keys=k_eq_v)
                  if bits else None)
        group = group_size_for(chosen, bits, group_size, in_features) if chosen else group_size
        total += quantized_bytes(n, chosen if chosen and in_features % group == 0 else None, group)
    return total


def kv_bytes(config: TextConfig, context: int, kv_bits: Optional[int] = None, group_size: int = 64,
             float_bytes: int = 2, step: int = 256) -> int:
    """Bytes of the KV cache at `context` tokens: full layers grow (in steps), sliding layers are bounded."""
    total = 0
    for i in range(config.first_shared_layer):
        hd, kv = config.layer_head_dims[i], config.layer_kv_heads[i]
        if config.layer_types[i] == SLIDING:
            tokens = min(context, config.sliding_window)
        else:
            tokens = -(-context // step) * step
        total += 2 * quantized_bytes(tokens * kv * hd, kv_bits, group_size, float_bytes)
    return total


def kv_bytes_per_token(config: TextConfig, kv_bits: Optional[int] = None, float_bytes: int = 2) -> int:
    """Growth of the KV cache per token (full-attention layers only)."""
    return sum(2 * quantized_bytes(config.layer_kv_heads[i] * config.layer_head_dims[i], kv_bits, 64, float_bytes)
               for i in range(config.first_shared_layer) if config.layer_types[i] == FULL)


def prefill_scratch_bytes(config: TextConfig, chunk: int, context: int, float_bytes: int = 2,
                          kv_bits: Optional[int] = None) -> int:
    """Peak temporary memory of prefilling `context` tokens, in chunks of `chunk`, into a fresh cache.

    Full-attention caches reserve the whole prompt up front, so they never copy themselves while
    growing. Prefill evaluates only what the caches keep: a chunk skips the attention of the last
    layer that owns a cache and every KV-shared layer, and the last prompt token then runs alone
    for the logits. Terms: the larger of one layer's widest activations and the attention temporaries
    of the layers whose output a later cache needs (full layers: every cached key; sliding layers:
    the window plus the chunk), which the block path bounds by its tile; the sliding rings rewritten
    in the same graph. The vocabulary-sized rows of the answer's first steps come after the last chunk's
    scratch was released (the last token runs alone), so the larger of the two counts, not their sum.
    Checked against MLX's measured peak by `python -m gemma4_mac.bench`.
    """
    h = config.hidden_size
    widest_mlp = config.intermediate_size * (2 if config.use_double_wide_mlp else 1)
    if config.enable_moe_block:
        widest_mlp = max(widest_mlp, 2 * config.top_k_experts * config.moe_intermediate_size)
    q_width = config.num_attention_heads * max(config.layer_head_dims)
    activations = chunk * (4 * h + 3 * widest_mlp + 2 * q_width) * float_bytes
    if unfused_norm_and_rope():
        activations += chunk * q_width * 4 * UNFUSED_QUERY_COPIES
    if config.hidden_size_per_layer_input:
        activations += chunk * config.num_hidden_layers * config.hidden_size_per_layer_input * 3 * float_bytes
    heads, owners = config.num_attention_heads, range(config.first_shared_layer)
    needed_kinds = {config.layer_types[i] for i in range(config.first_shared_layer - 1)}
    scores = 0
    if FULL in needed_kinds:
        scores = attention_scratch_bytes(heads, chunk, context, max(config.layer_head_dims), float_bytes, kv_bits)
    if SLIDING in needed_kinds:
        keys = min(context, config.sliding_window + chunk)
        scores = max(scores, attention_scratch_bytes(heads, chunk, keys, config.head_dim, float_bytes, kv_bits))
    # a chunk's graph rewrites every sliding ring before any old one is released
    ring_copy = sum(2 * min(context, config.sliding_window) * config.layer_kv_heads[i] * config.layer_head_dims[i]
                    * float_bytes for i in owners if config.layer_types[i] == SLIDING)
    # the answer's first steps: float32 logits and log-probabilities of a token and of the next, computed ahead
    answer_logits = 4 * config.vocab_size * 4
    return max(max(activations, scores) + ring_copy, answer_logits)


# MLX's CPU backend runs `mx.fast.rms_norm` and `mx.fast.rope` as composed float32 ops (Metal and CUDA fuse
# them): a chunk's query norm and RoPE then hold about three float32 copies of its queries (measured with
# `mx.get_peak_memory` on the bench model: 6.8 MB for 2.1 MB of float32 queries).
UNFUSED_QUERY_COPIES = 3


def unfused_norm_and_rope() -> bool:
    """Whether MLX runs on its CPU backend here, where the norm and RoPE kernels are not fused."""
    return mx.default_device() == mx.cpu


def attention_scratch_bytes(heads: int, queries: int, keys: int, head_dim: int, float_bytes: int = 2,
                            kv_bits: Optional[int] = None) -> int:
    """Temporaries of one layer's attention for `queries` new tokens over `keys` cached ones.

    One tile (attention.py): the fused kernel's scores and mask. More: the block path holds a tile's
    float32 scores, probabilities and mask, the float32 running output of every query, and for a
    quantized cache one dequantized key and value block.
    """
    if kv_bits is None and queries * keys * heads * 4 <= TILE_BYTES:
        return heads * queries * keys * (float_bytes + 1)
    rows = query_tile(heads, queries)
    block = min(KEY_BLOCK, keys)
    tile = heads * rows * block * 4
    dequantized = 2 * block * head_dim * float_bytes * heads if kv_bits else 0
    return 3 * tile + 2 * heads * queries * head_dim * 4 + dequantized


# Block attention makes a chunk's cost per token flat from about 512 tokens on (`python -m gemma4_mac.bench`
# measured 512 no slower than 2048), while its scratch keeps growing with it: larger chunks buy nothing.
PREFILL_CHUNKS = (512, 256, 128, 64)


def choose_prefill_chunk(config: TextConfig, context: int, budget_bytes: int, candidates=PREFILL_CHUNKS,
                         float_bytes: int = 2, kv_bits: Optional[int] = None) -> int:
    """The largest prefill chunk whose scratch fits `budget_bytes`: speed is traded only when memory is short."""
    for chunk in candidates:
        if prefill_scratch_bytes(config, chunk, context, float_bytes, kv_bits) <= budget_bytes:
            return chunk
    return candidates[-1]


@dataclass
class MemoryPlan:
    """Bytes of each part for one model, context and precision."""

    weights: int
    kv: int
    scratch: int
    chunk: int

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.scratch


def plan(config: TextConfig, context: int, *, weight_bits: Optional[int] = 4, kv_bits: Optional[int] = None,
         chunk: int = 512, weights: Optional[int] = None) -> MemoryPlan:
    """Memory for `context` tokens; `weights` overrides the computed weight bytes (e.g. files on disk)."""
    return MemoryPlan(
        weights=weights if weights is not None else weight_bytes(config, weight_bits),
        kv=kv_bytes(config, context, kv_bits),
        scratch=prefill_scratch_bytes(config, chunk, context),
        chunk=chunk,
    )


def largest_context(config: TextConfig, available_bytes: int, *, weight_bits: Optional[int] = 4,
                    kv_bits: Optional[int] = None, weights: Optional[int] = None,
                    safety_margin: float = DEFAULT_SAFETY_MARGIN, chunk: int = 512) -> int:
    """The longest context (a multiple of 1024, up to the model's maximum) that fits with the margin."""
    usable = int(available_bytes * (1.0 - safety_margin))
    best, low, high = 0, 1, max(1, config.max_position_embeddings // 1024)
    while low <= high:
        mid = (low + high) // 2
        needed = plan(config, mid * 1024, weight_bits=weight_bits, kv_bits=kv_bits, chunk=chunk,
                      weights=weights).total
        if needed <= usable:
            best, low = mid * 1024, mid + 1
        else:
            high = mid - 1
    return best


def variant_table(contexts=(8192, 32768, 131072, 262144), kv_precisions=(None, 8, 4)) -> list[dict]:
    """Rows of (variant, context, KV precision) -> GiB of weights, KV, scratch and total (4-bit weights)."""
    rows = []
    for name, raw in VARIANT_CONFIGS.items():
        config = TextConfig.from_dict({**raw, "max_position_embeddings": 262_144})
        for context in contexts:
            for bits in kv_precisions:
                p = plan(config, context, kv_bits=bits)
                rows.append(dict(variant=name, context=context, kv_bits=bits or 16, weights_gib=p.weights / GIB,
                                 kv_gib=p.kv / GIB, scratch_gib=p.scratch / GIB, total_gib=p.total / GIB))
    return rows


# Longest context each variant was trained for (model cards: E-series 128K, the others 256K).
VARIANT_CONTEXTS = {"E2B": 131_072, "E4B": 131_072, "12B": 262_144, "26B-A4B": 262_144, "31B": 262_144}
MAC_MEMORY_GIB = (8, 16, 24, 32, 48, 64, 128)  # unified memory of the Macs people run these on


def mac_table(kv_bits: Optional[int] = None, sizes=MAC_MEMORY_GIB) -> list[dict]:
    """Per variant: KV bytes per token and the largest context (4-bit weights) on each Mac memory size."""
    rows = []
    for name, raw in VARIANT_CONFIGS.items():
        config = TextConfig.from_dict({**raw, "max_position_embeddings": VARIANT_CONTEXTS[name]})
        contexts = {size: largest_context(config, size * GIB, kv_bits=kv_bits) for size in sizes}
        rows.append(dict(variant=name, kv_bits=kv_bits or 16, weights_gib=weight_bytes(config) / GIB,
                         kv_per_token=kv_bytes_per_token(config, kv_bits), contexts=contexts))
    return rows


def format_mac_table(rows: list[dict]) -> str:
    """The largest context per Mac memory size as aligned text ("-": the weights alone do not fit)."""
    sizes = list(rows[0]["contexts"]) if rows else []
    header = f"{'variant':<9}{'KV':>5}{'KV/token':>10}{'weights':>9}" + "".join(f"{f'{s} GB':>8}"
                                                                              for s in sizes)
    title = f"largest context per Mac (4-bit weights, {DEFAULT_SAFETY_MARGIN:.0%} of memory left to macOS)"
    lines = [title, header, "-" * len(header)]
    for r in rows:
        cells = "".join(f"{(str(c // 1024) + 'K') if c else '-':>8}" for c in r["contexts"].values())
        lines.append(f"{r['variant']:<9}{r['kv_bits']:>4}b{r['kv_per_token'] / 1024:>7.1f}KiB"
                     f"{r['weights_gib']:>8.2f}G{cells}")
    return "\n".join(lines)


def format_table(rows: list[dict]) -> str:
    """The variant table as aligned text."""
    header = f"{'variant':<9}{'context':>9}{'KV':>5}{'weights':>10}{'KV cache':>10}{'scratch':>9}{'total':>9}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['variant']:<9}{r['context'] // 1024:>8}K{r['kv_bits']:>4}b"
                     f"{r['weights_gib']:>9.2f}G{r['kv_gib']:>9.2f}G{r['scratch_gib']:>8.2f}G{r['total_gib']:>8.2f}G")
    return "\n".join(lines)


def split_plan(config: TextConfig, context: int, macs: int, *, weight_bits: Optional[int] = 4,
               kv_bits: Optional[int] = None, chunk: int = 512, weights: Optional[int] = None,
               split: str = "heads") -> MemoryPlan:
    """Memory on each Mac (the one that needs the most) when the model is split across `macs`.

    By heads (mlx_model/sharding.py): the token embeddings, norms and routers on every Mac, the rest
    divided; KV heads divided, or one kept per Mac where there are fewer KV heads than Macs. By layers
    (mlx_model/pipeline.py): runs of whole layers with their KV, the token embeddings on the first Mac, cut
    where the pipeline cuts them. `weights` (bytes on disk) is scaled by the same shares. Scratch is not
    divided (the logits and the hidden states are whole on a Mac)."""
    from .quant_recipe import group_size_for, module_bits

    count = count_text_weights(config)
    k_eq_v = frozenset(i for i in range(config.first_shared_layer)
                       if config.attention_k_eq_v and config.layer_types[i] == FULL)
    n_layers = config.num_hidden_layers
    replicated, divided = count.floats * 2, 0  # norms and scalars stay whole on every Mac
    per_layer, first_only = [0] * n_layers, 0
    for path, in_features, n in text_modules(config):  # at the bits the recipe gives them, as weight_bytes
        chosen = (module_bits(path, weight_bits, n_layers, values_from_keys=k_eq_v)
                  if weight_bits else None)
        group = group_size_for(chosen, weight_bits, 64, in_features) if chosen else 64
        size = quantized_bytes(n, chosen if chosen and in_features % group == 0 else None, group)
        if path.endswith(".embed_tokens") or ".router." in path:  # replicated (mlx_model/sharding.py)
            replicated += size
        else:
            divided += size
        layer = re.search(r"\.layers\.(\d+)\.", path)
        if layer:
            per_layer[int(layer.group(1))] += size
        elif path.endswith(".embed_tokens"):
            first_only += size
        else:  # the per-layer embedding's table and projection: each layer's slots go with it
            per_layer = [b + size // n_layers for b in per_layer]
    whole = replicated + divided
    layer_kv = []
    for i in range(config.first_shared_layer):
        heads = config.layer_kv_heads[i]
        local = heads if split == "layers" else heads // macs if heads % macs == 0 else 1
        sliding = config.layer_types[i] == SLIDING
        tokens = min(context, config.sliding_window) if sliding else -(-context // 256) * 256
        layer_kv.append(2 * quantized_bytes(tokens * local * config.layer_head_dims[i], kv_bits))
    if split == "layers":
        from .pipeline import plan_stages

        stages = plan_stages(per_layer, first_only, config.kv_source_layers(), macs)
        floats = count.floats * 2 // n_layers
        shares = [(sum(per_layer[a:b]) + floats * (b - a) + (first_only if a == 0 else 0),
                   sum(layer_kv[a:min(b, len(layer_kv))])) for a, b in stages]
        per_mac, kv = max(shares, key=sum)
    else:
        per_mac, kv = replicated + -(-divided // macs), sum(layer_kv)
    if weights is not None:
        per_mac = int(weights * per_mac / whole)
    scratch = prefill_scratch_bytes(config, chunk, context)
    return MemoryPlan(weights=per_mac, kv=kv, scratch=scratch, chunk=chunk)


def split_table(macs: int, contexts=(32768, 262144), kv_precisions=(None, 8),
                splits=("heads", "layers")) -> list[dict]:
    """Per variant, context, KV precision and split: GiB on each of `macs` Macs (4-bit weights, the Mac that
    needs the most) and the smallest Mac memory size (of MAC_MEMORY_GIB) that holds it with the margin left
    to macOS. A split the variant cannot take on `macs` Macs is left out."""
    from .sharding import ShardingError

    rows = []
    for name, raw in VARIANT_CONFIGS.items():
        config = TextConfig.from_dict({**raw, "max_position_embeddings": VARIANT_CONTEXTS[name]})
        for context in contexts:
            if context > VARIANT_CONTEXTS[name]:
                continue
            for bits in kv_precisions:
                for split in splits:
                    try:
                        p = split_plan(config, context, macs, kv_bits=bits, split=split)
                    except ShardingError:
                        continue
                    usable = 1 - DEFAULT_SAFETY_MARGIN
                    fits = next((s for s in MAC_MEMORY_GIB if p.total <= s * GIB * usable), None)
                    rows.append(dict(variant=name, context=context, kv_bits=bits or 16, split=split,
                                     weights_gib=p.weights / GIB, kv_gib=p.kv / GIB, total_gib=p.total / GIB,
                                     smallest_mac_gib=fits))
    return rows


def format_split_table(rows: list[dict], macs: int) -> str:
    """`split_table` as aligned text."""
    header = (f"{'variant':<9}{'context':>9}{'KV':>5}{'split':>8}{'weights':>10}{'KV cache':>10}{'total':>9}"
              f"{'smallest Mac':>14}")
    lines = [f"memory on each of {macs} Macs (4-bit weights, the model split across them by heads or by "
             "layers; the Mac that needs the most)", header, "-" * len(header)]
    for r in rows:
        smallest = f"{r['smallest_mac_gib']} GB" if r["smallest_mac_gib"] else "-"
        lines.append(f"{r['variant']:<9}{r['context'] // 1024:>8}K{r['kv_bits']:>4}b{r['split']:>8}"
                     f"{r['weights_gib']:>9.2f}G{r['kv_gib']:>9.2f}G{r['total_gib']:>8.2f}G{smallest:>14}")
    return "\n".join(lines)
