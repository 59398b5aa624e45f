"""A play/pause button for an audio or video attachment in the transcript.

The Qt Multimedia player is made on the first press, so a long history of voice notes costs
nothing until one is played; one clip plays at a time across the window. What keeps a clip from
playing (no sound output, a file gone or unreadable) is said through `failed`, which the window
shows in its banner.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from PySide6.QtCore import QUrl, Signal
from PySide6.QtWidgets import QWidget

from .widgets import IconButton


NO_OUTPUT = ("{name} cannot be played: this Mac has no sound output right now. Connect speakers or "
             "headphones, or choose an output in System Settings › Sound, then press Play again.")


def has_audio_output() -> bool:
    """Whether the system offers a sound output device now (one may be plugged in at any time)."""
    from PySide6.QtMultimedia import QMediaDevices

    return bool(QMediaDevices.audioOutputs())


class PlayButton(IconButton):
    """Plays `path` (the app's copy of the attachment) and shows play or pause accordingly."""

    playingChanged = Signal(bool)
    failed = Signal(str)

    _current: Optional["PlayButton"] = None  # the clip playing now, stopped when another starts

    def __init__(self, path: Path, parent: Optional[QWidget] = None):
        super().__init__("play", "Play", size=16, role="accent", parent=parent)
        self.path = Path(path)
        self.player = None
        self.output = None
        self.clicked.connect(self.toggle)
        self.failed.connect(self.setToolTip)

    @property
    def playing(self) -> bool:
        from PySide6.QtMultimedia import QMediaPlayer

        return self.player is not None and self.player.playbackState() == QMediaPlayer.PlayingState

    def toggle(self) -> None:
        if self.playing:
            self.player.pause()
        else:
            self.play()

    def play(self) -> None:
        if not self.path.is_file():
            self.failed.emit(f"{self.path.name} is no longer in the app's data folder.")
            return
        if not has_audio_output():
            # Qt would still report "playing" (the button flips to pause) while nothing can be heard
            self.failed.emit(NO_OUTPUT.format(name=self.path.name))
            return
        if PlayButton._current is not None and PlayButton._current is not self:
            PlayButton._current.stop()
        PlayButton._current = self
        if self.player is None:
            from PySide6.QtMultimedia import QAudioOutput, QMediaPlayer

            self.output = QAudioOutput(self)
            self.player = QMediaPlayer(self)
            self.player.setAudioOutput(self.output)
            self.player.playbackStateChanged.connect(self._state_changed)
            self.player.errorOccurred.connect(lambda _error, text: self.failed.emit(
                f"{self.path.name} cannot be played: {text or 'unknown error'}."))
            self.player.setSource(QUrl.fromLocalFile(str(self.path)))
        self.player.play()

    def stop(self) -> None:
        if self.player is not None:
            self.player.stop()

    def _state_changed(self, _state) -> None:
        playing = self.playing
        self.set_glyph("pause" if playing else "play")
        self.setToolTip("Pause" if playing else "Play")
        self.playingChanged.emit(playing)
