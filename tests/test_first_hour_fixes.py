"""Smaller things a person hit in the first hour (issue 13, part 5): no empty "New chat" row for a file
only attached, search that finds pasted documents and attachment names, exports that stand alone, a
message when no sound output can play a clip, and a clean title for a pasted document."""

from __future__ import annotations

import json
import sqlite3
import wave

from PySide6.QtCore import Qt
from PySide6.QtGui import QImage

from gemma4_mac.documents import paste_title
from gemma4_mac.fake_backend import FakeBackend
from gemma4_mac.history import HIT_START, HistoryStore
from tests.ui_support import TIMEOUT, harness, harness_factory  # noqa: F401

NOTES = ("# Quarterly numbers\n\nRevenue grew in the Lisbon office while the Porto office held steady.\n"
         + "More detail follows on every line of this report.\n" * 80)


def _photo(path):
    image = QImage(32, 24, QImage.Format_RGB32)
    image.fill(Qt.darkCyan)
    image.save(str(path))
    return path


def test_attaching_a_file_adds_no_chat_to_the_list_until_something_is_sent(harness, tmp_path):
    sidebar = harness.window.sidebar
    harness.controller.attach_files([str(_photo(tmp_path / "street.png"))])
    assert harness.controller.conversation_id is not None  # the file is kept with its (future) chat
    assert sidebar.conversation_ids() == [] and sidebar.empty_label.isVisibleTo(harness.window)
    harness.type_and_send("What is in the picture?")
    assert sidebar.conversation_ids() == [harness.controller.conversation_id]


def test_search_finds_words_in_pasted_documents_and_attachment_names(harness_factory, tmp_path):
    harness = harness_factory(backend=FakeBackend(lambda request: [("answer", "Done.")]))
    harness.controller.attach_long_text(NOTES)
    harness.type_and_send("Summarise this")
    harness.controller.new_chat()
    harness.controller.attach_files([str(_photo(tmp_path / "harbour sunset.png"))])
    harness.type_and_send("Where was this taken?")
    history = harness.history
    hits = history.search("porto office")
    assert len(hits) == 1 and "Porto" in hits[0].snippet.replace(HIT_START, "") and \
        hits[0].snippet.startswith("In Quarterly numbers.txt:")
    hits = history.search("sunset")
    assert [h.title for h in hits] == ["Where was this taken?"] and HIT_START in hits[0].snippet
    harness.window.sidebar.search.setText("lisbon")  # the sidebar shows the document's chat
    assert [harness.window.sidebar.list.item(r).text() for r in range(harness.window.sidebar.list.count())
            if harness.window.sidebar.list.item(r).data(Qt.UserRole + 1)] == ["Summarise this"]
    conversation = history.messages(hits[0].conversation_id)[0].conversation_id
    history.delete_conversation(conversation)
    assert history.search("sunset") == []  # deleting a chat drops its attachments from the index


def test_an_older_history_gets_its_attachments_indexed(tmp_path):
    store = HistoryStore(tmp_path / "history.sqlite3", tmp_path / "attachments")
    notes = tmp_path / "attachments" / "1" / "minutes.txt"
    notes.parent.mkdir(parents=True)
    notes.write_text("The board approved the new greenhouse.")
    cid = store.create_conversation().id
    store.add_message(cid, "user", "Read this", attachments=[])
    attached = json.dumps([{"kind": "text", "path": "1/minutes.txt", "name": "minutes.txt", "size": 38,
                            "meta": {"encoding": "utf-8"}}])
    store.db.execute("UPDATE messages SET attachments=?", (attached,))
    store.db.execute("DELETE FROM attachments_fts")
    store.db.execute("PRAGMA user_version=1")  # as a history written before attachments were searchable
    store.db.commit()
    store.close()
    reopened = HistoryStore(tmp_path / "history.sqlite3", tmp_path / "attachments")
    assert [h.conversation_id for h in reopened.search("greenhouse")] == [cid]
    assert reopened.db.execute("PRAGMA user_version").fetchone()[0] == 2
    reopened.close()


def test_exports_carry_their_attachments_beside_the_file(harness, tmp_path):
    harness.controller.attach_files([str(_photo(tmp_path / "street.png"))])
    harness.controller.attach_long_text(NOTES)
    harness.type_and_send("Compare these")
    cid = harness.controller.conversation_id
    exported = harness.controller.export_conversation(cid, "json")
    data = json.loads(exported.read_text())
    attached = data["messages"][0]["attachments"]
    assert [a["name"] for a in attached] == ["street.png", "Quarterly numbers.txt"]
    for entry in attached:
        copy = exported.parent / entry["path"]
        assert not entry["path"].startswith("/") and copy.is_file()  # beside the export, not the app's data
        assert str(harness.home) not in entry["path"]
    assert (exported.parent / attached[1]["path"]).read_text().startswith("# Quarterly numbers")
    markdown = harness.controller.export_conversation(cid, "markdown")
    assert "[street.png](Compare%20these%20attachments/street.png)" in markdown.read_text()
    assert (markdown.parent / "Compare these attachments" / "street.png").is_file()


def test_a_clip_that_cannot_be_heard_says_so_in_the_window(harness, tmp_path, monkeypatch):
    from ui import media_player

    monkeypatch.setattr(media_player, "has_audio_output", lambda: False)  # as on a Mac with no output device
    note = tmp_path / "note.wav"
    with wave.open(str(note), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(b"\x00\x01" * 8000)
    harness.controller.attach_files([str(note)])
    harness.type_and_send("Transcribe")
    button = harness.window.transcript.messages[0].findChild(media_player.PlayButton)
    button.click()
    banner = harness.window.banner
    assert banner.isVisibleTo(harness.window) and "no sound output" in banner.label.text()
    assert "note.wav" in banner.label.text()
    assert button.glyph == "play" and not button.playing  # not a pause icon over silence


def test_the_real_check_for_a_sound_output_runs():
    from ui.media_player import has_audio_output

    assert has_audio_output() in (True, False)  # this machine's answer (none on a headless test machine)


def test_a_pasted_document_is_named_by_its_first_line_or_heading():
    assert paste_title(NOTES) == "Quarterly numbers"
    assert paste_title("Section 1. cache audio memory attention sliding window layers\nbody") == \
        "Section 1. cache audio memory attention…"
    assert paste_title("Intro line\n\nOverview\n========\ntext") == "Overview"  # a heading near the top wins
    assert paste_title("```python\ndef main():\n    pass\n```") == "def main()"
    assert paste_title("Plan: Lisbon/Porto <draft> at 12:30") == "Plan - Lisbon-Porto draft at 12.30"  # a file name
    assert paste_title("   \n\t\n") == "Pasted text"
    assert paste_title("word " * 30).endswith("word…") and len(paste_title("word " * 30)) <= 41


def test_a_long_paste_becomes_a_chip_named_cleanly(harness):
    harness.controller.attach_long_text("## Release notes: caching audio memory\n\n" + "Details. " * 500)
    chip = harness.window.composer.chips[0]
    assert harness.controller.pending[0].name == "Release notes - caching audio memory.txt"
    assert chip.title.text().startswith("Release notes - caching")


def test_history_file_stays_readable_by_plain_sqlite(tmp_path):
    store = HistoryStore(tmp_path / "h.sqlite3")
    store.add_message(store.create_conversation().id, "user", "hello")
    store.close()
    with sqlite3.connect(tmp_path / "h.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM messages").fetchone()[0] == 1
