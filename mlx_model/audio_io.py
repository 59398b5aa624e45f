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

from .file_errors import error_detail, is_access_error, unreadable_reason

TARGET_RATE = 16_000
DEFAULT_MAX_SECONDS = 600.0
# Decoded audio shorter than the declared length by more than max(0.5 s, 5 %) is reported as damaged.
_SHORTFALL_SECONDS = 0.5
_SHORTFALL_FRACTION = 0.05
# Declared lengths of compressed streams are estimates; refuse up front only when clearly over the limit.
_DECLARED_SLACK_SECONDS = 1.0

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


def _format_seconds(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _open(source: AudioSource, label: str):
    """Open with FFmpeg after the checks FFmpeg does not do; returns the container."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        size, head, handle = len(data), data[:12], io.BytesIO(data)
    else:
        path = os.fspath(source)
        try:
            size = os.stat(path).st_size
            with open(path, "rb") as file:
                head = file.read(12)
        except FileNotFoundError as error:
            raise AudioLoadError(f"{label}: no such file; check the path.") from error
        except OSError as error:
            raise AudioLoadError(f"{label} {unreadable_reason(error)}") from error
        handle = path
    if size == 0:
        raise AudioLoadError(
            f"{label} is empty (0 bytes): it is damaged or was not fully written. "
            "Re-download or re-export it."
        )
    _check_riff_size(head, size, label)
    try:
        return av.open(handle, mode="r")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as error:
        if is_access_error(error):
            raise AudioLoadError(f"{label} {unreadable_reason(error)}") from error
        raise AudioLoadError(
            f"{label} cannot be read as audio ({error_detail(error)}): it is damaged, cut short or not "
            "audio. "
            "Use wav, flac, mp3, m4a/aac or ogg, or re-export it from an audio editor."
        ) from error


def _check_riff_size(head: bytes, size: int, label: str) -> None:
    """A WAV whose RIFF header promises more bytes than the file holds was cut short.

    FFmpeg silently decodes what is there, so this is checked by hand. Streaming writers put 0 or
    0xFFFFFFFF in the size field; those are not checked.
    """
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return
    riff_size = int.from_bytes(head[4:8], "little")
    if riff_size in (0, 0xFFFFFFFF) or riff_size + 8 <= size + 1:
        return
    raise AudioLoadError(
        f"{label} is truncated: its header declares {riff_size + 8} bytes but the file has {size}. "
        "Re-download or re-export the file."
    )


def _declared_seconds(container, stream) -> Optional[float]:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _too_long_message(label: str, declared: Optional[float], max_seconds: float) -> str:
    length = f"is {_format_seconds(declared)} long, over" if declared is not None else "is longer than"
    return (
        f"{label} {length} the limit of {_format_seconds(max_seconds)}. Trim the recording, "
        "or load it with truncate=True to use only the beginning."
    )


_INTEGER_SCALE = {
    np.dtype(np.int16): 32768.0, np.dtype(np.int32): 2147483648.0, np.dtype(np.int64): 9223372036854775808.0,
    np.dtype(np.int8): 128.0,
}


def _to_float(data: np.ndarray) -> np.ndarray:
    """Integer PCM to float32 in [-1, 1); float samples unchanged."""
    if data.dtype == np.uint8:
        return (data.astype(np.float32) - 128.0) / 128.0
    if data.dtype in _INTEGER_SCALE:
        return (data.astype(np.float64) / _INTEGER_SCALE[data.dtype]).astype(np.float32)
    if np.issubdtype(data.dtype, np.floating):
        return data.astype(np.float32, copy=False)
    raise TypeError(f"unsupported sample type {data.dtype}")


def _mono_frames(container, stream) -> Iterator[tuple[int, np.ndarray]]:
    """Decoded frames as (rate, mono float32 samples), channels averaged."""
    for packet in container.demux(stream):
        for frame in packet.decode():
            data = frame.to_ndarray()
            channels = len(frame.layout.channels) or 1
            if not frame.format.is_planar:  # packed: [1, samples * channels], interleaved
                data = data.reshape(-1, channels).T
            yield frame.sample_rate, _to_float(data).mean(axis=0, dtype=np.float32)


def _decode_to_target_rate(container, stream, label: str, max_seconds: float, truncate: bool):
    """Stream-decode to 16 kHz mono; returns (samples, seconds decoded, whether cut at max_seconds, rate)."""
    pieces, resampler, rate = [], None, None
    decoded_seconds, truncated = 0.0, False
    try:
        for frame_rate, mono in _mono_frames(container, stream):
            if rate != frame_rate:
                if resampler is not None:  # the stream changed rate: flush the old resampler
                    pieces.append(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
                rate = frame_rate
                resampler = soxr.ResampleStream(rate, TARGET_RATE, 1, dtype="float32", quality="HQ")
            room = int(round((max_seconds - decoded_seconds) * rate))
            if room < mono.size:
                if not truncate:
                    raise AudioLoadError(_too_long_message(label, None, max_seconds))
                mono, truncated = mono[: max(room, 0)], True
            decoded_seconds += mono.size / rate
            pieces.append(resampler.resample_chunk(mono))
            if truncated:
                break
    except av.error.FFmpegError as error:
        raise AudioLoadError(
            f"{label} is damaged: decoding failed after {decoded_seconds:.1f} s ({error_detail(error)}). "
            "Re-download or re-export the file."
        ) from error
    if resampler is not None:
        pieces.append(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    samples = np.concatenate(pieces).astype(np.float32, copy=False) if pieces else np.zeros(0, np.float32)
    return samples, decoded_seconds, truncated, rate


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
    The format is recognised from the content, not the file name. `name` labels the source in messages.
    """
    label = _source_name(source, name)
    with _open(source, label) as container:
        audio_streams = [s for s in container.streams if s.type == "audio"]
        if not audio_streams:
            raise AudioLoadError(
                f"{label} has no audio track (FFmpeg reads it as {container.format.name}); "
                "choose an audio file."
            )
        stream = audio_streams[0]
        declared = _declared_seconds(container, stream)
        if declared is not None and declared > max_seconds + _DECLARED_SLACK_SECONDS and not truncate:
            raise AudioLoadError(_too_long_message(label, declared, max_seconds))
        samples, decoded_seconds, truncated, rate = _decode_to_target_rate(
            container, stream, label, max_seconds, truncate
        )
        info = AudioInfo(
            source=label,
            container=container.format.name,
            codec=stream.codec_context.name,
            original_rate=int(stream.codec_context.sample_rate or rate or 0),
            original_channels=int(stream.codec_context.channels or 0),
            duration_seconds=samples.size / TARGET_RATE,
            truncated=truncated,
        )
    if samples.size == 0:
        raise AudioLoadError(
            f"{label} contains no audio samples: it is empty or damaged. Re-export or re-download it."
        )
    if not np.all(np.isfinite(samples)):
        raise AudioLoadError(f"{label} contains invalid (NaN or infinite) samples; re-export the file.")
    expected = None if declared is None else min(declared, max_seconds)
    allowance = 0.0 if expected is None else max(_SHORTFALL_SECONDS, _SHORTFALL_FRACTION * expected)
    if expected is not None and decoded_seconds < expected - allowance:
        raise AudioLoadError(
            f"{label} is truncated or damaged: its header declares {_format_seconds(declared)} but only "
            f"{_format_seconds(decoded_seconds)} could be decoded. Re-download or re-export the file."
        )
    return samples, info


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
    source_dtype = data.dtype
    try:
        data = _to_float(data)
    except TypeError as error:
        raise AudioLoadError(f"{label}: {error}; deliver float32 or int16 samples.") from error
    if data.ndim == 1:
        if data.size % channels:
            raise AudioLoadError(f"{label}: {data.size} samples do not split into {channels} channels.")
        data = data.reshape(-1, channels)
    if data.ndim != 2 or data.shape[1] != channels:
        raise AudioLoadError(
            f"{label}: expected {channels} channels as [frames, {channels}] samples, got shape {data.shape}."
        )
    if data.shape[0] == 0:
        raise AudioLoadError(f"{label} is empty: nothing was captured. Check the input device and record again.")
    if not np.all(np.isfinite(data)):
        raise AudioLoadError(f"{label} contains invalid (NaN or infinite) samples; record again.")
    samples = resample(to_mono(data), rate)
    info = AudioInfo(
        source=label,
        container="raw",
        codec=str(source_dtype),
        original_rate=int(rate),
        original_channels=int(channels),
        duration_seconds=samples.size / TARGET_RATE,
    )
    return samples, info
