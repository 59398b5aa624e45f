"""Our chat renderer against Google's templates, and our Jinja rendering against transformers'.

`render_builtin(style="small")` must equal gemma-4-e2b-it.jinja and `style="large"` gemma-4-31b-it.jinja byte
for byte, on fixed conversations and on random ones (hypothesis); the interleaved 31B template and the one
inside llama.cpp's vocab GGUF agree with "large" on the features they share, Gemma 3's template with "gemma3".
"""

from __future__ import annotations

import functools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jinja2 import TemplateError
from tokenizers import Tokenizer as RawTokenizer
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from mlx_model.chat_format import ChatFormatError, render_builtin, render_template
from tests.assets import reference_chat_template

E2B, B31, INTERLEAVED, EMBEDDED, GEMMA3 = ("gemma-4-e2b-it", "gemma-4-31b-it", "gemma-4-31b-it-interleaved",
                                           "gemma-4-vocab-embedded", "gemma-3-it")

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name, e.g. Paris"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "Temperature unit"},
        "days": {"type": "integer"}}, "required": ["city"]}}}
NESTED = {"type": "function", "function": {
    "name": "book_trip", "description": "Book a trip with stops.",
    "parameters": {"type": "object", "properties": {
        "traveler": {"type": "object", "description": "Who travels", "properties": {
            "name": {"type": "string"}, "age": {"type": "integer", "nullable": True},
            "Email": {"type": "string", "description": "contact"}}, "required": ["name"]},
        "stops": {"type": "array", "description": "Cities in order", "items": {
            "type": "object", "properties": {"city": {"type": "string"}, "nights": {"type": "number"}},
            "required": ["city"]}},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["cheap", "fast"]}},
        "matrix": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
        "options": {"type": "object", "description": "free-form"},
        "note": {"type": "string", "nullable": True},
        "kind": {"type": ["string", "null"]}}, "required": ["traveler", "stops"]},
    "response": {"type": "object", "description": "Booking reference"}}}
SCHEMA_WORDS = {"type": "function", "function": {  # parameters named like schema keywords
    "name": "describe", "description": "Keyword-named parameters.",
    "parameters": {"type": "object", "properties": {
        "description": {"type": "string"}, "type": {"type": "string", "enum": ["a", "b"]},
        "text": {"type": "string"}}, "required": ["text"]}}}
NOW = {"type": "function", "function": {"name": "now", "description": "The time."}}
IMAGE = {"type": "image"}


def _call(name, arguments, call_id=None):
    call = {"type": "function", "function": {"name": name, "arguments": arguments}}
    return {**call, "id": call_id} if call_id else call


CONVERSATIONS = {
    "user_only": dict(messages=[{"role": "user", "content": "Hello"}]),
    "system_multi_turn": dict(messages=[
        {"role": "system", "content": "  You are terse.\n"}, {"role": "user", "content": "Hi there!  "},
        {"role": "assistant", "content": "Hello. How can I help?"},
        {"role": "user", "content": "Say ünïcödé 😀 twice.\n\n"}]),
    "history_thoughts": dict(messages=[
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<|channel>thought\nadd them<channel|>4",
         "reasoning_content": "old"},
        {"role": "user", "content": "and 3+3?"}]),
    "final_assistant_reasoning": dict(messages=[
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue.", "reasoning_content": "pick one"}],
        add_generation_prompt=False),
    "developer_role": dict(messages=[{"role": "developer", "content": "Rules."},
                                     {"role": "user", "content": "ok"}]),
    "system_parts": dict(messages=[
        {"role": "system", "content": [{"type": "text", "text": " Part one. "},
                                       {"type": "text", "text": "Two"}]},
        {"role": "user", "content": "go"}]),
    "multimodal": dict(messages=[
        {"role": "user", "content": [IMAGE, {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": [{"type": "text", "text": "And these? "}, {"type": "audio"},
                                     {"type": "video"}, IMAGE, {"type": "text", "text": " thanks"}]}]),
    "multimodal_aliases": dict(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "x"}}, {"type": "input_audio"},
        {"type": "text", "text": "both"}]}]),
    "tools_simple": dict(messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER, NOW]),
    "tools_nested": dict(messages=[{"role": "system", "content": "Use tools."},
                                   {"role": "user", "content": "Book"}], tools=[NESTED, WEATHER]),
    "tools_schema_words": dict(messages=[{"role": "user", "content": "x"}], tools=[SCHEMA_WORDS]),
    "tool_call_pending": dict(messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "tool_calls": [_call("get_weather", {"city": "Paris", "unit": "celsius"})]}],
        tools=[WEATHER]),
    "tool_round_trip": dict(messages=[
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "", "reasoning_content": "need two calls", "tool_calls": [
            _call("get_weather", {"city": "Paris"}, "c1"),
            _call("get_weather", {"city": "Rome", "days": 3, "ratio": 0.5, "flags": [True, False],
                                  "extra": {"Zeta": 1, "alpha": "a"}, "nothing": None}, "c2")]},
        {"role": "tool", "tool_call_id": "c1", "content": "18 C, sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "21 C"},
                                                           {"type": "text", "text": ", clear"}]}],
        tools=[WEATHER]),
    "tool_round_trip_answered": dict(messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "tool_calls": [_call("get_weather", {"city": "Paris"}, "a")]},
        {"role": "tool", "tool_call_id": "a", "content": "18 C"},
        {"role": "assistant", "content": "It is 18 C in Paris."}, {"role": "user", "content": "Thanks!"}],
        tools=[WEATHER]),
    "tool_results_without_ids": dict(messages=[
        {"role": "user", "content": "two calls"},
        {"role": "assistant", "tool_calls": [_call("first", {}), _call("second", {"n": 2})]},
        {"role": "tool", "name": "first", "content": "one"}, {"role": "tool", "content": "two"}]),
    "tool_result_image": dict(messages=[
        {"role": "user", "content": "screenshot please"},
        {"role": "assistant", "tool_calls": [_call("shot", {}, "s")]},
        {"role": "tool", "tool_call_id": "s", "content": [{"type": "text", "text": "done"}, IMAGE]}]),
    "tool_responses_legacy": dict(messages=[
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "tool_calls": [_call("get_weather", {"city": "Oslo"})],
         "tool_responses": [{"name": "get_weather", "response": {"temp": -3, "sky": "snow"}}]},
        {"role": "assistant", "content": "Cold: -3 and snow."}]),
    "tool_responses_legacy_open": dict(messages=[
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "tool_calls": [_call("get_weather", {"city": "Oslo"})],
         "tool_responses": [{"name": "get_weather", "response": "-3 and snow"}, {"response": 4}]}]),
    "consecutive_assistants": dict(messages=[
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "part one"},
        {"role": "assistant", "content": "part two"}, {"role": "user", "content": "next"}]),
    "thinking_key": dict(messages=[
        {"role": "user", "content": "q"},
        {"role": "assistant", "thinking": "via the thinking key", "tool_calls": [_call("now", {}, "t")]},
        {"role": "tool", "tool_call_id": "t", "content": "noon"}], tools=[NOW]),
    "tool_call_with_image_content": dict(messages=[
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": [IMAGE], "tool_calls": [_call("now", {})]}]),
}
SHARED_WITH_LARGE = ["user_only", "system_multi_turn", "history_thoughts", "final_assistant_reasoning",
                     "developer_role", "multimodal_aliases", "tools_simple", "tools_schema_words"]
# template -> (style, conversations it renders like our style, thinking settings it agrees on)
SUPPORT = {
    E2B: ("small", list(CONVERSATIONS), (False, True)),
    # gemma-4-31b-it prints a system parts list as its Python repr
    B31: ("large", [c for c in CONVERSATIONS if c != "system_parts"], (False, True)),
    INTERLEAVED: ("large", SHARED_WITH_LARGE + ["multimodal", "tool_call_with_image_content"], (False, True)),
    EMBEDDED: ("large", SHARED_WITH_LARGE, (False,)),  # it writes "<|think|>" without the newline
}
GEMMA3_CONVERSATIONS = {
    "plain": [{"role": "user", "content": "Hi"}],
    "system": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": " Hello "},
               {"role": "assistant", "content": "Hi!"}, {"role": "user", "content": "Bye"}],
    "system_parts_image": [{"role": "system", "content": [{"type": "text", "text": "Look closely."}]},
                           {"role": "user", "content": [IMAGE, {"type": "text", "text": " What is it? "}]}],
}


def _cases():
    for template, (style, names, thinking) in SUPPORT.items():
        for name in names:
            conversation = CONVERSATIONS[name]
            for think in thinking:
                prompts = [conversation.get("add_generation_prompt", True)]
                if "add_generation_prompt" not in conversation:
                    prompts.append(False)
                for prompt in prompts:
                    yield pytest.param(template, style, name, think, prompt,
                                       id=f"{template}-{name}-{think}-{prompt}")


@functools.lru_cache(maxsize=None)
def _template(name: str) -> str:
    return reference_chat_template(name)


@pytest.fixture(scope="module")
def templates():
    return {name: _template(name) for name in (E2B, B31, INTERLEAVED, EMBEDDED, GEMMA3)}


@pytest.fixture(scope="module")
def hf_tokenizer():
    """A transformers tokenizer with Gemma's special-token names, to call its apply_chat_template."""
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    raw = RawTokenizer(WordLevel(vocab, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", pad_token="<pad>")


@pytest.mark.parametrize("template,style,name,think,prompt", list(_cases()))
def test_builtin_matches_reference_template(templates, template, style, name, think, prompt):
    conversation = CONVERSATIONS[name]
    kwargs = dict(tools=conversation.get("tools"), enable_thinking=think, add_generation_prompt=prompt)
    expected = render_template(templates[template], conversation["messages"], **kwargs)
    assert render_builtin(conversation["messages"], style=style, **kwargs) == expected


@pytest.mark.parametrize("name", list(GEMMA3_CONVERSATIONS))
@pytest.mark.parametrize("prompt", [True, False])
def test_builtin_gemma3_matches_template(templates, name, prompt):
    messages = GEMMA3_CONVERSATIONS[name]
    expected = render_template(templates[GEMMA3], messages, add_generation_prompt=prompt)
    assert render_builtin(messages, style="gemma3", add_generation_prompt=prompt) == expected


def test_gemma3_refuses_what_its_template_refuses(templates):
    messages = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(ChatFormatError, match="alternate"):
        render_template(templates[GEMMA3], messages)
    with pytest.raises(ChatFormatError, match="alternate"):
        render_builtin(messages, style="gemma3")


def test_render_template_equals_transformers(templates, hf_tokenizer):
    checked = 0
    for template in (E2B, B31, INTERLEAVED, EMBEDDED):
        for name, conversation in CONVERSATIONS.items():
            for think in (False, True):
                kwargs = dict(tools=conversation.get("tools"), enable_thinking=think,
                              add_generation_prompt=True)
                try:
                    theirs = hf_tokenizer.apply_chat_template(conversation["messages"], tokenize=False,
                                                              chat_template=templates[template], **kwargs)
                except (TemplateError, TypeError):  # the template itself refuses: ours must refuse too
                    with pytest.raises(ChatFormatError):
                        render_template(templates[template], conversation["messages"], **kwargs)
                    continue
                assert render_template(templates[template], conversation["messages"], **kwargs) == theirs
                checked += 1
    assert checked > 150


def test_jinja_extras_match_transformers(hf_tokenizer):
    template = ("{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
                "{% generation %}{{ m['content'] | tojson }}{% endgeneration %}"
                "{% if loop.index > 5 %}{% break %}{% endif %}"
                "{% endfor %}{{ ns.n }}{{ strftime_now('%Y') | length }}{{ bos_token }}{{ eos_token }}"
                "{{ dict(a=1)['a'] }}")
    messages = [{"role": "user", "content": "é \"quoted\" <b>"}]
    expected = hf_tokenizer.apply_chat_template(messages, tokenize=False, chat_template=template)
    assert render_template(template, messages, eos_token="<eos>") == expected
    with pytest.raises(ChatFormatError, match="stop here"):
        render_template("{{ raise_exception('stop here') }}", messages)
    with pytest.raises(ChatFormatError, match="does not parse"):
        render_template("{% if %}", messages)


def test_tool_declaration_text():
    text = render_builtin([{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER, NOW])
    assert text == (
        '<bos><|turn>system\n<|tool>declaration:get_weather{'
        'description:<|"|>Current weather for a city.<|"|>,'
        'parameters:{properties:{city:{description:<|"|>City name, e.g. Paris<|"|>,type:<|"|>STRING<|"|>},'
        'days:{type:<|"|>INTEGER<|"|>},unit:{description:<|"|>Temperature unit<|"|>,'
        'enum:[<|"|>celsius<|"|>,<|"|>fahrenheit<|"|>],type:<|"|>STRING<|"|>}},required:[<|"|>city<|"|>],'
        'type:<|"|>OBJECT<|"|>}}<tool|>'
        '<|tool>declaration:now{description:<|"|>The time.<|"|>}<tool|><turn|>\n'
        '<|turn>user\nWeather in Paris?<turn|>\n<|turn>model\n')


def test_thinking_prompts_per_style():
    messages = [{"role": "user", "content": "hi"}]
    assert render_builtin(messages, style="small").endswith("<turn|>\n<|turn>model\n")
    assert render_builtin(messages, style="large").endswith("<|turn>model\n<|channel>thought\n<channel|>")
    for style in ("small", "large"):
        on = render_builtin(messages, enable_thinking=True, style=style)
        assert on.startswith("<bos><|turn>system\n<|think|>\n<turn|>\n") and on.endswith("<|turn>model\n")


def test_where_templates_fail_we_render_the_intent(templates):
    # A tool result given as a dict: both templates crash on it; ours writes the mapping.
    messages = [{"role": "user", "content": "q"},
                {"role": "assistant", "tool_calls": [_call("now", {}, "1")]},
                {"role": "tool", "tool_call_id": "1", "content": {"time": "noon", "tz": "UTC"}}]
    for template in (E2B, B31):
        with pytest.raises(ChatFormatError):
            render_template(templates[template], messages)
    assert "<|tool_response>response:now{time:<|\"|>noon<|\"|>,tz:<|\"|>UTC<|\"|>}<tool_response|>" in \
        render_builtin(messages)
    # OpenAI-style JSON-string arguments: the E2B template refuses them; ours reads the JSON.
    string_args = [{"role": "user", "content": "q"},
                   {"role": "assistant", "tool_calls": [_call("get_weather", '{"city": "Paris"}')]}]
    with pytest.raises(ChatFormatError, match="mapping"):
        render_template(templates[E2B], string_args)
    assert '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>' in render_builtin(string_args)
    with pytest.raises(ChatFormatError, match="JSON object"):
        render_builtin([{"role": "assistant", "tool_calls": [_call("f", "not json")]}])


def test_bad_input_is_a_clear_error():
    with pytest.raises(ChatFormatError, match="style"):
        render_builtin([{"role": "user", "content": "x"}], style="medium")
    with pytest.raises(ChatFormatError, match="message 1 has no 'role'"):
        render_builtin([{"role": "user", "content": "x"}, {"content": "y"}])
    with pytest.raises(ChatFormatError, match="function.name"):
        render_builtin([{"role": "assistant", "tool_calls": [{"function": {"arguments": {}}}]}])


# ----------------------------------------------------------------------------------------------- random chats

_WORDS = ["a", "b c", " pad ", "\n", "é", "😀", "{x:1}", "<|channel>thought\nhid<channel|>", "<|channel>",
          ",", ":"]
_texts = st.lists(st.sampled_from(_WORDS), max_size=4).map("".join)
_keys = st.sampled_from(["a", "B", "b", "city", "type", "description", "n_2"])
_scalars = (st.none() | st.booleans() | st.integers(-10**6, 10**6)
            | st.floats(allow_nan=False, allow_infinity=False) | _texts)
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(_keys, inner, max_size=3), max_leaves=6)
_types = st.sampled_from(["string", "integer", "number", "boolean", "array", "object", "STRING",
                          ["string", "null"]])


@st.composite
def _schema(draw, depth=0):
    schema = {"type": draw(_types)}
    if draw(st.booleans()):
        schema["description"] = draw(_texts)
    if draw(st.booleans()):
        schema["enum"] = draw(st.lists(_texts, max_size=2))
    if draw(st.booleans()):
        schema["nullable"] = draw(st.booleans())
    if depth < 2 and draw(st.booleans()):
        schema["items"] = draw(_schema(depth + 1))
    if depth < 2 and draw(st.booleans()):
        schema["properties"] = draw(st.dictionaries(_keys, _schema(depth + 1), max_size=3))
    if draw(st.booleans()):
        schema["required"] = draw(st.lists(_keys, max_size=2))
    return schema


@st.composite
def _tool(draw):
    function = {"name": draw(st.sampled_from(["f", "get_weather", "g2"])), "description": draw(_texts)}
    if draw(st.booleans()):
        properties = draw(st.dictionaries(_keys, _schema(), max_size=3))
        function["parameters"] = {"type": "object", "properties": properties,
                                  "required": draw(st.lists(_keys, max_size=2))}
    if draw(st.booleans()):
        function["response"] = {"type": draw(st.sampled_from(["object", "string"])),
                                "description": draw(_texts)}
    return {"type": "function", "function": function}


_parts = st.lists(st.sampled_from([{"type": "text", "text": " hi "}, {"type": "text", "text": "x"}, IMAGE,
                                   {"type": "audio"}, {"type": "video"}, {"type": "image_url"}]), max_size=3)


@st.composite
def _conversation(draw, style):
    messages = []
    if draw(st.booleans()):
        text_parts = _parts.map(lambda parts: [p for p in parts if p["type"] == "text"])
        # "large" prints a parts list's repr in the system turn; only "small" gets parts there
        system = draw(_texts | text_parts) if style == "small" else draw(_texts)
        messages.append({"role": draw(st.sampled_from(["system", "developer"])), "content": system})
    for _ in range(draw(st.integers(0 if messages else 1, 5))):  # the 31B template needs a message
        kind = draw(st.sampled_from(["user", "assistant", "assistant_calls"]))
        if kind == "user":
            messages.append({"role": "user", "content": draw(_texts | _parts)})
            continue
        message = {"role": "assistant"}
        if draw(st.booleans()):
            message["content"] = draw(_texts | _parts)
        if draw(st.booleans()):
            message[draw(st.sampled_from(["reasoning_content", "thinking", "reasoning"]))] = draw(_texts)
        messages.append(message)
        if kind == "assistant_calls":
            ids = draw(st.lists(st.sampled_from(["1", "2", None]), min_size=1, max_size=2))
            message["tool_calls"] = [_call(draw(st.sampled_from(["f", "g"])),
                                           draw(st.dictionaries(_keys, _values, max_size=3)), i) for i in ids]
            if draw(st.booleans()):
                message["tool_responses"] = [{"name": "f", "response": draw(_values)}]
            for call_id in draw(st.lists(st.sampled_from(["1", "2"]), max_size=2)):
                result = {"role": "tool", "tool_call_id": call_id, "content": draw(_texts | _parts)}
                if style == "large" or draw(st.booleans()):  # "large" fails on a result it cannot name
                    result["name"] = "f"
                messages.append(result)
    return messages


@pytest.mark.parametrize("template,style", [(E2B, "small"), (B31, "large")])
@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_builtin_matches_template_on_random_chats(template, style, data):
    messages = data.draw(_conversation(style))
    tools = data.draw(st.none() | st.lists(_tool(), max_size=2))
    kwargs = dict(enable_thinking=data.draw(st.booleans()), add_generation_prompt=data.draw(st.booleans()),
                  preserve_thinking=data.draw(st.booleans()))
    expected = render_template(_template(template), messages, tools=tools, **kwargs)
    assert render_builtin(messages, tools=tools, style=style, **kwargs) == expected
