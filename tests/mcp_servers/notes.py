"""A small MCP notes server for the tests: it reads, writes and deletes notes in a folder, returns a picture,
and can hang or crash on request.

    python -m tests.mcp_servers.notes FOLDER [--http PORT]

Notes are files in FOLDER, so a test can see what a call changed. `read_note` and `list_notes` are marked
read-only (MCP's readOnlyHint); `write_note` has no annotations (so it counts as writing) and `delete_note`
is marked destructive.
"""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

from mcp.server.mcpserver import Image, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

FOLDER = Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd()
server = MCPServer("notes")


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def list_notes() -> str:
    """List the titles of the notes."""
    return "\n".join(sorted(p.stem for p in FOLDER.glob("*.txt"))) or "(no notes)"


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def read_note(title: str) -> str:
    """Read the note with this title."""
    path = FOLDER / f"{title}.txt"
    if not path.is_file():
        raise ToolError(f"there is no note called {title!r}")
    return path.read_text(encoding="utf-8")


@server.tool()
def write_note(title: str, text: str) -> str:
    """Write (or replace) the note with this title."""
    (FOLDER / f"{title}.txt").write_text(text, encoding="utf-8")
    return f"saved {title}"


@server.tool(annotations=ToolAnnotations(destructiveHint=True))
def delete_note(title: str) -> str:
    """Delete the note with this title."""
    (FOLDER / f"{title}.txt").unlink()
    return f"deleted {title}"


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def screenshot() -> Image:
    """A picture of the notes window (a small red square)."""
    from PIL import Image as Picture

    data = io.BytesIO()
    Picture.new("RGB", (16, 16), (220, 30, 30)).save(data, "PNG")
    return Image(data=data.getvalue(), format="png")


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def wait(seconds: float) -> str:
    """Wait this many seconds, then answer (a tool that hangs, for the tests)."""
    time.sleep(seconds)
    return f"waited {seconds} s"


@server.tool()
def crash() -> str:
    """End the server at once, without an answer (a server that crashes, for the tests)."""
    sys.stderr.write("notes server: crashing on request\n")
    sys.stderr.flush()
    os._exit(3)


if __name__ == "__main__":
    if "--http" in sys.argv:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[sys.argv.index("--http") + 1]))
    else:
        server.run()
