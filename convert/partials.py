"""Hidden work folders of conversions (`.NAME.partial-ID` beside the destination), and which are stale.

A running conversion holds an flock on `.converting.lock` inside its work folder (the file also names
its process id for people). The kernel drops the lock when the process ends, however it ends (SIGKILL
included), so a folder whose lock can be taken belongs to no running conversion and can be removed.
Plain Python (no MLX): the model manager counts these folders' space without loading the converter.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

PARTIAL_MARK = ".partial-"
LOCK_NAME = ".converting.lock"
# A work folder without a lock file is younger than this while its creator is still taking the lock;
# older ones were left by a converter that predates the lock.
UNLOCKED_GRACE_SECONDS = 60.0


@dataclass(frozen=True)
class WorkFolder:
    """One hidden work folder: where it is, its size on disk and whether a conversion is writing it."""

    path: Path
    size_bytes: int
    running: bool


def partial_name(destination: Path) -> str:
    """A fresh work folder name for `destination`."""
    return f".{destination.name}{PARTIAL_MARK}{uuid.uuid4().hex[:8]}"


def lock(folder: Path) -> int:
    """Take the work folder's lock for this process; returns the descriptor to keep open while converting.

    The lock is taken on a temporary name and then renamed into place, so no other process ever sees
    the lock file unlocked.
    """
    temporary = folder / f"{LOCK_NAME}.{uuid.uuid4().hex[:8]}"
    descriptor = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(descriptor, f"{os.getpid()}\n".encode())
        os.rename(temporary, folder / LOCK_NAME)
    except OSError:
        os.close(descriptor)
        raise
    return descriptor


def release(descriptor: int, lock_file: Path | None = None) -> None:
    """Remove the lock file (when given) and let go of the lock."""
    if lock_file is not None:
        try:
            lock_file.unlink()
        except FileNotFoundError:
            pass
    os.close(descriptor)


def _running(folder: Path) -> bool:
    try:
        descriptor = os.open(folder / LOCK_NAME, os.O_RDWR)
    except FileNotFoundError:
        try:
            return time.time() - folder.stat().st_mtime < UNLOCKED_GRACE_SECONDS
        except OSError:
            return False
    except OSError:
        return True  # cannot tell: leave it alone
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True  # held by a running conversion
    else:
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        return False
    finally:
        os.close(descriptor)


def _size(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def work_folders(parent: Path) -> list[WorkFolder]:
    """The conversion work folders in `parent`, running or left behind."""
    parent = Path(parent)
    if not parent.is_dir():
        return []
    found = []
    for folder in sorted(parent.glob(f".*{PARTIAL_MARK}*")):
        if folder.is_dir() and not folder.is_symlink():
            found.append(WorkFolder(folder, _size(folder), _running(folder)))
    return found


def clean_stale(parent: Path) -> list[WorkFolder]:
    """Remove the work folders in `parent` that no running conversion holds; returns what was removed."""
    removed = []
    for folder in work_folders(parent):
        if not folder.running:
            shutil.rmtree(folder.path, ignore_errors=True)
            removed.append(folder)
    return removed
