"""Video input for Gemma 4: decode with PyAV, sample frames uniformly, preprocess them as images.

Follows transformers 5.23: `default_sample_indices_fn` (video_utils.py:317, indices = arange(n) * total // n),
`read_video_pyav` (rgb24 frames, fps = stream.average_rate, timestamps = index / fps), `Gemma4VideoProcessor`
(70 soft tokens per frame, same resize as images) and the prompt of processing_gemma4.py:203
(`"mm:ss <|image>" + "<|video|>" * n + "<image|>"` per frame, joined by spaces).
Differences, on purpose: a clip with fewer frames than requested gives all its frames (transformers raises);
long videos are read by seeking to each sampled frame instead of decoding everything, so time and memory stay
bounded; only one full-size frame is held at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np

from .file_errors import error_detail, is_access_error, unreadable_reason
from .image_processor import BOI_TOKEN, EOI_TOKEN, VIDEO_TOKEN, ImageProcessor

DEFAULT_NUM_FRAMES = 32
DEFAULT_VIDEO_SOFT_TOKENS = 70
DEFAULT_FPS = 24.0  # processing_gemma4.py:208 fallback when a video reports no frame rate
# Clips up to this many frames are decoded front to back (as transformers does); longer ones are sought.
SEQUENTIAL_DECODE_MAX_FRAMES = 1500
# When seeking, a sample less than this far ahead is reached by decoding on (cheaper than a seek).
SEEK_AHEAD_SECONDS = 2.0
VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".webm", ".mkv", ".gif", ".avi")
# Still images by their first bytes (GIF is left out: an animated GIF is a video here).
STILL_IMAGE_MAGIC = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"BM", "BMP"),
                     (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"WEBP", "WebP"), (b"ftypheic", "HEIC"),
                     (b"ftypmif1", "HEIC"))
# FFmpeg demuxers that read one picture as a one-frame "video".
STILL_IMAGE_FORMATS = {"image2", "png_pipe", "jpeg_pipe", "bmp_pipe", "tiff_pipe", "webp_pipe", "jpegls_pipe",
                       "j2k_pipe", "pgm_pipe", "ppm_pipe", "psd_pipe", "qoi_pipe", "svg_pipe", "dpx_pipe",
                       "exr_pipe", "pam_pipe", "pbm_pipe", "pcx_pipe", "sgi_pipe", "sunrast_pipe", "xpm_pipe"}


class VideoLoadError(ValueError):
    """A video cannot be used; the message names the file and says what to do."""


@dataclass
class VideoFrames:
    """Sampled frames of one video: RGB uint8 arrays [H, W, 3], their indices and times in seconds."""

    frames: list[np.ndarray]
    frame_indices: list[int]
    timestamps: list[float]
    fps: float
    total_frames: int
    duration: float


@dataclass
class VideoInputs:
    """A video ready for the vision tower (transformers' `pixel_values_videos` / `video_position_ids`)."""

    pixel_values: np.ndarray  # [frames, rows, 768] float32 (rows of 6912 for Gemma 4 12B)
    position_ids: np.ndarray  # [frames, max_patches, 2] int32, (-1, -1) padding
    num_soft_tokens_per_frame: int
    frame_indices: list[int]
    timestamps: list[float]
    fps: float
    total_frames: int
    duration: float
    prompt: str = field(default="")  # the expansion of this video's `<|video|>` placeholder


def sample_indices(total_frames: int, num_frames: int) -> np.ndarray:
    """Uniform frame indices `arange(n) * total // n` (video_utils.py:353); n capped at the frame count."""
    if total_frames <= 0:
        raise ValueError("a video with no frames cannot be sampled")
    count = max(1, min(num_frames, total_frames))
    return np.arange(count, dtype=np.int64) * total_frames // count


def format_timestamp(seconds: float) -> str:
    """`mm:ss` exactly as processing_gemma4.py:212 (minutes keep growing past 99)."""
    return f"{int(seconds // 60):02d}:{int(seconds % 60):02d}"


def video_placeholder(num_soft_tokens_per_frame: int, timestamps: list[float]) -> str:
    """What one `<|video|>` in a prompt becomes: per frame `"mm:ss <|image>" + "<|video|>"*n + "<image|>"`,
    joined by single spaces (processing_gemma4.py:213)."""
    body = VIDEO_TOKEN * num_soft_tokens_per_frame
    return " ".join(f"{format_timestamp(t)} {BOI_TOKEN}{body}{EOI_TOKEN}" for t in timestamps)


def _av():
    try:
        import av
    except ImportError as exc:  # pragma: no cover - av is a runtime dependency
        raise VideoLoadError("Video support needs PyAV: pip install av") from exc
    return av


def _not_a_video(head: bytes) -> Optional[str]:
    """What a file whose first bytes are `head` is instead of a video (FFmpeg opens these as one-frame
    "videos" or finds a JPEG inside a PDF), or None."""
    if head.startswith(b"%PDF-"):
        return "it is a PDF document, not a video. Attach it as a document instead."
    for magic, kind in STILL_IMAGE_MAGIC:
        if head.startswith(magic) or (kind == "WebP" and head[:4] == b"RIFF" and head[8:12] == magic) \
                or (kind == "HEIC" and head[4:12] == magic):
            return f"it is a still image ({kind}), not a video. Attach it as an image instead."
    return None


def _open_container(file: Path, *, want_video: bool = False):
    """Open any media container, or raise VideoLoadError naming the file (`want_video`: refuse documents
    and still images by their content first)."""
    av = _av()
    try:
        size = file.stat().st_size
        with open(file, "rb") as handle:
            head = handle.read(16)
    except FileNotFoundError as exc:
        raise VideoLoadError(f"Cannot open video '{file}': the file does not exist. Check the path.") from exc
    except OSError as exc:
        raise VideoLoadError(f"{file} {unreadable_reason(exc)}") from exc
    if size == 0:
        raise VideoLoadError(
            f"Cannot open video '{file}': the file is empty (0 bytes). Attach the video again."
        )
    instead = _not_a_video(head) if want_video else None
    if instead:
        raise VideoLoadError(f"Cannot open video '{file}': {instead}")
    try:
        return av.open(str(file), mode="r", metadata_errors="ignore")
    except (av.FFmpegError, OSError, UnicodeDecodeError, ValueError) as exc:
        if is_access_error(exc):
            raise VideoLoadError(f"{file} {unreadable_reason(exc)}") from exc
        raise VideoLoadError(
            f"Cannot open video '{file}': it is not a video this app can read, or it is truncated or corrupt "
            f"({error_detail(exc)}). Supported: MP4, MOV, M4V, WebM, MKV, GIF. Re-export or re-download it "
            "and "
            "try again."
        ) from exc


def _open_video(file: Path):
    """Open a container that has a video track (not a still image FFmpeg reads as one frame)."""
    container = _open_container(file, want_video=True)
    if not container.streams.video:
        container.close()
        raise VideoLoadError(
            f"Cannot open video '{file}': it has no video track. Attach it as audio instead."
        )
    if container.format.name in STILL_IMAGE_FORMATS:
        name = container.format.name
        container.close()
        raise VideoLoadError(f"Cannot open video '{file}': it is a still image ({name}), not a video. "
                             "Attach it as an image instead.")
    return container


def _stream_facts(container, file: Path) -> tuple[float, int, float, bool]:
    """(fps, total frames, duration in s, exact count?) as transformers' pyav reader reads them, with
    fallbacks where the container stores no frame count (WebM, MKV)."""
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else DEFAULT_FPS
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000
    else:
        duration = 0.0
    if stream.frames and stream.frames > 0:
        return fps, int(stream.frames), stream.frames / fps, True
    estimate = int(math.floor(duration * fps + 0.5))
    if estimate <= SEQUENTIAL_DECODE_MAX_FRAMES:  # short or unknown: an exact count by demuxing only
        count = _count_packets(container, file)
        return fps, count, count / fps, True
    return fps, estimate, duration, False


def _count_packets(container, file: Path) -> int:
    av = _av()
    stream = container.streams.video[0]
    count = 0
    try:
        for packet in container.demux(stream):
            if packet.size:
                count += 1
        container.seek(0)
    except av.FFmpegError as exc:
        raise VideoLoadError(
            f"Cannot read video '{file}': the file is truncated or corrupt ({error_detail(exc)}). "
            f"Re-export or re-download it."
        ) from exc
    if count == 0:
        raise VideoLoadError(f"Cannot read video '{file}': its video track has no frames.")
    return count


def _decode_sequential(container, indices: np.ndarray, file: Path) -> Iterator[tuple[int, object]]:
    """Yield (index, frame) for the wanted indices, decoding front to back (video_utils.py:517)."""
    av = _av()
    wanted = set(int(i) for i in indices)
    last = int(indices[-1])
    found = 0
    try:
        for i, frame in enumerate(container.decode(video=0)):
            if i > last:
                break
            if i in wanted:
                found += 1
                yield i, frame
    except av.FFmpegError as exc:
        raise VideoLoadError(
            f"Cannot decode video '{file}': the file is truncated or corrupt ({error_detail(exc)}). "
            f"Re-export or re-download it."
        ) from exc
    if found < len(wanted):
        raise VideoLoadError(
            f"Cannot decode video '{file}': it ends after {found} of the {len(wanted)} sampled frames, "
            f"so it is probably truncated. Re-export or re-download it."
        )


def _decode_by_seeking(container, indices: np.ndarray, fps: float, file: Path,
                       seek_ahead_seconds: float = SEEK_AHEAD_SECONDS) -> Iterator[tuple[int, object]]:
    """Yield (index, frame) seeking to each sampled time: about one GOP decoded per sample.

    Targets less than `seek_ahead_seconds` ahead are reached by decoding on; if a seek lands no later than
    where decoding already was (a video with few keyframes), seeking is given up and the rest is decoded
    front to back.
    """
    av = _av()
    stream = container.streams.video[0]
    time_base = float(stream.time_base)
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    half_frame = 0.5 / fps
    decoder, current, seeking = None, None, True  # current: (time, frame) last decoded
    try:
        for index in indices:
            target = start + int(index) / fps
            just_sought_from = None
            if decoder is None or (seeking and target - current[0] > seek_ahead_seconds):
                just_sought_from = current[0] if current is not None else None
                container.seek(int(target / time_base), stream=stream, backward=True, any_frame=False)
                decoder, current = container.decode(stream), None
            while current is None or current[0] < target - half_frame:
                frame = next(decoder, None)
                if frame is None:  # past the end (an estimated frame count): keep the last frame decoded
                    break
                previous = current[0] if current is not None else start - 1 / fps
                frame_time = frame.time if frame.time is not None else previous + 1 / fps
                if just_sought_from is not None and frame_time <= just_sought_from:
                    seeking = False  # the seek went back to an old keyframe: decode on from here
                just_sought_from = None
                current = (frame_time, frame)
            if current is None:
                raise VideoLoadError(
                    f"Cannot decode video '{file}': no frame could be read near {target:.1f} s."
                )
            yield int(index), current[1]
    except av.FFmpegError as exc:
        raise VideoLoadError(
            f"Cannot decode video '{file}': the file is truncated or corrupt ({error_detail(exc)}). "
            f"Re-export or re-download it."
        ) from exc


def iter_sampled_frames(path: Union[str, Path], num_frames: int = DEFAULT_NUM_FRAMES,
                        sequential_max_frames: int = SEQUENTIAL_DECODE_MAX_FRAMES,
                        seek_ahead_seconds: float = SEEK_AHEAD_SECONDS
                        ) -> tuple[dict, Iterator[tuple[int, float, np.ndarray]]]:
    """Open a video and return (facts, iterator of (frame index, timestamp s, RGB uint8 [H, W, 3])).

    `facts` holds fps, total_frames, duration and indices. Frames are produced one at a time, so a caller that
    processes each before taking the next holds a single full-size frame.
    """
    file = Path(path)
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    container = _open_video(file)
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    try:
        fps, total, duration, exact = _stream_facts(container, file)
    except Exception:
        container.close()
        raise
    indices = sample_indices(total, num_frames)
    facts = dict(fps=fps, total_frames=total, duration=duration, frame_indices=[int(i) for i in indices])

    def frames() -> Iterator[tuple[int, float, np.ndarray]]:
        try:
            if exact and total <= sequential_max_frames:
                source = _decode_sequential(container, indices, file)
            else:
                source = _decode_by_seeking(container, indices, fps, file, seek_ahead_seconds)
            for index, frame in source:
                yield index, index / fps, frame.to_ndarray(format="rgb24")
        finally:
            container.close()

    return facts, frames()


def check_video(path: Union[str, Path]) -> dict:
    """What attaching a video runs: the same opening, content and frame-count checks as `load_video`, and the
    first sampled frame decoded; returns fps, total_frames, duration and frame_indices. Raises
    VideoLoadError, so a file the model could not read is refused when attached, not when sent."""
    facts, frames = iter_sampled_frames(path, 1)
    try:
        next(frames, None)
    finally:
        frames.close()
    return facts


def read_video(path: Union[str, Path], num_frames: int = DEFAULT_NUM_FRAMES) -> VideoFrames:
    """Sampled RGB frames of a video at full size (for thumbnails and tests; `load_video` for the model)."""
    facts, frames = iter_sampled_frames(path, num_frames)
    collected = list(frames)
    return VideoFrames(
        frames=[f for _, _, f in collected], frame_indices=[i for i, _, _ in collected],
        timestamps=[t for _, t, _ in collected], fps=facts["fps"], total_frames=facts["total_frames"],
        duration=facts["duration"],
    )


def preprocess_frame(frame: np.ndarray, processor: ImageProcessor, max_soft_tokens: int
                     ) -> tuple[np.ndarray, np.ndarray, int]:
    """One RGB frame -> (patches, positions, soft tokens) as `Gemma4VideoProcessor` (and Gemma 4 12B's
    `Gemma4UnifiedVideoProcessor`, with `processor.model_patches`) does it: the image resize, then x / 255
    (its fused rescale+normalize divides, video_processing_gemma4.py:261)."""
    from .image_processor import resize_bicubic_antialias

    target_h, target_w = processor.target_size(frame.shape[0], frame.shape[1], max_soft_tokens)
    resized = resize_bicubic_antialias(np.ascontiguousarray(frame), target_h, target_w)
    return processor.patch_rows(resized.astype(np.float32) / np.float32(255.0), max_soft_tokens)


def load_video(path: Union[str, Path], num_frames: int = DEFAULT_NUM_FRAMES,
               max_soft_tokens: int = DEFAULT_VIDEO_SOFT_TOKENS,
               processor: Optional[ImageProcessor] = None) -> VideoInputs:
    """Decode, sample and preprocess a video for the vision tower; `prompt` is its placeholder expansion."""
    processor = processor or ImageProcessor(max_soft_tokens=max_soft_tokens)
    facts, frames = iter_sampled_frames(path, num_frames)
    pixel_values, position_ids, tokens, indices, times = [], [], [], [], []
    for index, timestamp, frame in frames:
        values, positions, count = preprocess_frame(frame, processor, max_soft_tokens)
        pixel_values.append(values)
        position_ids.append(positions)
        tokens.append(count)
        indices.append(index)
        times.append(timestamp)
    per_frame = tokens[0]
    return VideoInputs(
        pixel_values=np.stack(pixel_values), position_ids=np.stack(position_ids),
        num_soft_tokens_per_frame=per_frame, frame_indices=indices, timestamps=times, fps=facts["fps"],
        total_frames=facts["total_frames"], duration=facts["duration"],
        prompt=video_placeholder(per_frame, times),
    )


def extract_audio(path: Union[str, Path], max_seconds: Optional[float] = 30.0
                  ) -> Optional[tuple[np.ndarray, int]]:
    """The first sound track as float32 mono samples (channels averaged) and its sample rate, or None when the
    file has no sound. Reads at most the first `max_seconds` (None: all of it; memory grows with length,
    ~11 MB per minute at 48 kHz). Resampling to 16 kHz is left to the audio feature extractor."""
    av = _av()
    file = Path(path)
    container = _open_container(file)
    try:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate or stream.rate
        if not rate:
            raise VideoLoadError(f"Cannot read the sound of '{file}': its audio track has no sample rate.")
        limit = None if max_seconds is None else int(round(max_seconds * rate))
        resampler = av.AudioResampler(format="fltp", rate=rate)  # any sample format -> planar float
        chunks, have = [], 0
        for frame in container.decode(stream):
            for converted in resampler.resample(frame):
                planar = converted.to_ndarray().reshape(len(converted.layout.channels), -1)
                chunks.append(planar.mean(axis=0, dtype=np.float32))
                have += planar.shape[1]
            if limit is not None and have >= limit:
                break
        samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
        return (samples if limit is None else samples[:limit]), int(rate)
    except av.FFmpegError as exc:
        raise VideoLoadError(
            f"Cannot read the sound of '{file}': the file is truncated or corrupt ({error_detail(exc)}). "
            "Re-export it."
        ) from exc
    finally:
        container.close()
