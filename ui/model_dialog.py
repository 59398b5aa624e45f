"""The model manager: models on this Mac with size and memory fit, models found in other apps (Hugging Face's
cache, LM Studio), adding a model from a folder or a GGUF file, and downloading a Gemma 4 model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QComboBox, QDialog, QFrame, QHBoxLayout, QLabel, QProgressBar, QPushButton,
                               QScrollArea, QVBoxLayout, QWidget)

from gemma4_mac.model_manager import (GIB, HUB_MODELS, ModelEntry, destination_for, format_size,
                                      recommended_model)
from gemma4_mac.model_sources import CHECKPOINT, GGUF, FoundModel, display_path

from .theme import Palette, current_palette
from .widgets import IconButton

STAGE_NAMES = {"download": "Downloading", "unpack": "Unpacking", "convert": "Converting to 4-bit",
               "tokenizer": "Copying the tokenizer", "finalize": "Finishing",
               "quality": "Checking quality against the original", "calibrate": "Calibrating", "done": "Done"}
KIND_NAMES = {CHECKPOINT: "Hugging Face checkpoint", GGUF: "GGUF file"}


class ModelRow(QFrame):
    """A model on this Mac: in the app's models folder (deletable) or added from elsewhere (removable from the
    list; its files stay where they are)."""

    useClicked = Signal(str)
    deleteClicked = Signal(str)
    removeClicked = Signal(str)

    def __init__(self, entry: ModelEntry, in_use: bool, deletable: bool, parent: Optional[QWidget] = None, *,
                 removable: bool = False):
        super().__init__(parent)
        self.entry = entry
        self.setObjectName("card")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(14, 10, 10, 10)
        text = QVBoxLayout()
        text.setSpacing(2)
        self.name = QLabel(entry.label)
        self.name.setObjectName("chipTitle")
        facts = f"{format_size(entry.size_bytes)} on disk · {entry.fit.summary}"
        if removable:
            facts = f"Added from {display_path(entry.path.parent)} · " + facts
        if entry.is_starter:
            facts = "Offline starter · " + facts
        elif not entry.has_chat_template:
            facts = "Base model (continues text) · " + facts
        self.facts = QLabel(facts)
        self.facts.setObjectName("chipMeta")
        self.facts.setWordWrap(True)
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
        if removable:  # not the app's copy: forget it, never delete the person's files
            self.delete_button = IconButton("close", "Remove from this list (the folder stays where it is)",
                                            size=14)
            self.delete_button.clicked.connect(lambda: self.removeClicked.emit(str(entry.path)))
            deletable = True
        else:
            self.delete_button = IconButton("trash", "Delete this model from the disk", size=16)
            self.delete_button.clicked.connect(lambda: self.deleteClicked.emit(str(entry.path)))
        self.setToolTip(str(entry.path))
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


class FoundRow(QFrame):
    """A model in another app's folder (Hugging Face's cache, LM Studio), or an added one that can no longer
    be used: what it is, and Use (an MLX folder), Convert (a checkpoint or GGUF file) or why neither."""

    chosen = Signal(str)
    removeClicked = Signal(str)

    def __init__(self, found: FoundModel, *, added: bool = False, removable: bool = False,
                 parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.found = found
        self.setObjectName("card")
        self.setToolTip(str(found.path))
        layout = QHBoxLayout(self)
        layout.setContentsMargins(14, 10, 10, 10)
        text = QVBoxLayout()
        text.setSpacing(2)
        self.name = QLabel(found.name)
        self.name.setObjectName("chipTitle")
        facts = [found.origin] if found.origin else []
        facts.append(KIND_NAMES.get(found.kind, "MLX model" if found.kind else "not a model"))
        if found.size_bytes:
            facts.append(format_size(found.size_bytes))
        if not found.problem:
            facts.append("converts to 4-bit MLX in the app's models folder" if found.needs_conversion
                         else "runs where it is")
        self.facts = QLabel(" · ".join(facts))
        self.facts.setObjectName("chipMeta")
        self.facts.setWordWrap(True)
        text.addWidget(self.name)
        text.addWidget(self.facts)
        self.problem = QLabel(found.problem)
        self.problem.setObjectName("chipMeta")
        self.problem.setWordWrap(True)
        self.problem.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.problem.setVisible(bool(found.problem))
        text.addWidget(self.problem)
        layout.addLayout(text, 1)
        if added:
            self.action = QLabel("Added")
            self.action.setObjectName("hint")
        else:
            self.action = QPushButton("Convert" if found.needs_conversion else "Use")
            self.action.setCursor(Qt.PointingHandCursor)
            self.action.clicked.connect(lambda: self.chosen.emit(str(found.path)))
        self.action.setVisible(found.usable)
        layout.addWidget(self.action, 0, Qt.AlignVCenter)
        if removable:
            self.remove_button = IconButton("close", "Remove from this list (the files stay where they are)",
                                            size=14)
            self.remove_button.clicked.connect(lambda: self.removeClicked.emit(str(found.path)))
            layout.addWidget(self.remove_button, 0, Qt.AlignVCenter)
        self.apply_palette(current_palette())

    def apply_palette(self, palette: Palette) -> None:
        self.problem.setStyleSheet(f"color: {palette.danger};")


class ModelManagerDialog(QDialog):
    useModelRequested = Signal(str)
    deleteModelRequested = Signal(str)
    removeModelRequested = Signal(str)  # forget an added model (its files stay)
    foundModelChosen = Signal(str)  # Use or Convert on a model found in another app
    addFolderRequested = Signal()
    addFileRequested = Signal()
    downloadRequested = Signal(str, str, str)  # repo id, destination, label
    cancelDownloadRequested = Signal()

    def __init__(self, total_memory: int, models_root: Path, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.setWindowTitle("Models")
        self.setMinimumSize(600, 560)
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
        header = QHBoxLayout()
        section = QLabel("ON THIS MAC")
        section.setObjectName("sectionTitle")
        self.add_folder_button = QPushButton("Add Model from Folder…")
        self.add_folder_button.setToolTip("An MLX model folder is used where it is; a Hugging Face "
                                          "checkpoint folder is converted to 4-bit MLX.")
        self.add_folder_button.clicked.connect(self.addFolderRequested)
        self.add_file_button = QPushButton("Add GGUF File…")
        self.add_file_button.setToolTip("A GGUF file (llama.cpp, LM Studio, Ollama) is converted to 4-bit "
                                        "MLX.")
        self.add_file_button.clicked.connect(self.addFileRequested)
        header.addWidget(section)
        header.addStretch(1)
        header.addWidget(self.add_folder_button)
        header.addWidget(self.add_file_button)
        layout.addLayout(header)
        self.notice = QLabel()
        self.notice.setObjectName("hint")
        self.notice.setWordWrap(True)
        self.notice.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.notice.hide()
        layout.addWidget(self.notice)

        self.list_holder = QWidget()
        holder = QVBoxLayout(self.list_holder)
        holder.setContentsMargins(0, 0, 0, 0)
        holder.setSpacing(8)
        self.list_layout = QVBoxLayout()
        self.list_layout.setSpacing(8)
        self.found_layout = QVBoxLayout()
        self.found_layout.setSpacing(8)
        found_title = QLabel("IN OTHER APPS")
        found_title.setObjectName("sectionTitle")
        self.found_status = QLabel()
        self.found_status.setObjectName("hint")
        self.found_status.setWordWrap(True)
        holder.addLayout(self.list_layout)
        holder.addSpacing(6)
        holder.addWidget(found_title)
        holder.addWidget(self.found_status)
        holder.addLayout(self.found_layout)
        holder.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidget(self.list_holder)
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)  # rows wrap to the dialog's width
        scroll.setFrameShape(QFrame.NoFrame)
        layout.addWidget(scroll, 1)
        self.rows: list[QWidget] = []
        self.found_rows: list[FoundRow] = []
        self.unfinished_label = QLabel()
        self.unfinished_label.setObjectName("hint")
        self.unfinished_label.setWordWrap(True)
        self.unfinished_label.hide()
        layout.addWidget(self.unfinished_label)
        layout.addWidget(self._build_job_card())

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
        hint = QLabel("Downloads from Hugging Face and converts to 4-bit MLX. An interrupted download "
                      "resumes where it stopped.")
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
        self.progress_label.hide()

    def _build_job_card(self) -> QFrame:
        """The download or conversion under way (or its outcome): title, bar, cancel, status line."""
        self.job_card = QFrame()
        self.job_card.setObjectName("card")
        job = QVBoxLayout(self.job_card)
        job.setContentsMargins(14, 10, 14, 10)
        job.setSpacing(6)
        self.job_title = QLabel()
        self.job_title.setObjectName("chipTitle")
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
        job.addWidget(self.job_title)
        job.addLayout(progress_row)
        job.addWidget(self.progress_label)
        self.job_card.hide()
        return self.job_card

    def set_models(self, entries: list[ModelEntry], current_path: str, added: tuple[str, ...] = (),
                   broken: tuple[FoundModel, ...] = ()) -> None:
        """The models on this Mac; `added`: folders added from elsewhere (removable from the list);
        `broken`: added ones that can no longer be used, with the reason."""
        for row in self.rows:
            row.setParent(None)
            row.deleteLater()
        self.rows = []
        current = Path(current_path).resolve() if current_path else None
        added_paths = {Path(p).resolve() for p in added}
        root = self.models_root.resolve()
        for entry in entries:
            resolved = Path(entry.path).resolve()
            in_use = current is not None and resolved == current
            removable = resolved in added_paths and root not in resolved.parents
            deletable = root in resolved.parents and not entry.is_starter
            row = ModelRow(entry, in_use, deletable, removable=removable)
            row.useClicked.connect(self.useModelRequested)
            row.deleteClicked.connect(self.deleteModelRequested)
            row.removeClicked.connect(self.removeModelRequested)
            self.list_layout.addWidget(row)
            self.rows.append(row)
        for found in broken:
            row = FoundRow(found, removable=True)
            row.removeClicked.connect(self.removeModelRequested)
            self.list_layout.addWidget(row)
            self.rows.append(row)
        if not self.rows:
            empty = ModelRowPlaceholder()
            self.list_layout.addWidget(empty)
            self.rows.append(empty)

    def set_found(self, found: Optional[list[FoundModel]], where: str = "",
                  added: tuple[str, ...] = ()) -> None:
        """Models found in other apps; None while the search runs. `where` names the folders searched."""
        for row in self.found_rows:
            row.setParent(None)
            row.deleteLater()
        self.found_rows = []
        if found is None:
            self.found_status.setText("Looking in Hugging Face's cache and LM Studio's models folder…")
            return
        if not found:
            self.found_status.setText(f"No Gemma models found in {where}." if where else
                                      "No Gemma models found.")
            return
        self.found_status.setText("MLX models run where they are; checkpoints and GGUF files are converted "
                                  "first." + (f" Searched {where}." if where else ""))
        added_paths = {Path(p).resolve() for p in added}
        for entry in found:
            row = FoundRow(entry, added=entry.path.resolve() in added_paths)
            row.chosen.connect(self.foundModelChosen)
            self.found_layout.addWidget(row)
            self.found_rows.append(row)

    def show_notice(self, text: str, level: str = "info") -> None:
        """A line under the header: what adding a model did, or why it could not."""
        color = current_palette().danger if level == "error" else current_palette().text_secondary
        self.notice.setStyleSheet(f"color: {color};")
        self.notice.setText(text)
        self.notice.setVisible(bool(text))

    def set_unfinished(self, size_bytes: int) -> None:
        """Say how much disk space conversions that were cut off still hold (hidden when none)."""
        self.unfinished_label.setText(f"Unfinished conversions hold {format_size(size_bytes)}; they are "
                                      "removed when the next conversion starts.")
        self.unfinished_label.setVisible(size_bytes > 0)

    def _start_download(self) -> None:
        repo_id = self.hub_combo.currentData()
        model = next(m for m in HUB_MODELS if m.repo_id == repo_id)
        destination = destination_for(repo_id, root=self.models_root)
        self.set_job(f"Downloading {model.label}")
        self._set_downloading(True)
        self.progress_label.setText(f"Starting {model.label}…")
        self.downloadRequested.emit(repo_id, str(destination), f"{model.label} (4-bit)")

    def set_job(self, title: str) -> None:
        """Name the download or conversion the progress below belongs to."""
        self.job_title.setText(title)
        self.job_card.show()

    def set_progress(self, report: dict) -> None:
        self._set_downloading(True)
        stage = STAGE_NAMES.get(report.get("stage", ""), report.get("stage", ""))
        fraction = float(report.get("fraction", 0.0))
        self.progress.setValue(int(fraction * 1000))
        detail = report.get("message") or report.get("item") or ""
        total = int(report.get("total") or 0)
        if report.get("stage") == "download" and total > 1:  # bytes over all files
            done = int(report.get("done") or 0)
            detail = f"{report.get('item') or detail} · {done / 1e9:.1f} of {total / 1e9:.1f} GB"
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
            self.job_card.show()
            self.progress_label.show()


class ModelRowPlaceholder(QLabel):
    def __init__(self):
        super().__init__("No models yet. The offline starter model is used until you download or add one.")
        self.setObjectName("hint")
        self.setWordWrap(True)
