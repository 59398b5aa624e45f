"""Is this path a model folder the app can run, and is it complete? Plain Python (no MLX), so the CLI,
the server, the model manager and the converter ask the same questions cheaply, before anything loads.

Complete means: weights and config.json, a tokenizer, a chat template (unless the folder records that it
is a base model, which only continues text), and processor settings for each tower (vision, audio) the
config declares. The converter refuses to finish a folder that fails this; the loader refuses to load one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
GGUF_MAGIC = b"GGUF"


class ModelLoadError(RuntimeError):
    """A model folder cannot be loaded; the message says which file or tensor and what to do."""


class IncompleteModelError(ModelLoadError):
    """The folder lacks files a usable model needs (tokenizer, chat template, processor settings)."""


def _is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == GGUF_MAGIC
    except OSError:
        return path.suffix.lower() == ".gguf"


def check_model_path(path: Path) -> None:
    """Raise ModelLoadError unless `path` is an existing folder; a GGUF or weights file gets its next step."""
    path = Path(path).expanduser()
    if path.is_dir():
        return
    if not path.exists():
        raise ModelLoadError(f"model folder {path} does not exist; check the path.")
    if path.suffix.lower() == ".gguf" or _is_gguf(path):
        raise ModelLoadError(
            f"{path} is a GGUF file; this app runs MLX model folders. Convert it first: "
            f"python -m convert {path} {path.with_suffix('')}-mlx  (then use that folder).")
    if path.suffix.lower() == ".safetensors":
        raise ModelLoadError(f"{path} is one weights file; choose the folder that holds it with its "
                             "config.json and tokenizer files.")
    raise ModelLoadError(f"{path} is a file, not a model folder: choose the folder of a converted model.")


def read_config(path: Path) -> dict[str, Any]:
    """The checkpoint's config.json as a dict."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{path} has no config.json: choose a folder that holds a converted Gemma "
                             "model.")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except OSError as err:
        raise ModelLoadError(f"{config_file} cannot be read ({err.strerror or err}).") from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{config_file} is not valid JSON ({err}); re-download or re-convert the "
                             "model.") from err
    if not isinstance(config, dict):
        raise ModelLoadError(f"{config_file} holds a JSON {type(config).__name__}, not a model description; "
                             "re-download or re-convert the model.")
    return config


def is_base_model(config: dict[str, Any]) -> bool:
    """Whether config.json records a base model (continues text, needs no chat template): the converter
    writes `"gemma4_mac": {"chat": false}` for one (`python -m convert --base-model`, the starter model)."""
    section = config.get("gemma4_mac")
    return isinstance(section, dict) and section.get("chat") is False


def has_chat_template(folder: Path) -> bool:
    """Whether the folder's tokenizer knows a chat format (a template file or tokenizer_config's entry)."""
    folder = Path(folder)
    if any((folder / name).is_file() for name in CHAT_TEMPLATE_FILES):
        return True
    try:
        tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(tokenizer_config, dict) and bool(tokenizer_config.get("chat_template"))


def towers(config: dict[str, Any]) -> list[str]:
    """The towers besides text that config.json declares and this app runs (Gemma 4's vision and audio,
    the 12B's embedders)."""
    if config.get("model_type") not in ("gemma4", "gemma4_unified"):
        return []
    return [name for name in ("vision", "audio") if config.get(f"{name}_config")]


def missing_parts(folder: Path, config: dict[str, Any]) -> list[str]:
    """What a usable model needs and `folder` lacks, in words (empty when complete)."""
    folder = Path(folder)
    missing = []
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        missing.append("a tokenizer (tokenizer.json or tokenizer.model)")
    if not is_base_model(config) and not has_chat_template(folder):
        missing.append("a chat template (chat_template.jinja, or chat_template in tokenizer_config.json)")
    kinds = towers(config)
    if kinds and not any((folder / name).is_file() for name in PROCESSOR_FILES):
        missing.append(f"the processor settings of its {' and '.join(kinds)} "
                       f"tower{'s' if len(kinds) > 1 else ''} "
                       "(processor_config.json)")
    return missing


def check_complete(folder: Path, config: dict[str, Any] | None = None) -> None:
    """Raise IncompleteModelError naming what is missing and where to get it; return when complete."""
    folder = Path(folder).expanduser()
    missing = missing_parts(folder, read_config(folder) if config is None else config)
    if missing:
        base_hint = (" A base model that only continues text needs no chat template: convert it with "
                     "--base-model."
                     if any("chat template" in part for part in missing) else "")
        raise IncompleteModelError(
            f"{folder} is not a complete model: it lacks {' and '.join(missing)}. Copy the missing files "
            "from the model's Hugging Face repo into the folder, or convert the model again with "
            "`python -m convert` (it fetches or rebuilds them, and refuses to finish a model without "
            f"them).{base_hint}")
