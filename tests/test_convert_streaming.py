"""Quantized weights are read from safetensors shards a chunk of rows at a time (convert/safetensors_rows.py):
the rows equal what `mx.load` reads, damaged files are named, and the output equals quantizing whole tensors."""

from __future__ import annotations

import pytest

import mlx.core as mx

from convert import CheckpointIndexError
from convert.hf_source import safetensors_layout
from convert.quantize import QuantParams, quantize_weight, row_chunks
from convert.safetensors_rows import SafetensorsRows


@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16, mx.float32])
def test_rows_equal_what_mlx_reads(tmp_path, dtype):
    path = tmp_path / "shard.safetensors"
    tensors = {"a.weight": mx.random.normal((37, 64)).astype(dtype), "b.weight": mx.random.normal((5, 3, 8)).astype(dtype),
               "c.bias": mx.random.normal((64,)).astype(dtype)}
    mx.save_safetensors(str(path), tensors)
    header, start = safetensors_layout(path)
    assert not SafetensorsRows.supports(header["c.bias"])  # 1-D tensors are read whole
    for name in ("a.weight", "b.weight"):
        rows = SafetensorsRows(path, name, header[name], start)
        for begin, end in [(0, 1), (2, 5), (0, tensors[name].shape[0])]:
            got = rows(begin, end)
            assert got.dtype == dtype
            assert mx.array_equal(got, tensors[name][begin:end]).item()


def test_a_truncated_or_inconsistent_shard_is_named(tmp_path):
    path = tmp_path / "shard.safetensors"
    mx.save_safetensors(str(path), {"a.weight": mx.ones((64, 64), dtype=mx.bfloat16)})
    header, start = safetensors_layout(path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointIndexError, match="ended inside tensor a.weight; the file is truncated"):
        SafetensorsRows(path, "a.weight", header["a.weight"], start)(60, 64)
    wrong = dict(header["a.weight"], shape=[64, 65])
    with pytest.raises(CheckpointIndexError, match="tensor a.weight has 8192 bytes but its shape"):
        SafetensorsRows(path, "a.weight", wrong, start)


def test_streamed_quantization_equals_quantizing_the_whole_tensor(tmp_path, monkeypatch):
    import convert.quantize as quantize
    from convert.progress import Reporter
    from convert.sink import TensorSink

    monkeypatch.setattr(quantize, "_CHUNK_ELEMENTS", 64 * 40)  # several chunks on a small table
    table = mx.random.normal((300, 64)).astype(mx.bfloat16)
    path = tmp_path / "shard.safetensors"
    mx.save_safetensors(str(path), {"embed.weight": table})
    assert len(row_chunks((300, 64))) > 2
    params = QuantParams(4, 32)

    class Writer:
        def __init__(self):
            self.tensors = {}

        def add(self, name, array):
            self.tensors[name] = array

    class Plan:
        def for_weight(self, name):
            return params

        def quantized_names(self, name):
            return [name, name.replace("weight", "scales"), name.replace("weight", "biases")]

    writer = Writer()
    sink = TensorSink({"embed.weight": (300, 64)}, Plan(), mx.bfloat16, writer, Reporter(None, None))
    header, start = safetensors_layout(path)
    sink.add_rows("embed.weight", (300, 64), SafetensorsRows(path, "embed.weight", header["embed.weight"], start),
                  path.name)
    expected = quantize_weight(table, params, mx.bfloat16)
    for name, array in zip(["embed.weight", "embed.scales", "embed.biases"], expected):
        assert writer.tensors[name].dtype == array.dtype and mx.array_equal(writer.tensors[name], array).item(), name
