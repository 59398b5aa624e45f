"""Recording: level and WAV helpers, and once through real PortAudio with a file-backed ALSA device."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import wave
from pathlib import Path

import numpy as np
import pytest

from ui.recorder import SAMPLE_RATE, level_of, wav_bytes

ROOT = Path(__file__).resolve().parent.parent


def test_level_scale():
    assert level_of(np.zeros(100, np.float32)) == 0.0
    assert level_of(np.ones(100, np.float32)) == 1.0
    assert 0.4 < level_of(np.full(100, 0.03, np.float32)) < 0.6  # about -30 dB
    assert level_of(np.zeros(0, np.float32)) == 0.0


def test_wav_bytes_are_16_bit_mono_16k():
    samples = np.array([0.0, 0.5, -0.5, 2.0, -2.0], np.float32)
    with wave.open(io.BytesIO(wav_bytes(samples))) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (16000, 1, 2)
        pcm = np.frombuffer(wav.readframes(5), "<i2")
    assert pcm.tolist() == [0, 16383, -16383, 32767, -32767]  # clipped, not wrapped


RECORD_SCRIPT = textwrap.dedent("""
    import sys
    from PySide6.QtCore import QCoreApplication, QTimer
    from ui.recorder import Recorder, SoundDeviceSource
    app = QCoreApplication([])
    recorder = Recorder(lambda: SoundDeviceSource(device=sys.argv[2] if len(sys.argv) > 2 else None))
    recorder.finished.connect(lambda wav, seconds: (open(sys.argv[1], "wb").write(wav), app.quit()))
    recorder.failed.connect(lambda message: (print("FAILED:", message), app.quit()))
    recorder.started.connect(lambda: QTimer.singleShot(1200, recorder.stop))
    QTimer.singleShot(0, recorder.start)
    QTimer.singleShot(15000, app.quit)
    app.exec()
""")


def _alsa_env(tmp_path: Path) -> dict:
    t = np.arange(SAMPLE_RATE * 5) / SAMPLE_RATE
    (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype("<f4").tofile(tmp_path / "mic.raw")
    config = tmp_path / "asound.conf"
    config.write_text(textwrap.dedent(f"""
        pcm.!default {{
            type file
            slave.pcm "silent"
            file "/dev/null"
            infile "{tmp_path / 'mic.raw'}"
            format "raw"
        }}
        pcm.silent {{ type null }}
    """))
    return {**os.environ, "ALSA_CONFIG_PATH": str(config), "PYTHONPATH": str(ROOT)}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the file-backed microphone is an ALSA device")
def test_record_through_real_portaudio(tmp_path):
    """PortAudio reads a 440 Hz tone from an ALSA device backed by a file; the recorder hands it over as WAV."""
    out = tmp_path / "recording.wav"
    result = subprocess.run([sys.executable, "-c", RECORD_SCRIPT, str(out)], env=_alsa_env(tmp_path),
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.is_file(), result.stdout + result.stderr
    with wave.open(str(out)) as wav:
        assert wav.getframerate() == SAMPLE_RATE and wav.getnchannels() == 1
        samples = np.frombuffer(wav.readframes(wav.getnframes()), "<i2").astype(np.float32) / 32767
    # ALSA's null device does not pace capture, so the recording may run on to the 30 s cap: never past it
    assert 0.8 * SAMPLE_RATE < samples.size <= 30 * SAMPLE_RATE
    tone = samples[: 4 * SAMPLE_RATE]
    spectrum = np.abs(np.fft.rfft(tone))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / tone.size
    assert abs(peak_hz - 440) < 2 and 0.45 < np.abs(tone).max() < 0.55


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the file-backed microphone is an ALSA device")
def test_missing_microphone_is_a_clear_message(tmp_path):
    result = subprocess.run([sys.executable, "-c", RECORD_SCRIPT, str(tmp_path / "x.wav"), "no such microphone"],
                            env=_alsa_env(tmp_path), capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert "FAILED: The microphone cannot be opened" in result.stdout and "Privacy & Security" in result.stdout
    assert not (tmp_path / "x.wav").exists()
