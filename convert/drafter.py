"""A model's MTP drafter (`gemma4_assistant`, `gemma4_unified_assistant`): converted into the model folder's
`drafter/` subfolder, quantized as the model is, and recorded in the model's config.json
(`"gemma4_mac": {"drafter": {"folder": "drafter", "source": ...}}`), which `mlx_model.load` reads.

    convert_drafter("google/gemma-4-E2B-it-assistant", "~/models/gemma-4-e2b-it-4bit")

The drafter is checked against the model before anything is written: same vocabulary, hidden size equal to
its `backbone_hidden_size`, head sizes matching the model's caches.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

import mlx.core as mx
from mlx.utils import tree_flatten

from mlx_model.assistant_config import DRAFTER_FOLDER

from .errors import CheckpointIndexError, ConversionError, UnsupportedSourceError
from .hf_source import download, looks_like_repo_id, open_checkpoint, safetensors_layout
from .pipeline import CONVERTER_VERSION, DTYPES, _convert_tensor, _finish, _shard_bytes
from .progress import ProgressCallback, Reporter
from .quantize import QuantPlan
from .sink import TensorSink
from .writer import OutputFolder, ShardWriter


def convert_drafter(src: str | Path, model_folder: str | Path, *, progress: ProgressCallback | None = None,
                    cancel: threading.Event | None = None, max_shard_bytes: int | None = None) -> Path:
    """Convert drafter SRC (checkpoint folder or hub repo id) into MODEL_FOLDER/drafter, quantized with the
    model's bits and group size (float when the model is), and record it in the model's config.json.
    Replaces an earlier drafter. Returns the drafter folder; raises ConversionError subclasses naming the
    fault."""
    reporter = Reporter(progress, cancel)
    model_folder = Path(model_folder).expanduser().resolve()
    model_config = _read_model_config(model_folder)
    source = _resolve(src, reporter)
    checkpoint = open_checkpoint(source)
    drafter, expected = _skeleton(checkpoint.config, model_config, str(source / "config.json"))
    bits, group_size, dtype = _model_format(model_config)
    plan = QuantPlan(drafter, bits, group_size) if bits else None
    started = time.time()
    folder = OutputFolder(model_folder / DRAFTER_FOLDER, force=True)
    try:
        writer = ShardWriter(folder.path, _shard_bytes(max_shard_bytes, checkpoint.largest_shard_bytes))
        sink = TensorSink(expected, plan, DTYPES[dtype], writer, reporter)
        for shard in checkpoint.shards:
            reporter.report("convert", 0, 1, item=shard.name,
                            message=f"Converting the drafter ({shard.name})")
            try:
                weights = mx.load(str(shard))
            except (RuntimeError, ValueError, OSError) as error:
                raise CheckpointIndexError(f"{shard} cannot be read ({error}); download it again.") from error
            header, start_of_data = safetensors_layout(shard)
            for name in sorted(weights, key=lambda n: header[n]["data_offsets"][0]):
                _convert_tensor(name, weights.pop(name), header[name], shard, start_of_data, drafter.sanitize,
                                plan, sink)
            sink.raise_unexpected()
        config = _finish(writer, sink, plan, checkpoint.config)["config"]
        config["gemma4_mac"] = {"converter": CONVERTER_VERSION, "source": str(src), "dtype": dtype,
                                "quantized": plan is not None, "seconds": round(time.time() - started, 1)}
        (folder.path / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        result = folder.commit()
    except BaseException:
        folder.discard()
        raise
    finally:
        mx.clear_cache()
    record_drafter(model_folder, DRAFTER_FOLDER, str(src))
    reporter.report("done", 1, 1, item=str(result), message=f"Converted the drafter into {result}")
    return result


def record_drafter(model_folder: Path, folder_name: str, source: str) -> None:
    """Write `"gemma4_mac": {"drafter": {...}}` into the model's config.json (atomically)."""
    path = Path(model_folder) / "config.json"
    config = _read_model_config(model_folder)
    section = config.get("gemma4_mac") if isinstance(config.get("gemma4_mac"), dict) else {}
    config["gemma4_mac"] = {**section, "drafter": {"folder": folder_name, "source": source}}
    handle, temporary = tempfile.mkstemp(prefix=".config-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(config, out, indent=2)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _read_model_config(model_folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((Path(model_folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConversionError(f"{model_folder} is not a converted model folder (its config.json cannot be "
                                     f"read: {error}); convert the model first, then its drafter.") from error
    if not isinstance(config, dict):
        raise ConversionError(f"{model_folder}/config.json does not describe a model; convert the model "
                              "again.")
    return config


def _resolve(src: str | Path, reporter: Reporter) -> Path:
    path = Path(src).expanduser()
    if path.is_dir():
        return path.resolve()
    if isinstance(src, str) and looks_like_repo_id(src):
        return download(src, reporter).resolve()
    raise UnsupportedSourceError(f"{src} is neither a drafter checkpoint folder nor a Hugging Face repo id.")


def _skeleton(config: dict, model_config: dict, where: str):
    """The drafter module for `config`, checked against the model it drafts for, and its tensor shapes."""
    from mlx_model.assistant import Drafter
    from mlx_model.assistant_config import AssistantConfig
    from mlx_model.config import ModelConfig, ModelConfigError

    for key in ("quantization", "quantization_config"):
        if config.get(key):
            raise UnsupportedSourceError(f"{where} describes an already quantized drafter ({key}); convert "
                                         "the original float checkpoint instead.")
    try:
        assistant = AssistantConfig.from_dict(config)
        assistant.check_target(ModelConfig.from_dict(model_config).text_config)
        drafter = Drafter(assistant)
    except (ModelConfigError, TypeError, ValueError, KeyError, OverflowError, IndexError) as error:
        raise UnsupportedSourceError(f"{where}: {error} It is not the drafter of this model.") from error
    return drafter, {name: tuple(array.shape) for name, array in tree_flatten(drafter.parameters())}


def _model_format(model_config: dict) -> tuple[Optional[int], int, str]:
    """(bits or None, group size, float dtype) of the converted model, which its drafter follows."""
    quantization = model_config.get("quantization")
    section = model_config.get("gemma4_mac") if isinstance(model_config.get("gemma4_mac"), dict) else {}
    dtype = section.get("dtype") if section.get("dtype") in DTYPES else "bfloat16"
    if not isinstance(quantization, dict):
        return None, 64, dtype
    bits, group_size = quantization.get("bits", 4), quantization.get("group_size", 64)
    if not isinstance(bits, int) or not isinstance(group_size, int):
        raise ConversionError("the model's config.json has a damaged quantization entry; convert the model "
                              "again.")
    return bits, group_size, dtype
