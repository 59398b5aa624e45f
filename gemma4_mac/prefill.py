"""Prefill: run a prompt into the cache in bounded chunks, images and audio included.

Only the last chunk computes the LM head, and only for its last position. A chunk never ends inside
an image, video frame or audio clip, so a block that attends bidirectionally sees all of itself. The
vision and audio towers run only for the blocks a chunk holds, i.e. never for what the conversation
cache already has.
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from typing import Callable, Generator, Iterator, Optional, Sequence

import mlx.core as mx
import numpy as np

PREFILL_CHUNK = 512
SCRATCH_SHARE = 0.1  # of the memory free now, for one chunk's temporaries
MAX_SCRATCH_BYTES = 2 << 30
RESERVE_AFTER_PROMPT = 256  # room for the answer's first tokens without growing the cache
PROGRESS_STEPS = 8  # a long prompt is read in at least this many chunks, so its progress can be shown
MIN_PROGRESS_CHUNK = 512  # ...but never in chunks so small that reading slows down


class GenerationError(RuntimeError):
    """Generation cannot start: the message says what is wrong with the request."""


def chunk_bounds(start: int, end: int, chunk_size: int, media: Sequence = ()) -> list[tuple[int, int]]:
    """[start, end) cut into pieces of about `chunk_size` tokens that never split a media block."""
    bounds = []
    while start < end:
        stop = min(start + chunk_size, end)
        for block in media:
            if block.start < stop < block.end:
                # end before the block, or take it whole when it starts the chunk
                stop = block.start if block.start > start else min(block.end, end)
                break
        bounds.append((start, stop))
        start = stop
    return bounds


def planned_chunk_size(model, context: int, available_bytes: Optional[int] = None,
                       kv_bits: Optional[int] = None) -> int:
    """The app's chunk policy: the largest chunk (up to PREFILL_CHUNK, past which prefill is no faster)
    whose scratch at `context` tokens fits a share of free memory, by the planner's count."""
    from mlx_model.planner import choose_prefill_chunk

    config = _text_config(model)
    if config is None:
        return PREFILL_CHUNK
    if available_bytes is None:
        import psutil

        available_bytes = psutil.virtual_memory().available
    budget = min(int(available_bytes * SCRATCH_SHARE), MAX_SCRATCH_BYTES)
    float_bytes = activation_bytes(model) if hasattr(model, "language_model") else 2
    return choose_prefill_chunk(config, context, budget, float_bytes=float_bytes, kv_bits=kv_bits)


def _text_config(model):
    config = getattr(getattr(model, "config", None), "text_config", None)
    return config if config is not None and hasattr(config, "layer_types") else None


def activation_bytes(model) -> int:
    """Bytes per float of the model's activations (and so of its 16-bit KV cache)."""
    embed = model.language_model.embed_tokens
    return (embed.scales if hasattr(embed, "scales") else embed.weight).dtype.size


def chunk_memory(model, cache: list, chunk: int, context: int) -> Optional[int]:
    """Bytes one prefill chunk may add to what is allocated now: the planner's scratch for the chunk at
    `context` tokens, plus what the caches will still grow to hold `context` tokens."""
    from mlx_model.planner import kv_bytes, prefill_scratch_bytes

    config = _text_config(model)
    if config is None:
        return None
    bits = next((c.bits for c in cache if getattr(c, "bits", None)), None)
    group = next((c.group for c in cache if getattr(c, "group", None)), 64)
    size = activation_bytes(model)
    growth = kv_bytes(config, context, bits, group, float_bytes=size) - sum(c.nbytes for c in cache)
    return prefill_scratch_bytes(config, chunk, context, float_bytes=size, kv_bits=bits) + max(0, growth)


@contextmanager
def memory_ceiling(extra_bytes: Optional[int]) -> Iterator[None]:
    """Hold MLX within what is allocated now plus `extra_bytes` while a chunk is evaluated.

    MLX allocates the outputs of queued operations ahead of running them; its memory limit is soft (it
    never fails an allocation) and makes evaluation wait for running work instead, so a chunk's peak
    stays what the planner counted instead of whatever the queue happens to hold.
    """
    if extra_bytes is None:
        yield
        return
    ceiling = mx.get_active_memory() + extra_bytes
    previous = mx.set_memory_limit(ceiling)
    try:
        yield
    finally:
        mx.set_memory_limit(previous)


def progress_chunk_size(planned: int, to_read: int) -> int:
    """`planned` (the memory planner's chunk), made small enough that `to_read` tokens take several chunks.

    A 20 KB paste read as one chunk would show no progress; chunks stay at least MIN_PROGRESS_CHUNK tokens,
    where prefill is as fast per token as with the largest chunks."""
    wanted = max(MIN_PROGRESS_CHUNK, math.ceil(max(to_read, 1) / PROGRESS_STEPS))
    return max(1, min(planned, wanted))


class _MediaEmbedder:
    """Soft tokens for the media blocks of one prompt, each computed once, when first needed."""

    def __init__(self, model, media: Sequence):
        self.model = model
        self.media = list(media)
        self._features: dict[int, mx.array] = {}

    def _block_features(self, index: int) -> mx.array:
        if index not in self._features:
            block = self.media[index]
            first, second = (mx.array(a) for a in block.inputs)
            if block.kind == "audio":
                features = self.model.audio_features(first, second)
            else:
                features = self.model.image_features(first, second)
            if features.shape[0] != block.length:
                raise GenerationError(f"the {block.kind} tower returned {features.shape[0]} soft tokens where the "
                                   f"prompt holds {block.length}; the model's processor files do not fit it")
            mx.eval(features)
            self._features[index] = features
        return self._features[index]

    def embed(self, ids: list[int], start: int) -> Optional[tuple[mx.array, Optional[mx.array], Optional[dict]]]:
        """(input embeddings, PLE token inputs, mask overrides) for tokens at [start, start+len), or None."""
        end = start + len(ids)
        parts: dict[str, list[mx.array]] = {"image": [], "video": [], "audio": []}
        types = np.zeros(len(ids), dtype=np.int32)
        for index, block in enumerate(self.media):
            lo, hi = max(block.start, start), min(block.end, end)
            if lo >= hi:
                continue
            parts[block.kind].append(self._block_features(index)[lo - block.start:hi - block.start])
            types[lo - start:hi - start] = {"image": 1, "video": 2, "audio": 3}[block.kind]
        if not any(parts.values()):
            return None
        joined = {k: mx.concatenate(v, axis=0) if v else None for k, v in parts.items()}
        embeds, per_layer = self.model.embed_multimodal(mx.array(ids)[None], image_features=joined["image"],
                                                        video_features=joined["video"],
                                                        audio_features=joined["audio"])
        overrides = None
        text_config = self.model.config.text_config
        if getattr(text_config, "use_bidirectional_attention", None) == "vision" and ((types == 1) | (types == 2)).any():
            from mlx_model.model import vision_block_ids

            overrides = {"vision_blocks": vision_block_ids(mx.array(types)[None])}
        return embeds, per_layer, overrides


def prefill(model, tokens: Sequence[int] | mx.array, cache: list, *, chunk_size: int = PREFILL_CHUNK,
            cancel: Optional[threading.Event] = None, want_logits: bool = True,
            on_chunk: Optional[Callable[[Sequence[int]], None]] = None, media: Sequence = (),
            position: int = 0, keys: Optional[Sequence[int]] = None,
            reserve_after: int = RESERVE_AFTER_PROMPT) -> Optional[mx.array]:
    """Run tokens through the model in bounded chunks; returns the last position's logits.

    `position` is the prompt index of `tokens[0]` (media blocks carry prompt indices); `on_chunk`
    hears each chunk's `keys` (the tokens themselves by default) once it is in the cache. Full-attention
    caches first reserve room for the prompt plus `reserve_after` tokens. Returns None when cancelled
    or when no logits are wanted.
    """
    return finish(iter_prefill(model, tokens, cache, chunk_size=chunk_size, cancel=cancel,
                               want_logits=want_logits, on_chunk=on_chunk, media=media, position=position,
                               keys=keys, reserve_after=reserve_after))


def finish(steps: Generator):
    """Run a step generator (such as `iter_prefill`) to its end; returns what it returned."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def iter_prefill(model, tokens: Sequence[int] | mx.array, cache: list, *, chunk_size: int = PREFILL_CHUNK,
                 cancel: Optional[threading.Event] = None, want_logits: bool = True,
                 on_chunk: Optional[Callable[[Sequence[int]], None]] = None, media: Sequence = (),
                 position: int = 0, keys: Optional[Sequence[int]] = None,
                 reserve_after: int = RESERVE_AFTER_PROMPT) -> Generator[int, None, Optional[mx.array]]:
    """`prefill` one chunk at a time: yields the prompt position reached after each chunk (once `on_chunk`
    has heard it) and returns what `prefill` returns."""
    ids = list(tokens.tolist() if isinstance(tokens, mx.array) else tokens)
    if not ids:
        raise GenerationError("The prompt is empty: type a message first.")
    keys = list(keys) if keys is not None else ids
    context = position + len(ids) + reserve_after
    for layer_cache in cache:  # full-attention caches take the whole prompt (and the answer) at once
        if hasattr(layer_cache, "reserve"):
            layer_cache.reserve(context)
    relevant = [b for b in media if b.end > position and b.start < position + len(ids)]
    embedder = _MediaEmbedder(model, relevant) if relevant else None
    bounds = chunk_bounds(position, position + len(ids), chunk_size, relevant)
    lo, hi = bounds[-1]
    if want_logits and hi - lo > 1 and not any(b.start < hi <= b.end for b in relevant):
        # the last token alone computes logits: the chunk before it skips the KV-shared layers,
        # whose outputs only the logits need, which keeps their attention scratch out of the peak
        bounds[-1:] = [(lo, hi - 1), (hi - 1, hi)]
    for number, (lo, hi) in enumerate(bounds):
        if cancel is not None and cancel.is_set():
            return None
        chunk = ids[lo - position:hi - position]
        batch = mx.array(chunk)[None]
        embedded = embedder.embed(chunk, lo) if embedder is not None else None
        kwargs = {}
        if embedded is not None:
            embeds, per_layer, overrides = embedded
            kwargs = dict(input_embeddings=embeds, per_layer_inputs=per_layer, mask_overrides=overrides)
        last = number == len(bounds) - 1
        with memory_ceiling(chunk_memory(model, cache, hi - lo, context)):
            if last and want_logits:
                logits = model(batch, cache=cache, logits_to_keep=1, **kwargs)[:, -1, :]
                mx.eval(logits)
            else:
                model.language_model(None if kwargs else batch, cache=cache, **kwargs)
                mx.eval([c.state for c in cache])
        if last and want_logits:
            if on_chunk:
                on_chunk(keys[lo - position:hi - position])
            yield hi
            return logits
        mx.clear_cache()  # return the chunk's scratch to the system before the next one
        if on_chunk:
            on_chunk(keys[lo - position:hi - position])
        yield hi
    return None
