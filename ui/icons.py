"""Line icons drawn with QPainter (SF Symbols-like outlines), tinted to the palette at run time.

`python -m ui.icons [FOLDER]` writes the app icon and every glyph as PNG files into resources/.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Callable

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import (QBrush, QColor, QIcon, QImage, QLinearGradient, QPainter, QPainterPath, QPen, QPixmap,
                           QRadialGradient)

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
_GRID = 20.0  # glyphs are drawn on a 20x20 grid and scaled


def _stroke(p: QPainter, color: QColor, width: float = 1.6) -> None:
    pen = QPen(color, width)
    pen.setCapStyle(Qt.RoundCap)
    pen.setJoinStyle(Qt.RoundJoin)
    p.setPen(pen)
    p.setBrush(Qt.NoBrush)


def _plus(p, c):
    _stroke(p, c, 1.8)
    p.drawLine(QPointF(10, 4), QPointF(10, 16))
    p.drawLine(QPointF(4, 10), QPointF(16, 10))


def _compose(p, c):
    _stroke(p, c)
    p.drawRoundedRect(QRectF(3, 4, 12, 13), 3, 3)
    path = QPainterPath(QPointF(8.5, 12.5))
    path.lineTo(9.2, 9.8)
    path.lineTo(16, 3)
    path.lineTo(17.8, 4.8)
    path.lineTo(11, 11.6)
    path.closeSubpath()
    p.setBrush(QBrush(c))
    p.drawPath(path)


def _send(p, c):
    p.setPen(Qt.NoPen)
    _stroke(p, c, 2.2)
    p.drawLine(QPointF(10, 16), QPointF(10, 4.5))
    p.drawLine(QPointF(5, 9.5), QPointF(10, 4.5))
    p.drawLine(QPointF(15, 9.5), QPointF(10, 4.5))


def _stop(p, c):
    p.setPen(Qt.NoPen)
    p.setBrush(QBrush(c))
    p.drawRoundedRect(QRectF(5.5, 5.5, 9, 9), 2, 2)


def _play(p, c):
    p.setPen(Qt.NoPen)
    p.setBrush(QBrush(c))
    path = QPainterPath(QPointF(6.5, 4.5))
    path.lineTo(15.5, 10)
    path.lineTo(6.5, 15.5)
    path.closeSubpath()
    p.drawPath(path)


def _pause(p, c):
    p.setPen(Qt.NoPen)
    p.setBrush(QBrush(c))
    p.drawRoundedRect(QRectF(5.5, 4.5, 3.2, 11), 1, 1)
    p.drawRoundedRect(QRectF(11.3, 4.5, 3.2, 11), 1, 1)


def _mic(p, c):
    _stroke(p, c)
    p.drawRoundedRect(QRectF(7.25, 2.5, 5.5, 10), 2.75, 2.75)
    path = QPainterPath(QPointF(4.5, 9.5))
    path.cubicTo(4.5, 16.5, 15.5, 16.5, 15.5, 9.5)
    p.drawPath(path)
    p.drawLine(QPointF(10, 15), QPointF(10, 17.5))


def _paperclip(p, c):
    _stroke(p, c, 1.5)
    p.translate(10, 10)
    p.rotate(40)
    p.translate(-10, -10.2)
    path = QPainterPath(QPointF(8.5, 7))
    path.lineTo(8.5, 13.5)
    path.arcTo(QRectF(8.5, 12, 3, 3), 180, 180)
    path.lineTo(11.5, 5)
    path.arcTo(QRectF(5.5, 2, 6, 6), 0, 180)
    path.lineTo(5.5, 14)
    path.arcTo(QRectF(5.5, 9.5, 9, 9), 180, 180)
    path.lineTo(14.5, 7)
    p.drawPath(path)


def _search(p, c):
    _stroke(p, c)
    p.drawEllipse(QRectF(3.5, 3.5, 10, 10))
    p.drawLine(QPointF(12, 12), QPointF(16.5, 16.5))


def _gear(p, c):
    _stroke(p, c, 1.5)
    path = QPainterPath()
    teeth = 8
    for i in range(teeth * 2):
        angle = math.pi * i / teeth
        radius = 7.2 if i % 2 == 0 else 5.6
        for da in (-0.17, 0.17):
            point = QPointF(10 + radius * math.cos(angle + da), 10 + radius * math.sin(angle + da))
            if path.elementCount() == 0:
                path.moveTo(point)
            else:
                path.lineTo(point)
    path.closeSubpath()
    p.drawPath(path)
    p.drawEllipse(QRectF(7.4, 7.4, 5.2, 5.2))


def _copy(p, c):
    _stroke(p, c, 1.5)
    p.drawRoundedRect(QRectF(7, 7, 9.5, 9.5), 2, 2)
    path = QPainterPath(QPointF(13, 4.5))
    path.lineTo(13, 4.2)
    path.quadTo(13, 3.5, 12, 3.5)
    path.lineTo(5, 3.5)
    path.quadTo(3.5, 3.5, 3.5, 5)
    path.lineTo(3.5, 12)
    path.quadTo(3.5, 13, 4.5, 13)
    p.drawPath(path)


def _check(p, c):
    _stroke(p, c, 1.8)
    path = QPainterPath(QPointF(4.5, 10.5))
    path.lineTo(8.2, 14)
    path.lineTo(15.5, 6)
    p.drawPath(path)


def _chevron_right(p, c):
    _stroke(p, c, 1.7)
    path = QPainterPath(QPointF(8, 5))
    path.lineTo(13, 10)
    path.lineTo(8, 15)
    p.drawPath(path)


def _chevron_down(p, c):
    _stroke(p, c, 1.7)
    path = QPainterPath(QPointF(5, 8))
    path.lineTo(10, 13)
    path.lineTo(15, 8)
    p.drawPath(path)


def _trash(p, c):
    _stroke(p, c, 1.5)
    p.drawLine(QPointF(3.5, 5.5), QPointF(16.5, 5.5))
    p.drawLine(QPointF(8, 5.5), QPointF(8, 3.5))
    p.drawLine(QPointF(8, 3.5), QPointF(12, 3.5))
    p.drawLine(QPointF(12, 3.5), QPointF(12, 5.5))
    path = QPainterPath(QPointF(5, 5.5))
    path.lineTo(6, 16.5)
    path.lineTo(14, 16.5)
    path.lineTo(15, 5.5)
    p.drawPath(path)
    p.drawLine(QPointF(8.5, 8.5), QPointF(8.7, 13.5))
    p.drawLine(QPointF(11.5, 8.5), QPointF(11.3, 13.5))


def _pencil(p, c):
    _stroke(p, c, 1.5)
    path = QPainterPath(QPointF(4, 16))
    path.lineTo(4.8, 12.6)
    path.lineTo(13.5, 3.9)
    path.lineTo(16.1, 6.5)
    path.lineTo(7.4, 15.2)
    path.closeSubpath()
    p.drawPath(path)
    p.drawLine(QPointF(11.8, 5.6), QPointF(14.4, 8.2))


def _export(p, c):
    _stroke(p, c, 1.5)
    p.drawLine(QPointF(10, 3), QPointF(10, 12))
    p.drawLine(QPointF(6.5, 6.5), QPointF(10, 3))
    p.drawLine(QPointF(13.5, 6.5), QPointF(10, 3))
    path = QPainterPath(QPointF(6.5, 9))
    path.lineTo(4.5, 9)
    path.lineTo(4.5, 17)
    path.lineTo(15.5, 17)
    path.lineTo(15.5, 9)
    path.lineTo(13.5, 9)
    p.drawPath(path)


def _refresh(p, c):
    _stroke(p, c, 1.5)
    path = QPainterPath()
    path.arcMoveTo(QRectF(4, 4, 12, 12), 60)
    path.arcTo(QRectF(4, 4, 12, 12), 60, 290)
    p.drawPath(path)
    head = QPainterPath(QPointF(13.2, 2.6))
    head.lineTo(13.2, 5.3)
    head.lineTo(10.5, 5.6)
    p.drawPath(head)


def _close(p, c):
    _stroke(p, c, 1.6)
    p.drawLine(QPointF(6, 6), QPointF(14, 14))
    p.drawLine(QPointF(14, 6), QPointF(6, 14))


def _document(p, c):
    _stroke(p, c, 1.4)
    path = QPainterPath(QPointF(5, 3))
    path.lineTo(11.5, 3)
    path.lineTo(15, 6.5)
    path.lineTo(15, 17)
    path.lineTo(5, 17)
    path.closeSubpath()
    p.drawPath(path)
    for y in (9.5, 12, 14.5):
        p.drawLine(QPointF(7.5, y), QPointF(12.5, y))


def _waveform(p, c):
    _stroke(p, c, 1.6)
    for x, h in ((4, 3), (7, 8), (10, 12), (13, 6), (16, 4)):
        p.drawLine(QPointF(x, 10 - h / 2), QPointF(x, 10 + h / 2))


def _image(p, c):
    _stroke(p, c, 1.4)
    p.drawRoundedRect(QRectF(3, 4, 14, 12), 2, 2)
    p.drawEllipse(QRectF(6, 6.5, 2.6, 2.6))
    path = QPainterPath(QPointF(3.5, 14))
    path.lineTo(8, 10.5)
    path.lineTo(11, 13)
    path.lineTo(13.5, 11)
    path.lineTo(16.5, 13.5)
    p.drawPath(path)


def _video(p, c):
    _stroke(p, c, 1.4)
    p.drawRoundedRect(QRectF(2.5, 5.5, 11, 9), 2, 2)
    path = QPainterPath(QPointF(13.5, 9))
    path.lineTo(17.5, 6.5)
    path.lineTo(17.5, 13.5)
    path.lineTo(13.5, 11)
    p.drawPath(path)


def _download(p, c):
    _stroke(p, c, 1.5)
    p.drawLine(QPointF(10, 3), QPointF(10, 13))
    p.drawLine(QPointF(6, 9), QPointF(10, 13))
    p.drawLine(QPointF(14, 9), QPointF(10, 13))
    p.drawLine(QPointF(4.5, 16.5), QPointF(15.5, 16.5))


def _chip(p, c):
    _stroke(p, c, 1.4)
    p.drawRoundedRect(QRectF(5, 5, 10, 10), 2, 2)
    p.drawRoundedRect(QRectF(8, 8, 4, 4), 1, 1)
    for v in (7.5, 10, 12.5):
        p.drawLine(QPointF(v, 2.5), QPointF(v, 5))
        p.drawLine(QPointF(v, 15), QPointF(v, 17.5))
        p.drawLine(QPointF(2.5, v), QPointF(5, v))
        p.drawLine(QPointF(15, v), QPointF(17.5, v))


def _sidebar(p, c):
    _stroke(p, c, 1.5)
    p.drawRoundedRect(QRectF(2.5, 4, 15, 12), 2.5, 2.5)
    p.drawLine(QPointF(8, 4), QPointF(8, 16))


def _lightbulb(p, c):
    _stroke(p, c, 1.4)
    path = QPainterPath(QPointF(7.6, 13.5))
    path.cubicTo(7.6, 11, 4.5, 10.5, 4.5, 7.5)
    path.cubicTo(4.5, 4.5, 7, 2.5, 10, 2.5)
    path.cubicTo(13, 2.5, 15.5, 4.5, 15.5, 7.5)
    path.cubicTo(15.5, 10.5, 12.4, 11, 12.4, 13.5)
    path.closeSubpath()
    p.drawPath(path)
    p.drawLine(QPointF(8, 15.8), QPointF(12, 15.8))
    p.drawLine(QPointF(8.8, 17.8), QPointF(11.2, 17.8))


def _wrench(p, c):
    _stroke(p, c, 1.5)
    path = QPainterPath(QPointF(11.5, 8.5))
    path.lineTo(4, 16)
    p.drawPath(path)
    p.drawArc(QRectF(10, 3, 7, 7), 200 * 16, 290 * 16)


def _sparkle(p, c):
    p.setPen(Qt.NoPen)
    p.setBrush(QBrush(c))
    p.drawPath(sparkle_path(QRectF(2, 2, 16, 16)))


def sparkle_path(rect: QRectF) -> QPainterPath:
    """Gemma's four-pointed star: four concave arcs meeting at the edges' midpoints."""
    cx, cy, rx, ry = rect.center().x(), rect.center().y(), rect.width() / 2, rect.height() / 2
    path = QPainterPath(QPointF(cx, cy - ry))
    path.quadTo(QPointF(cx, cy), QPointF(cx + rx, cy))
    path.quadTo(QPointF(cx, cy), QPointF(cx, cy + ry))
    path.quadTo(QPointF(cx, cy), QPointF(cx - rx, cy))
    path.quadTo(QPointF(cx, cy), QPointF(cx, cy - ry))
    return path


GLYPHS: dict[str, Callable[[QPainter, QColor], None]] = {
    "plus": _plus, "compose": _compose, "send": _send, "stop": _stop, "mic": _mic, "paperclip": _paperclip,
    "search": _search, "gear": _gear, "copy": _copy, "check": _check, "chevron_right": _chevron_right,
    "chevron_down": _chevron_down, "trash": _trash, "pencil": _pencil, "export": _export, "refresh": _refresh,
    "close": _close, "document": _document, "waveform": _waveform, "image": _image, "video": _video,
    "download": _download, "chip": _chip, "sidebar": _sidebar, "lightbulb": _lightbulb, "wrench": _wrench,
    "sparkle": _sparkle, "play": _play, "pause": _pause,
}


def pixmap(name: str, color: QColor | str, size: int = 18, device_pixel_ratio: float = 2.0) -> QPixmap:
    """The glyph `name` in `color`, `size` logical pixels square."""
    pm = QPixmap(int(size * device_pixel_ratio), int(size * device_pixel_ratio))
    pm.setDevicePixelRatio(device_pixel_ratio)
    pm.fill(Qt.transparent)
    p = QPainter(pm)
    p.setRenderHint(QPainter.Antialiasing)
    p.scale(size / _GRID, size / _GRID)
    GLYPHS[name](p, QColor(color))
    p.end()
    return pm


def icon(name: str, color: QColor | str, size: int = 18) -> QIcon:
    return QIcon(pixmap(name, color, size))


def gemma_gradient(rect: QRectF) -> QLinearGradient:
    gradient = QLinearGradient(rect.topLeft(), rect.bottomRight())
    gradient.setColorAt(0.0, QColor("#4F8DF7"))
    gradient.setColorAt(0.55, QColor("#7B6CF0"))
    gradient.setColorAt(1.0, QColor("#C46BD6"))
    return gradient


def avatar_pixmap(size: int = 28, device_pixel_ratio: float = 2.0) -> QPixmap:
    """The assistant's avatar: the gradient sparkle on a soft round badge."""
    pm = QPixmap(int(size * device_pixel_ratio), int(size * device_pixel_ratio))
    pm.setDevicePixelRatio(device_pixel_ratio)
    pm.fill(Qt.transparent)
    p = QPainter(pm)
    p.setRenderHint(QPainter.Antialiasing)
    rect = QRectF(0, 0, size, size)
    p.setPen(Qt.NoPen)
    p.setBrush(QBrush(gemma_gradient(rect)))
    p.drawPath(sparkle_path(rect.adjusted(size * 0.12, size * 0.12, -size * 0.12, -size * 0.12)))
    p.end()
    return pm


def app_icon_image(size: int = 1024) -> QImage:
    """The app icon: a macOS-style rounded square with Gemma's sparkle."""
    image = QImage(size, size, QImage.Format_ARGB32_Premultiplied)
    image.fill(Qt.transparent)
    p = QPainter(image)
    p.setRenderHint(QPainter.Antialiasing)
    margin = size * 0.1
    body = QRectF(margin, margin, size - 2 * margin, size - 2 * margin)
    background = QLinearGradient(body.topLeft(), body.bottomLeft())
    background.setColorAt(0.0, QColor("#1F2433"))
    background.setColorAt(1.0, QColor("#0D1020"))
    p.setPen(Qt.NoPen)
    p.setBrush(QBrush(background))
    p.drawRoundedRect(body, body.width() * 0.225, body.width() * 0.225)
    glow = QRadialGradient(body.center(), body.width() * 0.45)
    glow.setColorAt(0.0, QColor(123, 108, 240, 110))
    glow.setColorAt(1.0, QColor(123, 108, 240, 0))
    p.setBrush(QBrush(glow))
    p.drawRoundedRect(body, body.width() * 0.225, body.width() * 0.225)
    star = body.adjusted(body.width() * 0.2, body.width() * 0.2, -body.width() * 0.2, -body.width() * 0.2)
    p.setBrush(QBrush(gemma_gradient(star)))
    p.drawPath(sparkle_path(star))
    p.end()
    return image


def app_icon() -> QIcon:
    """The app icon from resources/ (drawn afresh when the file is missing)."""
    path = RESOURCES / "app_icon.png"
    if path.is_file():
        return QIcon(str(path))
    return QIcon(QPixmap.fromImage(app_icon_image(512)))


def write_resources(folder: Path = RESOURCES) -> list[Path]:
    """Write the app icon (PNG, several sizes) and each glyph (black, 2x PNG) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    big = app_icon_image(1024)
    for size in (1024, 512, 256, 128, 64, 32, 16):
        target = folder / ("app_icon.png" if size == 512 else f"app_icon_{size}.png")
        big.scaled(size, size, Qt.KeepAspectRatio, Qt.SmoothTransformation).save(str(target))
        written.append(target)
    glyphs = folder / "icons"
    glyphs.mkdir(exist_ok=True)
    for name in GLYPHS:
        target = glyphs / f"{name}.png"
        pixmap(name, "#1d1d1f", 20, 2.0).save(str(target))
        written.append(target)
    return written


if __name__ == "__main__":
    from PySide6.QtGui import QGuiApplication

    app = QGuiApplication(sys.argv[:1])
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else RESOURCES
    print("\n".join(str(p) for p in write_resources(out)))
