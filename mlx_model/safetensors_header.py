"""The JSON header of a safetensors file, read and checked before anything is allocated from it.

The first 8 bytes give the header's length; a damaged file can claim 2^62 bytes, so the length is
checked against the file's size (and the format's own 100 MB limit) before it is read, and every
entry's dtype, shape and offsets are checked before a caller sizes a buffer from them.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

MAX_HEADER_BYTES = 100_000_000  # the safetensors format's own limit on the header
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8,
               "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


class SafetensorsHeaderError(ValueError):
    """The header is damaged or the file is cut short; the message names the file and what is wrong."""


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_entry(path: Path, name: str, entry: Any) -> int:
    """The entry's end offset, after checking its dtype, shape and offsets agree."""
    if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str):
        raise SafetensorsHeaderError(f"{path.name}: the header entry of tensor {name!r} is damaged.")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or not all(_whole(d) for d in shape):
        raise SafetensorsHeaderError(f"{path.name}: tensor {name!r} has no valid shape ({shape!r:.60}).")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_whole(o) for o in offsets)
            or offsets[0] > offsets[1]):
        raise SafetensorsHeaderError(f"{path.name}: tensor {name!r} has no valid data offsets "
                                     f"({offsets!r:.60}).")
    width = DTYPE_BYTES.get(entry["dtype"])
    if width is not None and math.prod(shape) * width != offsets[1] - offsets[0]:
        raise SafetensorsHeaderError(
            f"{path.name}: tensor {name!r} has {offsets[1] - offsets[0]:,} bytes but its shape {shape} and "
            f"dtype {entry['dtype']} need {math.prod(shape) * width:,}.")
    return offsets[1]


def read_header(path: Path) -> tuple[dict[str, dict[str, Any]], int]:
    """(tensor name -> {dtype, shape, data_offsets}, offset where tensor data starts). Raises OSError when the
    file cannot be read, SafetensorsHeaderError when it is damaged or truncated."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        raw_length = handle.read(8)
        if len(raw_length) < 8:
            raise SafetensorsHeaderError(f"{path.name} is empty or truncated ({size} bytes): it has no "
                                         "header.")
        (length,) = struct.unpack("<Q", raw_length)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise SafetensorsHeaderError(
                f"{path.name}: its header claims {length:,} bytes but the file has {size:,}; it is damaged, "
                "truncated or not a safetensors file.")
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SafetensorsHeaderError(f"{path.name}: its header is not valid JSON ({error}).") from error
    if not isinstance(header, dict):
        raise SafetensorsHeaderError(f"{path.name}: its header is not a table of tensors.")
    header.pop("__metadata__", None)
    end = max((_check_entry(path, name, entry) for name, entry in header.items()), default=0)
    if 8 + length + end > size:
        raise SafetensorsHeaderError(f"{path.name} is truncated: its header needs {8 + length + end:,} "
                                     f"bytes, the file has {size:,}.")
    return header, 8 + length
