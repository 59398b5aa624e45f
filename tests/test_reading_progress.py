"""Reading a long prompt shows how far it got: in several chunks, as "progress" events, on the command line
(stderr), in the window's answer and in Quick Ask."""

from __future__ import annotations

import io
import threading

import pytest

from gemma4_mac.cli import main as cli_main
from gemma4_mac.fake_backend import FakeBackend
from gemma4_mac.generate import SamplingSettings, prepare_prompt, run_prompt
from gemma4_mac.prefill import MIN_PROGRESS_CHUNK, PROGRESS_STEPS, progress_chunk_size
from gemma4_mac.progress import ReadingProgress, reading_text
from gemma4_mac.session import ChatSession
from tests.ui_support import TIMEOUT, harness_factory  # noqa: F401

LONG_TEXT = " ".join(f"Section {i}: the cache keeps every token it has read, so each turn costs only "
                     "new words." for i in range(200))


@pytest.fixture(scope="module")
def chat_model(tiny_chat_model_dir):
    from mlx_model import load

    model, processor = load(tiny_chat_model_dir)
    return tiny_chat_model_dir, model, processor


def test_a_long_prompt_is_read_in_several_chunks():
    assert progress_chunk_size(2048, 3287) == MIN_PROGRESS_CHUNK  # a 20 KB paste: 7 chunks, not 2
    assert progress_chunk_size(2048, 100_000) == 2048  # very long prompts keep the planner's chunk
    assert progress_chunk_size(256, 3287) == 256  # and never more than memory allows
    assert progress_chunk_size(2048, 12_000) == 12_000 // PROGRESS_STEPS


def test_reading_reports_each_chunk_and_generation_streams_progress_first(chat_model):
    _, model, processor = chat_model
    prepared = prepare_prompt(processor, [{"role": "user", "content": LONG_TEXT}])
    total = len(prepared.tokens)
    assert total > 3000
    seen: list[tuple[int, int]] = []
    ChatSession(model).read_prompt(prepared, on_progress=lambda read, of: seen.append((read, of)))
    assert seen[0] == (0, total) and seen[-1] == (total, total)
    reads = [read for read, _ in seen]
    assert reads == sorted(reads) and len(seen) >= 7  # before the first chunk, then after each one

    events = list(run_prompt(model, processor, prepared, SamplingSettings(temperature=0.0, max_tokens=2)))
    kinds = [e.kind for e in events]
    first_other = next(i for i, k in enumerate(kinds) if k != "progress")
    assert first_other >= 7 and "progress" not in kinds[first_other:]
    assert events[first_other - 1].progress == (total, total)


def test_the_command_line_shows_reading_on_stderr(chat_model):
    path, _, _ = chat_model
    out, err = io.StringIO(), io.StringIO()
    assert cli_main(["ask", "--model", str(path), "--max-tokens", "2", LONG_TEXT], out=out, err=err) == 0
    lines = [line for line in err.getvalue().splitlines() if line.startswith("Reading prompt…")]
    assert len(lines) >= 7 and lines[-1].split(" [")[0].endswith("tokens")
    assert "Reading" not in out.getvalue()  # the answer stays clean for pipes
    read, total = (int(n.replace(",", "")) for n in lines[-1].split("…")[1].split("tokens")[0].split(" of "))
    assert read == total and lines[-1].endswith("#]")
    out, err = io.StringIO(), io.StringIO()
    assert cli_main(["ask", "--model", str(path), "--max-tokens", "2", "Hi"], out=out, err=err) == 0
    assert "Reading" not in err.getvalue()  # a short question is read at once: no progress


def test_reading_progress_words():
    progress = ReadingProgress("document")
    assert progress.update(0, 3287) and not progress.done
    progress.update(1840, 3287)
    assert progress.text() == "Reading document… 1,840 of 3,287 tokens"
    assert abs(progress.fraction - 0.56) < 0.01
    assert not ReadingProgress().update(2900, 3287)  # most of it was cached: too little left to show
    assert reading_text("prompt", 5, 10) == "Reading prompt… 5 of 10 tokens"


class PausedReading:
    """A scripted reply that stops part way through reading until the test lets it go on."""

    def __init__(self):
        self.go_on = threading.Event()

    def __call__(self, request):
        yield "progress", (0, 3287)
        yield "progress", (1840, 3287)
        self.go_on.wait(TIMEOUT / 1000)
        yield "progress", (3287, 3287)
        yield "answer", "It is about caches."


def test_the_window_shows_a_reading_bar_until_the_answer_starts(harness_factory, qtbot, tmp_path):
    script = PausedReading()
    h = harness_factory(backend=FakeBackend(script))
    document = tmp_path / "notes.txt"
    document.write_text(LONG_TEXT)
    h.controller.attach_files([str(document)])
    h.window.composer.set_text("What is this about?")
    h.controller.send()
    widget = h.window.transcript.messages[-1]
    qtbot.waitUntil(lambda: "1,840" in widget.reading.label.text(), timeout=TIMEOUT)
    assert widget.reading.isVisibleTo(h.window)
    assert widget.reading.label.text() == "Reading document… 1,840 of 3,287 tokens"
    assert widget.reading.bar.value() == round(1840 / 3287 * widget.reading.bar.maximum())
    script.go_on.set()
    h.wait_idle()
    assert not widget.reading.isVisibleTo(h.window) and widget.answer == "It is about caches."


def test_quick_ask_shows_the_reading_too(qtbot, tmp_path, monkeypatch):
    from PySide6.QtGui import QGuiApplication

    from gemma4_mac.hotkey_backends import ManualHotkeyBackend
    from tests.ui_support import make_harness
    from ui.tray import install_menu_bar

    script = PausedReading()
    h = make_harness(qtbot, tmp_path, monkeypatch, backend=FakeBackend(script))
    bar = install_menu_bar(QGuiApplication.instance(), h.window, h.controller,
                           hotkey_backend=ManualHotkeyBackend(), tray_available=False)
    try:
        panel = bar.panel
        bar.quick_ask.show()
        panel.input.setText("Summarise the long text I pasted")
        panel._submit()
        qtbot.waitUntil(lambda: "1,840" in panel.reading.label.text(), timeout=TIMEOUT)
        assert panel.reading.isVisibleTo(panel)
        assert panel.reading.label.text() == "Reading prompt… 1,840 of 3,287 tokens"
        script.go_on.set()
        qtbot.waitUntil(lambda: not bar.quick_ask.streaming, timeout=TIMEOUT)
        assert not panel.reading.isVisibleTo(panel) and panel.answer == "It is about caches."
    finally:
        bar.uninstall()
        h.controller.shutdown()
        h.history.close()
