"""Gemma 4 12B ("gemma4_unified") against transformers 5.23: text, images, video and audio, a full forward
and cached decoding past the sliding window, on tiny random checkpoints in float32.

The reference is transformers' float64 forward of the same checkpoint (its own float32 rounding is of the
order of the tolerance). Our side runs the app's path where there is one: the processor, chunked prefill
that never splits a block (gemma4_mac/prefill.py), `ChatSession.read_prompt` and `run_prompt`.
"""

from __future__ import annotations

import copy

import mlx.core as mx
import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from gemma4_mac.generate import SamplingSettings, prepare_prompt, run_prompt
from gemma4_mac.prefill import prefill
from gemma4_mac.session import ChatSession
from mlx_model import load, load_model
from tests.assets import gemma4_vocab_dir
from tests.unified_reference import WINDOW, build_unified, reference_forward

TOLERANCE = 1e-4
BUDGET = 70  # soft tokens per image: images of 40-70 tokens, several times the window of 8


@pytest.fixture(scope="module")
def unified(tmp_path_factory):
    folder = tmp_path_factory.mktemp("unified")
    reference = build_unified(folder, seed=11, tokenizer_dir=gemma4_vocab_dir())
    model, processor = load(folder)
    processor.image_token_budget = BUDGET
    return reference, model, processor


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    from tests.test_video import _make_clip

    folder = tmp_path_factory.mktemp("unified-media")
    rng = np.random.default_rng(1)
    for name, size in (("wide.png", (90, 160)), ("tall.png", (200, 120))):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / name)
    t = np.arange(int(16_000 * 1.37)) / 16_000
    soundfile.write(folder / "voice.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16_000)
    _make_clip(folder / "clip.mp4", "libx264", "mp4", 24, 12, (96, 64), "yuv420p", 5, "aac")
    return folder


def _messages(*parts, text="What is in these?"):
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def _close(ours: np.ndarray, expected: np.ndarray) -> float:
    error = float(np.abs(ours - expected).max())
    print(f"max |logit difference| {error:.2e}")
    assert error <= TOLERANCE
    return error


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    """Gemma4UnifiedForCausalLM (model_type gemma4_unified_text, `model.layers.*`), a small vocabulary."""
    folder = tmp_path_factory.mktemp("unified-text")
    reference = build_unified(folder, seed=2, text_only=True, vocab_size=512)
    return reference, load_model(folder)


def test_text_full_forward_and_cached_decode_past_the_window(text_model):
    reference, model = text_model
    assert model.config.model_type == "gemma4_unified_text" and not model.model.has_vision
    ids = np.random.default_rng(5).integers(3, 512, size=(2, 4 * WINDOW + 3))
    with torch.no_grad():
        expected = copy.deepcopy(reference).double()(torch.tensor(ids)).logits.numpy()
    _close(np.array(model(mx.array(ids))), expected)
    for chunks in ((13,), (5, 5, 7), (WINDOW + 3, 2 * WINDOW)):
        cache, pieces, pos = model.make_cache(), [], 0
        for size in chunks + (1,) * (ids.shape[1] - sum(chunks)):
            pieces.append(np.array(model(mx.array(ids[:, pos:pos + size]), cache=cache)))
            pos += size
        _close(np.concatenate(pieces, axis=1), expected)


def test_image_and_audio_prompt_full_forward_matches_transformers(unified, media):
    reference, model, processor = unified
    prepared = prepare_prompt(processor, _messages({"type": "image", "path": str(media / "wide.png")},
                                                   {"type": "audio", "path": str(media / "voice.wav")},
                                                   {"type": "image", "path": str(media / "tall.png")}))
    assert [b.kind for b in prepared.media] == ["image", "audio", "image"]
    assert all(b.length > WINDOW for b in prepared.media)
    # every position from the second image on (the LM head over 262,144 ids is most of the cost on a CPU)
    keep = len(prepared.tokens) - prepared.media[2].start + 1
    expected = reference_forward(reference, prepared.tokens, media=prepared.media, last=keep)
    images = [b for b in prepared.media if b.kind == "image"]
    audio = next(b for b in prepared.media if b.kind == "audio")
    types = np.zeros(len(prepared.tokens), np.int32)
    for b in prepared.media:
        types[b.start:b.end] = {"image": 1, "audio": 3}[b.kind]
    logits = model(mx.array([prepared.tokens]),
                   pixel_values=mx.array(np.concatenate([b.inputs[0] for b in images])),
                   image_position_ids=mx.array(np.concatenate([b.inputs[1] for b in images])),
                   input_features=mx.array(audio.inputs[0]), input_features_mask=mx.array(audio.inputs[1]),
                   mm_token_type_ids=mx.array(types[None]), logits_to_keep=keep)
    _close(np.array(logits)[0], expected)
    # the prefill path in chunks that never split a block gives the same last position
    for chunk_size in (4096, 24):
        last = prefill(model, prepared.tokens, model.make_cache(), chunk_size=chunk_size,
                       media=prepared.media)
        _close(np.array(last)[0], expected[-1])
    # images attend to all of themselves here: without mm_token_type_ids transformers answers otherwise
    plain = reference_forward(reference, prepared.tokens, media=prepared.media, last=1, token_types=False)
    assert np.abs(plain[-1] - expected[-1]).max() > 100 * TOLERANCE


def test_video_frames_with_their_sound_track_match_transformers(unified, media):
    reference, model, processor = unified
    processor.video_frames = 5
    try:
        prepared = prepare_prompt(processor, _messages({"type": "video", "path": str(media / "clip.mp4")},
                                                       text="What happens?"))
    finally:
        processor.video_frames = 32
    assert [b.kind for b in prepared.media] == ["video"] * 5 + ["audio"]
    assert prepared.media[-1].length in (50, 51)  # 2 s of sound in 40 ms frames (AAC adds a few ms)
    expected = reference_forward(reference, prepared.tokens, media=prepared.media, last=1)[-1]
    last = prefill(model, prepared.tokens, model.make_cache(), chunk_size=64, media=prepared.media)
    _close(np.array(last)[0], expected)


def test_cached_decode_after_media_through_the_session_matches_transformers(unified, media):
    """read_prompt, then 2 * window + 4 decoded tokens through the cache, each step's logits against
    transformers' forward of the prompt plus the tokens so far; run_prompt picks its greedy tokens."""
    reference, model, processor = unified
    prepared = prepare_prompt(processor, _messages({"type": "image", "path": str(media / "tall.png")},
                                                   {"type": "audio", "path": str(media / "voice.wav")}))
    steps = 2 * WINDOW + 4
    ref = copy.deepcopy(reference).double()
    images = [b for b in prepared.media if b.kind == "image"]
    audio = next(b for b in prepared.media if b.kind == "audio")
    types = np.zeros(len(prepared.tokens), np.int64)
    for b in prepared.media:
        types[b.start:b.end] = {"image": 1, "audio": 3}[b.kind]
    with torch.no_grad():
        greedy = ref.generate(
            input_ids=torch.tensor([prepared.tokens]), mm_token_type_ids=torch.tensor(types[None]),
            pixel_values=torch.tensor(images[0].inputs[0], dtype=torch.float64),
            image_position_ids=torch.tensor(images[0].inputs[1]).long(),
            input_features=torch.tensor(audio.inputs[0], dtype=torch.float64),
            input_features_mask=torch.tensor(audio.inputs[1]),
            max_new_tokens=steps, min_new_tokens=steps, do_sample=False, eos_token_id=None, pad_token_id=0,
        )[0, len(prepared.tokens):].tolist()
    expected = reference_forward(reference, prepared.tokens + greedy[:-1], media=prepared.media, last=steps)

    session = ChatSession(model)
    logits, reused = session.read_prompt(prepared)
    assert reused == 0 and len(session.tokens) == len(prepared.tokens)
    ours = [np.array(logits)[0]]
    for token in greedy[:-1]:
        ours.append(np.array(model(mx.array([[token]]), cache=session.cache))[0, -1])
    _close(np.stack(ours), expected)
    assert [int(np.argmax(row)) for row in ours] == greedy

    fresh = ChatSession(model)  # the app's answer loop: it records every token it runs into the cache
    events = list(run_prompt(model, processor, prepared, SamplingSettings(temperature=0.0, max_tokens=steps),
                             session=fresh))
    assert events[-1].kind == "done"
    produced = fresh.tokens[len(prepared.tokens):]
    eos = set(processor.tokenizer.eos_token_ids)
    stop = next((i + 1 for i, t in enumerate(greedy) if t in eos), len(greedy))
    assert produced[:stop] == greedy[:stop]
