"""A small, fast GGUF reader: metadata, tensor directory, and row-chunked dequantization.

gguf.GGUFReader builds a numpy view per array element and takes 10-30 s on a 262k-token vocabulary;
this parser reads the same header in well under a second. Dequantization itself is done by
`gguf.quants.dequantize` (bit-exact against libggml), never by `mx.load`, which decodes some types wrongly.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import GGUFFormatError

_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32
_MAX_DIMS = 4  # GGML_MAX_DIMS
# GGUF metadata value types (gguf.GGUFValueType) -> struct format of the scalar
_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NUMPY_TYPES = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32,
                7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
_STRING, _ARRAY = 8, 9
# Rows of a tensor dequantized at once: bounds the float32 temporaries to about 256 MB.
_CHUNK_ELEMENTS = 64 * 1024 * 1024


@dataclass(frozen=True)
class GGUFTensorInfo:
    """One tensor of the file: name, shape in numpy/HF order (GGUF stores it reversed), ggml type id."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int  # absolute offset in the file
    nbytes: int


class _Cursor:
    def __init__(self, buffer: memoryview, path: Path):
        self.buffer, self.pos, self.path = buffer, 0, path

    def take(self, size: int) -> memoryview:
        if self.pos + size > len(self.buffer):
            raise GGUFFormatError(f"{self.path}: the file ends inside its header (truncated download?). "
                                  "Download it again.")
        view = self.buffer[self.pos:self.pos + size]
        self.pos += size
        return view

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        length = self.scalar("<Q")
        return bytes(self.take(length)).decode("utf-8", errors="replace")

    def value(self, value_type: int) -> Any:
        if value_type == _STRING:
            return self.string()
        if value_type == _ARRAY:
            item_type, count = self.scalar("<I"), self.scalar("<Q")
            if item_type == _STRING:
                return [self.string() for _ in range(count)]
            if item_type in _NUMPY_TYPES:
                dtype = np.dtype(_NUMPY_TYPES[item_type])
                return np.frombuffer(self.take(count * dtype.itemsize), dtype=dtype).tolist()
            return [self.value(item_type) for _ in range(count)]
        if value_type in _SCALAR_FORMATS:
            return self.scalar(_SCALAR_FORMATS[value_type])
        raise GGUFFormatError(f"{self.path}: unknown metadata value type {value_type}; the file is damaged "
                              "or newer than this converter.")


class GGUFFile:
    """Metadata and tensor directory of a GGUF file; tensors are read on demand through a memory map."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        except (OSError, ValueError) as error:
            raise GGUFFormatError(f"{self.path}: cannot open ({error}).") from error
        cursor = _Cursor(memoryview(self._map), self.path)
        if bytes(cursor.take(4)) != _MAGIC:
            raise GGUFFormatError(f"{self.path} is not a GGUF file (no 'GGUF' magic at the start).")
        version = cursor.scalar("<I")
        if version not in (2, 3):
            raise GGUFFormatError(f"{self.path}: GGUF version {version} is not supported (2 or 3 expected; "
                                  "big-endian files are not supported).")
        tensor_count, kv_count = cursor.scalar("<Q"), cursor.scalar("<Q")
        self.metadata: dict[str, Any] = {}
        for _ in range(kv_count):
            key = cursor.string()
            self.metadata[key] = cursor.value(cursor.scalar("<I"))
        raw_infos = []
        for _ in range(tensor_count):
            name = cursor.string()
            n_dims = cursor.scalar("<I")
            dims = [cursor.scalar("<Q") for _ in range(n_dims)]
            raw_infos.append((name, dims, cursor.scalar("<I"), cursor.scalar("<Q")))
        alignment = self.metadata.get("general.alignment", _DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment < 1 or alignment & (alignment - 1):
            raise GGUFFormatError(f"{self.path}: general.alignment is {alignment!r}, not a power of two: the file "
                                  "is damaged. Download it again.")
        data_start = -(-cursor.pos // alignment) * alignment
        self.tensors: dict[str, GGUFTensorInfo] = {}
        for name, dims, ggml_type, offset in raw_infos:
            info = GGUFTensorInfo(name, tuple(reversed(dims)), ggml_type, data_start + offset,
                                  _tensor_nbytes(self.path, name, dims, ggml_type))
            if info.offset + info.nbytes > len(self._map):
                raise GGUFFormatError(f"{self.path}: tensor {name!r} runs past the end of the file "
                                      f"({info.offset + info.nbytes} > {len(self._map)} bytes): the file is "
                                      "truncated. Download it again.")
            self.tensors[name] = info

    @property
    def architecture(self) -> str:
        """general.architecture (gemma3, gemma4, ...)."""
        return str(self.metadata.get("general.architecture", ""))

    def field(self, key: str, default: Any = None) -> Any:
        """Metadata value by key; `{arch}` in the key is replaced by the file's architecture."""
        return self.metadata.get(key.replace("{arch}", self.architecture), default)

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Dequantize rows [start, stop) of the first axis of tensor `name` to float32."""
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
        from gguf.quants import dequantize

        info = self.tensors[name]
        qtype = GGMLQuantizationType(info.ggml_type)
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        row_elements = info.shape[-1]
        row_bytes = row_elements // block_size * type_size
        inner_rows = int(np.prod(info.shape[1:-1])) if len(info.shape) > 2 else 1
        first_axis_bytes = row_bytes * inner_rows
        raw = self._map[info.offset + start * first_axis_bytes: info.offset + stop * first_axis_bytes]
        raw = raw.reshape(((stop - start) * inner_rows, row_bytes))
        try:
            values = dequantize(raw, qtype)
        except NotImplementedError as error:
            raise GGUFFormatError(f"{self.path}: tensor {name!r} is stored as {qtype.name}, which the gguf "
                                  "package cannot dequantize. Use a GGUF with standard quant types.") from error
        return np.asarray(values, dtype=np.float32).reshape((stop - start, *info.shape[1:]))

    def row_chunks(self, name: str) -> list[tuple[int, int]]:
        """[start, stop) ranges over the first axis, each about 256 MB when dequantized to float32."""
        info = self.tensors[name]
        rows = info.shape[0] if info.shape else 1
        per_row = max(1, int(np.prod(info.shape[1:])) if len(info.shape) > 1 else 1)
        step = max(1, _CHUNK_ELEMENTS // per_row)
        return [(start, min(rows, start + step)) for start in range(0, rows, step)]

    def read(self, name: str) -> np.ndarray:
        """The whole tensor, dequantized to float32 (for small tensors)."""
        info = self.tensors[name]
        if len(info.shape) == 1:
            return self.read_rows_1d(name)
        return np.concatenate([self.read_rows(name, a, b) for a, b in self.row_chunks(name)], axis=0)

    def read_rows_1d(self, name: str) -> np.ndarray:
        """A one-dimensional tensor, dequantized to float32."""
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        info = self.tensors[name]
        raw = self._map[info.offset: info.offset + info.nbytes].reshape((1, info.nbytes))
        values = dequantize(raw, GGMLQuantizationType(info.ggml_type))
        return np.asarray(values, dtype=np.float32).reshape(-1)[: info.shape[0]]


def _tensor_nbytes(path: Path, name: str, dims: list[int], ggml_type: int) -> int:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        qtype = GGMLQuantizationType(ggml_type)
        block_size, type_size = GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError) as error:
        raise GGUFFormatError(f"{path}: tensor {name!r} has ggml type {ggml_type}, unknown to the installed gguf "
                              "package. Upgrade gguf (pip install -U gguf).") from error
    # ggml tensors have 1 to 4 dimensions; the product is taken in Python ints, so a damaged header
    # cannot overflow it into a small size that passes the end-of-file check
    if not 1 <= len(dims) <= _MAX_DIMS or min(dims) < 1:
        raise GGUFFormatError(f"{path}: tensor {name!r} has shape {list(reversed(dims))}, which no GGUF writer "
                              "produces: the file is damaged. Download it again.")
    elements = math.prod(dims)
    if dims[0] % block_size:
        raise GGUFFormatError(f"{path}: tensor {name!r} rows of {dims[0]} are not a multiple of the "
                              f"{qtype.name} block size {block_size}.")
    return elements // block_size * type_size
