"""Audio features against transformers' Gemma4AudioFeatureExtractor, on real speech (espeak-ng).

The speech is loaded at 8, 16, 44.1 and 48 kHz, mono and stereo, by OUR loader; both extractors then
see the same 16 kHz samples. Soft-token counts are checked against the extractor's mask put through
the tower's subsampling for thousands of lengths (tests/test_audio.py confirms them on the tower).
"""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr
from transformers.models.gemma4.feature_extraction_gemma4 import Gemma4AudioFeatureExtractor

from mlx_model.audio_features import (
    MAX_CLIP_SAMPLES,
    AudioFeatureError,
    AudioFeatureExtractor,
    num_audio_soft_tokens,
    split_into_clips,
)
from mlx_model.audio_io import load_audio

TOLERANCE = 1e-4
CACHE = Path(__file__).resolve().parent.parent / ".cache" / "audio"
SPEECH_TEXT = (
    "The quick brown fox jumps over the lazy dog while seven bright stars shine above the quiet harbour. "
    "Audio models turn speech into soft tokens, twenty five every second, and thirty seconds make one clip. "
) * 3
# 0.1 s to 30 s, odd sizes included; the last one is cut at 30 s by both extractors.
LENGTHS_SECONDS = [0.1, 0.37, 1.0, 2.77, 9.5, 30.0, 31.0]


def _tower_token_count(frame_mask: np.ndarray) -> int:
    """The tower's subsampling of the frame mask (HF modeling_gemma4.py:387, two stride-2 layers)."""
    return int(frame_mask[::2][::2].sum())


@pytest.fixture(scope="module")
def speech() -> tuple[np.ndarray, int]:
    """About 38 s of synthetic speech at espeak-ng's 22.05 kHz, generated once and cached."""
    path = CACHE / "speech_v1.wav"
    if not path.exists():
        espeak = shutil.which("espeak-ng")
        assert espeak, "espeak-ng is missing: run scripts/install_system_deps.sh (apt-get install espeak-ng)"
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.wav")
        command = [espeak, "-s", "175", "-w", str(partial), SPEECH_TEXT]
        subprocess.run(command, check=True, capture_output=True)
        partial.rename(path)
    samples, rate = soundfile.read(path, dtype="float32")
    assert samples.ndim == 1 and len(samples) / rate > 31
    return samples, rate


@pytest.fixture(scope="module")
def reference_extractor():
    return Gemma4AudioFeatureExtractor()


def test_mel_filters_and_window_equal_transformers(reference_extractor):
    ours = AudioFeatureExtractor()
    np.testing.assert_array_equal(ours._mel_filters, reference_extractor.mel_filters)
    np.testing.assert_array_equal(ours._window, reference_extractor.window)
    assert (ours.frame_length, ours.hop_length, ours.fft_length) == (320, 160, 512)


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("rate", [8_000, 16_000, 44_100, 48_000])
def test_features_match_transformers_on_loaded_speech(speech, reference_extractor, rate, channels):
    samples, speech_rate = speech
    source = soxr.resample(samples, speech_rate, rate, quality="VHQ")
    if channels == 2:  # a different right channel, so the mixdown matters
        source = np.stack([source, 0.5 * np.roll(source, 37)], axis=1)
    encoded = io.BytesIO()
    soundfile.write(encoded, source, rate, format="WAV", subtype="PCM_16")
    loaded, info = load_audio(encoded.getvalue(), name=f"speech_{rate}_{channels}.wav")
    assert (info.original_rate, info.original_channels) == (rate, channels)
    assert abs(len(loaded) - len(samples) * 16_000 / speech_rate) <= 2

    clips = [loaded[: int(seconds * 16_000)] for seconds in LENGTHS_SECONDS]
    expected = reference_extractor(clips, return_tensors="np")
    features, mask = AudioFeatureExtractor()(clips)

    assert features.dtype == np.float32 and features.shape == expected["input_features"].shape
    np.testing.assert_array_equal(mask, expected["input_features_mask"])
    diff = np.abs(features - expected["input_features"]).max()
    print(f"[{rate} Hz x{channels}] features max|diff| {diff:.2e}")
    assert diff <= TOLERANCE, f"features differ by {diff:.2e}"
    assert features.shape[1] == 2999  # 30 s of frames; the 31 s clip was cut like transformers cuts it
    for clip, frame_mask in zip(clips, expected["input_features_mask"]):
        assert num_audio_soft_tokens(len(clip)) == _tower_token_count(frame_mask)


def test_features_with_preemphasis_and_normalisation_match(speech):
    samples, speech_rate = speech
    audio = soxr.resample(samples[: speech_rate * 3], speech_rate, 16_000)
    rng = np.random.default_rng(3)
    for htk in (True, False):
        reference = Gemma4AudioFeatureExtractor(
            preemphasis=0.97, preemphasis_htk_flavor=htk, input_scale_factor=1.7, mel_floor=1e-4,
            per_bin_mean=list(rng.normal(size=128)), per_bin_stddev=list(rng.uniform(0.5, 2.0, size=128)),
        )
        ours = AudioFeatureExtractor.from_dict(reference.to_dict())
        clips = [audio, audio[:12_345]]
        expected = reference(clips, return_tensors="np")
        features, mask = ours(clips)
        np.testing.assert_array_equal(mask, expected["input_features_mask"])
        assert np.abs(features - expected["input_features"]).max() <= TOLERANCE


def test_soft_token_count_equals_transformers_for_every_length(reference_extractor):
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(600_000).astype(np.float32) * 0.1
    # every length up to 0.25 s, every residue mod 640 around 3 s, the 30 s cap and beyond
    groups = [list(range(0, 4_000)), list(range(48_000, 48_000 + 641)),
              [479_839, 479_840, 479_999, 480_000, 480_001, 600_000]]
    checked = 0
    for lengths in groups:
        masks = reference_extractor([noise[:n] for n in lengths], return_tensors="np")["input_features_mask"]
        for n, frame_mask in zip(lengths, masks):
            assert num_audio_soft_tokens(n) == _tower_token_count(frame_mask), n
            checked += 1
    assert checked > 4_600
    assert num_audio_soft_tokens(480_000) == num_audio_soft_tokens(10**7) == 750
    # ceil(ms / 40), the count some ports use, is one too many for about a quarter of lengths
    lengths = range(48_000, 48_640)
    wrong = sum(int(np.ceil(n / 16 / 40)) != num_audio_soft_tokens(n) for n in lengths)
    assert 0.2 < wrong / len(lengths) < 0.3


def test_split_into_clips_cuts_consecutive_30s_clips():
    samples = np.arange(75 * 16_000, dtype=np.float32)
    clips = split_into_clips(samples)
    assert [len(c) for c in clips] == [MAX_CLIP_SAMPLES, MAX_CLIP_SAMPLES, 15 * 16_000]
    np.testing.assert_array_equal(np.concatenate(clips), samples)
    assert sum(num_audio_soft_tokens(len(c)) for c in clips) == 750 + 750 + 375
    # a remainder of 100 samples (no soft token) is dropped
    assert [len(c) for c in split_into_clips(np.zeros(60 * 16_000 + 100))] == [MAX_CLIP_SAMPLES] * 2
    assert [len(c) for c in split_into_clips(samples[:1_000], max_seconds=0.025)] == [400, 400, 200]
    assert [len(c) for c in split_into_clips(samples[:900], max_seconds=0.025)] == [400, 400]
    assert split_into_clips(samples[:160]) == []
    with pytest.raises(AudioFeatureError, match="mono"):
        split_into_clips(np.zeros((10, 2)))


def test_extractor_rejects_bad_clips_and_handles_empty_ones():
    extractor = AudioFeatureExtractor()
    with pytest.raises(AudioFeatureError, match="clip 1 .*mono"):
        extractor([np.zeros(1000), np.zeros((1000, 2))])
    with pytest.raises(AudioFeatureError, match="NaN"):
        extractor([np.full(1000, np.nan)])
    features, mask = extractor([np.zeros(0, np.float32), np.zeros(100, np.float32)])
    assert features.shape == (2, 0, 128) and mask.shape == (2, 0)
