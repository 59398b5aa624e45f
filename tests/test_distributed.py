"""Tensor parallelism across two processes: `mlx.launch --backend ring` on 127.0.0.1 (CPU), one launch for
every case. Each rank loads only its slice of the checkpoint; rank 0's logits must equal the single-process
model's within 1e-4 (full forward; cached prefill and greedy decode past the sliding window with a 16-bit
KV cache; with an 8-bit cache, well inside the cache's own rounding error) and the greedy tokens must be
identical on every rank.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from mlx_model import load_model
from mlx_model.loader import ModelLoadError
from mlx_model.sharding import ShardingError, plan_shards
from tests.distributed_worker import run_case
from tests.reference_models import WINDOW, build_gemma4

ROOT = Path(__file__).resolve().parents[1]
# both run past the sliding window; the prompt also past the exact newest tokens of a quantized cache
PROMPT_LEN, DECODE_STEPS = 16 * WINDOW, 2 * WINDOW
WIDE_HEADS = dict(head_dim=32, global_head_dim=64)  # so 8-bit KV's group of 32 fits a head
CHECKPOINTS = {"dense": "31b", "moe": "26b", "e2b": "e2b"}
CASES = {  # name -> (checkpoint, KV bits, split)
    "dense-kv16": ("dense", 16, "heads"), "dense-kv8": ("dense", 8, "heads"),
    "moe-kv16": ("moe", 16, "heads"), "moe-kv8": ("moe", 8, "heads"),
    "e2b-kv16": ("e2b", 16, "heads"), "e2b-kv8": ("e2b", 8, "heads"),
    "dense-q8-kv16": ("dense-q8", 16, "heads"), "moe-q8-kv8": ("moe-q8", 8, "heads"),
    # split by layers: E2B's KV-shared layers stay with the layers they read, PLE slots go with their layers
    "layers-dense-kv16": ("dense", 16, "layers"), "layers-dense-kv8": ("dense", 8, "layers"),
    "layers-moe-kv16": ("moe", 16, "layers"), "layers-e2b-kv16": ("e2b", 16, "layers"),
    "layers-e2b-kv8": ("e2b", 8, "layers"), "layers-moe-q8-kv8": ("moe-q8", 8, "layers"),
}


def _quantized_copy(source: Path, target: Path) -> Path:
    """`source` with its linears, expert banks and embeddings at 8 bits (group 32), as converted."""
    model = load_model(source)
    nn.quantize(model, group_size=32, bits=8,
                class_predicate=lambda _, m: hasattr(m, "to_quantized") and m.weight.shape[-1] % 32 == 0)
    target.mkdir()
    mx.save_safetensors(str(target / "model.safetensors"), dict(tree_flatten(model.parameters())))
    config = json.loads((source / "config.json").read_text())
    config["quantization"] = {"group_size": 32, "bits": 8}
    (target / "config.json").write_text(json.dumps(config))
    return target


def _free_ports(count: int) -> int:
    """A port p with p .. p + count - 1 free (the ring backend listens on one port per rank)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        sockets = [socket.socket() for _ in range(count)]
        try:
            for offset, held in enumerate(sockets):
                held.bind(("127.0.0.1", port + offset))
            return port
        except OSError:
            continue
        finally:
            for held in sockets:
                held.close()
    raise RuntimeError(f"no {count} consecutive free ports on 127.0.0.1")


def _free_port_pair() -> int:
    """A port p with p and p + 1 free."""
    return _free_ports(2)


def is_launcher(process) -> bool:
    """Whether a process (psutil) is the launcher of the followers rather than a follower."""
    return any(part == "gemma4_mac.launcher" or part.endswith("mlx.launch") for part in process.cmdline())


def mlx_launch() -> list[str]:
    """mlx.launch as the app starts it (gemma4_mac/launcher.py: without the busy loop that takes a core)."""
    return [sys.executable, "-m", "gemma4_mac.launcher"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Checkpoint paths and each rank's saved results, from one two-rank launch."""
    root = tmp_path_factory.mktemp("distributed")
    paths = {}
    for name, variant in CHECKPOINTS.items():
        paths[name] = root / name
        build_gemma4(variant, paths[name], **WIDE_HEADS)
    paths["dense-q8"] = _quantized_copy(paths["dense"], root / "dense-q8")
    paths["moe-q8"] = _quantized_copy(paths["moe"], root / "moe-q8")
    out = root / "out"
    out.mkdir()
    cases = [f"{name}={paths[ckpt]}:{bits}:{split}" for name, (ckpt, bits, split) in CASES.items()]
    command = [*mlx_launch(), "--backend", "ring", "-n", "2", "--starting-port", str(_free_port_pair()),
               "--env", f"PYTHONPATH={ROOT}", "--cwd", str(ROOT), "--python", sys.executable,
               str(ROOT / "tests" / "distributed_worker.py"), str(out), str(PROMPT_LEN), str(DECODE_STEPS),
               *cases]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [dict(np.load(out / f"rank{r}.npz")) for r in range(2)]
    return paths, ranks


@pytest.mark.parametrize("case", CASES)
def test_two_ranks_match_one_process(run, case):
    paths, ranks = run
    checkpoint, bits, split = CASES[case]
    assert int(ranks[0]["ranks"]) == 2
    full, cached, tokens = run_case(load_model(paths[checkpoint]), ranks[0]["prompt"], DECODE_STEPS,
                                    None if bits == 16 else bits)
    np.testing.assert_allclose(ranks[0][f"{case}/full"], full, atol=1e-4, rtol=0)
    if split == "layers":  # each layer runs whole on one rank: the same sums as one process, any KV precision
        np.testing.assert_allclose(ranks[0][f"{case}/cached"], cached, atol=1e-4, rtol=0)
        assert ranks[0][f"{case}/tokens"].tolist() == tokens.tolist()
        return  # the other rank follows rank 0's calls: it makes no logits of its own
    if bits == 16:
        np.testing.assert_allclose(ranks[0][f"{case}/cached"], cached, atol=1e-4, rtol=0)
    else:
        # Rounding keys/values to 8 bits turns the last-bit differences of a sum taken in another order into
        # whole quantization steps (one weight perturbed by 1e-7 moves the one-process logits by ~1e-2), so
        # the bound is: sharding's error well below the 8-bit cache's own (measured: 0.3x at most, 0.23x
        # on average; a wrong head or slice gives errors far above the cache's own).
        _, cached16, _ = run_case(load_model(paths[checkpoint]), ranks[0]["prompt"], DECODE_STEPS, None)
        quantization_error = np.abs(cached - cached16)
        sharding_error = np.abs(ranks[0][f"{case}/cached"] - cached)
        assert sharding_error.max() < 0.5 * quantization_error.max()
        assert sharding_error.mean() < 0.4 * quantization_error.mean()
    assert ranks[0][f"{case}/tokens"].tolist() == tokens.tolist()
    assert ranks[1][f"{case}/tokens"].tolist() == tokens.tolist()


class _Group:
    """Stands in for an `mx.distributed.Group` where only rank and size are read."""

    def __init__(self, rank: int, size: int):
        self._rank, self._size = rank, size

    def rank(self) -> int:
        return self._rank

    def size(self) -> int:
        return self._size


def test_rank_holds_its_share_of_the_weights(run):
    paths, _ = run
    whole = load_model(paths["dense"])
    halves = [load_model(paths["dense"], group=_Group(r, 2)) for r in range(2)]
    size = lambda m: sum(v.nbytes for _, v in tree_flatten(m.parameters()))  # noqa: E731
    # everything but the replicated embedding and norms is split in two
    embed = whole.language_model.embed_tokens.weight.nbytes
    for half in halves:
        assert size(half) - embed < 0.52 * (size(whole) - embed)
    assert halves[0].layers[0].self_attn.n_heads == whole.layers[0].self_attn.n_heads // 2


def test_split_by_layers_each_rank_holds_its_layers_only(run):
    paths, _ = run
    size = lambda m: sum(v.nbytes for _, v in tree_flatten(m.parameters()))  # noqa: E731
    for name in ("dense", "moe"):
        whole = load_model(paths[name])
        parts = [load_model(paths[name], group=_Group(r, 2), split="layers") for r in range(2)]
        assert sum(size(p) for p in parts) == size(whole) + whole.language_model.norm.weight.nbytes
        assert all(size(p) <= 0.55 * size(whole) for p in parts)
        first, second = (p.language_model.stage for p in parts)
        assert (first.start, first.stop, second.start, second.stop) == (0, 3, 3, 6)
        assert "embed_tokens" not in parts[1].language_model  # the embeddings and the head: rank 0 only
    # E2B: the per-layer embedding goes with the layers; the KV-shared layers (6-9 read 4 and 5) with theirs
    e2b = [load_model(paths["e2b"], group=_Group(r, 2), split="layers") for r in range(2)]
    assert [(p.language_model.stage.start, p.language_model.stage.stop) for p in e2b] == [(0, 4), (4, 10)]
    ple = [p.language_model.embed_tokens_per_layer.weight.shape[1] for p in e2b]
    assert ple == [4 * e2b[0].language_model.ple_dim, 6 * e2b[0].language_model.ple_dim]
    caches = e2b[1].make_cache()  # layers 0-3 (sliding) on rank 0: their positions only; 4 (full), 5 here
    assert [type(c).__name__ for c in caches] == ["RemoteLayerCache"] * 4 + ["KVCache", "SlidingKVCache"]
    caches = e2b[0].make_cache()
    assert [type(c).__name__ for c in caches[3:]] == ["SlidingKVCache", "RemoteFullCache", "RemoteLayerCache"]


def test_split_by_layers_the_towers_stay_on_rank_0(tmp_path):
    from tests.server_support import build_tiny_multimodal_model

    model = build_tiny_multimodal_model(tmp_path / "mm")
    first, second = (load_model(model, group=_Group(r, 2), split="layers") for r in range(2))
    for name in ("vision_tower", "embed_vision", "audio_tower", "embed_audio"):
        assert name in first.model and name not in second.model


def test_layer_cuts_balance_bytes_and_keep_kv_sharing_together():
    from mlx_model.pipeline import plan_stages, valid_cuts

    assert plan_stages([10] * 6, 0, list(range(6)), 2) == [(0, 3), (3, 6)]
    assert plan_stages([10] * 6, 25, list(range(6)), 2) == [(0, 2), (2, 6)]  # rank 0 also holds 25
    assert plan_stages([10] * 6, 0, list(range(6)), 3) == [(0, 2), (2, 4), (4, 6)]
    shared = [0, 1, 2, 3, 3, 2]  # layers 4 and 5 read 3 and 2: no cut after 2
    assert valid_cuts(shared) == [1, 2]
    assert plan_stages([10] * 6, 0, shared, 2) == [(0, 2), (2, 6)]
    with pytest.raises(ShardingError, match="at most 3 runs"):
        plan_stages([10] * 6, 0, shared, 4)


def test_head_counts_that_do_not_split_are_named(run):
    paths, _ = run
    model = load_model(paths["dense"], lazy=True)
    with pytest.raises(ShardingError, match="8 attention heads.*3 ranks"):
        plan_shards(model, 0, 3)
    with pytest.raises(ModelLoadError, match="cannot be split across 3 ranks"):
        load_model(paths["dense"], group=_Group(0, 3))


def _answer_alone(model_dir: Path, question: str, max_tokens: int) -> str:
    """The greedy answer of the model on this process alone (the reference for the served one)."""
    from gemma4_mac.generate import SamplingSettings, stream_generate
    from mlx_model import load

    model, processor = load(model_dir)
    events = stream_generate(model, processor, [{"role": "user", "content": question}],
                             sampling=SamplingSettings(temperature=0.0, max_tokens=max_tokens))
    return "".join(e.text for e in events if e.kind == "answer")


@pytest.mark.slow
@pytest.mark.parametrize("split", ["layers", "heads"])
def test_serve_split_across_two_ranks_answers_then_reports_a_lost_rank(tiny_chat_model_dir, tmp_path, split):
    import psutil

    from tests.server_support import raw_request, serve_process

    hosts = tmp_path / "hosts.json"
    hosts.write_text(json.dumps([{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}] * 2))
    question = {"model": tiny_chat_model_dir.name, "messages": [{"role": "user", "content": "Hello there"}],
                "max_tokens": 8, "temperature": 0}
    expected = _answer_alone(tiny_chat_model_dir, "Hello there", 8)
    with serve_process(tiny_chat_model_dir, tmp_path / "home", "--hosts", str(hosts), "--split", split,
                       "--ring-port", str(_free_port_pair())) as (process, url):
        status, body, _ = raw_request(url, "POST", "/chat/completions", json.dumps(question).encode(),
                                      timeout=120)
        assert status == 200, body
        assert body["choices"][0]["message"]["content"] == expected

        children = psutil.Process(process.pid).children(recursive=True)
        followers = [p for p in children  # the follower itself, not the mlx.launch that started it
                     if "gemma4_mac.cluster" in p.cmdline() and not is_launcher(p)]
        assert len(followers) == 1
        # the launcher waits for the followers' output without spinning (mlx.launch alone takes a core)
        launcher = next(p for p in children if is_launcher(p))
        assert launcher.cpu_percent(interval=2.0) < 25
        followers[0].kill()
        followers[0].wait(30)
        status, body, _ = raw_request(url, "POST", "/chat/completions", json.dumps(question).encode())
        assert status == 503 and body["error"]["code"] == "group_degraded"
        assert "stopped answering" in body["error"]["message"]
        status, health, _ = raw_request(url[: -len("/v1")], "GET", "/health")
        assert status == 200 and health["status"] == "degraded"
        assert process.poll() is None  # the server stays up


def test_planner_divides_weights_and_kv_between_macs():
    from mlx_model.config import TextConfig
    from mlx_model.planner import VARIANT_CONFIGS, plan, split_plan

    big = TextConfig.from_dict({**VARIANT_CONFIGS["31B"], "max_position_embeddings": 262_144})
    one, two = plan(big, 262_144, kv_bits=8), split_plan(big, 262_144, 2, kv_bits=8)
    assert 0.5 < two.weights / one.weights < 0.55  # the embedding stays whole on both Macs
    assert two.kv == one.kv // 2
    # E2B has one KV head: each Mac keeps a copy of it, so its KV cache is not divided
    small = TextConfig.from_dict({**VARIANT_CONFIGS["E2B"], "max_position_embeddings": 131_072})
    assert split_plan(small, 32_768, 2).kv == plan(small, 32_768).kv


def test_a_bad_hosts_file_is_one_error_line(tmp_path):
    import io

    from gemma4_mac.cli import main as cli_main

    alone = tmp_path / "alone.json"
    alone.write_text(json.dumps([{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}]))
    for hosts, message in ((tmp_path / "missing.json", "cannot read the hosts file"),
                           (alone, "needs at least two")):
        out, err = io.StringIO(), io.StringIO()
        assert cli_main(["ask", "--model", str(tmp_path), "--hosts", str(hosts), "Hi"], out=out, err=err) == 2
        assert err.getvalue().startswith("error: ") and message in err.getvalue()
        assert err.getvalue().count("\n") == 1


def test_hosts_file_in_both_of_mlx_formats(tmp_path):
    from gemma4_mac.cluster import read_hosts, ring_addresses

    hosts = [{"ssh": "mac-a.local", "ips": ["10.0.0.1"]}, {"ssh": "mac-b.local", "ips": ["10.0.0.2"]}]
    (tmp_path / "list.json").write_text(json.dumps(hosts))
    (tmp_path / "config.json").write_text(json.dumps({"backend": "ring", "envs": [], "hosts": hosts}))
    for name in ("list.json", "config.json"):
        assert read_hosts(tmp_path / name) == hosts
    assert ring_addresses(hosts, 5000) == [["10.0.0.1:5000"], ["10.0.0.2:5001"]]


@pytest.mark.slow
def test_four_ranks_match_one_process(run, tmp_path):
    """Four ranks: fewer global KV heads (2) than ranks, two experts per rank, E2B's one KV head on all four."""
    paths, _ = run
    cases = {f"{name}-kv16": paths[name] for name in CHECKPOINTS}
    command = [*mlx_launch(), "--backend", "ring", "-n", "4", "--starting-port", str(_free_ports(4)),
               "--env", f"PYTHONPATH={ROOT}", "--cwd", str(ROOT), "--python", sys.executable,
               str(ROOT / "tests" / "distributed_worker.py"), str(tmp_path), str(PROMPT_LEN), str(DECODE_STEPS),
               *[f"{name}={path}:16" for name, path in cases.items()]]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [dict(np.load(tmp_path / f"rank{r}.npz")) for r in range(4)]
    assert int(ranks[0]["ranks"]) == 4
    for name, path in cases.items():
        full, cached, tokens = run_case(load_model(path), ranks[0]["prompt"], DECODE_STEPS, None)
        np.testing.assert_allclose(ranks[0][f"{name}/full"], full, atol=1e-4, rtol=0)
        np.testing.assert_allclose(ranks[0][f"{name}/cached"], cached, atol=1e-4, rtol=0)
        for rank in ranks:
            assert rank[f"{name}/tokens"].tolist() == tokens.tolist()


@pytest.mark.slow
def test_three_ranks_split_by_layers_match_one_process(run, tmp_path):
    """Three ranks by layers: the middle one takes hidden states (and E2B's input embeddings) from rank 0 and
    hands them on to the last, which sends them back to rank 0."""
    paths, _ = run
    cases = {f"{name}-kv{bits}": (paths[name], bits) for name in CHECKPOINTS for bits in (16, 8)}
    command = [*mlx_launch(), "--backend", "ring", "-n", "3", "--starting-port", str(_free_ports(3)),
               "--env", f"PYTHONPATH={ROOT}", "--cwd", str(ROOT), "--python", sys.executable,
               str(ROOT / "tests" / "distributed_worker.py"), str(tmp_path), str(PROMPT_LEN), str(DECODE_STEPS),
               *[f"{name}={path}:{bits}:layers" for name, (path, bits) in cases.items()]]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = dict(np.load(tmp_path / "rank0.npz"))
    assert int(result["ranks"]) == 3
    for name, (path, bits) in cases.items():
        full, cached, tokens = run_case(load_model(path), result["prompt"], DECODE_STEPS, None if bits == 16 else bits)
        np.testing.assert_allclose(result[f"{name}/full"], full, atol=1e-4, rtol=0)
        np.testing.assert_allclose(result[f"{name}/cached"], cached, atol=1e-4, rtol=0)
        assert result[f"{name}/tokens"].tolist() == tokens.tolist()


def test_channel_messages_round_trip_with_short_and_long_headers():
    """What rank 0 sends is what a follower reads: a decode step's ids inside the one first block, a long
    header and float arrays in the collectives after it."""
    from gemma4_mac.distributed import FIRST_BLOCK, Channel

    wire: list = []
    leader, follower = Channel(_Group(0, 2)), Channel(_Group(1, 2))
    leader._share = lambda value: wire.append(value) or value  # noqa: E731 (the collective, recorded)
    follower._share = lambda like: wire.pop(0)  # noqa: E731
    step = {"op": "forward", "cache": [[1, 0]], "kwargs": {}}
    leader.send(step, {"__inputs__": mx.array([[42]])})
    assert len(wire) == 1 and wire[0].size == FIRST_BLOCK
    header, arrays = follower.read(np.array(follower.wait()))
    assert header["cache"] == [[1, 0]] and arrays["__inputs__"].tolist() == [[42]]
    assert arrays["__inputs__"].dtype == mx.int32
    long = {"op": "forward", "forget": [["handle", i] for i in range(400)]}
    embeds = mx.random.normal((1, 3, 8)).astype(mx.bfloat16)
    mask = mx.array([[True, False, True]])
    leader.send(long, {"input_embeddings": embeds, "mask": mask, "ids": mx.arange(100)[None]})
    assert len(wire) == 4  # first block, the rest of the header, the embeddings, the 100 ids
    header, arrays = follower.read(np.array(follower.wait()))
    assert header["forget"] == long["forget"] and not wire
    assert mx.array_equal(arrays["input_embeddings"], embeds) and arrays["input_embeddings"].dtype == mx.bfloat16
    assert arrays["mask"].tolist() == [[True, False, True]] and arrays["ids"].tolist() == [list(range(100))]
