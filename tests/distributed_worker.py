"""One rank of tests/test_distributed.py, started by `mlx.launch --backend ring`: loads each checkpoint
split across the group and saves its logits (full forward, then cached prefill and greedy decode) for
the test to compare with the single-process model. Split by heads every rank makes the same calls; split by
layers rank 0 leads through gemma4_mac.distributed.LeaderModel and the other ranks follow it.

Usage: distributed_worker.py OUT_DIR PROMPT_LEN DECODE_STEPS CASE... where a CASE is
NAME=CHECKPOINT:KV_BITS[:SPLIT] (KV_BITS 16 or 8; SPLIT heads, the default, or layers).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import mlx.core as mx

from gemma4_mac.distributed import LeaderModel, follow
from mlx_model import load_model


def run_case(model, prompt: np.ndarray, steps: int, kv_bits):
    """(full-forward logits, cached logits per step, greedy tokens) for one prompt."""
    full = model(mx.array(prompt[None]))
    cache = model.make_cache(kv_bits=kv_bits, kv_group_size=32)
    logits = model(mx.array(prompt[None]), cache=cache, logits_to_keep=1)
    cached, tokens = [], []
    for _ in range(steps):
        cached.append(np.array(logits[0, -1]))
        tokens.append(int(mx.argmax(logits[0, -1]).item()))
        logits = model(mx.array([[tokens[-1]]]), cache=cache)
    return np.array(full[0]), np.stack(cached), np.array(tokens)


def main(argv: list[str]) -> int:
    out_dir, prompt_len, steps, *cases = argv
    group = mx.distributed.init(strict=True)
    prompt = np.random.default_rng(0).integers(3, 512, int(prompt_len))
    results = {"ranks": np.array(group.size())}
    for case in cases:
        name, spec = case.split("=", 1)
        split = "heads"
        if spec.endswith((":heads", ":layers")):
            spec, split = spec.rsplit(":", 1)
        path, bits = spec.rsplit(":", 1)
        model = load_model(path, group=group, split=split)
        if split == "layers":  # the ranks work in turn: rank 0 leads, the others follow, as in the app
            if group.rank():
                follow(model, group)
                continue
            model = LeaderModel(model, group)
        full, cached, tokens = run_case(model, prompt, int(steps), None if bits == "16" else int(bits))
        if split == "layers":
            model.close()
        results.update({f"{name}/full": full, f"{name}/cached": cached, f"{name}/tokens": tokens})
    np.savez(Path(out_dir) / f"rank{group.rank()}.npz", prompt=prompt, **results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
