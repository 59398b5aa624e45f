"""Audio loading: every common format decodes to 16 kHz mono; bad input fails fast with AudioLoadError.

Test files are encoded at run time with PyAV (FFmpeg's encoders), so nothing is downloaded.
"""

from __future__ import annotations

import io
import time

import av
import numpy as np
import pytest
from PIL import Image

from mlx_model.audio_io import AudioLoadError, from_microphone_buffer, load_audio, resample, to_mono

# container, codec per test format; "ogg" is Opus in Ogg, "oga" is Vorbis in Ogg
CODECS = {"wav": ("wav", "pcm_s16le"), "flac": ("flac", "flac"), "mp3": ("mp3", "libmp3lame"),
          "m4a": ("ipod", "aac"), "ogg": ("ogg", "libopus"), "oga": ("ogg", "vorbis")}
LOSSLESS = {"wav", "flac"}
TONES_HZ = (440.0, 1_000.0)


def encode(samples: np.ndarray, rate: int, kind: str) -> bytes:
    """Encode float samples [frames] or [frames, channels] with FFmpeg's encoder for `kind`."""
    samples = np.asarray(samples, np.float32)
    samples = samples[:, None] if samples.ndim == 1 else samples
    layout = "mono" if samples.shape[1] == 1 else "stereo"
    container_format, codec = CODECS[kind]
    out = io.BytesIO()
    with av.open(out, "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        if codec == "vorbis":
            stream.codec_context.options = {"strict": "experimental"}
        sample_format = stream.codec_context.format.name
        if sample_format.startswith("s16"):
            data = np.clip(np.round(samples * 32767), -32768, 32767).astype(np.int16)
        elif sample_format.startswith("s32"):
            data = np.round(samples.astype(np.float64) * 2147483647).astype(np.int32)
        else:
            data = samples
        planes = data.T if sample_format.endswith("p") else data.reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(planes), format=sample_format, layout=layout)
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def two_tones(rate: int, seconds: float = 3.0) -> np.ndarray:
    """Stereo: 440 Hz left, 1 kHz right."""
    t = np.arange(int(rate * seconds)) / rate
    left, right = (np.sin(2 * np.pi * tone * t) for tone in TONES_HZ)
    return np.stack([0.5 * left, 0.3 * right], axis=1)


def band_limited_resample(samples: np.ndarray, rate: int, target: int, cutoff_hz: float) -> np.ndarray:
    """Reference resampler: ideal FFT resampling with everything above `cutoff_hz` removed."""
    n = len(samples)
    m = n * target // rate
    assert n * target % rate == 0
    spectrum = np.fft.rfft(samples.astype(np.float64))
    out = np.zeros(m // 2 + 1, complex)
    keep = int(cutoff_hz * n / rate)
    out[:keep] = spectrum[:keep]
    return np.fft.irfft(out, m) * m / n


def low_pass(samples: np.ndarray, rate: int, cutoff_hz: float) -> np.ndarray:
    spectrum = np.fft.rfft(samples.astype(np.float64))
    spectrum[int(cutoff_hz * len(samples) / rate):] = 0
    return np.fft.irfft(spectrum, len(samples))


@pytest.mark.parametrize("kind", sorted(CODECS))
def test_every_format_decodes_to_16k_mono(kind):
    rate = 48_000 if kind == "ogg" else 44_100  # Opus only takes 48 kHz
    source = two_tones(rate)
    samples, info = load_audio(encode(source, rate, kind), name=f"tones.{kind}")
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert (info.original_rate, info.original_channels) == (rate, 2)
    assert abs(info.duration_seconds - 3.0) < 0.1  # lossy codecs add a few ms of priming
    expected = resample(to_mono(source), rate)
    if kind in LOSSLESS:
        assert len(samples) == len(expected) == 48_000
        assert np.abs(samples - expected).max() < 1e-3  # 16-bit quantisation only
    else:
        spectrum = np.abs(np.fft.rfft(samples[4_000:36_000]))
        peaks = sorted(np.argsort(spectrum)[-2:] * 16_000 / 32_000)
        assert np.allclose(peaks, TONES_HZ, rtol=0.02), peaks  # FFmpeg's own Vorbis encoder is crude
        rms = np.sqrt(np.mean(samples[4_000:36_000] ** 2))
        assert abs(rms / np.sqrt(np.mean(expected**2)) - 1) < 0.1


def test_paths_mislabelled_names_and_labels(tmp_path):
    wav = encode(two_tones(16_000, 1.0), 16_000, "wav")
    real = tmp_path / "clip.wav"
    real.write_bytes(wav)
    mislabelled = tmp_path / "clip.mp3"  # WAV content behind an .mp3 name: recognised by content
    mislabelled.write_bytes(wav)
    from_path, info = load_audio(real)
    from_wrong_name, _ = load_audio(mislabelled)
    np.testing.assert_array_equal(from_path, from_wrong_name)
    assert info.source == str(real) and info.container == "wav" and len(from_path) == 16_000


def _bad_inputs(tmp_path) -> dict:
    tones = two_tones(44_100)
    encoded = {kind: encode(tones, 44_100, kind) for kind in ("wav", "flac", "mp3", "m4a")}
    image = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(image, format="PNG")
    rng = np.random.default_rng(0)
    garbled = encoded["flac"]
    return {
        "empty.wav": b"",
        "notes.wav": b"this is a text file, not audio\n" * 40,
        "picture.mp3": image.getvalue(),
        "noise.m4a": rng.bytes(4_000),
        "cut.wav": encoded["wav"][: len(encoded["wav"]) // 2],
        "cut.flac": encoded["flac"][: len(encoded["flac"]) // 2],
        "cut.mp3": encoded["mp3"][: len(encoded["mp3"]) // 2],
        "cut.m4a": encoded["m4a"][: len(encoded["m4a"]) // 2],
        "header-only.flac": encoded["flac"][:200],
        "garbled.flac": garbled[: len(garbled) // 3] + rng.bytes(len(garbled) // 3)
        + garbled[2 * len(garbled) // 3:],
    }


def test_bad_files_raise_audio_load_error_fast(tmp_path):
    for name, data in _bad_inputs(tmp_path).items():
        path = tmp_path / name
        path.write_bytes(data)
        start = time.perf_counter()
        with pytest.raises(AudioLoadError) as caught:
            load_audio(path)
        assert time.perf_counter() - start < 1.0, name
        message = str(caught.value)
        assert str(path) in message, message
        assert any(hint in message for hint in ("re-export", "Re-download", "choose", "Use wav")), message
    with pytest.raises(AudioLoadError, match="no such file"):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(AudioLoadError, match="empty"):
        load_audio(b"", name="upload")


def test_long_audio_is_refused_or_truncated_without_decoding_it_all():
    tones = two_tones(44_100)  # 3 s
    for kind in ("wav", "mp3", "m4a"):
        data = encode(tones, 44_100, kind)
        with pytest.raises(AudioLoadError, match=r"3\.0 s long, over the limit of 1\.0 s"):
            load_audio(data, name=kind, max_seconds=1.0)  # declared length: refused before decoding
        samples, info = load_audio(data, name=kind, max_seconds=1.0, truncate=True)
        assert info.truncated and len(samples) == 16_000
    # Vorbis from FFmpeg's encoder declares no usable length: the limit trips while decoding
    vorbis = encode(tones, 44_100, "oga")
    with pytest.raises(AudioLoadError, match="longer than the limit of 1.0 s"):
        load_audio(vorbis, name="long.oga", max_seconds=1.0)


@pytest.mark.parametrize("rate", [8_000, 22_050, 44_100, 48_000])
def test_resampler_matches_a_reference_resampler(rate):
    rng = np.random.default_rng(rate)
    seconds = 2
    t = np.arange(rate * seconds) / rate
    # a chirp through the band plus noise, like speech has energy everywhere
    signal = 0.4 * np.sin(2 * np.pi * (100 * t + 900 * t**2)) + 0.1 * rng.standard_normal(t.size)
    ours = resample(signal.astype(np.float32), rate)
    assert len(ours) == seconds * 16_000
    # compare inside soxr's pass band (it rolls off just below Nyquist), away from the edges
    cutoff = 0.8 * min(rate, 16_000) / 2
    reference = band_limited_resample(signal, rate, 16_000, cutoff)
    error = low_pass(ours, 16_000, cutoff)[800:-800] - reference[800:-800]
    relative = np.sqrt(np.mean(error**2) / np.mean(reference[800:-800] ** 2))
    assert relative < 1e-3, relative


def test_microphone_buffers_of_every_shape_give_the_same_samples():
    rate = 48_000
    stereo = two_tones(rate, 1.0).astype(np.float32)
    expected, _ = load_audio(encode(stereo, rate, "wav"))
    as_array, info = from_microphone_buffer(stereo, rate, 2)
    chunks, _ = from_microphone_buffer([stereo[i:i + 1024] for i in range(0, len(stereo), 1024)], rate, 2)
    int16 = np.clip(np.round(stereo * 32767), -32768, 32767).astype(np.int16)
    as_bytes, bytes_info = from_microphone_buffer(int16.tobytes(), rate, 2, dtype="int16")
    assert info.original_rate == rate and info.duration_seconds == 1.0 and bytes_info.codec == "int16"
    np.testing.assert_array_equal(as_array, chunks)
    np.testing.assert_allclose(as_array, expected, atol=1e-3)
    np.testing.assert_allclose(as_bytes, expected, atol=1e-4)
    mono, _ = from_microphone_buffer(stereo[:, 0].copy(), 16_000, 1)
    np.testing.assert_array_equal(mono, stereo[:, 0])

    with pytest.raises(AudioLoadError, match="nothing was captured"):
        from_microphone_buffer([], rate, 2)
    with pytest.raises(AudioLoadError, match="whole number"):
        from_microphone_buffer(b"\x00" * 6, rate, 2, dtype="int16")
    with pytest.raises(AudioLoadError, match="NaN"):
        from_microphone_buffer(np.full((100, 1), np.nan, np.float32), rate, 1)
    with pytest.raises(AudioLoadError, match="channels"):
        from_microphone_buffer(np.zeros((100, 3), np.float32), rate, 2)
