"""Rebuild ordinary tokenizer files (tokenizer.json, tokenizer_config.json, chat_template.jinja) from GGUF metadata.

The vocabulary-to-tokenizer rules are transformers' own (integrations/gguf/gguf_tokenizer_mapping.py),
so the saved tokenizer equals `AutoTokenizer.from_pretrained(dir, gguf_file=...)`; we only read the
metadata ourselves, because transformers' GGUF reader needs torch, which the app does not ship.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import UnsupportedSourceError
from .gguf_reader import GGUFFile

# transformers gguf_tokenizer_mapping.get_gguf_tokenizer: special token name -> metadata key suffix
_SPECIAL_TOKEN_KEYS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id",
                       "unk_token": "unknown_token_id", "pad_token": "padding_token_id"}


def _tokenizer_fields(gguf: GGUFFile) -> tuple[dict[str, Any], dict[str, Any]]:
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_MAPPING

    metadata = gguf.metadata
    groups = {group: {name: metadata[f"tokenizer.{key}"] for key, name in renames.items()
                      if f"tokenizer.{key}" in metadata}
              for group, renames in GGUF_TOKENIZER_MAPPING.items()}
    tokenizer, tokenizer_config = groups["tokenizer"], groups["tokenizer_config"]
    if "tokens" not in tokenizer:
        raise UnsupportedSourceError(f"{gguf.path} holds no vocabulary (tokenizer.ggml.tokens); "
                                     "cannot rebuild the tokenizer.")
    kind = tokenizer.get("tokenizer_type")
    if kind == "llama":
        # llama.cpp adds BOS to a sentencepiece vocabulary that does not say otherwise (as transformers does)
        tokenizer_config.setdefault("add_bos_token", True)
    elif kind == "gemma4":
        # transformers: the reference Gemma 4 tokenizer adds no BOS; the chat template writes <bos> itself
        tokenizer_config["add_bos_token"] = False
    for name, key in _SPECIAL_TOKEN_KEYS.items():
        token_id = metadata.get(f"tokenizer.ggml.{key}")
        tokenizer_config[name] = tokenizer["tokens"][token_id] if token_id is not None else None
    return tokenizer, tokenizer_config


def write_tokenizer_files(gguf: GGUFFile, out_dir: Path) -> list[str]:
    """Write the tokenizer (and chat template when the GGUF has one) into out_dir; returns the file names."""
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer

    tokenizer_dict, tokenizer_config = _tokenizer_fields(gguf)
    try:
        backend, extra = convert_gguf_tokenizer(gguf.architecture, tokenizer_dict)
    except ValueError as error:
        raise UnsupportedSourceError(f"{gguf.path}: cannot rebuild its tokenizer ({error}).") from error
    chat_template = tokenizer_config.pop("chat_template", None)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **tokenizer_config, **extra)
    if chat_template:
        tokenizer.chat_template = chat_template
    before = set(p.name for p in out_dir.iterdir()) if out_dir.exists() else set()
    tokenizer.save_pretrained(str(out_dir))
    return sorted(set(p.name for p in out_dir.iterdir()) - before)
