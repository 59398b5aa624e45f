"""Full-text search of the history: messages, thoughts and titles, and what was attached to messages (file
names, and the text of pasted and attached documents), with SQLite FTS5.

`HistoryStore` (history.py) keeps the indexes up to date; `search` ranks conversations and picks snippets.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from .attachments import Attachment
from .documents import DocumentError, document_text

HIT_START, HIT_END = "\x02", "\x03"  # marks around matched words in search snippets
MAX_INDEXED_CHARS = 1_000_000  # of one message's documents: enough to find a long report by its words

ATTACHMENT_INDEX = """
CREATE VIRTUAL TABLE IF NOT EXISTS attachments_fts USING fts5(
    names, body, tokenize='unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS messages_ad_attachments AFTER DELETE ON messages BEGIN
    DELETE FROM attachments_fts WHERE rowid = old.id;
END;
"""


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


def attachment_text(attachments: Iterable[Attachment]) -> tuple[str, str]:
    """(file names, documents' text) of a message's attachments, as the search index holds them."""
    attachments = list(attachments)
    names = " ".join(a.name for a in attachments)
    bodies = []
    for a in attachments:
        if a.is_document:
            try:
                bodies.append(document_text(Path(a.path), a.kind, a.meta.get("encoding")))
            except DocumentError:
                continue  # a document gone or damaged is still found by its name
    return names, "\n\n".join(bodies)[:MAX_INDEXED_CHARS]


def index_attachments(db: sqlite3.Connection, message_id: int, attachments: list[Attachment]) -> None:
    """Make a message's attachments searchable (call inside the transaction that stores the message)."""
    if attachments:
        names, body = attachment_text(attachments)
        db.execute("INSERT OR REPLACE INTO attachments_fts(rowid, names, body) VALUES (?,?,?)",
                   (message_id, names, body))


def _title_has(title: str, word: str) -> bool:
    return any(w.startswith(word.lower()) for w in re.findall(r"\w+", title.lower()))


def _attachment_snippet(names: str, snippet: str) -> str:
    """A snippet from an attachment's name as it is; one from a document's text says where it is from."""
    plain = snippet.replace(HIT_START, "").replace(HIT_END, "").strip("…")
    if plain and plain in names:
        return snippet
    where = names if len(names) <= 40 else names[:39] + "…"
    return f"In {where}: {snippet}"


def search(db: sqlite3.Connection, titles: dict[int, tuple[str, float]], text: str,
           limit: int = 50) -> list[SearchHit]:
    """Conversations (of `titles`: id -> (title, updated_at)) that contain every word of `text` as a word
    prefix, in a message, a thought, an attachment's name or a document's text, or the title; best match
    first, each with a snippet whose matched words are marked."""
    words = re.findall(r"\w+", text, flags=re.UNICODE)
    if not words:
        return []
    matching: Optional[set[int]] = None
    for word in words:
        found = set()
        for table in ("messages_fts", "attachments_fts"):
            rows = db.execute(f"SELECT DISTINCT m.conversation_id FROM {table} "
                              f"JOIN messages m ON m.id = {table}.rowid WHERE {table} MATCH ?",
                              (fts_query(word),)).fetchall()
            found |= {row[0] for row in rows}
        found |= {cid for cid, (title, _) in titles.items() if _title_has(title, word)}
        matching = found if matching is None else matching & found
    hits: dict[int, SearchHit] = {}
    for query in (fts_query(text), " OR ".join(f'"{w}"*' for w in words)):
        for table in ("messages_fts", "attachments_fts"):
            names = "attachments_fts.names" if table == "attachments_fts" else "''"
            rows = db.execute(
                f"SELECT m.conversation_id, m.id, {names}, "
                f"snippet({table}, -1, '{HIT_START}', '{HIT_END}', '…', 14) "
                f"FROM {table} JOIN messages m ON m.id = {table}.rowid "
                f"WHERE {table} MATCH ? ORDER BY bm25({table})", (query,)).fetchall()
            for cid, mid, attached, snippet in rows:
                if cid in matching and cid not in hits and cid in titles:
                    if table == "attachments_fts":
                        snippet = _attachment_snippet(attached, snippet)
                    hits[cid] = SearchHit(cid, titles[cid][0], snippet, mid, titles[cid][1])
    for cid in sorted(matching - hits.keys(), key=lambda c: -titles[c][1] if c in titles else 0):
        if cid in titles:
            hits[cid] = SearchHit(cid, titles[cid][0], "", None, titles[cid][1])
    return list(hits.values())[:limit]
