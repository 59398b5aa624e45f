"""Light and dark palettes that follow the system, and the app-wide style sheet built from them."""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QColor, QFont, QFontDatabase, QGuiApplication, QPalette
from PySide6.QtWidgets import QApplication


@dataclass(frozen=True)
class Palette:
    dark: bool
    window: str
    sidebar: str
    surface: str  # composer, cards
    border: str
    border_strong: str
    text: str
    text_secondary: str
    text_tertiary: str
    accent: str
    accent_text: str
    user_bubble: str
    code_background: str
    code_header: str
    inline_code: str
    selection: str
    hover: str
    danger: str
    success: str
    warning: str
    thought_rule: str


LIGHT = Palette(
    dark=False, window="#FFFFFF", sidebar="#F4F4F6", surface="#FFFFFF", border="#E4E4E9", border_strong="#D2D2D8",
    text="#1D1D1F", text_secondary="#6E6E73", text_tertiary="#A1A1A6", accent="#0A7CFF", accent_text="#FFFFFF",
    user_bubble="#EFEFF3", code_background="#F6F7F9", code_header="#ECEEF1", inline_code="#EDEDF1",
    selection="#E2E2E8", hover="#EAEAEE", danger="#E5484D", success="#2E9E5B", warning="#C98A00",
    thought_rule="#D8D8DE",
)
DARK = Palette(
    dark=True, window="#1C1C1E", sidebar="#242426", surface="#2A2A2D", border="#343437", border_strong="#46464A",
    text="#F2F2F7", text_secondary="#A0A0A7", text_tertiary="#6C6C72", accent="#0A84FF", accent_text="#FFFFFF",
    user_bubble="#2F2F33", code_background="#141416", code_header="#202023", inline_code="#313136",
    selection="#37373B", hover="#2F2F33", danger="#FF6369", success="#3DD68C", warning="#F5B93F",
    thought_rule="#414146",
)


def system_is_dark() -> bool:
    hints = QGuiApplication.styleHints()
    return hints.colorScheme() == Qt.ColorScheme.Dark


def resolve(preference: str = "system") -> Palette:
    """The palette for a theme preference ("system", "light" or "dark")."""
    if preference == "dark" or (preference == "system" and system_is_dark()):
        return DARK
    return LIGHT


def ui_font_family() -> str:
    """The system font on a Mac; Inter (or the default sans) elsewhere."""
    if sys.platform == "darwin":
        return QFont().defaultFamily()
    families = set(QFontDatabase.families())
    for family in ("Inter", "Cantarell", "Noto Sans", "DejaVu Sans"):
        if family in families:
            return family
    return QFont().defaultFamily()


def mono_font_family() -> str:
    families = set(QFontDatabase.families())
    for family in ("SF Mono", "Menlo", "JetBrains Mono", "DejaVu Sans Mono"):
        if family in families:
            return family
    return QFontDatabase.systemFont(QFontDatabase.FixedFont).family()


def qpalette(p: Palette) -> QPalette:
    pal = QPalette()
    roles = {
        QPalette.Window: p.window, QPalette.WindowText: p.text, QPalette.Base: p.surface,
        QPalette.AlternateBase: p.sidebar, QPalette.Text: p.text, QPalette.Button: p.surface,
        QPalette.ButtonText: p.text, QPalette.Highlight: p.accent, QPalette.HighlightedText: p.accent_text,
        QPalette.ToolTipBase: p.surface, QPalette.ToolTipText: p.text, QPalette.PlaceholderText: p.text_tertiary,
        QPalette.Link: p.accent, QPalette.Mid: p.border, QPalette.Midlight: p.border, QPalette.Light: p.surface,
        QPalette.Dark: p.border_strong,
    }
    for role, color in roles.items():
        pal.setColor(role, QColor(color))
    pal.setColor(QPalette.Disabled, QPalette.Text, QColor(p.text_tertiary))
    pal.setColor(QPalette.Disabled, QPalette.ButtonText, QColor(p.text_tertiary))
    pal.setColor(QPalette.Disabled, QPalette.WindowText, QColor(p.text_tertiary))
    return pal


def style_sheet(p: Palette) -> str:
    """The app-wide Qt style sheet; widgets are addressed by object name."""
    return f"""
    QWidget {{ color: {p.text}; font-size: 13px; }}
    QDialogButtonBox {{ dialogbuttonbox-buttons-have-icons: 0; }}
    QMainWindow, #chatArea, #transcriptColumn, QScrollArea#transcript, #transcript > QWidget > QWidget {{
        background: {p.window}; }}
    #sidebar {{ background: {p.sidebar}; border-right: 1px solid {p.border}; }}
    #sidebar QListView {{ background: transparent; border: none; outline: none; }}
    #appTitle {{ font-size: 14px; font-weight: 600; }}
    #searchField {{ background: {p.window if not p.dark else p.surface}; border: 1px solid {p.border};
        border-radius: 8px; padding: 5px 8px; }}
    #searchField:focus {{ border: 1px solid {p.accent}; }}
    QToolButton#iconButton {{ border: none; border-radius: 7px; padding: 4px; background: transparent; }}
    QToolButton#iconButton:hover {{ background: {p.hover}; }}
    QToolButton#iconButton:checked {{ background: {p.selection}; }}
    QPushButton#modelButton {{ border: 1px solid transparent; border-radius: 8px; padding: 6px 8px; font-size: 12px;
        text-align: left; background: transparent; }}
    QPushButton#modelButton:hover {{ background: {p.hover}; }}
    #headerBar {{ background: {p.window}; border-bottom: 1px solid {p.border}; }}
    #headerTitle {{ font-size: 14px; font-weight: 600; }}
    QPushButton#pill {{ border: 1px solid {p.border}; border-radius: 13px; padding: 4px 12px; background: {p.surface};
        color: {p.text_secondary}; }}
    QPushButton#pill:hover {{ background: {p.hover}; color: {p.text}; }}
    QPushButton#pill:checked {{ background: {_mix(p.accent, p.surface, 0.14)}; border-color: {_mix(p.accent, p.surface, 0.45)};
        color: {p.accent}; }}
    #composer {{ background: {p.surface}; border: 1px solid {p.border_strong}; border-radius: 18px; }}
    #composer[dropTarget="true"] {{ border: 2px dashed {p.accent}; }}
    #promptEdit {{ background: transparent; border: none; font-size: 14px; padding: 0px; }}
    #tokenCount {{ color: {p.text_tertiary}; font-size: 12px; }}
    #tokenCount[over="true"] {{ color: {p.danger}; font-weight: 600; }}
    QToolButton#sendButton {{ border: none; border-radius: 16px; background: {p.text}; }}
    QToolButton#sendButton:disabled {{ background: {p.border_strong}; }}
    QToolButton#stopButton {{ border: none; border-radius: 16px; background: {p.text}; }}
    #chip {{ background: {p.window if not p.dark else p.user_bubble}; border: 1px solid {p.border}; border-radius: 10px; }}
    #chipTitle {{ font-size: 12px; font-weight: 600; }}
    #chipMeta {{ font-size: 11px; color: {p.text_secondary}; }}
    QToolButton#chipRemove {{ border: none; border-radius: 9px; background: {p.text}; }}
    #recordingBar {{ background: transparent; }}
    #recordingTime {{ font-size: 13px; font-weight: 600; font-family: "{mono_font_family()}"; }}
    #userBubble {{ background: {p.user_bubble}; border-radius: 18px; }}
    #messageText {{ font-size: 14px; }}
    #statsLine {{ color: {p.text_tertiary}; font-size: 11.5px; }}
    QToolButton#messageAction {{ border: none; border-radius: 6px; padding: 3px; background: transparent; }}
    QToolButton#messageAction:hover {{ background: {p.hover}; }}
    #codeBlock {{ background: {p.code_background}; border: 1px solid {p.border}; border-radius: 10px; }}
    #codeHeader {{ background: {p.code_header}; border-top-left-radius: 10px; border-top-right-radius: 10px; }}
    #codeLanguage {{ color: {p.text_secondary}; font-size: 12px; }}
    QToolButton#copyCode {{ border: none; color: {p.text_secondary}; font-size: 12px; padding: 2px 6px;
        border-radius: 5px; background: transparent; }}
    QToolButton#copyCode:hover {{ background: {p.hover}; color: {p.text}; }}
    #codeBody, #codeBody > QWidget > QWidget {{ background: transparent; border: none; }}
    QToolButton#thinkingHeader {{ border: none; color: {p.text_secondary}; font-size: 13px; padding: 2px 0px;
        background: transparent; text-align: left; }}
    QToolButton#thinkingHeader:hover {{ color: {p.text}; }}
    #thinkingBody {{ border-left: 2px solid {p.thought_rule}; padding-left: 12px; }}
    #thinkingText {{ color: {p.text_secondary}; font-size: 13px; }}
    #toolCard {{ background: {p.code_background}; border: 1px solid {p.border}; border-radius: 10px; }}
    #toolTitle {{ font-weight: 600; font-size: 12.5px; }}
    #emptyTitle {{ font-size: 26px; font-weight: 600; }}
    #emptySubtitle {{ color: {p.text_secondary}; font-size: 14px; }}
    QPushButton#suggestion {{ border: 1px solid {p.border}; border-radius: 12px; padding: 10px 14px;
        background: {p.surface}; text-align: left; color: {p.text}; }}
    QPushButton#suggestion:hover {{ background: {p.hover}; }}
    #suggestionTitle {{ font-weight: 600; font-size: 13px; background: transparent; }}
    #suggestionHint {{ color: {p.text_secondary}; font-size: 12.5px; background: transparent; }}
    #banner {{ border-radius: 10px; border: 1px solid {p.border}; background: {p.surface}; }}
    #banner[level="error"] {{ border-color: {_mix(p.danger, p.surface, 0.5)}; background: {_mix(p.danger, p.surface, 0.08)}; }}
    #banner[level="warning"] {{ border-color: {_mix(p.warning, p.surface, 0.5)}; background: {_mix(p.warning, p.surface, 0.08)}; }}
    #dropOverlay {{ background: {_rgba(p.window, 0.88)}; border: 2px dashed {p.accent}; border-radius: 16px; }}
    #dropOverlayText {{ font-size: 18px; font-weight: 600; color: {p.accent}; }}
    QScrollBar:vertical {{ background: transparent; width: 10px; margin: 2px; }}
    QScrollBar::handle:vertical {{ background: {p.border_strong}; border-radius: 3px; min-height: 30px; }}
    QScrollBar:horizontal {{ background: transparent; height: 10px; margin: 2px; }}
    QScrollBar::handle:horizontal {{ background: {p.border_strong}; border-radius: 3px; min-width: 30px; }}
    QScrollBar::add-line, QScrollBar::sub-line {{ width: 0; height: 0; }}
    QScrollBar::add-page, QScrollBar::sub-page {{ background: transparent; }}
    QMenu {{ background: {p.surface}; border: 1px solid {p.border}; border-radius: 8px; padding: 4px; }}
    QMenu::item {{ padding: 5px 18px 5px 12px; border-radius: 5px; }}
    QMenu::item:selected {{ background: {p.accent}; color: {p.accent_text}; }}
    QMenu::separator {{ height: 1px; background: {p.border}; margin: 4px 6px; }}
    QDialog {{ background: {p.window}; }}
    #rule {{ background: {p.border}; border: none; }}
    #dialogTitle {{ font-size: 17px; font-weight: 600; }}
    #sectionTitle {{ font-size: 12px; font-weight: 600; color: {p.text_secondary}; }}
    #hint {{ color: {p.text_secondary}; font-size: 12px; }}
    #card {{ background: {p.surface if p.dark else p.sidebar}; border: 1px solid {p.border}; border-radius: 12px; }}
    QLineEdit, QPlainTextEdit#settingsText, QSpinBox, QDoubleSpinBox, QComboBox {{
        background: {p.surface}; border: 1px solid {p.border_strong}; border-radius: 6px; padding: 4px 6px;
        selection-background-color: {p.accent}; }}
    QLineEdit:focus, QPlainTextEdit#settingsText:focus, QSpinBox:focus, QDoubleSpinBox:focus, QComboBox:focus {{
        border: 1px solid {p.accent}; }}
    QAbstractSpinBox::up-button, QAbstractSpinBox::down-button {{ width: 0px; border: none; }}
    QComboBox::drop-down {{ border: none; width: 22px; }}
    QComboBox::down-arrow {{ image: url("{_arrow_file(p)}"); width: 12px; height: 12px; }}
    QPushButton {{ background: {p.surface}; border: 1px solid {p.border_strong}; border-radius: 6px;
        padding: 5px 14px; }}
    QPushButton:hover {{ background: {p.hover}; }}
    QPushButton:default, QPushButton#primary {{ background: {p.accent}; border-color: {p.accent};
        color: {p.accent_text}; }}
    QPushButton:disabled {{ color: {p.text_tertiary}; }}
    QProgressBar {{ background: {p.border}; border: none; border-radius: 3px; height: 6px; max-height: 6px; }}
    QProgressBar::chunk {{ background: {p.accent}; border-radius: 3px; }}
    QCheckBox {{ spacing: 8px; }}
    QSlider::groove:horizontal {{ height: 4px; background: {p.border_strong}; border-radius: 2px; }}
    QSlider::sub-page:horizontal {{ background: {p.accent}; border-radius: 2px; }}
    QSlider::handle:horizontal {{ background: #FFFFFF; border: 1px solid {p.border_strong}; width: 16px; height: 16px;
        margin: -7px 0; border-radius: 8px; }}
    QToolTip {{ background: {p.surface}; color: {p.text}; border: 1px solid {p.border}; padding: 4px; }}
    """


def _arrow_file(p: Palette) -> str:
    """A drop-down arrow in the palette's colour, written once to a temporary folder (style sheets need files)."""
    from . import icons

    folder = Path(tempfile.gettempdir()) / "gemma4-mac-style"
    folder.mkdir(exist_ok=True)
    path = folder / f"combo-arrow-{'dark' if p.dark else 'light'}.png"
    if not path.exists():
        icons.pixmap("chevron_down", p.text_secondary, 12).save(str(path))
    return path.as_posix()


def _mix(a: str, b: str, amount: float) -> str:
    """`amount` of colour a over colour b."""
    ca, cb = QColor(a), QColor(b)
    mixed = QColor(round(ca.red() * amount + cb.red() * (1 - amount)),
                   round(ca.green() * amount + cb.green() * (1 - amount)),
                   round(ca.blue() * amount + cb.blue() * (1 - amount)))
    return mixed.name()


def _rgba(color: str, alpha: float) -> str:
    c = QColor(color)
    return f"rgba({c.red()}, {c.green()}, {c.blue()}, {int(alpha * 255)})"


class ThemeManager(QObject):
    """Applies the palette and re-applies it when the system switches between light and dark."""

    themeChanged = Signal(object)  # Palette

    def __init__(self, app: QApplication, preference: str = "system"):
        super().__init__(app)
        self.app = app
        self.preference = preference
        self.palette = resolve(preference)
        QGuiApplication.styleHints().colorSchemeChanged.connect(self._on_system_change)
        self.apply()

    def set_preference(self, preference: str) -> None:
        self.preference = preference
        self.apply()

    def _on_system_change(self, _scheme) -> None:
        if self.preference == "system":
            self.apply()

    def apply(self) -> None:
        self.palette = resolve(self.preference)
        if sys.platform != "darwin":
            self.app.setStyle("Fusion")  # the native style on a Mac; Fusion takes our palette elsewhere
        font = QFont(ui_font_family())
        font.setPixelSize(13)
        self.app.setFont(font)
        self.app.setPalette(qpalette(self.palette))
        self.app.setStyleSheet(style_sheet(self.palette))
        self.themeChanged.emit(self.palette)


def current_palette() -> Palette:
    """The palette in force (for widgets that paint or build HTML themselves)."""
    app = QApplication.instance()
    manager = app.findChild(ThemeManager) if app else None
    return manager.palette if manager else resolve("system")
