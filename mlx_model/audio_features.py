"""Gemma 4 audio features: 16 kHz samples -> 128-bin log-mel frames and their validity mask (Gemma 4 12B:
raw 640-sample frames, `WaveformFrameExtractor`).

Reproduces transformers' Gemma4AudioFeatureExtractor (feature_extraction_gemma4.py, 5.23.0) with the
same numpy operations in the same order, so the features agree to float32 rounding. Also the
soft-token count the audio tower produces for a clip, and the split of long audio into 30 s clips.
FE = transformers/models/gemma4/feature_extraction_gemma4.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Optional, Sequence

import numpy as np

SAMPLE_RATE = 16_000
MAX_CLIP_SECONDS = 30
MAX_CLIP_SAMPLES = SAMPLE_RATE * MAX_CLIP_SECONDS  # FE:232 max_length=480_000, longer input is truncated
MAX_SOFT_TOKENS = 750  # processing_gemma4.py:102 audio_seq_length


class AudioFeatureError(ValueError):
    """The samples cannot be turned into features (wrong shape, not finite)."""


def hertz_to_mel(freq: np.ndarray | float) -> np.ndarray | float:
    """HTK mel scale."""
    return 2595.0 * np.log10(1.0 + (freq / 700.0))


def mel_to_hertz(mels: np.ndarray | float) -> np.ndarray | float:
    """Inverse of the HTK mel scale."""
    return 700.0 * (np.power(10, mels / 2595.0) - 1.0)


def htk_mel_filter_bank(
    num_frequency_bins: int,
    num_mel_filters: int,
    min_frequency: float,
    max_frequency: float,
    sampling_rate: int,
) -> np.ndarray:
    """Triangular HTK mel filters without normalisation, float64 [num_frequency_bins, num_mel_filters].

    Same construction as transformers' audio_utils.mel_filter_bank(norm=None, mel_scale="htk").
    """
    mel_freqs = np.linspace(hertz_to_mel(min_frequency), hertz_to_mel(max_frequency), num_mel_filters + 2)
    filter_freqs = mel_to_hertz(mel_freqs)
    fft_freqs = np.linspace(0, sampling_rate // 2, num_frequency_bins)
    filter_diff = np.diff(filter_freqs)
    slopes = np.expand_dims(filter_freqs, 0) - np.expand_dims(fft_freqs, 1)
    down_slopes = -slopes[:, :-2] / filter_diff[:-1]
    up_slopes = slopes[:, 2:] / filter_diff[1:]
    return np.maximum(np.zeros(1), np.minimum(down_slopes, up_slopes))


def periodic_hann(length: int) -> np.ndarray:
    """Periodic Hann window, float32 (FE:144 window_function(frame_length), i.e. np.hanning(n + 1)[:-1])."""
    return np.hanning(length + 1)[:-1].astype(np.float32)


@dataclass
class AudioFeatureExtractor:
    """Log-mel features exactly as Gemma4AudioFeatureExtractor computes them.

    Fields are the keys of a hub `preprocessor_config.json` feature-extractor block; unknown keys are
    dropped by `from_dict`. Call it on a list of 16 kHz mono float clips.
    """

    feature_size: int = 128
    sampling_rate: int = SAMPLE_RATE
    padding_value: float = 0.0
    frame_length_ms: float = 20.0
    hop_length_ms: float = 10.0
    min_frequency: float = 0.0
    max_frequency: float = 8000.0
    preemphasis: float = 0.0
    preemphasis_htk_flavor: bool = True
    fft_overdrive: bool = False
    dither: float = 0.0
    input_scale_factor: float = 1.0
    mel_floor: float = 1e-3
    per_bin_mean: Optional[Sequence[float]] = None
    per_bin_stddev: Optional[Sequence[float]] = None
    max_length: int = MAX_CLIP_SAMPLES
    pad_to_multiple_of: int = 128
    dither_seed: Optional[int] = None
    _window: np.ndarray = field(init=False, repr=False)
    _mel_filters: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        self.frame_length = int(round(self.sampling_rate * self.frame_length_ms / 1000.0))
        self.hop_length = int(round(self.sampling_rate * self.hop_length_ms / 1000.0))
        fft_length = 2 ** math.ceil(math.log2(self.frame_length))
        self.fft_length = fft_length * 2 if self.fft_overdrive else fft_length
        self._window = periodic_hann(self.frame_length)
        self._mel_filters = htk_mel_filter_bank(
            self.fft_length // 2 + 1, self.feature_size, self.min_frequency, self.max_frequency,
            self.sampling_rate,
        )
        self._mel_floor = np.array(self.mel_floor, dtype=np.float64)
        self._mean = None if self.per_bin_mean is None else np.array(self.per_bin_mean).reshape(1, -1)
        self._stddev = None if self.per_bin_stddev is None else np.array(self.per_bin_stddev).reshape(1, -1)
        self._rng = np.random.default_rng(self.dither_seed)

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> "AudioFeatureExtractor":
        """Build from a `preprocessor_config.json` dict (or its `feature_extractor` block)."""
        params = params.get("feature_extractor", params)
        names = {f.name for f in fields(cls) if f.init}
        return cls(**{k: v for k, v in params.items() if k in names})

    def num_frames(self, num_samples: int) -> int:
        """Mel frames produced for a (padded) clip of `num_samples` samples (FE:180 unfold arithmetic)."""
        return max(0, (num_samples + self.frame_length // 2 - (self.frame_length + 1)) // self.hop_length + 1)

    def _spectrogram(self, waveform: np.ndarray, sample_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One padded clip -> (log-mel [frames, bins] float64, frame mask [frames] bool); FE:163-217."""
        if self.dither > 0.0:
            noise = self._rng.standard_normal(waveform.shape).astype(waveform.dtype)
            waveform = waveform + self.dither * noise
        if self.input_scale_factor != 1.0:
            waveform = waveform * self.input_scale_factor
        # FE:177 semicausal padding: frame_length // 2 zeros in front, first frame centred at t = 0
        pad_left = self.frame_length // 2
        waveform = np.pad(waveform, (pad_left, 0))
        sample_mask = np.pad(sample_mask, (pad_left, 0))
        span = self.frame_length + 1  # one extra sample feeds the preemphasis
        count = self.num_frames(len(waveform) - pad_left)
        if count == 0:
            return np.zeros((0, self.feature_size)), np.zeros((0,), dtype=bool)
        step = waveform.strides[0]
        strides = (step * self.hop_length, step)
        frames = np.lib.stride_tricks.as_strided(waveform, shape=(count, span), strides=strides)
        if self.preemphasis > 0.0:
            if self.preemphasis_htk_flavor:
                first = frames[..., :1] * (1.0 - self.preemphasis)
                rest = frames[..., 1:-1] - self.preemphasis * frames[..., :-2]
                frames = np.concatenate([first, rest], axis=-1)
            else:
                frames = frames[..., 1:] - self.preemphasis * frames[..., :-1]
        else:
            frames = frames[..., :-1]
        spectrum = np.abs(np.fft.rfft(frames * self._window, n=self.fft_length, axis=-1))
        log_mel = np.log(np.matmul(spectrum, self._mel_filters) + self._mel_floor)
        if self._mean is not None:
            log_mel = log_mel - self._mean
        if self._stddev is not None:
            log_mel = log_mel / self._stddev
        # FE:211 a frame is valid only when its last sample is real audio
        frame_ends = np.arange(count) * self.hop_length + span - 1
        return log_mel, sample_mask[frame_ends].astype(bool)

    def __call__(self, clips: Sequence[np.ndarray] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Features for a batch of mono 16 kHz clips.

        Returns (features float32 [B, T, feature_size], mask bool [B, T]); clips are truncated to
        `max_length` samples and right-padded to the longest, rounded up to `pad_to_multiple_of`.
        A single 1-D array counts as a batch of one.
        """
        if isinstance(clips, np.ndarray) and clips.ndim == 1:
            clips = [clips]
        waveforms = []
        for index, clip in enumerate(clips):
            clip = np.asarray(clip)
            if clip.ndim != 1:
                raise AudioFeatureError(
                    f"audio clip {index} has shape {clip.shape}; expected mono samples (1-D). "
                    "Mix it down first."
                )
            # FE pads via SequenceFeatureExtractor.pad, which stores float64 input as float32
            clip = clip.astype(np.float32, copy=False)[: self.max_length]
            if not np.all(np.isfinite(clip)):
                raise AudioFeatureError(f"audio clip {index} contains NaN or infinite samples.")
            waveforms.append(clip)
        longest = max((len(w) for w in waveforms), default=0)
        if self.pad_to_multiple_of and longest % self.pad_to_multiple_of:
            longest += self.pad_to_multiple_of - longest % self.pad_to_multiple_of
        features, masks = [], []
        for waveform in waveforms:
            padded = np.full(longest, self.padding_value, dtype=np.float32)
            padded[: len(waveform)] = waveform
            sample_mask = np.zeros(longest, dtype=np.int32)
            sample_mask[: len(waveform)] = 1
            log_mel, mask = self._spectrogram(padded, sample_mask)
            features.append(log_mel.astype(np.float32) * mask[:, None])
            masks.append(mask)
        frames = self.num_frames(longest)
        if not features:
            return np.zeros((0, frames, self.feature_size), np.float32), np.zeros((0, frames), bool)
        return np.stack(features).astype(np.float32, copy=False), np.stack(masks)


def num_audio_soft_tokens(num_samples_16k: int) -> int:
    """Soft tokens the audio tower keeps for a clip of `num_samples_16k` samples at 16 kHz.

    Equals transformers' processor (`replace_audio_token`: the frame mask subsampled [::2] twice) and
    the tower's output mask. A frame is valid when its last sample is real: (n - 161) // 160 + 1 frames;
    each stride-2 conv keeps ceil(frames / 2). Not ceil(ms / 40), which is one too many for about a
    quarter of lengths. Clips are truncated at 30 s (750 tokens).
    """
    samples = min(int(num_samples_16k), MAX_CLIP_SAMPLES)
    frame_length, hop = 320, 160
    valid_frames = max(0, (samples + frame_length // 2 - (frame_length + 1)) // hop + 1)
    return -(-valid_frames // 4)


@dataclass
class WaveformFrameExtractor:
    """Gemma 4 12B's audio input: raw 16 kHz samples cut into frames of 640 (40 ms), one soft token each.

    Reproduces transformers' Gemma4UnifiedAudioFeatureExtractor (feature_extraction_gemma4_unified.py:67-151):
    each clip zero-padded to whole frames, the batch right-padded with zero frames to the longest clip,
    the mask True for the clip's own frames. No mel spectrogram and no 30 s cut of its own.
    """

    audio_samples_per_token: int = 640
    sampling_rate: int = SAMPLE_RATE
    padding_value: float = 0.0

    def __post_init__(self):
        if self.audio_samples_per_token <= 0:
            raise AudioFeatureError(
                f"audio_samples_per_token must be positive, got {self.audio_samples_per_token}.")

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> "WaveformFrameExtractor":
        """Build from a `preprocessor_config.json` dict (or its `feature_extractor` block)."""
        params = params.get("feature_extractor", params)
        names = {f.name for f in fields(cls) if f.init}
        return cls(**{k: v for k, v in params.items() if k in names})

    def num_soft_tokens(self, num_samples: int) -> int:
        """Frames (= soft tokens) of a clip: ceil(samples / 640) (processing_gemma4_unified.py:341)."""
        return -(-int(num_samples) // self.audio_samples_per_token)

    def __call__(self, clips: Sequence[np.ndarray] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(frames float32 [B, T, 640], mask bool [B, T]) for a batch of mono 16 kHz clips."""
        if isinstance(clips, np.ndarray) and clips.ndim == 1:
            clips = [clips]
        width = self.audio_samples_per_token
        waveforms = []
        for index, clip in enumerate(clips):
            clip = np.asarray(clip)
            if clip.ndim != 1:
                raise AudioFeatureError(f"audio clip {index} has shape {clip.shape}; expected mono samples "
                                        "(1-D). Mix it down first.")
            clip = clip.astype(np.float32, copy=False)
            if not np.all(np.isfinite(clip)):
                raise AudioFeatureError(f"audio clip {index} contains NaN or infinite samples.")
            waveforms.append(clip)
        longest = max((self.num_soft_tokens(len(w)) for w in waveforms), default=0)
        frames = np.full((len(waveforms), longest * width), self.padding_value, dtype=np.float32)
        mask = np.zeros((len(waveforms), longest), dtype=bool)
        for row, waveform in enumerate(waveforms):
            count = self.num_soft_tokens(len(waveform))
            frames[row, : count * width] = 0.0  # the last frame of a clip is padded with zeros
            frames[row, : len(waveform)] = waveform
            mask[row, :count] = True
        return frames.reshape(len(waveforms), longest, width), mask


def split_into_clips(
    samples: np.ndarray, rate: int = SAMPLE_RATE, max_seconds: float = MAX_CLIP_SECONDS,
    min_samples: int = 161,
) -> list[np.ndarray]:
    """Cut mono samples into consecutive clips of at most `max_seconds` (the tower's 30 s limit).

    A final remainder shorter than `min_samples` at 16 kHz, too short to yield a soft token (the mel
    frames' 161 samples; one sample for Gemma 4 12B's raw frames), is dropped; audio that short as a
    whole gives an empty list.
    """
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise AudioFeatureError(f"expected mono samples (1-D), got shape {samples.shape}.")
    clip_length = int(round(rate * max_seconds))
    if clip_length <= 0:
        raise AudioFeatureError(f"max_seconds must be positive, got {max_seconds}.")
    clips = [samples[start : start + clip_length] for start in range(0, len(samples), clip_length)]
    min_samples = int(math.ceil(min_samples * rate / SAMPLE_RATE))
    return [clip for clip in clips if len(clip) >= min_samples]
