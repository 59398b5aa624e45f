"""Video decoding, frame sampling, preprocessing and prompts against transformers (pyav backend); bad files.

Clips are made with PyAV in a temporary folder: H.264 MP4 (with an AAC sine track), MPEG-4 MOV, VP9 WebM
(with Opus; WebM stores no frame count), GIF, and a 2000-frame MP4 that is read by seeking.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers.models.gemma4 import image_processing_pil_gemma4 as hf_pil
from transformers.models.gemma4.processing_gemma4 import Gemma4Processor, get_aspect_ratio_preserving_size
from transformers.video_utils import VideoMetadata, default_sample_indices_fn, load_video as hf_load_video

from mlx_model.video import (
    VideoLoadError, extract_audio, format_timestamp, iter_sampled_frames, load_video, read_video,
    video_placeholder,
)

CLIPS = {  # name: (codec, container, frames, fps, (width, height), pixel format, gop, audio codec)
    "clip.mp4": ("libx264", "mp4", 60, 12, (96, 64), "yuv420p", 5, "aac"),
    "clip.mov": ("mpeg4", "mov", 45, 15, (64, 96), "yuv420p", 10, None),
    "clip.webm": ("libvpx-vp9", "webm", 40, 10, (80, 48), "yuv420p", 8, "libopus"),
    "clip.gif": ("gif", "gif", 30, 10, (64, 48), "rgb8", None, None),
    "long.mp4": ("libx264", "mp4", 2000, 100, (32, 32), "yuv420p", 50, None),
}
AUDIO_RATE, TONE_HZ = 48_000, 440.0


def _frame(i: int, width: int, height: int) -> np.ndarray:
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[..., 0] = (i * 7) % 256
    image[:, : (i % width), 1] = 200  # a bar that grows frame by frame
    image[(i % height):, :, 2] = 120
    return image


def _make_clip(path, codec, container_format, frames, fps, size, pix_fmt, gop, audio_codec) -> None:
    container = av.open(str(path), "w", format=container_format)
    video = container.add_stream(codec, rate=fps)
    video.width, video.height = size
    video.pix_fmt = pix_fmt
    if gop:
        video.codec_context.gop_size = gop
    audio = None
    if audio_codec:
        audio = container.add_stream(audio_codec, rate=AUDIO_RATE)
        audio.layout = "stereo"
    for i in range(frames):
        for packet in video.encode(av.VideoFrame.from_ndarray(_frame(i, *size), format="rgb24")):
            container.mux(packet)
    for packet in video.encode():
        container.mux(packet)
    if audio is not None:
        total = int(frames / fps * AUDIO_RATE)
        wave = (0.5 * np.sin(2 * np.pi * TONE_HZ * np.arange(total) / AUDIO_RATE)).astype(np.float32)
        step = audio.codec_context.frame_size or 960
        for start in range(0, total, step):
            chunk = wave[start:start + step]
            frame = av.AudioFrame.from_ndarray(np.stack([chunk, 0.5 * chunk]), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = AUDIO_RATE, start
            for packet in audio.encode(frame):
                container.mux(packet)
        for packet in audio.encode():
            container.mux(packet)
    container.close()


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    for name, spec in CLIPS.items():
        _make_clip(folder / name, *spec)
    return folder


def _decoded_count(path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def _reference(path, num_frames: int):
    """transformers' pyav reader + default sampler (WebM reports 0 frames there: its decoded count is
    given)."""
    with av.open(str(path)) as container:
        reported = container.streams.video[0].frames

    def sampler(metadata, **kwargs):
        if not reported:
            metadata.total_num_frames = _decoded_count(path)
        return default_sample_indices_fn(metadata, num_frames=num_frames)

    return hf_load_video(str(path), backend="pyav", sample_indices_fn=sampler)


@pytest.mark.parametrize("name", ["clip.mp4", "clip.mov", "clip.webm", "clip.gif", "long.mp4"])
def test_sampled_frames_and_timestamps_match_transformers(clips, name):
    frames, metadata = _reference(clips / name, 8)
    ours = read_video(clips / name, num_frames=8)
    assert ours.frame_indices == [int(i) for i in metadata.frames_indices]
    assert ours.timestamps == list(metadata.timestamps)
    assert ours.fps == metadata.fps
    np.testing.assert_array_equal(np.stack(ours.frames), frames)
    # seeking to each frame (the path for long videos) picks the very same frames
    _, sought = iter_sampled_frames(clips / name, 8, sequential_max_frames=0, seek_ahead_seconds=0.0)
    sought = list(sought)
    assert [index for index, _, _ in sought] == ours.frame_indices
    for (_, _, frame), expected in zip(sought, ours.frames):
        np.testing.assert_array_equal(frame, expected)


def test_default_is_32_frames_and_short_clips_give_all_their_frames(clips):
    assert len(read_video(clips / "clip.mp4").frame_indices) == 32
    _, metadata = _reference(clips / "clip.mp4", 32)
    assert read_video(clips / "clip.mp4").frame_indices == list(metadata.frames_indices)
    # transformers refuses more frames than the clip has; we take them all
    with pytest.raises(ValueError, match="exceeds total_num_frames"):
        _reference(clips / "clip.gif", 100)
    assert read_video(clips / "clip.gif", num_frames=100).frame_indices == list(range(30))


def test_long_video_is_read_by_seeking_quickly(clips):
    started = time.monotonic()
    facts, frames = iter_sampled_frames(clips / "long.mp4", 32)
    assert facts["total_frames"] == 2000 and facts["frame_indices"][1] == 62
    assert len(list(frames)) == 32
    assert time.monotonic() - started < 5.0


def _reference_pixels(frames: np.ndarray, budget: int = 70):
    """Gemma4VideoProcessor on decoded frames: tvF.resize (torch's uint8 kernel), x / 255, patches,
    padding."""
    height, width = frames.shape[1:3]
    target = get_aspect_ratio_preserving_size(height, width, 16, budget * 9, 3)
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()
    if target != (height, width):
        video = F.interpolate(video, size=list(target), mode="bicubic", align_corners=False, antialias=True)
    video = video.to(torch.float32) / torch.tensor(255.0)
    values, positions = [], []
    for frame in video.numpy():
        patches = hf_pil.convert_image_to_patches(frame, 16)
        grid_x, grid_y = np.meshgrid(np.arange(target[1] // 16), np.arange(target[0] // 16), indexing="xy")
        patches, pos = hf_pil.pad_along_first_dim(patches, np.stack([grid_x, grid_y], -1).reshape(-1, 2),
                                                  budget * 9)
        values.append(patches)
        positions.append(pos)
    return np.stack(values), np.stack(positions), (target[0] // 16) * (target[1] // 16) // 9


@pytest.mark.parametrize("name", ["clip.mp4", "clip.webm"])
def test_load_video_pixels_and_prompt_match_transformers(clips, name):
    frames, metadata = _reference(clips / name, 32)
    pixel_values, position_ids, tokens = _reference_pixels(frames)
    ours = load_video(clips / name)
    assert ours.num_soft_tokens_per_frame == tokens and tokens <= 70
    np.testing.assert_array_equal(ours.position_ids, position_ids)
    assert np.abs(ours.pixel_values - pixel_values).max() <= 1e-5
    fake = SimpleNamespace(boi_token="<|image>", eoi_token="<image|>", video_token="<|video|>")
    expected = Gemma4Processor.replace_video_token(
        fake, {"num_soft_tokens_per_video": [tokens], "video_metadata": [metadata]}, 0
    )
    assert ours.prompt == expected


def test_timestamps_format_like_transformers():
    metadata = VideoMetadata(total_num_frames=4000, fps=1.0, frames_indices=[0, 59, 75, 3725])
    fake = SimpleNamespace(boi_token="<|image>", eoi_token="<image|>", video_token="<|video|>")
    expected = Gemma4Processor.replace_video_token(
        fake, {"num_soft_tokens_per_video": [2], "video_metadata": [metadata]}, 0
    )
    assert video_placeholder(2, [0.0, 59.0, 75.0, 3725.0]) == expected
    assert [format_timestamp(t) for t in (0.0, 59.9, 75.5, 3725.0)] == ["00:00", "00:59", "01:15", "62:05"]


def test_sound_track_is_extracted_as_mono_float32(clips):
    samples, rate = extract_audio(clips / "clip.mp4", max_seconds=2.0)
    assert rate == AUDIO_RATE and samples.dtype == np.float32 and samples.shape == (2 * AUDIO_RATE,)
    spectrum = np.abs(np.fft.rfft(samples[AUDIO_RATE // 2:]))
    assert abs(np.argmax(spectrum) * AUDIO_RATE / (len(samples) - AUDIO_RATE // 2) - TONE_HZ) < 2.0
    assert 0.3 < np.abs(samples[AUDIO_RATE // 2:]).max() < 0.5  # (L + R) / 2 of 0.5 and 0.25 amplitudes
    whole, rate = extract_audio(clips / "clip.webm", max_seconds=None)
    assert rate == AUDIO_RATE and abs(len(whole) / rate - 4.0) < 0.1
    assert extract_audio(clips / "clip.gif") is None  # no sound track


def test_bad_videos_raise_video_load_error_quickly(clips, tmp_path):
    good = (clips / "clip.mp4").read_bytes()
    faststart = tmp_path / "faststart.mp4"  # index at the front, so a cut file opens and then runs dry
    container = av.open(str(faststart), "w", format="mp4", options={"movflags": "faststart"})
    stream = container.add_stream("libx264", rate=12)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    for i in range(48):
        for packet in stream.encode(av.VideoFrame.from_ndarray(_frame(i, 64, 48), format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    cut = faststart.read_bytes()
    files = {
        "empty.mp4": b"",
        "truncated.mp4": good[: len(good) // 2],
        "truncated_faststart.mp4": cut[: len(cut) * 2 // 3],
        "garbage.webm": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "notes.mov": b"these are meeting notes, not a movie\n" * 20,
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    for name in [*files, "missing.mp4"]:
        started = time.monotonic()
        with pytest.raises(VideoLoadError) as info:
            load_video(tmp_path / name)
        assert name in str(info.value), info.value
        assert time.monotonic() - started < 2.0, name
    with pytest.raises(VideoLoadError, match="empty"):
        extract_audio(tmp_path / "empty.mp4")
