"""A conversation rendered with the model's chat format and tokenized, its media located: what a session reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from mlx_model.chat_format import prompt_opens_thought
from mlx_model.processor import media_keys, media_parts

from .prefill import GenerationError


@dataclass
class PreparedPrompt:
    """Token ids of a rendered prompt, where its generation prompt starts (for restore points), and its
    image, video and audio blocks (`mlx_model.processor.MediaBlock`)."""

    tokens: list[int]
    generation_prompt_start: Optional[int] = None
    parse_output: bool = True
    media: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    opens_thought: bool = False

    @property
    def keys(self) -> list[int]:
        """What caches match on: the tokens, with each media block's soft tokens named by its content."""
        return media_keys(self.tokens, self.media)


def prepare_prompt(processor, messages: Optional[list[dict]] = None, *, prompt: Optional[str] = None,
                   tools: Optional[list[dict]] = None, enable_thinking: bool = False) -> PreparedPrompt:
    """Render and tokenize a conversation with its attachments (or take raw text, for base models).

    `processor` is the model's `mlx_model.processor.Processor` (tokenizer, chat format, media)."""
    if processor is None:
        raise GenerationError("This model folder has no tokenizer files, so it cannot read text.")
    tokenizer = processor.tokenizer
    if prompt is not None:
        tokens = tokenizer.encode(prompt, add_special_tokens=True)
        bos = getattr(tokenizer, "bos_token_id", None)
        if bos is not None and (not tokens or tokens[0] != bos):
            tokens = [bos] + tokens  # a base model was trained on documents that start with <bos>
        return PreparedPrompt(tokens, None, parse_output=False)
    if not messages:
        raise GenerationError("Nothing to answer: the conversation has no messages.")
    text = tokenizer.apply_chat_template(messages, tools=tools, enable_thinking=enable_thinking,
                                         add_generation_prompt=True)
    processed = processor.process_text(text, media_parts(messages))
    tokens, media, notes = processed.tokens, processed.media, processed.notes
    head = tokenizer.apply_chat_template(messages, tools=tools, enable_thinking=enable_thinking,
                                         add_generation_prompt=False)
    boundary = None
    if text.startswith(head) and len(head) < len(text):
        suffix = tokenizer.encode(text[len(head):], add_special_tokens=False)
        if suffix and tokens[-len(suffix):] == suffix:
            boundary = len(tokens) - len(suffix)
    return PreparedPrompt(tokens, boundary, media=media, notes=notes, opens_thought=prompt_opens_thought(text))
