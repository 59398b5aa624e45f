"""The chat window against the scripted engine: send, stream, stop, regenerate, edit, thinking, tools, boxes."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication, QImage

from gemma4_mac.fake_backend import FakeBackend
from tests.ui_support import TIMEOUT, harness, harness_factory  # noqa: F401
from ui.message_widgets import AnnotatedImage, AssistantMessage, CodeBlock, ToolCallCard, UserMessage


def test_send_streams_markdown_with_code_and_stats(harness, qtbot):
    w, c = harness.window, harness.controller
    assert w.stack.currentWidget() is w.empty_state
    harness.type_and_send("Write a greeting function")
    assert w.stack.currentWidget() is w.transcript
    user, answer = w.transcript.messages
    assert isinstance(user, UserMessage) and user.text == "Write a greeting function"
    assert isinstance(answer, AssistantMessage) and answer.answer.startswith("You said: **Write a greeting")
    code = answer.markdown.code_blocks()
    assert len(code) == 1 and code[0].language == "python" and "def greet(name):" in code[0].code
    code[0].copy_button.click()
    assert QGuiApplication.clipboard().text() == code[0].code and code[0].copy_button.text() == "Copied"
    stats_line = answer.stats_label.text().replace("\u00a0", " ")  # figures never wrap inside
    for part in ("prompt tokens", "s to first token", "tok/s", "GB peak"):
        assert part in stats_line
    stored = harness.history.messages(c.conversation_id)
    assert [m.role for m in stored] == ["user", "assistant"]
    assert stored[1].content == answer.answer and stored[1].partial is False
    assert stored[1].stats["finish_reason"] == "stop"
    assert w.composer.text == "" and not w.composer.generating
    assert w.sidebar.conversation_ids() == [c.conversation_id]
    assert w.header_title.text() == "Write a greeting function"
    request = harness.backend.requests[0]
    assert request.messages == [{"role": "user", "content": "Write a greeting function"}]


def test_shift_enter_adds_a_line_and_empty_text_is_not_sent(harness, qtbot):
    edit = harness.window.composer.edit
    qtbot.keyClicks(edit, "first")
    qtbot.keyClick(edit, Qt.Key_Return, Qt.ShiftModifier)
    qtbot.keyClicks(edit, "second")
    assert edit.toPlainText() == "first\nsecond"
    edit.setPlainText("   ")
    assert not harness.window.composer.send_button.isEnabled()
    qtbot.keyClick(edit, Qt.Key_Return)
    assert harness.backend.requests == []


def test_stop_keeps_the_partial_answer(harness_factory, qtbot):
    h = harness_factory(backend=FakeBackend(lambda r: [("answer", f"word{i} ") for i in range(2000)],
                                            token_delay=0.003))
    h.window.composer.set_text("Tell me a long story")
    h.window.composer.send_button.click()
    assert h.window.composer.generating and h.window.composer.send_button.toolTip() == "Stop generating"
    qtbot.waitUntil(lambda: len(h.controller.stream.answer) > 20, timeout=TIMEOUT)
    h.window.composer.send_button.click()  # the same button is Stop while generating
    h.wait_idle()
    stored = h.history.messages(h.controller.conversation_id)[-1]
    assert stored.partial is True and stored.stats["finish_reason"] == "cancelled"
    assert stored.content.startswith("word0 word1") and len(stored.content.split()) < 2000
    answer = h.window.transcript.messages[-1]
    assert "stopped" in answer.stats_label.text() and answer.answer == stored.content


def test_escape_stops_too(harness_factory, qtbot):
    h = harness_factory(backend=FakeBackend(lambda r: [("answer", "x ")] * 5000, token_delay=0.002))
    h.window.composer.set_text("go")
    h.controller.send()
    qtbot.waitUntil(lambda: bool(h.controller.stream and h.controller.stream.answer), timeout=TIMEOUT)
    h.window.shortcuts["stop"].activated.emit()
    h.wait_idle()
    assert h.history.messages(h.controller.conversation_id)[-1].partial is True


def test_regenerate_replaces_the_last_answer(harness, qtbot):
    harness.type_and_send("Question one")
    first = harness.window.transcript.messages[-1]
    assert first.regenerate_button.isVisibleTo(harness.window)
    first.regenerate_button.click()
    harness.wait_idle()
    assert len(harness.backend.requests) == 2
    assert harness.backend.requests[1].messages == harness.backend.requests[0].messages
    stored = harness.history.messages(harness.controller.conversation_id)
    assert [m.role for m in stored] == ["user", "assistant"]
    assert len(harness.window.transcript.messages) == 2 and harness.window.transcript.messages[-1] is not first


def test_edit_last_message(harness, qtbot):
    harness.type_and_send("First question")
    harness.type_and_send("Second questoin")
    user_widgets = [m for m in harness.window.transcript.messages if isinstance(m, UserMessage)]
    assert not user_widgets[0].edit_button.isVisibleTo(harness.window)
    assert user_widgets[1].edit_button.isVisibleTo(harness.window)
    user_widgets[1].edit_button.click()
    assert harness.window.composer.text == "Second questoin"
    assert len(harness.window.transcript.messages) == 2
    assert len(harness.history.messages(harness.controller.conversation_id)) == 2
    harness.window.composer.set_text("Second question")
    harness.window.composer.send_button.click()
    harness.wait_idle()
    contents = [m.content for m in harness.history.messages(harness.controller.conversation_id) if m.role == "user"]
    assert contents == ["First question", "Second question"]
    assert harness.backend.requests[-1].messages[-1]["content"] == "Second question"


def test_thinking_toggle_streams_a_collapsible_thought(harness, qtbot):
    composer = harness.window.composer
    composer.think_button.click()
    assert harness.controller.settings.thinking is True
    assert (harness.home / "settings.json").read_text().count('"thinking": true') == 1
    harness.type_and_send("Hard question")
    assert harness.backend.requests[-1].enable_thinking is True
    answer = harness.window.transcript.messages[-1]
    thinking = answer.thinking
    assert thinking is not None and thinking.text.startswith("The person asked")
    assert not thinking.body.isVisibleTo(harness.window)
    thinking.header.click()
    assert thinking.body.isVisibleTo(harness.window) and "The person asked" in thinking.label.text()
    assert thinking.header.text() in ("Thoughts",) or thinking.header.text().startswith("Thought for")
    stored = harness.history.messages(harness.controller.conversation_id)[-1]
    assert stored.thought == thinking.text and "thinking_seconds" in stored.stats
    composer.think_button.click()
    harness.type_and_send("Easy question")
    assert harness.backend.requests[-1].enable_thinking is False
    assert harness.window.transcript.messages[-1].thinking is None


def test_tool_calls_are_shown_and_stored(harness_factory, qtbot):
    call = {"name": "get_weather", "arguments": {"city": "Lisbon", "unit": "celsius"}}
    h = harness_factory(backend=FakeBackend(lambda r: [("tool_call", call)]))
    h.type_and_send("Weather in Lisbon?")
    answer = h.window.transcript.messages[-1]
    cards = answer.findChildren(ToolCallCard)
    assert len(cards) == 1 and cards[0].title.text() == "Tool call · get_weather"
    assert "Lisbon" in cards[0].arguments.text()
    stored = h.history.messages(h.controller.conversation_id)[-1]
    assert stored.tool_calls == [call] and stored.stats["finish_reason"] == "tool_calls"


def test_boxes_in_the_answer_are_drawn_on_the_image(harness_factory, qtbot, tmp_path):
    reply = 'Here: ```json\n[{"box_2d": [100, 200, 500, 600], "label": "cat"}]\n```'
    h = harness_factory(backend=FakeBackend(lambda r: [("answer", reply)]))
    image = QImage(200, 100, QImage.Format_RGB32)
    image.fill(Qt.white)
    path = tmp_path / "cat.png"
    image.save(str(path))
    h.controller.attach_files([str(path)])
    h.type_and_send("Where is the cat?")
    request = h.backend.requests[-1]
    assert request.messages[-1]["content"][0]["type"] == "image"
    annotated = h.window.transcript.messages[-1].findChildren(AnnotatedImage)
    assert len(annotated) == 1 and annotated[0].boxes[0].label == "cat"
    pixels = annotated[0].pixmap().toImage()
    assert pixels.width() > 0
    # the box edge is painted in the first box colour (red) at x = 200/1000 of the width, mid-height
    x0, y = int(0.2 * pixels.width()), int(0.3 * pixels.height())
    red = [pixels.pixelColor(x, y).red() - pixels.pixelColor(x, y).green() for x in range(x0 - 4, x0 + 5)]
    assert max(red) > 150
    inside = pixels.pixelColor(int(0.4 * pixels.width()), y)
    assert inside.red() == inside.green() == 255  # the picture inside the box is untouched
    # reopening the conversation draws the boxes again from history
    cid = h.controller.conversation_id
    h.controller.new_chat()
    h.controller.open_conversation(cid)
    assert h.window.transcript.messages[-1].findChildren(AnnotatedImage)


def test_generation_error_is_shown_and_nothing_empty_is_stored(harness_factory, qtbot):
    h = harness_factory(backend=FakeBackend(generate_error="The model ran out of memory."))
    h.window.composer.set_text("hi")
    h.controller.send()
    h.wait_idle()
    assert h.window.banner.isVisibleTo(h.window) and "out of memory" in h.window.banner.label.text()
    assert [m.role for m in h.history.messages(h.controller.conversation_id)] == ["user"]
    assert not h.window.composer.generating


def test_starter_model_uses_raw_completion_and_says_so(harness_factory, qtbot):
    h = harness_factory(load=False)
    h.engine.load_model(None)
    h.wait_model()
    assert "not a chat model" in h.window.banner.label.text()
    assert "Starter" in h.window.sidebar.model_button.text()
    h.type_and_send("Once upon a time")
    assert h.backend.requests[-1].raw_prompt == "Once upon a time"


def test_switching_conversations_while_streaming_keeps_both(harness_factory, qtbot):
    h = harness_factory(backend=FakeBackend(lambda r: [("answer", "a ")] * 300, token_delay=0.002))
    h.window.composer.set_text("first chat")
    h.controller.send()
    streaming_id = h.controller.conversation_id
    qtbot.waitUntil(lambda: bool(h.controller.stream and h.controller.stream.answer), timeout=TIMEOUT)
    h.controller.new_chat()
    assert h.window.stack.currentWidget() is h.window.empty_state
    h.controller.open_conversation(streaming_id)
    h.wait_idle()
    stored = h.history.messages(streaming_id)[-1]
    assert stored.content == "a " * 300 and not stored.partial
    assert h.window.transcript.messages[-1].answer == "a " * 300


def test_another_requests_signals_never_land_in_the_answer(harness_factory, qtbot):
    """The engine is shared (quick-ask panel): only the deltas after our generationStarted are ours."""
    h = harness_factory(backend=FakeBackend(lambda r: [("answer", r.messages[-1]["content"] + " ")] * 40,
                                            token_delay=0.002))
    from gemma4_mac.engine import GenerationRequest

    # a request from elsewhere runs first; the window's own waits in the queue behind it
    h.engine.generate(GenerationRequest(conversation_id=999, messages=[{"role": "user", "content": "panel"}]))
    h.window.composer.set_text("window")
    h.controller.send()
    h.wait_idle()
    stored = h.history.messages(h.controller.conversation_id)[-1]
    assert stored.content == "window " * 40 and h.window.transcript.messages[-1].answer == stored.content
    assert not h.window.banner.isVisible()


def test_late_signals_of_a_cancelled_request_are_dropped(harness_factory, qtbot):
    """A finish and deltas still queued from an earlier request do not end or fill the next one."""
    h = harness_factory(backend=FakeBackend(lambda r: [("answer", "new ")] * 30, token_delay=0.002))
    h.window.composer.set_text("question")
    h.controller.send()
    ours = h.controller.stream.request_id
    # what an earlier, cancelled request still had in the queue when ours was sent
    h.controller._on_started(ours - 1)
    h.engine.answerDelta.emit("stale ")
    h.engine.generationFinished.emit({"finish_reason": "cancelled"})
    assert h.controller.stream is not None and h.window.composer.generating
    h.wait_idle()
    stored = h.history.messages(h.controller.conversation_id)[-1]
    assert stored.content == "new " * 30 and not stored.partial


def test_a_question_sent_while_the_model_loads_waits_for_it(harness_factory, qtbot):
    """Whether the model chats or only continues text is known once it has loaded: the turn waits."""
    h = harness_factory(backend=FakeBackend(load_delay=0.4), load=False)
    h.controller.start()  # no model in Settings or on disk: the starter (a base model)
    qtbot.waitUntil(lambda: h.controller.model_state == "loading", timeout=TIMEOUT)
    h.window.composer.set_text("Once upon a time")
    h.controller.send()
    assert h.controller.stream is not None and h.controller.stream.request_id is None
    assert h.backend.requests == [] and h.window.composer.generating
    h.wait_idle()
    assert h.backend.requests[-1].raw_prompt == "Once upon a time"
    assert not h.history.messages(h.controller.conversation_id)[-1].partial


def test_stop_while_waiting_for_the_model_sends_nothing(harness_factory, qtbot):
    h = harness_factory(backend=FakeBackend(load_delay=0.4), load=False)
    h.controller.start()
    qtbot.waitUntil(lambda: h.controller.model_state == "loading", timeout=TIMEOUT)
    h.window.composer.set_text("never mind")
    h.controller.send()
    h.controller.stop()
    assert h.controller.stream is None and not h.window.composer.generating
    h.wait_model()
    qtbot.wait(100)
    assert h.backend.requests == []
    assert h.history.messages(h.controller.conversation_id)[-1].partial


def test_a_streaming_answer_is_saved_as_it_grows_and_notices_reach_the_banner(harness_factory, qtbot):
    steps = [("notice", "voice.m4a is 75 s long; it goes in as 3 consecutive clips.")]
    steps += [("answer", f"word{i} ") for i in range(400)]
    h = harness_factory(backend=FakeBackend(lambda r: steps, token_delay=0.005))
    h.controller._save_timer.setInterval(50)
    h.window.composer.set_text("What is said in the recording?")
    h.window.composer.send_button.click()
    qtbot.waitUntil(lambda: "3 consecutive clips" in h.window.banner.label.text(), timeout=TIMEOUT)
    # before the answer ends, the history already holds a prefix of it, marked partial (a crash loses little)
    qtbot.waitUntil(lambda: len(h.history.messages(h.controller.conversation_id)[-1].content) > 40,
                    timeout=TIMEOUT)
    stored = h.history.messages(h.controller.conversation_id)[-1]
    assert stored.partial and stored.content.startswith("word0 word1")
    h.wait_idle()
    final = h.history.messages(h.controller.conversation_id)[-1]
    assert not final.partial and final.content.endswith("word399 ")
