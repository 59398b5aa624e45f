"""Conversion time and peak memory on a synthetic multi-shard checkpoint of several GB.

    python scripts/bench_convert.py [--layers 18] [--shard-gb 1.0] [--bits 4] [--no-quantize] [--keep]
                                    [--skip-quality-check]

Writes a random bfloat16 Gemma 4 text checkpoint (31B-like layout: hidden 2048, MLP 8192, the real
262,144-token vocabulary; ~3.4 GB with 18 layers) as ~1 GB safetensors shards with an index, like the
hub's, into a temporary folder under /tmp. The conversion runs in a child process so that its memory
is measured alone: peak RSS (the kernel's high-water mark, plus a 20 ms psutil sampler), peak private
(anonymous) RSS, and MLX's own peak allocation. The converter promises a peak RSS under twice the largest source shard plus
1 GB; the exit status follows the kernel's high-water mark of the whole RSS (VmHWM on Linux, getrusage
on macOS), which no sampling interval can miss.
Everything is deleted afterwards unless --keep. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GB = 1024 ** 3


def bench_config(layers: int) -> dict:
    """A dense Gemma 4 text config (31B-like: k=v global attention, no PLE) with `layers` layers."""
    pattern = ["sliding_attention"] * 5 + ["full_attention"]
    return dict(model_type="gemma4_text", vocab_size=262144, vocab_size_per_layer_input=262144, hidden_size=2048,
                intermediate_size=8192, num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=4,
                num_global_key_value_heads=2, attention_k_eq_v=True, head_dim=256, global_head_dim=512,
                hidden_size_per_layer_input=0, sliding_window=1024, final_logit_softcapping=30.0,
                rms_norm_eps=1e-6, max_position_embeddings=131072, tie_word_embeddings=True,
                pad_token_id=0, bos_token_id=2, eos_token_id=1,
                layer_types=[pattern[i % len(pattern)] for i in range(layers)])


def write_checkpoint(folder: Path, config: dict, shard_bytes: int) -> dict:
    """Random bfloat16 weights in hub-style shards (model-0000i-of-0000n.safetensors + index)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from mlx_model.model import Model, ModelConfig

    # the skeleton's parameters are lazy: only their shapes are used here
    shapes = [(name, value.shape) for name, value in tree_flatten(Model(ModelConfig.from_dict(config)).parameters())]
    folder.mkdir(parents=True)
    mx.random.seed(0)
    shards, current, size = [], {}, 0

    def flush():
        nonlocal current, size
        if current:
            path = folder / f"shard-{len(shards):05d}.safetensors"
            mx.save_safetensors(str(path), current, metadata={"format": "pt"})
            shards.append((path, list(current)))
            current, size = {}, 0
            mx.clear_cache()

    for name, shape in shapes:
        nbytes = 2 * int(mx.prod(mx.array(shape)).item()) if shape else 2
        if current and size + nbytes > shard_bytes:
            flush()
        scale = 1.0 if name.endswith(("norm.weight", "layer_scalar")) else 0.02
        value = (scale * mx.random.normal(shape)).astype(mx.bfloat16)
        mx.eval(value)
        current[name], size = value, size + nbytes
    flush()
    weight_map = {}
    for i, (path, names) in enumerate(shards):
        final = folder / f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        path.rename(final)
        weight_map.update({name: final.name for name in names})
    total = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(config))
    sys.path.insert(0, str(REPO))
    from tests.assets import gemma4_vocab_dir

    for file in gemma4_vocab_dir().iterdir():  # the converter finishes only models with a tokenizer
        if file.is_file() and not file.name.startswith("."):
            shutil.copy(file, folder / file.name)
    return {"shards": len(shards), "total_bytes": total,
            "largest_shard_bytes": max(p.stat().st_size for p in folder.glob("*.safetensors"))}


_CHILD = r"""
import json, resource, sys, threading, time
sys.path.insert(0, sys.argv[1])
import psutil
import mlx.core as mx
from convert import convert_checkpoint

process, peak, peak_anon, running = psutil.Process(), [0], [0], [True]

def status_bytes(field):
    # a "kB" line of /proc/self/status (Linux), or None
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None

def anonymous_rss():
    # private (anonymous) memory: what the conversion itself allocated, without mapped library pages
    return status_bytes("RssAnon") or 0

def sample():
    while running[0]:
        peak[0] = max(peak[0], process.memory_info().rss)
        peak_anon[0] = max(peak_anon[0], anonymous_rss())
        time.sleep(0.02)

sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
options = json.loads(sys.argv[4])
if "quality_thresholds" in options:
    from convert.quality import QualityThresholds
    options["quality_thresholds"] = QualityThresholds(**options["quality_thresholds"])
started = time.perf_counter()
convert_checkpoint(sys.argv[2], sys.argv[3], **options)
seconds = time.perf_counter() - started
running[0] = False
sampler.join()
# Linux keeps ru_maxrss across fork + exec, so it would report the parent's peak (the one that wrote the
# checkpoint); VmHWM is this process's own exact peak. macOS has no /proc; its ru_maxrss is in bytes.
maxrss = status_bytes("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_rss_bytes": max(maxrss, peak[0]),
                  "sampled_peak_rss_bytes": peak[0], "peak_anonymous_rss_bytes": peak_anon[0],
                  "mlx_peak_bytes": mx.get_peak_memory()}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=18, help="decoder layers (18: ~3.4 GB in bfloat16)")
    parser.add_argument("--shard-gb", type=float, default=1.0, help="source shard size in GiB")
    parser.add_argument("--bits", type=int, default=4, choices=(4, 8))
    parser.add_argument("--no-quantize", action="store_true", help="measure a float (bfloat16) conversion")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint and the output")
    parser.add_argument("--skip-quality-check", action="store_true",
                        help="measure the conversion alone, without the quality check that follows it")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))

    work = Path(tempfile.mkdtemp(prefix="bench-convert-", dir="/tmp"))
    try:
        started = time.perf_counter()
        source = write_checkpoint(work / "source", bench_config(args.layers), int(args.shard_gb * GB))
        source["write_seconds"] = round(time.perf_counter() - started, 1)
        options = {"bits": args.bits, "group_size": 64, "quantize": not args.no_quantize, "dtype": "bfloat16",
                   "skip_quality_check": args.skip_quality_check,
                   # random weights are no model to keep: the gate runs (its memory and time are measured) and
                   # reports its figures, but refuses nothing
                   "quality_thresholds": {"max_kl": 1e9, "min_top1": 0.0}}
        child = subprocess.run([sys.executable, "-c", _CHILD, str(REPO), str(work / "source"), str(work / "out"),
                                json.dumps(options)], capture_output=True, text=True)
        if child.returncode:
            sys.stderr.write(child.stderr)
            return child.returncode
        measured = json.loads(child.stdout.strip().splitlines()[-1])
        bound = 2 * source["largest_shard_bytes"] + GB
        output = sum(p.stat().st_size for p in (work / "out").glob("*.safetensors"))
        report = {
            "source_gb": round(source["total_bytes"] / GB, 2), "source_shards": source["shards"],
            "largest_shard_gb": round(source["largest_shard_bytes"] / GB, 2),
            "write_seconds": source["write_seconds"], "options": options,
            "convert_seconds": round(measured["seconds"], 1),
            "throughput_gb_per_s": round(source["total_bytes"] / GB / measured["seconds"], 3),
            "peak_rss_gb": round(measured["peak_rss_bytes"] / GB, 2),
            "sampled_peak_rss_gb": round(measured["sampled_peak_rss_bytes"] / GB, 2),
            "peak_anonymous_rss_gb": round(measured["peak_anonymous_rss_bytes"] / GB, 2),
            "mlx_peak_gb": round(measured["mlx_peak_bytes"] / GB, 2),
            "bound_gb": round(bound / GB, 2), "within_bound": measured["peak_rss_bytes"] < bound,
            "private_within_bound": measured["peak_anonymous_rss_bytes"] < bound,
            "output_gb": round(output / GB, 2),
        }
        quality = work / "out" / "quality.json"
        if quality.exists():
            report["quality_check"] = json.loads(quality.read_text())
        print(json.dumps(report, indent=2))
        return 0 if report["within_bound"] else 1
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
