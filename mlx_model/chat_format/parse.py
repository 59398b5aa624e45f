"""Split a streamed Gemma reply into answer text, thought text and tool calls.

The parser is fed detokenized text that keeps special tokens as text: thoughts arrive as
`<|channel>thought\\n ... <channel|>`, tool calls as `<|tool_call>call:name{key:value,...}<tool_call|>`
(keys bare, strings delimited by `<|"|>`). A marker split across two deltas is held back, never shown as
text. Malformed calls seen in the wild are read too (`call:name(key=value)`, JSON objects, double quotes,
trailing commas, stray `<|"|>`, a missing `<tool_call|>`); one that cannot be read becomes a ToolCall with
an `error`, never an exception.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from .markers import (CALL_CLOSE, CALL_OPEN, DELIM, DROPPED_MARKERS, END_MARKERS, THOUGHT_CLOSE, THOUGHT_LABEL,
                      THOUGHT_OPEN)

_ANSWER, _THOUGHT, _CALL = "answer", "thought", "tool_call"
_MARKERS = {
    _ANSWER: (THOUGHT_OPEN, THOUGHT_CLOSE, CALL_OPEN, CALL_CLOSE) + END_MARKERS + DROPPED_MARKERS,
    _THOUGHT: (THOUGHT_CLOSE, CALL_OPEN, THOUGHT_OPEN) + END_MARKERS + DROPPED_MARKERS,
    _CALL: (CALL_CLOSE, CALL_OPEN) + END_MARKERS,
}


@dataclass(frozen=True)
class AnswerDelta:
    """Text of the visible answer."""

    text: str


@dataclass(frozen=True)
class ThoughtDelta:
    """Text of the model's thinking (shown apart, dropped from history)."""

    text: str


@dataclass
class ToolCall:
    """One call the model asks for; `error` says why `arguments` could not be read (then it is {})."""

    name: str
    arguments: dict = field(default_factory=dict)
    raw: str = ""
    error: Optional[str] = None

    def as_dict(self) -> dict:
        """{"name", "arguments"}, plus "error" and the "raw" text when the call could not be read."""
        out = {"name": self.name, "arguments": self.arguments}
        if self.error:
            out["error"] = self.error
            out["raw"] = self.raw  # the server hands the unreadable text back to the client as is
        return out

    def as_message_tool_call(self, call_id: Optional[str] = None) -> dict:
        """The OpenAI-style entry for an assistant message's `tool_calls` (what the chat templates read)."""
        out = {"type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        if call_id is not None:
            out["id"] = call_id
        return out


Event = Union[AnswerDelta, ThoughtDelta, ToolCall]


def _partial_marker_length(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of a marker (held back for later)."""
    longest = max(len(m) for m in markers) - 1
    start = max(0, len(text) - longest)
    at = text.find("<", start)
    while at != -1:
        tail = text[at:]
        if any(m.startswith(tail) and m != tail for m in markers):
            return len(text) - at
        at = text.find("<", at + 1)
    return 0


def _first_marker(text: str, markers: tuple[str, ...]) -> tuple[int, Optional[str]]:
    best, found = -1, None
    for marker in markers:
        at = text.find(marker)
        if at != -1 and (best == -1 or at < best or (at == best and len(marker) > len(found))):
            best, found = at, marker
    return best, found


# ------------------------------------------------------------------------------------ tool-call syntax

_CALL_PREFIX = re.compile(r"call\s*:\s*")
_NAME = re.compile(r"[\w\-.]+(?::[\w\-.]+)*")
_BARE_KEY = re.compile(r"[^\s:=,{}\[\]()]+")
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?|[+-]?(?:inf|nan)")
_LITERALS = {"true": True, "True": True, "false": False, "False": False, "null": None, "None": None}
_CLOSER = {"{": "}", "[": "]", "(": ")"}


class ToolCallSyntaxError(ValueError):
    """A tool call that cannot be read; `name` is the function name when it was read before the fault."""

    def __init__(self, message: str, name: Optional[str] = None):
        super().__init__(message)
        self.name = name


class _Reader:
    """A forgiving reader of Gemma's call syntax, which also accepts JSON and Python-style arguments."""

    def __init__(self, text: str):
        self.text, self.pos, self.open = text, 0, []  # `open`: closers of the containers being read

    def peek(self) -> str:
        """The next character, or NUL past the end (so `peek() in "{["` is safe)."""
        return self.text[self.pos] if self.pos < len(self.text) else "\0"

    def at(self, token: str) -> bool:
        return self.text.startswith(token, self.pos)

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def skip_stray(self) -> None:
        """Whitespace and <|"|> that open no string (models sometimes leave an extra one after a value)."""
        self.skip_space()
        while self.at(DELIM):
            self.pos += len(DELIM)
            self.skip_space()

    def fail(self, what: str) -> ToolCallSyntaxError:
        return ToolCallSyntaxError(f"{what} at character {self.pos}: {self.text[self.pos:self.pos + 24]!r}")

    def container(self, opener: str) -> Union[dict, list]:
        closer = _CLOSER[opener]
        self.pos += 1
        self.open.append(closer)
        result: Union[dict, list] = [] if opener == "[" else {}
        while True:
            self.skip_space()
            char = self.peek()
            if char == closer:
                self.pos += 1
                break
            # truncated, or an outer container's closer: close this one here
            if self.pos >= len(self.text) or (char in ")]}" and char in self.open):
                break
            if char == ",":
                self.pos += 1
                continue
            if isinstance(result, dict):
                key = self.key()
                self.skip_space()
                if self.peek() not in (":", "="):
                    raise self.fail(f"expected ':' after {key!r}")
                self.pos += 1
                result[key] = self.value()
            else:
                result.append(self.value())
            self.skip_stray()
            char = self.peek()
            if self.pos < len(self.text) and char not in (",", closer) and char not in self.open:
                raise self.fail("expected ',' or '" + closer + "'")
        self.open.pop()
        return result

    def key(self) -> str:
        if self.at(DELIM):
            return self.delimited()
        if self.peek() in "\"'":
            return self.quoted(self.peek())
        match = _BARE_KEY.match(self.text, self.pos)
        if not match:
            raise self.fail("expected a key")
        self.pos = match.end()
        return match.group()

    def value(self) -> Any:
        self.skip_space()
        if self.at(DELIM):
            return self.delimited()
        char = self.peek()
        if char in "\"'":
            return self.quoted(char)
        if char in "{[":
            return self.container(char)
        return self.bare()

    def delimited(self) -> str:
        start = self.pos + len(DELIM)
        end = self.text.find(DELIM, start)
        if end == -1:
            return self.unterminated(start)
        self.pos = end + len(DELIM)
        return self.text[start:end]

    def quoted(self, quote: str) -> str:
        index = self.pos + 1
        while index < len(self.text) and self.text[index] != quote:
            index += 2 if self.text[index] == "\\" else 1
        if index >= len(self.text):
            return self.unterminated(self.pos + 1)
        inner, self.pos = self.text[self.pos + 1:index], index + 1
        if quote == "'":
            inner = inner.replace("\\'", "'").replace('"', '\\"')
        try:
            return json.loads('"' + inner + '"', strict=False)
        except ValueError:
            return inner

    def unterminated(self, start: int) -> str:
        """A string whose closing delimiter never came: it runs to the end, less the closers still owed."""
        end = len(self.text)
        for closer in reversed(self.open):
            cut = end
            while cut > start and self.text[cut - 1].isspace():
                cut -= 1
            if cut > start and self.text[cut - 1] == closer:
                end = cut - 1
            else:
                break
        self.pos = end
        return self.text[start:end].rstrip()

    def bare(self) -> Any:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in ",)]}" and not self.at(DELIM):
            self.pos += 1
        word = self.text[start:self.pos].strip()
        if not word:
            raise self.fail("expected a value")
        if word in _LITERALS:
            return _LITERALS[word]
        if _INT.fullmatch(word):
            return int(word)
        if _FLOAT.fullmatch(word):
            return float(word)
        return word


def _calls_from_json(value: Any) -> list[tuple[str, dict]]:
    """{"name", "arguments"} (or "parameters", or OpenAI's {"function": {...}}), or a list of them."""
    if isinstance(value, list):
        return [call for item in value for call in _calls_from_json(item)]
    if not isinstance(value, dict):
        raise ToolCallSyntaxError("a JSON tool call must be an object with a name")
    function = value.get("function")
    inner = function if isinstance(function, dict) else {}
    name = value.get("name") or inner.get("name") or (function if isinstance(function, str) else None)
    if not isinstance(name, str) or not name:
        raise ToolCallSyntaxError("the JSON tool call has no \"name\"")
    arguments = next((source[key] for source in (value, inner) for key in ("arguments", "parameters", "args")
                      if source.get(key) is not None), {})
    if isinstance(arguments, str):
        try:
            reader = _Reader(arguments.strip() or "{}")
            if reader.peek() != "{":
                raise reader.fail("arguments must be an object")
            arguments = reader.container("{")
        except ToolCallSyntaxError as error:
            raise ToolCallSyntaxError(f"arguments of {name}: {error}", name) from error
    if not isinstance(arguments, dict):
        raise ToolCallSyntaxError(f"arguments of {name} must be an object", name)
    return [(name, arguments)]


def parse_call_block(raw: str) -> list[tuple[str, dict, str, Optional[str]]]:
    """(name, arguments, text, error) for each call written inside one tool-call block."""
    text = raw.strip()
    if not text:
        return [("", {}, raw, "the tool call is empty")]
    reader, calls = _Reader(text), []
    while reader.pos < len(text):
        start, name = reader.pos, None
        try:
            if reader.peek() in "{[":
                found = _calls_from_json(reader.container(reader.peek()))
                calls.extend((n, a, text[start:], None) for n, a in found)
            else:
                prefix = _CALL_PREFIX.match(text, reader.pos)
                reader.pos = prefix.end() if prefix else reader.pos
                match = _NAME.match(text, reader.pos)
                if not match:
                    raise reader.fail("expected call:NAME{...}")
                name, reader.pos = match.group(), match.end()
                reader.skip_space()
                if reader.peek() in "{(":
                    arguments = reader.container(reader.peek())
                elif reader.pos < len(text) and not reader.at("call"):
                    raise reader.fail(f"after call:{name}, expected '{{'")
                else:
                    arguments = {}
                calls.append((name, arguments, text[start:reader.pos], None))
        except ToolCallSyntaxError as error:
            calls.append((error.name or name or "", {}, text[start:], str(error)))
            break
        while reader.pos < len(text) and (text[reader.pos] in ",;}])" or text[reader.pos].isspace()):
            reader.pos += 1
        reader.skip_stray()
        if not (reader.at("call") or reader.peek() in "{["):
            break  # anything after the calls is not a call
    if len(calls) == 1:
        calls[0] = calls[0][:2] + (text,) + calls[0][3:]
    return calls


def parse_call_text(raw: str) -> list[ToolCall]:
    """The calls inside one `<|tool_call>...<tool_call|>` block (usually one); never raises."""
    try:
        parsed = parse_call_block(raw)
    except RecursionError:
        return [ToolCall("", {}, raw, "the tool call is nested too deeply to read")]
    return [ToolCall(name, arguments, text, error) for name, arguments, text, error in parsed]


class OutputParser:
    """Incremental parser: `feed(delta)` and `finish()` return AnswerDelta, ThoughtDelta and ToolCall lists.

    `in_thought=True` starts inside a thought, for prompts that end with `<|channel>thought\\n` (the E2B/E4B
    template does so after a tool result when thinking is on); see `prompt_opens_thought`.
    """

    def __init__(self, in_thought: bool = False):
        self._in_thought_at_start = in_thought
        self._reset()

    def _reset(self) -> None:
        self._state = _THOUGHT if self._in_thought_at_start else _ANSWER
        self._label_pending = False
        self._pending = ""
        self._call_text = ""

    def feed(self, text: str) -> list[Event]:
        """Events for the text that can be classified so far; a possible marker prefix is held back."""
        self._pending += text
        events: list[Event] = []
        self._drain(events, final=False)
        return events

    def finish(self) -> list[Event]:
        """Flush everything held back at the end of the stream; the parser is then ready for a new stream."""
        events: list[Event] = []
        self._drain(events, final=True)
        if self._state == _CALL:
            events.extend(parse_call_text(self._call_text))  # the closing <tool_call|> never came
        self._reset()
        return events

    def _drain(self, events: list[Event], final: bool) -> None:
        while True:
            if self._label_pending and not self._consume_label(final):
                return
            markers = _MARKERS[self._state]
            at, marker = _first_marker(self._pending, markers)
            if marker is None:
                keep = 0 if final else _partial_marker_length(self._pending, markers)
                cut = len(self._pending) - keep
                self._emit(self._pending[:cut], events)
                self._pending = self._pending[cut:]
                return
            self._emit(self._pending[:at], events)
            self._pending = self._pending[at + len(marker):]
            self._on_marker(marker, events)

    def _consume_label(self, final: bool) -> bool:
        """Drop the "thought\\n" channel name after <|channel>; False while the text so far cannot tell."""
        text = self._pending
        if text.startswith(THOUGHT_LABEL + "\n"):
            self._pending = text[len(THOUGHT_LABEL) + 1:]
        elif text.startswith(THOUGHT_LABEL + "<") or (final and text == THOUGHT_LABEL):
            self._pending = text[len(THOUGHT_LABEL):]
        elif (THOUGHT_LABEL + "\n").startswith(text) and not final:
            return False
        self._label_pending = False
        return True

    def _emit(self, text: str, events: list[Event]) -> None:
        if not text:
            return
        if self._state == _CALL:
            self._call_text += text
        elif self._state == _THOUGHT:
            events.append(ThoughtDelta(text))
        else:
            events.append(AnswerDelta(text))

    def _on_marker(self, marker: str, events: list[Event]) -> None:
        if self._state == _CALL:
            if marker in (CALL_CLOSE, CALL_OPEN) or marker in END_MARKERS:
                events.extend(parse_call_text(self._call_text))
                self._call_text = ""
                self._state = _CALL if marker == CALL_OPEN else _ANSWER
            return
        if marker == CALL_OPEN:  # also ends a thought the model forgot to close
            self._state, self._call_text = _CALL, ""
        elif self._state == _ANSWER and marker == THOUGHT_OPEN:
            self._state, self._label_pending = _THOUGHT, True
        elif self._state == _THOUGHT and (marker == THOUGHT_CLOSE or marker in END_MARKERS):
            self._state = _ANSWER
        # every other marker is dropped: a stray <channel|> or <tool_call|>, <turn|>, <eos>, ...


def prompt_opens_thought(prompt: str) -> bool:
    """True when the prompt ends inside an open thought block (so the reply starts as thought)."""
    return prompt.rfind(THOUGHT_OPEN) > prompt.rfind(THOUGHT_CLOSE)


@dataclass
class ParsedOutput:
    """A whole reply, split."""

    answer: str
    thought: str
    tool_calls: list[ToolCall]


def parse_output(text: str, in_thought: bool = False) -> ParsedOutput:
    """Split a complete reply into answer, thought and tool calls."""
    parser = OutputParser(in_thought=in_thought)
    events = parser.feed(text) + parser.finish()
    return ParsedOutput(answer="".join(e.text for e in events if isinstance(e, AnswerDelta)),
                        thought="".join(e.text for e in events if isinstance(e, ThoughtDelta)),
                        tool_calls=[e for e in events if isinstance(e, ToolCall)])


_BARE_CALL = re.compile(r"\s*call\s*:")


def parse_tool_calls(text: str) -> list[ToolCall]:
    """Every tool call in a complete reply; a reply that is only a bare `call:name{...}` counts as one."""
    calls = parse_output(text).tool_calls
    if not calls and _BARE_CALL.match(text):
        calls = parse_call_text(text)
    return calls
