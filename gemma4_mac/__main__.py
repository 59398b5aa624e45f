"""`python -m gemma4_mac ask|plan|serve|mcp ...`: the terminal side of the app (no window, no Qt).

The window opens with `gemma4-mac` (or `python -m ui`), which also accepts these commands.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence, TextIO

COMMANDS = ("ask", "plan", "serve", "mcp")
WINDOW_HINT = ("The window opens with `gemma4-mac` (or `python -m ui`); `python -m gemma4_mac` runs the "
               "terminal commands: " + ", ".join(COMMANDS) + ".")


def is_command(argv: Sequence[str]) -> bool:
    """Whether `argv` asks for a terminal command (or its help) rather than the window."""
    return bool(argv) and (argv[0] in COMMANDS or argv[0] in ("-h", "--help"))


def main(argv: Optional[Sequence[str]] = None, *, err: Optional[TextIO] = None) -> int:
    """Run `ask`, `plan`, `serve` or `mcp`; returns the exit status."""
    err = err or sys.stderr
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":
        from .server.app import main as serve_main

        return serve_main(argv[1:], err=err)
    if is_command(argv):
        from .cli import main as cli_main

        return cli_main(argv)
    err.write(f"error: no command given. {WINDOW_HINT}\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
