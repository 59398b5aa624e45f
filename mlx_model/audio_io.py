"""Audio in: decode files (wav, flac, mp3, m4a/aac, ogg, anything FFmpeg reads) or microphone buffers
to mono float32 samples at 16 kHz, the rate of Gemma 4's audio features.

Decoding streams packet by packet through PyAV (FFmpeg) and resamples with soxr as it goes, so only
the 16 kHz mono result is held in memory. Audio longer than `max_seconds` (default 10 minutes, 20 clips
of 30 s) is refused before decoding when the container declares its length, or as soon as decoding
passes the limit; `truncate=True` keeps the first `max_seconds` instead.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Union

import av
import numpy as np
import soxr

TARGET_RATE = 16_000
DEFAULT_MAX_SECONDS = 600.0
# Decoded audio shorter than the declared length by more than this is reported as truncated.
_TRUNCATION_TOLERANCE_SECONDS = 0.5
# Containers whose declared length is exact (sample counts in the header), so a shortfall means damage.
_EXACT_LENGTH_FORMATS = {"wav", "flac", "aiff", "w64"}

AudioSource = Union[str, os.PathLike, bytes, bytearray, memoryview]


class AudioLoadError(ValueError):
    """An audio file or buffer cannot be used; the message names it and says what to do."""


@dataclass(frozen=True)
class AudioInfo:
    """Where samples came from and what they were before conversion to 16 kHz mono."""

    source: str
    container: str
    codec: str
    original_rate: int
    original_channels: int
    duration_seconds: float
    truncated: bool = False


def resample(samples: np.ndarray, rate: int, target_rate: int = TARGET_RATE) -> np.ndarray:
    """Band-limited resampling of mono float samples with soxr (high quality)."""
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    if rate == target_rate or samples.size == 0:
        return samples
    return soxr.resample(samples, rate, target_rate, quality="HQ").astype(np.float32, copy=False)


def to_mono(samples: np.ndarray) -> np.ndarray:
    """[frames, channels] -> [frames] by averaging the channels; 1-D input is returned as is."""
    samples = np.asarray(samples, dtype=np.float32)
    return samples if samples.ndim == 1 else samples.mean(axis=1, dtype=np.float32)


def _source_name(source: AudioSource, name: Optional[str]) -> str:
    if name:
        return name
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes of audio>"
    return os.fspath(source)


def _open(source: AudioSource, label: str):
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise AudioLoadError(f"{label} is empty (0 bytes); record or choose the audio again.")
        handle = io.BytesIO(bytes(source))
    else:
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise AudioLoadError(f"{label}: no such file; check the path.")
        if os.path.getsize(path) == 0:
            raise AudioLoadError(f"{label} is empty (0 bytes); the file is damaged or was not fully written.")
        handle = path
    try:
        return av.open(handle, mode="r")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as error:
        raise AudioLoadError(
            f"{label} is not an audio file FFmpeg can read ({error}). Use wav, flac, mp3, m4a/aac or ogg, "
            "or re-export it from an audio editor."
        ) from error


def _declared_seconds(container, stream) -> Optional[float]:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _float_frames(container, stream) -> Iterator[np.ndarray]:
    """Decoded frames as planar float32 [channels, samples] at the stream's rate."""
    converter = None
    for packet in container.demux(stream):
        for frame in packet.decode():
            if converter is None or frame.sample_rate != converter.rate:
                converter = av.AudioResampler(format="fltp", layout=frame.layout.name, rate=frame.sample_rate)
            for converted in converter.resample(frame):
                yield converted.sample_rate, converted.to_ndarray().reshape(len(converted.layout.channels), -1)
    if converter is not None:
        for converted in converter.resample(None):
            yield converted.sample_rate, converted.to_ndarray().reshape(len(converted.layout.channels), -1)


def load_audio(
    source: AudioSource,
    *,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    truncate: bool = False,
    name: Optional[str] = None,
) -> tuple[np.ndarray, AudioInfo]:
    """Decode an audio file (path) or encoded bytes to mono float32 samples at 16 kHz.

    Raises AudioLoadError for missing, empty, damaged, truncated or non-audio input, and for audio
    longer than `max_seconds` unless `truncate=True` (then only the first `max_seconds` are decoded).
    `name` labels the source in messages (defaults to the path).
    """
    label = _source_name(source, name)
    container = _open(source, label)
    with container:
        audio_streams = [s for s in container.streams if s.type == "audio"]
        if not audio_streams:
            raise AudioLoadError(f"{label} has no audio track ({container.format.name}); choose an audio file.")
        stream = audio_streams[0]
        declared = _declared_seconds(container, stream)
        if declared is not None and declared > max_seconds and not truncate:
            raise AudioLoadError(_too_long_message(label, declared, max_seconds))
        original_rate = stream.codec_context.sample_rate or 0
        original_channels = stream.codec_context.channels or 0
        pieces, resampler, rate = [], None, None
        decoded_seconds, truncated = 0.0, False
        try:
            for frame_rate, planes in _float_frames(container, stream):
                if rate != frame_rate:
                    if resampler is not None:  # the stream changed rate: flush the old resampler
                        pieces.append(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
                    rate = frame_rate
                    resampler = soxr.ResampleStream(rate, TARGET_RATE, 1, dtype="float32", quality="HQ")
                mono = planes.mean(axis=0, dtype=np.float32)
                keep = int(round((max_seconds - decoded_seconds) * rate))
                if keep < mono.size:
                    if not truncate:
                        raise AudioLoadError(_too_long_message(label, None, max_seconds))
                    mono, truncated = mono[: max(keep, 0)], True
                decoded_seconds += mono.size / rate
                pieces.append(resampler.resample_chunk(mono))
                if truncated:
                    break
        except av.error.FFmpegError as error:
            raise AudioLoadError(
                f"{label} is damaged: decoding failed after {decoded_seconds:.1f} s ({error}). "
                "Re-download or re-export the file."
            ) from error
        if resampler is not None:
            pieces.append(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
        samples = np.concatenate(pieces).astype(np.float32, copy=False) if pieces else np.zeros(0, np.float32)
        container_name = container.format.name
        codec = stream.codec_context.name

    if samples.size == 0:
        raise AudioLoadError(f"{label} contains no audio samples; the file is empty or damaged.")
    if not np.all(np.isfinite(samples)):
        raise AudioLoadError(f"{label} contains invalid (NaN or infinite) samples; re-export the file.")
    exact = any(part in _EXACT_LENGTH_FORMATS for part in container_name.split(","))
    if exact and declared is not None and not truncated:
        if decoded_seconds < min(declared, max_seconds) - _TRUNCATION_TOLERANCE_SECONDS:
            raise AudioLoadError(
                f"{label} is truncated: its header declares {declared:.1f} s but only {decoded_seconds:.1f} s "
                "could be decoded. Re-download or re-export the file."
            )
    info = AudioInfo(
        source=label,
        container=container_name,
        codec=codec,
        original_rate=int(original_rate or rate or 0),
        original_channels=int(original_channels),
        duration_seconds=samples.size / TARGET_RATE,
        truncated=truncated,
    )
    return samples, info


def _too_long_message(label: str, declared: Optional[float], max_seconds: float) -> str:
    length = f" is {declared / 60:.1f} min long;" if declared is not None else " is longer than"
    return (
        f"{label}{length} the limit is {max_seconds / 60:.1f} min. Trim the recording, "
        "or load it with truncate=True to use only the beginning."
    )


_INTEGER_SCALE = {np.dtype(np.int16): 32768.0, np.dtype(np.int32): 2147483648.0, np.dtype(np.int8): 128.0}


def from_microphone_buffer(
    buffer: Union[np.ndarray, bytes, bytearray, memoryview, Sequence[np.ndarray]],
    rate: int,
    channels: int,
    *,
    dtype: str = "float32",
) -> tuple[np.ndarray, AudioInfo]:
    """Convert captured microphone audio to mono float32 at 16 kHz.

    `buffer` is what sounddevice delivers: an array [frames, channels] (or 1-D interleaved), a list of
    such chunks, or raw interleaved bytes of `dtype` (float32, int16, int32, int8 or uint8).
    """
    label = "microphone recording"
    if rate <= 0 or channels <= 0:
        raise AudioLoadError(f"{label}: invalid format (rate {rate} Hz, {channels} channels).")
    if isinstance(buffer, (bytes, bytearray, memoryview)):
        itemsize = np.dtype(dtype).itemsize
        if len(buffer) % (itemsize * channels):
            raise AudioLoadError(
                f"{label}: {len(buffer)} bytes is not a whole number of {channels}-channel {dtype} frames."
            )
        data = np.frombuffer(bytes(buffer), dtype=dtype)
    elif isinstance(buffer, np.ndarray):
        data = buffer
    else:
        chunks = [np.asarray(chunk) for chunk in buffer]
        data = np.concatenate(chunks) if chunks else np.zeros((0, channels), np.float32)
    if data.dtype == np.uint8:
        data = (data.astype(np.float32) - 128.0) / 128.0
    elif data.dtype in _INTEGER_SCALE:
        data = data.astype(np.float32) / _INTEGER_SCALE[data.dtype]
    elif np.issubdtype(data.dtype, np.floating):
        data = data.astype(np.float32, copy=False)
    else:
        raise AudioLoadError(f"{label}: unsupported sample type {data.dtype}.")
    if data.ndim == 1:
        if data.size % channels:
            raise AudioLoadError(f"{label}: {data.size} samples do not split into {channels} channels.")
        data = data.reshape(-1, channels)
    if data.ndim != 2 or data.shape[1] != channels:
        raise AudioLoadError(f"{label}: expected [frames, {channels}] samples, got shape {data.shape}.")
    if not np.all(np.isfinite(data)):
        raise AudioLoadError(f"{label} contains invalid (NaN or infinite) samples; record again.")
    samples = resample(to_mono(data), rate)
    info = AudioInfo(
        source=label,
        container="raw",
        codec=str(np.dtype(dtype) if isinstance(buffer, (bytes, bytearray, memoryview)) else data.dtype),
        original_rate=int(rate),
        original_channels=int(channels),
        duration_seconds=samples.size / TARGET_RATE,
    )
    return samples, info
