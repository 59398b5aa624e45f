"""How much 8 and 4-bit KV caches change a real model's predictions, against its 16-bit cache.

`python -m gemma4_mac.kv_quality [MODEL_DIR] [--tokens 400] [--prefix 100]` reads the opening of Pride and
Prejudice: the first `--prefix` tokens are prefilled, then `--tokens` more are decoded one at a time,
teacher-forced (each step is fed the true next token), so every setting sees the same text. At each
decoded position it compares the next-token distribution with the 16-bit cache's: top-1 agreement and
mean KL(16-bit || quantized). Default model: the converted real Gemma 3 270M that the app tests share
(`.cache/app-starter-models/gemma-3-270m-base-8bit`, built by tests/test_startup.py). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np

from mlx_model import load_model
from mlx_model.tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_MODEL = ROOT / ".cache" / "app-starter-models" / "gemma-3-270m-base-8bit"
TEXT = ROOT / "tests" / "data" / "pride_and_prejudice_opening.txt"


def teacher_forced_logits(model, ids: list[int], prefix: int, kv_bits, group: int = 64) -> np.ndarray:
    """Float32 log-probabilities of the decoded positions under a cache of `kv_bits` (None: 16-bit)."""
    cache = model.make_cache(kv_bits=kv_bits, kv_group_size=group)
    logits = model(mx.array([ids[:prefix]]), cache=cache, logits_to_keep=1)[:, -1].astype(mx.float32)
    rows = []
    for token in ids[prefix:]:
        rows.append(np.array((logits - mx.logsumexp(logits.astype(mx.float32), axis=-1, keepdims=True))[0]))
        logits = model(mx.array([[token]]), cache=cache)[:, -1].astype(mx.float32)
    return np.stack(rows)


def compare(reference: np.ndarray, other: np.ndarray) -> dict:
    """Top-1 agreement and mean KL(reference || other) over positions."""
    kl = (np.exp(reference) * (reference - other)).sum(-1)
    return {
        "top1_agreement": float((reference.argmax(-1) == other.argmax(-1)).mean()),
        "mean_kl": float(kl.mean()),
        "max_kl": float(kl.max()),
    }


def measure(model_dir: Path, n_tokens: int = 400, prefix: int = 100, bits=(8, 4)) -> dict:
    """The figures for each precision in `bits`, against the 16-bit cache."""
    model = load_model(model_dir)
    tokenizer = load_tokenizer(model_dir)
    ids = tokenizer.encode(TEXT.read_text())[: prefix + n_tokens]
    if len(ids) < prefix + n_tokens:
        raise SystemExit(f"the text holds only {len(ids)} tokens; ask for fewer")
    reference = teacher_forced_logits(model, ids, prefix, None)
    result = {"model": model_dir.name, "prefix_tokens": prefix, "decoded_tokens": n_tokens, "group": 64}
    for b in bits:
        result[f"{b}bit"] = compare(reference, teacher_forced_logits(model, ids, prefix, b))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--tokens", type=int, default=400)
    parser.add_argument("--prefix", type=int, default=100)
    args = parser.parse_args(argv)
    if not (args.model / "config.json").exists():
        raise SystemExit(
            f"{args.model} holds no model: run tests/test_startup.py once to build the shared one"
        )
    print(json.dumps(measure(args.model, args.tokens, args.prefix), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
