"""Where the app keeps its data: settings, history, attachments, models and caches.

macOS: ~/Library/Application Support/Gemma 4 on macOS; elsewhere the XDG data folder. The
environment variable GEMMA4_MAC_HOME overrides both (tests point it at a temporary folder).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

APP_NAME = "Gemma 4 on macOS"
HOME_ENV = "GEMMA4_MAC_HOME"


def app_data_dir(create: bool = True) -> Path:
    """The app's data folder (created on first use)."""
    override = os.environ.get(HOME_ENV)
    if override:
        root = Path(override).expanduser()
    elif sys.platform == "darwin":
        root = Path.home() / "Library" / "Application Support" / APP_NAME
    else:
        xdg = os.environ.get("XDG_DATA_HOME")
        root = (Path(xdg) if xdg else Path.home() / ".local" / "share") / "gemma4-mac"
    if create:
        root.mkdir(parents=True, exist_ok=True)
    return root


def _sub(name: str, create: bool) -> Path:
    path = app_data_dir(create) / name
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def settings_path() -> Path:
    """settings.json in the data folder."""
    return app_data_dir() / "settings.json"


def history_path() -> Path:
    """The SQLite history database."""
    return app_data_dir() / "history.sqlite3"


def attachments_dir(create: bool = True) -> Path:
    """Copies of attached files, one sub-folder per conversation."""
    return _sub("attachments", create)


def models_dir(create: bool = True) -> Path:
    """Converted models downloaded through the model manager."""
    return _sub("models", create)


def downloads_dir(create: bool = True) -> Path:
    """Hub checkpoints being downloaded (kept until converted, so an interrupted download resumes)."""
    return _sub("downloads", create)


def document_cache_dir(create: bool = True) -> Path:
    """Saved KV prefixes of long documents."""
    return _sub("document-cache", create)
