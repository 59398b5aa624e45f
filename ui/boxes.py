"""Gemma's `box_2d` answers ([ymin, xmin, ymax, xmax], normalised to 0-1000) drawn on the image."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QColor, QFont, QFontMetricsF, QImage, QPainter, QPen

_NUMBER = r"\s*(-?\d+(?:\.\d+)?)\s*"
_BOX = re.compile(r"box_2d\"?\s*[:=]\s*\[" + ",".join([_NUMBER] * 4) + r"\]")
_LABEL = re.compile(r"\"?label\"?\s*[:=]\s*\"([^\"]*)\"")
COLORS = ("#FF453A", "#0A84FF", "#30D158", "#FF9F0A", "#BF5AF2", "#64D2FF")


@dataclass
class Box:
    label: str
    ymin: float
    xmin: float
    ymax: float
    xmax: float

    def rect(self, width: float, height: float) -> QRectF:
        """The box in pixels of an image of the given size (coordinates clamped to the image)."""
        clamp = lambda v: min(max(v, 0.0), 1000.0)  # noqa: E731
        x0, x1 = sorted((clamp(self.xmin), clamp(self.xmax)))
        y0, y1 = sorted((clamp(self.ymin), clamp(self.ymax)))
        return QRectF(x0 / 1000 * width, y0 / 1000 * height, (x1 - x0) / 1000 * width, (y1 - y0) / 1000 * height)


def parse_boxes(text: str) -> list[Box]:
    """Every `box_2d` in an answer, with the label written in the same JSON object (if any)."""
    boxes = []
    for match in _BOX.finditer(text):
        start = text.rfind("{", 0, match.start())
        if start >= 0 and "}" in text[start:match.start()]:
            start = -1  # that object closed before this box: the box is not inside it
        end = text.find("}", match.end())
        if end >= 0 and "{" in text[match.end():end]:
            end = -1
        scope = text[start if start >= 0 else match.start(): end + 1 if end >= 0 else match.end()]
        label = _LABEL.search(scope)
        values = [float(v) for v in match.groups()]
        boxes.append(Box(label.group(1) if label else "", *values))
    return boxes


def draw_boxes(image: QImage, boxes: list[Box], scale: Optional[float] = None) -> QImage:
    """A copy of `image` with each box outlined and labelled (`scale`: pixels per point of line and text)."""
    out = image.convertToFormat(QImage.Format_ARGB32_Premultiplied)
    p = QPainter(out)
    p.setRenderHint(QPainter.Antialiasing)
    scale = scale if scale is not None else max(out.width(), out.height()) / 800
    font = QFont()
    font.setPixelSize(max(11, int(12 * scale)))
    font.setBold(True)
    p.setFont(font)
    metrics = QFontMetricsF(font)
    for i, box in enumerate(boxes):
        color = QColor(COLORS[i % len(COLORS)])
        rect = box.rect(out.width(), out.height())
        pen = QPen(color, max(2.0, 2 * scale))
        p.setPen(pen)
        p.setBrush(Qt.NoBrush)
        p.drawRoundedRect(rect, 4 * scale, 4 * scale)
        if box.label:
            pad = 4 * scale
            tag = QRectF(rect.left(), rect.top(), metrics.horizontalAdvance(box.label) + 2 * pad,
                         metrics.height() + pad)
            if tag.top() - tag.height() >= 0:
                tag.moveBottom(rect.top())
            p.setPen(Qt.NoPen)
            p.setBrush(color)
            p.drawRoundedRect(tag, 3 * scale, 3 * scale)
            p.setPen(QColor("#FFFFFF"))
            p.drawText(tag, Qt.AlignCenter, box.label)
    p.end()
    return out
