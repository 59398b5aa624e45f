"""One model on 1 rank and split across 2 ranks, by heads (tensor parallel) and by layers (pipeline), in one
run, each on the app's path (rank 0 leads through gemma4_mac.distributed.LeaderModel, the other rank follows).

`python scripts/bench_distributed.py [--model PATH] [--prompt 512] [--decode 16] [--repeats 3]
[--link 1gbit ...]` prints, per rank count and split: resident weight bytes per rank (and the peak while
loading), KV-cache bytes per rank after the prompt and the answer, prefill and decode tokens/s (medians of
the repeats, which alternate the order of the splits) with the paired layers/heads ratios and their spread,
and rank 0's link traffic (operations, and bytes sent plus received) for the prompt and per decoded token.
`--link` reruns the 2-rank cases with loopback shaped to an Ethernet-like rate (Linux tc, root), which
shows what that traffic costs on such a link (rate only: tc's tbf adds no latency). Without --model it
writes a random float16 model shaped like a scaled-down 31B (same layer kinds, k_eq_v full layers, GQA, the
vocabulary's share of the weights kept small as in the real one). The 2 ranks run through `mlx.launch
--backend ring` on 127.0.0.1, so they share this machine's cores and memory: the memory and traffic figures
carry over to two Macs, the speeds measure the splits' overhead on one machine, not the speed of two Macs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
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
sys.path.insert(0, str(ROOT / "scripts"))

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


class LinkCounter:
    """Counts this rank's link operations (all_sum, send, recv) and the bytes it sends plus receives."""

    def __init__(self, size: int):
        self.operations = self.bytes = 0
        dist = mx.distributed
        all_sum, send, recv, recv_like = dist.all_sum, dist.send, dist.recv, dist.recv_like
        ring_share = 2 * 2 * (size - 1) / size  # a ring all_sum sends and receives this many times its bytes

        def counted_all_sum(x, *args, **kwargs):
            self.operations += 1
            self.bytes += int(x.nbytes * ring_share)
            return all_sum(x, *args, **kwargs)

        def counted_send(x, *args, **kwargs):
            self.operations += 1
            self.bytes += x.nbytes
            return send(x, *args, **kwargs)

        def counted_recv(shape, dtype, *args, **kwargs):
            out = recv(shape, dtype, *args, **kwargs)
            self.operations += 1
            self.bytes += out.nbytes
            return out

        def counted_recv_like(x, *args, **kwargs):
            self.operations += 1
            self.bytes += x.nbytes
            return recv_like(x, *args, **kwargs)

        dist.all_sum, dist.send, dist.recv, dist.recv_like = (counted_all_sum, counted_send, counted_recv,
                                                              counted_recv_like)

    def take(self) -> tuple[int, int]:
        """(operations, bytes) since the last take."""
        taken = (self.operations, self.bytes)
        self.operations = self.bytes = 0
        return taken


def _round_trip_ms(group, count: int = 30) -> float:
    """The median time of one 16-byte all_sum on the idle link: what each collective costs at least."""
    times = []
    for _ in range(count):
        start = time.perf_counter()
        mx.eval(mx.distributed.all_sum(mx.ones((4,)), group=group))
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def measure(path: str, prompt_len: int, decode: int, split: str) -> dict:
    """This rank's figures. Rank 0 runs the prompt and the answer through the app's LeaderModel; the other
    ranks follow its calls (their speeds are rank 0's)."""
    from gemma4_mac.distributed import LeaderModel, follow

    group = mx.distributed.init(backend="ring")  # a single process without a hostfile: a group of one
    round_trip = _round_trip_ms(group) if group.size() > 1 else 0.0
    counter = LinkCounter(group.size())
    mx.reset_peak_memory()
    model = load_model(path, group=group if group.size() > 1 else None, split=split)
    weights = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    load_peak = mx.get_peak_memory()
    result = {"ranks": group.size(), "rank": group.rank(), "split": split, "weight_bytes": weights,
              "load_peak_bytes": load_peak, "round_trip_ms": round_trip}
    if group.rank():
        made: list = []
        make_cache = model.make_cache
        model.make_cache = lambda *a, **k: made.append(make_cache(*a, **k)) or made[-1]
        follow(model, group)
        result["kv_bytes"] = sum(c.nbytes for c in made[-1])  # the measured conversation's caches
        return result
    if group.size() > 1:
        model = LeaderModel(model, group)
    tokens = mx.array(np.random.default_rng(0).integers(3, 1000, prompt_len))[None]
    mx.eval(model(tokens[:, :16], cache=model.make_cache()))  # warm-up
    cache = model.make_cache()
    counter.take()
    start = time.perf_counter()
    logits = model(tokens, cache=cache, logits_to_keep=1)
    mx.eval(logits)
    prefill_s = time.perf_counter() - start
    prefill_ops, prefill_bytes = counter.take()
    token = mx.argmax(logits[:, -1], axis=-1)[:, None]
    start = time.perf_counter()
    for _ in range(decode):
        logits = model(token, cache=cache)
        token = mx.argmax(logits[:, -1], axis=-1)[:, None]
        mx.eval(token)
    decode_s = time.perf_counter() - start
    decode_ops, decode_bytes = counter.take()
    result.update(kv_bytes=sum(c.nbytes for c in cache), prefill_tps=prompt_len / prefill_s,
                  decode_tps=decode / decode_s, prefill_link_ops=prefill_ops, prefill_link_bytes=prefill_bytes,
                  decode_link_ops_per_token=decode_ops / decode, decode_link_bytes_per_token=decode_bytes / decode)
    if group.size() > 1:
        model.close()
    return result


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


def run(path: Path, ranks: int, split: str, prompt_len: int, decode: int, out: Path,
        latency_ms: float = 0.0) -> list[dict]:
    """One case: 1 rank alone, or `ranks` through `mlx.launch --backend ring`; with `latency_ms`, 2 ranks
    started here whose ring connections pass through delaying relays (scripts/delay_proxy.py)."""
    worker = [str(Path(__file__).resolve()), "--worker", str(out), "--model", str(path),
              "--prompt", str(prompt_len), "--decode", str(decode), "--split", split]
    if ranks == 1:
        subprocess.run([sys.executable, *worker], check=True, cwd=ROOT)
    elif not latency_ms:
        # as the app starts its followers: mlx.launch less its busy loop (gemma4_mac/launcher.py)
        subprocess.run([sys.executable, "-m", "gemma4_mac.launcher", "--backend", "ring", "-n", str(ranks),
                        "--starting-port", "42323",
                        "--env", f"PYTHONPATH={ROOT}", "--python", sys.executable, *worker], check=True, cwd=ROOT)
    else:
        _run_delayed(worker, out, latency_ms / 1000)
    return [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]


def _run_delayed(worker: list[str], out: Path, delay_s: float) -> None:
    """Two ranks whose ring connections to each other pass through DelayProxy relays (each rank's hostfile
    names the other rank at its relay's port)."""
    import os

    from delay_proxy import DelayProxy

    base = 42400 + 10 * (len(list(out.parent.glob("out*"))) % 50)  # new ports for each case
    ports, relays = (base, base + 1), (base + 2, base + 3)
    proxies = [DelayProxy(relay, port, delay_s) for relay, port in zip(relays, ports)]
    processes = []
    try:
        for rank in (0, 1):
            hosts = [[f"127.0.0.1:{ports[r] if r == rank else relays[r]}"] for r in (0, 1)]
            hostfile = out / f"hosts{rank}.json"
            hostfile.write_text(json.dumps(hosts))
            env = {**os.environ, "MLX_HOSTFILE": str(hostfile), "MLX_RANK": str(rank), "PYTHONPATH": str(ROOT)}
            processes.append(subprocess.Popen([sys.executable, *worker], env=env, cwd=ROOT))
        for process in processes:
            if process.wait(1800):
                raise SystemExit(f"a rank failed with {process.returncode}")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
        for proxy in proxies:
            proxy.close()


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}x [{min(values):.2f}-{max(values):.2f}]"


def report(results: dict[str, list[list[dict]]], args) -> None:
    """The table (medians over the repeats) and the paired layers/heads ratios."""
    one = results["1"][0][0]
    print(f"model: {args.model or 'random scaled-down 31B-like (float16)'}, prompt {args.prompt} tokens, "
          f"decode {args.decode} tokens, {args.repeats} repeats (medians)")
    print(f"{'case':>18} {'rank':>4} {'weights MiB':>11} {'x of 1':>6} {'load peak MiB':>13} {'KV MiB':>7} "
          f"{'x of 1':>6} {'prefill tok/s':>13} {'decode tok/s':>12}")
    for label, repeats in results.items():
        for rank, r in enumerate(repeats[0]):
            speed = ""
            if rank == 0:
                prefill = statistics.median(rep[0]["prefill_tps"] for rep in repeats)
                decode = statistics.median(rep[0]["decode_tps"] for rep in repeats)
                speed = f"{prefill:>13.1f} {decode:>12.2f}"
            print(f"{label:>18} {r['rank']:>4} {r['weight_bytes'] / 2**20:>11.1f} "
                  f"{r['weight_bytes'] / one['weight_bytes']:>6.3f} {r['load_peak_bytes'] / 2**20:>13.1f} "
                  f"{r['kv_bytes'] / 2**20:>7.2f} {r['kv_bytes'] / one['kv_bytes']:>6.3f} {speed}")
    print("one 16-byte all_sum on the idle link (median):",
          ", ".join(f"{label[2:] if label != '2 heads' else 'direct'} {repeats[0][0]['round_trip_ms']:.2f} ms"
                    for label, repeats in results.items() if label.startswith("2 heads")))
    print("rank 0's link traffic (operations; bytes sent + received):")
    for label, repeats in results.items():
        r = repeats[0][0]
        if r["ranks"] > 1 and "@" not in label:  # the same operations on every link
            print(f"{label:>18}: prompt {r['prefill_link_ops']} operations, "
                  f"{r['prefill_link_bytes'] / 2**20:.2f} MiB; per decoded token "
                  f"{r['decode_link_ops_per_token']:.0f} operations, "
                  f"{r['decode_link_bytes_per_token'] / 2**10:.1f} KiB")
    for suffix in [""] + [f" @{rate}" for rate in args.link or []] + [f" @{ms:g}ms" for ms in args.latency or []]:
        heads, layers = results.get(f"2 heads{suffix}"), results.get(f"2 layers{suffix}")
        if heads and layers:
            prefill = [b[0]["prefill_tps"] / a[0]["prefill_tps"] for a, b in zip(heads, layers)]
            decode = [b[0]["decode_tps"] / a[0]["decode_tps"] for a, b in zip(heads, layers)]
            print(f"layers / heads{suffix}: prefill {_spread(prefill)}, decode {_spread(decode)} "
                  "(median [min-max] of paired runs)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model folder (default: a random scaled-down 31B-like model)")
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--decode", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--link", nargs="+", metavar="RATE",
                        help="also run the 2-rank cases with loopback shaped to each RATE (tc tbf, e.g. 1gbit "
                             "10gbit; Linux, root): the splits over an Ethernet-like link")
    parser.add_argument("--latency", nargs="+", type=float, metavar="MS",
                        help="also run the 2-rank cases with each MS milliseconds of one-way delay on the link "
                             "(a relay on 127.0.0.1, scripts/delay_proxy.py): e.g. 0.25 for Ethernet, 2 for "
                             "Wi-Fi")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--split", default="heads", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = measure(args.model, args.prompt, args.decode, args.split)
        (Path(args.worker) / f"rank{result['rank']}.json").write_text(json.dumps(result))
        return 0
    results: dict[str, list[list[dict]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.model) if args.model else Path(tmp) / "model"
        if not args.model:
            path.mkdir()
            write_checkpoint(path)
        for repeat in range(args.repeats):
            splits = ["heads", "layers"] if repeat % 2 == 0 else ["layers", "heads"]  # alternate the order
            links = [(None, 0.0)] + [(rate, 0.0) for rate in args.link or []] + \
                [(None, ms) for ms in args.latency or []]
            cases = [(1, "heads", None, 0.0)] + [(2, split, rate, ms) for rate, ms in links for split in splits]
            for ranks, split, rate, ms in cases:
                label = "1" if ranks == 1 else f"2 {split}" + (f" @{rate}" if rate else "") + \
                    (f" @{ms:g}ms" if ms else "")
                out = Path(tmp) / f"out{repeat}-{label.replace(' ', '_')}"
                out.mkdir()
                with shaped_loopback(rate):
                    results.setdefault(label, []).append(run(path, ranks, split, args.prompt, args.decode, out,
                                                             ms))
    report(results, args)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
