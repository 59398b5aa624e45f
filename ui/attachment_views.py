"""Attachments as a message shows them: a picture for images, a card (with a play button for audio and
video) for other files, and the question's image with the answer's boxes drawn on it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from gemma4_mac.attachments import Attachment

from .boxes import draw_boxes
from .theme import Palette, current_palette
from .widgets import KIND_GLYPHS, attachment_subtitle, glyph_tile, load_image, rounded_pixmap


class AttachmentView(QFrame):
    """An attachment as shown in a message: a picture for images, a card for everything else."""

    def __init__(self, attachment: Attachment, parent: Optional[QWidget] = None, max_side: int = 260):
        super().__init__(parent)
        self.attachment = attachment
        self.max_side = max_side
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.picture = QLabel()
        layout.addWidget(self.picture)
        if attachment.kind != "image":
            self.setObjectName("chip")
            layout.setContentsMargins(8, 8, 14, 8)
            layout.setSpacing(10)
            text = QVBoxLayout()
            text.setSpacing(1)
            title = QLabel(attachment.name)
            title.setObjectName("chipTitle")
            meta = QLabel(attachment_subtitle(attachment.kind, attachment.meta, attachment.name))
            meta.setObjectName("chipMeta")
            text.addWidget(title)
            text.addWidget(meta)
            layout.addLayout(text)
        self.play_button = None
        if attachment.kind in ("audio", "video"):
            from .media_player import PlayButton

            self.play_button = PlayButton(Path(attachment.path))
            layout.addWidget(self.play_button)
        self.apply_palette(current_palette())

    def apply_palette(self, palette: Palette) -> None:
        a = self.attachment
        if a.kind == "image":
            image = load_image(Path(a.path))
            if image.isNull():
                self.picture.setPixmap(glyph_tile("image", 44, palette))
                return
            size = image.size().scaled(self.max_side, self.max_side, Qt.KeepAspectRatio)
            self.picture.setPixmap(rounded_pixmap(image, size, 14))
            return
        thumb = a.thumbnail
        image = load_image(thumb) if thumb and Path(thumb).is_file() else QImage()
        if not image.isNull():
            self.picture.setPixmap(rounded_pixmap(image, QSize(36, 44), 5))
        else:
            self.picture.setPixmap(glyph_tile(KIND_GLYPHS.get(a.kind, "document"), 40, palette))


class AnnotatedImage(QLabel):
    """The image of the question with the answer's `box_2d` boxes drawn on it."""

    def __init__(self, image_path: Path, boxes, parent: Optional[QWidget] = None, max_side: int = 420):
        super().__init__(parent)
        self.image_path, self.boxes = Path(image_path), boxes
        image = load_image(self.image_path)
        if image.isNull():
            return
        size = image.size().scaled(max_side, max_side, Qt.KeepAspectRatio)
        # boxes are drawn at twice the shown size, so labels stay legible however large the photo
        sharp = image.scaled(size * 2, Qt.KeepAspectRatio, Qt.SmoothTransformation)
        self.setPixmap(rounded_pixmap(draw_boxes(sharp, boxes, scale=2.0), size, 12))
