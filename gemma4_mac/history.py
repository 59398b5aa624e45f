"""Conversation history in SQLite (WAL mode) with FTS5 full-text search and Markdown/JSON export."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .attachments import Attachment
from .documents import DocumentError, document_text, wrap_document

SCHEMA_VERSION = 1
HIT_START, HIT_END = "\x02", "\x03"  # marks around matched words in search snippets
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


@dataclass
class SearchHit:
    """A conversation that matches a search, with the best-matching snippet (matches marked)."""

    conversation_id: int
    title: str
    snippet: str
    message_id: Optional[int]
    updated_at: float


def fts_query(text: str) -> Optional[str]:
    """An FTS5 query matching all words of `text` as prefixes; None when it has no words."""
    words = re.findall(r"\w+", text, flags=re.UNICODE)
    return " ".join(f'"{w}"*' for w in words) if words else None


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
            self.db.executescript(_SCHEMA)
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self.db.commit()
        except sqlite3.DatabaseError as error:
            raise HistoryError(f"The history database {self.path} cannot be opened ({error}). Move it away "
                               "to start a fresh history; the old file is left untouched.") from error

    def close(self) -> None:
        self.db.close()

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

    def conversations(self) -> list[Conversation]:
        """All conversations, most recently updated first."""
        rows = self.db.execute("SELECT id, title, created_at, updated_at, model FROM conversations "
                               "ORDER BY updated_at DESC, id DESC").fetchall()
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
        """Conversations that contain every word of `text` (as word prefixes, in any of their messages or the
        title), best match first, each with a snippet whose matched words are marked."""
        words = re.findall(r"\w+", text, flags=re.UNICODE)
        if not words:
            return []
        titles = {c.id: c for c in self.conversations()}
        matching: Optional[set[int]] = None
        for word in words:
            rows = self.db.execute("SELECT DISTINCT m.conversation_id FROM messages_fts "
                                   "JOIN messages m ON m.id = messages_fts.rowid WHERE messages_fts MATCH ?",
                                   (fts_query(word),)).fetchall()
            found = {row[0] for row in rows}
            found |= {cid for cid, c in titles.items() if _title_has(c.title, word)}
            matching = found if matching is None else matching & found
        hits: dict[int, SearchHit] = {}
        for query in (fts_query(text), " OR ".join(f'"{w}"*' for w in words)):
            rows = self.db.execute(
                "SELECT m.conversation_id, m.id, "
                f"snippet(messages_fts, -1, '{HIT_START}', '{HIT_END}', '…', 14) "
                "FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid "
                "WHERE messages_fts MATCH ? ORDER BY bm25(messages_fts)", (query,)).fetchall()
            for cid, mid, snippet in rows:
                if cid in matching and cid not in hits and cid in titles:
                    hits[cid] = SearchHit(cid, titles[cid].title, snippet, mid, titles[cid].updated_at)
        for cid in sorted(matching - hits.keys(), key=lambda c: -titles[c].updated_at if c in titles else 0):
            if cid in titles:
                hits[cid] = SearchHit(cid, titles[cid].title, "", None, titles[cid].updated_at)
        return list(hits.values())[:limit]

    def export_json(self, conversation_id: int) -> str:
        """The conversation as JSON (messages with thoughts, tool calls, attachments and stats)."""
        conversation = self._require(conversation_id)
        data = {
            "title": conversation.title, "model": conversation.model,
            "created_at": _iso(conversation.created_at), "updated_at": _iso(conversation.updated_at),
            "messages": [{"role": m.role, "content": m.content, "thought": m.thought, "tool_calls": m.tool_calls,
                          "attachments": [{"kind": a.kind, "name": a.name, "path": str(a.path)} for a in m.attachments],
                          "stats": m.stats, "partial": m.partial, "created_at": _iso(m.created_at)}
                         for m in self.messages(conversation_id)],
        }
        return json.dumps(data, indent=2, ensure_ascii=False)

    def export_markdown(self, conversation_id: int) -> str:
        """The conversation as a Markdown document."""
        conversation = self._require(conversation_id)
        lines = [f"# {conversation.title}", ""]
        meta = f"Exported {_iso(time.time())}"
        if conversation.model:
            meta += f" · model: {conversation.model}"
        lines += [f"_{meta}_", ""]
        for m in self.messages(conversation_id):
            lines += ["## You" if m.role == "user" else "## Gemma", ""]
            if m.attachments:
                lines += [f"- Attached {a.kind}: `{a.name}`" for a in m.attachments] + [""]
            if m.thought:
                lines += ["<details><summary>Thinking</summary>", "", m.thought.strip(), "", "</details>", ""]
            for call in m.tool_calls:
                lines += [f"Tool call `{call.get('name')}`:", "", "```json",
                          json.dumps(call.get("arguments", {}), indent=2, ensure_ascii=False), "```", ""]
            if m.content:
                lines += [m.content.strip(), ""]
            if m.partial:
                lines += ["_(stopped before the end)_", ""]
            if m.stats:
                lines += [f"_{format_stats(m.stats)}_", ""]
        return "\n".join(lines).rstrip() + "\n"

    def _require(self, conversation_id: int) -> Conversation:
        conversation = self.conversation(conversation_id)
        if conversation is None:
            raise HistoryError(f"Conversation {conversation_id} does not exist (deleted?).")
        return conversation


def _title_has(title: str, word: str) -> bool:
    return any(w.startswith(word.lower()) for w in re.findall(r"\w+", title.lower()))


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit in ("B", "KB") else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def format_stats(stats: dict) -> str:
    """The line under an answer: prompt tokens, time to first token, speed, peak memory."""
    parts = [f"{stats.get('prompt_tokens', 0):,} prompt tokens"]
    if stats.get("cached_tokens"):
        parts[-1] += f" ({stats['cached_tokens']:,} cached)"
    parts.append(f"{stats.get('time_to_first_token', 0.0):.2f} s to first token")
    parts.append(f"{stats.get('generation_tps', 0.0):.1f} tok/s")
    if stats.get("drafted_tokens"):  # speculative decoding: how many drafted tokens the model kept
        kept = stats.get("accepted_tokens", 0)
        parts.append(f"{kept:,} of {stats['drafted_tokens']:,} drafted tokens kept")
    if stats.get("peak_memory_bytes"):
        parts.append(f"{format_bytes(stats['peak_memory_bytes'])} peak")
    reason = stats.get("finish_reason")
    if reason == "length":
        parts.append("stopped at the token limit")
    elif reason == "cancelled":
        parts.append("stopped")
    return " · ".join(parts)


def model_messages(messages: list[Message], system_prompt: str = "") -> list[dict]:
    """The conversation as the model reads it: documents as text before the question, media as parts.

    A document that can no longer be read contributes a note saying so instead of failing the turn.
    """
    out: list[dict] = []
    if system_prompt.strip():
        out.append({"role": "system", "content": system_prompt.strip()})
    for m in messages:
        if m.role == "assistant":
            if m.content or not m.tool_calls:
                out.append({"role": "assistant", "content": m.content})
            continue
        media, texts = [], []
        for a in m.attachments:
            if a.kind in ("image", "audio", "video"):
                media.append({"type": a.kind, "path": str(a.path)})
            else:
                try:
                    text = document_text(Path(a.path), a.kind, a.meta.get("encoding"))  # as its chip showed
                    limit = a.meta.get("max_chars")
                    if limit and len(text) > limit:  # the person chose to trim it to fit the context
                        text = text[: int(limit)] + f"\n[… the rest of {a.name} was left out to fit the context …]"
                    texts.append(wrap_document(a.name, text))
                except DocumentError as error:
                    texts.append(f"[The attached document {a.name} could not be read: {error}]")
        text = "\n\n".join(texts + ([m.content] if m.content else []))
        if media:
            out.append({"role": "user", "content": media + [{"type": "text", "text": text}]})
        else:
            out.append({"role": "user", "content": text})
    return out
