"""Attachments a model cannot take are never dropped silently: the chip says so, sending says what is left
out, and after switching models mid-chat the person is told what the new model receives."""

from __future__ import annotations

import io
import wave
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QImage

from gemma4_mac.attachments import Attachment, model_cannot_read
from gemma4_mac.fake_backend import FakeBackend
from gemma4_mac.history import Message, left_out_notice, model_messages, raw_prompt
from tests.ui_support import TIMEOUT, harness_factory  # noqa: F401

TEXT_ONLY = {"name": "Gemma 4 31B", "chat": True, "can_see": True, "can_hear": False}


def _photo(folder: Path) -> Path:
    image = QImage(64, 48, QImage.Format_RGB32)
    image.fill(Qt.darkGreen)
    path = folder / "street.png"
    image.save(str(path))
    return path


def _wav(folder: Path, seconds: float = 1.0) -> Path:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(b"\x10\x00" * int(16000 * seconds))
    path = folder / "voice note.wav"
    path.write_bytes(buffer.getvalue())
    return path


def _parts(request) -> list[str]:
    content = request.messages[-1]["content"]
    return [p["type"] for p in content] if isinstance(content, list) else ["text"]


def _text(request) -> str:
    content = request.messages[-1]["content"]
    return content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)


def test_what_each_model_cannot_take():
    image, audio = Attachment("image", Path("a.png"), "a.png"), Attachment("audio", Path("b.wav"), "b.wav")
    document = Attachment("text", Path("c.txt"), "c.txt")
    assert model_cannot_read(audio, TEXT_ONLY).startswith("Gemma 4 31B cannot hear audio")
    assert model_cannot_read(image, TEXT_ONLY) is None and model_cannot_read(document, TEXT_ONLY) is None
    assert "cannot see images" in model_cannot_read(image, {"name": "Tiny", "can_see": False})
    assert "continues text only" in model_cannot_read(image, {"name": "Starter", "chat": False})
    assert model_cannot_read(image, None) is None  # no model known yet: nothing to say
    question = Message(1, 1, 0, "user", "What is said here?", attachments=[audio])
    content = model_messages([question], model=TEXT_ONLY)[0]["content"]
    assert isinstance(content, str)
    assert "b.wav (audio) was attached, but this model cannot take audio" in content
    assert left_out_notice([question], TEXT_ONLY) == (
        "Gemma 4 31B cannot hear audio: only Gemma 4 E2B and E4B have an audio tower. Left out: b.wav.")


def test_an_image_for_a_text_only_model_is_marked_and_explained(harness_factory, tmp_path):
    h = harness_factory(backend=FakeBackend(can_see=False, model_name="Tiny text model"))
    h.controller.attach_files([str(_photo(tmp_path))])
    chip = h.window.composer.chips[0]
    assert chip.unreadable and "cannot see images" in chip.toolTip()
    assert chip.meta.text() == "Left out: this model cannot read it"
    h.window.composer.set_text("Where is the car?")
    h.controller.send()
    h.wait_idle()
    request = h.backend.requests[-1]
    assert _parts(request) == ["text"]  # no image part the model would fail on
    assert "street.png (image) was attached, but this model cannot take image files" in _text(request)
    banner = h.window.banner.label.text()
    assert h.window.banner.isVisibleTo(h.window) and "cannot see images" in banner and "street.png" in banner
    assert h.history.messages(h.controller.conversation_id)[1].content  # and it still answered


def test_audio_for_a_model_without_an_audio_tower(harness_factory, tmp_path):
    h = harness_factory(backend=FakeBackend(can_hear=False, model_name="Gemma 4 26B-A4B"))
    h.controller.attach_files([str(_wav(tmp_path))])
    assert "only Gemma 4 E2B and E4B" in h.window.composer.chips[0].toolTip()
    h.controller.send()
    h.wait_idle()
    assert _parts(h.backend.requests[-1]) == ["text"]
    assert "Left out: voice note.wav." in h.window.banner.label.text()


def test_the_chips_follow_the_model_that_is_loaded(harness_factory, tmp_path, qtbot):
    backend = FakeBackend(can_see=True)
    h = harness_factory(backend=backend)
    h.controller.attach_files([str(_photo(tmp_path))])
    assert not h.window.composer.chips[0].unreadable
    backend.can_see = False
    h.engine.load_model(str(h.home / "models" / "text-only"))
    qtbot.waitUntil(lambda: bool(h.window.composer.chips[0].unreadable), timeout=TIMEOUT)


def test_after_switching_models_mid_chat_the_person_learns_what_the_new_one_gets(harness_factory, tmp_path,
                                                                                 qtbot):
    backend = FakeBackend(can_see=True)
    h = harness_factory(backend=backend)
    h.controller.attach_files([str(_photo(tmp_path))])
    h.type_and_send("Where is the car?")
    assert _parts(backend.requests[-1]) == ["image", "text"] and not h.window.banner.isVisibleTo(h.window)
    backend.can_see = False  # a text-only model now
    h.engine.load_model(str(h.home / "models" / "text-only"))
    qtbot.waitUntil(lambda: h.controller.model_info is not None and not h.controller.model_info["can_see"],
                    timeout=TIMEOUT)
    h.type_and_send("And what colour is it?")
    first_turn = backend.requests[-1].messages[0]["content"]
    assert isinstance(first_turn, str) and "street.png (image) was attached" in first_turn
    assert "Left out: 1 attachment from earlier in this chat." in h.window.banner.label.text()

    h.engine.load_model(None)  # the starter: a base model that continues the last message only
    qtbot.waitUntil(lambda: (h.controller.model_info or {}).get("is_starter"), timeout=TIMEOUT)
    h.type_and_send("The colour of the car is")
    assert backend.requests[-1].raw_prompt == "The colour of the car is"
    assert "Left out: the 4 earlier messages of this chat" in h.window.banner.label.text()


def test_a_base_model_reads_the_documents_of_the_message(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("The meeting moved to Tuesday.")
    document = Attachment("text", notes, "notes.txt", meta={"encoding": "utf-8"})
    message = Message(1, 1, 0, "user", "In short:", attachments=[document])
    wrapped = '<document name="notes.txt">\nThe meeting moved to Tuesday.\n</document>'
    assert raw_prompt(message) == f"{wrapped}\n\nIn short:"
    assert left_out_notice([message], {"name": "Starter", "chat": False}) is None  # it reads all of it
