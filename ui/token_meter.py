"""The composer's token meter: an estimate at once ("about 5.2K"), then the count by the model's tokenizer,
made on the engine's counting thread a moment after the last change. A mixin of ChatController
(ui/controller.py), sharing its state."""

from __future__ import annotations

from typing import Optional

from PySide6.QtCore import QTimer

from gemma4_mac.attachments import estimate_attachment_tokens
from gemma4_mac.documents import estimate_tokens
from gemma4_mac.history import Message
from gemma4_mac.token_count import PROMPT_TOKENS, TURN_TOKENS, CountRequest, TokenCount

COUNT_DELAY_MS = 250  # after the last keystroke, the tokenizer counts


class TokenMeterMixin:
    """Token counting for ChatController."""

    def _init_token_meter(self) -> None:
        self.history_tokens = 0  # the estimate of the conversation so far
        self._meter_history: list[Message] = []
        self._count_timer = QTimer(self, singleShot=True, interval=COUNT_DELAY_MS,
                                   timeout=self._request_count)
        self._count_id: Optional[int] = None
        self._count_asked: Optional[tuple] = None  # the inputs of the count under way
        self._counted: Optional[tuple[tuple, TokenCount]] = None  # the inputs last counted, and their count
        self.engine.tokensCounted.connect(self._on_tokens_counted)

    def _set_history(self, messages: list[Message]) -> None:
        """The conversation the meter counts (before the message being written)."""
        self._meter_history = list(messages)
        budget = self.settings.image_token_budget
        self.history_tokens = sum(estimate_tokens(m.content) + TURN_TOKENS + sum(
            estimate_attachment_tokens(a, budget) for a in m.attachments) for m in messages)

    def _estimate(self, text: str) -> int:
        """A quick estimate (about four characters a token), laid out as the tokenizer's count is."""
        system = self.settings.system_prompt.strip()
        writing = bool(text.strip() or self.pending)
        if not (self._meter_history or system or writing):
            return 0
        attached = sum(estimate_attachment_tokens(a, self.settings.image_token_budget) for a in self.pending)
        return (PROMPT_TOKENS + self.history_tokens + (estimate_tokens(system) + TURN_TOKENS if system else 0)
                + (estimate_tokens(text.strip()) + TURN_TOKENS if writing else 0) + attached)

    def _count_inputs(self) -> tuple:
        """What the count depends on: when it changes, the count shown is an estimate until recounted."""
        text = self.window.composer.text
        return (self.conversation_id, tuple((m.id, len(m.content)) for m in self._meter_history), text,
                tuple((str(a.path), a.meta.get("encoding"), a.meta.get("max_chars")) for a in self.pending),
                self.settings.system_prompt, self.settings.image_token_budget, self._raw_prompt(),
                (self.model_info or {}).get("path"))

    def _raw_prompt(self) -> bool:
        return self.model_info is not None and not self.model_info.get("chat", True)

    def update_token_count(self) -> int:
        """Tokens of the conversation plus the message being written, shown against the limit; the
        tokenizer's count when it has counted these inputs, else an estimate (and a count is asked for)."""
        composer = self.window.composer
        inputs = self._count_inputs()
        counted = self._counted[1] if self._counted is not None and self._counted[0] == inputs else None
        if counted is not None and counted.exact:
            used = counted.total
        else:
            used = self._estimate(composer.text)
            if counted is None and self._count_asked != inputs:  # without a tokenizer the estimate stays
                self._count_timer.start()
        composer.set_token_count(used, self.context_limit(), estimated=counted is None or not counted.exact)
        return used

    def _request_count(self) -> None:
        messages = list(self._meter_history)
        text = self.window.composer.text
        if text.strip() or self.pending:
            messages.append(Message(0, self.conversation_id or 0, len(messages), "user", text.strip(),
                                    attachments=list(self.pending)))
        self._count_asked = self._count_inputs()
        self._count_id = self.engine.count_prompt(CountRequest(
            messages, self.settings.system_prompt, self.settings.image_token_budget, raw=self._raw_prompt(),
            model=self.model_info))

    def _on_tokens_counted(self, request_id: int, result: TokenCount) -> None:
        if request_id != self._count_id or self._count_asked is None:
            return  # an older count, overtaken by a newer request
        self._counted, self._count_asked = (self._count_asked, result), None
        if result.exact:
            for attachment in self.pending:  # the chips' facts and "trim to fit" use the real figure
                tokens = result.documents.get(str(attachment.path))
                if tokens is not None:
                    attachment.meta["tokens"] = tokens
        self.update_token_count()
