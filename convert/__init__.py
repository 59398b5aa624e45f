"""Checkpoint conversion: Hugging Face checkpoints (folder or hub id) and GGUF files in, MLX models out.

    from convert import convert_checkpoint
    convert_checkpoint("google/gemma-4-E2B-it", "~/models/gemma-4-e2b-4bit", bits=4)

Command line: `python -m convert SRC DST [--bits 4|8] [--group-size 32|64] [--no-quantize]
[--dtype bfloat16|float16|float32] [--force] [--base-model] [--uniform] [--calibrate] [--skip-quality-check]`.
"""

from importlib import import_module

from .errors import (CheckpointIndexError, ConversionCancelled, ConversionError, DestinationExistsError,
                     DownloadError, GGUFFormatError, IncompleteSourceError, MissingTensorError,
                     ShapeMismatchError, SourceNotFoundError, UnexpectedTensorError, UnsupportedSourceError,
                     WriteError)

# Loaded on first use: importing convert.partials or convert.errors must not load MLX.
_LAZY = {"convert_checkpoint": ".pipeline", "ConversionProgress": ".progress", "QualityCheckError": ".quality",
         "QualityGateError": ".quality", "QualityThresholds": ".quality"}
__all__ = [
    "CheckpointIndexError", "ConversionCancelled", "ConversionError", "ConversionProgress", "DestinationExistsError",
    "DownloadError", "GGUFFormatError", "IncompleteSourceError", "MissingTensorError", "QualityCheckError",
    "QualityGateError", "QualityThresholds", "ShapeMismatchError", "SourceNotFoundError", "UnexpectedTensorError",
    "UnsupportedSourceError", "WriteError", "convert_checkpoint",
]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'convert' has no attribute {name!r}")
    return getattr(import_module(_LAZY[name], __name__), name)
