"""`python -m gemma4_mac` opens the app; `python -m gemma4_mac ask ...` and `serve ...` run from the terminal."""

from __future__ import annotations

import sys
from typing import Optional, Sequence

COMMANDS = {"ask", "plan", "serve"}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Dispatch to the command line, the server or the window."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":
        from .server import main as serve_main

        return serve_main(argv[1:], err=sys.stderr)
    if argv and (argv[0] in COMMANDS or argv[0] in ("-h", "--help")):
        from .cli import main as cli_main

        return cli_main(argv)
    from .app import main as app_main

    return app_main(argv)


if __name__ == "__main__":
    sys.exit(main())
