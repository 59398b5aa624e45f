"""Make resources/AppIcon.icns and the menu-bar template icons.

The master is resources/app_icon_1024.png (drawn by ui/icons.py; drawn afresh when missing). The
.icns container is written here: the 'icns' magic and total length, a 'TOC ' entry, then one PNG
per type (icp4 16, icp5 32, icp6 64, ic07 128, ic08 256, ic09 512, ic10 1024 = 512@2x, ic11 32 =
16@2x, ic12 64 = 32@2x, ic13 256 = 128@2x, ic14 512 = 256@2x); lengths are big-endian and count
their 8-byte headers. `python scripts/make_icns.py [--master PNG] [--out FOLDER]`.
"""

from __future__ import annotations

import argparse
import io
import os
import struct
import sys
from pathlib import Path
from typing import Optional

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
RESOURCES = ROOT / "resources"
MASTER = RESOURCES / "app_icon_1024.png"
ICNS_NAME = "AppIcon.icns"
# (type, pixel size); the @2x types carry the double-size picture of the point size they name
ICNS_TYPES = [(b"icp4", 16), (b"icp5", 32), (b"icp6", 64), (b"ic07", 128), (b"ic08", 256), (b"ic09", 512),
              (b"ic10", 1024), (b"ic11", 32), (b"ic12", 64), (b"ic13", 256), (b"ic14", 512)]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class IconError(ValueError):
    """A master picture or .icns file that cannot be used; the message says what is wrong."""


def load_master(path: Path = MASTER) -> Image.Image:
    """The square master picture as RGBA (at least 1024 px so every size is a down-scale)."""
    if not path.is_file():
        _draw_master(path)
    try:
        image = Image.open(path)
        image.load()
    except OSError as error:
        raise IconError(f"{path} is not a readable picture ({error}); delete it to have it drawn "
                        "again.") from error
    if image.width != image.height or image.width < 1024:
        raise IconError(f"{path} is {image.width}×{image.height}; the master must be square and at least 1024 px.")
    return image.convert("RGBA")


def _draw_master(path: Path) -> None:
    from ui.icons import app_icon_image

    _qt_app()
    path.parent.mkdir(parents=True, exist_ok=True)
    if not app_icon_image(1024).save(str(path)):
        raise IconError(f"The master icon could not be written to {path}.")


def _png(image: Image.Image, size: int) -> bytes:
    out = io.BytesIO()
    image.resize((size, size), Image.LANCZOS).save(out, "PNG", optimize=True)
    return out.getvalue()


def build_icns(master: Image.Image) -> bytes:
    """The .icns file for `master`, every size in ICNS_TYPES as PNG."""
    pictures = {size: _png(master, size) for size in sorted({s for _, s in ICNS_TYPES})}
    entries = [(kind, pictures[size]) for kind, size in ICNS_TYPES]
    toc = b"".join(kind + struct.pack(">I", len(data) + 8) for kind, data in entries)
    body = b"TOC " + struct.pack(">I", len(toc) + 8) + toc
    body += b"".join(kind + struct.pack(">I", len(data) + 8) + data for kind, data in entries)
    return b"icns" + struct.pack(">I", len(body) + 8) + body


def read_icns(data: bytes) -> list[tuple[str, int, int]]:
    """(type, width, height) of each PNG entry of an .icns file; raises IconError on a damaged file."""
    if len(data) < 8 or data[:4] != b"icns":
        raise IconError("not an .icns file (no 'icns' magic)")
    (total,) = struct.unpack(">I", data[4:8])
    if total != len(data):
        raise IconError(f"the header says {total} bytes but the file has {len(data)}")
    found, offset = [], 8
    while offset < total:
        if offset + 8 > total:
            raise IconError(f"a truncated entry header at byte {offset}")
        kind = data[offset:offset + 4].decode("latin-1")
        (length,) = struct.unpack(">I", data[offset + 4:offset + 8])
        if length < 8 or offset + length > total:
            raise IconError(f"entry {kind!r} at byte {offset} claims {length} bytes")
        payload = data[offset + 8:offset + length]
        if payload.startswith(PNG_SIGNATURE):
            width, height = struct.unpack(">II", payload[16:24])  # IHDR follows the signature
            found.append((kind, width, height))
        offset += length
    return found


def write_tray_templates(folder: Path) -> list[Path]:
    """TrayTemplate.png (22 px) and TrayTemplate@2x.png (44 px): black sparkle on transparency."""
    from ui.tray import TRAY_SIZE, TRAY_TEMPLATE, tray_template_image

    _qt_app()
    written = []
    for scale, name in ((1, TRAY_TEMPLATE), (2, TRAY_TEMPLATE.replace(".png", "@2x.png"))):
        target = folder / name
        if not tray_template_image(TRAY_SIZE * scale).save(str(target)):
            raise IconError(f"{target} could not be written.")
        written.append(target)
    return written


def _qt_app():
    from PySide6.QtGui import QGuiApplication
    from PySide6.QtWidgets import QApplication

    if QGuiApplication.instance() is None:
        if not os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
            os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
        # a full QApplication, so widgets can still be made in the same process (the test suite does)
        _qt_app.app = QApplication(sys.argv[:1])
    return QGuiApplication.instance()


def make_icons(master: Path = MASTER, out: Path = RESOURCES) -> list[Path]:
    """Write AppIcon.icns and the tray templates into `out`; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    icns = out / ICNS_NAME
    icns.write_bytes(build_icns(load_master(master)))
    return [icns, *write_tray_templates(out)]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Make AppIcon.icns and the menu-bar template icons.")
    parser.add_argument("--master", type=Path, default=MASTER, help="square PNG, at least 1024 px")
    parser.add_argument("--out", type=Path, default=RESOURCES)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    try:
        for path in make_icons(args.master, args.out):
            print(path)
    except IconError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
