"""`load(path)`: a checkpoint directory in, our model (and its processor) out."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from .config import ModelConfig, ModelConfigError
from .model import Model
from .model_folder import IncompleteModelError, ModelLoadError, check_complete, check_model_path, read_config
from .safetensors_header import SafetensorsHeaderError, read_header
from .pipeline import pipeline_model
from .sharding import Cut, ShardingError, cut_tensor, shard_model

__all__ = ["IncompleteModelError", "ModelLoadError", "check_complete", "check_model_path", "load",
           "load_drafter", "load_model", "read_config", "read_weights", "weight_files"]
log = logging.getLogger(__name__)


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint, checked against its index when there is one."""
    index_file = path / "model.safetensors.index.json"
    if index_file.is_file():
        try:
            index = json.loads(index_file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ModelLoadError(f"{index_file} is not valid JSON ({err}).") from err
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        shards_named = isinstance(weight_map, dict) and all(
            isinstance(n, str) and "/" not in n for n in weight_map.values())
        if not shards_named:
            raise ModelLoadError(f"{index_file} has no valid weight_map (tensor name -> shard file); "
                                 "re-download or re-convert the model.")
        names = sorted(set(weight_map.values()))
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
            read_header(file)  # checked before MLX sizes anything from it
            weights.update(mx.load(str(file)))
        except (RuntimeError, ValueError, OSError, SafetensorsHeaderError) as err:
            raise ModelLoadError(f"{file} cannot be read ({err}); the file is damaged or incomplete.") from err
    return weights


_NUMPY_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "U32": np.uint32, "I32": np.int32,
                 "U8": np.uint8, "I8": np.int8, "F64": np.float64, "I64": np.int64, "U16": np.uint16}


def _file_slice(file: Path, entry: dict, data_start: int):
    """`take(axis, start, stop)` reading one slice of a tensor straight from the file (memory-mapped): rows
    come off the disk alone, and a column band is copied out without the rest of the tensor being kept."""
    shape = tuple(entry["shape"])

    def take(_tensor, axis: int, start: int, stop: int) -> mx.array:
        mapped = np.memmap(file, dtype=_NUMPY_DTYPES[entry["dtype"]], mode="r", shape=shape,
                           offset=data_start + entry["data_offsets"][0])
        index = [slice(None)] * len(shape)
        index[axis] = slice(start, stop)
        piece = mx.array(np.ascontiguousarray(mapped[tuple(index)]))
        del mapped
        return piece.view(mx.bfloat16) if entry["dtype"] == "BF16" else piece

    return take


def _located_tensors(path: Path, model: Model) -> dict[str, tuple]:
    """Sanitized name -> (file, header entry, data start, lazy array) for every tensor of the checkpoint."""
    located = {}
    for file in weight_files(path):
        try:
            header, data_start = read_header(file)
            tensors = mx.load(str(file))  # lazy: nothing is read until evaluated
        except (RuntimeError, ValueError, OSError, SafetensorsHeaderError) as err:
            raise ModelLoadError(f"{file} cannot be read ({err}); the file is damaged or "
                                 "incomplete.") from err
        for name, value in tensors.items():
            for new_name, new_value in model.sanitize({name: value}).items():  # sanitize renames key by key
                located[new_name] = (file, header[name], data_start, new_value)
    return located


def read_sharded_weights(path: Path, model: Model, located: dict[str, tuple],
                         plan: dict[str, Cut]) -> dict[str, mx.array]:
    """The checkpoint's tensors with those that `plan` splits read as this rank's slice only, straight from
    the files (no rank holds the whole model); the rest stay lazy, memory-mapped by MLX."""
    out = {}
    for name, (file, entry, data_start, value) in located.items():
        module_path, kind = name.rsplit(".", 1)
        cut = plan.get(module_path)
        if cut is None:
            out[name] = value
            continue
        module = model
        for part in module_path.split("."):
            module = module[int(part)] if isinstance(module, list) else getattr(module, part)
        take = _file_slice(file, entry, data_start) if entry["dtype"] in _NUMPY_DTYPES else None
        try:
            out[name] = cut_tensor(value, kind, cut, getattr(module, "bits", None),
                                   getattr(module, "group_size", None), take)
        except (ShardingError, ValueError, OSError) as err:
            raise ModelLoadError(f"{path}: tensor {name} cannot be split for this rank ({err}).") from err
    return out


def _quant_settings(settings: dict, where: str) -> dict:
    """group_size/bits/mode of a quantization entry, checked to be numbers MLX's quantize can take."""
    checked = {k: settings[k] for k in ("group_size", "bits", "mode") if k in settings}
    numbers = [checked.get("group_size", 64), checked.get("bits", 4)]
    if not all(isinstance(n, int) and not isinstance(n, bool) and 0 < n <= 1024 for n in numbers) \
            or not isinstance(checked.get("mode", "affine"), str):
        raise ModelLoadError(f"{where} has quantization settings MLX cannot run ({checked}): group_size and "
                             "bits "
                             "must be whole numbers and mode a name. Re-convert the model.")
    return checked


def _apply_quantization(model: nn.Module, quantization: dict, weights: dict[str, mx.array],
                        path: Path) -> None:
    """Quantize exactly the modules whose `.scales` the checkpoint carries, with per-path settings.

    Each module's shape is checked against its stored scales first: weights from another model (or a
    config.json with other sizes) are named as such instead of failing inside MLX's quantize.
    """
    where = path / "config.json"
    default = _quant_settings(quantization, str(where))
    mismatches: list[str] = []

    def predicate(name: str, module: nn.Module):
        if f"{name}.scales" not in weights:
            return False
        override = quantization.get(name)
        settings = default
        if isinstance(override, dict):
            settings = {**default, **_quant_settings(override, f"{where} ({name})")}
        weight = getattr(module, "weight", None)
        group = settings.get("group_size", 64)
        scales = tuple(weights[f"{name}.scales"].shape)
        if weight is None or not hasattr(module, "to_quantized") or weight.ndim < 2:
            mismatches.append(f"{name} has quantization scales but is not a layer that can be quantized")
        elif weight.shape[-1] % group or scales != (*weight.shape[:-1], weight.shape[-1] // group):
            stored = (*scales[:-1], scales[-1] * group) if scales else scales
            mismatches.append(f"{name} is {tuple(weight.shape)} per config.json, but its stored scales are "
                              f"for {stored} at group size {group}")
        else:
            return settings if isinstance(override, dict) else True
        return False

    try:
        nn.quantize(model, group_size=default.get("group_size", 64), bits=default.get("bits", 4),
                    mode=default.get("mode", "affine"), class_predicate=predicate)
    except ValueError as error:  # a mode, or a bits/group size pair, that this MLX cannot quantize with
        raise ModelLoadError(f"{where} has quantization settings MLX cannot run ({error}). Re-convert the "
                             "model.") from error
    if mismatches:
        more = f" (and {len(mismatches) - 1} more)" if len(mismatches) > 1 else ""
        raise ModelLoadError(f"{path} does not match its config.json: {mismatches[0]}{more}; the weights and "
                             "config do not belong together. Re-download or re-convert the model.")


SPLITS = ("heads", "layers")  # tensor parallel (mlx_model/sharding.py), pipeline (mlx_model/pipeline.py)


def load_model(path: str | Path, *, lazy: bool = False, dtype: Optional[mx.Dtype] = None,
               group: Optional[mx.distributed.Group] = None, split: str = "heads") -> Model:
    """Build the model described by `path`/config.json and load its weights.

    Missing or unexpected tensors are an error that names them. `dtype` casts float weights. With a
    `group` of two or more ranks the model is split across them, by `split`: "heads" shards every layer
    (mlx_model/sharding.py), "layers" gives each rank a run of whole layers (mlx_model/pipeline.py); this
    rank reads only its part of the checkpoint.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    path = Path(path).expanduser()
    check_model_path(path)
    config = parse_config(path, read_config(path))
    try:
        model = Model(config)  # values are checked by ModelConfig; this catches combinations it cannot see
    except (ModelConfigError, TypeError, ValueError, OverflowError, AttributeError, IndexError,
            KeyError) as err:
        raise ModelLoadError(f"{path / 'config.json'} has a value the model cannot use ({err}); re-download or "
                             "re-convert the model.") from err
    if group is not None and group.size() > 1:
        _fill_shard(model, config.quantization, group, path, dtype, split)
    else:
        _fill(model, config.quantization, read_weights(path), path, dtype)
    if not lazy:
        mx.eval(model.parameters())
    return model


def _fill_shard(model: nn.Module, quantization: Optional[dict], group, path: Path,
                dtype: Optional[mx.Dtype], split: str = "heads") -> None:
    """This rank's part of the checkpoint, read from the files: its slice of every split tensor and, split
    by layers, only the tensors of the modules it keeps; the rest as `_fill` loads it."""
    located = _located_tensors(path, model)
    weights = {k: v[3] for k, v in located.items()}
    if quantization:  # on the whole model, checked against the whole tensors' shapes
        _apply_quantization(model, quantization, weights, path)
    _check_names(model, weights, path)  # before the split drops other ranks' modules
    try:  # slices (or drops) the still-lazy initial weights: nothing is computed
        plan = shard_model(model, group) if split == "heads" else pipeline_model(model, group)
    except ShardingError as err:
        raise ModelLoadError(f"{path} cannot be split across {group.size()} ranks: {err}") from err
    if split == "layers":
        kept = {name for name, _ in tree_flatten(model.parameters())}
        located = {name: entry for name, entry in located.items() if name in kept}
    _load_checked(model, read_sharded_weights(path, model, located, plan), path, dtype)
    stage = model.language_model.stage
    if stage is not None:
        stage.wire = model.language_model.norm.weight.dtype


def _fill(model: nn.Module, quantization: Optional[dict], raw_weights: dict[str, mx.array], path: Path,
          dtype: Optional[mx.Dtype]) -> None:
    """Sanitize, quantize as config.json says, check every name and shape, and load the weights."""
    weights = model.sanitize(raw_weights)
    if quantization:
        _apply_quantization(model, quantization, weights, path)
    _load_checked(model, weights, path, dtype)


def _load_checked(model: nn.Module, weights: dict[str, mx.array], path: Path, dtype: Optional[mx.Dtype]) -> None:
    """Check every name and shape against the model, then load the weights."""
    _check_names(model, weights, path)
    if dtype is not None:
        weights = {k: v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) and not k.endswith(".scales")
                   and not k.endswith(".biases") else v for k, v in weights.items()}
    _check_shapes(model, weights, path)
    model.load_weights(list(weights.items()), strict=True)
    model.eval()


def _check_names(model: nn.Module, weights: dict[str, mx.array], path: Path) -> None:
    """The checkpoint holds exactly the model's tensors; else a ModelLoadError naming the odd ones."""
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


def _check_shapes(model: nn.Module, weights: dict[str, mx.array], path: Path) -> None:
    for name, param in tree_flatten(model.parameters()):
        if weights[name].shape != param.shape:
            raise ModelLoadError(
                f"{path}: tensor {name} has shape {tuple(weights[name].shape)} but config.json implies "
                f"{tuple(param.shape)}; the weights and config do not belong together."
            )


def parse_config(path: Path, raw_config: dict) -> ModelConfig:
    """config.json's dict as a ModelConfig; a wrong value is a ModelLoadError naming the key and the file."""
    try:
        return ModelConfig.from_dict(raw_config)
    except ModelConfigError as err:
        raise ModelLoadError(f"{path / 'config.json'} has a value the model cannot use: {err} Fix it, or "
                             "re-download or re-convert the model.") from err


def load(path: str | Path, *, lazy: bool = False, dtype: Optional[mx.Dtype] = None,
         group: Optional[mx.distributed.Group] = None, split: str = "heads"):
    """`model, processor = load(path)` for a complete model folder (the app, the CLI and the server load this
    way). Completeness (tokenizer, chat template, processor settings) is checked before any weight is read:
    an incomplete folder raises IncompleteModelError saying what is missing. With a `group`, this rank's part
    of the model is loaded, split by `split` as `load_model` says. The MTP drafter the folder records is loaded
    beside the model (`mlx_model.assistant.attached_drafter(model)`)."""
    from .processor import load_processor
    from .tokenizer import TokenizerLoadError

    folder = Path(path).expanduser()
    check_model_path(folder)
    raw_config = read_config(folder)
    parse_config(folder, raw_config)
    check_complete(folder, raw_config)
    model = load_model(folder, lazy=lazy, dtype=dtype, group=group, split=split)
    if group is None or group.size() == 1:  # a split model decodes without its drafter
        _load_recorded_drafter(folder, raw_config, model, lazy, dtype)
    try:
        processor = load_processor(folder, model.config)
    except (TokenizerLoadError, ValueError) as err:  # a damaged tokenizer file or processor_config.json
        raise ModelLoadError(str(err)) from err
    return model, processor


def load_drafter(path: str | Path, target_config: Optional[ModelConfig] = None, *, lazy: bool = False,
                 dtype: Optional[mx.Dtype] = None):
    """The MTP drafter (mlx_model.assistant.Drafter) in folder `path`, checked against the target's config
    when given. Raises ModelLoadError naming the file and what is wrong."""
    from .assistant import Drafter
    from .assistant_config import AssistantConfig

    path = Path(path).expanduser()
    check_model_path(path)
    try:
        config = AssistantConfig.from_dict(read_config(path))
        if target_config is not None:
            config.check_target(target_config.text_config)
        drafter = Drafter(config)
    except (ModelConfigError, TypeError, ValueError, OverflowError, AttributeError, IndexError,
            KeyError) as err:
        raise ModelLoadError(f"{path / 'config.json'}: {err} The drafter does not fit; convert it again with "
                             "its model.") from err
    _fill(drafter, config.quantization, read_weights(path), path, dtype)
    if not lazy:
        mx.eval(drafter.parameters())
    return drafter


def _load_recorded_drafter(folder: Path, raw_config: dict, model: Model, lazy: bool,
                           dtype: Optional[mx.Dtype]) -> None:
    """Load the drafter the folder records and keep it beside the model; a broken one is logged and skipped
    (the model answers without it, a little slower)."""
    from .assistant import optional_attach
    from .assistant_config import recorded_drafter

    drafter_path = recorded_drafter(folder, raw_config)
    if drafter_path is None:
        return
    try:
        optional_attach(model, load_drafter(drafter_path, model.config, lazy=lazy, dtype=dtype))
    except ModelLoadError as error:
        log.warning("the drafter of %s is not used: %s", folder, error)
