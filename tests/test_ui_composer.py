"""The composer: drops, pastes, recordings, chips, the token meter and the context-overflow choice."""

from __future__ import annotations

import io
import wave

from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QGuiApplication, QImage

from gemma4_mac.settings import AppSettings
from tests.pdf_fixtures import write_pdf
from tests.ui_support import TIMEOUT, harness, harness_factory  # noqa: F401
from ui.controller import OVERFLOW_CANCEL, OVERFLOW_NEW_CHAT, OVERFLOW_TRIM
from ui.recorder import SAMPLE_RATE, FakeAudioSource, Recorder


def _drop(window, mime: QMimeData) -> bool:
    enter = QDragEnterEvent(QPoint(300, 300), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier)
    window.dragEnterEvent(enter)
    accepted = enter.isAccepted()
    overlay_shown = window.drop_overlay.isVisibleTo(window)
    window.dropEvent(QDropEvent(QPointF(300, 300), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier))
    assert not window.drop_overlay.isVisibleTo(window)
    return accepted and overlay_shown


def _image(color=Qt.blue, w=120, h=80) -> QImage:
    image = QImage(w, h, QImage.Format_RGB32)
    image.fill(color)
    return image


def test_drop_file_urls(harness, tmp_path):
    photo = tmp_path / "holiday photo.png"
    _image().save(str(photo))
    notes = tmp_path / "notes.md"
    notes.write_text("# Plan\n- buy milk\n")
    pdf = write_pdf(tmp_path / "memo.pdf", ["Board meets on Tuesday"])
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in (photo, notes, pdf)])
    assert _drop(harness.window, mime)
    pending = harness.controller.pending
    assert [a.kind for a in pending] == ["image", "text", "pdf"]
    folder = harness.home / "attachments" / str(harness.controller.conversation_id)
    assert all(a.path.parent == folder for a in pending)  # copies in the app's data folder
    chips = harness.window.composer.chips
    assert [chip.title.text() for chip in chips] == ["holiday photo.png", "notes.md", "memo.pdf"]
    assert chips[2].meta.text() == "PDF · 1 page" and not chips[0].thumb.pixmap().isNull()
    photo.unlink()  # the original may move: the conversation keeps its copy
    harness.type_and_send("What do these say?")
    content = harness.backend.requests[-1].messages[-1]["content"]
    assert content[0] == {"type": "image", "path": str(pending[0].path)}
    text = content[1]["text"]
    assert '<document name="notes.md">' in text and "Board meets on Tuesday" in text
    assert text.endswith("What do these say?")
    shown = harness.window.transcript.messages[0]
    assert len(shown.attachments) == 3 and harness.window.composer.chips == []


def test_drop_raw_image_data(harness):
    mime = QMimeData()
    mime.setImageData(_image(Qt.red, 64, 32))
    assert _drop(harness.window, mime)
    (attachment,) = harness.controller.pending
    assert attachment.kind == "image" and attachment.path.suffix == ".png"
    saved = QImage(str(attachment.path))
    assert (saved.width(), saved.height()) == (64, 32) and saved.pixelColor(5, 5).red() == 255


def test_unsupported_drop_is_refused_with_a_message(harness, tmp_path):
    blob = tmp_path / "tool.bin"
    blob.write_bytes(bytes(range(256)) * 4)
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(blob))])
    _drop(harness.window, mime)
    assert harness.controller.pending == []
    assert "tool.bin" in harness.window.banner.label.text() and harness.window.banner.isVisibleTo(harness.window)
    text_only = QMimeData()
    text_only.setText("plain text")
    event = QDragEnterEvent(QPoint(10, 10), Qt.CopyAction, text_only, Qt.LeftButton, Qt.NoModifier)
    harness.window.dragEnterEvent(event)
    assert not event.isAccepted()


def test_paste_image_from_the_clipboard(harness, qtbot):
    QGuiApplication.clipboard().setImage(_image(Qt.green, 40, 40))
    edit = harness.window.composer.edit
    edit.setFocus()
    edit.paste()
    (attachment,) = harness.controller.pending
    assert attachment.kind == "image" and attachment.name.startswith("Pasted image")
    assert edit.toPlainText() == ""


def test_long_paste_becomes_a_document_and_short_paste_is_text(harness):
    edit = harness.window.composer.edit
    QGuiApplication.clipboard().setText("short words")
    edit.paste()
    assert edit.toPlainText() == "short words" and harness.controller.pending == []
    log = "\n".join(f"12:00:{i:02d} worker {i} finished" for i in range(300))
    QGuiApplication.clipboard().setText(log)
    edit.paste()
    (attachment,) = harness.controller.pending
    assert attachment.kind == "text" and attachment.path.read_text() == log
    assert attachment.name == "12.00.00 worker 0 finished.txt"  # named by its first line, safe as a file name
    assert edit.toPlainText() == "short words"


def test_remove_chip_deletes_the_copy(harness, tmp_path):
    photo = tmp_path / "a.png"
    _image().save(str(photo))
    harness.controller.attach_files([str(photo), str(photo)])
    first, second = harness.controller.pending
    harness.window.composer.chips[0].remove_button.click()
    assert harness.controller.pending == [second] and not first.path.exists() and second.path.exists()
    assert len(harness.window.composer.chips) == 1


def _wav_info(path):
    with wave.open(io.BytesIO(path.read_bytes())) as wav:
        return wav.getframerate(), wav.getnchannels(), wav.getnframes()


def test_record_through_the_audio_seam(harness_factory, qtbot, monkeypatch):
    from ui import media_player

    monkeypatch.setattr(media_player, "has_audio_output", lambda: True)  # as on a Mac with speakers
    recorder = Recorder(lambda: FakeAudioSource(chunk_seconds=0.1, interval_ms=5))
    h = harness_factory(recorder=recorder)
    composer = h.window.composer
    composer.mic_button.click()
    assert composer.recording_bar.isVisibleTo(h.window) and not composer.edit.isVisibleTo(h.window)
    qtbot.waitUntil(lambda: recorder.samples >= SAMPLE_RATE * 2, timeout=TIMEOUT)
    assert composer.recording_bar.time_label.text().startswith("0:0") and "/ 0:30" in \
        composer.recording_bar.time_label.text()
    assert max(composer.recording_bar.meter.levels) > 0.5
    composer.recording_bar.stop_button.click()
    assert not composer.recording_bar.isVisibleTo(h.window)
    (attachment,) = h.controller.pending
    rate, channels, frames = _wav_info(attachment.path)
    assert attachment.kind == "audio" and rate == 16000 and channels == 1 and frames >= 2 * SAMPLE_RATE
    assert abs(attachment.meta["duration"] - frames / rate) < 0.01
    h.type_and_send("Transcribe this")
    assert h.backend.requests[-1].messages[-1]["content"][0] == {"type": "audio", "path": str(attachment.path)}
    # the clip sits in the question with a play button that plays the app's copy
    from ui.message_widgets import AttachmentView

    (view,) = h.window.transcript.messages[0].findChildren(AttachmentView)
    assert view.play_button is not None and view.play_button.player is None  # no player until pressed
    view.play_button.click()
    assert view.play_button.player.source().toLocalFile() == str(attachment.path)


def test_recording_stops_by_itself_at_30_seconds(harness_factory, qtbot):
    recorder = Recorder(lambda: FakeAudioSource(chunk_seconds=1.0, interval_ms=1))
    h = harness_factory(recorder=recorder)
    h.window.composer.mic_button.click()
    qtbot.waitUntil(lambda: bool(h.controller.pending), timeout=TIMEOUT)
    assert not recorder.recording
    rate, _, frames = _wav_info(h.controller.pending[0].path)
    assert frames == 30 * rate
    assert h.window.composer.recording_bar.time_label.text() == "0:00 / 0:30"  # reset for the next one


def test_recording_can_be_discarded(harness_factory, qtbot):
    recorder = Recorder(lambda: FakeAudioSource(chunk_seconds=0.1, interval_ms=5))
    h = harness_factory(recorder=recorder)
    h.window.composer.mic_button.click()
    qtbot.waitUntil(lambda: recorder.samples > SAMPLE_RATE // 2, timeout=TIMEOUT)
    h.window.composer.recording_bar.cancel_button.click()
    assert not recorder.recording and h.controller.pending == []
    assert h.window.composer.edit.isVisibleTo(h.window)


def test_token_meter_counts_text_attachments_and_history(harness, qtbot, tmp_path):
    composer = harness.window.composer
    harness.controller.update_token_count()
    qtbot.waitUntil(lambda: composer.token_label.text() == "0 / 8.2K tokens", timeout=TIMEOUT)
    composer.edit.setPlainText("a" * 400)
    # 100 tokens by the (scripted) tokenizer, 5 around the turn, 8 for <bos> and the answer's start
    qtbot.waitUntil(lambda: composer.token_label.text().startswith("113 /"), timeout=TIMEOUT)
    photo = tmp_path / "p.png"
    _image().save(str(photo))
    harness.controller.attach_files([str(photo)])
    assert composer.token_label.text().startswith("about 397 /")  # + the 280-token image budget and markers
    qtbot.waitUntil(lambda: composer.token_label.text().startswith("397 /"), timeout=TIMEOUT)
    assert composer.token_label.property("over") is False


def _overflow_harness(harness_factory, tmp_path, choice):
    h = harness_factory(settings=AppSettings(context_size=1024, max_tokens=256))
    asked = []
    h.controller.choose_overflow = lambda used, limit, docs: asked.append((used, limit, docs)) or choice
    doc = tmp_path / "book.txt"
    doc.write_text("All work and no play makes Jack a dull boy. " * 600)
    h.controller.attach_files([str(doc)])
    assert h.window.composer.token_label.property("over") is True
    h.window.composer.set_text("Summarise")
    return h, asked


def test_overflow_cancel_sends_nothing(harness_factory, tmp_path):
    h, asked = _overflow_harness(harness_factory, tmp_path, OVERFLOW_CANCEL)
    assert h.controller.send() is False
    assert asked[0][1] == 1024 and asked[0][0] > 1024 and asked[0][2] is True
    assert h.backend.requests == [] and len(h.controller.pending) == 1


def test_overflow_trim_cuts_the_document_to_fit(harness_factory, tmp_path):
    h, _ = _overflow_harness(harness_factory, tmp_path, OVERFLOW_TRIM)
    assert h.controller.send() is True
    h.wait_idle()
    text = h.backend.requests[-1].messages[-1]["content"]
    assert "the rest of book.txt was left out to fit the context" in text
    assert len(text) < 1024 * 4


def test_overflow_new_chat_moves_the_message(harness_factory, tmp_path):
    h, _ = _overflow_harness(harness_factory, tmp_path, OVERFLOW_NEW_CHAT)
    h.controller.pending[0].path.write_text("short now")  # history alone is what overflows next time
    h.controller.pending[0].meta["tokens"] = 3
    first_id = h.controller.conversation_id
    h.controller.send()
    h.wait_idle()
    assert h.controller.conversation_id == first_id  # an empty chat needs no new chat
    h.controller.history_tokens = 5000
    h.window.composer.set_text("Next question")
    h.controller.send()
    h.wait_idle()
    assert h.controller.conversation_id != first_id
    assert h.backend.requests[-1].messages == [{"role": "user", "content": "Next question"}]
