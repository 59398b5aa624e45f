"""`main()`: start the desktop app (the window, the engine thread, history and settings)."""

from __future__ import annotations

import argparse
import faulthandler
import os
import sys
from pathlib import Path
from typing import Optional, Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gemma4-mac", description="Open the Gemma 4 window.")
    parser.add_argument("--model", help="folder of a converted model to load (default: the one in Settings)")
    parser.add_argument("--home", help="data folder for settings, history and attachments (default: the app's)")
    parser.add_argument("--theme", choices=("system", "light", "dark"), help="override the appearance")
    parser.add_argument("--fake-engine", action="store_true", help="scripted replies without a model (demos)")
    return parser


def build_app(argv: Sequence[str], *, backend=None, recorder=None):
    """Create the QApplication, window, engine and controller; returns (app, window, controller)."""
    from PySide6.QtCore import QCoreApplication
    from PySide6.QtWidgets import QApplication

    from gemma4_mac.attachments import AttachmentStore
    from gemma4_mac.fake_backend import FakeBackend
    from gemma4_mac.history import HistoryError, HistoryStore
    from gemma4_mac.paths import APP_NAME, app_data_dir, attachments_dir, history_path, models_dir, settings_path
    from gemma4_mac.settings import load_settings, save_settings
    from gemma4_mac.startup_guard import StartupGuard

    from .controller import ChatController
    from .engine import Engine
    from .icons import app_icon
    from .main_window import MainWindow
    from .theme import ThemeManager

    args = build_parser().parse_args(list(argv))
    if args.home:
        os.environ["GEMMA4_MAC_HOME"] = str(Path(args.home).expanduser())
    QCoreApplication.setApplicationName(APP_NAME)
    QCoreApplication.setOrganizationName("Gemma 4 on macOS")
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setWindowIcon(app_icon())
    settings, warnings = load_settings(settings_path())
    guard = StartupGuard(app_data_dir())
    guarded = guard.begin(settings)  # a start that never finished turns off what it had on
    if guarded.turned_off:
        settings = guarded.settings
        warnings.append(guarded.message)
        try:
            save_settings(settings, settings_path())
        except (OSError, ValueError) as error:
            warnings.append(f"Settings could not be saved: {error}")
    if args.model:
        settings.model_path = str(Path(args.model).expanduser())
    theme = ThemeManager(app, args.theme or settings.theme)
    window = MainWindow()
    try:
        history = HistoryStore(history_path(), attachments_dir())
    except HistoryError as error:
        from PySide6.QtWidgets import QMessageBox

        QMessageBox.critical(None, "Gemma", str(error))
        raise SystemExit(1) from error
    engine = Engine(backend or (FakeBackend(token_delay=0.02) if args.fake_engine else None))
    controller = ChatController(window, engine, history, AttachmentStore(attachments_dir()), settings,
                                settings_path=settings_path(), theme=theme, recorder=recorder,
                                models_root=models_dir(), load_starter=guarded.load_starter and not args.model)
    window.apply_palette(theme.palette)
    if warnings:
        window.banner.show_message("\n".join(warnings), "warning")
    controller.startup_guard = guard  # Qt holds slots of plain Python objects weakly: keep the guard alive
    controller.startupSettled.connect(guard.finish)
    app.aboutToQuit.connect(controller.shutdown)
    app.aboutToQuit.connect(guard.finish)  # quitting while still starting is not a failed start
    window.shortcuts["quit"].activated.connect(app.quit)
    return app, window, controller


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Open the window and run until it is closed; the process then ends with the exit status (or this
    returns one when the window cannot start)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        from PySide6.QtWidgets import QApplication  # noqa: F401
    except ImportError as error:
        sys.stderr.write(f"error: the window needs PySide6 ({error}). Install it with `pip install PySide6`.\n")
        return 2
    known, _ = build_parser().parse_known_args(argv)
    if known.home:  # the crash log goes to the data folder the app will use
        os.environ["GEMMA4_MAC_HOME"] = str(Path(known.home).expanduser())
    crash_log = _open_crash_log()
    app, window, controller = build_app(argv)
    from .tray import install_menu_bar

    bar = install_menu_bar(app, window, controller)  # menu-bar item, global hotkey, quick-ask panel
    if not (controller.settings.menu_bar_only and bar.tray.available):
        window.show()
        window.composer.edit.setFocus()  # ready for typing, as a Mac chat app opens
    controller.start()
    try:
        status = app.exec()  # `bar` stays referenced until here; aboutToQuit closes the hotkey and panel
    finally:
        if crash_log is not None:
            faulthandler.disable()
            crash_log.close()
    end_process(status, controller.history)


def end_process(status: int, history) -> None:
    """End the app's process now that the window has shut down (the answer being written is saved, the model
    thread was told to stop): quitting takes well under a second.

    The interpreter's own teardown would take seconds (a large model and Qt are freed piece by piece), and
    if the model thread is still inside MLX (a long prompt is read in chunks; cancelling waits for the one
    under way) the process would abort when that thread wakes during teardown. So the last steps run here
    (history closed, logs flushed, exit handlers) and the process ends without the teardown."""
    import atexit
    import logging

    history.close()
    logging.shutdown()
    atexit._run_exitfuncs()  # what a normal exit would run: temporary folders, library hooks
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _open_crash_log():
    """Native crashes (an abort in a library) write every thread's Python stack to crash.log in the data folder;
    the previous start's log, if it has one, is kept as last-crash.log."""
    from gemma4_mac.paths import app_data_dir

    try:
        folder = app_data_dir()
        log = folder / "crash.log"
        if log.exists() and log.stat().st_size:
            log.replace(folder / "last-crash.log")
        handle = open(log, "w", encoding="utf-8")
    except OSError:
        return None  # a read-only data folder: the app runs without a crash log
    faulthandler.enable(file=handle, all_threads=True)
    return handle


if __name__ == "__main__":
    sys.exit(main())
