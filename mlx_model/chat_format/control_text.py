"""Control tokens typed or pasted by a person stay text.

A pasted Gemma transcript or a document about chat formats contains "<turn|>", "<|image|>" or
"<end_of_turn>"; tokenized as is, they would end the user's turn early, ask for a missing image or
let a document speak as the model. Before a conversation is rendered, every control token inside
what people and tools wrote is marked (its "<" replaced by LITERAL_MARK); `encode_with_literals`
then tokenizes a marked token as its characters. Text without control tokens is untouched, so
ordinary prompts tokenize exactly as the reference does.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable

LITERAL_MARK = "\U000F0000"  # a private-use character: stands for the "<" of a control token written as text
_CANDIDATE = re.compile(r"<[^<>\s]{1,64}>")
_MARKED = re.compile(LITERAL_MARK + r"[^<>\s]{1,64}>")
# Gemma 4's turn, channel and tool tokens are "added" but not flagged special in tokenizer.json
_GEMMA4_CONTROL = re.compile(r"<\|[^<>\s]*>|<[^<>\s]*\|>")
_AUTHORED_BY_PEOPLE_OR_TOOLS = ("user", "system", "developer", "tool")


def control_tokens(added_tokens: Iterable[Any]) -> frozenset[str]:
    """The added tokens that steer the chat format (special ones and Gemma 4's <|...> / <...|> tokens).

    Ordinary added tokens such as Gemma 3's HTML tags ("<table>") are left out: they are text.
    """
    found = set()
    for token in added_tokens:
        content = getattr(token, "content", token)
        if (getattr(token, "special", False) or _GEMMA4_CONTROL.fullmatch(content)) and _CANDIDATE.fullmatch(content):
            found.add(content)
    return frozenset(found)


def escape_text(text: str, controls: frozenset[str]) -> str:
    """Mark every control token in `text` as literal text (and drop stray marks, so none can be forged)."""
    text = text.replace(LITERAL_MARK, "")
    if "<" not in text or not controls:
        return text
    return _CANDIDATE.sub(lambda m: LITERAL_MARK + m[0][1:] if m[0] in controls else m[0], text)


def escape_messages(messages: Iterable[Any], controls: frozenset[str]) -> list:
    """Messages with control tokens marked in every string people or tools wrote (the model's own turns stay)."""
    escaped = []
    for message in messages:
        if isinstance(message, dict) and message.get("role") in _AUTHORED_BY_PEOPLE_OR_TOOLS:
            message = {key: _escape_values(value, controls) if key == "content" else value
                       for key, value in message.items()}
        escaped.append(message)
    return escaped


def _escape_values(value: Any, controls: frozenset[str]) -> Any:
    if isinstance(value, str):
        return escape_text(value, controls)
    if isinstance(value, list):
        return [_escape_values(item, controls) for item in value]
    if isinstance(value, dict):
        return {key: _escape_values(item, controls) for key, item in value.items()}
    return value


def encode_with_literals(text: str, encode: Callable[[str, bool], list[int]], add_special_tokens: bool) -> list[int]:
    """Token ids of rendered text in which marked control tokens become the ids of their characters."""
    if LITERAL_MARK not in text:
        return encode(text, add_special_tokens)
    ids, position = [], 0
    for match in _MARKED.finditer(text):
        ids += encode(text[position:match.start()], add_special_tokens and position == 0)
        ids += encode("<", False) + encode(match[0][len(LITERAL_MARK):], False)
        position = match.end()
    return ids + encode(text[position:].replace(LITERAL_MARK, "<"), False)
