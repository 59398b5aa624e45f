"""History: conversations and messages in SQLite (WAL), FTS5 search, exports, and the model's view."""

import json

import pytest

from gemma4_mac.attachments import AttachmentStore
from gemma4_mac.history import (DEFAULT_TITLE, HIT_END, HIT_START, HistoryError, HistoryStore, format_stats,
                                fts_query, model_messages, title_from_text)
from tests.pdf_fixtures import write_pdf


def png_bytes() -> bytes:
    """A real (tiny) PNG: attachments are checked with the model's own image reader."""
    from io import BytesIO

    from PIL import Image

    buffer = BytesIO()
    Image.new("RGB", (4, 3), "red").save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def store(tmp_path):
    history = HistoryStore(tmp_path / "history.sqlite3", tmp_path / "attachments")
    yield history
    history.close()


def test_wal_mode_and_reopen(tmp_path):
    path = tmp_path / "h.sqlite3"
    first = HistoryStore(path)
    assert first.journal_mode == "wal"
    cid = first.create_conversation("Kept").id
    first.add_message(cid, "user", "persisted words")
    first.close()
    again = HistoryStore(path)
    assert [c.title for c in again.conversations()] == ["Kept"]
    assert again.messages(cid)[0].content == "persisted words"
    again.close()


def test_damaged_database_says_what_to_do(tmp_path):
    path = tmp_path / "h.sqlite3"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(HistoryError, match="Move it away"):
        HistoryStore(path)


def test_first_user_message_names_the_conversation(store):
    cid = store.create_conversation().id
    store.add_message(cid, "user", "How do I   parse ISO dates in Swift without Foundation's formatter being slow?")
    title = store.conversation(cid).title
    assert title.startswith("How do I parse ISO dates") and title.endswith("…") and len(title) <= 49
    assert title_from_text("") == DEFAULT_TITLE


def test_messages_keep_order_attachments_stats_and_partial(store, tmp_path):
    attachments = AttachmentStore(tmp_path / "attachments")
    cid = store.create_conversation().id
    image = attachments.import_bytes(cid, png_bytes(), "shot.png", "image")
    store.add_message(cid, "user", "What is this?", attachments=[image])
    answer = store.add_message(cid, "assistant", "", partial=True)
    store.update_message(answer.id, content="A screenshot.", thought="Look at it.", stats={"prompt_tokens": 300},
                         tool_calls=[{"name": "zoom", "arguments": {"x": 1}}], partial=False)
    messages = store.messages(cid)
    assert [m.role for m in messages] == ["user", "assistant"] and [m.position for m in messages] == [0, 1]
    assert messages[0].attachments[0].path == image.path and messages[0].attachments[0].name == "shot.png"
    stored = json.loads(store.db.execute("SELECT attachments FROM messages WHERE id=?",
                                         (messages[0].id,)).fetchone()[0])
    assert not stored[0]["path"].startswith("/")  # relative to the attachments folder
    assert messages[1].content == "A screenshot." and messages[1].thought == "Look at it."
    assert messages[1].stats == {"prompt_tokens": 300} and messages[1].partial is False
    assert messages[1].tool_calls == [{"name": "zoom", "arguments": {"x": 1}}]


def test_search_finds_prefixes_across_conversations_and_follows_edits(store):
    swift = store.create_conversation().id
    store.add_message(swift, "user", "Explain structured concurrency in Swift")
    store.add_message(swift, "assistant", "Tasks form a tree; cancellation propagates to children.")
    bread = store.create_conversation().id
    store.add_message(bread, "user", "Sourdough hydration for a crème brûlée-crisp crust")
    hits = store.search("cancel")
    assert [h.conversation_id for h in hits] == [swift]
    assert f"{HIT_START}cancellation{HIT_END}" in hits[0].snippet
    assert [h.conversation_id for h in store.search("creme brulee")] == [bread]  # diacritics folded
    assert store.search("swift tree") and not store.search("swift hydration")  # every word must match
    assert store.search("   ") == [] and store.search('"') == []
    answer = store.messages(swift)[1]
    store.update_message(answer.id, content="Tasks are like goroutines.")
    assert store.search("cancellation") == [] and store.search("goroutines")[0].conversation_id == swift
    store.delete_conversation(swift)
    assert store.search("goroutines") == []


def test_search_matches_titles_too(store):
    cid = store.create_conversation("Lisbon itinerary").id
    store.add_message(cid, "user", "Three days, by tram")  # a chat without messages is not listed or found
    hits = store.search("lisbon")
    assert [h.conversation_id for h in hits] == [cid] and hits[0].snippet == ""


def test_fts_query_quotes_user_input():
    assert fts_query('AND OR "x" NEAR(') == '"AND"* "OR"* "x"* "NEAR"*'


def test_rename_delete_and_truncate(store):
    cid = store.create_conversation().id
    for i in range(4):
        store.add_message(cid, "user" if i % 2 == 0 else "assistant", f"message {i}")
    store.rename_conversation(cid, "  Renamed   chat ")
    assert store.conversation(cid).title == "Renamed chat"
    store.delete_messages_from(cid, 2)
    assert [m.content for m in store.messages(cid)] == ["message 0", "message 1"]
    store.delete_conversation(cid)
    assert store.conversation(cid) is None and store.messages(cid) == []
    assert store.db.execute("SELECT count(*) FROM messages_fts").fetchone()[0] == 0


def test_exports(store):
    cid = store.create_conversation("Dates").id
    store.add_message(cid, "user", "Parse 2024-05-01")
    answer = store.add_message(cid, "assistant", "Use `date.fromisoformat`.", thought="Simple.")
    store.update_message(answer.id, stats={"prompt_tokens": 12, "time_to_first_token": 0.25, "generation_tps": 40.0,
                                           "peak_memory_bytes": 3 * 1024 ** 3, "finish_reason": "stop"})
    markdown = store.export_markdown(cid)
    assert markdown.startswith("# Dates\n")
    assert "## You\n\nParse 2024-05-01" in markdown and "## Gemma" in markdown
    assert "<summary>Thinking</summary>" in markdown and "Use `date.fromisoformat`." in markdown
    assert "12 prompt tokens · 0.25 s to first token · 40.0 tok/s · 3.0 GB peak" in markdown
    data = json.loads(store.export_json(cid))
    assert data["title"] == "Dates" and [m["role"] for m in data["messages"]] == ["user", "assistant"]
    assert data["messages"][1]["thought"] == "Simple." and data["messages"][1]["stats"]["prompt_tokens"] == 12
    with pytest.raises(HistoryError):
        store.export_json(9999)


def test_stats_line_mentions_cancel_and_length():
    assert format_stats({"finish_reason": "cancelled"}).endswith("stopped")
    assert "token limit" in format_stats({"finish_reason": "length", "prompt_tokens": 5})


def test_model_messages_put_documents_before_the_question_and_media_as_parts(store, tmp_path):
    attachments = AttachmentStore(tmp_path / "attachments")
    cid = store.create_conversation().id
    pdf = attachments.import_file(cid, write_pdf(tmp_path / "memo.pdf", ["Launch is on Friday"]))
    image = attachments.import_bytes(cid, png_bytes(), "a.png", "image")
    store.add_message(cid, "user", "When is launch?", attachments=[pdf])
    store.add_message(cid, "assistant", "Friday.", thought="from the memo")
    store.add_message(cid, "user", "And this?", attachments=[image])
    messages = model_messages(store.messages(cid), "Be brief.")
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[1]["role"] == "user" and messages[1]["content"].startswith('<document name="memo.pdf">')
    assert messages[1]["content"].endswith("</document>\n\nWhen is launch?")
    assert "Launch is on Friday" in messages[1]["content"]
    assert messages[2] == {"role": "assistant", "content": "Friday."}  # thoughts are not sent back
    assert messages[3]["content"] == [{"type": "image", "path": str(image.path)}, {"type": "text", "text": "And this?"}]


def test_trimmed_and_missing_documents(store, tmp_path):
    attachments = AttachmentStore(tmp_path / "attachments")
    cid = store.create_conversation().id
    doc = attachments.import_text(cid, "word " * 1000, "long.txt")
    doc.meta["max_chars"] = 50
    gone = attachments.import_text(cid, "bye", "gone.txt")
    store.add_message(cid, "user", "Summarise", attachments=[doc, gone])
    gone.path.unlink()
    content = model_messages(store.messages(cid))[0]["content"]
    assert "the rest of long.txt was left out" in content and content.count("word") == 10
    assert "gone.txt could not be read" in content
