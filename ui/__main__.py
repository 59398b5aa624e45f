"""`gemma4-mac` / `python -m ui`: open the window; `gemma4-mac ask|plan|serve ...` runs a terminal command."""

from __future__ import annotations

import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Dispatch to the terminal commands (gemma4_mac) or open the window; returns the exit status."""
    from gemma4_mac.__main__ import is_command
    from gemma4_mac.__main__ import main as command_main

    argv = list(sys.argv[1:] if argv is None else argv)
    if is_command(argv):
        return command_main(argv)
    from .app import main as app_main

    return app_main(argv)


if __name__ == "__main__":
    sys.exit(main())
