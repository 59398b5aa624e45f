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

from . import partials
from .errors import DestinationExistsError, WriteError
from .hf_source import INDEX_NAME

DEFAULT_SHARD_BYTES = 2 << 30


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
