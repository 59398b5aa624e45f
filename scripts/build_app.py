"""Build the app with PyInstaller: `Gemma 4.app` on macOS, the one-folder `dist/Gemma 4/` on Linux.

Makes the icons (scripts/make_icns.py), writes build/Info.plist for inspection, then runs
packaging/gemma4.spec. `python scripts/build_app.py [--menu-bar-only] [--dist DIR] [--work DIR] [--clean]`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "packaging"), str(ROOT / "scripts")]

from info_plist import APP_NAME, write_info_plist  # noqa: E402
from make_icns import make_icons  # noqa: E402


def app_path(dist: Path) -> Path:
    """Where the build puts the app: the .app bundle on macOS, the folder's executable elsewhere."""
    if sys.platform == "darwin":
        return dist / f"{APP_NAME}.app"
    return dist / APP_NAME / APP_NAME


def build(dist: Path, work: Path, *, menu_bar_only: bool = False, clean: bool = False) -> Path:
    """Run the whole build; returns the app's path. Raises CalledProcessError when PyInstaller fails."""
    make_icons()
    write_info_plist(work / "Info.plist", menu_bar_only=menu_bar_only)
    env = {**os.environ, "GEMMA4_MENU_BAR_ONLY": "1" if menu_bar_only else "0"}
    command = [sys.executable, "-m", "PyInstaller", str(ROOT / "packaging" / "gemma4.spec"), "--noconfirm",
               "--log-level", "WARN", "--distpath", str(dist), "--workpath", str(work)]
    if clean:
        command.append("--clean")
    subprocess.run(command, cwd=ROOT, env=env, check=True)
    return app_path(dist)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Build Gemma 4 with PyInstaller.")
    parser.add_argument("--dist", type=Path, default=ROOT / "dist")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "pyinstaller")
    parser.add_argument("--menu-bar-only", action="store_true", help="no Dock icon (LSUIElement)")
    parser.add_argument("--clean", action="store_true", help="rebuild from scratch")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        path = build(args.dist, args.work, menu_bar_only=args.menu_bar_only, clean=args.clean)
    except ModuleNotFoundError as error:
        print(f"error: {error}. Install the bundle tools: pip install -e '.[bundle]'", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as error:
        print(f"error: PyInstaller failed (exit {error.returncode}); its messages are above.", file=sys.stderr)
        return 1
    print(f"built {path} in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
