"""The app as `python -m ui` starts it (window, real engine, the MCP servers of its settings), with the tiny
model's replies forced one per turn, for tests that drive it with xdotool on a virtual display:

    python -m tests.scripted_tool_app REPLIES.json [app arguments: --home, --model, ...]

REPLIES.json is a list of reply texts (Gemma 4's tool call syntax where the model calls a tool). A random
tiny model writes no sensible call; everything after the reply is the app's own. So that a test knows where
to click, it prints one line to stdout as things appear on screen:

    WAITING <call id> <x> <y>   a call waits for approval; (x, y): the Allow button's centre on the screen
    RUNNING <tool>              a call is running
    COMPOSER <text>             the composer's text changed
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from PySide6.QtCore import QTimer

    from tests.tiny_chat_model import scripted_backend
    from ui.app import build_app, end_process

    replies = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    app, window, controller = build_app(argv[1:], backend=scripted_backend(replies))
    seen: set[str] = set()
    composer = [window.composer.text]
    allow_at: list = [None]  # where Allow was at the last look: told once it holds still (layout settled)

    def say(line: str) -> None:
        if line not in seen:
            seen.add(line)
            print(line, flush=True)

    def look() -> None:
        messages = window.transcript.messages
        for card in getattr(messages[-1], "tool_cards", []) if messages else []:
            status = card.call.get("status")
            if status == "waiting" and card.allow_button.isVisible() and card.allow_button.isEnabled():
                centre = card.allow_button.mapToGlobal(card.allow_button.rect().center())
                if allow_at[0] == (centre.x(), centre.y()):
                    say(f"WAITING {card.call_id} {centre.x()} {centre.y()}")
                allow_at[0] = (centre.x(), centre.y())
            elif status == "running":
                say(f"RUNNING {card.call.get('tool') or card.call.get('name')}")
        if window.composer.text != composer[0]:
            composer[0] = window.composer.text
            print(f"COMPOSER {composer[0]}", flush=True)

    timer = QTimer(interval=100, timeout=look)
    timer.start()
    window.show()
    window.composer.edit.setFocus()
    controller.start()
    status = app.exec()
    timer.stop()
    end_process(status, controller.history)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
