"""Hugging Face checkpoints as a conversion source: a local folder, or a hub repo id downloaded first.

Reading is streamed: `mx.load` maps a shard lazily, so a tensor's bytes are read only when it is
evaluated, one tensor at a time.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CheckpointIndexError, SourceNotFoundError, UnsupportedSourceError
from .progress import Reporter

INDEX_NAME = "model.safetensors.index.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5", ".ckpt", ".npz")
_NOT_COPIED = {INDEX_NAME, "config.json", "pytorch_model.bin.index.json"}
# Files a user needs beside the weights; anything else small at the top level is copied too.
HUB_PATTERNS = ["*.safetensors", "*.json", "*.jinja", "tokenizer.model", "*.txt", "*.md", "LICENSE*", "NOTICE*"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_MAX_COPIED_FILE = 256 * 1024 * 1024


def looks_like_repo_id(text: str) -> bool:
    """`owner/name` (optionally `owner/name/file.gguf`) that is not an existing path."""
    parts = text.split("/")
    if len(parts) == 3 and parts[2].endswith(".gguf"):
        text = "/".join(parts[:2])
    return bool(_REPO_ID.match(text))


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor -> dtype, shape, offsets); checks the file is complete."""
    return safetensors_layout(path)[0]


def safetensors_layout(path: Path) -> tuple[dict[str, Any], int]:
    """The checked header and the file offset where tensor data starts (8 length bytes plus the header).

    The header's length field, dtypes, shapes and offsets are checked before anything is sized from them
    (mlx_model.safetensors_header), so a damaged file is named instead of exhausting memory.
    """
    from mlx_model.safetensors_header import SafetensorsHeaderError, read_header

    try:
        return read_header(path)
    except OSError as error:
        raise CheckpointIndexError(f"{path} cannot be read ({error.strerror or error}).") from error
    except SafetensorsHeaderError as error:
        raise CheckpointIndexError(f"{path.parent}: {error} Download it again.") from error


@dataclass
class HFCheckpoint:
    """A local Hugging Face checkpoint folder: config, shard list (index checked) and companion files."""

    root: Path
    config: dict[str, Any]
    shards: list[Path]
    tensor_files: dict[str, Path] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        """Bytes of all weight shards."""
        return sum(shard.stat().st_size for shard in self.shards)

    @property
    def largest_shard_bytes(self) -> int:
        """Bytes of the biggest shard (the streaming memory bound is stated against it)."""
        return max((shard.stat().st_size for shard in self.shards), default=0)

    def companion_files(self) -> list[Path]:
        """Top-level files to copy beside the converted weights (tokenizer, templates, processor configs...)."""
        files = []
        for path in sorted(self.root.iterdir()):
            if (path.is_file() and not path.name.startswith(".") and path.name not in _NOT_COPIED
                    and not path.name.endswith(_WEIGHT_SUFFIXES) and path.stat().st_size <= _MAX_COPIED_FILE):
                files.append(path)
        return files


def open_checkpoint(root: Path) -> HFCheckpoint:
    """Read config.json and check the index against the shards. Raises a ConversionError naming the file."""
    config_path = root / "config.json"
    if not config_path.is_file():
        raise UnsupportedSourceError(f"{root} has no config.json; it is not a Hugging Face checkpoint folder.")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UnsupportedSourceError(f"{config_path} is not valid JSON ({error}).") from error
    if not isinstance(config, dict):
        raise UnsupportedSourceError(f"{config_path} holds a JSON {type(config).__name__}, not a model "
                                     "description.")
    index_path = root / INDEX_NAME
    if index_path.is_file():
        return HFCheckpoint(root, config, *_shards_from_index(root, index_path))
    shards = sorted(root.glob("*.safetensors"))
    if not shards:
        raise UnsupportedSourceError(f"{root} holds no .safetensors weights (PyTorch .bin checkpoints are not "
                                     "supported; download the safetensors version).")
    tensor_files = {}
    for shard in shards:
        for name in safetensors_header(shard):
            if name in tensor_files:
                raise CheckpointIndexError(f"tensor {name!r} is in both {tensor_files[name].name} and {shard.name}.")
            tensor_files[name] = shard
    return HFCheckpoint(root, config, shards, tensor_files)


def _shards_from_index(root: Path, index_path: Path) -> tuple[list[Path], dict[str, Path]]:
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        if not all(isinstance(file, str) and "/" not in file for file in weight_map.values()):
            raise TypeError("its values must be shard file names")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointIndexError(f"{index_path} is not a valid index (no weight_map): {error}.") from error
    shard_names = sorted(set(weight_map.values()))
    missing_files = [name for name in shard_names if not (root / name).is_file()]
    if missing_files:
        raise CheckpointIndexError(f"{index_path.name} lists shard(s) missing from {root}: {', '.join(missing_files)}. "
                                   "The download is incomplete; download it again.")
    tensor_files: dict[str, Path] = {}
    for name in shard_names:
        shard = root / name
        present = set(safetensors_header(shard))
        indexed = {tensor for tensor, file in weight_map.items() if file == name}
        if indexed - present:
            absent = sorted(indexed - present)
            raise CheckpointIndexError(f"{index_path.name} places {len(absent)} tensor(s) in {name} that it lacks, "
                                       f"e.g. {absent[:3]}. The shard is stale or damaged; download it again.")
        if present - indexed:
            extra = sorted(present - indexed)
            raise CheckpointIndexError(f"{name} holds {len(extra)} tensor(s) that {index_path.name} places elsewhere "
                                       f"or omits, e.g. {extra[:3]}. Index and shards are from different versions.")
        tensor_files.update({tensor: shard for tensor in present})
    return [root / name for name in shard_names], tensor_files


def download(repo: str, reporter: Reporter, cache_dir: Path | None = None) -> Path:
    """Download a hub repo (safetensors checkpoint), or one GGUF file given as `owner/name/file.gguf`.

    Files land in `cache_dir` (default: hub_download.default_download_dir()); a download cut off or
    killed continues where it stopped on the next call.
    """
    from .hub_download import download_repo

    parts = repo.split("/")
    if len(parts) == 3:
        reporter.report("download", 0, 1, item=repo, message=f"Downloading {parts[2]}")
        return download_repo("/".join(parts[:2]), reporter, filename=parts[2], root=cache_dir)
    reporter.report("download", 0, 1, item=repo, message=f"Downloading {repo}")
    root = download_repo(repo, reporter, patterns=HUB_PATTERNS, root=cache_dir)
    if not any(root.glob("*.safetensors")):
        raise SourceNotFoundError(f"{repo} has no .safetensors weights. For a GGUF repo give the file as "
                                  f"{repo}/<file>.gguf.")
    return root
