"""Tool arguments that are exactly right: every call the server returns validates against its tool's JSON
schema (`jsonschema`), whatever the model wanted to write, and a call cut off by max_tokens is no call.

The property test draws 200 tool schemas (required keys, enums, bounds, nested objects, arrays, anyOf)
and lets the tiny random Gemma 4 sample calls under each (seeded, temperature 1). Its logits get a bias
towards closing strings, objects and arrays, so that calls end within max_tokens often; what it writes
inside them is its own, and constrained decoding has to hold it to the schema.
"""

from __future__ import annotations

import collections
import json

import jsonschema
import mlx.core as mx
import numpy as np
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.server_support import MODEL_ID, TOOL_RESPONSE, build_tiny_multimodal_model, serve

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                          "required": ["city"]}}}
CLOSERS = ('<|"|>', "}", "]", "<tool_call|>", "<eos>")
KEYS = st.sampled_from(["a", "b", "city", "count", "mode", "tags", "x_1", "deep", "when", "flag"])


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    served = serve(build_tiny_multimodal_model(tmp_path_factory.mktemp("tiny-tools")))
    yield served
    served.stop()


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served.base_url, api_key="unused", max_retries=0, timeout=120)


def leaves() -> st.SearchStrategy:
    return st.one_of(
        st.just({"type": "string"}),
        st.builds(lambda low, extra: {"type": "string", "minLength": low, "maxLength": low + extra},
                  st.integers(0, 3), st.integers(0, 5)),
        st.lists(st.text(alphabet="abcxyz -", min_size=1, max_size=6), min_size=1, max_size=4, unique=True)
        .map(lambda values: {"enum": values}),
        st.lists(st.one_of(st.integers(-3, 3), st.booleans(), st.none(), st.sampled_from(["on", "off"])),
                 min_size=1, max_size=4, unique_by=json.dumps).map(lambda values: {"enum": values}),
        st.builds(lambda low, span: {"type": "integer", "minimum": low, "maximum": low + span},
                  st.integers(-50, 50), st.integers(0, 100)),
        st.just({"type": "integer"}), st.just({"type": "number"}),
        st.builds(lambda low: {"type": "number", "minimum": low, "exclusiveMaximum": low + 10},
                  st.integers(-5, 5)),
        st.just({"type": "boolean"}), st.just({"type": "null"}), st.just({"type": ["string", "null"]}),
    )


def objects(children: st.SearchStrategy) -> st.SearchStrategy:
    def with_required(properties: dict) -> st.SearchStrategy:
        def build(required: list, closed: bool) -> dict:
            schema = {"type": "object", "properties": properties, "required": required}
            return {**schema, "additionalProperties": False} if closed else schema

        return st.builds(build, st.lists(st.sampled_from(sorted(properties)), unique=True), st.booleans())

    return st.dictionaries(KEYS, children, min_size=1, max_size=4).flatmap(with_required)


def extend(children: st.SearchStrategy) -> st.SearchStrategy:
    arrays = st.builds(lambda item, low, extra: {"type": "array", "items": item, "minItems": low,
                                                 "maxItems": low + extra},
                       children, st.integers(0, 2), st.integers(0, 3))
    alternatives = st.lists(children, min_size=2, max_size=3).map(lambda choices: {"anyOf": choices})
    return st.one_of(arrays, objects(children), alternatives)


TOOL_SCHEMAS = objects(st.recursive(leaves(), extend, max_leaves=6))


@pytest.mark.slow  # 200 generations (about a minute on two idle cores)
def test_every_call_the_server_returns_fits_its_schema(served, client):
    tokenizer = served.tokenizer.tokenizer
    bias = np.zeros(262_144, dtype=np.float32)
    bias[[tokenizer.token_id(text) for text in CLOSERS]] = 14.0
    bias[tokenizer.token_id(",")] = 13.0
    served.book.bias = mx.array(bias)  # made here whole: the model thread only reads it
    outcomes: collections.Counter = collections.Counter()

    @settings(max_examples=200, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(schema=TOOL_SCHEMAS, seed=st.integers(0, 2 ** 16),
           choice=st.sampled_from(["required", "named", "auto"]))
    def check(schema, seed, choice):
        tool = {"type": "function", "function": {"name": "act", "parameters": schema}}
        tool_choice = {"type": "function", "function": {"name": "act"}} if choice == "named" else choice
        reply = client.chat.completions.create(
            model=MODEL_ID, messages=[{"role": "user", "content": "Use the tool."}], tools=[tool, WEATHER],
            tool_choice=tool_choice, temperature=1.0, top_p=1.0, extra_body={"top_k": 0}, seed=seed,
            max_tokens=160)  # no top-p sort or top-k cut over the 262K logits: twice the tokens a second
        result = reply.choices[0]
        for call in result.message.tool_calls or []:
            arguments = json.loads(call.function.arguments)
            jsonschema.validate(arguments, schema if call.function.name == "act" else
                                WEATHER["function"]["parameters"])
            if choice == "named":
                assert call.function.name == "act"
        if result.message.tool_calls:
            outcomes["call"] += 1
            assert result.finish_reason == "tool_calls"
        else:
            outcomes[result.finish_reason] += 1
            assert choice == "auto" or result.finish_reason == "length"  # forced: a call, or cut off

    try:
        check()
    finally:
        served.book.bias = None
    assert sum(outcomes.values()) == 200
    assert outcomes["call"] >= 120, outcomes  # most calls end well within max_tokens


def test_a_call_cut_off_by_max_tokens_is_text_with_finish_reason_length(served, client):
    for stream in (False, True):
        served.script('<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>', end=TOOL_RESPONSE)
        request = dict(model=MODEL_ID, messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER],
                       tool_choice="required", max_tokens=4, temperature=0)
        if stream:
            chunks = [c for c in client.chat.completions.create(stream=True, **request) if c.choices]
            assert not any(c.choices[0].delta.tool_calls for c in chunks)
            content = "".join(c.choices[0].delta.content or "" for c in chunks)
            finish = chunks[-1].choices[0].finish_reason
        else:
            reply = client.chat.completions.create(**request)
            assert reply.choices[0].message.tool_calls is None
            content, finish = reply.choices[0].message.content, reply.choices[0].finish_reason
        assert finish == "length" and content.startswith("<|tool_call>call:get")


def test_with_tool_choice_auto_a_call_still_follows_its_schema(served, client):
    # the model is pushed to open a call and close its braces at once: unconstrained, it writes
    # get_weather{} (no city); the grammar makes it write the required key first
    bias = np.zeros(262_144, dtype=np.float32)
    tokenizer = served.tokenizer.tokenizer
    bias[[tokenizer.token_id(text) for text in ('<|"|>', "}", "<tool_call|>", "<eos>")]] = 20.0
    bias[tokenizer.token_id("<|tool_call>")] = 25.0
    served.book.bias = mx.array(bias)
    try:
        reply = client.chat.completions.create(
            model=MODEL_ID, messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER],
            parallel_tool_calls=False, max_tokens=40, temperature=0)
    finally:
        served.book.bias = None
    (call,) = reply.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": ""}
    assert reply.choices[0].finish_reason == "tool_calls"

    served.script("Just words, no call.")  # free text stays free
    reply = client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "Hi"}],
                                           tools=[WEATHER], max_tokens=40, temperature=0)
    assert reply.choices[0].message.content == "Just words, no call."
    assert reply.choices[0].finish_reason == "stop"
