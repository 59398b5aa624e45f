"""Document caches on disk: a long document prefilled once is saved and memory-mapped back later.

The store keeps files, checksums and eviction; the arrays come from `mlx_model.cache.cache_arrays`. Each
entry is keyed by the model and the exact token prefix. A checksum over the file guards
against damage: a file that does not verify, or was written for another model or format, is
deleted and recomputed, never trusted. Least-recently-used entries are evicted past a size limit.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import mlx.core as mx
import numpy as np

from mlx_model.cache import CacheLayoutError, cache_arrays, restore_cache_arrays

FORMAT_VERSION = 1
DEFAULT_MAX_BYTES = 8 * 1024 ** 3
MIN_TOKENS_TO_SAVE = 1024  # shorter prefixes are cheaper to recompute than to read back


class CacheFileError(RuntimeError):
    """A cache file failed verification; it has been deleted and will be recomputed."""


def model_fingerprint(model_dir: Path) -> str:
    """Identity of a model folder: its config and the names, sizes and times of its weight files."""
    h = hashlib.sha256()
    h.update((model_dir / "config.json").read_bytes())
    for file in sorted(model_dir.glob("*.safetensors")):
        stat = file.stat()
        h.update(f"{file.name}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    return h.hexdigest()[:32]


def _tokens_digest(tokens: Sequence[int]) -> str:
    return hashlib.sha256(np.asarray(tokens, dtype=np.int32).tobytes()).hexdigest()


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _valid_meta(meta) -> bool:
    """A description with the fields lookup and eviction read, of the right types."""
    return (isinstance(meta, dict) and isinstance(meta.get("n_tokens"), int) and isinstance(meta.get("model_id"), str)
            and isinstance(meta.get("tokens_sha256"), str) and isinstance(meta.get("file_sha256"), str)
            and isinstance(meta.get("layout"), list) and isinstance(meta.get("last_used", 0), (int, float)))


@dataclass
class CacheEntry:
    """One saved prefix: its files and description."""

    key: str
    data_path: Path
    meta_path: Path
    meta: dict

    @property
    def n_tokens(self) -> int:
        return int(self.meta["n_tokens"])


class DocumentCacheStore:
    """A folder of saved KV prefixes with a size limit and LRU eviction."""

    def __init__(self, root: Path, max_bytes: int = DEFAULT_MAX_BYTES):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes

    def _entries(self) -> list[CacheEntry]:
        entries = []
        for meta_path in self.root.glob("*.json"):
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                meta = None
            if not _valid_meta(meta):
                self._remove(meta_path.stem)  # a half-written or damaged description: drop the entry
                continue
            entries.append(CacheEntry(meta_path.stem, self.root / f"{meta_path.stem}.safetensors", meta_path, meta))
        return entries

    def _remove(self, key: str) -> None:
        for suffix in (".safetensors", ".json"):
            (self.root / f"{key}{suffix}").unlink(missing_ok=True)

    def total_bytes(self) -> int:
        return sum(e.data_path.stat().st_size for e in self._entries() if e.data_path.exists())

    def save(self, model_id: str, tokens: Sequence[int], cache: list) -> Optional[CacheEntry]:
        """Save the cache holding exactly `tokens`; returns the entry (None when too short to be worth it)."""
        if len(tokens) < MIN_TOKENS_TO_SAVE:
            return None
        digest = _tokens_digest(tokens)
        key = hashlib.sha256(f"{model_id}:{digest}".encode()).hexdigest()[:40]
        arrays, layout = cache_arrays(cache)
        data_path, meta_path = self.root / f"{key}.safetensors", self.root / f"{key}.json"
        tmp = self.root / f".{key}.tmp.safetensors"
        mx.save_safetensors(str(tmp), arrays)
        meta = {"format": FORMAT_VERSION, "model_id": model_id, "n_tokens": len(tokens), "tokens_sha256": digest,
                "file_sha256": _file_digest(tmp), "layout": layout, "last_used": time.time()}
        os.replace(tmp, data_path)  # the data lands whole before its description says it exists
        tmp_meta = self.root / f".{key}.tmp.json"
        tmp_meta.write_text(json.dumps(meta), encoding="utf-8")
        os.replace(tmp_meta, meta_path)
        self.evict()
        return CacheEntry(key, data_path, meta_path, meta)

    def lookup(self, model_id: str, prompt_tokens: Sequence[int]) -> Optional[CacheEntry]:
        """The longest saved prefix of `prompt_tokens` for this model (leaving one token to feed)."""
        best = None
        for entry in self._entries():
            n = entry.n_tokens
            if entry.meta.get("model_id") != model_id or entry.meta.get("format") != FORMAT_VERSION:
                continue
            if n >= len(prompt_tokens) or (best is not None and n <= best.n_tokens):
                continue
            if _tokens_digest(prompt_tokens[:n]) == entry.meta["tokens_sha256"]:
                best = entry
        return best

    def load_into(self, entry: CacheEntry, cache: list) -> int:
        """Verify and memory-map an entry into `cache`; returns how many tokens it holds.

        Raises CacheFileError (after deleting the entry) when the file is damaged or foreign.
        """
        try:
            if not entry.data_path.is_file() or _file_digest(entry.data_path) != entry.meta["file_sha256"]:
                raise CacheFileError(f"cache file {entry.data_path.name} is damaged")
            arrays = mx.load(str(entry.data_path))
            restore_cache_arrays(arrays, entry.meta["layout"], cache)
        except CacheFileError:
            self._remove(entry.key)
            raise
        except (CacheLayoutError, KeyError, ValueError, RuntimeError, OSError) as err:
            self._remove(entry.key)
            raise CacheFileError(f"cache file {entry.data_path.name} cannot be used ({err})") from err
        entry.meta["last_used"] = time.time()
        entry.meta_path.write_text(json.dumps(entry.meta), encoding="utf-8")
        return entry.n_tokens

    def evict(self) -> None:
        """Delete least-recently-used entries until the folder fits its size limit."""
        entries = sorted(self._entries(), key=lambda e: e.meta.get("last_used", 0))
        total = sum(e.data_path.stat().st_size for e in entries if e.data_path.exists())
        while entries and total > self.max_bytes:
            oldest = entries.pop(0)
            total -= oldest.data_path.stat().st_size if oldest.data_path.exists() else 0
            self._remove(oldest.key)
