"""Answer rendering: prose/code splitting (also mid-stream), highlighted code, box_2d parsing."""

from __future__ import annotations

from gemma4_mac.fake_backend import FakeBackend
from tests.ui_support import harness_factory  # noqa: F401
from ui.boxes import Box, parse_boxes
from ui.markdown import Block, code_html, markdown_html, split_blocks
from ui.message_widgets import CodeBlock, MarkdownView
from ui.theme import DARK, LIGHT


def test_split_prose_and_code():
    text = "Intro\n\n```python\nx = 1\n```\nOutro with `inline`\n~~~\nraw\n~~~"
    assert split_blocks(text) == [Block("text", "Intro"), Block("code", "x = 1", "python"),
                                  Block("text", "Outro with `inline`"), Block("code", "raw", "")]


def test_unterminated_fence_is_code_while_streaming():
    blocks = split_blocks("Here:\n```js\nconsole.log(1)")
    assert blocks[-1] == Block("code", "console.log(1)", "js", closed=False)


def test_longer_fences_contain_shorter_ones():
    blocks = split_blocks("````md\n```py\nx\n```\n````")
    assert blocks == [Block("code", "```py\nx\n```", "md")]


def test_markdown_html_has_tables_and_escapes_html(qapp):
    html = markdown_html("| a | b |\n|---|---|\n| 1 | <script> |\n\n**bold**", LIGHT)
    assert "<table" in html and "<th>a</th>" in html and "&lt;script&gt;" in html and "<strong>bold</strong>" in html


def test_code_is_highlighted_per_theme(qapp):
    light, dark = code_html("def f(): pass", "python", LIGHT), code_html("def f(): pass", "python", DARK)
    assert "<span style=" in light and light != dark
    assert "def" in code_html("def", "no-such-language", LIGHT)  # unknown languages are shown plain


def test_parse_boxes_with_and_without_labels():
    text = ('```json\n[{"box_2d": [10, 20, 300, 400], "label": "cup"},\n {"label": "spoon", "box_2d": [5,6,7,8]}]\n'
            '```\nAlso box_2d: [1, 2, 3, 4]')
    assert parse_boxes(text) == [Box("cup", 10, 20, 300, 400), Box("spoon", 5, 6, 7, 8), Box("", 1, 2, 3, 4)]
    assert parse_boxes("no boxes here") == []


def test_box_rect_is_clamped_and_ordered():
    rect = Box("x", 900, 1200, 100, -50).rect(200, 100)
    assert (rect.left(), rect.top(), rect.width(), rect.height()) == (0.0, 10.0, 200.0, 80.0)


def test_markdown_view_only_rerenders_changed_blocks(qtbot):
    view = MarkdownView()
    qtbot.addWidget(view)
    view.set_markdown("Intro\n\n```py\nx = 1")
    code = view.block_widgets[1]
    assert isinstance(code, CodeBlock) and code.code == "x = 1"
    first = view.block_widgets[0]
    view.set_markdown("Intro\n\n```py\nx = 1\ny = 2\n```\nDone")
    assert view.block_widgets[0] is first and view.block_widgets[1] is code and code.code == "x = 1\ny = 2"
    assert len(view.block_widgets) == 3
    view.set_markdown("Just text")
    assert len(view.block_widgets) == 1


def test_streamed_code_block_appears_before_the_fence_closes(harness_factory, qtbot):
    pieces = ["Here:\n", "```python\n", "print(1)\n"] + ["# more\n"] * 200 + ["```\n"]
    h = harness_factory(backend=FakeBackend(lambda r: [("answer", p) for p in pieces], token_delay=0.003))
    h.window.composer.set_text("code please")
    h.controller.send()
    answer = h.window.transcript.messages[-1]
    qtbot.waitUntil(lambda: bool(answer.markdown.code_blocks()) and h.controller.stream is not None, timeout=5000)
    assert answer.markdown.code_blocks()[0].code.startswith("print(1)")
    h.wait_idle()
    assert answer.markdown.code_blocks()[0].code.endswith("# more")
    assert not answer.answer.endswith("●") and "●" not in answer.markdown.markdown
