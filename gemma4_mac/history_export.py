"""A conversation as Markdown or JSON that stands alone: its attachments are copied into a folder beside the
exported file and named by paths relative to it (never by paths inside the app's private data folder)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Optional

from .attachments import sanitize_filename


def iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit in ("B", "KB") else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def format_stats(stats: dict) -> str:
    """The line under an answer: prompt tokens, time to first token, speed, drafted tokens kept, peak
    memory."""
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


def copy_attachments(messages: list, folder: Optional[Path]) -> dict[str, str]:
    """Copy every attachment of `messages` into `folder` (made when there is one); returns each stored
    path -> its path relative to the folder's parent, where the exported file lies. A file that is gone
    from the data folder is left out of the map (the export then names it only)."""
    relative: dict[str, str] = {}
    if folder is None:
        return relative
    folder = Path(folder)
    taken: set[str] = set()
    for message in messages:
        for a in message.attachments:
            source = Path(a.path)
            if str(source) in relative or not source.is_file():
                continue
            name = sanitize_filename(a.name or source.name)
            stem, suffix = Path(name).stem, Path(name).suffix
            n = 2
            while name.lower() in taken:
                name, n = f"{stem} ({n}){suffix}", n + 1
            taken.add(name.lower())
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, folder / name)
            relative[str(source)] = f"{folder.name}/{name}"
    return relative


def export_json(conversation: Any, messages: list, attachments_folder: Optional[Path] = None) -> str:
    """The conversation as JSON (messages with thoughts, tool calls, attachments and stats); attachments are
    copied into `attachments_folder` and named by their path relative to the exported file."""
    copied = copy_attachments(messages, attachments_folder)
    data = {
        "title": conversation.title, "model": conversation.model,
        "created_at": iso(conversation.created_at), "updated_at": iso(conversation.updated_at),
        "messages": [{"role": m.role, "content": m.content, "thought": m.thought, "tool_calls": m.tool_calls,
                      "attachments": [_attachment(a, copied) for a in m.attachments],
                      "stats": m.stats, "partial": m.partial, "created_at": iso(m.created_at)}
                     for m in messages],
    }
    return json.dumps(data, indent=2, ensure_ascii=False)


def _attachment(a, copied: dict[str, str]) -> dict:
    entry = {"kind": a.kind, "name": a.name, "size": a.size}
    path = copied.get(str(a.path))
    if path is not None:
        entry["path"] = path
    return entry


def export_markdown(conversation: Any, messages: list, attachments_folder: Optional[Path] = None) -> str:
    """The conversation as a Markdown document; attachments copied into `attachments_folder` are linked."""
    copied = copy_attachments(messages, attachments_folder)
    lines = [f"# {conversation.title}", ""]
    meta = f"Exported {iso(time.time())}"
    if conversation.model:
        meta += f" · model: {conversation.model}"
    lines += [f"_{meta}_", ""]
    for m in messages:
        lines += ["## You" if m.role == "user" else "## Gemma", ""]
        if m.attachments:
            lines += [_attachment_line(a, copied) for a in m.attachments] + [""]
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


def _attachment_line(a, copied: dict[str, str]) -> str:
    path = copied.get(str(a.path))
    if path is None:
        return f"- Attached {a.kind}: `{a.name}`"
    link = path.replace(" ", "%20").replace("(", "%28").replace(")", "%29")
    return f"- Attached {a.kind}: [{a.name}]({link})"
