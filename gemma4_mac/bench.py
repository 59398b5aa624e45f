"""The honest benchmark: our app's path against mlx-lm's on the same weights, in one process.

`python -m gemma4_mac.bench [--contexts 1024 4096 16384] [--weights bfloat16 4bit] [--repeats 3]` builds a
random-weight model with the real vocabulary (262,144) and real layer kinds (sliding, full, KV-shared,
PLE) at reduced width and depth and loads it into both (mlx-lm: its own `gemma4_text`). Each side runs
the path its users run (`bench_paths.py`: ours, a chat session with the app's chunk policy; mlx-lm,
`generate_step` with its defaults), in alternating order, and each pair of runs gives a ratio (ours
over mlx-lm; the median and the spread are printed). Sections: prefill and decode speed and peak memory
beyond the weights per context, with the planner's signed error (negative: it under-counted); the KV
precisions (bytes, peak, speed; accuracy with `--kv-quality MODEL_DIR` on real weights); the third turn
of a chat about a document against mlx-lm's two reuse practices; the longest context each side reads
within a memory budget, found by running both. Prints a short table, then one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from mlx_model import load_model

from . import bench_paths as paths

BENCH_CONFIG = dict(
    model_type="gemma4_text",
    vocab_size=262_144,
    vocab_size_per_layer_input=262_144,
    hidden_size=128,
    intermediate_size=512,
    num_hidden_layers=7,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=256,
    global_head_dim=512,
    sliding_window=512,
    num_kv_shared_layers=2,
    use_double_wide_mlp=True,
    hidden_size_per_layer_input=16,
    final_logit_softcapping=30.0,
    max_position_embeddings=131_072,
    layer_types=["sliding_attention"] * 4 + ["full_attention"] + ["sliding_attention", "full_attention"],
)
WEIGHTS = ("bfloat16", "4bit")


def write_checkpoint(path: Path, seed: int = 0) -> None:
    """Random weights for BENCH_CONFIG saved as a float32 checkpoint in our layout."""
    from mlx_model.model import Model, ModelConfig

    mx.random.seed(seed)
    model = Model(ModelConfig.from_dict(BENCH_CONFIG))
    weights = {
        k: (0.02 * mx.random.normal(v.shape)).astype(mx.float32) for k, v in tree_flatten(model.parameters())
    }
    for k in weights:
        if k.endswith(("norm.weight", "layer_scalar")):
            weights[k] = mx.ones(weights[k].shape)
    mx.save_safetensors(str(path / "model.safetensors"), weights)
    (path / "config.json").write_text(json.dumps(BENCH_CONFIG))


def load_mlx_lm(path: Path):
    """mlx-lm's own gemma4_text model on the same weights (its sanitize, its caches)."""
    from mlx_lm.models import gemma4_text

    args = gemma4_text.ModelArgs.from_dict(BENCH_CONFIG)
    model = gemma4_text.Model(args)
    weights = mx.load(str(path / "model.safetensors"))
    weights = {k.replace("model.language_model.", "model."): v for k, v in weights.items()}
    model.load_weights(list(model.sanitize(weights).items()))
    mx.eval(model.parameters())
    return model


def load_pair(path: Path, weights: str):
    """Ours and mlx-lm's model on the same checkpoint, cast or quantized the same way."""
    ours = load_model(path)
    theirs = load_mlx_lm(path)
    if weights in ("bfloat16", "4bit"):
        for model in (ours, theirs):
            model.set_dtype(mx.bfloat16)
    if weights == "4bit":
        # the same layers on both sides: every one whose input width is a whole number of groups
        def fits(_, module):
            return hasattr(module, "to_quantized") and module.weight.shape[-1] % 64 == 0

        for model in (ours, theirs):
            nn.quantize(model, group_size=64, bits=4, class_predicate=fits)
    mx.eval(ours.parameters(), theirs.parameters())
    return ours, theirs


def spread(values: list[float]) -> dict:
    """Median, min and max of paired ratios."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def compare_at(ours, theirs, tokens: list[int], repeats: int, n_decode: int) -> dict:
    """Alternating runs (ours first on even repeats); paired ratios of speed and peak memory."""
    runs_ours, runs_theirs = [], []
    for r in range(repeats):
        order = (0, 1) if r % 2 == 0 else (1, 0)
        for side in order:
            if side == 0:
                runs_ours.append(paths.ours(ours, tokens, n_decode))
            else:
                runs_theirs.append(paths.mlx_lm(theirs, tokens, n_decode))
    pairs = list(zip(runs_ours, runs_theirs))
    peak_ours = max(r.peak_bytes for r in runs_ours)
    chunk = runs_ours[0].chunk
    estimate = paths.planner_estimate(ours, len(tokens), chunk)
    return {
        "ours": {
            "prefill_tps": [r.prefill_tps for r in runs_ours],
            "decode_tps": [r.decode_tps for r in runs_ours],
            "peak_beyond_weights_bytes": peak_ours,
            "chunk": chunk,
        },
        "mlx_lm": {
            "prefill_tps": [r.prefill_tps for r in runs_theirs],
            "decode_tps": [r.decode_tps for r in runs_theirs],
            "peak_beyond_weights_bytes": max(r.peak_bytes for r in runs_theirs),
            "chunk": 2048,
        },
        "prefill_ratio": spread([a.prefill_tps / b.prefill_tps for a, b in pairs]),
        "decode_ratio": spread([a.decode_tps / b.decode_tps for a, b in pairs]),
        "peak_ratio": spread([a.peak_bytes / max(b.peak_bytes, 1) for a, b in pairs]),
        "planner_bytes": estimate,
        "planner_error": estimate / max(peak_ours, 1) - 1.0,
    }


def kv_section(model, tokens: list[int], n_decode: int, quality_model: Optional[Path]) -> dict:
    """Our path at 16, 8 and 4-bit KV: cache bytes, peak, speed, planner error; accuracy on real weights."""
    figures = {"context": len(tokens)}
    for bits in (None, 8, 4):
        run = paths.ours(model, tokens, n_decode, kv_bits=bits)
        cache = model.make_cache(kv_bits=bits)
        paths.prefill(model, tokens, cache, chunk_size=run.chunk)
        estimate = paths.planner_estimate(model, len(tokens), run.chunk, bits)
        figures[f"{bits or 16}bit"] = {
            "kv_bytes": int(sum(c.nbytes for c in cache)),
            "peak_beyond_weights_bytes": run.peak_bytes,
            "prefill_tps": run.prefill_tps,
            "decode_tps": run.decode_tps,
            "chunk": run.chunk,
            "planner_bytes": estimate,
            "planner_error": estimate / max(run.peak_bytes, 1) - 1.0,
        }
        del cache
    if quality_model is not None:
        from .kv_quality import measure

        figures["accuracy_real_weights"] = measure(quality_model)
    return figures


def third_turn_section(ours, theirs, doc_tokens: int, rng) -> dict:
    """Time to the third turn's first token; mlx-lm with its server's trimming and with a kept copy."""
    doc = rng.integers(3, 262_000, doc_tokens).tolist()
    questions = [rng.integers(3, 262_000, 24).tolist() + [105, 4] for _ in range(3)]
    thought, answer = rng.integers(3, 262_000, 200).tolist(), rng.integers(3, 262_000, 60).tolist()
    ttft = {
        "ours": paths.third_turn_ours(ours, doc, questions, thought, answer),
        "mlx_lm_trim": paths.third_turn_mlx_lm_trim(theirs, doc, questions, thought, answer),
        "mlx_lm_copy": paths.third_turn_mlx_lm_copy(theirs, doc, questions, thought, answer),
    }
    return {
        "doc_tokens": doc_tokens,
        "ttft_s": ttft,
        "speedup_vs_trim": ttft["mlx_lm_trim"] / ttft["ours"],
        "speedup_vs_copy": ttft["mlx_lm_copy"] / ttft["ours"],
    }


def capacity_section(
    ours, theirs, budget_bytes: int, contexts: list[int], kv_bits: Optional[int], rng
) -> dict:
    """The longest of `contexts` each side reads and answers within `budget_bytes` beyond the weights,
    found by running them in increasing order. Ours: the chunk policy told that much memory is free."""
    found = {}
    for name, run in (
        ("ours", lambda t: paths.ours(ours, t, 2, kv_bits=kv_bits, available_bytes=budget_bytes)),
        ("mlx_lm", lambda t: paths.mlx_lm(theirs, t, 2)),
    ):
        best, peaks = 0, {}
        for context in contexts:
            peak = run(rng.integers(3, 262_000, context).tolist()).peak_bytes
            peaks[str(context)] = peak
            if peak > budget_bytes:
                break
            best = context
        found[name] = {"longest_context": best, "peaks": peaks, "all_fit": best == contexts[-1]}
    ratio = found["ours"]["longest_context"] / max(found["mlx_lm"]["longest_context"], 1)
    return {
        "budget_beyond_weights_bytes": budget_bytes,
        "ours_kv_bits": kv_bits or 16,
        "mlx_lm_kv_bits": 16,
        **found,
        "ratio": ratio,
        "ratio_is_lower_bound": found["ours"]["all_fit"],
    }


def run(
    contexts,
    weights=WEIGHTS,
    repeats: int = 3,
    n_decode: int = 16,
    doc_tokens: int = 4096,
    budget_mb: int = 64,
    capacity_contexts=(1024, 2048, 4096, 8192, 16384),
    kv_context: Optional[int] = None,
    quality_model: Optional[Path] = None,
    sections=("speed", "kv", "third_turn", "capacity"),
) -> dict:
    """All measurements; returns the JSON-ready result."""
    rng = np.random.default_rng(0)
    result = {
        "device": str(mx.default_device()),
        "mlx": mx.__version__,
        "config": BENCH_CONFIG,
        "sides": {
            "ours": "ChatSession.read_prompt (app chunk policy) + generate_tokens, greedy",
            "mlx_lm": "mlx_lm.generate.generate_step, its defaults (prefill_step_size 2048), greedy",
        },
        "repeats": repeats,
        "decode_tokens": n_decode,
        "weights": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        write_checkpoint(path)
        for kind in weights:
            ours, theirs = load_pair(path, kind)
            part = {}
            if "speed" in sections:
                part["contexts"] = {
                    str(c): compare_at(ours, theirs, rng.integers(3, 262_000, c).tolist(), repeats, n_decode)
                    for c in contexts
                }
            if "kv" in sections and kind == weights[0]:
                tokens = rng.integers(3, 262_000, kv_context or max(contexts)).tolist()
                part["kv"] = kv_section(ours, tokens, n_decode, quality_model)
            if "third_turn" in sections and kind == weights[0]:
                part["third_turn"] = third_turn_section(ours, theirs, doc_tokens, rng)
            if "capacity" in sections and kind == weights[0]:
                part["capacity"] = capacity_section(
                    ours, theirs, budget_mb << 20, list(capacity_contexts), 8, rng
                )
            result["weights"][kind] = part
            del ours, theirs
    return result


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f}MB"


def table(result: dict) -> str:
    """The headline figures as aligned text."""
    lines = []
    for kind, part in result["weights"].items():
        for context, row in part.get("contexts", {}).items():
            lines.append(
                f"{kind:>9} {int(context) // 1024:>3}K  prefill x{row['prefill_ratio']['median']:.2f} "
                f"[{row['prefill_ratio']['min']:.2f}-{row['prefill_ratio']['max']:.2f}]  decode "
                f"x{row['decode_ratio']['median']:.2f} [{row['decode_ratio']['min']:.2f}-"
                f"{row['decode_ratio']['max']:.2f}]  peak {_mb(row['ours']['peak_beyond_weights_bytes'])} vs "
                f"{_mb(row['mlx_lm']['peak_beyond_weights_bytes'])} (x{row['peak_ratio']['median']:.2f})  "
                f"planner {row['planner_error']:+.1%} (chunk {row['ours']['chunk']})"
            )
        if "kv" in part:
            for bits in ("16bit", "8bit", "4bit"):
                k = part["kv"][bits]
                lines.append(
                    f"{kind:>9} KV {bits:>5}: cache {_mb(k['kv_bytes'])}, "
                    f"peak {_mb(k['peak_beyond_weights_bytes'])}"
                    f", prefill {k['prefill_tps']:.0f} tok/s, decode {k['decode_tps']:.1f} tok/s, "
                    f"planner {k['planner_error']:+.1%}"
                )
            accuracy = part["kv"].get("accuracy_real_weights")
            if accuracy:
                for bits in ("8bit", "4bit"):
                    lines.append(
                        f"{'':>9} KV {bits} on {accuracy['model']}: "
                        f"top-1 {accuracy[bits]['top1_agreement']:.1%}"
                        f", mean KL {accuracy[bits]['mean_kl']:.4f}"
                    )
        if "third_turn" in part:
            t = part["third_turn"]
            lines.append(
                f"{kind:>9} third turn ({t['doc_tokens']} doc tokens): ours {t['ttft_s']['ours']:.2f}s, "
                f"x{t['speedup_vs_trim']:.1f} vs mlx-lm trim, x{t['speedup_vs_copy']:.2f} vs mlx-lm copy"
            )
        if "capacity" in part:
            c = part["capacity"]
            lines.append(
                f"{kind:>9} capacity in {_mb(c['budget_beyond_weights_bytes'])} beyond weights: ours "
                f"({c['ours_kv_bits']}-bit KV) {c['ours']['longest_context']}, mlx-lm "
                f"{c['mlx_lm']['longest_context']}: x{c['ratio']:.1f}"
                + (" (at least: ours read every size tried)" if c["ratio_is_lower_bound"] else "")
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gemma4_mac.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument(
        "--weights", nargs="+", choices=("float32", "bfloat16", "4bit"), default=list(WEIGHTS)
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decode-tokens", type=int, default=16)
    parser.add_argument("--doc-tokens", type=int, default=16384)
    parser.add_argument("--speculative", action="store_true",
                        help="the speculative decoding benchmark instead (gemma4_mac/bench_speculative.py)")
    parser.add_argument("--tokens", type=int, default=48, help="--speculative: tokens per answer")
    parser.add_argument("--rounds", type=int, default=2,
                        help="--speculative: paired plain/speculative rounds")
    parser.add_argument("--tiny-only", action="store_true", help="--speculative: skip the real Gemma 3 270M")
    parser.add_argument("--real-only", action="store_true", help="--speculative: skip the tiny Gemma 4")
    parser.add_argument("--budget-mb", type=int, default=64, help="capacity: memory beyond the weights")
    parser.add_argument("--capacity-contexts", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--kv-context", type=int, default=None)
    parser.add_argument("--kv-quality", type=Path, default=None, help="a real model folder for KV accuracy")
    parser.add_argument(
        "--sections",
        nargs="+",
        default=["speed", "kv", "third_turn", "capacity"],
        choices=("speed", "kv", "third_turn", "capacity"),
    )
    args = parser.parse_args(argv)
    if args.speculative:
        from .bench_speculative import main as speculative_main

        return speculative_main(args.tokens, args.rounds, real=not args.tiny_only, tiny=not args.real_only)
    started = time.perf_counter()
    result = run(
        tuple(args.contexts),
        tuple(args.weights),
        args.repeats,
        args.decode_tokens,
        args.doc_tokens,
        args.budget_mb,
        tuple(args.capacity_contexts),
        args.kv_context,
        args.kv_quality,
        tuple(args.sections),
    )
    result["seconds"] = time.perf_counter() - started
    print(table(result))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
