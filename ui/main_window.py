"""The main window's layout: sidebar, header, transcript or empty state, banner and composer.

View only: the controller wires the signals to history and the engine.
"""

from __future__ import annotations

import sys
from typing import Optional

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QAction, QCloseEvent, QDragEnterEvent, QDropEvent, QImage, QKeySequence, QShortcut
from PySide6.QtWidgets import (QFrame, QHBoxLayout, QLabel, QMainWindow, QMenu, QSplitter, QStackedWidget,
                               QVBoxLayout, QWidget)

from gemma4_mac.model_sources import might_be_model

from . import icons
from .composer import Composer, local_files
from .sidebar import Sidebar
from .theme import Palette
from .transcript import COLUMN_WIDTH, EmptyState, TranscriptView
from .widgets import Banner, IconButton, refresh_palette


class DropOverlay(QFrame):
    """Covers the chat while files are dragged over it: attachments, or a model to add."""

    ATTACH = ("Drop files to attach them", "Images, screenshots, PDFs, text and code, audio and video")
    MODEL = ("Drop to add this model", "An MLX model folder is used where it is; a Hugging Face checkpoint "
             "or a GGUF file is converted to 4-bit MLX first.")

    def __init__(self, parent: QWidget):
        super().__init__(parent)
        self.setObjectName("dropOverlay")
        layout = QVBoxLayout(self)
        self.label = QLabel(self.ATTACH[0])
        self.label.setObjectName("dropOverlayText")
        self.label.setAlignment(Qt.AlignCenter)
        self.hint = QLabel(self.ATTACH[1])
        self.hint.setObjectName("hint")
        self.hint.setAlignment(Qt.AlignCenter)
        self.hint.setWordWrap(True)
        layout.addStretch(1)
        layout.addWidget(self.label)
        layout.addWidget(self.hint)
        layout.addStretch(1)
        self.setAttribute(Qt.WA_TransparentForMouseEvents)
        self.hide()

    def set_model(self, model: bool) -> None:
        """Say what the drop will do: add a model (a folder, a GGUF file) or attach files."""
        title, hint = self.MODEL if model else self.ATTACH
        self.label.setText(title)
        self.hint.setText(hint)


class MainWindow(QMainWindow):
    filesDropped = Signal(list)
    imageDropped = Signal(QImage)
    closing = Signal()

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.setWindowTitle("Gemma")
        self.setWindowIcon(icons.app_icon())
        self.setUnifiedTitleAndToolBarOnMac(True)
        self.resize(1180, 780)
        self.setMinimumSize(720, 480)
        self.setAcceptDrops(True)

        self.sidebar = Sidebar()
        self.chat_area = QWidget()
        self.chat_area.setObjectName("chatArea")
        chat = QVBoxLayout(self.chat_area)
        chat.setContentsMargins(0, 0, 0, 0)
        chat.setSpacing(0)

        header = QFrame()
        header.setObjectName("headerBar")
        header.setFixedHeight(48)
        header_layout = QHBoxLayout(header)
        header_layout.setContentsMargins(12, 0, 12, 0)
        self.sidebar_button = IconButton("sidebar", "Show or hide the sidebar", size=19)
        self.sidebar_button.clicked.connect(self.toggle_sidebar)
        self.header_title = QLabel("New chat")
        self.header_title.setObjectName("headerTitle")
        self.export_button = IconButton("export", "Export this chat", size=18)
        header_layout.addWidget(self.sidebar_button)
        header_layout.addSpacing(6)
        header_layout.addWidget(self.header_title)
        header_layout.addStretch(1)
        header_layout.addWidget(self.export_button)
        chat.addWidget(header)

        self.stack = QStackedWidget()
        self.empty_state = EmptyState()
        self.transcript = TranscriptView()
        self.stack.addWidget(self.empty_state)
        self.stack.addWidget(self.transcript)
        chat.addWidget(self.stack, 1)

        bottom = QWidget()
        bottom.setObjectName("chatArea")
        bottom_row = QHBoxLayout(bottom)
        bottom_row.setContentsMargins(24, 4, 24, 10)
        column = QVBoxLayout()
        column.setSpacing(8)
        self.banner = Banner()
        self.composer = Composer()
        self.footnote = QLabel("Gemma runs on this Mac and can make mistakes. Check important facts.")
        self.footnote.setObjectName("hint")
        self.footnote.setAlignment(Qt.AlignCenter)
        column.addWidget(self.banner)
        column.addWidget(self.composer)
        column.addWidget(self.footnote)
        holder = QWidget()
        holder.setLayout(column)
        column.setContentsMargins(0, 0, 0, 0)
        holder.setMaximumWidth(COLUMN_WIDTH + 40)
        bottom_row.addStretch(1)
        bottom_row.addWidget(holder, 100)
        bottom_row.addStretch(1)
        chat.addWidget(bottom)

        self.splitter = QSplitter(Qt.Horizontal)
        self.splitter.addWidget(self.sidebar)
        self.splitter.addWidget(self.chat_area)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setSizes([260, 920])
        self.splitter.setHandleWidth(1)
        self.splitter.setCollapsible(1, False)
        self.setCentralWidget(self.splitter)

        self.drop_overlay = DropOverlay(self.chat_area)
        self._build_model_menu()
        self.shortcuts = {
            "new": QShortcut(QKeySequence.New, self),
            "settings": QShortcut(QKeySequence.Preferences, self),
            "settings_alt": QShortcut(QKeySequence("Ctrl+,"), self),
            "search": QShortcut(QKeySequence.Find, self),
            "stop": QShortcut(QKeySequence(Qt.Key_Escape), self),
            "quit": QShortcut(QKeySequence.Quit, self),  # the app wires it (the menu bar may keep it alive)
        }
        self.shortcuts["search"].activated.connect(self.sidebar.search.setFocus)
        self.show_empty(True)

    def _build_model_menu(self) -> None:
        """The model actions, shared by the sidebar's model menu and (on macOS) the menu bar's Model menu."""
        self.add_folder_action = QAction("Add Model from Folder…", self)
        self.add_folder_action.setToolTip("Use an MLX model folder where it is, or convert a Hugging Face "
                                          "checkpoint")
        self.add_file_action = QAction("Add GGUF File…", self)
        self.add_file_action.setToolTip("Convert a GGUF file (llama.cpp, LM Studio, Ollama) to MLX")
        self.manage_models_action = self.sidebar.manage_action
        self.model_menu = QMenu("Model", self)
        for action in (self.add_folder_action, self.add_file_action):
            self.model_menu.addAction(action)
        self.model_menu.addSeparator()
        self.model_menu.addAction(self.manage_models_action)
        self.sidebar.set_model_menu_actions([self.add_folder_action, self.add_file_action])
        if sys.platform == "darwin":  # the Mac's global menu bar; elsewhere the sidebar's menu is enough
            self.menuBar().addMenu(self.model_menu)

    def show_empty(self, empty: bool) -> None:
        self.stack.setCurrentWidget(self.empty_state if empty else self.transcript)

    def toggle_sidebar(self) -> None:
        self.sidebar.setVisible(not self.sidebar.isVisible())

    def apply_palette(self, palette: Palette) -> None:
        """Called with each new palette (system light/dark switch)."""
        refresh_palette(self.centralWidget(), palette)

    # drag and drop anywhere over the window

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        mime = event.mimeData()
        files = local_files(mime)
        if files or mime.hasImage():
            event.acceptProposedAction()
            model = any(might_be_model(path) for path in files)
            self.drop_overlay.set_model(model)
            self.drop_overlay.setGeometry(self.chat_area.rect().adjusted(16, 56, -16, -16))
            self.drop_overlay.raise_()
            self.drop_overlay.show()
            self.composer.set_drop_target(not model)  # a model is added, not attached to the message

    def dragLeaveEvent(self, event) -> None:
        self._end_drag()

    def dropEvent(self, event: QDropEvent) -> None:
        self._end_drag()
        mime = event.mimeData()
        files = local_files(mime)
        if files:
            self.filesDropped.emit(files)
        elif mime.hasImage():
            image = QImage(mime.imageData())
            if not image.isNull():
                self.imageDropped.emit(image)
        event.acceptProposedAction()

    def _end_drag(self) -> None:
        self.drop_overlay.hide()
        self.composer.set_drop_target(False)

    def closeEvent(self, event: QCloseEvent) -> None:
        self.closing.emit()
        super().closeEvent(event)
