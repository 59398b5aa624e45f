"""The token meter counts with the model's tokenizer, off the window's thread, a moment after typing stops;
it says "about" only while that count is pending."""

from __future__ import annotations

import threading
import time

from gemma4_mac.attachments import AttachmentStore
from gemma4_mac.documents import estimate_tokens
from gemma4_mac.engine import MlxBackend
from gemma4_mac.fake_backend import FakeBackend
from gemma4_mac.generate import prepare_prompt
from gemma4_mac.history import Message, model_messages
from gemma4_mac.token_count import CountRequest, TokenCounter, count_prompt
from gemma4_mac.worker import ModelSlot
from tests.ui_support import TIMEOUT, harness_factory  # noqa: F401

PARAGRAPH = ("Attention layers read every earlier token of the conversation, so a long chat grows the "
             "memory a model needs. Gemma keeps most layers on a sliding window of recent tokens and only a "
             "few on the whole context, which is why a document of many pages still fits on a laptop. ")


def _document_message(tmp_path, text: str, question: str) -> Message:
    source = tmp_path / "report.txt"
    source.write_text(text)
    attachment = AttachmentStore(tmp_path / "attachments").import_file(1, source)
    return Message(1, 1, 0, "user", question, attachments=[attachment])


def test_the_count_is_the_tokenizers_not_a_guess(gemma4_tokenizer, tmp_path):
    from mlx_model.processor import Processor

    processor = Processor(gemma4_tokenizer)
    text = "\n\n".join(f"{i}. {PARAGRAPH}" for i in range(60))  # about 20 KB
    message = _document_message(tmp_path, text, "Summarise the report.")
    count = MlxBackend().token_counter(ModelSlot(None, processor, {}))
    counted = count_prompt(CountRequest([message]), count)
    real = len(prepare_prompt(processor, model_messages([message])).tokens)
    assert counted.exact and abs(counted.total - real) <= 3, (counted.total, real)
    guessed = message.attachments[0].meta["tokens"]  # what the meter showed before: characters / 4
    assert abs(guessed - real) / real > 0.1, (guessed, real)  # 4,137 guessed for 3,620 here
    assert counted.documents[str(message.attachments[0].path)] > 0.95 * real


def test_requests_replace_each_other_and_texts_are_counted_once():
    counted_texts: list[str] = []
    started, release = threading.Event(), threading.Event()

    def count(text: str) -> int:
        counted_texts.append(text)
        if text == "first":
            started.set()
            release.wait(5)
        return len(text)

    results: list[tuple[int, int]] = []
    done = threading.Event()
    counter = TokenCounter(lambda: (count, True, "model"),
                           lambda rid, result: (results.append((rid, result.total)), done.set()))
    try:
        def ask(text):
            return counter.request(CountRequest([Message(0, 0, 0, "user", text)]))

        ask("first")
        started.wait(5)
        ask("second")
        last = ask("third")  # "second" never runs: "third" replaced it while "first" was counted
        release.set()
        deadline = time.monotonic() + 5
        while (not results or results[-1][0] != last) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [rid for rid, _ in results] == [1, last] and "second" not in counted_texts
        counter.request(CountRequest([Message(0, 0, 0, "user", "third")]))
        time.sleep(0.2)
        assert counted_texts.count("third") == 1  # the cache answered the repeat
    finally:
        counter.close()


class SlowTokenizer(FakeBackend):
    """A scripted model whose tokenizer takes its time, and which notes the thread that runs it."""

    def __init__(self):
        super().__init__()
        self.count_threads: set[str] = set()
        self.counted: list[str] = []

    def count_tokens(self, loaded, text: str) -> int:
        self.count_threads.add(threading.current_thread().name)
        self.counted.append(text)
        time.sleep(0.3)
        return estimate_tokens(text)


def test_the_window_never_waits_for_the_tokenizer(harness_factory, qtbot):
    backend = SlowTokenizer()
    h = harness_factory(backend=backend)
    composer = h.window.composer
    composer.edit.setFocus()
    qtbot.keyClicks(composer.edit, "How long is this question?")  # debounced: one count after typing stops
    started = time.monotonic()
    h.controller.update_token_count()
    assert time.monotonic() - started < 0.1
    assert composer.token_label.text().startswith("about ")
    qtbot.waitUntil(lambda: not composer.token_label.text().startswith("about"), timeout=TIMEOUT)
    expected = estimate_tokens("How long is this question?") + 13  # its turn, <bos> and the answer's start
    assert composer.token_label.text() == f"{expected} / 8.2K tokens"
    assert backend.count_threads == {"gemma-token-count"}
    typed = [t for t in backend.counted if t.startswith("How")]
    assert len(typed) <= 2, typed  # not one count per keystroke


def test_a_document_is_counted_and_its_chip_gets_the_real_figure(harness_factory, qtbot, tmp_path):
    h = harness_factory()
    source = tmp_path / "long.txt"
    source.write_text(PARAGRAPH * 40)
    h.controller.attach_files([str(source)])
    attachment = h.controller.pending[0]
    guessed = attachment.meta["tokens"]
    label = h.window.composer.token_label
    assert label.text().startswith("about ")
    qtbot.waitUntil(lambda: not label.text().startswith("about"), timeout=TIMEOUT)
    wrapped = estimate_tokens(f'<document name="long.txt">\n{(PARAGRAPH * 40).strip()}\n</document>')
    assert attachment.meta["tokens"] == wrapped != guessed  # the scripted tokenizer's count of what is sent
