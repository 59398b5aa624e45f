"""Where a running server of this app can be found: `server.json` in the app's data folder.

The app (and `python -m gemma4_mac serve`) record their server's address there while it runs, so that a
second `serve` does not load a second copy of a model next to it: it finds the first, asks its /health
that it is alive and is this app's server, and points the person to it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from ..paths import app_data_dir

FILE_NAME = "server.json"
log = logging.getLogger(__name__)


def registry_path() -> Path:
    return app_data_dir() / FILE_NAME


def record(base_url: str, *, kind: str, api_key: bool = False) -> None:
    """Write this process's server address (atomically); a read-only data folder only loses the hint."""
    entry = {"url": base_url, "pid": os.getpid(), "kind": kind, "api_key": api_key,
             "started": int(time.time())}
    try:
        path = registry_path()
        handle, temporary = tempfile.mkstemp(prefix=".server-", suffix=".json", dir=path.parent)
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(entry, out)
        os.replace(temporary, path)
    except OSError as error:
        log.info("the server's address was not recorded (%s)", error)


def forget(base_url: str) -> None:
    """Remove the record if it is this process's server at `base_url`."""
    entry = _read()
    if entry and entry.get("pid") == os.getpid() and entry.get("url") == base_url:
        try:
            registry_path().unlink()
        except OSError as error:
            log.info("the server's address record stays (%s)", error)


def _read() -> Optional[dict]:
    try:
        entry = json.loads(registry_path().read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return entry if isinstance(entry, dict) and isinstance(entry.get("url"), str) else None


def running_server(timeout: float = 1.5) -> Optional[dict]:
    """The recorded server of another process when it answers /health as this app's server, else None.
    The entry gains "model": the model it has loaded."""
    entry = _read()
    if entry is None or entry.get("pid") == os.getpid():
        return None
    url = entry["url"].rstrip("/")
    health = (url[: -len("/v1")] if url.endswith("/v1") else url) + "/health"
    try:
        with urllib.request.urlopen(health, timeout=timeout) as response:  # noqa: S310 (loopback address we wrote)
            body = json.loads(response.read(65536) or b"null")
    except (OSError, urllib.error.URLError, ValueError):
        return None
    if not isinstance(body, dict) or body.get("server") != "gemma4-mac":
        return None
    if body.get("pid") != entry.get("pid"):  # another program took the port since
        return None
    return {**entry, "model": body.get("model")}
