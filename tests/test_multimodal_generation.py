"""Images, video frames and audio from a chat message to logits, against transformers' Gemma4ForConditionalGeneration.

Tiny random checkpoints with the real 262,144-token vocabulary and tokenizer: an E2B-like model (PLE, shared
KV layers, vision and audio towers) and a 26B-like one (experts, bidirectional attention inside images).
Our side runs the whole app path: processor, chunked prefill that never splits a block, session reuse.
"""

from __future__ import annotations

import shutil
import threading

import mlx.core as mx
import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from gemma4_mac.generate import SamplingSettings, prepare_prompt, run_prompt
from gemma4_mac.prefill import prefill
from gemma4_mac.prefill import chunk_bounds
from gemma4_mac.session import ChatSession
from mlx_model import load
from mlx_model.audio_features import num_audio_soft_tokens
from mlx_model.model import MultimodalInputError
from tests.assets import gemma4_vocab_dir
from tests.reference_models import VARIANTS, randomize_

VOCAB = 262_144
TOLERANCE = 1e-4
BUDGET = 70


def _text_config(variant: str, **extra) -> dict:
    return {**VARIANTS[variant], "vocab_size": VOCAB, "vocab_size_per_layer_input": VOCAB, "pad_token_id": 0,
            "bos_token_id": 2, "eos_token_id": [1, 106], "max_position_embeddings": 4096, **extra}


def _build(out_dir, variant: str, *, audio: bool, seed: int, **text_extra):
    from transformers import Gemma4AudioConfig, Gemma4Config, Gemma4ForConditionalGeneration, Gemma4VisionConfig

    torch.manual_seed(seed)
    vision = Gemma4VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                num_key_value_heads=2, head_dim=16, position_embedding_size=64)
    audio_config = Gemma4AudioConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     subsampling_conv_channels=[128, 8], output_proj_dims=32) if audio else None
    config = Gemma4Config(text_config=_text_config(variant, **text_extra), vision_config=vision.to_dict(),
                          audio_config=audio_config.to_dict() if audio_config else None)
    model = Gemma4ForConditionalGeneration(config).float().eval()
    randomize_(model, seed)
    model.save_pretrained(out_dir, safe_serialization=True)
    for file in gemma4_vocab_dir().iterdir():
        if file.is_file():
            shutil.copy(file, out_dir / file.name)
    (out_dir / "processor_config.json").write_text("{}")  # the towers' settings: the published defaults
    return model


@pytest.fixture(scope="module")
def e2b(tmp_path_factory):
    folder = tmp_path_factory.mktemp("e2b_mm")
    reference = _build(folder, "e2b", audio=True, seed=3)
    model, processor = load(folder)
    processor.image_token_budget = BUDGET
    return reference, model, processor


@pytest.fixture(scope="module")
def moe_bidirectional(tmp_path_factory):
    folder = tmp_path_factory.mktemp("26b_mm")
    reference = _build(folder, "26b", audio=False, seed=5, use_bidirectional_attention="vision")
    model, processor = load(folder)
    processor.image_token_budget = BUDGET
    return reference, model, processor


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    paths = {}
    for name, size in (("wide.png", (90, 160)), ("tall.png", (200, 120))):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / name)
        paths[name] = folder / name
    t = np.arange(int(16_000 * 1.37)) / 16_000
    soundfile.write(folder / "voice.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16_000)
    paths["voice.wav"] = folder / "voice.wav"
    long = np.tile((0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 50)[: 16_000 * 65]
    soundfile.write(folder / "long.wav", long, 16_000)
    paths["long.wav"] = folder / "long.wav"
    from tests.test_video import _make_clip

    _make_clip(folder / "clip.mp4", "libx264", "mp4", 24, 12, (96, 64), "yuv420p", 5, "aac")
    paths["clip.mp4"] = folder / "clip.mp4"
    return paths


def _reference_logits(reference, prepared) -> np.ndarray:
    """transformers' logits for the prompt our processor built, fed the same tower inputs.

    float64 where it can (its audio tower casts to float32 internally, so audio prompts run in float32).
    """
    import copy

    float64 = not any(b.kind == "audio" for b in prepared.media)
    ref = copy.deepcopy(reference).to(torch.float64 if float64 else torch.float32)
    ref.config.text_config._experts_implementation = "eager"
    dtype = torch.float64 if float64 else torch.float32
    kwargs = {}
    images = [b for b in prepared.media if b.kind == "image"]
    audio = [b for b in prepared.media if b.kind == "audio"]
    if images:
        kwargs["pixel_values"] = torch.tensor(np.concatenate([b.inputs[0] for b in images]), dtype=dtype)
        kwargs["image_position_ids"] = torch.tensor(np.concatenate([b.inputs[1] for b in images])).long()
    if audio:
        width = max(b.inputs[0].shape[1] for b in audio)
        feats = np.zeros((len(audio), width, audio[0].inputs[0].shape[2]), np.float32)
        masks = np.zeros((len(audio), width), bool)
        for i, b in enumerate(audio):
            feats[i, : b.inputs[0].shape[1]] = b.inputs[0][0]
            masks[i, : b.inputs[1].shape[1]] = b.inputs[1][0]
        kwargs["input_features"] = torch.tensor(feats, dtype=dtype)
        kwargs["input_features_mask"] = torch.tensor(masks)
    frames = [b for b in prepared.media if b.kind == "video"]
    if frames:
        kwargs["pixel_values_videos"] = torch.tensor(np.concatenate([b.inputs[0] for b in frames]), dtype=dtype)
        kwargs["video_position_ids"] = torch.tensor(np.concatenate([b.inputs[1] for b in frames])).long()
        kwargs["num_frames_per_video"] = torch.tensor([len(frames)])
    types = np.zeros(len(prepared.tokens), np.int64)
    for b in prepared.media:
        types[b.start:b.end] = {"image": 1, "video": 2, "audio": 3}[b.kind]
    with torch.no_grad():
        out = ref(input_ids=torch.tensor([prepared.tokens]), mm_token_type_ids=torch.tensor(types[None]), **kwargs)
    return out.logits[0].double().numpy()


def _check_close(ours: np.ndarray, expected: np.ndarray) -> None:
    error = float(np.abs(ours - expected).max())
    print(f"max |logit difference| {error:.2e}")
    assert error <= TOLERANCE


def _our_last_logits(model, prepared, chunk_size: int) -> np.ndarray:
    cache = model.make_cache()
    logits = prefill(model, prepared.tokens, cache, chunk_size=chunk_size, media=prepared.media)
    return np.array(logits[0].astype(mx.float32))


def _messages(*parts, text="What is in these?"):
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def test_prompt_expands_every_placeholder_with_exact_soft_token_runs(e2b, media):
    _, _, processor = e2b
    prepared = prepare_prompt(processor, _messages({"type": "image", "path": str(media["wide.png"])},
                                                   {"type": "audio", "path": str(media["voice.wav"])}))
    kinds = [b.kind for b in prepared.media]
    assert kinds == ["image", "audio"]
    config = processor.config
    image, audio = prepared.media
    assert prepared.tokens[image.start - 1] == config.boi_token_id
    assert prepared.tokens[image.end] == config.eoi_token_id
    assert set(prepared.tokens[image.start:image.end]) == {config.image_token_id}
    assert audio.length == num_audio_soft_tokens(int(16_000 * 1.37)) == 34  # 136 valid frames / 4, rounded up
    assert prepared.tokens[audio.start - 1] == config.boa_token_id and prepared.tokens[audio.end] == config.eoa_token_id
    assert prepared.generation_prompt_start is not None and prepared.generation_prompt_start < len(prepared.tokens)


@pytest.mark.slow
@pytest.mark.parametrize("chunk_size", [4096, 24])
def test_image_and_audio_logits_match_transformers(e2b, media, chunk_size):
    reference, model, processor = e2b
    prepared = prepare_prompt(processor, _messages({"type": "image", "path": str(media["wide.png"])},
                                                   {"type": "audio", "path": str(media["voice.wav"])},
                                                   {"type": "image", "path": str(media["tall.png"])}))
    expected = _reference_logits(reference, prepared)[-1]
    ours = _our_last_logits(model, prepared, chunk_size)
    _check_close(ours, expected)


@pytest.mark.slow
def test_video_frames_with_their_sound_track_match_transformers(e2b, media):
    reference, model, processor = e2b
    processor.video_frames = 6
    try:
        prepared = prepare_prompt(processor, _messages({"type": "video", "path": str(media["clip.mp4"])},
                                                       text="What happens?"))
    finally:
        processor.video_frames = 32
    kinds = [b.kind for b in prepared.media]
    assert kinds == ["video"] * 6 + ["audio"]  # 2 s of sound: one clip after the frames
    text = processor.decode(prepared.tokens)
    assert "00:00 <|image>" in text and "00:01 <|image>" in text
    expected = _reference_logits(reference, prepared)[-1]
    ours = _our_last_logits(model, prepared, 64)
    _check_close(ours, expected)


@pytest.mark.slow
@pytest.mark.parametrize("chunk_size", [4096, 20])
def test_bidirectional_image_blocks_on_experts_model_match_transformers(moe_bidirectional, media, chunk_size):
    reference, model, processor = moe_bidirectional
    prepared = prepare_prompt(processor, _messages({"type": "image", "path": str(media["tall.png"])},
                                                   {"type": "image", "path": str(media["wide.png"])},
                                                   text="Compare the two pictures."))
    # chunks end before a block or hold it whole, so every image sees all of itself
    for lo, hi in chunk_bounds(0, len(prepared.tokens), chunk_size, prepared.media):
        assert all(not (b.start < hi < b.end) for b in prepared.media)
    expected = _reference_logits(reference, prepared)[-1]
    ours = _our_last_logits(model, prepared, chunk_size)
    _check_close(ours, expected)
    # without the bidirectional blocks the answer would differ: the test can tell
    causal_only = _reference_logits_without_types(reference, prepared)
    assert np.abs(causal_only - expected).max() > 10 * TOLERANCE


def _reference_logits_without_types(reference, prepared) -> np.ndarray:
    import copy

    ref = copy.deepcopy(reference).to(torch.float64)
    ref.config.text_config._experts_implementation = "eager"
    images = [b for b in prepared.media if b.kind == "image"]
    with torch.no_grad():
        out = ref(input_ids=torch.tensor([prepared.tokens]),
                  pixel_values=torch.tensor(np.concatenate([b.inputs[0] for b in images]), dtype=torch.float64),
                  image_position_ids=torch.tensor(np.concatenate([b.inputs[1] for b in images])).long())
    return out.logits[0, -1].double().numpy()


@pytest.mark.slow
def test_second_turn_reuses_the_image_and_a_new_image_is_not_mistaken_for_it(e2b, media, tmp_path):
    reference, model, processor = e2b
    sampling = SamplingSettings(temperature=0.0, max_tokens=3)
    session = ChatSession(model)
    first = _messages({"type": "image", "path": str(media["wide.png"])})
    prepared = prepare_prompt(processor, first)
    events = list(run_prompt(model, processor, prepared, sampling, session=session))
    answer = "".join(e.text for e in events if e.kind == "answer")
    second = first + [{"role": "assistant", "content": answer}, {"role": "user", "content": "And now?"}]
    prepared2 = prepare_prompt(processor, second)
    stats = [e for e in run_prompt(model, processor, prepared2, sampling, session=session)][-1].stats
    assert stats.cached_tokens >= prepared.media[0].end  # the image was not run through the tower again

    # the same-sized picture with other pixels has identical token ids but must not reuse the cache
    other = tmp_path / "other.png"
    Image.fromarray(np.full((90, 160, 3), 200, np.uint8)).save(other)
    swapped = _messages({"type": "image", "path": str(other)})
    prepared3 = prepare_prompt(processor, swapped)
    assert prepared3.tokens == prepared.tokens and prepared3.keys != prepared.keys
    stats3 = [e for e in run_prompt(model, processor, prepared3, sampling, session=session)][-1].stats
    assert stats3.cached_tokens <= prepared3.media[0].start


def test_long_audio_becomes_consecutive_clips_and_the_person_is_told(e2b, media):
    _, model, processor = e2b
    prepared = prepare_prompt(processor, _messages({"type": "audio", "path": str(media["long.wav"])}))
    clips = [b for b in prepared.media if b.kind == "audio"]
    assert [b.length for b in clips] == [750, 750, 125]
    assert any("3 consecutive clips" in note for note in prepared.notes)
    events = list(run_prompt(model, processor, prepared, SamplingSettings(temperature=0.0, max_tokens=1),
                             cancel=_cancelled()))
    assert events[0].kind == "notice" and "30 s" in events[0].text


def _cancelled() -> threading.Event:
    event = threading.Event()
    event.set()
    return event


def test_models_without_a_tower_refuse_that_attachment_clearly(moe_bidirectional, media):
    _, _, processor = moe_bidirectional
    with pytest.raises(MultimodalInputError, match="E2B or E4B"):
        prepare_prompt(processor, _messages({"type": "audio", "path": str(media["voice.wav"])}))


def test_missing_and_unreadable_attachments_raise_clear_errors(e2b, tmp_path):
    _, _, processor = e2b
    with pytest.raises(MultimodalInputError, match="moved or deleted"):
        prepare_prompt(processor, _messages({"type": "image", "path": str(tmp_path / "gone.png")}))
    fake = tmp_path / "notes.png"
    fake.write_text("this is not a picture")
    with pytest.raises(ValueError, match="notes.png"):
        prepare_prompt(processor, _messages({"type": "image", "path": str(fake)}))
