"""Tools the app offers without any MCP server (each off until the person turns it on in Settings).

- `current_time`: today's date, the time and the time zone;
- `list_folder`: what a folder holds (names, kinds, sizes);
- `read_file`: the text of a text file or PDF, or an image as an image.

The file tools only read, and only what the person named: a path the model asks for must be, or lie
inside, a path written in one of the person's own messages of this chat (`~/Documents/March` lets the
model read the invoices in that folder; it cannot wander into ~/.ssh on its own).
"""

from __future__ import annotations

import os
import re
import stat
import time
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable, Optional

from .attachments import kind_for
from .documents import DocumentError, document_text
from .mcp_client import ToolInfo, ToolOutput
from .mcp_config import BUILTIN_SERVER
MAX_FILE_CHARS = 60_000  # what one read returns at most (about 15,000 tokens)
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_ENTRIES = 200
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".webp": "image/webp", ".bmp": "image/bmp"}
# a path as people write one: absolute or from home, up to a space that is not escaped, or in quotes
_QUOTED_PATH = re.compile(r"""["'`“‘]((?:~|/)[^"'`”’\n]+)["'`”’]""")
_BARE_PATH = re.compile(r"""(?<![\w/])((?:~|/)(?:\\ |[^\s"'`<>|])+)""")
_PATH_PROPERTY = {"path": {"type": "string", "description": "The full path, as the person wrote it "
                                                            "(~ for the home folder)."}}


class BuiltinToolError(ValueError):
    """A built-in tool that cannot do what was asked; the message is what the model (and the person) read."""


def named_paths(texts: Iterable[str]) -> list[Path]:
    """The paths written in `texts` (the person's messages), expanded and resolved."""
    found: list[Path] = []
    for text in texts:
        candidates = [m.group(1) for m in _QUOTED_PATH.finditer(text)]
        unquoted = _QUOTED_PATH.sub(" ", text)  # a quoted path's first word is not a path of its own
        candidates += [m.group(1).replace("\\ ", " ").rstrip(".,;:!?)]}") for m in _BARE_PATH.finditer(unquoted)]
        for candidate in candidates:
            if candidate in ("/", "~") or len(candidate) < 2:
                continue
            path = Path(os.path.expanduser(candidate)).resolve()
            if path not in found:
                found.append(path)
    return found


def _allowed(path: Path, named: list[Path]) -> bool:
    return any(path == root or root in path.parents for root in named if str(root) != "/")


def _checked_path(arguments: dict, person_texts: list[str]) -> Path:
    raw = arguments.get("path")
    if not isinstance(raw, str) or not raw.strip():
        raise BuiltinToolError("give the path of the file or folder, as the person wrote it")
    path = Path(os.path.expanduser(raw.strip())).resolve()
    if not _allowed(path, named_paths(person_texts)):
        raise BuiltinToolError(f"the person has not named {raw.strip()} (or a folder holding it) in this chat; "
                               "ask them to write its full path")
    if not path.exists():
        raise BuiltinToolError(f"{raw.strip()} does not exist")
    return path


def _size(bytes_: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if bytes_ < 1024 or unit == "GB":
            return f"{bytes_:.0f} {unit}" if unit == "bytes" else f"{bytes_:.1f} {unit}"
        bytes_ /= 1024
    return ""


def current_time(_arguments: dict, _person_texts: list[str]) -> ToolOutput:
    now = datetime.now().astimezone()
    zone = now.tzname() or time.strftime("%Z")
    return ToolOutput(text=f"{now:%A %d %B %Y}, {now:%H:%M:%S} ({zone}, UTC{now:%z}); ISO 8601: "
                           f"{now.isoformat(timespec='seconds')}")


def list_folder(arguments: dict, person_texts: list[str]) -> ToolOutput:
    folder = _checked_path(arguments, person_texts)
    if not folder.is_dir():
        raise BuiltinToolError(f"{folder} is a file, not a folder; read it with read_file")
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name.lower())
    except OSError as error:
        raise BuiltinToolError(f"{folder} cannot be listed: {error.strerror or error}") from error
    lines = []
    for entry in entries:
        if entry.name.startswith("."):
            continue  # hidden files, as Finder shows the folder
        try:
            info = entry.stat()
        except OSError:
            continue
        if stat.S_ISDIR(info.st_mode):
            lines.append(f"{entry.name}/ (folder)")
        else:
            modified = datetime.fromtimestamp(info.st_mtime).strftime("%Y-%m-%d %H:%M")
            lines.append(f"{entry.name} ({_size(info.st_size)}, modified {modified})")
    shown = lines[:MAX_ENTRIES]
    more = f"\n… and {len(lines) - MAX_ENTRIES} more" if len(lines) > MAX_ENTRIES else ""
    return ToolOutput(text=f"{folder}:\n" + ("\n".join(shown) or "(empty)") + more)


def read_file(arguments: dict, person_texts: list[str]) -> ToolOutput:
    path = _checked_path(arguments, person_texts)
    if path.is_dir():
        raise BuiltinToolError(f"{path} is a folder; list it with list_folder")
    suffix = path.suffix.lower()
    try:
        if suffix in IMAGE_TYPES:
            if path.stat().st_size > MAX_IMAGE_BYTES:
                raise BuiltinToolError(f"{path.name} is larger than {_size(MAX_IMAGE_BYTES)}")
            return ToolOutput(text=f"{path.name}:", images=[(path.read_bytes(), IMAGE_TYPES[suffix])])
        kind = kind_for(path)
        if kind in ("audio", "video"):
            raise BuiltinToolError(f"{path.name} is {kind}; attach it to a message instead")
        text = document_text(path, "pdf" if kind == "pdf" else "text")
    except DocumentError as error:
        raise BuiltinToolError(str(error)) from error
    except OSError as error:
        raise BuiltinToolError(f"{path} cannot be read: {error.strerror or error}") from error
    if len(text) > MAX_FILE_CHARS:
        text = text[:MAX_FILE_CHARS] + f"\n[… the rest of {path.name} ({len(text) - MAX_FILE_CHARS:,} more " \
                                       "characters) was left out]"
    return ToolOutput(text=text)


_TOOLS: dict[str, tuple[str, dict, Callable[[dict, list[str]], ToolOutput]]] = {
    "current_time": ("The current date, time of day and time zone.", {}, current_time),
    "list_folder": ("List the files and folders in a folder the person named.", _PATH_PROPERTY, list_folder),
    "read_file": ("Read a file the person named: the text of a text file or PDF, or an image.",
                  _PATH_PROPERTY, read_file),
}
BUILTIN_NAMES = tuple(_TOOLS)
BUILTIN_TITLES = {"current_time": "Current date and time", "list_folder": "List a folder you name",
                  "read_file": "Read a file you name"}


def builtin_tools(enabled: Optional[Iterable[str]] = None) -> list[ToolInfo]:
    """The built-in tools (those named in `enabled`, or all); all of them only read."""
    names = BUILTIN_NAMES if enabled is None else [n for n in BUILTIN_NAMES if n in set(enabled)]
    return [ToolInfo(server=BUILTIN_SERVER, name=name, description=_TOOLS[name][0],
                     input_schema={"type": "object", "properties": dict(_TOOLS[name][1]),
                                   "required": list(_TOOLS[name][1])},
                     title=BUILTIN_TITLES[name], read_only=True) for name in names]


def run_builtin(name: str, arguments: dict, person_texts: list[str]) -> ToolOutput:
    """Run a built-in tool; a problem comes back as an error result the model reads (never an exception)."""
    entry = _TOOLS.get(name)
    if entry is None:
        return ToolOutput(text=f"there is no built-in tool {name!r}", is_error=True)
    try:
        return entry[2](arguments if isinstance(arguments, dict) else {}, person_texts)
    except BuiltinToolError as error:
        return ToolOutput(text=str(error), is_error=True)
