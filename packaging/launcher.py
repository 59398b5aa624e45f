"""Entry point of the frozen app (PyInstaller runs this file).

`Gemma 4 [args]` opens the app as `gemma4-mac` (`python -m ui`) does. `Gemma 4 --self-test` starts the
whole app (window, engine thread, menu bar, quick-ask panel) without showing a window, asks one
question through the panel, prints the answer as JSON and exits 0; a failure exits non-zero. The
frozen-bundle test and `make bundle-test` run it offscreen.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

EXIT_FAILED, EXIT_TIMEOUT = 1, 3
if not getattr(sys, "frozen", False):  # run from a checkout: the packages sit next to packaging/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def self_test(argv: Sequence[str]) -> int:
    """Ask one question through the quick-ask panel and report; returns the exit status."""
    parser = argparse.ArgumentParser(prog="Gemma 4 --self-test")
    parser.add_argument("--question", default="Say hello.")
    parser.add_argument("--model", help="model folder (default: the app's choice)")
    parser.add_argument("--home", help="data folder (default: a new temporary one)")
    parser.add_argument("--max-tokens", type=int, default=12)
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds before giving up")
    parser.add_argument("--fake-engine", action="store_true", help="scripted replies instead of a model")
    args = parser.parse_args(list(argv))
    home = Path(args.home or tempfile.mkdtemp(prefix="gemma4-selftest-"))
    home.mkdir(parents=True, exist_ok=True)
    (home / "settings.json").write_text(json.dumps({"max_tokens": args.max_tokens, "temperature": 0.0}))

    from PySide6.QtCore import QTimer

    from gemma4_mac.hotkey_backends import ManualHotkeyBackend
    from ui.app import build_app
    from ui.tray import install_menu_bar

    app_args = ["--home", str(home)] + (["--model", args.model] if args.model else [])
    app_args += ["--fake-engine"] if args.fake_engine else []
    app, window, controller = build_app(app_args)
    hotkeys = ManualHotkeyBackend()
    bar = install_menu_bar(app, window, controller, hotkey_backend=hotkeys, tray_available=False)
    report: dict = {"home": str(home)}

    def finish(code: int, **fields) -> None:
        report.update(fields, exit=code)
        app.exit(code)

    def ask(_info: dict) -> None:
        hotkeys.press()  # the same path as the global hotkey: panel up, then the question
        QTimer.singleShot(50, lambda: report.update(panel_visible=bar.panel.isVisible()))
        QTimer.singleShot(60, lambda: bar.quick_ask.ask(args.question))

    controller.engine.modelLoaded.connect(ask)
    controller.engine.modelLoadFailed.connect(lambda message: finish(EXIT_FAILED, error=message))
    bar.quick_ask.answerFinished.connect(lambda answer, stats: finish(
        0, answer=answer, generation_tokens=stats.get("generation_tokens"), model=bar.quick_ask.model_info))
    bar.quick_ask.answerFailed.connect(lambda message: finish(EXIT_FAILED, error=message))
    QTimer.singleShot(int(args.timeout * 1000), lambda: finish(EXIT_TIMEOUT, error="timed out"))
    controller.start()
    code = app.exec()
    controller.shutdown()
    bar.quick_ask.shutdown()
    print(json.dumps(report, default=str))
    return code


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--self-test":
        return self_test(argv[1:])
    from ui.__main__ import main as app_main

    return app_main(argv)


if __name__ == "__main__":
    sys.exit(main())
