"""Our MLX implementation of the Gemma 4 family (and Gemma 3 text)."""

from .loader import ModelLoadError, load, load_model
from .model import Model, ModelConfig

__all__ = ["Model", "ModelConfig", "ModelLoadError", "load", "load_model"]
