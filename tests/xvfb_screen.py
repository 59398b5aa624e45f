"""A helper process for the Xvfb tests: it owns the X clipboard (so the app can paste from it) and saves
screenshots of the whole screen on request.

    python -m tests.xvfb_screen CLIPBOARD_TEXT_FILE     (DISPLAY set; QT_QPA_PLATFORM=xcb)

Reads commands from stdin, one a line: "shot PATH" saves the screen as PNG and answers "ok"; "quit" ends.
An X selection lives only while its owner runs, hence a process of its own.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from PySide6.QtCore import QSocketNotifier
    from PySide6.QtGui import QGuiApplication

    app = QGuiApplication(sys.argv[:1])
    QGuiApplication.clipboard().setText(Path(argv[0]).read_text(encoding="utf-8"))

    def command() -> None:
        line = sys.stdin.readline()
        if not line or line.strip() == "quit":
            app.quit()
            return
        verb, _, path = line.strip().partition(" ")
        if verb == "shot":
            QGuiApplication.primaryScreen().grabWindow(0).save(path)
        print("ok", flush=True)

    notifier = QSocketNotifier(sys.stdin.fileno(), QSocketNotifier.Read)
    notifier.activated.connect(command)
    print("ready", flush=True)
    return app.exec()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
