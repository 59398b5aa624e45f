"""One model on 1 rank and split across 2 ranks (tensor parallel), measured in the same run.

`python scripts/bench_distributed.py [--model PATH] [--prompt 512] [--decode 16] [--link 1gbit ...]` prints,
per rank count: resident weight bytes per rank (and the peak while loading), KV-cache bytes per rank after the
prompt, prefill and decode tokens/s, and the collectives tensor parallelism runs (count and bytes, prefill and
per decoded token) beside what a pipeline split would send. `--link` reruns the 2 ranks with loopback shaped
to an Ethernet-like rate (Linux tc, root), which shows what those bytes cost on such a link. Without --model
it writes a random float16 model shaped like a scaled-down 31B (same layer kinds, k_eq_v full layers, GQA, the
vocabulary's share of the weights kept small as in the real one). The 2 ranks run through `mlx.launch
--backend ring` on 127.0.0.1, so they share this machine's cores and memory: the memory figures carry over to
two Macs, the speeds measure the collectives' overhead on one machine, not the speed-up of two.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlx_model import load_model  # noqa: E402

BENCH_CONFIG = dict(
    model_type="gemma4_text", vocab_size=8192, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
    num_attention_heads=8, num_key_value_heads=4, num_global_key_value_heads=2, attention_k_eq_v=True,
    head_dim=64, global_head_dim=128, sliding_window=128, final_logit_softcapping=30.0,
    max_position_embeddings=131_072, hidden_size_per_layer_input=0,
    layer_types=(["sliding_attention"] * 5 + ["full_attention"]) * 2,
)


def write_checkpoint(path: Path) -> None:
    """Random float16 weights for BENCH_CONFIG in our layout."""
    from mlx_model.model import Model, ModelConfig

    mx.random.seed(0)
    model = Model(ModelConfig.from_dict(BENCH_CONFIG))
    weights = {k: (0.02 * mx.random.normal(v.shape)).astype(mx.float16)
               for k, v in tree_flatten(model.parameters())}
    for k in weights:
        if k.endswith(("norm.weight", "layer_scalar")):
            weights[k] = mx.ones(weights[k].shape, dtype=mx.float16)
    mx.save_safetensors(str(path / "model.safetensors"), weights)
    (path / "config.json").write_text(json.dumps(BENCH_CONFIG))


class CollectiveCounter:
    """Counts the tensor-parallel collectives (mlx_model.language.all_sum) and the bytes they reduce."""

    def __init__(self):
        import mlx_model.language as language

        self.calls = self.bytes = 0
        original = language.all_sum

        def counted(x, group):
            if group is not None:
                self.calls += 1
                self.bytes += x.nbytes
            return original(x, group)

        language.all_sum = counted

    def take(self) -> tuple[int, int]:
        """(collectives, bytes) since the last take."""
        taken = (self.calls, self.bytes)
        self.calls = self.bytes = 0
        return taken


def measure(path: str, prompt_len: int, decode: int) -> dict:
    """This rank's figures (every rank runs the same calls: the collectives need them all)."""
    counter = CollectiveCounter()
    group = mx.distributed.init()
    mx.reset_peak_memory()
    model = load_model(path, group=group if group.size() > 1 else None)
    weights = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    load_peak = mx.get_peak_memory()
    tokens = mx.array(np.random.default_rng(0).integers(3, 1000, prompt_len))[None]
    cache = model.make_cache()
    model(tokens[:, :16], cache=model.make_cache())  # warm-up
    counter.take()
    start = time.perf_counter()
    logits = model(tokens, cache=cache, logits_to_keep=1)
    mx.eval(logits)
    prefill_s = time.perf_counter() - start
    prefill_calls, prefill_bytes = counter.take()
    kv = sum(c.nbytes for c in cache)
    token = mx.argmax(logits[:, -1], axis=-1)[:, None]
    start = time.perf_counter()
    for _ in range(decode):
        logits = model(token, cache=cache)
        token = mx.argmax(logits[:, -1], axis=-1)[:, None]
        mx.eval(token)
    decode_s = time.perf_counter() - start
    decode_calls, decode_bytes = counter.take()
    return {"ranks": group.size(), "rank": group.rank(), "weight_bytes": weights,
            "load_peak_bytes": load_peak, "kv_bytes": kv, "prefill_tps": prompt_len / prefill_s,
            "decode_tps": decode / decode_s, "prefill_collectives": prefill_calls,
            "prefill_reduced_bytes": prefill_bytes, "decode_collectives_per_token": decode_calls / decode,
            "decode_reduced_bytes_per_token": decode_bytes / decode,
            "hidden_bytes_per_token": model.language_model.embed(mx.array([[0]])).nbytes}


@contextmanager
def shaped_loopback(rate: str | None) -> Iterator[None]:
    """Loopback limited to `rate` (tc's units: 1gbit, 10gbit) for the block: Linux, root, tc's tbf. The burst
    holds two of loopback's 64 KiB packets (a smaller one drops them all). Shapes all loopback traffic."""
    if not rate:
        yield
        return
    if sys.platform != "linux" or not shutil.which("tc"):
        raise SystemExit("--link needs Linux's tc (run as root)")
    subprocess.run(["tc", "qdisc", "replace", "dev", "lo", "root", "tbf", "rate", rate, "burst", "256kb",
                    "latency", "200ms"], check=True)
    try:
        yield
    finally:
        subprocess.run(["tc", "qdisc", "del", "dev", "lo", "root"], check=True)


def run(path: Path, ranks: int, prompt_len: int, decode: int, out: Path) -> list[dict]:
    worker = [str(Path(__file__).resolve()), "--worker", str(out), "--model", str(path),
              "--prompt", str(prompt_len), "--decode", str(decode)]
    if ranks == 1:
        command = [sys.executable, *worker]
    else:
        launcher = Path(sys.executable).with_name("mlx.launch")
        command = [str(launcher), "--backend", "ring", "-n", str(ranks), "--starting-port", "42323",
                   "--env", f"PYTHONPATH={ROOT}", "--python", sys.executable, *worker]
    subprocess.run(command, check=True, cwd=ROOT)
    return [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model folder (default: a random scaled-down 31B-like model)")
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--decode", type=int, default=16)
    parser.add_argument("--link", nargs="+", metavar="RATE",
                        help="also run 2 ranks with loopback shaped to each RATE (tc tbf, e.g. 1gbit 10gbit; "
                             "Linux, root): tensor parallelism over an Ethernet-like link")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = measure(args.model, args.prompt, args.decode)
        (Path(args.worker) / f"rank{result['rank']}.json").write_text(json.dumps(result))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.model) if args.model else Path(tmp) / "model"
        if not args.model:
            path.mkdir()
            write_checkpoint(path)
        results = {}
        for ranks, rate in [(1, None), (2, None)] + [(2, rate) for rate in args.link or []]:
            label = f"{ranks}" if rate is None else f"2 @{rate}"
            out = Path(tmp) / f"out{len(results)}"
            out.mkdir()
            with shaped_loopback(rate):
                results[label] = run(path, ranks, args.prompt, args.decode, out)
    one = results["1"][0]
    print(f"model: {args.model or 'random scaled-down 31B-like (float16)'}, prompt {args.prompt} tokens, "
          f"decode {args.decode} tokens")
    print(f"{'ranks':>11} {'rank':>4} {'weights MiB':>11} {'x of 1':>6} {'load peak MiB':>13} {'KV MiB':>7} "
          f"{'x of 1':>6} {'prefill tok/s':>13} {'decode tok/s':>12}")
    for ranks, rows in results.items():
        for r in rows:
            print(f"{ranks:>11} {r['rank']:>4} {r['weight_bytes'] / 2**20:>11.1f} "
                  f"{r['weight_bytes'] / one['weight_bytes']:>6.3f} {r['load_peak_bytes'] / 2**20:>13.1f} "
                  f"{r['kv_bytes'] / 2**20:>7.2f} {r['kv_bytes'] / one['kv_bytes']:>6.3f} "
                  f"{r['prefill_tps']:>13.1f} {r['decode_tps']:>12.1f}")
    split = results["2"][0]
    print(f"tensor parallel, per rank: prefill {split['prefill_collectives']} collectives reducing "
          f"{split['prefill_reduced_bytes'] / 2**20:.1f} MiB for {args.prompt} tokens; decode "
          f"{split['decode_collectives_per_token']:.0f} collectives, "
          f"{split['decode_reduced_bytes_per_token'] / 2**10:.1f} KiB per token")
    print(f"layers split instead (pipeline), per boundary: one message of {split['hidden_bytes_per_token']} "
          f"bytes per token ({args.prompt * split['hidden_bytes_per_token'] / 2**20:.2f} MiB for the prompt)")
    print(json.dumps({str(k): v for k, v in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
