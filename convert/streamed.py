"""Run a model over a few inputs one layer at a time, reading each layer's weights from its files and
dropping them once used, so the float source of a model too big for this Mac can still be the reference.

`StreamedModel(model, weights)` takes a float skeleton (our Model, built from config.json; parameters are
lazy, so nothing is allocated until loaded) and a WeightSource (a quantized model's through
DequantizedWeights). `hidden(rows)` gives each row's final normed hidden states. The big tables are never
loaded whole: the input embeddings gather only the rows of the tokens used, and `head_logits` reads the
output head a slice of the vocabulary at a time. Peak memory: one decoder layer (float32 for the
reference), a few thousand table rows, and one head slice.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from .weights import WeightSource, table_rows

_RELEASED = mx.zeros((0,))
HEAD_ROWS = 16384  # vocabulary rows of the head read and multiplied at once
_TABLES = ("embed_tokens", "embed_tokens_per_layer")


@dataclass
class Row:
    """One input: token ids [L], which positions' predictions to compare, and its picture or sound if any.

    kind: "text", "image" or "audio". media: the arguments of Model.image_features / audio_features
    (pixel_values, position_ids or features, mask), numpy arrays with a batch axis of one, in that order.
    """

    ids: np.ndarray
    scored: np.ndarray
    kind: str = "text"
    media: dict = field(default_factory=dict)


def float_skeleton(config: dict):
    """Our Model for `config` without quantization (lazy parameters)."""
    from mlx_model.model import Model, ModelConfig

    return Model(ModelConfig.from_dict({k: v for k, v in config.items()
                                        if k not in ("quantization", "quantization_config")}))


def read_config(folder: Path) -> dict:
    """config.json of a checkpoint folder."""
    return json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))


class _GatheredEmbedding(nn.Module):
    """Stands in for an embedding table during the input step: only the rows of the tokens in use."""

    def __init__(self, ids: np.ndarray, rows: mx.array):
        super().__init__()
        self._ids, self.rows = ids, rows

    def __call__(self, x: mx.array) -> mx.array:
        return self.rows[mx.array(np.searchsorted(self._ids, np.asarray(x)))]


class StreamedModel:
    """A float model whose weights live in files until the layer that needs them runs."""

    def __init__(self, model, weights: WeightSource, *, float32: bool = False,
                 step: Optional[Callable[[str], None]] = None):
        self.model, self.weights, self.float32 = model, weights, float32
        self.step = step or (lambda _: None)
        params = [name for name, _ in tree_flatten(model.parameters())]
        missing = [n for n in params if n not in weights.names]
        if missing:
            raise KeyError(f"the files lack {len(missing)} tensor(s), e.g. {missing[:3]}")
        lm = "model.language_model."
        self.layer_names = [[n for n in params if n.startswith(f"{lm}layers.{i}.")]
                            for i in range(len(model.language_model.layers))]
        in_layers = {n for names in self.layer_names for n in names}
        self.norm_names = [n for n in params if n.startswith(f"{lm}norm.")]
        self.table_names = {t: f"{lm}{t}.weight" for t in _TABLES if f"{lm}{t}.weight" in params}
        self.head_name = "lm_head.weight" if "lm_head.weight" in params else f"{lm}embed_tokens.weight"
        skip = in_layers | set(self.norm_names) | set(self.table_names.values()) | {self.head_name}
        self.input_names = [n for n in params if n not in skip]

    @contextmanager
    def loaded(self, names: list[str]) -> Iterator[None]:
        """The parameters `names` read into the model for the duration of the block, then released."""
        arrays = self.weights.read(names)
        if self.float32:
            arrays = {k: v.astype(mx.float32) if mx.issubdtype(v.dtype, mx.floating) else v
                      for k, v in arrays.items()}
        self.model.load_weights(list(arrays.items()), strict=False)
        del arrays
        try:
            yield
        finally:
            self.model.load_weights([(name, _RELEASED) for name in names], strict=False)
            mx.clear_cache()

    @contextmanager
    def _gathered_tables(self, rows: list[Row]) -> Iterator[None]:
        """The embedding tables replaced by the rows of the tokens in `rows` (plus pad) for the block."""
        lm = self.model.language_model
        vocab = self.model.config.text_config.vocab_size
        pad = self.model.config.text_config.pad_token_id or 0
        ids = np.unique(np.concatenate([r.ids for r in rows] + [[pad]]))
        ids = ids[ids < vocab]  # multimodal placeholders become pad before any lookup
        originals = {}
        for table, name in self.table_names.items():
            reader = table_rows(self.weights, name)
            gathered = mx.concatenate([reader(int(i), int(i) + 1) for i in ids], axis=0)
            mx.eval(gathered)
            originals[table] = getattr(lm, table)
            setattr(lm, table, _GatheredEmbedding(ids, gathered))
        try:
            yield
        finally:
            for table, module in originals.items():
                setattr(lm, table, module)

    def _inputs(self, row: Row) -> tuple[mx.array, Optional[mx.array]]:
        model, lm = self.model, self.model.language_model
        ids = mx.array(row.ids[None])
        if row.kind == "text":
            embeds = lm.embed(ids)
            tokens = lm.per_layer_token_inputs(ids) if lm.ple_dim else None
        else:
            arrays = [mx.array(value) for value in row.media.values()]
            features = model.image_features(*arrays) if row.kind == "image" else model.audio_features(*arrays)
            embeds, tokens = model.embed_multimodal(ids, **{f"{row.kind}_features": features})
        if self.float32:  # the table rows are exact in float32; the scaling is then done in float32 too
            embeds = embeds.astype(mx.float32)
            tokens = tokens.astype(mx.float32) if tokens is not None else None
        per_layer = lm.project_per_layer_inputs(embeds, tokens) if lm.ple_dim else None
        mx.eval(embeds, per_layer)
        return embeds, per_layer

    def _masks(self, row: Row) -> tuple[dict, set]:
        """The row's masks per layer type and the types whose mask is custom (`TextModel.make_masks`)."""
        from mlx_model.image_processor import mm_token_type_ids
        from mlx_model.model import vision_block_ids

        lm, config = self.model.language_model, self.model.config
        overrides = None
        if row.kind == "image" and config.text_config.use_bidirectional_attention == "vision":
            types = mm_token_type_ids(row.ids[None], config.image_token_id, config.video_token_id,
                                      config.audio_token_id)
            overrides = {"vision_blocks": vision_block_ids(mx.array(types))}
        return lm.make_masks(len(row.ids), [None] * len(lm.layers), overrides)

    def hidden(self, rows: list[Row]) -> list[mx.array]:
        """Final normed hidden states [L, hidden] of each row (TextModel.__call__, a layer at a time; rows run
        one by one inside each layer, so no padding is computed)."""
        lm = self.model.language_model
        self.step("inputs")
        with self._gathered_tables(rows), self.loaded(self.input_names):
            states = [self._inputs(row) for row in rows]
        hidden = [h for h, _ in states]
        per_layer = [p for _, p in states]
        masks = [self._masks(row) for row in rows]
        shared_sources = {s for i, s in enumerate(lm.kv_sources) if s != i}
        kvs: list[list] = [[None] * len(lm.layers) for _ in rows]
        for i, layer in enumerate(lm.layers):
            self.step(f"layer {i + 1} of {len(lm.layers)}")
            source = lm.kv_sources[i]
            with self.loaded(self.layer_names[i]):
                for r in range(len(rows)):
                    ple = per_layer[r][:, :, i, :] if per_layer[r] is not None else None
                    shared = kvs[r][source] if source != i else None
                    layer_masks, custom = masks[r]
                    hidden[r], kv = layer(hidden[r], layer_masks[layer.layer_type], None, ple, shared, 0,
                                          layer.layer_type in custom)
                    if i in shared_sources:
                        kvs[r][i] = kv  # a later KV-shared layer attends to these
                    kept = kvs[r][i]
                    mx.eval(hidden[r], [(span.keys, span.values) for span in kept.spans] if kept else [])
        with self.loaded(self.norm_names):
            hidden = [lm.norm(h)[0] for h in hidden]
            mx.eval(hidden)
        return hidden

    @property
    def vocab_size(self) -> int:
        return self.model.config.text_config.vocab_size

    def head_reader(self) -> Callable[[mx.array, int, int], mx.array]:
        """A function (hidden [N, hidden], start, stop) -> float32 logits [N, stop - start] (softcapped),
        reading those rows of the output head from the files."""
        from mlx_model.layers import softcap

        rows = table_rows(self.weights, self.head_name)
        cap = self.model.config.text_config.final_logit_softcapping

        def logits(hidden: mx.array, start: int, stop: int) -> mx.array:
            product = matmul_transposed(hidden.astype(mx.float32), rows(start, stop).astype(mx.float32))
            return softcap(product, cap)

        return logits


def matmul_transposed(x: mx.array, weight: mx.array) -> mx.array:
    """x @ weight.T in float32. On MLX's CPU backend the product runs in numpy, whose BLAS is about 15x faster
    than the reference BLAS that MLX's Linux wheels link."""
    if mx.default_device() == mx.cpu:
        return mx.array(np.asarray(x) @ np.asarray(weight).T)
    return x @ weight.T
