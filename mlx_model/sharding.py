"""Tensor parallelism: one Gemma model across the ranks of an `mx.distributed` group (mlx-lm's `shard`).

Every rank runs every layer on a slice of its weights; the partial results meet in one `all_sum` per block:
- attention: query heads split evenly, KV heads the same way, so each rank's KV cache holds only its heads.
  With fewer KV heads than ranks (E2B has one) each rank keeps the KV head its query heads read.
  `o_proj` is split by input columns and summed.
- MLP: `gate_proj`/`up_proj` split by output rows, `down_proj` by input columns, on quantization-group
  boundaries (so the 26B's 2112-wide MLP splits 1088/1024 at group size 64).
- MoE: the experts split across ranks (expert parallel), the router replicated; each rank runs the routed
  tokens through its own experts and the two halves of the block share one `all_sum`.
- PLE: the per-layer embedding table (the largest tensor of E2B/E4B) and its projections split by columns of
  every layer's slot; the projection norm sums its squares over the ranks.
- Token embeddings (tied LM head), norms, router and the vision/audio towers stay replicated.

Modules keep their classes and weight names (a sliced `nn.Linear`/`QuantizedLinear` computes its part as is),
so quantization and weight loading work unchanged; `plan_shards` says which slice of each tensor a rank holds,
and the loader reads just that slice from the safetensors files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import mlx.core as mx
import mlx.nn as nn

from .config import SLIDING


class ShardingError(ValueError):
    """The model cannot be split across this many ranks; the message says which sizes do not divide."""


@dataclass(frozen=True)
class Cut:
    """The slice of one module's weights a rank keeps: `pieces` ((start, stop), ...) of the unquantized weight
    along `axis` (-1 input columns, -2 output rows, -3 experts), concatenated in order."""

    axis: int
    pieces: tuple

    @property
    def size(self) -> int:
        return sum(stop - start for start, stop in self.pieces)


def even_range(total: int, rank: int, size: int, align: int = 1, what: str = "") -> tuple[int, int]:
    """Rank's share of `total`, cut on multiples of `align`; the first ranks take a unit more when uneven."""
    if total % align or total // align < size:
        raise ShardingError(f"{what} of width {total} cannot be split across {size} ranks in whole blocks "
                            f"of {align}; run on fewer Macs (or a checkpoint with a smaller quantization "
                            "group).")
    base, extra = divmod(total // align, size)
    start = rank * base + min(rank, extra)
    return start * align, (start + base + (rank < extra)) * align


def head_ranges(n_heads: int, n_kv_heads: int, rank: int, size: int, where: str):
    """(query heads, KV heads) ranges this rank keeps for grouped-query attention."""
    if n_heads % size:
        raise ShardingError(f"{where} has {n_heads} attention heads, which do not split evenly across {size} "
                            f"ranks; use a number of Macs that divides {n_heads}.")
    per_rank = n_heads // size
    queries = (rank * per_rank, (rank + 1) * per_rank)
    if n_kv_heads % size == 0:
        kv_per_rank = n_kv_heads // size
        return queries, (rank * kv_per_rank, (rank + 1) * kv_per_rank)
    if size % n_kv_heads == 0:  # every rank's query heads read one KV head: it keeps a copy of that one
        kv = queries[0] // (n_heads // n_kv_heads)
        return queries, (kv, kv + 1)
    raise ShardingError(f"{where} has {n_kv_heads} key/value heads; {size} ranks need a count that "
                        f"divides or is divided by {size}. Use {n_kv_heads} Macs or a divisor of it.")


def _quant_group(model, path: str) -> int:
    """The quantization group size of the module at `path` (1 when it is not quantized)."""
    return getattr(_module(model, path), "group_size", None) or 1


def _module(model, path: str) -> nn.Module:
    module = model
    for part in path.split("."):
        module = module[int(part)] if isinstance(module, list) else getattr(module, part)
    return module


def plan_shards(model, rank: int, size: int) -> dict[str, Cut]:
    """Module path -> the Cut rank keeps of its weights, for a model that has not been sharded yet."""
    text = model.config.text_config
    lm = model.language_model
    prefix = "model.language_model"
    plan: dict[str, Cut] = {}
    for i, layer in enumerate(lm.layers):
        path, attn = f"{prefix}.layers.{i}", layer.self_attn
        kind = "sliding" if attn.layer_type == SLIDING else "full"
        queries, kv = head_ranges(attn.n_heads, attn.n_kv_heads, rank, size, f"layer {i} ({kind} attention)")
        hd = attn.head_dim
        plan[f"{path}.self_attn.q_proj"] = Cut(-2, ((queries[0] * hd, queries[1] * hd),))
        plan[f"{path}.self_attn.o_proj"] = Cut(-1, ((queries[0] * hd, queries[1] * hd),))
        if attn.has_kv:
            for name in ("k_proj",) if attn.k_eq_v else ("k_proj", "v_proj"):
                plan[f"{path}.self_attn.{name}"] = Cut(-2, ((kv[0] * hd, kv[1] * hd),))
        width = layer.mlp.gate_proj.weight.shape[0]
        cols = even_range(width, rank, size, _quant_group(model, f"{path}.mlp.down_proj"), f"layer {i}'s MLP")
        for name in ("gate_proj", "up_proj"):
            plan[f"{path}.mlp.{name}"] = Cut(-2, (cols,))
        plan[f"{path}.mlp.down_proj"] = Cut(-1, (cols,))
        if layer.enable_moe:
            experts = even_range(text.num_experts, rank, size, 1, f"layer {i}'s expert bank")
            for name in ("gate_up_proj", "down_proj"):
                plan[f"{path}.experts.{name}"] = Cut(-3, (experts,))
    if lm.ple_dim:
        align = max(_quant_group(model, f"{prefix}.{name}") for name in
                    ("embed_tokens_per_layer", "per_layer_model_projection"))
        align = max([align] + [_quant_group(model, f"{prefix}.layers.{i}.per_layer_projection")
                               for i in range(len(lm.layers))])
        cols = even_range(lm.ple_dim, rank, size, align, "the per-layer embedding")
        slots = tuple((layer * lm.ple_dim + cols[0], layer * lm.ple_dim + cols[1])
                      for layer in range(len(lm.layers)))
        plan[f"{prefix}.embed_tokens_per_layer"] = Cut(-1, slots)
        plan[f"{prefix}.per_layer_model_projection"] = Cut(-2, slots)
        plan[f"{prefix}.per_layer_projection_norm"] = Cut(-1, (cols,))
        for i in range(len(lm.layers)):
            plan[f"{prefix}.layers.{i}.per_layer_input_gate"] = Cut(-2, (cols,))
            plan[f"{prefix}.layers.{i}.per_layer_projection"] = Cut(-1, (cols,))
    return plan


def cut_tensor(tensor, kind: str, cut: Cut, bits: Optional[int] = None, group_size: Optional[int] = None,
               take: Optional[Callable] = None):
    """Rank's slice of one of a module's tensors (`kind` weight, scales, biases or bias).

    Quantized tensors are packed along their last axis, so column cuts are rescaled to their units.
    `take(tensor, axis, start, stop)` reads one piece (array slicing by default; the loader reads files).
    """
    take = take or _take
    axis, scale = cut.axis, 1
    if kind == "bias":
        if axis != -2:
            raise ShardingError("a layer with a bias cannot be split by input columns; such checkpoints "
                                "cannot be sharded.")
        axis = -1
    elif axis == -1 and bits:
        scale = group_size if kind in ("scales", "biases") else 32 / bits
    pieces = []
    for start, stop in cut.pieces:
        if start % scale or stop % scale:
            raise ShardingError(f"a {start}:{stop} column cut does not fall on the quantization blocks "
                                f"({bits} bits, groups of {group_size}); use fewer ranks.")
        pieces.append(take(tensor, axis, int(start // scale), int(stop // scale)))
    return pieces[0] if len(pieces) == 1 else mx.concatenate(pieces, axis=axis)


def cut_module(module: nn.Module, cut: Cut) -> None:
    """Keep `cut` of a module's weight (and scales, biases, bias), in memory or still lazy before loading."""
    bits, group_size = getattr(module, "bits", None), getattr(module, "group_size", None)
    for kind in ("weight", "scales", "biases", "bias"):
        if kind in module and isinstance(module[kind], mx.array):
            module[kind] = cut_tensor(module[kind], kind, cut, bits, group_size)
    if isinstance(module, nn.QuantizedEmbedding):
        module.dims = cut.size


def _take(tensor: mx.array, axis: int, start: int, stop: int) -> mx.array:
    index = [slice(None)] * tensor.ndim
    index[axis] = slice(start, stop)
    return tensor[tuple(index)]


def shard_model(model, group: mx.distributed.Group) -> dict[str, Cut]:
    """Keep this rank's slice of every split weight (in memory, or still lazy before loading) and switch on
    the collectives; returns the plan so a loader can read the same slices from the checkpoint."""
    rank, size = group.rank(), group.size()
    if size == 1:
        return {}
    text = model.config.text_config
    if text.attention_bias:
        raise ShardingError("this checkpoint's attention layers have biases, which tensor parallelism here "
                            "does not split; run it on one Mac.")
    plan = plan_shards(model, rank, size)
    for path, cut in plan.items():
        cut_module(_module(model, path), cut)
    lm = model.language_model
    for i, layer in enumerate(lm.layers):
        attn = layer.self_attn
        attn.n_kv_heads = attn.n_kv_heads // size if attn.n_kv_heads % size == 0 else 1
        attn.n_heads //= size
        attn.group = group
        if layer.enable_moe:
            first, stop = plan[f"model.language_model.layers.{i}.experts.down_proj"].pieces[0]
            layer.experts.first_expert, layer.experts.local_experts = first, stop - first
            layer.group = group  # sums the dense MLP and the experts together
        else:
            layer.mlp.group = group
        if layer.has_ple:
            layer.group = group
    if lm.ple_dim:
        lm.ple_local = plan["model.language_model.per_layer_projection_norm"].size
        lm.ple_group = group
    return plan
