"""GGUF files (Gemma 3 / Gemma 4 text models) as a conversion source.

Tensors are dequantized with the `gguf` package one at a time, in row chunks, renamed to HF names
(gguf_names), un-shifted where llama.cpp stored Gemma 3 norms as weight + 1, and passed through
`Model.sanitize` into our layout.
"""

from __future__ import annotations


import mlx.core as mx
import numpy as np

from .errors import GGUFFormatError
from .gguf_names import adds_one_to_norms, hf_name, is_split_expert_part
from .gguf_reader import GGUFFile
from .progress import Reporter
from .sink import Sanitize, TensorSink, probe_sanitize


class _Rows:
    """Reads rows of one GGUF tensor as float32 MLX arrays, undoing the Gemma 3 norm shift."""

    def __init__(self, gguf: GGUFFile, name: str, minus_one: bool):
        self.gguf, self.name, self.minus_one = gguf, name, minus_one

    def __call__(self, start: int, stop: int) -> mx.array:
        info = self.gguf.tensors[self.name]
        if len(info.shape) == 1:
            values = self.gguf.read_rows_1d(self.name)[start:stop]
        else:
            values = self.gguf.read_rows(self.name, start, stop)
        if self.minus_one:
            values = values - np.float32(1.0)
        return mx.array(values)

    def whole(self) -> mx.array:
        shape = self.gguf.tensors[self.name].shape
        return self(0, shape[0] if shape else 1)


def convert_gguf_tensors(gguf: GGUFFile, sanitize: Sanitize, sink: TensorSink, reporter: Reporter) -> None:
    """Stream every tensor of `gguf` into `sink`."""
    source = gguf.path.name
    total = sum(info.nbytes for info in gguf.tensors.values())
    done = 0
    pending_experts: dict[str, mx.array] = {}
    for name, info in gguf.tensors.items():
        reporter.report("convert", done, total, item=name, message=f"Converting {name}")
        done += info.nbytes
        if is_split_expert_part(name):
            _join_expert_parts(gguf, name, pending_experts, sanitize, sink)
            continue
        try:
            target = hf_name(name)
        except KeyError:
            sink.unexpected.append((name, source))
            continue
        if target is None:
            continue  # derived by llama.cpp (rope_freqs): config.json carries it
        rows = _Rows(gguf, name, adds_one_to_norms(gguf.architecture, target))
        used, final_name = probe_sanitize(sanitize, target, info.shape)
        if not used:
            continue  # the model does not use it (e.g. KV-shared layers' projections)
        if final_name is not None:  # only renamed: stream its row chunks
            sink.add_rows(final_name, info.shape, rows, source)
        else:
            for final_name, array in sanitize({target: rows.whole()}).items():
                sink.add(final_name, array, source)
        sink.raise_unexpected()
    if pending_experts:
        raise GGUFFormatError(f"{source}: expert tensors {sorted(pending_experts)} lack their gate/up partner "
                              "(ffn_gate_exps/ffn_up_exps come in pairs). The file is incomplete.")
    sink.raise_unexpected()
    reporter.report("convert", total, total, message="Weights converted")


def _join_expert_parts(gguf: GGUFFile, name: str, pending: dict[str, mx.array], sanitize: Sanitize,
                       sink: TensorSink) -> None:
    """ffn_gate_exps + ffn_up_exps -> experts.gate_up_proj [E, 2I, H], gate rows first (HF layout)."""
    block = name.rsplit(".", 2)[0]  # blk.N
    pending[name] = mx.array(gguf.read(name))
    gate, up = f"{block}.ffn_gate_exps.weight", f"{block}.ffn_up_exps.weight"
    if gate in pending and up in pending:
        joined = mx.concatenate([pending.pop(gate), pending.pop(up)], axis=1)
        target = hf_name(f"{block}.ffn_gate_up_exps.weight")
        for final_name, array in sanitize({target: joined}).items():
            sink.add(final_name, array, gguf.path.name)
