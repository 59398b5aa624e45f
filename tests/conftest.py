"""Fixtures shared across test files: tiny checkpoints and real tokenizers built once per test session.

Each is read-only for the tests that use it; a test that changes a model folder copies it first.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import assets


@pytest.fixture(scope="session")
def tiny_chat_model_dir(tmp_path_factory) -> Path:
    """The tiny random Gemma 4 text model with the real tokenizer files (tests/tiny_chat_model.py)."""
    from tests.tiny_chat_model import build_tiny_chat_model

    return build_tiny_chat_model(tmp_path_factory.mktemp("shared-chat") / "tiny-gemma-4")


@pytest.fixture(scope="session")
def e4b_checkpoint_dir(tmp_path_factory) -> Path:
    """A tiny E4B-like Gemma 4 checkpoint written by transformers (multimodal layout, float32)."""
    from tests.reference_models import build_gemma4

    path = tmp_path_factory.mktemp("shared-e4b") / "tiny"
    build_gemma4("e4b", path, head_dim=32, global_head_dim=64)
    return path


@pytest.fixture(scope="session")
def gemma4_tokenizer():
    """Our tokenizer over the real Gemma 4 vocabulary."""
    from mlx_model.tokenizer import load_tokenizer

    return load_tokenizer(assets.gemma4_vocab_dir())


@pytest.fixture(scope="session")
def gemma3_tokenizer():
    """Our tokenizer over the real Gemma 3 vocabulary (the starter model's)."""
    from mlx_model.tokenizer import load_tokenizer

    return load_tokenizer(assets.gemma3_vocab_dir())
