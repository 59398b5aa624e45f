"""Named weights of a model read on demand, a few at a time: the quality check and calibration run a model
layer by layer from its files instead of loading it whole.

Names are our model's parameter names (after `Model.sanitize`). A checkpoint folder (Hugging Face or our
own output) is memory-mapped lazily by `mx.load`, so only the tensors asked for are read; a GGUF file is
dequantized a tensor at a time. `rows(name)` reads rows of a big table (embeddings, head) without the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Optional, Protocol

import mlx.core as mx

from .errors import UnsupportedSourceError
from .gguf_names import adds_one_to_norms, hf_name, is_split_expert_part
from .gguf_reader import GGUFFile
from .gguf_source import _Rows
from .hf_source import safetensors_layout
from .safetensors_rows import SafetensorsRows
from .sink import Sanitize, probe_sanitize

RowReader = Callable[[int, int], mx.array]


class WeightSource(Protocol):
    """Parameters by name, read when asked."""

    names: set[str]

    def read(self, names: Iterable[str]) -> dict[str, mx.array]:
        """The (possibly lazy) arrays of `names`."""

    def rows(self, name: str) -> Optional[RowReader]:
        """A reader of rows [start, stop) of `name` (stored dtype), or None when it must be read whole."""


def _targets(sanitize: Sanitize, name: str, shape) -> list[str]:
    """The names tensor `name` becomes after sanitize, found with a free lazy placeholder."""
    return list(sanitize({name: mx.zeros(tuple(shape), dtype=mx.float32)}))


class FolderWeights:
    """The safetensors shards of a checkpoint folder (hub layout or ours)."""

    def __init__(self, folder: Path, sanitize: Sanitize):
        self.sanitize = sanitize
        self._where: dict[str, tuple[Path, str]] = {}
        self._layout: dict[Path, tuple[dict, int]] = {}
        files = sorted(Path(folder).glob("*.safetensors"))
        if not files:
            raise UnsupportedSourceError(f"{folder} holds no .safetensors weights.")
        for file in files:
            header, start = self._layout[file] = safetensors_layout(file)
            for name, entry in header.items():
                for target in _targets(sanitize, name, entry["shape"]):
                    self._where[target] = (file, name)
        self.names = set(self._where)

    def read(self, names: Iterable[str]) -> dict[str, mx.array]:
        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self._where[name][0], []).append(name)
        out = {}
        for file, wanted in by_file.items():
            lazy = mx.load(str(file))  # a tensor's bytes are read only when it is evaluated
            for target in wanted:
                source_name = self._where[target][1]
                out[target] = self.sanitize({source_name: lazy[source_name]})[target]
        return out

    def rows(self, name: str) -> Optional[RowReader]:
        file, source_name = self._where[name]
        header, start = self._layout[file]
        entry = header[source_name]
        renamed_only = probe_sanitize(self.sanitize, source_name, tuple(entry["shape"]))[1] == name
        if not renamed_only or len(entry["shape"]) < 2:
            return None  # sanitize changes its values
        return SafetensorsRows(file, source_name, entry, start)


class GGUFWeights:
    """The tensors of a GGUF file, dequantized to float32 one at a time (split expert pairs joined)."""

    def __init__(self, path: Path, sanitize: Sanitize):
        self.gguf, self.sanitize = GGUFFile(path), sanitize
        self._where: dict[str, tuple[str, ...]] = {}
        for name, info in self.gguf.tensors.items():
            if is_split_expert_part(name):
                block = name.rsplit(".", 2)[0]
                if not name.endswith("ffn_gate_exps.weight"):
                    continue  # the pair is recorded once, under its gate half
                joined = hf_name(f"{block}.ffn_gate_up_exps.weight")
                shape = (info.shape[0], 2 * info.shape[1], *info.shape[2:])
                for target in _targets(sanitize, joined, shape):
                    self._where[target] = ("experts", name, f"{block}.ffn_up_exps.weight", joined)
                continue
            try:
                hf = hf_name(name)
            except KeyError:
                continue  # the conversion already refused unknown tensors
            if hf is None:
                continue
            for target in _targets(sanitize, hf, info.shape):
                self._where[target] = ("tensor", name, hf)
        self.names = set(self._where)

    def _reader(self, name: str, hf: str) -> _Rows:
        return _Rows(self.gguf, name, adds_one_to_norms(self.gguf.architecture, hf))

    def read(self, names: Iterable[str]) -> dict[str, mx.array]:
        out = {}
        for target in names:
            entry = self._where[target]
            if entry[0] == "experts":
                _, gate, up, hf = entry
                value = mx.concatenate([mx.array(self.gguf.read(gate)), mx.array(self.gguf.read(up))], axis=1)
            else:
                _, name, hf = entry
                value = self._reader(name, hf).whole()
            out[target] = self.sanitize({hf: value})[target]
        return out

    def rows(self, name: str) -> Optional[RowReader]:
        entry = self._where[name]
        if entry[0] != "tensor":
            return None
        _, gguf_name, hf = entry
        shape = self.gguf.tensors[gguf_name].shape
        if len(shape) < 2 or probe_sanitize(self.sanitize, hf, shape)[1] != name:
            return None
        return self._reader(gguf_name, hf)


class DequantizedWeights:
    """A quantized model's weights as floats: dequantize(weight, scales, biases), in the scales' dtype.

    The same function as the quantized modules compute, run by float matmuls a layer at a time (MLX's CPU
    backend has no fast quantized kernels). Bits and group size follow from the shapes, as mlx-lm infers them.
    """

    def __init__(self, inner: WeightSource, float_shapes: dict[str, tuple[int, ...]]):
        self.inner = inner
        self.names = {name for name in float_shapes if name in inner.names}
        self.float_shapes = float_shapes

    def _quantized(self, name: str) -> bool:
        return name.endswith(".weight") and name[: -len("weight")] + "scales" in self.inner.names

    def _dequantize(self, name: str, weight: mx.array, scales: mx.array,
                    biases: Optional[mx.array]) -> mx.array:
        in_dims = self.float_shapes[name][-1]
        group_size, bits = in_dims // scales.shape[-1], weight.shape[-1] * 32 // in_dims
        return mx.dequantize(weight, scales, biases, group_size=group_size, bits=bits).astype(scales.dtype)

    def read(self, names: Iterable[str]) -> dict[str, mx.array]:
        names = list(names)
        quantized = [n for n in names if self._quantized(n)]
        extra = [n[: -len("weight")] + part for n in quantized for part in ("scales", "biases")]
        arrays = self.inner.read(names + [n for n in extra if n in self.inner.names])
        for name in quantized:
            module = name[: -len("weight")]
            arrays[name] = self._dequantize(name, arrays[name], arrays.pop(module + "scales"),
                                            arrays.pop(module + "biases", None))
        return {name: arrays[name] for name in names}

    def rows(self, name: str) -> Optional[RowReader]:
        if not self._quantized(name):
            return self.inner.rows(name)
        module = name[: -len("weight")]
        parts = [self.inner.rows(name), self.inner.rows(module + "scales")]
        if module + "biases" in self.inner.names:
            parts.append(self.inner.rows(module + "biases"))
        if any(part is None for part in parts):
            return None

        def read(start: int, stop: int) -> mx.array:
            arrays = [part(start, stop) for part in parts]
            return self._dequantize(name, arrays[0], arrays[1], arrays[2] if len(arrays) > 2 else None)

        return read


def table_rows(weights: WeightSource, name: str) -> RowReader:
    """Rows of table `name`: read a chunk at a time where the source allows, else the whole table once."""
    reader = weights.rows(name)
    if reader is not None:
        return reader
    whole = weights.read([name])[name]
    return lambda start, stop: whole[start:stop]
