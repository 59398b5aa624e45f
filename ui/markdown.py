"""Markdown to Qt rich text: prose through markdown-it, fenced code through Pygments.

An answer is split into prose and code blocks so each code block can be its own widget with a copy
button. An unterminated fence (the model is still typing it) is a code block too.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from functools import lru_cache

from markdown_it import MarkdownIt
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.lexers.special import TextLexer
from pygments.util import ClassNotFound

from .theme import Palette, mono_font_family

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)[^\n]*$")


@dataclass
class Block:
    kind: str  # "text" | "code"
    text: str
    language: str = ""
    closed: bool = True


def split_blocks(markdown: str) -> list[Block]:
    """Prose and fenced code blocks, in order."""
    blocks: list[Block] = []
    prose: list[str] = []
    lines = markdown.split("\n")
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            prose.append(lines[i])
            i += 1
            continue
        if any(line.strip() for line in prose):
            blocks.append(Block("text", "\n".join(prose).strip("\n")))
        prose = []
        fence, language = match.group(1), match.group(2)
        body: list[str] = []
        i += 1
        closed = False
        while i < len(lines):
            stripped = lines[i].strip()
            if stripped.startswith(fence[0] * len(fence)) and set(stripped) == {fence[0]}:
                closed = True
                i += 1
                break
            body.append(lines[i])
            i += 1
        blocks.append(Block("code", "\n".join(body), language.lower(), closed))
    if any(line.strip() for line in prose):
        blocks.append(Block("text", "\n".join(prose).strip("\n")))
    return blocks


@lru_cache(maxsize=1)
def _markdown() -> MarkdownIt:
    return MarkdownIt("commonmark", {"breaks": True, "html": False, "linkify": False}).enable(
        ["table", "strikethrough"])


def _css(p: Palette, size: int) -> str:
    mono = mono_font_family()
    return (
        f"body {{ color: {p.text}; font-size: {size}px; }}"
        f"p {{ margin-top: 0px; margin-bottom: 10px; line-height: 145%; }}"
        f"li {{ margin-bottom: 4px; line-height: 140%; }}"
        f"ul, ol {{ margin-top: 0px; margin-bottom: 10px; }}"
        f"h1 {{ font-size: {size + 8}px; font-weight: 600; margin-top: 6px; margin-bottom: 10px; }}"
        f"h2 {{ font-size: {size + 5}px; font-weight: 600; margin-top: 6px; margin-bottom: 8px; }}"
        f"h3 {{ font-size: {size + 2}px; font-weight: 600; margin-top: 4px; margin-bottom: 6px; }}"
        f"h4, h5, h6 {{ font-size: {size}px; font-weight: 600; margin-bottom: 4px; }}"
        f"code {{ font-family: '{mono}'; background-color: {p.inline_code}; font-size: {size - 1}px; }}"
        f"a {{ color: {p.accent}; text-decoration: none; }}"
        f"blockquote {{ color: {p.text_secondary}; margin-left: 12px; }}"
        f"th {{ background-color: {p.code_header}; font-weight: 600; }}"
        f"th, td {{ border: 1px solid {p.border_strong}; padding: 5px 9px; }}"
    )


def markdown_html(markdown: str, palette: Palette, size: int = 14) -> str:
    """Rich text for a prose block (no code fences inside)."""
    body = _markdown().render(markdown)
    body = body.replace("<table>", '<table cellspacing="0" cellpadding="6" style="border-collapse: collapse;">')
    body = re.sub(r"(</p>|</ul>|</ol>|</table>|</pre>)\s*$", r"\1", body.rstrip())
    # Qt's rich text has no padding on inline spans: thin spaces keep the shading off the letters
    body = re.sub(r"<code>(.*?)</code>", "<code>&#8201;\\1&#8201;</code>", body, flags=re.S)
    return f"<html><head><style>{_css(palette, size)}</style></head><body>{body}</body></html>"


def plain_html(text: str, palette: Palette, size: int = 14, color: str = "") -> str:
    """Rich text for plain text (a user's message): escaped, line breaks kept."""
    escaped = html.escape(text).replace("\n", "<br>")
    return (f"<html><body style=\"color: {color or palette.text}; font-size: {size}px;\">"
            f"<p style=\"line-height: 145%; margin: 0px;\">{escaped}</p></body></html>")


def _lexer(language: str):
    aliases = {"py": "python", "js": "javascript", "ts": "typescript", "sh": "bash", "shell": "bash",
               "zsh": "bash", "yml": "yaml", "objc": "objective-c", "c++": "cpp", "rs": "rust"}
    try:
        return get_lexer_by_name(aliases.get(language, language)) if language else TextLexer()
    except ClassNotFound:
        return TextLexer()


def code_html(code: str, language: str, palette: Palette, size: int = 13) -> str:
    """Syntax-highlighted code as rich text (inline colours, so Qt's HTML subset shows them)."""
    style = "github-dark" if palette.dark else "xcode"
    formatter = HtmlFormatter(nowrap=True, noclasses=True, style=style)
    spans = highlight(code, _lexer(language), formatter).rstrip("\n")
    spans = re.sub(r"background-color: #[0-9a-fA-F]+;?", "", spans)
    return (f"<pre style=\"font-family: '{mono_font_family()}'; font-size: {size}px; color: {palette.text};"
            f" margin: 0px; line-height: 140%;\">{spans}</pre>")
