"""Sharded safetensors output written into a temporary folder beside DST and renamed into place at the end.

Nothing that looks like a model exists at DST until `commit`: the work folder is hidden
(`.<name>.partial-<id>`), config.json is written last, and any failure removes the folder. A killed
conversion's folder is removed by the next conversion into the same parent folder (convert/partials.py
tells a stale one from one that another conversion is still writing).
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import mlx.core as mx
import numpy as np

from . import partials
from .errors import DestinationExistsError, WriteError
from .hf_source import INDEX_NAME

DEFAULT_SHARD_BYTES = 2 << 30
# MLX dtype -> (safetensors dtype, numpy type its bytes are written as; bfloat16 as its 16 bits)
_SAFETENSORS_TYPES = {mx.uint32: ("U32", np.uint32), mx.float32: ("F32", np.float32),
                      mx.float16: ("F16", np.float16), mx.bfloat16: ("BF16", np.uint16)}


class OutputFolder:
    """A work folder beside DST; `commit()` renames it to DST, `discard()` removes it."""

    def __init__(self, destination: Path, force: bool):
        self.destination = destination
        self._lock: int | None = None
        if destination.exists() and not force:
            raise DestinationExistsError(f"{destination} already exists; choose another destination or pass "
                                         "--force (force=True) to replace it.")
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)
            partials.clean_stale(destination.parent)  # left by conversions that were killed
            self.path = destination.parent / partials.partial_name(destination)
            self.path.mkdir()
            self._lock = partials.lock(self.path)  # held until commit or discard: not stale while we write
        except OSError as error:
            shutil.rmtree(getattr(self, "path", destination / "-"), ignore_errors=True)
            raise WriteError(f"Cannot create a work folder beside {destination}: {error}.") from error

    def commit(self) -> Path:
        """Move the finished model to DST (replacing an old one only now, when the new one is complete)."""
        old = None
        try:
            if self.destination.exists():
                old = self.destination.parent / f".{self.destination.name}.old-{uuid.uuid4().hex[:8]}"
                self.destination.rename(old)
            self.path.rename(self.destination)
        except OSError as error:
            if old is not None and not self.destination.exists():
                old.rename(self.destination)
            raise WriteError(f"Cannot move the converted model to {self.destination}: {error}.") from error
        partials.release(self._lock, self.destination / partials.LOCK_NAME)
        self._lock = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
        return self.destination

    def discard(self) -> None:
        """Remove the work folder and everything in it."""
        shutil.rmtree(self.path, ignore_errors=True)
        if self._lock is not None:
            partials.release(self._lock)
            self._lock = None


class ShardWriter:
    """Buffers converted tensors and writes a safetensors shard whenever max_shard_bytes is reached."""

    def __init__(self, folder: Path, max_shard_bytes: int = DEFAULT_SHARD_BYTES):
        self.folder, self.max_shard_bytes = folder, max_shard_bytes
        self.pending: dict[str, mx.array] = {}
        self.pending_bytes = 0
        self.shard_files: list[Path] = []
        self.weight_map: dict[str, int] = {}
        self.total_bytes = 0

    def add(self, name: str, array: mx.array) -> None:
        """Queue one evaluated tensor; flushes a shard first if it would overflow."""
        if self.pending and self.pending_bytes + array.nbytes > self.max_shard_bytes:
            self.flush()
        self.pending[name] = array
        self.pending_bytes += array.nbytes

    def flush(self) -> None:
        """Write the queued tensors as the next shard."""
        if not self.pending:
            return
        path = self.folder / f"part-{len(self.shard_files) + 1:05d}.safetensors"
        try:
            mx.save_safetensors(str(path), self.pending, metadata={"format": "mlx"})
        except (OSError, RuntimeError, ValueError) as error:
            raise WriteError(_write_failure(path, self.pending_bytes, error)) from error
        index = len(self.shard_files)
        self.shard_files.append(path)
        self.weight_map.update({name: index for name in self.pending})
        self.total_bytes += self.pending_bytes
        self.pending, self.pending_bytes = {}, 0

    def open_streamed(self, tensors: list[tuple[str, tuple[int, ...], mx.Dtype]]) -> "StreamedShard":
        """A shard of its own for `tensors` (name, shape, dtype), written a row chunk at a time as they are made:
        a big quantized table never waits whole in memory. Close it with `close_streamed`."""
        self.flush()
        path = self.folder / f"part-{len(self.shard_files) + 1:05d}.safetensors"
        return StreamedShard(path, tensors)

    def close_streamed(self, shard: "StreamedShard") -> None:
        """Finish a streamed shard and register its tensors."""
        shard.close()
        index = len(self.shard_files)
        self.shard_files.append(shard.path)
        self.weight_map.update({name: index for name in shard.names})
        self.total_bytes += shard.data_bytes

    def finish(self) -> list[str]:
        """Flush, give the shards their final names and write model.safetensors.index.json."""
        self.flush()
        count = len(self.shard_files)
        names = ["model.safetensors"] if count == 1 else [
            f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        try:
            for path, name in zip(self.shard_files, names):
                path.rename(self.folder / name)
            index = {"metadata": {"total_size": self.total_bytes},
                     "weight_map": {k: names[i] for k, i in sorted(self.weight_map.items())}}
            (self.folder / INDEX_NAME).write_text(json.dumps(index, indent=2), encoding="utf-8")
        except OSError as error:
            raise WriteError(f"Finishing the shards in {self.folder} failed: {error}.") from error
        return names


class StreamedShard:
    """A safetensors file whose header is written first and whose tensors' rows are then written in place."""

    def __init__(self, path: Path, tensors: list[tuple[str, tuple[int, ...], mx.Dtype]]):
        self.path, self.names = path, [name for name, _, _ in tensors]
        header, self._start, self._end, offset = {}, [], [], 0
        for name, shape, dtype in tensors:
            code, numpy_type = _SAFETENSORS_TYPES[dtype]
            size = int(np.prod(shape, dtype=np.int64)) * np.dtype(numpy_type).itemsize
            header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + size]}
            self._start.append(offset)
            self._end.append(offset + size)
            offset += size
        header["__metadata__"] = {"format": "mlx"}
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
        self.data_bytes, self._data_start = offset, 8 + len(raw)
        try:
            self._handle = open(path, "wb")
            self._handle.write(len(raw).to_bytes(8, "little") + raw)
        except OSError as error:
            raise WriteError(_write_failure(path, offset, error)) from error

    def write(self, index: int, rows: mx.array) -> None:
        """Append the next rows of tensor `index` (in the dtype given at the start)."""
        numpy_type = _SAFETENSORS_TYPES[rows.dtype][1]
        data = np.asarray(rows.view(mx.uint16) if rows.dtype == mx.bfloat16 else rows).astype(numpy_type, copy=False)
        try:
            self._handle.seek(self._data_start + self._start[index])
            self._handle.write(np.ascontiguousarray(data).tobytes())
        except OSError as error:
            raise WriteError(_write_failure(self.path, data.nbytes, error)) from error
        self._start[index] += data.nbytes

    def close(self) -> None:
        """Close the file; every tensor must have been written in full."""
        self._handle.close()
        short = [name for name, start, end in zip(self.names, self._start, self._end) if start != end]
        if short:
            raise WriteError(f"{self.path.name}: tensors {short} were not written in full.")


def _write_failure(path: Path, needed: int, error: BaseException) -> str:
    """A shard write failed: say "disk full" when it is (MLX reports only "Unable to write N bytes")."""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if free is not None and free < needed:
        return (f"Writing {path.name} into {path.parent} failed: the disk is full (No space left on device; "
                f"{free / 1e9:.2f} GB free, this shard needs {needed / 1e9:.2f} GB). Free some disk space or choose "
                "another destination.")
    return (f"Writing {path.name} into {path.parent} failed ({str(error).rstrip('.')}). Free some disk space or "
            "choose another destination.")
