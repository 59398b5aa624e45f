"""The quick-ask panel against the real engine thread with a scripted backend: ask, stream, Esc,
attach the clipboard's image or a screenshot, stop, and "Continue in window"."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QGuiApplication, QImage, QPixmap

from gemma4_mac.fake_backend import FakeBackend
from gemma4_mac.hotkey_backends import ManualHotkeyBackend
from tests.ui_support import TIMEOUT, make_harness
from ui.quick_ask import TOP_FRACTION
from ui.tray import install_menu_bar


class Setup:
    def __init__(self, harness, bar, hotkeys):
        self.h, self.bar, self.hotkeys = harness, bar, hotkeys
        self.panel, self.quick = bar.panel, bar.quick_ask

    def ask(self, text: str) -> None:
        """Type into the panel and press Enter, then wait for the answer to end."""
        self.panel.input.setText(text)
        self.h.qtbot.keyClick(self.panel.input, Qt.Key_Return)
        self.wait_idle()

    def wait_idle(self) -> None:
        self.h.qtbot.waitUntil(lambda: not self.quick.streaming, timeout=TIMEOUT)
        self.h.qtbot.wait(60)  # the panel's last render pass


@pytest.fixture
def setup_factory(qtbot, tmp_path, monkeypatch):
    made = []

    def make(backend=None, load=True, grabber=None):
        harness = make_harness(qtbot, tmp_path, monkeypatch, backend=backend, load=load)
        hotkeys = ManualHotkeyBackend()
        extra = {"screen_grabber": grabber} if grabber else {}
        bar = install_menu_bar(QGuiApplication.instance(), harness.window, harness.controller,
                               hotkey_backend=hotkeys, tray_available=False, **extra)
        qtbot.addWidget(bar.panel)
        made.append((harness, bar))
        return Setup(harness, bar, hotkeys)

    yield make
    for harness, bar in made:
        bar.uninstall()
        harness.controller.shutdown()
        harness.history.close()


@pytest.fixture
def setup(setup_factory):
    return setup_factory()


def test_question_streams_an_answer_into_the_panel(setup_factory, qtbot):
    s = setup_factory(backend=FakeBackend(token_delay=0.004))
    seen = []
    s.h.engine.answerDelta.connect(lambda _text: seen.append(s.panel.answer))
    assert s.hotkeys.press()
    qtbot.waitUntil(s.panel.isVisible, timeout=TIMEOUT)
    s.ask("What is a sparkle?")
    # the panel grew piece by piece: many distinct, growing prefixes of the final answer
    final = s.panel.answer
    assert final.startswith("You said: **What is a sparkle?**") and "def greet" in final
    assert len(seen) > 10 and len(set(seen)) > 10
    assert all(final.startswith(prefix) for prefix in seen)
    shown = "".join(w.text() for w in s.panel.markdown.block_widgets if hasattr(w, "text"))
    assert "sparkle" in shown and "▍" not in shown
    assert s.panel.stats_label.isVisible() and "tok/s" in s.panel.stats_label.text()
    messages = s.h.history.messages(s.quick.conversation_id)
    assert [(m.role, m.partial) for m in messages] == [("user", False), ("assistant", False)]
    assert messages[1].content == final and messages[1].stats["finish_reason"] == "stop"
    # the window's sidebar lists the panel's conversation
    assert s.quick.conversation_id in [c.id for c in s.h.history.conversations()]


def test_follow_up_questions_carry_the_conversation(setup):
    setup.panel.present()
    setup.ask("First question")
    setup.ask("And a second one")
    request = setup.h.backend.requests[-1]
    assert [m["role"] for m in request.messages] == ["user", "assistant", "user"]
    assert request.messages[0]["content"] == "First question"
    assert request.conversation_id == setup.quick.conversation_id
    assert setup.panel.question_label.text() == "And a second one"


def test_escape_hides_and_the_hotkey_toggles(setup, qtbot):
    assert setup.hotkeys.press()
    qtbot.waitUntil(setup.panel.isVisible, timeout=TIMEOUT)
    assert setup.panel.input.hasFocus() or QGuiApplication.focusObject() is setup.panel.input
    qtbot.keyClick(setup.panel.input, Qt.Key_Escape)
    assert not setup.panel.isVisible()
    setup.hotkeys.press()
    qtbot.waitUntil(setup.panel.isVisible, timeout=TIMEOUT)


def test_panel_sits_near_the_top_of_the_screen(setup):
    screen = QGuiApplication.primaryScreen()
    setup.panel.present(screen)
    area, frame = screen.availableGeometry(), setup.panel.frameGeometry()
    assert abs(frame.center().x() - area.center().x()) <= 2
    assert area.top() <= frame.top() <= area.top() + area.height() * (TOP_FRACTION + 0.02)
    assert setup.panel.windowFlags() & Qt.FramelessWindowHint
    assert setup.panel.windowFlags() & Qt.WindowStaysOnTopHint


def test_clipboard_image_is_attached_with_one_key(setup, qtbot):
    setup.panel.present()
    QGuiApplication.clipboard().clear()
    qtbot.keyClick(setup.panel.input, Qt.Key_I, Qt.ControlModifier)
    assert setup.quick.pending == []
    assert "no image" in setup.panel.hint_label.text()
    image = QImage(40, 30, QImage.Format_RGB32)
    image.fill(QColor("#ff0000"))
    QGuiApplication.clipboard().setImage(image)
    qtbot.keyClick(setup.panel.input, Qt.Key_I, Qt.ControlModifier)
    assert len(setup.quick.pending) == 1 and setup.panel.chips_holder.isVisible()
    setup.ask("What colour is this?")
    parts = setup.h.backend.requests[-1].messages[-1]["content"]
    image_parts = [p for p in parts if p["type"] == "image"]
    assert len(image_parts) == 1 and {"type": "text", "text": "What colour is this?"} in parts
    stored = QImage(image_parts[0]["path"])
    assert (stored.width(), stored.height()) == (40, 30) and stored.pixelColor(5, 5) == QColor("#ff0000")
    assert not setup.panel.chips_holder.isVisible()


def test_screenshot_hides_the_panel_grabs_and_attaches(setup_factory, qtbot):
    grabbed = []

    def grabber(screen):
        grabbed.append(setup.panel.isVisible())  # the panel must not be in its own screenshot
        pixmap = QPixmap(64, 40)
        pixmap.fill(QColor("#00ff00"))
        return pixmap

    setup = setup_factory(grabber=grabber)
    setup.panel.present()
    qtbot.keyClick(setup.panel.input, Qt.Key_S, Qt.ControlModifier)
    assert not setup.panel.isVisible()
    qtbot.waitUntil(lambda: len(setup.quick.pending) == 1, timeout=TIMEOUT)
    assert grabbed == [False] and setup.panel.isVisible()
    assert setup.quick.pending[0].meta == {"width": 64, "height": 40}


def test_real_screen_grab_attaches_the_screen(setup, qtbot):
    setup.panel.present()
    setup.quick.attach_screenshot()
    qtbot.waitUntil(lambda: len(setup.quick.pending) == 1, timeout=TIMEOUT)
    size = QGuiApplication.primaryScreen().size()
    assert setup.quick.pending[0].meta == {"width": size.width(), "height": size.height()}
    setup.panel.attachmentRemoved.emit(0)
    assert setup.quick.pending == [] and not setup.panel.chips_holder.isVisible()


def test_continue_in_window_opens_the_same_conversation(setup, qtbot):
    window, controller = setup.h.window, setup.h.controller
    setup.panel.present()
    setup.ask("Carry me over")
    cid = setup.quick.conversation_id
    window.hide()
    qtbot.mouseClick(setup.panel.continue_button, Qt.LeftButton)
    assert not setup.panel.isVisible() and window.isVisible()
    assert controller.conversation_id == cid
    assert len(window.transcript.messages) == 2 and window.header_title.text() == "Carry me over"
    # a follow-up in the panel shows up when continuing again (the window reloads the conversation)
    setup.panel.present()
    setup.ask("One more")
    setup.quick.continue_in_window()
    assert controller.conversation_id == cid and len(window.transcript.messages) == 4
    # and the window answers the next turn in the same conversation
    setup.h.type_and_send("Now from the window")
    assert len(setup.h.history.messages(cid)) == 6


def test_continue_while_streaming_stops_and_hands_over(setup_factory, qtbot):
    s = setup_factory(backend=FakeBackend(token_delay=0.03))
    s.panel.present()
    s.panel.input.setText("A long answer please")
    qtbot.keyClick(s.panel.input, Qt.Key_Return)
    qtbot.waitUntil(lambda: len(s.panel.answer) > 0, timeout=TIMEOUT)
    qtbot.keyClick(s.panel.input, Qt.Key_Return, Qt.ControlModifier)
    cid = s.quick.conversation_id
    qtbot.waitUntil(lambda: s.h.controller.conversation_id == cid, timeout=TIMEOUT)
    answer = s.h.history.messages(cid)[-1]
    assert answer.role == "assistant" and answer.partial and answer.content


def test_stop_keeps_the_partial_answer(setup_factory, qtbot):
    s = setup_factory(backend=FakeBackend(token_delay=0.03))
    s.panel.present()
    s.panel.input.setText("Stop me")
    qtbot.keyClick(s.panel.input, Qt.Key_Return)
    qtbot.waitUntil(lambda: len(s.panel.answer) > 0, timeout=TIMEOUT)
    qtbot.keyClick(s.panel.input, Qt.Key_Period, Qt.ControlModifier)
    s.wait_idle()
    stored = s.h.history.messages(s.quick.conversation_id)[-1]
    assert stored.partial and stored.stats["finish_reason"] == "cancelled"
    assert "stopped" in s.panel.stats_label.text()


def test_window_answers_do_not_leak_into_the_panel(setup):
    setup.panel.present()
    setup.h.type_and_send("Asked in the window")
    assert setup.panel.answer == "" and setup.quick.conversation_id is None
    setup.ask("Asked in the panel")
    assert "Asked in the panel" in setup.panel.answer
    window_messages = setup.h.history.messages(setup.h.controller.conversation_id)
    assert "Asked in the window" in window_messages[-1].content


def test_no_model_gives_a_clear_message(setup_factory):
    s = setup_factory(load=False)
    s.panel.present()
    s.ask("Anyone there?")
    assert s.panel.error_label.isVisible() and "No model is loaded" in s.panel.error_label.text()
    assert [m.role for m in s.h.history.messages(s.quick.conversation_id)] == ["user"]


def test_new_question_clears_the_panel_and_drops_unused_conversations(setup, qtbot):
    setup.panel.present()
    setup.ask("Keep this one")
    kept = setup.quick.conversation_id
    qtbot.keyClick(setup.panel.input, Qt.Key_N, Qt.ControlModifier)
    assert setup.quick.conversation_id is None and setup.panel.answer == "" and not setup.panel.scroll.isVisible()
    image = QImage(8, 8, QImage.Format_RGB32)
    image.fill(QColor("#0000ff"))
    setup.quick.attach_image(image, "unused.png")
    unused = setup.quick.conversation_id
    setup.quick.new_conversation()
    ids = [c.id for c in setup.h.history.conversations()]
    assert kept in ids and unused not in ids


def test_a_question_while_the_model_loads_waits_for_it(setup_factory, qtbot):
    s = setup_factory(backend=FakeBackend(load_delay=1.0), load=False)
    s.h.controller.engine.load_model("/models/fake")
    qtbot.waitUntil(lambda: s.quick.loading, timeout=TIMEOUT)
    s.panel.present()
    s.panel.input.setText("Quick question")
    qtbot.keyClick(s.panel.input, Qt.Key_Return)
    assert not s.quick.streaming and s.quick.conversation_id is None  # nothing sent to a model not there yet
    assert "still loading" in s.panel.hint_label.text()
    qtbot.waitUntil(lambda: not s.quick.loading, timeout=TIMEOUT)
    s.ask("Quick question")
    assert s.h.history.messages(s.quick.conversation_id)[-1].content.startswith("You said: **Quick question")
