"""An MCP "server" that never answers: it reads its stdin and says nothing (a server that hangs at start)."""

import sys

if __name__ == "__main__":
    for _line in sys.stdin:
        pass
