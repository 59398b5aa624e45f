"""convert_checkpoint: a Hugging Face checkpoint (folder or hub id) or GGUF file in, an MLX model folder out."""

from __future__ import annotations

import errno
import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten

from .completeness import check_output, check_source
from .errors import CheckpointIndexError, ConversionError, SourceNotFoundError, UnsupportedSourceError, WriteError
from .gguf_reader import GGUFFile
from .hf_source import HFCheckpoint, download, looks_like_repo_id, open_checkpoint, safetensors_layout
from .progress import ProgressCallback, Reporter
from .quality import QualityThresholds, check_quality
from .quantize import QuantPlan
from .safetensors_rows import SafetensorsRows
from .sink import TensorSink, probe_sanitize
from .writer import DEFAULT_SHARD_BYTES, OutputFolder, ShardWriter

DTYPES = {"bfloat16": mx.bfloat16, "float16": mx.float16, "float32": mx.float32}
SUPPORTED_BITS = (2, 3, 4, 5, 6, 8)
SUPPORTED_GROUP_SIZES = (32, 64, 128)
CONVERTER_VERSION = "gemma4-mac convert 1"
_MIN_SHARD_BYTES = 256 << 20


def convert_checkpoint(src: str | Path, dst: str | Path, *, bits: int = 4, group_size: int = 64,
                       quantize: bool = True, dtype: str = "bfloat16", force: bool = False,
                       progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
                       label: str | None = None, metadata: dict[str, Any] | None = None,
                       max_shard_bytes: int | None = None, uniform: bool = False, calibrate: bool = False,
                       skip_quality_check: bool = False,
                       quality_thresholds: QualityThresholds | None = None) -> Path:
    """Convert SRC (HF folder, hub repo id, `owner/name/file.gguf`, or a .gguf file) into an MLX model at DST.

    bits/group_size: affine quantization with Gemma 4's mixed-precision recipe (mlx_model/quant_recipe.py:
    PLE, router, embeddings, a third of v_proj/down_proj and the towers at 8 bits) unless quantize=False;
    uniform=True: every module at `bits` (router at 8). calibrate: distil the 4-bit scales and biases against
    the source (convert/calibrate.py). A quantized model is then checked against its source on built-in
    inputs (convert/quality.py; figures in quality.json) and refused (QualityGateError, nothing left behind)
    when worse than quality_thresholds; skip_quality_check=True skips that (the app never does).
    dtype: float type of everything kept in float (and of scales/biases).
    force: replace an existing DST (only once the new model is complete). progress: called with
    ConversionProgress reports. cancel: set it to stop; ConversionCancelled is raised and nothing is left.
    label: display name recorded in config.json ("gemma4_mac.display_name"); metadata: more keys for
    that "gemma4_mac" section. max_shard_bytes: output shard size (default: half the largest input
    shard, 256 MiB to 2 GiB, which keeps peak memory under twice that shard plus 1 GiB).
    Returns DST. Raises ConversionError subclasses with a message naming the file or tensor at fault.
    """
    if dtype not in DTYPES:
        raise ConversionError(f"dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}.")
    if quantize and bits not in SUPPORTED_BITS:
        raise ConversionError(f"--bits {bits} is not supported; use one of {SUPPORTED_BITS}.")
    if quantize and group_size not in SUPPORTED_GROUP_SIZES:
        raise ConversionError(f"--group-size {group_size} is not supported; use one of {SUPPORTED_GROUP_SIZES}.")
    if calibrate and (not quantize or bits >= 8):
        raise ConversionError("--calibrate tunes weights stored below 8 bits; use it with --bits 4.")
    reporter = Reporter(progress, cancel)
    destination = Path(dst).expanduser().resolve()
    source = _resolve_source(src, reporter)
    metadata = check_source(source, src, metadata)  # tokenizer, chat template, processor settings: or nothing
    if destination == source or destination in source.parents or source in destination.parents:
        raise ConversionError(f"The destination {destination} must not be the source {source} or inside it.")
    started = time.time()
    folder = OutputFolder(destination, force)
    try:
        if source.is_file():
            summary = _convert_gguf(source, folder.path, bits, group_size, quantize, dtype, reporter,
                                    max_shard_bytes, uniform)
        else:
            summary = _convert_folder(source, folder.path, bits, group_size, quantize, dtype, reporter,
                                      max_shard_bytes, uniform)
        config = summary.pop("config")
        config["gemma4_mac"] = {"converter": CONVERTER_VERSION, "source": str(src), "dtype": dtype,
                                "quantized": quantize, "seconds": round(time.time() - started, 1), **summary}
        config["gemma4_mac"].update(metadata or {})
        if label:
            config["gemma4_mac"]["display_name"] = label
        reporter.report("finalize", 0, 1, message="Writing config.json")
        (folder.path / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        check_output(folder.path)
        if quantize:
            calibrate_and_check(source, folder.path, reporter, bits=bits, group_size=group_size,
                                uniform=uniform, calibrate=calibrate, check=not skip_quality_check,
                                thresholds=quality_thresholds)
        result = folder.commit()
    except OSError as error:
        folder.discard()
        if error.errno in (errno.ENOSPC, errno.EDQUOT):  # config, tokenizer or companion files: same advice
            raise WriteError(f"Writing {Path(error.filename or dst).name} failed: the disk is full ({error.strerror}). "
                             "Free some disk space or choose another destination, then convert again.") from error
        raise
    except BaseException:
        folder.discard()
        raise
    finally:
        mx.clear_cache()
    if progress is not None:
        reporter.report("done", 1, 1, item=str(result), message=f"Converted to {result}")
    return result


def _resolve_source(src: str | Path, reporter: Reporter) -> Path:
    path = Path(src).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.is_file():
        with open(path, "rb") as handle:
            magic = handle.read(4)
        if magic != b"GGUF":
            raise UnsupportedSourceError(f"{path} is neither a GGUF file nor a checkpoint folder.")
        return path.resolve()
    if isinstance(src, str) and looks_like_repo_id(src):
        return download(src, reporter).resolve()
    raise SourceNotFoundError(f"{src} does not exist and is not a Hugging Face repo id (owner/name).")


def _skeleton(config: dict[str, Any], config_file: str):
    from mlx_model.config import ModelConfigError
    from mlx_model.model import Model, ModelConfig

    for key in ("quantization", "quantization_config"):
        if config.get(key):
            raise UnsupportedSourceError(f"{config_file} describes an already quantized model ({key}); convert the "
                                         "original float checkpoint instead.")
    try:
        model = Model(ModelConfig.from_dict(config))
    except (ModelConfigError, TypeError, ValueError, KeyError, OverflowError, IndexError,
            AttributeError) as error:
        raise UnsupportedSourceError(f"{config_file}: {error}") from error
    expected = {name: tuple(array.shape) for name, array in tree_flatten(model.parameters())}
    return model, expected


def _shard_bytes(requested: int | None, largest_source: int) -> int:
    # Output waits in memory until its shard is written: half the largest input shard (256 MiB to 2 GiB)
    # keeps peak memory under twice that shard plus 1 GiB (scripts/bench_convert.py measures it).
    return requested or min(DEFAULT_SHARD_BYTES, max(_MIN_SHARD_BYTES, largest_source // 2))


def _finish(writer: ShardWriter, sink: TensorSink, plan: QuantPlan | None, config: dict[str, Any]) -> dict:
    sink.finish()
    shards = writer.finish()
    config = dict(config)
    config.pop("quantization_config", None)
    summary = {"config": config, "shards": len(shards), "bytes": writer.total_bytes}
    if plan is not None:
        config["quantization"] = plan.config_entry()
        summary.update(recipe="uniform" if plan.uniform else "gemma4", modules=plan.bits_summary())
    return summary


def _convert_folder(root: Path, out: Path, bits: int, group_size: int, quantize: bool, dtype: str,
                    reporter: Reporter, max_shard_bytes: int | None, uniform: bool = False) -> dict:
    checkpoint: HFCheckpoint = open_checkpoint(root)
    model, expected = _skeleton(checkpoint.config, str(root / "config.json"))
    plan = QuantPlan(model, bits, group_size, uniform=uniform) if quantize else None
    writer = ShardWriter(out, _shard_bytes(max_shard_bytes, checkpoint.largest_shard_bytes))
    sink = TensorSink(expected, plan, DTYPES[dtype], writer, reporter)
    total, done = checkpoint.total_bytes, 0
    for shard in checkpoint.shards:
        reporter.report("convert", done, total, item=shard.name, message=f"Converting {shard.name}")
        try:
            weights = mx.load(str(shard))  # lazy: a tensor's bytes are read when it is evaluated
        except (RuntimeError, ValueError, OSError) as error:
            raise CheckpointIndexError(f"{shard} cannot be read ({error}); download it again.") from error
        header, start_of_data = safetensors_layout(shard)
        names = sorted(weights, key=lambda name: header[name]["data_offsets"][0])  # read the file in order
        size = shard.stat().st_size
        for position, name in enumerate(names):
            reporter.report("convert", done + size * position // max(1, len(names)), total, item=name,
                            message=f"Converting {name}")
            _convert_tensor(name, weights.pop(name), header[name], shard, start_of_data, model.sanitize, plan, sink)
        sink.raise_unexpected()
        done += size
        mx.clear_cache()
    summary = _finish(writer, sink, plan, checkpoint.config)
    for companion in checkpoint.companion_files():
        shutil.copy2(companion, out / companion.name)
    return summary


def _convert_tensor(name: str, lazy: mx.array, entry: dict, shard: Path, start_of_data: int, sanitize,
                    plan: QuantPlan | None, sink: TensorSink) -> None:
    """One source tensor through sanitize into the sink; a quantized weight that sanitize only renames is
    read from the file a chunk of rows at a time instead of whole."""
    used, target = probe_sanitize(sanitize, name, tuple(entry["shape"]))
    if not used:
        return  # the model does not use it (e.g. KV-shared layers' projections)
    if (target is not None and plan is not None and plan.for_weight(target) is not None
            and SafetensorsRows.supports(entry)):
        rows = SafetensorsRows(shard, name, entry, start_of_data)
        sink.add_rows(target, tuple(entry["shape"]), rows, shard.name)
        return
    for final_name, array in sanitize({name: lazy}).items():
        sink.add(final_name, array, shard.name)


def _convert_gguf(path: Path, out: Path, bits: int, group_size: int, quantize: bool, dtype: str,
                  reporter: Reporter, max_shard_bytes: int | None, uniform: bool = False) -> dict:
    from .gguf_config import config_from_gguf, generation_config
    from .gguf_source import convert_gguf_tensors
    from .gguf_tokenizer import write_tokenizer_files

    gguf = GGUFFile(path)
    config = config_from_gguf(gguf)
    model, expected = _skeleton(config, str(path))
    plan = QuantPlan(model, bits, group_size, uniform=uniform) if quantize else None
    writer = ShardWriter(out, _shard_bytes(max_shard_bytes, path.stat().st_size))
    sink = TensorSink(expected, plan, DTYPES[dtype], writer, reporter)
    convert_gguf_tensors(gguf, model.sanitize, sink, reporter)
    summary = _finish(writer, sink, plan, config)
    reporter.report("tokenizer", 0, 1, message="Rebuilding the tokenizer from the GGUF metadata")
    write_tokenizer_files(gguf, out)
    (out / "generation_config.json").write_text(json.dumps(generation_config(config), indent=2), encoding="utf-8")
    return summary


def calibrate_and_check(source: Path, folder: Path, reporter: Reporter, *, bits: int, group_size: int,
                        uniform: bool, calibrate: bool, check: bool,
                        thresholds: QualityThresholds | None = None) -> None:
    """What follows writing a quantized model into its work folder: calibration (optional), then the gate."""
    settings: dict[str, Any] = {"bits": bits, "group_size": group_size,
                                "recipe": "uniform" if uniform else "gemma4", "calibrated": calibrate}
    if calibrate:
        from .calibrate import calibrate_folder  # mlx-lm's training machinery: loaded only when asked

        settings["calibration"] = calibrate_folder(source, folder, reporter)
        config_file = folder / "config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        config.setdefault("gemma4_mac", {})["calibration"] = settings["calibration"]
        config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")
    if check:
        check_quality(source, folder, reporter, settings=settings, thresholds=thresholds,
                      advice=_advice(bits, uniform, calibrate))


def _advice(bits: int, uniform: bool, calibrate: bool) -> str:
    """What to try instead of a refused conversion."""
    options = []
    if uniform:
        options.append("convert with the Gemma 4 recipe (without --uniform)")
    if bits < 8:
        options.append("convert at 8 bits (--bits 8)")
        if not calibrate:
            options.append("calibrate the 4-bit scales (--calibrate)")
    else:
        options.append("keep the weights in float (--no-quantize)")
    return "Instead, " + ", or ".join(options) + "."
