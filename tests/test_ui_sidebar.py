"""The sidebar: new chat, switching, search, rename, delete and export."""

from __future__ import annotations

import json

from PySide6.QtCore import Qt

from tests.ui_support import harness  # noqa: F401
from ui.sidebar import ID_ROLE, KIND_ROLE, date_group


def _chat(harness, text):
    harness.controller.new_chat()
    harness.type_and_send(text)
    return harness.controller.conversation_id


def test_new_chat_and_switching(harness, qtbot):
    first = _chat(harness, "Lisbon tram routes")
    second = _chat(harness, "Sourdough starter")
    sidebar = harness.window.sidebar
    assert sidebar.conversation_ids() == [second, first]  # most recent first
    sidebar.new_button.click()
    assert harness.window.stack.currentWidget() is harness.window.empty_state
    assert harness.controller.conversation_id is None and harness.window.header_title.text() == "New chat"
    sidebar.list.setCurrentItem(sidebar.item_for(first))
    assert harness.controller.conversation_id == first
    assert harness.window.transcript.messages[0].text == "Lisbon tram routes"
    assert harness.window.header_title.text() == "Lisbon tram routes"


def test_an_abandoned_new_chat_with_only_attachments_is_cleaned_up(harness, tmp_path):
    keep = _chat(harness, "keep me")
    harness.controller.new_chat()
    note = tmp_path / "n.txt"
    note.write_text("draft")
    harness.controller.attach_files([str(note)])
    draft = harness.controller.conversation_id
    assert (harness.home / "attachments" / str(draft)).is_dir()
    harness.controller.open_conversation(keep)
    assert harness.history.conversation(draft) is None
    assert not (harness.home / "attachments" / str(draft)).exists()


def test_search_shows_matches_with_snippets(harness, qtbot):
    swift = _chat(harness, "Explain Swift actors and isolation")
    _chat(harness, "Best hiking trails near Porto")
    sidebar = harness.window.sidebar
    qtbot.keyClicks(sidebar.search, "isolat")
    ids = sidebar.conversation_ids()
    assert ids == [swift]
    item = sidebar.item_for(swift)
    assert "isolation" in item.data(Qt.UserRole + 3)
    header = sidebar.list.item(0)
    assert header.data(KIND_ROLE) == "header" and header.text() == "1 result"
    sidebar.search.setText("no such words here")
    assert sidebar.conversation_ids() == [] and sidebar.empty_label.text() == "No matches"
    sidebar.search.clear()
    assert len(sidebar.conversation_ids()) == 2


def test_rename_inline(harness, qtbot):
    cid = _chat(harness, "untitled thoughts")
    sidebar = harness.window.sidebar
    item = sidebar.item_for(cid)
    item.setText("Garden plans")  # what the inline editor commits
    assert harness.history.conversation(cid).title == "Garden plans"
    assert harness.window.header_title.text() == "Garden plans"
    assert sidebar.item_for(cid).text() == "Garden plans"


def test_delete_removes_history_and_attachments(harness, tmp_path):
    photo = tmp_path / "x.txt"
    photo.write_text("attached text")
    harness.controller.attach_files([str(photo)])
    harness.type_and_send("with an attachment")
    cid = harness.controller.conversation_id
    folder = harness.home / "attachments" / str(cid)
    assert folder.is_dir()
    harness.window.sidebar.deleteRequested.emit(cid)
    assert harness.questions == ["Delete this chat?"]
    assert harness.history.conversation(cid) is None and not folder.exists()
    assert harness.window.sidebar.conversation_ids() == []
    assert harness.window.stack.currentWidget() is harness.window.empty_state


def test_delete_is_cancelled_when_the_person_says_no(harness):
    cid = _chat(harness, "precious")
    harness.controller.confirm = lambda title, text: False
    harness.window.sidebar.deleteRequested.emit(cid)
    assert harness.history.conversation(cid) is not None


def test_export_markdown_and_json(harness, tmp_path):
    cid = _chat(harness, "Export me: what is 2+2?")
    harness.window.sidebar.exportRequested.emit(cid, "markdown")
    markdown = (tmp_path / "Export me_ what is 2_2_.md").read_text()
    assert markdown.startswith("# Export me: what is 2+2?") and "## Gemma" in markdown
    assert "def greet(name):" in markdown and "tok/s" in markdown
    harness.window.sidebar.exportRequested.emit(cid, "json")
    data = json.loads((tmp_path / "Export me_ what is 2_2_.json").read_text())
    assert [m["role"] for m in data["messages"]] == ["user", "assistant"]
    assert data["messages"][1]["stats"]["finish_reason"] == "stop"


def test_date_groups():
    now = 1_700_000_000.0
    assert date_group(now - 60, now) == "Today"
    assert date_group(now - 86400 * 1.2, now) in ("Yesterday", "Previous 7 days")
    assert date_group(now - 86400 * 10, now) == "Previous 30 days"
    assert date_group(now - 86400 * 100, now) == "Older"


def test_items_carry_their_conversation_ids(harness):
    cid = _chat(harness, "one")
    item = harness.window.sidebar.item_for(cid)
    assert item.data(ID_ROLE) == cid and item.flags() & Qt.ItemIsEditable
