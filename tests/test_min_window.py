"""At the window's minimum size (720×480) nothing is cut off: the answer, its code and stats line fit the
column, the empty state's suggestions fit, the sidebar never scrolls sideways, and chips that do not fit
scroll inside the composer. Quick Ask's hint line is whole at the panel's normal size. Each check grabs
the widgets (as a screenshot does) and compares the geometry of what is drawn with the room it has."""

from __future__ import annotations

from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QAbstractScrollArea, QLabel, QWidget

from gemma4_mac.fake_backend import FakeBackend
from tests.ui_support import TIMEOUT, harness_factory  # noqa: F401
from ui.widgets import ElidedLabel

MINIMUM = (720, 480)
ANSWER = ("Here is the function, with the cost of every loop spelled out so that nothing is left out:\n\n"
          "```python\ndef pairs(items):\n    return [(a, b) for a in items for b in items if a < b]\n```\n\n"
          "Both loops run over all n items, so the function does about n² comparisons in total.")


def _script(_request):
    return [("answer", ANSWER[i:i + 12]) for i in range(0, len(ANSWER), 12)]


def cut_off(root: QWidget, room: QWidget) -> list[str]:
    """Visible labels under `root` that reach outside `room` sideways, or whose one-line text is wider than
    they are (cut rather than wrapped or elided)."""
    problems = []
    for label in root.findChildren(QLabel):
        if not label.isVisibleTo(root.window()) or not label.text().strip() or _scrolls_inside(label, room):
            continue
        left = label.mapTo(room, QPoint(0, 0)).x()
        if left < 0 or left + label.width() > room.width() + 1:
            name = label.objectName() or label.text()[:30]
            problems.append(f"{name!r} spans {left}..{left + label.width()} of {room.width()}")
        one_line = label.textFormat() != Qt.RichText and not label.wordWrap() and "\n" not in label.text()
        wide = label.fontMetrics().horizontalAdvance(label.text())
        if one_line and not isinstance(label, ElidedLabel) and wide > label.contentsRect().width() + 1:
            room_px = label.contentsRect().width()
            problems.append(f"{label.text()[:40]!r} is cut: {wide} px of text in {room_px} px")
    return problems


def _scrolls_inside(widget: QWidget, room: QWidget) -> bool:
    """Whether `widget` lies in a scroll area of its own within `room` (a code block scrolls sideways)."""
    parent = widget.parentWidget()
    while parent is not None and parent is not room:
        holder = parent.parentWidget()
        if isinstance(holder, QAbstractScrollArea) and parent is holder.viewport():
            return True
        parent = parent.parentWidget()
    return False


def _show_at_minimum(h, qtbot) -> None:
    h.window.resize(*MINIMUM)
    qtbot.waitUntil(lambda: (h.window.width(), h.window.height()) == MINIMUM, timeout=TIMEOUT)
    qtbot.wait(100)
    assert h.window.minimumSizeHint().width() <= MINIMUM[0]


def test_an_answer_fits_the_minimum_window(harness_factory, qtbot, tmp_path):
    h = harness_factory(backend=FakeBackend(_script))
    for i in range(30):  # enough chats that the list needs its vertical scroll bar
        conversation = h.history.create_conversation(f"Trip ideas for Lisbon and Porto in spring, part {i}")
        h.history.add_message(conversation.id, "user", "Where should we stay?")
    h.controller.refresh_sidebar()
    _show_at_minimum(h, qtbot)
    h.type_and_send("What does this function cost? Give the exact complexity of every loop, please.")
    qtbot.wait(200)
    transcript = h.window.transcript
    picture = h.window.grab()  # what a screenshot shows
    assert (picture.width(), picture.height()) == MINIMUM

    column = transcript.widget()
    assert column.width() <= transcript.viewport().width(), "the transcript is wider than its view"
    assert cut_off(column, transcript.viewport()) == []
    answer = transcript.messages[-1]
    assert "prompt\u00a0tokens" in answer.stats_label.text()  # wrapped between figures, never inside one
    stats = answer.stats_label
    assert stats.heightForWidth(stats.width()) <= stats.height() + 1  # wrapped, all of it shown
    assert answer.markdown.code_blocks()[0].mapTo(transcript.viewport(), QPoint(0, 0)).x() + \
        answer.markdown.code_blocks()[0].width() <= transcript.viewport().width()

    sidebar = h.window.sidebar.list
    assert sidebar.verticalScrollBar().maximum() > 0
    assert sidebar.horizontalScrollBar().maximum() == 0, "the chat list scrolls sideways"
    assert cut_off(h.window.composer, h.window.chat_area) == []


def test_the_empty_state_and_chips_fit_the_minimum_window(harness_factory, qtbot, tmp_path):
    h = harness_factory()
    _show_at_minimum(h, qtbot)
    area = h.window.chat_area
    for button in h.window.empty_state.buttons:
        left = button.mapTo(area, QPoint(0, 0)).x()
        assert 0 <= left and left + button.width() <= area.width(), "a suggestion is cut off"
    assert cut_off(h.window.empty_state, area) == []
    paths = []
    for i in range(4):
        image = QImage(40, 30, QImage.Format_RGB32)
        image.fill(Qt.red)
        paths.append(str(tmp_path / f"holiday photo number {i}.png"))
        image.save(paths[-1])
    h.controller.attach_files(paths)
    qtbot.wait(100)
    composer = h.window.composer
    assert composer.mapTo(area, QPoint(0, 0)).x() + composer.width() <= area.width()
    assert composer.chip_scroll.horizontalScrollBar().maximum() > 0  # the chips scroll inside the composer


def test_quick_asks_hint_line_is_whole(qtbot, tmp_path, monkeypatch):
    from PySide6.QtGui import QGuiApplication

    from gemma4_mac.hotkey_backends import ManualHotkeyBackend
    from tests.ui_support import make_harness
    from ui.tray import install_menu_bar

    h = make_harness(qtbot, tmp_path, monkeypatch)
    bar = install_menu_bar(QGuiApplication.instance(), h.window, h.controller,
                           hotkey_backend=ManualHotkeyBackend(), tray_available=False)
    try:
        panel = bar.panel
        bar.quick_ask.show()
        panel.set_model_label("Starter model · completes text, not a chat model")  # the longest it says
        qtbot.wait(100)
        panel.grab()
        hint = panel.hint_label
        assert hint.fontMetrics().horizontalAdvance(hint.text()) <= hint.contentsRect().width()
        assert cut_off(panel.frame, panel.frame) == []
        model = panel.model_label
        assert model.fontMetrics().horizontalAdvance(model.text()) <= model.width()
        assert model.text() == model.full_text or model.text().endswith("…")
    finally:
        bar.uninstall()
        h.controller.shutdown()
        h.history.close()
