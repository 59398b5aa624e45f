"""Row ranges of one safetensors tensor read with plain file reads (no mmap, no whole-tensor load).

Quantization works in row chunks, so the converter never needs a source tensor whole: a 1 GiB
embedding table is read 32 MB at a time and only its 4-bit output stays in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from .errors import CheckpointIndexError

# safetensors dtype -> (numpy dtype read from disk, MLX dtype it is viewed as)
_DTYPES = {
    "F32": (np.float32, mx.float32),
    "F16": (np.float16, mx.float16),
    "BF16": (np.uint16, mx.bfloat16),  # numpy has no bfloat16: read the bits, view them in MLX
    "U32": (np.uint32, mx.uint32),  # packed quantized weights (read back by the quality check)
}
_FLOAT_DTYPES = ("F32", "F16", "BF16")


class SafetensorsRows:
    """Reads rows [start, stop) of tensor `name` in its stored dtype; callable like the GGUF row reader."""

    def __init__(self, path: Path, name: str, entry: dict[str, Any], start_of_data: int):
        self.path, self.name = path, name
        self.shape = tuple(entry["shape"])
        self.numpy_dtype, self.mlx_dtype = _DTYPES[entry["dtype"]]
        begin, end = entry["data_offsets"]
        self.offset = start_of_data + begin
        self.row_elements = int(np.prod(self.shape[1:], dtype=np.int64))
        self.row_bytes = self.row_elements * np.dtype(self.numpy_dtype).itemsize
        if self.row_bytes * self.shape[0] != end - begin:
            raise CheckpointIndexError(f"{path.name}: tensor {name} has {end - begin} bytes but its shape "
                                       f"{self.shape} and dtype {entry['dtype']} need {self.row_bytes * self.shape[0]}."
                                       " The file is damaged; download it again.")

    @staticmethod
    def supports(entry: dict[str, Any]) -> bool:
        """Whether rows of this tensor can be streamed (a float dtype with at least two dimensions)."""
        return entry.get("dtype") in _FLOAT_DTYPES and len(entry.get("shape", ())) >= 2

    def __call__(self, start: int, stop: int) -> mx.array:
        rows = np.empty((stop - start, *self.shape[1:]), dtype=self.numpy_dtype)
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset + start * self.row_bytes)
                read = handle.readinto(memoryview(rows).cast("B"))
        except OSError as error:
            raise CheckpointIndexError(f"{self.path} cannot be read ({error}); download it again.") from error
        if read != rows.nbytes:
            raise CheckpointIndexError(f"{self.path} ended inside tensor {self.name}; the file is truncated. "
                                       "Download it again.")
        array = mx.array(rows)
        return array.view(self.mlx_dtype) if array.dtype != self.mlx_dtype else array
