"""`load(path)`: a checkpoint directory in, our model (and its processor) out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .config import ModelConfig, ModelConfigError
from .model import Model


class ModelLoadError(RuntimeError):
    """A model folder cannot be loaded; the message says which file or tensor and what to do."""


def read_config(path: Path) -> dict[str, Any]:
    """The checkpoint's config.json as a dict."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{path} has no config.json: choose a folder that holds a converted Gemma model.")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{config_file} is not valid JSON ({err}); re-download or re-convert the model.") from err
    if not isinstance(config, dict):
        raise ModelLoadError(f"{config_file} holds a JSON {type(config).__name__}, not a model description; "
                             "re-download or re-convert the model.")
    return config


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint, checked against its index when there is one."""
    index_file = path / "model.safetensors.index.json"
    if index_file.is_file():
        try:
            index = json.loads(index_file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ModelLoadError(f"{index_file} is not valid JSON ({err}).") from err
        names = sorted(set(index.get("weight_map", {}).values()))
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            raise ModelLoadError(
                f"{path} is incomplete: shard(s) {', '.join(missing)} listed in {index_file.name} are missing. "
                "Download the model again."
            )
        return [path / n for n in names]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{path} holds no .safetensors weights: convert the checkpoint first.")
    return files


def read_weights(path: Path) -> dict[str, mx.array]:
    """Every tensor of the checkpoint (memory-mapped lazily by MLX)."""
    weights: dict[str, mx.array] = {}
    for file in weight_files(path):
        try:
            weights.update(mx.load(str(file)))
        except (RuntimeError, ValueError, OSError) as err:
            raise ModelLoadError(f"{file} cannot be read ({err}); the file is damaged or incomplete.") from err
    return weights


def _apply_quantization(model: Model, quantization: dict, weights: dict[str, mx.array]) -> None:
    """Quantize exactly the modules whose `.scales` the checkpoint carries, with per-path settings."""
    default = {k: quantization[k] for k in ("group_size", "bits", "mode") if k in quantization}

    def predicate(path: str, module: nn.Module):
        if f"{path}.scales" not in weights:
            return False
        override = quantization.get(path)
        return {**default, **override} if isinstance(override, dict) else True

    nn.quantize(
        model,
        group_size=default.get("group_size", 64),
        bits=default.get("bits", 4),
        mode=default.get("mode", "affine"),
        class_predicate=predicate,
    )


def load_model(path: str | Path, *, lazy: bool = False, dtype: Optional[mx.Dtype] = None) -> Model:
    """Build the model described by `path`/config.json and load its weights.

    Missing or unexpected tensors are an error that names them. `dtype` casts float weights.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ModelLoadError(f"Model folder {path} does not exist.")
    raw_config = read_config(path)
    try:
        config = ModelConfig.from_dict(raw_config)
        model = Model(config)  # a value of the wrong type or size (hand-edited config) fails here
    except (ModelConfigError, TypeError, ValueError, OverflowError, AttributeError) as err:
        raise ModelLoadError(f"{path / 'config.json'} has a value the model cannot use ({err}); re-download or "
                             "re-convert the model.") from err
    weights = model.sanitize(read_weights(path))
    if config.quantization:
        _apply_quantization(model, config.quantization, weights)
    expected = {name for name, _ in tree_flatten(model.parameters())}
    missing = sorted(expected - weights.keys())
    unexpected = sorted(weights.keys() - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s): {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensor(s): {', '.join(unexpected[:8])}"
                         + (" ..." if len(unexpected) > 8 else ""))
        raise ModelLoadError(f"{path} does not match its config.json: " + "; ".join(parts) + ".")
    if dtype is not None:
        weights = {k: v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) and not k.endswith(".scales")
                   and not k.endswith(".biases") else v for k, v in weights.items()}
    _check_shapes(model, weights, path)
    model.load_weights(list(weights.items()), strict=True)
    model.eval()
    if not lazy:
        mx.eval(model.parameters())
    return model


def _check_shapes(model: Model, weights: dict[str, mx.array], path: Path) -> None:
    for name, param in tree_flatten(model.parameters()):
        if weights[name].shape != param.shape:
            raise ModelLoadError(
                f"{path}: tensor {name} has shape {tuple(weights[name].shape)} but config.json implies "
                f"{tuple(param.shape)}; the weights and config do not belong together."
            )


def load(path: str | Path, *, lazy: bool = False, dtype: Optional[mx.Dtype] = None):
    """`model, processor = load(path)`; the processor is None when the folder has no tokenizer files."""
    from .processor import load_processor

    model = load_model(path, lazy=lazy, dtype=dtype)
    return model, load_processor(Path(path).expanduser(), model.config)
