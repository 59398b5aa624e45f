"""Prefill speed with the chunks that show reading progress against one large chunk per prompt.

    python scripts/bench_prefill_chunks.py [--model FOLDER] [--tokens 3300 --tokens 16000] [--repeat 3]

A long prompt is read in at least `prefill.PROGRESS_STEPS` chunks of at least `MIN_PROGRESS_CHUNK` tokens so
the window can show how far it got; this prints prompt tokens per second for those chunks and for the
memory planner's chunk (what reading used before), measured alternately in the same run, and their ratio.
Without --model it builds a small random float32 Gemma 4 text model (6 layers, 256 wide) in memory: on a
machine without Apple's GPU, quantized and full-size models read too slowly to measure. A small model is the
hard case for small chunks: the fixed cost of each chunk weighs most where the chunk's compute is cheapest.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def prefill_seconds(model, tokens: list[int], chunk: int) -> float:
    import mlx.core as mx

    from gemma4_mac.prefill import prefill

    cache = model.make_cache()
    started = time.perf_counter()
    logits = prefill(model, tokens, cache, chunk_size=chunk)
    mx.eval(logits)
    return time.perf_counter() - started


BENCH_CONFIG = dict(
    model_type="gemma4_text", vocab_size=32_000, hidden_size=256, intermediate_size=1024, num_hidden_layers=6,
    num_attention_heads=4, num_key_value_heads=1, head_dim=64, global_head_dim=128, sliding_window=512,
    layer_types=(["sliding_attention"] * 2 + ["full_attention"]) * 2,
    hidden_size_per_layer_input=0, final_logit_softcapping=30.0, max_position_embeddings=32768,
)


def random_model():
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten

    from mlx_model.model import Model, ModelConfig

    mx.random.seed(0)
    model = Model(ModelConfig.from_dict(BENCH_CONFIG))
    weights = [(k, 0.02 * mx.random.normal(v.shape)) for k, v in tree_flatten(model.parameters())]
    model.update(tree_unflatten(weights))
    mx.eval(model.parameters())
    return model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="folder of a converted model (default: a random float32 one)")
    parser.add_argument("--tokens", type=int, action="append", help="prompt length (repeatable)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    from gemma4_mac.prefill import planned_chunk_size, progress_chunk_size
    from mlx_model import load

    if args.model:
        model, processor = load(Path(args.model).expanduser())
        words = ("The cache keeps every token it has read, so each new turn costs only the words that are "
                 "new. Section notes follow with numbers 12, 345 and 6789 for variety. ")
        base = processor.tokenizer.encode(words * 4000, add_special_tokens=False)
    else:
        model = random_model()
        base = [(7 * i) % 31_000 + 100 for i in range(200_000)]
    for length in args.tokens or [3300, 16000]:
        tokens = base[:length]
        planned = planned_chunk_size(model, length)
        shown = progress_chunk_size(planned, length)
        prefill_seconds(model, tokens[:256], shown)  # warm up
        timings: dict[int, list[float]] = {planned: [], shown: []}
        for _ in range(args.repeat):
            for chunk in (planned, shown):
                timings[chunk].append(prefill_seconds(model, tokens, chunk))
        big, small = statistics.median(timings[planned]), statistics.median(timings[shown])
        print(f"{length:>6} tokens: chunk {planned:>5} -> {length / big:8.0f} tok/s "
              f"({-(-length // planned)} chunks); "
              f"chunk {shown:>5} -> {length / small:8.0f} tok/s ({-(-length // shown)} chunks); "
              f"progress chunks take {small / big:.3f}x the time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
