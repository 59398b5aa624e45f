"""Voice recording: 16 kHz mono through a source seam (PortAudio via sounddevice, or a fake in tests).

The source calls back from its own thread; the recorder moves each chunk to the window thread with
a queued signal, keeps the level and elapsed time, and stops by itself at 30 seconds.
"""

from __future__ import annotations

import io
import math
import wave
from typing import Callable, Optional, Protocol

import numpy as np
from PySide6.QtCore import QObject, QTimer, Signal

SAMPLE_RATE = 16000
MAX_SECONDS = 30.0


class RecordingError(RuntimeError):
    """The microphone cannot be opened; the message says what to check."""


class AudioSource(Protocol):
    def start(self, on_chunk: Callable[[np.ndarray], None]) -> None: ...

    def stop(self) -> None: ...


class SoundDeviceSource:
    """The default input device through PortAudio (sounddevice), 16 kHz mono float32."""

    def __init__(self, device=None, blocksize: int = 1600):
        self.device, self.blocksize = device, blocksize
        self.stream = None

    def start(self, on_chunk: Callable[[np.ndarray], None]) -> None:
        try:
            import sounddevice
        except OSError as error:  # the PortAudio library itself is missing
            raise RecordingError(f"Audio input is unavailable: PortAudio is not installed ({error}).") from error

        def callback(indata, frames, time_info, status) -> None:
            on_chunk(indata[:, 0].copy())

        try:
            self.stream = sounddevice.InputStream(samplerate=SAMPLE_RATE, channels=1, dtype="float32",
                                                  blocksize=self.blocksize, device=self.device, callback=callback)
            self.stream.start()
        except (sounddevice.PortAudioError, ValueError) as error:
            self.stream = None
            raise RecordingError(f"The microphone cannot be opened ({error}). Check that an input device is "
                                 "connected and that this app may use the microphone (System Settings › "
                                 "Privacy & Security › Microphone).") from error

    def stop(self) -> None:
        if self.stream is not None:
            self.stream.stop()
            self.stream.close()
            self.stream = None


class FakeAudioSource:
    """A tone delivered in chunks by a timer: drives the recorder in tests and screenshots."""

    def __init__(self, chunk_seconds: float = 0.1, interval_ms: int = 5, frequency: float = 440.0,
                 amplitude: float = 0.3):
        self.chunk = int(SAMPLE_RATE * chunk_seconds)
        self.frequency, self.amplitude = frequency, amplitude
        self.timer = QTimer(interval=interval_ms)
        self.timer.timeout.connect(self._emit)
        self.position = 0
        self.on_chunk: Optional[Callable[[np.ndarray], None]] = None

    def start(self, on_chunk: Callable[[np.ndarray], None]) -> None:
        self.on_chunk = on_chunk
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()

    def _emit(self) -> None:
        t = (np.arange(self.chunk) + self.position) / SAMPLE_RATE
        self.position += self.chunk
        envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 1.3 * t)
        if self.on_chunk:
            self.on_chunk((self.amplitude * envelope * np.sin(2 * np.pi * self.frequency * t)).astype(np.float32))


def wav_bytes(samples: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    """16-bit PCM WAV of mono float samples in [-1, 1]."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
    return buffer.getvalue()


def level_of(chunk: np.ndarray) -> float:
    """Loudness of a chunk on a 0..1 scale (RMS in dB, -60 dB to 0 dB)."""
    if chunk.size == 0:
        return 0.0
    rms = float(np.sqrt(np.mean(np.square(chunk, dtype=np.float64))))
    db = 20 * math.log10(max(rms, 1e-6))
    return min(max((db + 60) / 60, 0.0), 1.0)


class Recorder(QObject):
    """One recording at a time. `finished` carries WAV bytes; `failed` a message."""

    started = Signal()
    levelChanged = Signal(float)
    elapsedChanged = Signal(float)
    finished = Signal(bytes, float)  # wav, seconds
    cancelled = Signal()
    failed = Signal(str)
    _chunkArrived = Signal(object)

    def __init__(self, source_factory: Optional[Callable[[], AudioSource]] = None, parent: Optional[QObject] = None,
                 max_seconds: float = MAX_SECONDS):
        super().__init__(parent)
        self.source_factory = source_factory or SoundDeviceSource
        self.max_seconds = max_seconds
        self.source: Optional[AudioSource] = None
        self.chunks: list[np.ndarray] = []
        self.samples = 0
        self._chunkArrived.connect(self._on_chunk)

    @property
    def recording(self) -> bool:
        return self.source is not None

    def start(self) -> None:
        if self.recording:
            return
        self.chunks, self.samples = [], 0
        source = self.source_factory()
        try:
            source.start(self._chunkArrived.emit)
        except RecordingError as error:
            self.failed.emit(str(error))
            return
        self.source = source
        self.started.emit()
        self.elapsedChanged.emit(0.0)

    def stop(self) -> None:
        """Finish and hand over the recording."""
        if not self._halt():
            return
        limit = int(self.max_seconds * SAMPLE_RATE)
        samples = np.concatenate(self.chunks)[:limit] if self.chunks else np.zeros(0, np.float32)
        if samples.size < SAMPLE_RATE // 10:
            self.failed.emit("The recording was too short. Hold the record button a little longer.")
            return
        self.finished.emit(wav_bytes(samples), samples.size / SAMPLE_RATE)

    def cancel(self) -> None:
        if self._halt():
            self.cancelled.emit()

    def _halt(self) -> bool:
        if self.source is None:
            return False
        source, self.source = self.source, None
        source.stop()
        return True

    def _on_chunk(self, chunk: np.ndarray) -> None:
        if self.source is None:
            return  # a chunk still in flight after stop
        self.chunks.append(chunk)
        self.samples += chunk.size
        self.levelChanged.emit(level_of(chunk))
        seconds = self.samples / SAMPLE_RATE
        self.elapsedChanged.emit(min(seconds, self.max_seconds))
        if seconds >= self.max_seconds:
            self.stop()
