"""The menu-bar item and the wiring of the quick-ask features into the running app.

`install_menu_bar(app, window, controller)` adds the menu-bar item (Quick Ask, Open Window, the
loaded model and its memory, Show in Dock, Quit), the global hotkey and the quick-ask panel to the
app that `ui.app.build_app` made. Where no system tray exists the app keeps working: the
panel still opens with the hotkey and closing the window quits as usual.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from PySide6.QtCore import QEvent, QObject, QRectF, Qt, Signal
from PySide6.QtGui import QBrush, QIcon, QImage, QPainter, QPixmap, QScreen
from PySide6.QtWidgets import QApplication, QMenu, QSystemTrayIcon

from gemma4_mac import macos
from gemma4_mac.history import format_bytes
from gemma4_mac.hotkey import Hotkey, HotkeyBackend, HotkeyError, HotkeyUnavailable, default_hotkey

from . import icons
from .global_hotkey import GlobalHotkey
from .quick_ask import QuickAskPanel
from .quick_ask_controller import QuickAskController, grab_screen

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
TRAY_TEMPLATE = "TrayTemplate.png"  # macOS menu-bar icons: black on transparent, 22 pt (and @2x)
TRAY_SIZE = 22


def tray_template_image(size: int = TRAY_SIZE) -> QImage:
    """Gemma's sparkle as a black silhouette on transparency (macOS tints template images itself)."""
    image = QImage(size, size, QImage.Format_ARGB32_Premultiplied)
    image.fill(Qt.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.Antialiasing)
    painter.setPen(Qt.NoPen)
    painter.setBrush(QBrush(Qt.black))
    inset = size * 0.14
    painter.drawPath(icons.sparkle_path(QRectF(inset, inset, size - 2 * inset, size - 2 * inset)))
    painter.end()
    return image


def tray_icon(mac: Optional[bool] = None, resources: Path = RESOURCES) -> QIcon:
    """The menu-bar icon: a template (mask) image on macOS, the colour sparkle elsewhere."""
    mac = sys.platform == "darwin" if mac is None else mac
    if not mac:
        return QIcon(icons.avatar_pixmap(TRAY_SIZE))
    icon = QIcon()
    one, two = resources / TRAY_TEMPLATE, resources / TRAY_TEMPLATE.replace(".png", "@2x.png")
    if one.is_file() and two.is_file():
        icon.addFile(str(one))
        icon.addFile(str(two))
    else:
        for scale in (1, 2):
            pixmap = QPixmap.fromImage(tray_template_image(TRAY_SIZE * scale))
            pixmap.setDevicePixelRatio(scale)
            icon.addPixmap(pixmap)
    icon.setIsMask(True)
    return icon


class TrayMenu(QObject):
    """The menu-bar item and its menu. With no system tray, `tray` is None and only the menu exists."""

    quickAskRequested = Signal()
    openWindowRequested = Signal()
    quitRequested = Signal()
    dockIconToggled = Signal(bool)

    def __init__(self, *, available: Optional[bool] = None, dock_option: Optional[bool] = None,
                 parent: Optional[QObject] = None):
        super().__init__(parent)
        self.available = QSystemTrayIcon.isSystemTrayAvailable() if available is None else available
        self.weights_bytes = 0
        self.peak_bytes = 0
        self.menu = QMenu()
        self.quick_ask_action = self.menu.addAction("Quick Ask")
        self.quick_ask_action.triggered.connect(self.quickAskRequested)
        self.open_window_action = self.menu.addAction("Open Window")
        self.open_window_action.triggered.connect(self.openWindowRequested)
        self.menu.addSeparator()
        self.model_action = self.menu.addAction("No model loaded")
        self.model_action.setEnabled(False)
        self.memory_action = self.menu.addAction("")
        self.memory_action.setEnabled(False)
        self.memory_action.setVisible(False)
        self.menu.addSeparator()
        self.dock_action = self.menu.addAction("Show in Dock")
        self.dock_action.setCheckable(True)
        self.dock_action.setChecked(True)
        self.dock_action.setVisible(sys.platform == "darwin" if dock_option is None else dock_option)
        self.dock_action.toggled.connect(self.dockIconToggled)
        self.menu.addSeparator()
        self.quit_action = self.menu.addAction("Quit Gemma")
        self.quit_action.triggered.connect(self.quitRequested)
        self.tray: Optional[QSystemTrayIcon] = None
        if self.available:
            self.tray = QSystemTrayIcon(tray_icon(), self)
            self.tray.setToolTip("Gemma")
            self.tray.setContextMenu(self.menu)
            self.tray.activated.connect(self._on_activated)
            self.tray.show()

    def _on_activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        # a left click on Linux panels; on macOS a click opens the menu itself
        if reason == QSystemTrayIcon.Trigger and sys.platform != "darwin":
            self.quickAskRequested.emit()

    def set_hotkey(self, hotkey: Optional[Hotkey]) -> None:
        """Show the hotkey next to Quick Ask (Qt menus right-align the text after a tab)."""
        self.quick_ask_action.setText(f"Quick Ask\t{hotkey.display()}" if hotkey else "Quick Ask")

    def set_dock_visible(self, visible: bool) -> None:
        blocked = self.dock_action.blockSignals(True)
        self.dock_action.setChecked(visible)
        self.dock_action.blockSignals(blocked)

    def set_loading(self, path: str = "") -> None:
        self.model_action.setText("Loading " + (Path(path).name if path else "the starter model") + "…")
        self.memory_action.setVisible(False)

    def set_model(self, info: Optional[dict]) -> None:
        """The loaded model's name and the memory its weights take."""
        if not info:
            self.model_action.setText("No model loaded")
            self.memory_action.setVisible(False)
            return
        name = "Starter model (Gemma 3 270M)" if info.get("is_starter") else info.get("name", "Model")
        self.model_action.setText(f"Model: {name}")
        self.weights_bytes, self.peak_bytes = int(info.get("size_bytes") or 0), 0
        self._show_memory()

    def set_failed(self, message: str) -> None:
        self.model_action.setText("The model could not be loaded")
        self.model_action.setToolTip(message)
        self.memory_action.setVisible(False)

    def set_peak(self, stats: dict) -> None:
        """Record the last answer's peak memory (from the engine's generation stats)."""
        peak = int(stats.get("peak_memory_bytes") or 0)
        if peak:
            self.peak_bytes = peak
            self._show_memory()

    def _show_memory(self) -> None:
        parts = []
        if self.weights_bytes:
            parts.append(f"{format_bytes(self.weights_bytes)} weights")
        if self.peak_bytes:
            parts.append(f"{format_bytes(self.peak_bytes)} peak while answering")
        self.memory_action.setText("Memory: " + " · ".join(parts) if parts else "")
        self.memory_action.setVisible(bool(parts))

    def hide(self) -> None:
        if self.tray is not None:
            self.tray.hide()


class _FileOpenFilter(QObject):
    """Files dropped on the Dock icon (or opened with the app) arrive as QFileOpenEvent on macOS."""

    def __init__(self, on_file: Callable[[str], None], parent: QObject):
        super().__init__(parent)
        self.on_file = on_file

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.FileOpen and event.file():
            self.on_file(event.file())
            return True
        return super().eventFilter(watched, event)


def _activate() -> None:
    try:
        macos.activate_app()
    except macos.MacIntegrationError:
        pass  # without pyobjc the panel still shows; it may open behind the front app on macOS


@dataclass
class MenuBar:
    """What `install_menu_bar` built; keep it referenced for the app's lifetime."""

    tray: TrayMenu
    panel: QuickAskPanel
    quick_ask: QuickAskController
    hotkey: GlobalHotkey
    problems: list[str] = field(default_factory=list)
    window: object = None
    controller: object = None
    app: object = None
    file_filter: Optional[QObject] = None
    quit: Callable[[], object] = lambda: QApplication.quit()

    def uninstall(self) -> None:
        """Undo `install_menu_bar` (tests; an app that turns the feature off)."""
        self.hotkey.close()
        self.tray.hide()
        self.panel.hide()
        if self.file_filter is not None and self.app is not None:
            self.app.removeEventFilter(self.file_filter)
        self.app.setQuitOnLastWindowClosed(True)
        for item in (self.hotkey, self.tray, self.tray.menu, self.file_filter):
            if item is not None:
                item.deleteLater()

    def show_window(self) -> None:
        """Bring the main window forward (un-minimise, raise, activate)."""
        window = self.window
        if window.isMinimized():
            window.showNormal()
        else:
            window.show()
        window.raise_()
        window.activateWindow()
        _activate()

    def open_in_window(self, conversation_id: int) -> None:
        """Show `conversation_id` in the main window ("Continue in window")."""
        self.show_window()
        # it may be on screen already and have gained turns in the panel: always redraw it
        self.controller.open_conversation(conversation_id, reload=True)

    def set_hotkey(self, text: str) -> Hotkey:
        """Change the global hotkey (raises HotkeyError / HotkeyUnavailable; the old one stays then)."""
        hotkey = self.hotkey.register(text)
        self.tray.set_hotkey(hotkey)
        return hotkey

    def apply_settings(self, old, new) -> None:
        """Follow a change of the hotkey or the menu-bar-only option made in Settings."""
        if new.hotkey != old.hotkey:
            text = new.hotkey or str(default_hotkey())
            try:
                self.set_hotkey(text)
            except (HotkeyError, HotkeyUnavailable) as error:
                self.window.banner.show_message(f"The hotkey {text!r} cannot be used: {error}", "warning")
        if new.menu_bar_only != old.menu_bar_only:
            self.set_dock_icon_visible(not new.menu_bar_only)

    def set_dock_icon_visible(self, visible: bool) -> None:
        """Menu-bar-only (False) or with a Dock icon (True); saved when the settings have the field."""
        try:
            macos.set_dock_icon_visible(visible)
        except macos.MacIntegrationError as error:
            self.problems.append(str(error))
            self.window.banner.show_message(str(error), "warning")
            return
        self.tray.set_dock_visible(visible)
        settings = self.controller.settings
        if hasattr(settings, "menu_bar_only") and settings.menu_bar_only == visible:
            self.controller.apply_settings(dataclasses.replace(settings, menu_bar_only=not visible))


def install_menu_bar(app: QApplication, window, controller, *, hotkey_backend: Optional[HotkeyBackend] = None,
                     tray_available: Optional[bool] = None, hotkey: Optional[str] = None,
                     menu_bar_only: Optional[bool] = None,
                     screen_grabber: Callable[[QScreen], QPixmap] = grab_screen,
                     quit: Optional[Callable[[], object]] = None, file_open: Optional[bool] = None) -> MenuBar:
    """Add the menu-bar item, the global hotkey and the quick-ask panel to a built app.

    `controller` is the window's ChatController (its engine, history, attachments and settings are
    shared). `hotkey` and `menu_bar_only` default to the settings' `hotkey` / `menu_bar_only` fields
    when they exist, else the platform's default hotkey and a Dock icon. `file_open` (default: on
    macOS) attaches files dropped on the Dock icon. Problems (a hotkey that cannot be registered,
    no menu bar) are shown in the window's banner and listed in `problems`.
    """
    settings = controller.settings
    if hotkey is None:
        hotkey = getattr(settings, "hotkey", "") or str(default_hotkey())
    if menu_bar_only is None:
        menu_bar_only = bool(getattr(settings, "menu_bar_only", False))
    panel = QuickAskPanel()
    quick = QuickAskController(panel, controller.engine, controller.history, controller.attachments,
                               lambda: controller.settings, screen_grabber=screen_grabber, activate=_activate)
    tray = TrayMenu(available=tray_available, parent=app)
    global_hotkey = GlobalHotkey(hotkey_backend, parent=app)
    bar = MenuBar(tray, panel, quick, global_hotkey, window=window, controller=controller, app=app,
                  quit=quit or app.quit)
    _register_hotkey(bar, hotkey)

    engine = controller.engine
    engine.modelLoading.connect(tray.set_loading)
    engine.modelLoaded.connect(tray.set_model)
    engine.modelLoadFailed.connect(tray.set_failed)
    engine.generationFinished.connect(tray.set_peak)
    if engine.model_info is not None:
        tray.set_model(engine.model_info)
    global_hotkey.activated.connect(quick.toggle)
    tray.quickAskRequested.connect(quick.show)
    tray.openWindowRequested.connect(bar.show_window)
    tray.quitRequested.connect(lambda: bar.quit())
    tray.dockIconToggled.connect(bar.set_dock_icon_visible)
    quick.continueRequested.connect(bar.open_in_window)
    quick.openWindowRequested.connect(bar.show_window)
    quick.conversationUpdated.connect(lambda _cid: controller.refresh_sidebar())
    if hasattr(controller, "settingsChanged"):
        controller.settingsChanged.connect(bar.apply_settings)
    if getattr(controller, "theme", None) is not None:
        controller.theme.themeChanged.connect(panel.apply_palette)
    if file_open is None:
        file_open = sys.platform == "darwin"  # only macOS sends QFileOpenEvent; a filter elsewhere costs time
    if file_open:
        bar.file_filter = _FileOpenFilter(lambda path: (bar.show_window(), controller.attach_files([path])), app)
        app.installEventFilter(bar.file_filter)
    app.aboutToQuit.connect(quick.shutdown)
    app.aboutToQuit.connect(global_hotkey.close)
    app.aboutToQuit.connect(tray.hide)

    if tray.available:
        # the app lives in the menu bar: closing the window hides it and leaves the engine running
        app.setQuitOnLastWindowClosed(False)
        try:
            window.closing.disconnect(controller.shutdown)
        except (RuntimeError, TypeError):
            pass  # this window's closing was not wired to shutdown: nothing to undo
    if menu_bar_only and not tray.available:
        bar.problems.append("Menu-bar-only mode needs a menu bar item, which this desktop cannot show; "
                            "the app keeps its Dock icon and window.")
    elif menu_bar_only:
        try:
            macos.set_dock_icon_visible(False)
        except macos.MacIntegrationError as error:
            bar.problems.append(str(error))
    tray.set_dock_visible(not (menu_bar_only and tray.available))
    if bar.problems:
        window.banner.show_message("\n".join(bar.problems), "warning")
    return bar


def _register_hotkey(bar: MenuBar, text: str) -> None:
    try:
        registered = bar.hotkey.register(text)
    except HotkeyError as error:
        fallback = default_hotkey()
        bar.problems.append(f"The hotkey in Settings cannot be used ({error}); using {fallback.display()}.")
        try:
            registered = bar.hotkey.register(fallback)
        except HotkeyUnavailable as unavailable:
            bar.problems.append(f"The quick-ask hotkey is off: {unavailable}")
            return
    except HotkeyUnavailable as error:
        instead = ("Open Quick Ask from the menu-bar item." if bar.tray.available
                   else "Ask in the main window instead.")
        bar.problems.append(f"The quick-ask hotkey is off: {error} {instead}")
        return
    bar.tray.set_hotkey(registered)
    bar.panel.setToolTip(f"Quick Ask ({registered.display()})")

