"""Our MLX implementation of the Gemma 4 family (and Gemma 3 text).

The names below load MLX when first used, so plain-Python parts (config, model_folder, file_errors,
safetensors_header) can be imported by the window, the CLI and the model manager without loading MLX.
"""

from importlib import import_module

_EXPORTS = {"ModelLoadError": ".loader", "load": ".loader", "load_model": ".loader", "Model": ".model",
            "ModelConfig": ".model"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mlx_model' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name], __name__), name)
