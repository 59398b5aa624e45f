"""The sidebar: new chat, search, conversations grouped by date, the model menu, progress and settings."""

from __future__ import annotations

import html
import time
from typing import Optional

from PySide6.QtCore import QModelIndex, QPoint, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QAbstractTextDocumentLayout, QAction, QColor, QPainter, QPalette, QTextDocument
from PySide6.QtWidgets import (QAbstractItemView, QFrame, QHBoxLayout, QLabel, QLineEdit, QListWidget,
                               QListWidgetItem, QMenu, QProgressBar, QPushButton, QStyle, QStyledItemDelegate,
                               QStyleOptionViewItem, QVBoxLayout, QWidget)

from gemma4_mac.history import HIT_END, HIT_START, Conversation, SearchHit

from . import icons
from .theme import Palette, current_palette
from .widgets import IconButton

ID_ROLE = Qt.UserRole + 1
KIND_ROLE = Qt.UserRole + 2
SNIPPET_ROLE = Qt.UserRole + 3


def date_group(timestamp: float, now: Optional[float] = None) -> str:
    """The sidebar section a conversation falls in."""
    now = now if now is not None else time.time()
    today = time.localtime(now)
    midnight = time.mktime((today.tm_year, today.tm_mon, today.tm_mday, 0, 0, 0, 0, 0, -1))
    if timestamp >= midnight:
        return "Today"
    if timestamp >= midnight - 86400:
        return "Yesterday"
    if timestamp >= midnight - 7 * 86400:
        return "Previous 7 days"
    if timestamp >= midnight - 30 * 86400:
        return "Previous 30 days"
    return "Older"


class ConversationDelegate(QStyledItemDelegate):
    """Paints headers, conversation rows with a rounded highlight, and search snippets."""

    def sizeHint(self, option: QStyleOptionViewItem, index: QModelIndex) -> QSize:
        kind = index.data(KIND_ROLE)
        if kind == "header":
            return QSize(0, 30)  # rows take the list's width: never wider, so it never scrolls sideways
        return QSize(0, 52 if index.data(SNIPPET_ROLE) else 34)

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: QModelIndex) -> None:
        palette = current_palette()
        painter.save()
        painter.setRenderHint(QPainter.Antialiasing)
        rect = QRectF(option.rect).adjusted(8, 1, -8, -1)
        if index.data(KIND_ROLE) == "header":
            font = option.font
            font.setPixelSize(11)
            font.setBold(True)
            painter.setFont(font)
            painter.setPen(QColor(palette.text_tertiary))
            painter.drawText(rect.adjusted(8, 8, 0, 0), Qt.AlignLeft | Qt.AlignVCenter, index.data(Qt.DisplayRole))
            painter.restore()
            return
        selected = bool(option.state & QStyle.State_Selected)
        hovered = bool(option.state & QStyle.State_MouseOver)
        if selected or hovered:
            painter.setPen(Qt.NoPen)
            painter.setBrush(QColor(palette.selection if selected else palette.hover))
            painter.drawRoundedRect(rect, 7, 7)
        font = option.font
        font.setPixelSize(13)
        font.setWeight(font.Weight.Medium if selected else font.Weight.Normal)
        painter.setFont(font)
        painter.setPen(QColor(palette.text))
        snippet = index.data(SNIPPET_ROLE)
        title_rect = rect.adjusted(10, 0, -8, 0)
        if snippet:
            title_rect.setHeight(28)
        title = painter.fontMetrics().elidedText(index.data(Qt.DisplayRole), Qt.ElideRight, int(title_rect.width()))
        painter.drawText(title_rect, Qt.AlignLeft | Qt.AlignVCenter, title)
        if snippet:
            self._paint_snippet(painter, rect.adjusted(10, 24, -8, -4), snippet, palette, option)
        painter.restore()

    @staticmethod
    def _paint_snippet(painter: QPainter, rect: QRectF, snippet: str, palette: Palette, option) -> None:
        text = html.escape(" ".join(snippet.split()))
        text = text.replace(HIT_START, f"<b style='color:{palette.text}'>").replace(HIT_END, "</b>")
        document = QTextDocument()
        font = option.font
        font.setPixelSize(11)
        document.setDefaultFont(font)
        document.setDocumentMargin(0)
        document.setHtml(f"<span style='color:{palette.text_secondary}'>{text}</span>")
        document.setTextWidth(10_000)
        painter.translate(rect.topLeft())
        painter.setClipRect(QRectF(0, 0, rect.width(), rect.height()))
        context = QAbstractTextDocumentLayout.PaintContext()
        context.palette.setColor(QPalette.Text, QColor(palette.text_secondary))
        document.documentLayout().draw(painter, context)


class Sidebar(QFrame):
    newChatClicked = Signal()
    conversationSelected = Signal(int)
    renameRequested = Signal(int, str)
    deleteRequested = Signal(int)
    exportRequested = Signal(int, str)  # conversation id, "markdown" | "json"
    searchChanged = Signal(str)
    settingsClicked = Signal()
    modelClicked = Signal()  # "Manage Models…" in the model menu
    modelChosen = Signal(str)  # a model folder picked in the model menu
    progressCancelled = Signal()

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.setObjectName("sidebar")
        self.setMinimumWidth(220)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 12, 10, 10)
        layout.setSpacing(10)
        top = QHBoxLayout()
        top.setContentsMargins(6, 0, 0, 0)
        self.logo = QLabel()
        self.logo.setPixmap(icons.avatar_pixmap(18))
        self.title = QLabel("Gemma")
        self.title.setObjectName("appTitle")
        self.new_button = IconButton("compose", "New chat (⌘N)", size=19)
        self.new_button.clicked.connect(self.newChatClicked)
        top.addWidget(self.logo)
        top.addWidget(self.title)
        top.addStretch(1)
        top.addWidget(self.new_button)
        layout.addLayout(top)
        self.search = QLineEdit()
        self.search.setObjectName("searchField")
        self.search.setPlaceholderText("Search chats")
        self.search.setClearButtonEnabled(True)
        self.search_action = self.search.addAction(icons.icon("search", current_palette().text_tertiary, 14),
                                                   QLineEdit.LeadingPosition)
        self.search.textChanged.connect(self.searchChanged)
        layout.addWidget(self.search)
        self.list = QListWidget()
        self.list.setItemDelegate(ConversationDelegate(self.list))
        self.list.setMouseTracking(True)
        self.list.setEditTriggers(QAbstractItemView.EditKeyPressed)
        self.list.setVerticalScrollMode(QAbstractItemView.ScrollPerPixel)
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.list.setContextMenuPolicy(Qt.CustomContextMenu)
        self.list.customContextMenuRequested.connect(self._context_menu)
        self.list.currentItemChanged.connect(self._on_current_changed)
        self.list.itemChanged.connect(self._on_item_changed)
        layout.addWidget(self.list, 1)
        self.empty_label = QLabel("No chats yet")
        self.empty_label.setObjectName("hint")
        self.empty_label.setAlignment(Qt.AlignCenter)
        layout.addWidget(self.empty_label)
        bottom = QHBoxLayout()
        bottom.setSpacing(2)
        self.model_button = QPushButton()
        self.model_button.setObjectName("modelButton")
        self.model_button.setCursor(Qt.PointingHandCursor)
        self.model_button.setIconSize(QSize(16, 16))
        self.model_button.setToolTip("Models on this Mac")
        self.model_button.clicked.connect(self.show_model_menu)
        self.model_menu = QMenu(self)
        self._model_choices: list[tuple[str, str]] = []
        self._current_model = ""
        self._menu_actions: list[QAction] = []
        self.manage_action = QAction("Manage Models…", self)
        self.manage_action.triggered.connect(self.modelClicked)
        self.settings_button = IconButton("gear", "Settings (⌘,)", size=18)
        self.settings_button.clicked.connect(self.settingsClicked)
        layout.addWidget(self._build_progress())
        bottom.addWidget(self.model_button, 1)
        bottom.addWidget(self.settings_button)
        layout.addLayout(bottom)
        self._current_id: Optional[int] = None
        self._populating = False
        self.set_model_status("No model", "idle")
        self._rebuild_model_menu()

    # content

    def set_conversations(self, conversations: list[Conversation], current_id: Optional[int]) -> None:
        """Show all conversations grouped by date."""
        self._populate([(c.id, c.title, "", date_group(c.updated_at)) for c in conversations], current_id)

    def set_search_results(self, hits: list[SearchHit], current_id: Optional[int]) -> None:
        """Show search hits with their snippets (matched words in bold)."""
        rows = [(h.conversation_id, h.title, h.snippet, f"{len(hits)} result{'s' if len(hits) != 1 else ''}")
                for h in hits]
        self._populate(rows, current_id, empty_text="No matches")

    def _populate(self, rows, current_id: Optional[int], empty_text: str = "No chats yet") -> None:
        self._populating = True
        self.list.clear()
        group = None
        for cid, title, snippet, heading in rows:
            if heading != group:
                header = QListWidgetItem(heading)
                header.setData(KIND_ROLE, "header")
                header.setFlags(Qt.NoItemFlags)
                self.list.addItem(header)
                group = heading
            item = QListWidgetItem(title)
            item.setData(ID_ROLE, cid)
            item.setData(KIND_ROLE, "conversation")
            item.setData(SNIPPET_ROLE, snippet)
            item.setFlags(Qt.ItemIsEnabled | Qt.ItemIsSelectable | Qt.ItemIsEditable)
            self.list.addItem(item)
            if cid == current_id:
                self.list.setCurrentItem(item)
        self._current_id = current_id
        self.empty_label.setText(empty_text)
        self.empty_label.setVisible(not rows)
        self._populating = False

    def item_for(self, conversation_id: int) -> Optional[QListWidgetItem]:
        for row in range(self.list.count()):
            item = self.list.item(row)
            if item.data(ID_ROLE) == conversation_id:
                return item
        return None

    def conversation_ids(self) -> list[int]:
        return [self.list.item(r).data(ID_ROLE) for r in range(self.list.count())
                if self.list.item(r).data(KIND_ROLE) == "conversation"]

    def set_model_status(self, name: str, state: str) -> None:
        """state: "idle", "loading", "ready", "error"."""
        palette = current_palette()
        colors = {"loading": palette.warning, "ready": palette.success, "error": palette.danger}
        self.model_button.setIcon(icons.icon("chip", colors.get(state, palette.text_tertiary), 16))
        label = {"loading": f"Loading {name}…", "error": "Model failed to load"}.get(state, name)
        metrics = self.model_button.fontMetrics()
        self.model_button.setText(metrics.elidedText(label, Qt.ElideRight, max(120, self.model_button.width() - 44)))
        self.model_button.setToolTip(f"{label}\nClick to switch, add or manage models")
        self._model_state = (name, state)

    # the model menu and the progress of building or converting a model

    def _build_progress(self) -> QFrame:
        self.progress_box = QFrame()
        self.progress_box.setObjectName("card")
        box = QVBoxLayout(self.progress_box)
        box.setContentsMargins(10, 8, 6, 8)
        box.setSpacing(6)
        row = QHBoxLayout()
        self.progress_label = QLabel()
        self.progress_label.setObjectName("chipMeta")
        self.progress_label.setWordWrap(True)
        self.progress_cancel = IconButton("close", "Cancel", size=12)
        self.progress_cancel.clicked.connect(self.progressCancelled)
        row.addWidget(self.progress_label, 1)
        row.addWidget(self.progress_cancel, 0, Qt.AlignTop)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setTextVisible(False)
        box.addLayout(row)
        box.addWidget(self.progress_bar)
        self.progress_box.hide()
        return self.progress_box

    def set_progress(self, text: str, fraction: Optional[float], cancellable: bool = False) -> None:
        """Show a model being built or converted: `text` (with its percentage) over a bar; `fraction` None
        gives a busy bar (a step with no measure)."""
        self.progress_label.setText(text)
        if fraction is None:
            self.progress_bar.setRange(0, 0)
        else:
            self.progress_bar.setRange(0, 1000)
            self.progress_bar.setValue(int(max(0.0, min(1.0, fraction)) * 1000))
        self.progress_cancel.setVisible(cancellable)
        self.progress_box.show()

    def clear_progress(self) -> None:
        self.progress_box.hide()

    def set_model_menu_actions(self, actions: list[QAction]) -> None:
        """The window's model actions (Add Model from Folder…, …), shown under the list of models."""
        self._menu_actions = list(actions)
        self._rebuild_model_menu()

    def set_model_choices(self, choices: list[tuple[str, str]], current: str) -> None:
        """The models the menu offers to switch to: (label, folder) pairs, `current` checked."""
        self._model_choices, self._current_model = list(choices), current
        self._rebuild_model_menu()

    def _rebuild_model_menu(self) -> None:
        menu = self.model_menu
        menu.clear()
        for label, path in self._model_choices:
            action = menu.addAction(label)
            action.setCheckable(True)
            action.setChecked(path == self._current_model)
            action.setData(path)
            action.triggered.connect(lambda _checked=False, chosen=path: self.modelChosen.emit(chosen))
        if self._model_choices:
            menu.addSeparator()
        for action in self._menu_actions:
            menu.addAction(action)
        menu.addAction(self.manage_action)

    def model_menu_texts(self) -> list[str]:
        """The menu's item texts, in order (for tests and the starter banner's wording)."""
        return [a.text() for a in self.model_menu.actions() if a.text() and not a.isSeparator()]

    def show_model_menu(self) -> None:
        """Open the model menu above the model button (it sits at the bottom of the sidebar)."""
        size = self.model_menu.sizeHint()
        corner = self.model_button.mapToGlobal(QPoint(0, -size.height() - 4))
        self.model_menu.popup(corner)

    def apply_palette(self, palette: Palette) -> None:
        self.search_action.setIcon(icons.icon("search", palette.text_tertiary, 14))
        self.logo.setPixmap(icons.avatar_pixmap(18))
        if hasattr(self, "_model_state"):
            self.set_model_status(*self._model_state)
        self.list.viewport().update()

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        if hasattr(self, "_model_state"):
            self.set_model_status(*self._model_state)

    # events

    def _on_current_changed(self, current: Optional[QListWidgetItem], _previous) -> None:
        if self._populating or current is None or current.data(KIND_ROLE) != "conversation":
            return
        cid = current.data(ID_ROLE)
        if cid != self._current_id:
            self._current_id = cid
            self.conversationSelected.emit(cid)

    def _on_item_changed(self, item: QListWidgetItem) -> None:
        if not self._populating and item.data(KIND_ROLE) == "conversation":
            self.renameRequested.emit(item.data(ID_ROLE), item.text())

    def _context_menu(self, position) -> None:
        item = self.list.itemAt(position)
        if item is None or item.data(KIND_ROLE) != "conversation":
            return
        cid = item.data(ID_ROLE)
        palette = current_palette()
        menu = QMenu(self)
        menu.addAction(icons.icon("pencil", palette.text, 15), "Rename", lambda: self.list.editItem(item))
        menu.addAction(icons.icon("export", palette.text, 15), "Export as Markdown…",
                       lambda: self.exportRequested.emit(cid, "markdown"))
        menu.addAction(icons.icon("export", palette.text, 15), "Export as JSON…",
                       lambda: self.exportRequested.emit(cid, "json"))
        menu.addSeparator()
        menu.addAction(icons.icon("trash", palette.danger, 15), "Delete", lambda: self.deleteRequested.emit(cid))
        menu.exec(self.list.viewport().mapToGlobal(position))
