"""Errors raised by the converter. Each message names the file or tensor at fault and what to do."""

from __future__ import annotations


class ConversionError(Exception):
    """Base class: a conversion could not be done; the message says why and what to do."""


class SourceNotFoundError(ConversionError):
    """SRC is neither an existing folder/file nor something that looks like a hub repo id."""


class UnsupportedSourceError(ConversionError):
    """SRC exists but is not a Gemma 3/4 Hugging Face checkpoint or GGUF file."""


class DownloadError(ConversionError):
    """Fetching a hub repo failed (offline, unknown repo, gated repo, interrupted transfer)."""


class DestinationExistsError(ConversionError):
    """DST already exists and --force was not given."""


class CheckpointIndexError(ConversionError):
    """model.safetensors.index.json disagrees with the shard files beside it."""


class MissingTensorError(ConversionError):
    """The checkpoint lacks tensors the model needs."""


class UnexpectedTensorError(ConversionError):
    """The checkpoint holds tensors the model has no place for."""


class ShapeMismatchError(ConversionError):
    """A tensor's shape disagrees with config.json."""


class GGUFFormatError(ConversionError):
    """A GGUF file is truncated, malformed, or of an architecture/tensor type we cannot read."""


class WriteError(ConversionError):
    """Writing the converted model failed (disk full, permissions...)."""


class ConversionCancelled(ConversionError):
    """The caller's cancel event was set; nothing was left behind."""


class IncompleteSourceError(ConversionError):
    """The converted model would lack files it needs (tokenizer, chat template, processor settings)."""
