"""The streaming output parser: documented forms, any split of the stream, and malformed tool calls."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlx_model.chat_format import (END_MARKERS, AnswerDelta, OutputParser, ThoughtDelta, ToolCall, parse_output,
                                   parse_tool_calls, prompt_opens_thought, render_builtin)


def _merge(events):
    """Adjacent text deltas of one kind joined, so results from different chunkings compare equal."""
    merged = []
    for event in events:
        if merged and isinstance(event, (AnswerDelta, ThoughtDelta)) and type(event) is type(merged[-1]):
            merged[-1] = type(event)(merged[-1].text + event.text)
        else:
            merged.append(event)
    return merged


def _run(chunks, **kwargs):
    parser = OutputParser(**kwargs)
    events = []
    for chunk in chunks:
        events += parser.feed(chunk)
    return _merge(events + parser.finish())


A, T = AnswerDelta, ThoughtDelta
DOCUMENTED = [
    ("Hello there.<turn|>", [A("Hello there.")]),
    ("<|channel>thought\nLet me think: 2 < 3.\n<channel|>Yes, 2 < 3.<turn|>",
     [T("Let me think: 2 < 3.\n"), A("Yes, 2 < 3.")]),
    ("<|channel>thought\n<channel|>Hi!<turn|>", [A("Hi!")]),  # the empty block of 26B/31B with thinking off
    ("<|tool_call>call:get_weather{city:<|\"|>Paris<|\"|>,days:3}<tool_call|><|tool_response>",
     [ToolCall("get_weather", {"city": "Paris", "days": 3},
               'call:get_weather{city:<|"|>Paris<|"|>,days:3}')]),
    ("<|channel>thought\nNeed data.<channel|>Checking.<|tool_call>call:f{a:1}<tool_call|>"
     "<|tool_call>call:g{b:<|\"|>x, {y}: z<|\"|>}<tool_call|><eos>",
     [T("Need data."), A("Checking."), ToolCall("f", {"a": 1}, "call:f{a:1}"),
      ToolCall("g", {"b": "x, {y}: z"}, 'call:g{b:<|"|>x, {y}: z<|"|>}')]),
    ('<|tool_call>call:f{s:<|"|>é 😀\nline<|"|>,n:null,b:false,x:-1.5e-3,l:[1,<|"|>two<|"|>,{k:true}],'
     'o:{p:{q:<|"|><|"|>}}}<tool_call|>',
     [ToolCall("f", {"s": "é 😀\nline", "n": None, "b": False, "x": -0.0015, "l": [1, "two", {"k": True}],
                     "o": {"p": {"q": ""}}},
               'call:f{s:<|"|>é 😀\nline<|"|>,n:null,b:false,x:-1.5e-3,l:[1,<|"|>two<|"|>,{k:true}],'
               'o:{p:{q:<|"|><|"|>}}}')]),
    ("Plain <b>html</b> and a < sign, <|unknown|> kept.<eos>",
     [A("Plain <b>html</b> and a < sign, <|unknown|> kept.")]),
    ("<|channel>thought\nthinking until the end", [T("thinking until the end")]),  # unterminated: flushed
    ("text<channel|> stray <tool_call|>closers", [A("text stray closers")]),
    ("<|channel>thoughtful? no label", [T("thoughtful? no label")]),
    ("<|channel>thought<channel|>answer", [A("answer")]),
    ("<|channel>thought\nplan<|tool_call>call:f{}<tool_call|>", [T("plan"), ToolCall("f", {}, "call:f{}")]),
]


@pytest.mark.parametrize("text,expected", DOCUMENTED)
def test_documented_forms(text, expected):
    assert _run([text]) == expected


@pytest.mark.parametrize("text,expected", DOCUMENTED)
def test_any_split_of_the_stream_gives_the_same_events(text, expected):
    for cut in range(len(text) + 1):
        assert _run([text[:cut], text[cut:]]) == expected, cut
    assert _run(list(text)) == expected
    rng = random.Random(1234)
    for _ in range(40):
        cuts = sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randint(1, 8))))
        assert _run([text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]) == expected


def test_partial_markers_are_never_shown():
    parser, shown = OutputParser(), []
    for char in "Done<turn|>":
        shown += [e.text for e in parser.feed(char) if isinstance(e, AnswerDelta)]
    assert "".join(shown) == "Done" and all("<" not in piece for piece in shown)
    assert parser.finish() == []
    # held back while it may still become a marker, released when it cannot
    parser = OutputParser()
    assert parser.feed("a <|tool") == [A("a ")]
    assert parser.feed("s are") == [A("<|tools are")]


MALFORMED = [
    ("call:get_weather(city=\"Paris\", days=3)", "get_weather", {"city": "Paris", "days": 3}),
    ("call:f(city: <|\"|>Paris<|\"|>, ok=True, none=None)", "f", {"city": "Paris", "ok": True, "none": None}),
    ("call:f(name='O\\'Hara')", "f", {"name": "O'Hara"}),
    ('{"name": "get_weather", "arguments": {"city": "Paris", "days": [1, 2]}}', "get_weather",
     {"city": "Paris", "days": [1, 2]}),
    ('{"name": "f", "arguments": "{\\"x\\": 1}"}', "f", {"x": 1}),
    ('{"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}', "f", {"x": 1}),
    ('{"name": "f", "parameters": {"x": 1}}', "f", {"x": 1}),
    ('call:f{city:"Paris","country":"FR"}', "f", {"city": "Paris", "country": "FR"}),
    ('call:f{city:"Pa\\"ris\\n"}', "f", {"city": 'Pa"ris\n'}),
    ("call:f{a:1,b:[1,2,],}", "f", {"a": 1, "b": [1, 2]}),
    ('call:f{a:<|"|>x<|"|><|"|>,b:2}', "f", {"a": "x", "b": 2}),  # a stray delimiter
    ('call:f{a:1<|"|>}', "f", {"a": 1}),
    ('call:f{<|"|>a<|"|>:1}', "f", {"a": 1}),  # a delimited key
    ('call:f{q:<|"|>unterminated}', "f", {"q": "unterminated"}),
    ("call:f{q:plain words}", "f", {"q": "plain words"}),
    ("call:f{a:{b:1}", "f", {"a": {"b": 1}}),  # truncated
    ("call:f{a:[1,2}", "f", {"a": [1, 2]}),
    ("call: f {a:1}", "f", {"a": 1}),
    ("get_weather{city:<|\"|>Oslo<|\"|>}", "get_weather", {"city": "Oslo"}),  # no "call:"
    ("call:ns.tool-name{}", "ns.tool-name", {}),
    ("call:now", "now", {}),
]


@pytest.mark.parametrize("body,name,arguments", MALFORMED)
def test_malformed_calls_are_read(body, name, arguments):
    events = _run(["<|tool_call>" + body + "<tool_call|>"])
    assert events == [ToolCall(name, arguments, body)]


@pytest.mark.parametrize("body,name,message", [
    ("call:f{a 1}", "f", "expected ':'"),
    ("call:f junk", "f", "expected '{'"),
    ('{"arguments": {}}', "", "no \"name\""),
    ('{"name": "f", "arguments": "not json"}', "f", "must be an object"),
    ("", "", "empty"),
    ("call:f{a:" + "[" * 5000 + "}", "", "nested too deeply"),
])
def test_unreadable_call_becomes_an_error_not_an_exception(body, name, message):
    events = _run(["<|tool_call>" + body + "<tool_call|>after"])
    assert len(events) == 2 and events[1] == A("after")
    call = events[0]
    assert (call.name, call.arguments) == (name, {}) and message in call.error
    assert call.as_dict()["error"] == call.error


def test_missing_closer_at_end_of_stream_and_before_end_of_turn():
    assert _run(['<|tool_call>call:f{a:<|"|>x<|"|>}']) == [ToolCall("f", {"a": "x"}, 'call:f{a:<|"|>x<|"|>}')]
    assert _run(["<|tool_call>call:f{a:1}<turn|>"]) == [ToolCall("f", {"a": 1}, "call:f{a:1}")]
    assert _run(["<|tool_call>call:f{a:1}<|tool_call>call:g{}<tool_call|>"]) == [
        ToolCall("f", {"a": 1}, "call:f{a:1}"), ToolCall("g", {}, "call:g{}")]
    assert _run(["<|tool_call>call:f{a:1}call:g{b:2}<tool_call|>"]) == [
        ToolCall("f", {"a": 1}, "call:f{a:1}"), ToolCall("g", {"b": 2}, "call:g{b:2}")]


def test_control_tokens_are_not_answer_text():
    assert _run(["<bos>Hi<end_of_turn>", "<|turn>x<pad><eos>"]) == [A("Hix")]


def test_thought_at_the_start_of_the_reply():
    messages = [{"role": "user", "content": "q"},
                {"role": "assistant",
                 "tool_calls": [{"id": "1", "function": {"name": "f", "arguments": {}}}]},
                {"role": "tool", "tool_call_id": "1", "content": "r"}]
    prompt = render_builtin(messages, enable_thinking=True)
    assert prompt.endswith("<|channel>thought\n") and prompt_opens_thought(prompt)
    assert not prompt_opens_thought(render_builtin(messages[:1], style="large"))
    in_thought = prompt_opens_thought(prompt)
    events = _run(["Result is r.<channel|>It is r."], in_thought=in_thought)
    assert events == [T("Result is r."), A("It is r.")]


def test_one_shot_helpers():
    text = "<|channel>thought\nhm<channel|>Sure.<|tool_call>call:a{}<tool_call|>x<|tool_call>call:b{n:1}"
    parsed = parse_output(text)
    assert (parsed.answer, parsed.thought) == ("Sure.x", "hm")
    assert parse_tool_calls(text) == parsed.tool_calls == [ToolCall("a", {}, "call:a{}"),
                                                           ToolCall("b", {"n": 1}, "call:b{n:1}")]
    assert parse_tool_calls("call:get_time{}") == [ToolCall("get_time", {}, "call:get_time{}")]
    assert parse_tool_calls("no calls here") == []
    call = parsed.tool_calls[1]
    assert call.as_dict() == {"name": "b", "arguments": {"n": 1}}
    assert call.as_message_tool_call("c1") == {"type": "function", "id": "c1",
                                               "function": {"name": "b", "arguments": {"n": 1}}}


def test_parser_is_reusable_after_finish():
    parser = OutputParser()
    assert parser.feed("<|channel>thought\nx") == [T("x")]
    assert parser.finish() == []
    assert parser.feed("y") == [A("y")]


_keys = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True)
_CONTROL = ('<|"|>', "<tool_call|>", "<|tool_call>") + END_MARKERS  # control tokens: never inside a value
_strings = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12).filter(
    lambda s: not any(marker in s for marker in _CONTROL))
_scalars = st.none() | st.booleans() | st.integers(-10**9, 10**9) \
    | st.floats(allow_nan=False, allow_infinity=False) | _strings
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(_keys, inner, max_size=3), max_leaves=10)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(arguments=st.dictionaries(_keys, _values, max_size=4), style=st.sampled_from(["small", "large"]))
def test_calls_written_by_the_chat_format_read_back(arguments, style):
    call = {"function": {"name": "tool_1", "arguments": arguments}}
    messages = [{"role": "assistant", "tool_calls": [call]}]
    rendered = render_builtin(messages, style=style, add_generation_prompt=False)
    block = rendered[rendered.index("<|tool_call>"):rendered.index("<tool_call|>") + len("<tool_call|>")]
    [parsed] = _run([block])
    assert (parsed.name, parsed.arguments, parsed.error) == ("tool_1", arguments, None)


_fragments = st.sampled_from(["<|channel>", "thought\n", "<channel|>", "<|tool_call>", "<tool_call|>",
                              "call:", "f", "{", "}", "[", "]", "(", ")", ":", "=", ",", '<|"|>', '"', "'",
                              "a", "1", " ", "<turn|>", "<eos>", "<", "|", "\n", "é"])


@settings(max_examples=300, deadline=None, derandomize=True)
@given(pieces=st.lists(_fragments, max_size=30), data=st.data())
def test_any_text_parses_without_exceptions_and_chunking_does_not_matter(pieces, data):
    text = "".join(pieces)
    whole = _run([text])
    cuts = sorted(data.draw(st.sets(st.integers(0, len(text)), max_size=6)))
    assert _run([text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]) == whole
    for event in whole:
        if isinstance(event, ToolCall):
            assert isinstance(event.arguments, dict) and (event.error is None or event.arguments == {})
