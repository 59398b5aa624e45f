"""The processor that travels with a model: tokenizer and chat format (images and audio join later)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional


def load_processor(path: Path, config) -> Optional[object]:
    """The checkpoint's tokenizer, or None when the folder has no tokenizer files."""
    from .tokenizer import load_tokenizer

    return load_tokenizer(path)
