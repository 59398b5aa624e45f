"""Where converted tensors go: checked against the model skeleton, quantized or cast, then written.

Every tensor is checked (name known to the model, shape as config.json implies, not seen twice)
before it is converted; `finish` reports the tensors the checkpoint never provided.
"""

from __future__ import annotations

from typing import Callable

import mlx.core as mx
import numpy as np

from .errors import CheckpointIndexError, MissingTensorError, ShapeMismatchError, UnexpectedTensorError
from .progress import Reporter
from .quantize import QuantPlan, join_chunks, quantize_chunk, quantize_weight, row_chunks
from .writer import ShardWriter

RowReader = Callable[[int, int], mx.array]
Sanitize = Callable[[dict[str, mx.array]], dict[str, mx.array]]
_LISTED = 10
# A quantized tensor whose output exceeds this gets a shard of its own, written chunk by chunk (embedding tables)
_STREAMED_OUTPUT_BYTES = 64 << 20


def probe_sanitize(sanitize: Sanitize, name: str, shape: tuple[int, ...]) -> tuple[bool, str | None]:
    """What Model.sanitize (which works tensor by tensor) does to tensor `name`, found without reading it.

    A free lazy placeholder goes through: returns (used, new_name), where new_name is set when the tensor is
    only renamed, so its rows can be streamed; None means sanitize changes the values (read it whole).
    """
    placeholder = mx.zeros(tuple(shape), dtype=mx.float32)
    renamed = sanitize({name: placeholder})
    if len(renamed) == 1:
        target, value = next(iter(renamed.items()))
        if value is placeholder:
            return True, target
    return bool(renamed), None


class TensorSink:
    """Checks, converts and writes tensors one at a time."""

    def __init__(self, expected: dict[str, tuple[int, ...]], plan: QuantPlan | None, dtype: mx.Dtype,
                 writer: ShardWriter, reporter: Reporter):
        self.expected, self.plan, self.dtype = expected, plan, dtype
        self.writer, self.reporter = writer, reporter
        self.seen: dict[str, str] = {}
        self.unexpected: list[tuple[str, str]] = []

    def _accept(self, name: str, shape: tuple[int, ...], source: str) -> bool:
        if name not in self.expected:
            self.unexpected.append((name, source))
            return False
        if tuple(shape) != tuple(self.expected[name]):
            raise ShapeMismatchError(f"{source}: tensor {name} has shape {tuple(shape)} but config.json implies "
                                     f"{tuple(self.expected[name])}; the weights and config.json do not belong "
                                     "together.")
        if name in self.seen:
            raise CheckpointIndexError(f"tensor {name} appears twice: in {self.seen[name]} and in {source}.")
        self.seen[name] = source
        return True

    def _store(self, name: str, parts: list[mx.array]) -> None:
        if self.plan is not None:
            for out_name, part in zip(self.plan.quantized_names(name), parts):
                self.writer.add(out_name, part)
        else:
            self.writer.add(name, parts[0])
        # a tensor's float32 temporaries would otherwise stay in MLX's buffer cache (and in RSS)
        mx.clear_cache()

    def _cast(self, array: mx.array) -> mx.array:
        return array.astype(self.dtype) if mx.issubdtype(array.dtype, mx.floating) else array

    def add(self, name: str, array: mx.array, source: str) -> None:
        """Convert one whole (possibly lazy) tensor."""
        self.reporter.check_cancel()
        if not self._accept(name, tuple(array.shape), source):
            return
        params = self.plan.for_weight(name) if self.plan is not None else None
        if params is not None:
            self._store(name, quantize_weight(array, params, self.dtype))
        else:
            converted = self._cast(array)
            mx.eval(converted)
            self._store(name, [converted])

    def add_rows(self, name: str, shape: tuple[int, ...], read_rows: RowReader, source: str) -> None:
        """Convert a tensor read in row chunks (float32), never holding it whole in float32."""
        self.reporter.check_cancel()
        if not self._accept(name, shape, source):
            return
        params = self.plan.for_weight(name) if self.plan is not None else None
        if params is not None and _output_bytes(shape, params, self.dtype) > _STREAMED_OUTPUT_BYTES:
            self._stream_quantized(name, shape, read_rows, params)
            return
        chunks = []
        for start, stop in row_chunks(shape):
            self.reporter.check_cancel()
            rows = read_rows(start, stop)
            if params is not None:
                chunks.append(quantize_chunk(rows, params, self.dtype))
            else:
                converted = self._cast(rows)
                mx.eval(converted)
                chunks.append([converted])
        self._store(name, join_chunks(chunks))

    def _stream_quantized(self, name: str, shape: tuple[int, ...], read_rows: RowReader, params) -> None:
        """Quantize a big tensor a row chunk at a time straight into a shard of its own."""
        parts = self.plan.quantized_names(name)
        *rows, width = shape
        groups = (*rows, width // params.group_size)
        shapes = [(*rows, width * params.bits // 32), groups, groups][: len(parts)]
        dtypes = [mx.uint32] + [self.dtype] * (len(parts) - 1)
        shard = self.writer.open_streamed(list(zip(parts, shapes, dtypes)))
        for start, stop in row_chunks(shape):
            self.reporter.check_cancel()
            for index, part in enumerate(quantize_chunk(read_rows(start, stop), params, self.dtype)):
                shard.write(index, part)
            mx.clear_cache()
        self.writer.close_streamed(shard)

    def raise_unexpected(self) -> None:
        """Raise UnexpectedTensorError naming the tensors (and files) the model has no place for."""
        if not self.unexpected:
            return
        listed = ", ".join(f"{name} (in {source})" for name, source in self.unexpected[:_LISTED])
        more = f" and {len(self.unexpected) - _LISTED} more" if len(self.unexpected) > _LISTED else ""
        raise UnexpectedTensorError(f"The checkpoint holds {len(self.unexpected)} tensor(s) that config.json has no "
                                    f"place for: {listed}{more}. The weights and config.json do not belong together, "
                                    "or this model needs a newer version of the app.")

    def finish(self) -> None:
        """Check that every tensor the model needs was provided."""
        self.raise_unexpected()
        missing = sorted(set(self.expected) - set(self.seen))
        if missing:
            more = f" and {len(missing) - _LISTED} more" if len(missing) > _LISTED else ""
            raise MissingTensorError(f"The checkpoint lacks {len(missing)} tensor(s) the model needs: "
                                     f"{', '.join(missing[:_LISTED])}{more}. The download is incomplete or the "
                                     "weights do not match config.json.")


def _output_bytes(shape: tuple[int, ...], params, dtype: mx.Dtype) -> int:
    """Bytes of a tensor quantized with `params`: packed codes plus scales and biases."""
    elements = int(np.prod(shape, dtype=np.int64))
    return elements * params.bits // 8 + 2 * (elements // params.group_size) * dtype.size
