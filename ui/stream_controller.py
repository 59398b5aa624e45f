"""The answer being generated: submitting it, streaming its deltas into the transcript and the history,
stopping, regenerating and editing. A mixin of ChatController (ui/controller.py), sharing its state."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from gemma4_mac.engine import GenerationRequest
from gemma4_mac.history import Message, left_out_notice, model_messages, raw_prompt
from gemma4_mac.progress import ReadingProgress

from .message_widgets import AssistantMessage


@dataclass
class StreamState:
    """The answer being generated (it may belong to a conversation that is not on screen)."""

    conversation_id: int
    message_id: int
    widget: Optional[AssistantMessage]
    request_id: Optional[int] = None
    saved: tuple = (0, 0, 0)  # lengths of answer, thought and tool calls last written to the history
    answer: str = ""
    thought: str = ""
    tool_calls: list[dict] = field(default_factory=list)
    changes: int = 0  # counts changes of the tool calls (a call's status changes in place)
    thought_started: Optional[float] = None
    thought_seconds: Optional[float] = None
    reading: ReadingProgress = field(default_factory=ReadingProgress)


def reading_subject(messages: list[Message]) -> str:
    """What a long prompt mostly is, for "Reading … 1,840 of 3,287 tokens"."""
    users = [m for m in messages if m.role == "user"]
    documents = [a for a in (users[-1].attachments if users else []) if a.is_document]
    if documents:
        return "document" if len(documents) == 1 else "documents"
    return "conversation" if len(users) > 1 else "prompt"


class StreamingMixin:
    """Generation for ChatController: everything between send() and the finished (or failed) answer."""

    def _start_generation(self) -> None:
        cid = self.conversation_id
        messages = self.history.messages(cid)
        self._set_history(messages)
        images = [a.path for m in messages if m.role == "user" for a in m.attachments if a.kind == "image"]
        stored = self.history.add_message(cid, "assistant", "", partial=True, model=self._model_name())
        widget = self.window.transcript.add_assistant(Path(images[-1]) if images else None)
        widget.start_streaming()
        self.stream = StreamState(cid, stored.id, widget, reading=ReadingProgress(reading_subject(messages)))
        self.window.composer.set_generating(True)
        if self.model_info is None and self.model_state == "loading":
            return  # sent while the model loads: whether it is a chat model decides the prompt, so wait
        self._submit_stream()

    def _submit_stream(self) -> None:
        """Hand the current turn to the engine (now, or once the model that was loading is ready)."""
        stream = self.stream
        messages = [m for m in self.history.messages(stream.conversation_id) if m.id != stream.message_id]
        request = GenerationRequest(
            conversation_id=stream.conversation_id,
            messages=model_messages(messages, self.settings.system_prompt, self.model_info),
            enable_thinking=self.settings.thinking, sampling=self.settings.sampling_kwargs(),
            kv_bits=self.settings.kv_bits, image_token_budget=self.settings.image_token_budget)
        if self.model_info is not None and not self.model_info.get("chat", True):
            request.raw_prompt = raw_prompt(messages[-1])  # a base model continues the text as written
        else:
            request.agent = self.agent_options(stream.conversation_id, messages)  # None without tools
        notice = left_out_notice(messages, self.model_info)
        if notice:  # never a silent cut: the person learns what this model does not receive
            self.window.banner.show_message(notice, "warning")
        stream.request_id = self.engine.generate(request)
        self._save_timer.start()

    def stop(self) -> None:
        if self.recorder.recording:
            self.recorder.cancel()
        elif self.stream is not None and self.stream.request_id is None:
            self._finish_stream({"finish_reason": "cancelled"})  # still waiting for the model: nothing ran
        elif self.stream is not None:
            self.engine.cancel(self.stream.request_id)

    def regenerate(self) -> None:
        """Answer the last question again."""
        if self.stream is not None or self.conversation_id is None:
            return
        messages = self.history.messages(self.conversation_id)
        if not messages or messages[-1].role != "assistant":
            return
        last = messages[-1]
        self.history.delete_messages_from(self.conversation_id, last.position)
        self.window.transcript.remove_from(len(messages) - 1)
        self._start_generation()

    def edit_last_message(self) -> None:
        """Put the last question back into the composer (with its attachments) and remove it and its answer."""
        if self.stream is not None or self.conversation_id is None:
            return
        messages = self.history.messages(self.conversation_id)
        users = [i for i, m in enumerate(messages) if m.role == "user"]
        if not users:
            return
        index = users[-1]
        message = messages[index]
        self.history.delete_messages_from(self.conversation_id, message.position)
        self.window.transcript.remove_from(index)
        self.pending = list(message.attachments)
        self.window.composer.set_attachments(self.pending)
        self._mark_unreadable()
        self.window.composer.set_text(message.content)
        self.window.composer.edit.setFocus()
        remaining = messages[:index]
        self.window.show_empty(not remaining)
        self._set_history(remaining)
        self.update_token_count()

    # stream events

    def _on_started(self, request_id: int) -> None:
        self.engine_request = request_id

    def _streaming_ours(self) -> bool:
        """Whether the engine is streaming our request now (not a cancelled earlier one, not the panel's)."""
        return self.stream is not None and self.stream.request_id is not None and \
            self.engine_request == self.stream.request_id

    def _ended_ours(self) -> bool:
        """Whether the finished/failed signal now arriving ends our request (then forget the engine's id)."""
        submitted = self.stream is not None and self.stream.request_id is not None
        ours = self._streaming_ours() or (
            # a turn refused before it started (no model loaded) never sends generationStarted
            submitted and self.engine_request is None and self.engine.model_info is None)
        self.engine_request = None
        return ours

    def _on_reading(self, read: int, total: int) -> None:
        if not self._streaming_ours():
            return
        reading = self.stream.reading
        if reading.update(read, total) and self.stream.widget is not None and not self.stream.answer:
            self.stream.widget.show_reading(reading.text(), reading.fraction)

    def _on_answer(self, text: str) -> None:
        if not self._streaming_ours():
            return
        if self.stream.thought_started is not None and self.stream.thought_seconds is None:
            self.stream.thought_seconds = time.monotonic() - self.stream.thought_started
        self.stream.answer += text
        if self.stream.widget is not None:
            self.stream.widget.append_answer(text)

    def _on_thought(self, text: str) -> None:
        if not self._streaming_ours():
            return
        if self.stream.thought_started is None:
            self.stream.thought_started = time.monotonic()
        self.stream.thought += text
        if self.stream.widget is not None:
            self.stream.widget.append_thought(text)

    def _on_tool_call(self, call: dict) -> None:
        """A call written by a model answering without tools (the agent's calls come by `_on_tool_update`)."""
        if not self._streaming_ours():
            return
        self.stream.tool_calls.append(call)
        self.stream.changes += 1
        if self.stream.widget is not None:
            self.stream.widget.add_tool_call(call)

    def _on_finished(self, stats: dict) -> None:
        if self._ended_ours():
            self._finish_stream(stats)

    def _on_notice(self, text: str) -> None:
        if self._streaming_ours():
            self.window.banner.show_message(text, "info")

    def _save_partial(self) -> None:
        stream = self.stream
        if stream is None:
            self._save_timer.stop()
            return
        written = (len(stream.answer), len(stream.thought), stream.changes)
        if written != stream.saved:
            self.history.update_message(stream.message_id, content=stream.answer, thought=stream.thought,
                                        tool_calls=stream.tool_calls, partial=True)
            stream.saved = written

    def _finish_stream(self, stats: dict) -> None:
        self._save_timer.stop()
        stream, self.stream = self.stream, None
        self.window.composer.set_generating(False)
        stats = dict(stats)
        if stream.thought_started is not None:
            stats["thinking_seconds"] = stream.thought_seconds or (time.monotonic() - stream.thought_started)
        partial = stats.get("finish_reason") == "cancelled"
        self.history.update_message(stream.message_id, content=stream.answer, thought=stream.thought,
                                    tool_calls=stream.tool_calls, stats=stats, partial=partial)
        if stream.widget is not None:
            if stream.widget.thinking is not None:
                stream.widget.thinking.finish(stats.get("thinking_seconds"))
            stream.widget.finish(stats, partial)
        if stream.conversation_id == self.conversation_id:
            self._set_history(self.history.messages(self.conversation_id))
            self.update_token_count()
        self.refresh_sidebar()

    def _on_failed(self, message: str) -> None:
        if self._ended_ours():  # else another request's failure (the quick-ask panel shows its own)
            self._fail_stream(message)

    def _fail_stream(self, message: str) -> None:
        stream, self.stream = self.stream, None
        self.window.composer.set_generating(False)
        if stream.answer or stream.thought:
            self.history.update_message(stream.message_id, content=stream.answer, thought=stream.thought,
                                        tool_calls=stream.tool_calls, partial=True)
        else:
            stored = [m for m in self.history.messages(stream.conversation_id) if m.id == stream.message_id]
            if stored:
                self.history.delete_messages_from(stream.conversation_id, stored[0].position)
        if stream.widget is not None:
            stream.widget.show_error(message)
        self.window.banner.show_message(message, "error")

    def _detach_stream_widget(self) -> None:
        if self.stream is not None:
            self.stream.widget = None

    def _reattach_stream(self) -> None:
        widgets = self.window.transcript.messages
        if not widgets or not isinstance(widgets[-1], AssistantMessage):
            return
        widget = widgets[-1]
        self.stream.widget = widget
        if self.stream.thought:
            widget.append_thought(self.stream.thought)
        widget.load(self.stream.answer, self.stream.tool_calls)
        widget.start_streaming()
        reading = self.stream.reading
        if reading.shown and not reading.done and not (self.stream.answer or self.stream.thought):
            widget.show_reading(reading.text(), reading.fraction)
