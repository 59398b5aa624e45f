"""The window end to end through the real engine thread: our MLX model (tiny, random, with the real
Gemma 4 tokenizer) loaded from disk by MlxBackend; a question typed into the composer streams an
answer, is stored with its stats, regenerated, and stopped mid-answer."""

from __future__ import annotations

import threading

import pytest
from PySide6.QtCore import Qt

from gemma4_mac.engine import MlxBackend
from gemma4_mac.settings import AppSettings
from ui.engine import Engine
from tests.ui_support import make_harness

pytestmark = pytest.mark.slow
LOAD_TIMEOUT = 180_000  # loading the real tokenizer imports transformers: slow on a busy 2-core machine
ANSWER_TIMEOUT = 120_000


@pytest.fixture(scope="module")
def tiny_model(tiny_chat_model_dir):
    return tiny_chat_model_dir


class ThreadSpy(MlxBackend):
    """The real backend, noting which threads load and generate."""

    def __init__(self):
        super().__init__()
        self.threads: set[str] = set()

    def load(self, path):
        self.threads.add(threading.current_thread().name)
        return super().load(path)

    def generate(self, loaded, request, cancel):
        self.threads.add(threading.current_thread().name)
        yield from super().generate(loaded, request, cancel)


def test_window_answers_through_the_real_engine_thread(qtbot, tmp_path, monkeypatch, tiny_model):
    backend = ThreadSpy()
    h = make_harness(qtbot, tmp_path, monkeypatch, backend=backend, load=False,
                     settings=AppSettings(max_tokens=10, temperature=0.0))
    try:
        h.engine.load_model(str(tiny_model))
        qtbot.waitUntil(lambda: h.controller.model_state in ("ready", "error"), timeout=LOAD_TIMEOUT)
        assert h.controller.model_state == "ready", h.window.banner.label.text()
        assert h.controller.model_info["chat"] is True and h.controller.model_info["path"] == str(tiny_model)
        # a text-only model: images and audio attached to a question are marked and left out, never sent
        assert h.controller.model_info["can_see"] is False and h.controller.model_info["can_hear"] is False
        # the meter counts with the real tokenizer off this thread (4: "Hello", " there", ",", " Gemma")
        assert backend.count_tokens(h.engine.worker.slot, "Hello there, Gemma") == 4
        h.window.composer.set_text("Hello there, Gemma")
        label = h.window.composer.token_label
        h.controller.update_token_count()
        assert label.text().startswith("about ")  # until the counting thread has counted
        # the text, its turn, <bos> and the answer's start
        qtbot.waitUntil(lambda: label.text().startswith(f"{4 + 5 + 8} /"), timeout=ANSWER_TIMEOUT)

        deltas: list[str] = []
        h.engine.answerDelta.connect(deltas.append)
        h.engine.thoughtDelta.connect(deltas.append)
        qtbot.keyClick(h.window.composer.edit, Qt.Key_Return)
        qtbot.waitUntil(lambda: h.controller.stream is None, timeout=ANSWER_TIMEOUT)
        stored = h.history.messages(h.controller.conversation_id)
        assert [m.role for m in stored] == ["user", "assistant"] and stored[0].content == "Hello there, Gemma"
        answer = stored[1]
        assert answer.stats["prompt_tokens"] > 5 and 1 <= answer.stats["generation_tokens"] <= 10
        assert answer.stats["finish_reason"] in ("stop", "length") and not answer.partial
        assert answer.content + answer.thought == "".join(deltas)  # every streamed piece, in order, once
        widget = h.window.transcript.messages[-1]
        assert widget.answer == answer.content
        stats_line = widget.stats_label.text().replace("\u00a0", " ")  # figures never wrap inside
        assert "tok/s" in stats_line and "prompt tokens" in stats_line
        assert backend.threads == {Engine.THREAD_NAME}

        # regenerate: the same prompt, greedy, so the same answer again through the restored session
        widget.regenerate_button.click()
        qtbot.waitUntil(lambda: h.controller.stream is None, timeout=ANSWER_TIMEOUT)
        again = h.history.messages(h.controller.conversation_id)
        assert [m.role for m in again] == ["user", "assistant"] and again[1].content == answer.content

        # stop a long answer part way: kept, marked partial
        h.controller.apply_settings(AppSettings(max_tokens=3000, temperature=0.0))
        count = len(deltas)
        h.window.composer.set_text("Tell me a very long story")
        h.window.composer.send_button.click()
        qtbot.waitUntil(lambda: len(deltas) > count + 3, timeout=ANSWER_TIMEOUT)
        h.window.composer.send_button.click()  # Stop
        qtbot.waitUntil(lambda: h.controller.stream is None, timeout=ANSWER_TIMEOUT)
        last = h.history.messages(h.controller.conversation_id)[-1]
        assert last.partial and last.stats["finish_reason"] == "cancelled"
        assert 3 <= last.stats["generation_tokens"] < 3000
    finally:
        h.controller.shutdown()
        h.history.close()
