"""The model manager: models on this Mac with size and memory fit; download and convert a Gemma 4 model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QComboBox, QDialog, QFrame, QHBoxLayout, QLabel, QProgressBar, QPushButton,
                               QScrollArea, QVBoxLayout, QWidget)

from gemma4_mac.model_manager import GIB, HUB_MODELS, ModelEntry, destination_for, recommended_model

from .theme import Palette, current_palette
from .widgets import IconButton

STAGE_NAMES = {"download": "Downloading", "convert": "Converting to 4-bit", "tokenizer": "Copying the tokenizer",
               "finalize": "Finishing", "quality": "Checking quality against the original",
               "calibrate": "Calibrating", "done": "Done"}


class ModelRow(QFrame):
    useClicked = Signal(str)
    deleteClicked = Signal(str)

    def __init__(self, entry: ModelEntry, in_use: bool, deletable: bool, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.entry = entry
        self.setObjectName("card")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(14, 10, 10, 10)
        text = QVBoxLayout()
        text.setSpacing(2)
        self.name = QLabel(entry.label)
        self.name.setObjectName("chipTitle")
        facts = f"{entry.size_bytes / GIB:.2f} GB on disk · {entry.fit.summary}"
        if entry.is_starter:
            facts = "Offline starter · " + facts
        elif not entry.has_chat_template:
            facts = "Base model (continues text) · " + facts
        self.facts = QLabel(facts)
        self.facts.setObjectName("chipMeta")
        text.addWidget(self.name)
        text.addWidget(self.facts)
        self.quality = QLabel(entry.quality_summary)
        self.quality.setObjectName("chipMeta")
        self.quality.setVisible(bool(entry.quality_summary))
        text.addWidget(self.quality)
        layout.addLayout(text, 1)
        self.fit_dot = QLabel()
        self.fit_dot.setFixedSize(8, 8)
        layout.addWidget(self.fit_dot)
        layout.addSpacing(6)
        if in_use:
            self.use_button = QLabel("In use")
            self.use_button.setObjectName("hint")
        else:
            self.use_button = QPushButton("Use")
            self.use_button.setCursor(Qt.PointingHandCursor)
            self.use_button.clicked.connect(lambda: self.useClicked.emit(str(entry.path)))
        layout.addWidget(self.use_button)
        self.delete_button = IconButton("trash", "Delete this model from the disk", size=16)
        self.delete_button.clicked.connect(lambda: self.deleteClicked.emit(str(entry.path)))
        # an invisible button keeps its room, so "Use" lines up on every row
        policy = self.delete_button.sizePolicy()
        policy.setRetainSizeWhenHidden(True)
        self.delete_button.setSizePolicy(policy)
        self.delete_button.setVisible(deletable and not in_use)
        layout.addWidget(self.delete_button)
        self.apply_palette(current_palette())

    def apply_palette(self, palette: Palette) -> None:
        color = palette.success if self.entry.fit.fits else palette.danger
        self.fit_dot.setStyleSheet(f"background: {color}; border-radius: 4px;")
        self.fit_dot.setToolTip(self.entry.fit.summary)


class ModelManagerDialog(QDialog):
    useModelRequested = Signal(str)
    deleteModelRequested = Signal(str)
    downloadRequested = Signal(str, str, str)  # repo id, destination, label
    cancelDownloadRequested = Signal()

    def __init__(self, total_memory: int, models_root: Path, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.setWindowTitle("Models")
        self.setMinimumSize(600, 520)
        self.models_root = Path(models_root)
        self.downloading = False
        layout = QVBoxLayout(self)
        layout.setContentsMargins(24, 20, 24, 18)
        layout.setSpacing(12)
        title = QLabel("Models")
        title.setObjectName("dialogTitle")
        subtitle = QLabel(f"This Mac has {total_memory / GIB:.0f} GB of memory. Models stay on this Mac; "
                          "only downloads you start here use the network.")
        subtitle.setObjectName("hint")
        subtitle.setWordWrap(True)
        layout.addWidget(title)
        layout.addWidget(subtitle)
        section = QLabel("ON THIS MAC")
        section.setObjectName("sectionTitle")
        layout.addWidget(section)
        self.list_holder = QWidget()
        self.list_layout = QVBoxLayout(self.list_holder)
        self.list_layout.setContentsMargins(0, 0, 0, 0)
        self.list_layout.setSpacing(8)
        scroll = QScrollArea()
        scroll.setWidget(self.list_holder)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.NoFrame)
        layout.addWidget(scroll, 1)
        self.rows: list[ModelRow] = []

        section = QLabel("GET A GEMMA 4 MODEL")
        section.setObjectName("sectionTitle")
        layout.addWidget(section)
        card = QFrame()
        card.setObjectName("card")
        card_layout = QVBoxLayout(card)
        card_layout.setContentsMargins(14, 12, 14, 12)
        card_layout.setSpacing(8)
        row = QHBoxLayout()
        self.hub_combo = QComboBox()
        suggested = recommended_model(total_memory)
        for model in HUB_MODELS:
            tag = " · recommended" if model == suggested else (f" · {model.note}" if model.note else "")
            self.hub_combo.addItem(f"{model.label} · ≈{model.size_4bit:.1f} GB{tag}", model.repo_id)
        self.hub_combo.setCurrentIndex(HUB_MODELS.index(suggested))
        self.download_button = QPushButton("Download and convert")
        self.download_button.setObjectName("primary")
        self.download_button.setCursor(Qt.PointingHandCursor)
        self.download_button.clicked.connect(self._start_download)
        row.addWidget(self.hub_combo, 1)
        row.addWidget(self.download_button)
        card_layout.addLayout(row)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        self.progress_label = QLabel()
        self.progress_label.setObjectName("hint")
        self.progress_label.setWordWrap(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancelDownloadRequested)
        progress_row = QHBoxLayout()
        progress_row.addWidget(self.progress, 1)
        progress_row.addWidget(self.cancel_button)
        card_layout.addLayout(progress_row)
        card_layout.addWidget(self.progress_label)
        hint = QLabel("Downloads from Hugging Face and converts to 4-bit MLX. An interrupted download resumes "
                      "where it stopped.")
        hint.setObjectName("hint")
        hint.setWordWrap(True)
        card_layout.addWidget(hint)
        layout.addWidget(card)
        close_row = QHBoxLayout()
        close_row.addStretch(1)
        close = QPushButton("Done")
        close.clicked.connect(self.accept)
        close_row.addWidget(close)
        layout.addLayout(close_row)
        self._set_downloading(False)

    def set_models(self, entries: list[ModelEntry], current_path: str) -> None:
        for row in self.rows:
            row.setParent(None)
            row.deleteLater()
        self.rows = []
        current = Path(current_path).resolve() if current_path else None
        for entry in entries:
            in_use = current is not None and Path(entry.path).resolve() == current
            deletable = self.models_root.resolve() in Path(entry.path).resolve().parents and not entry.is_starter
            row = ModelRow(entry, in_use, deletable)
            row.useClicked.connect(self.useModelRequested)
            row.deleteClicked.connect(self.deleteModelRequested)
            self.list_layout.addWidget(row)
            self.rows.append(row)
        if not entries:
            empty = ModelRowPlaceholder()
            self.list_layout.addWidget(empty)
            self.rows.append(empty)
        self.list_layout.addStretch(1)

    def _start_download(self) -> None:
        repo_id = self.hub_combo.currentData()
        model = next(m for m in HUB_MODELS if m.repo_id == repo_id)
        destination = destination_for(repo_id, root=self.models_root)
        self._set_downloading(True)
        self.progress_label.setText(f"Starting {model.label}…")
        self.downloadRequested.emit(repo_id, str(destination), f"{model.label} (4-bit)")

    def set_progress(self, report: dict) -> None:
        self._set_downloading(True)
        stage = STAGE_NAMES.get(report.get("stage", ""), report.get("stage", ""))
        fraction = float(report.get("fraction", 0.0))
        self.progress.setValue(int(fraction * 1000))
        detail = report.get("message") or report.get("item") or ""
        total = int(report.get("total") or 0)
        if report.get("stage") == "download" and total > 1:  # bytes over all files
            detail = f"{report.get('item') or detail} · {int(report.get('done') or 0) / 1e9:.1f} of {total / 1e9:.1f} GB"
        self.progress_label.setText(f"{stage} · {fraction:.0%}" + (f" · {detail}" if detail else ""))

    def set_finished(self, path: str) -> None:
        self._set_downloading(False)
        self.progress_label.setText(f"Ready: {path}")
        self.progress_label.show()

    def set_failed(self, message: str) -> None:
        self._set_downloading(False)
        self.progress_label.setText(message)
        self.progress_label.show()

    def _set_downloading(self, downloading: bool) -> None:
        self.downloading = downloading
        self.download_button.setEnabled(not downloading)
        self.hub_combo.setEnabled(not downloading)
        self.progress.setVisible(downloading)
        self.cancel_button.setVisible(downloading)
        if downloading:
            self.progress_label.show()


class ModelRowPlaceholder(QLabel):
    def __init__(self):
        super().__init__("No models yet. The offline starter model is used until you download one.")
        self.setObjectName("hint")
        self.setWordWrap(True)
