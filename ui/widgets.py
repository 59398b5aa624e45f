"""Small shared widgets: tinted icon buttons, rich-text labels, the banner, attachment pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from PySide6.QtCore import QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QImage, QImageReader, QPainter, QPainterPath, QPixmap
from PySide6.QtWidgets import (QFrame, QHBoxLayout, QLabel, QProgressBar, QSizePolicy, QToolButton,
                               QVBoxLayout, QWidget)

from gemma4_mac.documents import encoding_label

from . import icons
from .theme import Palette, current_palette


def refresh_palette(root: QWidget, palette: Palette) -> None:
    """Give every themed widget under `root` the new palette (they re-tint icons, re-render HTML)."""
    for widget in [root, *root.findChildren(QWidget)]:
        apply = getattr(widget, "apply_palette", None)
        if callable(apply):
            apply(palette)


class IconButton(QToolButton):
    """A flat button showing one glyph in a palette colour (re-tinted when the theme changes)."""

    def __init__(self, glyph: str, tooltip: str = "", *, size: int = 18, role: str = "text_secondary",
                 object_name: str = "iconButton", parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.glyph, self.role, self.glyph_size = glyph, role, size
        self.setObjectName(object_name)
        self.setToolTip(tooltip)
        self.setCursor(Qt.PointingHandCursor)
        self.setIconSize(QSize(size, size))
        self.setAutoRaise(True)
        self.apply_palette(current_palette())

    def set_glyph(self, glyph: str, role: Optional[str] = None) -> None:
        self.glyph = glyph
        self.role = role or self.role
        self.apply_palette(current_palette())

    def apply_palette(self, palette: Palette) -> None:
        self.setIcon(icons.icon(self.glyph, getattr(palette, self.role, self.role), self.glyph_size))


class RichLabel(QLabel):
    """A word-wrapped, selectable rich-text label."""

    def __init__(self, object_name: str = "messageText", parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.setObjectName(object_name)
        self.setTextFormat(Qt.RichText)
        self.setWordWrap(True)
        self.setOpenExternalLinks(True)
        self.setTextInteractionFlags(Qt.TextSelectableByMouse | Qt.LinksAccessibleByMouse)
        self.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Minimum)


class ElidedLabel(QLabel):
    """One line of plain text that ends in "…" when it does not fit (the whole text is its tooltip)."""

    def __init__(self, text: str = "", parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.full_text = ""
        self.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        self.setMinimumWidth(40)
        self.set_full_text(text)

    def set_full_text(self, text: str) -> None:
        self.full_text = text
        self.setToolTip(text)
        self._elide()

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._elide()

    def _elide(self) -> None:
        self.setText(self.fontMetrics().elidedText(self.full_text, Qt.ElideRight, max(self.width(), 40)))


class Banner(QFrame):
    """A dismissible message above the composer: info, warning or error."""

    closed = Signal()

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.setObjectName("banner")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(12, 8, 6, 8)
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.close_button = IconButton("close", "Dismiss", size=14)
        self.close_button.clicked.connect(self.dismiss)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.close_button, 0, Qt.AlignTop)
        self.hide()

    def show_message(self, text: str, level: str = "info") -> None:
        self.setProperty("level", level)
        self.style().unpolish(self)
        self.style().polish(self)
        self.label.setText(text)
        self.show()

    def dismiss(self) -> None:
        self.hide()
        self.closed.emit()


class ReadingBar(QWidget):
    """How far the model has read a long prompt: "Reading document… 1,840 of 3,287 tokens" over a bar."""

    STEPS = 1000

    def __init__(self, object_name: str = "statsLine", parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.setObjectName("readingBar")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 2, 0, 2)
        layout.setSpacing(6)
        self.label = QLabel()
        self.label.setObjectName(object_name)
        self.label.setWordWrap(True)
        self.bar = QProgressBar()
        self.bar.setRange(0, self.STEPS)
        self.bar.setTextVisible(False)
        self.bar.setFixedHeight(6)
        self.bar.setMaximumWidth(360)
        layout.addWidget(self.label)
        layout.addWidget(self.bar)
        self.hide()

    def set_progress(self, text: str, fraction: float) -> None:
        self.label.setText(text)
        self.bar.setValue(round(max(0.0, min(1.0, fraction)) * self.STEPS))
        self.show()


def rounded_pixmap(image: QImage, size: QSize, radius: float, crop: bool = True) -> QPixmap:
    """`image` scaled (cropped to fill when `crop`) into `size` with rounded corners, at 2x."""
    dpr = 2.0
    target = QSize(int(size.width() * dpr), int(size.height() * dpr))
    mode = Qt.KeepAspectRatioByExpanding if crop else Qt.KeepAspectRatio
    scaled = image.scaled(target, mode, Qt.SmoothTransformation)
    if not crop:
        target = scaled.size()
    out = QPixmap(target)
    out.fill(Qt.transparent)
    p = QPainter(out)
    p.setRenderHint(QPainter.Antialiasing)
    path = QPainterPath()
    path.addRoundedRect(QRectF(0, 0, target.width(), target.height()), radius * dpr, radius * dpr)
    p.setClipPath(path)
    p.drawImage((target.width() - scaled.width()) // 2, (target.height() - scaled.height()) // 2, scaled)
    p.end()
    out.setDevicePixelRatio(dpr)
    return out


def load_image(path: Path, max_side: int = 1600) -> QImage:
    """Read an image, scaled down on load when it is huge (photos from a phone)."""
    reader = QImageReader(str(path))
    reader.setAutoTransform(True)
    original = reader.size()
    if original.isValid() and max(original.width(), original.height()) > max_side:
        reader.setScaledSize(original.scaled(max_side, max_side, Qt.KeepAspectRatio))
    return reader.read()


def glyph_tile(glyph: str, size: int, palette: Palette) -> QPixmap:
    """A rounded tile with a glyph, standing in for files without a picture."""
    dpr = 2.0
    pm = QPixmap(int(size * dpr), int(size * dpr))
    pm.setDevicePixelRatio(dpr)
    pm.fill(Qt.transparent)
    p = QPainter(pm)
    p.setRenderHint(QPainter.Antialiasing)
    p.setPen(Qt.NoPen)
    p.setBrush(QColor(palette.accent))
    p.drawRoundedRect(QRectF(0, 0, size, size), size * 0.22, size * 0.22)
    inner = int(size * 0.6)
    p.drawPixmap(int((size - inner) / 2), int((size - inner) / 2), icons.pixmap(glyph, palette.accent_text, inner))
    p.end()
    return pm


KIND_GLYPHS = {"image": "image", "audio": "waveform", "video": "video", "pdf": "document", "text": "document"}


def attachment_subtitle(kind: str, meta: dict, name: str) -> str:
    """The second line of a chip: kind and size facts."""
    if kind == "pdf":
        pages = meta.get("pages")
        return f"PDF · {pages} page{'s' if pages != 1 else ''}" if pages else "PDF"
    if kind == "text":
        suffix = Path(name).suffix.lstrip(".").upper() or "Text"
        lines = meta.get("lines")
        encoding = meta.get("encoding")
        if encoding and encoding.replace("_", "-").lower() not in ("utf-8", "ascii"):
            suffix += f" · {encoding_label(encoding).split(' (')[0]}"  # a legacy encoding: say which
        return f"{suffix} · {lines:,} lines" if lines else suffix
    if kind == "audio":
        duration = meta.get("duration")
        return f"Audio · {int(duration // 60)}:{int(duration % 60):02d}" if duration is not None else "Audio"
    if kind == "image":
        w, h = meta.get("width"), meta.get("height")
        return f"Image · {w}×{h}" if w and h else "Image"
    return kind.capitalize()
