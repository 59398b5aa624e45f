"""The OpenAI-compatible server end to end, through the official `openai` client on 127.0.0.1.

One tiny random Gemma 4 with the real tokenizer serves every test. Its wrapper can force a reply
token by token (ScriptBook), which makes thoughts, tool calls and concurrent streams deterministic;
without a script the random model speaks for itself (greedy), which is what constrained decoding
has to tame.
"""

from __future__ import annotations

import base64
import collections
import io
import json
import threading
import time
import wave
from pathlib import Path

import jsonschema
import numpy as np
import openai
import pytest

from gemma4_mac.server.routes import ServerOptions
from tests.server_support import (END_OF_TURN, MODEL_ID, TOOL_RESPONSE, build_tiny_multimodal_model,
                                  png_data_url, serve)
from tests.server_support import raw_request as raw_http

IMAGE_TOKEN, AUDIO_TOKEN = 258_880, 258_881
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME_TOOL = {"type": "function", "function": {
    "name": "get_time", "description": "Local time in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


class Harness:
    """The served tiny model, an `openai` client for it, a guarded server (API key "sesame", a 4 KB body
    limit) and one with no model loaded."""

    def __init__(self, served, guarded_url: str, empty_url: str):
        self.served, self.guarded_url, self.empty_url = served, guarded_url, empty_url
        self.client = openai.OpenAI(base_url=served.base_url, api_key="unused", max_retries=0, timeout=120)
        self.base_url, self.book, self.tokenizer = served.base_url, served.book, served.tokenizer
        self.service, self.observed = served.service, served.observed

    def script(self, text: str, end: int = END_OF_TURN) -> None:
        self.served.script(text, end)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from gemma4_mac.server.app import ServerHandle, create_app
    from gemma4_mac.server.service import GenerationService
    from gemma4_mac.worker import ModelWorker

    served = serve(build_tiny_multimodal_model(tmp_path_factory.mktemp("tiny-chat")),
                   ServerOptions(allow_local_files=True))
    guarded = served.also_serve(ServerOptions(api_key="sesame", max_body_bytes=4096))
    empty_worker = ModelWorker()
    empty = ServerHandle(create_app(GenerationService(empty_worker)), "127.0.0.1", 0).start()
    yield Harness(served, guarded, empty.base_url)
    empty.stop()
    empty_worker.stop()
    served.stop()


def ask(harness: Harness, content, **kwargs):
    kwargs.setdefault("max_tokens", 8)
    kwargs.setdefault("temperature", 0.0)
    messages = [{"role": "user", "content": content}]
    return harness.client.chat.completions.create(model=MODEL_ID, messages=messages, **kwargs)


def raw_request(base_url: str, method: str, path: str, body: bytes = b"",
                headers: dict | None = None) -> tuple[int, dict]:
    """A request without the openai client (for bodies it would never send); (status, JSON body)."""
    status, parsed, _ = raw_http(base_url, method, path, body, headers)
    return status, parsed


def wav_base64(seconds: float = 0.25, rate: int = 16000) -> str:
    samples = (0.3 * np.sin(np.linspace(0, 2 * np.pi * 440 * seconds, int(rate * seconds))) * 32767)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.astype(np.int16).tobytes())
    return base64.b64encode(buffer.getvalue()).decode()


# ------------------------------------------------------------------------------------------------ chat

def test_models_lists_the_loaded_model(server):
    assert [m.id for m in server.client.models.list().data] == [MODEL_ID]
    assert server.client.models.retrieve(MODEL_ID).owned_by == "gemma4-mac"


def test_chat_reply_with_usage_and_streaming_gives_the_same_text(server):
    reply = ask(server, "Hello there", max_tokens=6)
    choice = reply.choices[0]
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.finish_reason in ("length", "stop")
    assert reply.usage.prompt_tokens == len(server.observed.prompts[-1])
    assert 0 < reply.usage.completion_tokens <= 6
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

    chunks = list(ask(server, "Hello there", max_tokens=6, stream=True,
                      stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content  # greedy: the same reply, streamed
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    assert len({c.id for c in chunks}) == 1


def test_thoughts_come_back_as_reasoning_content_never_as_content(server):
    server.script("<|channel>thought\nTwo plus two.<channel|>The answer is 4.")
    reply = ask(server, "What is 2+2?", max_tokens=40, reasoning_effort="high")
    message = reply.choices[0].message
    assert message.content == "The answer is 4."
    assert message.model_extra["reasoning_content"] == "Two plus two."
    assert reply.choices[0].finish_reason == "stop"

    server.script("<|channel>thought\nTwo plus two.<channel|>The answer is 4.")
    chunks = list(ask(server, "What is 2+2?", max_tokens=40, stream=True,
                      extra_body={"chat_template_kwargs": {"enable_thinking": True}}))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.content or "" for d in deltas) == "The answer is 4."
    assert "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas) == "Two plus two."


def test_tool_call_round_trip_reuses_the_conversation_cache(server):
    server.script('<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>', end=TOOL_RESPONSE)
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = server.client.chat.completions.create(model=MODEL_ID, messages=messages, tools=[WEATHER_TOOL],
                                                  max_tokens=40, temperature=0)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    prompt = server.tokenizer.decode(server.observed.prompts[-1])
    assert "declaration:get_weather" in prompt  # the tool was declared in Gemma's format

    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 21})}]
    server.script("It is 21 degrees in Paris.")
    second = server.client.chat.completions.create(model=MODEL_ID, messages=messages, tools=[WEATHER_TOOL],
                                                   max_tokens=40, temperature=0)
    assert second.choices[0].message.content == "It is 21 degrees in Paris."
    assert second.choices[0].finish_reason == "stop"
    prompt = server.tokenizer.decode(server.observed.prompts[-1])
    assert "response:get_weather{temperature_c:21}" in prompt
    # the resent conversation reuses the first turn's cache: only the new tokens are computed
    assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens - 8


def test_streamed_tool_call_arrives_as_one_delta_with_an_id(server):
    server.script('Checking.<|tool_call>call:get_time{city:<|"|>Oslo<|"|>}<tool_call|>', end=TOOL_RESPONSE)
    chunks = list(ask(server, "Time in Oslo?", tools=[WEATHER_TOOL, TIME_TOOL], max_tokens=40, stream=True))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].index == 0 and calls[0].id.startswith("call_")
    assert calls[0].function.name == "get_time"
    assert json.loads(calls[0].function.arguments) == {"city": "Oslo"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Checking."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_named_tool_choice_forces_that_call_while_sampling(server):
    # the script wants free text and the other tool; the grammar only lets the named call through
    server.script('Sure<|tool_call>call:get_weather{city:<|"|>Rome<|"|>}<tool_call|>', end=TOOL_RESPONSE)
    reply = ask(server, "Weather?", tools=[WEATHER_TOOL, TIME_TOOL], max_tokens=60,
                tool_choice={"type": "function", "function": {"name": "get_time"}})
    calls = reply.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "get_time"
    assert reply.choices[0].finish_reason == "tool_calls"


def test_tool_choice_none_never_calls(server):
    server.script('<|tool_call>call:get_weather{city:<|"|>Rome<|"|>}<tool_call|>', end=TOOL_RESPONSE)
    reply = ask(server, "Weather?", tools=[WEATHER_TOOL], tool_choice="none", max_tokens=12)
    # the script's first token is the call opener; banned, so no call can start
    assert reply.choices[0].message.tool_calls is None
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_json_schema_is_enforced_while_sampling(server):
    schema = {"type": "object", "additionalProperties": False, "required": ["name", "age", "member", "tier"],
              "properties": {"name": {"type": "string", "maxLength": 8},
                             "age": {"type": "integer", "minimum": 0, "maximum": 120},
                             "member": {"type": "boolean"}, "tier": {"enum": ["gold", "silver"]}}}
    # the random model on its own writes no JSON at all; masking makes it write a valid object
    reply = ask(server, "Describe a person as JSON.", max_tokens=80,
                response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}})
    assert reply.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(reply.choices[0].message.content), schema)

    # with thinking on, a thought may come first; the JSON after it is still held to the schema
    ada = {"name": "Ada", "age": 36, "member": True, "tier": "gold"}
    server.script("<|channel>thought\nA member.<channel|>" + json.dumps(ada))
    reply = ask(server, "Describe Ada.", max_tokens=80, reasoning_effort="medium",
                response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}})
    assert reply.choices[0].message.model_extra["reasoning_content"] == "A member."
    assert json.loads(reply.choices[0].message.content) == ada

    chunks = list(ask(server, "Any JSON object.", max_tokens=60, stream=True,
                      response_format={"type": "json_object"}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    if chunks[-1].choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:
        assert text.startswith("{")  # cut by max_tokens: still JSON as far as it went


def test_image_and_audio_parts_reach_the_prompt_as_temporary_files(server, tmp_path):
    data_url = png_data_url()
    image_file = tmp_path / "picture.png"
    image_file.write_bytes(base64.b64decode(data_url.split(",", 1)[1]))
    content = [{"type": "text", "text": "What is in these?"},
               {"type": "image_url", "image_url": {"url": data_url}},
               {"type": "image_url", "image_url": {"url": str(image_file)}},
               {"type": "input_audio", "input_audio": {"data": wav_base64(), "format": "wav"}}]
    server.script("A small picture and a tone.")
    reply = ask(server, content, max_tokens=20)
    assert reply.choices[0].message.content == "A small picture and a tone."
    prompt = server.observed.prompts[-1]
    begin_image, begin_audio = (server.tokenizer.encode(marker, add_special_tokens=False)[0]
                                for marker in ("<|image>", "<|audio>"))
    assert prompt.count(begin_image) == 2 and prompt.count(begin_audio) == 1  # each expanded by the processor
    assert prompt.count(IMAGE_TOKEN) > 2 and prompt.count(AUDIO_TOKEN) > 1
    parts = server.observed.attachments[-1]
    assert [kind for kind, _, _ in parts] == ["image", "image", "audio"]
    assert all(existed for _, _, existed in parts)
    assert parts[1][1] == str(image_file)  # a local path is used as is
    assert not Path(parts[0][1]).exists() and not Path(parts[2][1]).exists()  # decoded copies are removed
    assert image_file.exists()


def test_two_concurrent_clients_get_their_own_streams(server):
    # unscripted (the script book forces one reply for the whole batch): each stream is its own greedy
    # reply, the one it gets alone, never a mix (tests/test_server_batching.py holds them in one batch)
    questions = {"alpha": "Alpha, tell me something", "beta": "Beta?"}
    alone = {name: ask(server, text, max_tokens=16).choices[0].message.content
             for name, text in questions.items()}
    results: dict[str, str] = {}

    def talk(name: str) -> None:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)
        chunks = client.chat.completions.create(model=MODEL_ID, max_tokens=16, temperature=0, stream=True,
                                                messages=[{"role": "user", "content": questions[name]}])
        results[name] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    threads = [threading.Thread(target=talk, args=(name,)) for name in questions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert results == alone


def _wait_for_finished(server, count: int) -> None:
    deadline = time.monotonic() + 30
    while len(server.service.finished) < count and time.monotonic() < deadline:
        time.sleep(0.05)


def test_client_disconnect_cancels_its_generation(server):
    never_ends = [server.tokenizer.encode(" la", add_special_tokens=False)[0]]
    server.book.scripts.append(never_ends)
    finished_before = len(server.service.finished)
    stream = ask(server, "Sing forever", max_tokens=16000, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    stream.close()
    _wait_for_finished(server, finished_before + 1)
    stats = server.service.finished[-1]
    assert stats.finish_reason == "cancelled" and stats.generation_tokens < 16000

    server.book.scripts.append(never_ends)  # a client that stops waiting for a whole (non-streamed) answer
    impatient = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=1.5)
    with pytest.raises(openai.APITimeoutError):
        impatient.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "Sing"}],
                                          max_tokens=16000)
    _wait_for_finished(server, finished_before + 2)
    stats = server.service.finished[-1]
    assert stats.finish_reason == "cancelled" and stats.generation_tokens < 16000
    assert ask(server, "Still there?", max_tokens=2).choices[0].message.content is not None


def test_text_completions(server):
    reply = server.client.completions.create(model=MODEL_ID, prompt="Once upon a time", max_tokens=5,
                                             temperature=0)
    assert reply.object == "text_completion" and reply.choices[0].text
    assert reply.usage.completion_tokens <= 5
    streamed = server.client.completions.create(model=MODEL_ID, prompt="Once upon a time", max_tokens=5,
                                                temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == reply.choices[0].text


# ------------------------------------------------------------------------------------------- errors

def test_bad_requests_get_openai_errors_with_the_right_status(server):
    cases = [
        (dict(messages=[]), openai.BadRequestError, "messages"),
        (dict(temperature=5.0), openai.BadRequestError, "temperature"),
        (dict(n=9), openai.BadRequestError, "n"),
        (dict(tool_choice="required"), openai.BadRequestError, "tool_choice"),
        (dict(tools=[WEATHER_TOOL], tool_choice={"type": "function", "function": {"name": "nope"}}),
         openai.BadRequestError, "tool_choice"),
        (dict(response_format={"type": "json_schema",
                               "json_schema": {"name": "x", "schema": {"type": "strin"}}}),
         openai.BadRequestError, "response_format.json_schema.schema"),
        (dict(messages=[{"role": "user", "content": [{"type": "image_url",
                                                      "image_url": {"url": "https://example.com/a.png"}}]}]),
         openai.BadRequestError, "messages.0.content.0.image_url.url"),
        (dict(messages=[{"role": "user", "content": [{"type": "image_url",
                                                      "image_url": {"url": "data:image/png;base64,AAAA"}}]}]),
         openai.BadRequestError, "messages.0.content.0.image_url.url"),
        (dict(messages=[{"role": "wizard", "content": "hi"}]), openai.BadRequestError, "messages.0.role"),
        (dict(model="gpt-4o"), openai.NotFoundError, "model"),
    ]
    for overrides, error_class, param in cases:
        request = dict(model=MODEL_ID, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        request.update(overrides)
        with pytest.raises(error_class) as caught:
            server.client.chat.completions.create(**request)
        body = caught.value.body
        assert body["param"] == param, (overrides, body)
        assert body["message"] and body["type"] in ("invalid_request_error",), body
    # the long-context check: a prompt that cannot fit
    with pytest.raises(openai.BadRequestError) as caught:
        ask(server, "word " * 17000, max_tokens=2)
    assert caught.value.body["code"] == "context_length_exceeded"


def test_raw_http_errors(server):
    status, body = raw_request(server.base_url, "POST", "/chat/completions", b"{not json")
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    status, body = raw_request(server.base_url, "POST", "/nowhere", b"{}")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = raw_request(server.base_url, "GET", "/chat/completions")
    assert status == 405 and "error" in body

    request = json.dumps({"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}]}).encode()
    status, body = raw_request(server.guarded_url, "POST", "/chat/completions", request)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    status, body = raw_request(server.guarded_url, "POST", "/chat/completions", request,
                               {"Authorization": "Bearer wrong"})
    assert status == 401
    big = json.dumps({"model": MODEL_ID, "messages": [{"role": "user", "content": "x" * 10_000}]}).encode()
    status, body = raw_request(server.guarded_url, "POST", "/chat/completions", big,
                               {"Authorization": "Bearer sesame"})
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    guarded = openai.OpenAI(base_url=server.guarded_url, api_key="sesame", max_retries=0)
    assert guarded.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=2).choices[0].message.content is not None

    empty = openai.OpenAI(base_url=server.empty_url, api_key="unused", max_retries=0)
    assert empty.models.list().data == []
    with pytest.raises(openai.InternalServerError) as caught:
        empty.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 503 and caught.value.body["code"] == "model_not_loaded"


# ------------------------------------------------------------------- choices, logprobs and penalties

def test_n_choices_each_with_its_own_finish_and_the_usage_of_all(server):
    reply = ask(server, "Hello", n=2, max_tokens=5, temperature=1.0, seed=7)
    assert [c.index for c in reply.choices] == [0, 1]
    assert all(c.finish_reason in ("length", "stop") for c in reply.choices)
    stats = list(server.service.finished)[-2:]
    assert reply.usage.completion_tokens == sum(s.generation_tokens for s in stats)
    assert reply.usage.prompt_tokens == stats[0].prompt_tokens

    streamed = ask(server, "Hello", n=2, max_tokens=5, temperature=1.0, seed=7, stream=True)
    chunks = [c for c in streamed if c.choices]
    for index in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices[0].index == index]
        assert mine[0].delta.role == "assistant" and mine[-1].finish_reason in ("length", "stop")
        assert "".join(c.delta.content or "" for c in mine) == reply.choices[index].message.content


def test_logprobs_of_each_token_with_the_likeliest_alternatives(server):
    reply = ask(server, "Hello there", max_tokens=6, logprobs=True, top_logprobs=3)  # greedy
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    for entry in content:
        alternatives = [t.logprob for t in entry.top_logprobs]
        assert len(alternatives) == 3 and alternatives == sorted(alternatives, reverse=True)
        assert entry.top_logprobs[0].token == entry.token and entry.logprob == pytest.approx(alternatives[0])
        assert entry.logprob <= 0
    text = b"".join(bytes(e.bytes) for e in content).decode("utf-8", "replace")
    assert text == reply.choices[0].message.content

    chunks = [c for c in ask(server, "Hello there", max_tokens=6, logprobs=True, top_logprobs=3, stream=True)
              if c.choices and c.choices[0].logprobs]
    streamed = [e.token for c in chunks for e in c.choices[0].logprobs.content]
    assert streamed == [e.token for e in content]

    text = server.client.completions.create(model=MODEL_ID, prompt="Once upon a time", max_tokens=5,
                                            temperature=0, logprobs=2)
    legacy = text.choices[0].logprobs
    assert len(legacy.tokens) == len(legacy.token_logprobs) == text.usage.completion_tokens
    assert all(len(top) <= 2 for top in legacy.top_logprobs) and legacy.text_offset[0] == 0


def test_frequency_and_presence_penalties_change_the_reply(server):
    plain = ask(server, "Say something", max_tokens=24, logprobs=True)
    penalized = ask(server, "Say something", max_tokens=24, logprobs=True, frequency_penalty=2.0,
                    presence_penalty=2.0)

    def most_repeated(reply) -> int:
        return max(collections.Counter(e.token for e in reply.choices[0].logprobs.content).values())

    assert plain.choices[0].message.content != penalized.choices[0].message.content
    assert most_repeated(penalized) <= most_repeated(plain)


def test_the_penalties_count_generated_tokens_only():
    import mlx.core as mx

    from gemma4_mac.server.processors import PenaltyProcessor

    penalty = PenaltyProcessor(frequency=0.5, presence=1.0)
    logits = mx.zeros((1, 12))
    penalty(mx.array([5, 5]), logits)  # the prompt: nothing counted
    out = penalty(mx.array([5, 5, 7, 7, 9]), logits).tolist()[0]
    assert out[5] == 0.0 and out[7] == pytest.approx(-2.0) and out[9] == pytest.approx(-1.5)
