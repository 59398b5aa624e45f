"""Pipeline parallelism: one Gemma model across the ranks of an `mx.distributed` group, split by layers.

Rank r runs a contiguous run of layers and sends its hidden states on to rank r + 1 (`mx.distributed.send`);
the last rank sends them back to rank 0, which holds the token embeddings (the tied LM head), the final norm
and the vision/audio towers, and makes the logits. Per token and boundary that is one hidden vector, where
tensor parallelism (sharding.py) sums two per layer: the split for slow links (Ethernet, Wi-Fi). The ranks
work one after the other, so it pools memory, not speed.
- KV-shared layers (E2B/E4B) stay on the rank of the layers whose keys and values they read: no cut falls
  between a shared layer and its source.
- PLE: each rank keeps its own layers' slots of the per-layer table and projection; the input embeddings
  travel with the hidden states, since the projection half of every layer's input reads them.
- Caches: each rank caches its own layers only; the other layers get a `RemoteLayerCache` that keeps their
  position, so the cache operations rank 0 mirrors to the followers stay index for index.
- Cuts balance the weight bytes of the ranks, rank 0's embeddings and towers included.
"""

from __future__ import annotations

from typing import Optional

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .cache import _LayerCache
from .config import SLIDING
from .sharding import Cut, ShardingError, cut_module


class Stage:
    """This rank's run of layers, [start, stop), and its place in the pipeline."""

    def __init__(self, group: mx.distributed.Group, start: int, stop: int, ple: bool):
        self.group, self.rank, self.size = group, group.rank(), group.size()
        self.start, self.stop, self.ple = start, stop, ple
        self.wire: Optional[mx.Dtype] = None  # the hidden states' dtype on the link (the final norm's)

    @property
    def first(self) -> bool:
        return self.rank == 0

    def _dtype(self) -> mx.Dtype:
        if self.wire is None:
            raise RuntimeError("the pipeline stage has no link dtype: load the model's weights first")
        return self.wire

    def receive(self, batch: int, length: int, hidden: int) -> tuple[mx.array, Optional[mx.array]]:
        """(ranks after the first) The previous rank's hidden states and, with PLE, the input embeddings."""
        width = hidden * (2 if self.ple else 1)
        got = mx.distributed.recv((batch, length, width), self._dtype(), self.rank - 1, group=self.group)
        return (got[..., :hidden], got[..., hidden:]) if self.ple else (got, None)

    def hand_on(self, h: mx.array, embeds: Optional[mx.array], keep: int) -> mx.array:
        """Send this rank's result on. Rank 0 gets back the last rank's hidden states (the last `keep`
        positions, all with 0) and returns them; the other ranks return what they sent.

        Evaluated here, on every rank: the link carries the messages of each forward pass in the order
        of the calls, whenever (or whether) a caller evaluates their results.
        """
        wire = self._dtype()
        if self.rank == self.size - 1:
            sent = mx.distributed.send((h[:, -keep:] if keep else h).astype(wire), 0, group=self.group)
            mx.eval(sent)
            return sent
        out = mx.concatenate([h, embeds], axis=-1) if self.ple else h
        sent = mx.distributed.send(out.astype(wire), self.rank + 1, group=self.group)
        mx.eval(sent)  # before the receive: MLX could otherwise wait for the answer first and never send
        if not self.first:
            return sent
        length = keep or h.shape[1]
        back = mx.distributed.recv((h.shape[0], length, h.shape[2]), wire, self.size - 1, group=self.group)
        mx.eval(back)
        return back


class RemoteLayerCache(_LayerCache):
    """Stands in for a layer cache another rank holds: the position only, no keys or values. Rank 0 mirrors
    every cache operation to the followers by index; this answers them as the real cache would."""

    def __init__(self, window: Optional[int] = None):
        super().__init__(step=0)
        self.window = window

    def skip(self, n_tokens: int) -> None:
        """The tokens the real cache took on its rank during this forward pass."""
        self.offset += n_tokens

    @property
    def state(self):
        return []

    @property
    def meta_state(self):
        return ()

    def size(self) -> int:
        return self.offset if self.window is None else min(self.offset, self.window)

    def held(self):
        return None

    def is_trimmable(self) -> bool:
        return self.window is None or self.offset < self.window

    def checkpoint(self) -> int:
        return self.offset

    def restore(self, checkpoint: int) -> None:
        self.offset = checkpoint


class RemoteFullCache(RemoteLayerCache):
    """Stands in for a full-attention cache, which (unlike a sliding one) reserves room for a prompt."""

    def reserve(self, n_tokens: int) -> None:
        """Nothing to reserve here; rank 0's call is mirrored to the rank that holds the layer."""


class RemoteLayer(nn.Module):
    """A layer another rank runs: no weights, only what the model reads of every layer."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer_type, self.enable_moe, self.has_ple = layer.layer_type, layer.enable_moe, layer.has_ple

    def __call__(self, *args, **kwargs):
        raise RuntimeError("this layer runs on another rank of the pipeline")


def valid_cuts(kv_sources: list[int]) -> list[int]:
    """Layer indices where a stage may begin: no KV-shared layer is cut off from the layer it reads."""
    return [b for b in range(1, len(kv_sources))
            if all((i < b) == (source < b) for i, source in enumerate(kv_sources))]


def _bytes(module: nn.Module) -> int:
    return sum(v.nbytes for _, v in tree_flatten(module.parameters()))


def layer_bytes(model) -> tuple[list[int], int]:
    """Weight bytes of each layer (its PLE slots included) and of what only rank 0 holds."""
    lm = model.language_model
    layers = [_bytes(layer) for layer in lm.layers]
    table = _bytes(lm.embed_tokens_per_layer) + _bytes(lm.per_layer_model_projection) if lm.ple_dim else 0
    return [b + table // len(layers) for b in layers], _bytes(model) - sum(layers) - table


def plan_stages(per_layer: list[int], rank0_extra: int, kv_sources: list[int], size: int) -> list[tuple[int, int]]:
    """[start, stop) of each rank's layers: contiguous, cut only where `valid_cuts` allows, minimising the
    largest rank's bytes (rank 0 also holds `rank0_extra`)."""
    n = len(per_layer)
    cuts = valid_cuts(kv_sources)
    if len(cuts) < size - 1:
        raise ShardingError(f"this model's {n} layers can be cut into at most {len(cuts) + 1} runs (KV-shared "
                            f"layers stay with the layers they read); run it on {len(cuts) + 1} Macs or fewer.")
    prefix = [0]
    for b in per_layer:
        prefix.append(prefix[-1] + b)
    ends = cuts + [n]  # where a stage may end
    # best[k][j]: the smallest largest-stage bytes of layers [0, ends[j]) cut into k stages; back: the cut
    best = [[float("inf")] * len(ends) for _ in range(size + 1)]
    back = [[0] * len(ends) for _ in range(size + 1)]
    for j, end in enumerate(ends):
        best[1][j] = prefix[end] + rank0_extra
    for k in range(2, size + 1):
        for j, end in enumerate(ends):
            for i in range(j):  # the k-th stage is [ends[i], end)
                cost = max(best[k - 1][i], prefix[end] - prefix[ends[i]])
                if cost < best[k][j]:
                    best[k][j], back[k][j] = cost, i
    stages, j = [], len(ends) - 1
    for k in range(size, 1, -1):
        i = back[k][j]
        stages.append((ends[i], ends[j]))
        j = i
    stages.append((0, ends[j]))
    return stages[::-1]


def pipeline_model(model, group: mx.distributed.Group) -> dict[str, Cut]:
    """Keep this rank's layers only (the others become `RemoteLayer`s), rank 0's embeddings, head and towers
    on rank 0 only, and this rank's slots of the per-layer embedding; returns the plan of the split PLE
    tensors (module path -> Cut) for the loader. Run before the weights are loaded."""
    rank, size = group.rank(), group.size()
    lm = model.language_model
    per_layer, rank0 = layer_bytes(model)
    start, stop = plan_stages(per_layer, rank0, list(lm.kv_sources), size)[rank]
    for i in range(len(lm.layers)):
        if not start <= i < stop:
            lm.layers[i] = RemoteLayer(lm.layers[i])
    if rank:
        del lm.embed_tokens
        if "lm_head" in model:
            del model.lm_head
        inner = model.model
        for tower in ("vision_tower", "embed_vision", "audio_tower", "embed_audio", "vision_embedder",
                      "audio_embedder"):
            if tower in inner:
                delattr(inner, tower)
    plan: dict[str, Cut] = {}
    if lm.ple_dim:
        slots = ((start * lm.ple_dim, stop * lm.ple_dim),)
        prefix = "model.language_model"
        plan[f"{prefix}.embed_tokens_per_layer"] = Cut(-1, slots)
        plan[f"{prefix}.per_layer_model_projection"] = Cut(-2, slots)
        for name, cut in plan.items():
            cut_module(getattr(lm, name.rsplit(".", 1)[1]), cut)
        lm.ple_layers = stop - start
    lm.stage = Stage(group, start, stop, bool(lm.ple_dim))
    return plan


def remote_cache(layer_type: str, window: int) -> RemoteLayerCache:
    """The stand-in for a cache of a layer of `layer_type` held by another rank."""
    return RemoteLayerCache(window) if layer_type == SLIDING else RemoteFullCache()
