"""A start that never finished must not lock the person out: what it had on starts off the next time.

`StartupGuard.begin(settings)` writes a marker before the risky parts of a start (loading the model,
starting the local server, the menu-bar-only mode) and `finish()` removes it once they have settled, or
when the app quits normally. If the process dies in between (a native crash, a kill), the marker is still
there at the next start: `begin` then turns those features off in the settings it returns, and says why,
so the window comes up and the person can turn them back on in Settings.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

MARKER_NAME = "starting.json"


@dataclass
class GuardedStart:
    """The settings to start with, and what was turned off because the last start never finished."""

    settings: Any
    turned_off: list[str] = field(default_factory=list)
    load_starter: bool = False  # the last start died loading this model: open with the starter instead

    @property
    def message(self) -> Optional[str]:
        """What the window tells the person, or None after a clean last start."""
        if not self.turned_off:
            return None
        return ("Gemma did not finish starting last time, so this time it started with "
                + _join(self.turned_off) + ". Turn them back on in Settings when you are ready.")


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process of that number: not ours to judge, treat as running
    return True


class StartupGuard:
    """The marker of a start under way, in the app's data folder."""

    def __init__(self, data_dir: Path):
        self.path = Path(data_dir) / MARKER_NAME

    def _previous(self) -> Optional[dict]:
        """The marker a start that never finished left behind (None when none, or its app still runs)."""
        try:
            marker = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return {}  # a marker cut off mid-write: that start died early
        if not isinstance(marker, dict):
            return {}
        return None if _alive(marker.get("pid")) else marker

    def begin(self, settings: Any) -> GuardedStart:
        """Check the last start, then mark this one as under way; returns the settings to start with."""
        previous = self._previous()
        start = GuardedStart(settings)
        if previous is not None:
            start = _safe_start(settings, previous)
        marker = {"pid": os.getpid(), "started": time.time(), "server_enabled": bool(start.settings.server_enabled),
                  "model_path": start.settings.model_path, "menu_bar_only": bool(start.settings.menu_bar_only)}
        try:
            self.path.write_text(json.dumps(marker), encoding="utf-8")
        except OSError:
            pass  # a read-only data folder: the app still starts, just without this safety net
        return start

    def finish(self) -> None:
        """The start has settled (or the app quits normally): forget the marker."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError:
            pass  # a read-only data folder: nothing was written either


def _safe_start(settings: Any, previous: dict) -> GuardedStart:
    """`settings` with the features that were on during the unfinished start turned off."""
    changes: dict[str, Any] = {}
    turned_off: list[str] = []
    load_starter = False
    if previous.get("server_enabled", settings.server_enabled) and settings.server_enabled:
        changes["server_enabled"] = False
        turned_off.append("the local server off")
    if previous.get("menu_bar_only", settings.menu_bar_only) and settings.menu_bar_only:
        changes["menu_bar_only"] = False
        turned_off.append("its window shown")
    model = previous.get("model_path", settings.model_path)
    if model and model == settings.model_path:
        changes["model_path"] = ""
        load_starter = True
        turned_off.append(f"the starter model instead of {Path(model).name}")
    return GuardedStart(dataclasses.replace(settings, **changes), turned_off, load_starter)
