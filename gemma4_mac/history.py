"""Conversation history in SQLite (WAL mode) with FTS5 full-text search and Markdown/JSON export."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from . import history_export
from .agent import replay_messages
from .attachments import Attachment, model_cannot_read
from .documents import DocumentError, document_text, wrap_document
from .history_export import format_bytes, format_stats  # noqa: F401 (part of this module's interface)
from .history_search import (ATTACHMENT_INDEX, HIT_END, HIT_START, SearchHit, attachment_text,  # noqa: F401
                             fts_query, index_attachments, search)

SCHEMA_VERSION = 2  # 2: attachments' names and documents' text are searchable
DEFAULT_TITLE = "New chat"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    model TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL DEFAULT '',
    thought TEXT NOT NULL DEFAULT '',
    tool_calls TEXT NOT NULL DEFAULT '[]',
    attachments TEXT NOT NULL DEFAULT '[]',
    stats TEXT,
    partial INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation_id, position);
CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts USING fts5(
    content, thought, content='messages', content_rowid='id', tokenize='unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS messages_ai AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts(rowid, content, thought) VALUES (new.id, new.content, new.thought);
END;
CREATE TRIGGER IF NOT EXISTS messages_ad AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content, thought) VALUES ('delete', old.id, old.content, old.thought);
END;
CREATE TRIGGER IF NOT EXISTS messages_au AFTER UPDATE OF content, thought ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content, thought) VALUES ('delete', old.id, old.content, old.thought);
    INSERT INTO messages_fts(rowid, content, thought) VALUES (new.id, new.content, new.thought);
END;
"""


class HistoryError(RuntimeError):
    """The history database cannot be opened or used; the message says what to do."""


@dataclass
class Conversation:
    id: int
    title: str
    created_at: float
    updated_at: float
    model: str = ""


@dataclass
class Message:
    id: int
    conversation_id: int
    position: int
    role: str  # "user" | "assistant"
    content: str = ""
    thought: str = ""
    tool_calls: list[dict] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    stats: Optional[dict] = None
    partial: bool = False
    created_at: float = 0.0


def title_from_text(text: str, limit: int = 48) -> str:
    """A conversation title from its first message."""
    line = " ".join(text.split())
    if not line:
        return DEFAULT_TITLE
    if len(line) <= limit:
        return line
    cut = line[:limit].rsplit(" ", 1)[0]
    return (cut or line[:limit]).rstrip(",.;:") + "…"


class HistoryStore:
    """All conversations of one user. Use from one thread (the window's)."""

    def __init__(self, path: Path, attachments_root: Optional[Path] = None):
        self.path = Path(path)
        self.attachments_root = Path(attachments_root) if attachments_root else None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(str(self.path))
            # damage inside the file shows only when a page is read: find it now, not mid-conversation
            problem = self.db.execute("PRAGMA quick_check(1)").fetchone()[0]
            if problem != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed: {problem}")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            self.db.executescript(_SCHEMA + ATTACHMENT_INDEX)
            if version < 2:
                self._index_stored_attachments()
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self.db.commit()
        except sqlite3.DatabaseError as error:
            raise HistoryError(f"The history database {self.path} cannot be opened ({error}). Move it away "
                               "to start a fresh history; the old file is left untouched.") from error

    def close(self) -> None:
        self.db.close()

    def _index_stored_attachments(self) -> None:
        """A history from before attachments were searchable: index what its messages have attached."""
        rows = self.db.execute("SELECT id, attachments FROM messages WHERE attachments != '[]'").fetchall()
        for message_id, stored in rows:
            index_attachments(self.db, message_id,
                              [Attachment.from_dict(a, self.attachments_root) for a in json.loads(stored)])

    @property
    def journal_mode(self) -> str:
        return self.db.execute("PRAGMA journal_mode").fetchone()[0]

    # conversations

    def create_conversation(self, title: str = DEFAULT_TITLE, model: str = "") -> Conversation:
        now = time.time()
        with self.db:
            cursor = self.db.execute("INSERT INTO conversations(title, created_at, updated_at, model) VALUES (?,?,?,?)",
                                     (title, now, now, model))
        return Conversation(cursor.lastrowid, title, now, now, model)

    def conversation(self, conversation_id: int) -> Optional[Conversation]:
        row = self.db.execute("SELECT id, title, created_at, updated_at, model FROM conversations WHERE id=?",
                              (conversation_id,)).fetchone()
        return Conversation(*row) if row else None

    def conversations(self, include_empty: bool = True) -> list[Conversation]:
        """All conversations, most recently updated first; without `include_empty`, only those with a message
        (a chat that so far only has a file attached to its composer is not a chat in the list yet)."""
        having = "" if include_empty else \
            "WHERE EXISTS (SELECT 1 FROM messages m WHERE m.conversation_id = c.id) "
        rows = self.db.execute("SELECT id, title, created_at, updated_at, model FROM conversations c "
                               f"{having}ORDER BY updated_at DESC, id DESC").fetchall()
        return [Conversation(*row) for row in rows]

    def rename_conversation(self, conversation_id: int, title: str) -> None:
        title = " ".join(title.split()) or DEFAULT_TITLE
        with self.db:
            self.db.execute("UPDATE conversations SET title=? WHERE id=?", (title, conversation_id))

    def delete_conversation(self, conversation_id: int) -> None:
        with self.db:
            self.db.execute("DELETE FROM messages WHERE conversation_id=?", (conversation_id,))
            self.db.execute("DELETE FROM conversations WHERE id=?", (conversation_id,))

    def _touch(self, conversation_id: int, model: Optional[str] = None) -> None:
        if model:
            self.db.execute("UPDATE conversations SET updated_at=?, model=? WHERE id=?",
                            (time.time(), model, conversation_id))
        else:
            self.db.execute("UPDATE conversations SET updated_at=? WHERE id=?", (time.time(), conversation_id))

    # messages

    def _attachments_json(self, attachments: list[Attachment]) -> str:
        return json.dumps([a.to_dict(self.attachments_root) for a in attachments], ensure_ascii=False)

    def add_message(self, conversation_id: int, role: str, content: str = "", *, thought: str = "",
                    attachments: Optional[list[Attachment]] = None, tool_calls: Optional[list[dict]] = None,
                    stats: Optional[dict] = None, partial: bool = False, model: Optional[str] = None) -> Message:
        """Append a message to a conversation (a first user message also names the conversation)."""
        if role not in ("user", "assistant"):
            raise ValueError(f"role must be 'user' or 'assistant', not {role!r}")
        attachments = list(attachments or [])
        now = time.time()
        with self.db:
            position = self.db.execute("SELECT COALESCE(MAX(position) + 1, 0) FROM messages WHERE conversation_id=?",
                                       (conversation_id,)).fetchone()[0]
            cursor = self.db.execute(
                "INSERT INTO messages(conversation_id, position, role, content, thought, tool_calls, attachments, "
                "stats, partial, created_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (conversation_id, position, role, content, thought, json.dumps(tool_calls or [], ensure_ascii=False),
                 self._attachments_json(attachments), json.dumps(stats) if stats is not None else None,
                 int(partial), now))
            index_attachments(self.db, cursor.lastrowid, attachments)
            if role == "user" and position == 0:
                title = content or (attachments[0].name if attachments else "")
                current = self.conversation(conversation_id)
                if current and current.title == DEFAULT_TITLE:
                    self.db.execute("UPDATE conversations SET title=? WHERE id=?",
                                    (title_from_text(title), conversation_id))
            self._touch(conversation_id, model)
        return Message(cursor.lastrowid, conversation_id, position, role, content, thought, list(tool_calls or []),
                       attachments, stats, partial, now)

    def update_message(self, message_id: int, *, content: Optional[str] = None, thought: Optional[str] = None,
                       tool_calls: Optional[list[dict]] = None, stats: Optional[dict] = None,
                       partial: Optional[bool] = None) -> None:
        """Change the given fields of a stored message."""
        updates: dict[str, Any] = {}
        if content is not None:
            updates["content"] = content
        if thought is not None:
            updates["thought"] = thought
        if tool_calls is not None:
            updates["tool_calls"] = json.dumps(tool_calls, ensure_ascii=False)
        if stats is not None:
            updates["stats"] = json.dumps(stats)
        if partial is not None:
            updates["partial"] = int(partial)
        if not updates:
            return
        with self.db:
            self.db.execute(f"UPDATE messages SET {', '.join(f'{k}=?' for k in updates)} WHERE id=?",
                            (*updates.values(), message_id))
            row = self.db.execute("SELECT conversation_id FROM messages WHERE id=?", (message_id,)).fetchone()
            if row:
                self._touch(row[0])

    def _message(self, row) -> Message:
        (mid, cid, position, role, content, thought, tool_calls, attachments, stats, partial, created) = row
        return Message(mid, cid, position, role, content, thought, json.loads(tool_calls),
                       [Attachment.from_dict(a, self.attachments_root) for a in json.loads(attachments)],
                       json.loads(stats) if stats else None, bool(partial), created)

    def messages(self, conversation_id: int) -> list[Message]:
        rows = self.db.execute(
            "SELECT id, conversation_id, position, role, content, thought, tool_calls, attachments, stats, partial, "
            "created_at FROM messages WHERE conversation_id=? ORDER BY position", (conversation_id,)).fetchall()
        return [self._message(row) for row in rows]

    def delete_messages_from(self, conversation_id: int, position: int) -> None:
        """Delete the message at `position` and every later one (regenerate, edit the last message)."""
        with self.db:
            self.db.execute("DELETE FROM messages WHERE conversation_id=? AND position>=?", (conversation_id, position))
            self._touch(conversation_id)

    # search and export

    def search(self, text: str, limit: int = 50) -> list[SearchHit]:
        """Conversations that contain every word of `text` (as word prefixes, in any of their messages, the
        names and documents attached to them, or the title), best match first, each with a snippet whose
        matched words are marked."""
        titles = {c.id: (c.title, c.updated_at) for c in self.conversations(include_empty=False)}
        return search(self.db, titles, text, limit)

    def export_json(self, conversation_id: int, attachments_folder: Optional[Path] = None) -> str:
        """The conversation as JSON (messages with thoughts, tool calls, attachments and stats). With
        `attachments_folder` (beside the exported file), the attachments are copied there and named by paths
        relative to the file, so the export stands alone."""
        return history_export.export_json(self._require(conversation_id), self.messages(conversation_id),
                                          attachments_folder)

    def export_markdown(self, conversation_id: int, attachments_folder: Optional[Path] = None) -> str:
        """The conversation as a Markdown document (attachments copied and linked as for `export_json`)."""
        return history_export.export_markdown(self._require(conversation_id), self.messages(conversation_id),
                                              attachments_folder)

    def _require(self, conversation_id: int) -> Conversation:
        conversation = self.conversation(conversation_id)
        if conversation is None:
            raise HistoryError(f"Conversation {conversation_id} does not exist (deleted?).")
        return conversation


def model_messages(messages: list[Message], system_prompt: str = "",
                   model: Optional[dict] = None) -> list[dict]:
    """The conversation as the model reads it: documents as text before the question, media as parts.

    A document that can no longer be read contributes a note saying so instead of failing the turn, and so
    does an image, recording or video that `model` (the engine's model info) cannot take.
    """
    out: list[dict] = []
    if system_prompt.strip():
        out.append({"role": "system", "content": system_prompt.strip()})
    for m in messages:
        if m.role == "assistant":
            if any(isinstance(c, dict) and c.get("status") for c in m.tool_calls):
                out.extend(replay_messages(m.content, m.tool_calls))  # an agent's answer: calls, results, text
            elif m.content or not m.tool_calls:
                out.append({"role": "assistant", "content": m.content})
            continue
        media, texts = [], []
        for a in m.attachments:
            if a.kind in ("image", "audio", "video"):
                if model_cannot_read(a, model):
                    texts.append(f"[{a.name} ({a.kind}) was attached, but this model cannot take "
                                 f"{a.kind} files, so it was left out.]")
                else:
                    media.append({"type": a.kind, "path": str(a.path)})
            else:
                texts.append(_document_for_model(a))
        text = "\n\n".join(texts + ([m.content] if m.content else []))
        if media:
            out.append({"role": "user", "content": media + [{"type": "text", "text": text}]})
        else:
            out.append({"role": "user", "content": text})
    return out


def _document_for_model(a: Attachment) -> str:
    try:
        text = document_text(Path(a.path), a.kind, a.meta.get("encoding"))  # as its chip showed
    except DocumentError as error:
        return f"[The attached document {a.name} could not be read: {error}]"
    limit = a.meta.get("max_chars")
    if limit and len(text) > limit:  # the person chose to trim it to fit the context
        text = text[: int(limit)] + f"\n[… the rest of {a.name} was left out to fit the context …]"
    return wrap_document(a.name, text)


def raw_prompt(message: Message) -> str:
    """What a base model (which continues text, with no chat format) is given for `message`: the text of its
    documents, then the message. Images, audio and video are left out (`left_out_notice` says so)."""
    documents = [_document_for_model(a) for a in message.attachments if a.is_document]
    return "\n\n".join(documents + ([message.content] if message.content else []))


def left_out_notice(messages: list[Message], model: Optional[dict]) -> Optional[str]:
    """What the model will not receive of `messages` (the conversation, the question last), in a sentence
    for the person; None when it receives all of it."""
    if model is None or not messages:
        return None
    name = model.get("name") or "This model"
    last, earlier = messages[-1], messages[:-1]
    if not model.get("chat", True):
        parts = []
        if earlier:
            parts.append(f"the {len(earlier)} earlier message{'s' if len(earlier) != 1 else ''} of this chat")
        media = [a.name for a in last.attachments if a.kind in ("image", "audio", "video")]
        if media:
            parts.append(_names(media))
        if not parts:
            return None
        return (f"{name} is not a chat model: it continues the text of this message only. Left out: "
                f"{' and '.join(parts)}. Choose a Gemma 4 model to chat.")
    now = [(a, model_cannot_read(a, model)) for a in last.attachments]
    now = [(a, why) for a, why in now if why]
    before = [a for m in earlier if m.role == "user" for a in m.attachments if model_cannot_read(a, model)]
    if not now and not before:
        return None
    reasons = sorted({why for _, why in now} | {model_cannot_read(a, model) for a in before})
    pieces = []
    if now:
        pieces.append(_names([a.name for a, _ in now]))
    if before:
        pieces.append(f"{len(before)} attachment{'s' if len(before) != 1 else ''} from earlier in this chat")
    return f"{' '.join(reasons)} Left out: {' and '.join(pieces)}."


def _names(names: list[str]) -> str:
    if len(names) <= 2:
        return " and ".join(names)
    return f"{names[0]}, {names[1]} and {len(names) - 2} more"
