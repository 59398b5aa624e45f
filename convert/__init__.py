"""Checkpoint conversion: Hugging Face checkpoints (folder or hub id) and GGUF files in, MLX models out.

    from convert import convert_checkpoint
    convert_checkpoint("google/gemma-4-E2B-it", "~/models/gemma-4-e2b-4bit", bits=4)

Command line: `python -m convert SRC DST [--bits 4|8] [--group-size 32|64] [--no-quantize]
[--dtype bfloat16|float16|float32] [--force] [--uniform] [--calibrate] [--skip-quality-check]`.
"""

from .errors import (CheckpointIndexError, ConversionCancelled, ConversionError, DestinationExistsError,
                     DownloadError, GGUFFormatError, MissingTensorError, ShapeMismatchError, SourceNotFoundError,
                     UnexpectedTensorError, UnsupportedSourceError, WriteError)
from .pipeline import convert_checkpoint
from .progress import ConversionProgress
from .quality import QualityCheckError, QualityGateError, QualityThresholds

__all__ = [
    "CheckpointIndexError", "ConversionCancelled", "ConversionError", "ConversionProgress", "DestinationExistsError",
    "DownloadError", "GGUFFormatError", "MissingTensorError", "ShapeMismatchError", "SourceNotFoundError",
    "QualityCheckError", "QualityGateError", "QualityThresholds", "UnexpectedTensorError", "UnsupportedSourceError",
    "WriteError", "convert_checkpoint",
]
