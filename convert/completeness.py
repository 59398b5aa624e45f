"""The converter finishes only complete models: tokenizer, chat template (unless a base model) and the
processor settings of every tower, as mlx_model.model_folder defines them (the loader asks the same).

The source is checked before any tensor is converted, so a checkpoint without them fails in a second
with what is missing and where to get it; the finished work folder is checked again before it is moved
into place, so nothing incomplete is ever left at the destination. A GGUF's tokenizer is rebuilt from
its metadata; a hub repo's tokenizer files are downloaded with its weights (hf_source.HUB_PATTERNS).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlx_model.config import SUPPORTED_TYPES
from mlx_model.model_folder import is_base_model, missing_parts

from .errors import IncompleteSourceError
from .hf_source import looks_like_repo_id

BASE_MODEL_HINT = ("If it is a base model that only continues text (no chat), convert it with --base-model "
                   "(metadata={'chat': False}): it then needs no chat template.")


def _repo(src: Any, metadata: dict[str, Any]) -> str | None:
    """The hub repo the source came from, when known (converting a repo id, or the engine's download)."""
    for candidate in (metadata.get("source"), src):
        if isinstance(candidate, str) and looks_like_repo_id(candidate) and not Path(candidate).exists():
            return "/".join(candidate.split("/")[:2])
    return None


def _folder_advice(source: Path, repo: str | None) -> str:
    if repo:
        return (f"The hub repo {repo} does not provide them: copy them from the repo it was made from (its "
                f"model card names it, e.g. google/gemma-4-E2B-it) into {source}, then convert that folder.")
    return ("Copy the missing files from the model's Hugging Face repo (its Files tab; they are small) into "
            f"{source} and convert again, or convert the repo id itself (python -m convert OWNER/NAME DEST), "
            "which downloads them.")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}  # open_checkpoint reports a broken config.json with its own message
    return data if isinstance(data, dict) else {}


def check_source(source: Path, src: Any, metadata: dict[str, Any] | None) -> dict[str, Any]:
    """Refuse (IncompleteSourceError) a source that cannot give a complete model; returns the metadata to
    record, with `chat: False` carried over from a source folder that records a base model."""
    metadata = dict(metadata or {})
    if source.is_file():
        _check_gguf(source, metadata.get("chat") is False)
        return metadata
    config = _read_json(source / "config.json")
    if config.get("model_type") not in SUPPORTED_TYPES or not any(source.glob("*.safetensors")):
        return metadata  # not a Gemma checkpoint at all: open_checkpoint and _skeleton say so
    if is_base_model(config):
        metadata.setdefault("chat", False)
    if metadata.get("chat") is False:
        config = {**config, "gemma4_mac": {"chat": False}}
    missing = missing_parts(source, config)
    if missing:
        hint = f" {BASE_MODEL_HINT}" if any("chat template" in part for part in missing) else ""
        raise IncompleteSourceError(
            f"{source} lacks {' and '.join(missing)}, so the converted model could not be used; nothing was "
            f"converted. {_folder_advice(source, _repo(src, metadata))}{hint}")
    return metadata


def _check_gguf(path: Path, base_model: bool) -> None:
    from .gguf_reader import GGUFFile

    metadata = GGUFFile(path).metadata
    missing = []
    if "tokenizer.ggml.tokens" not in metadata:
        missing.append("vocabulary (tokenizer.ggml.tokens), from which the tokenizer is rebuilt")
    if not base_model and not metadata.get("tokenizer.chat_template"):
        missing.append("chat template (tokenizer.chat_template)")
    if missing:
        raise IncompleteSourceError(
            f"{path} carries no {' and no '.join(missing)}; nothing was converted. Use a GGUF of the "
            "instruction-tuned model (its name usually ends in -it), which carries them. "
            + (BASE_MODEL_HINT if not base_model else ""))


def check_output(folder: Path) -> None:
    """The finished work folder, checked as the loader will check it (raises IncompleteSourceError)."""
    missing = missing_parts(folder, _read_json(folder / "config.json"))
    if missing:
        raise IncompleteSourceError(f"The converted model would lack {' and '.join(missing)}, so it was not "
                                    "kept. Add the missing files to the source and convert again.")
