"""Anthropic's Messages API (POST /v1/messages, /v1/messages/count_tokens) end to end, through the official
`anthropic` client on 127.0.0.1.

The tiny random Gemma 4 with the real tokenizer answers; scripted replies make thoughts and tool calls
deterministic. Covers system prompts, content blocks with images, tool_use/tool_result round trips,
thinking blocks, streaming (raw events and the client's stream accumulator), stop sequences, max_tokens,
`x-api-key` authentication, token counting and errors in Anthropic's shape.
"""

from __future__ import annotations

import anthropic
import pytest

from gemma4_mac.server.routes import ServerOptions
from tests.server_support import MODEL_ID, TOOL_RESPONSE, build_tiny_multimodal_model, png_data_url, serve

CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = {"name": "get_weather", "description": "Current weather in a city", "input_schema": CITY}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    served = serve(build_tiny_multimodal_model(tmp_path_factory.mktemp("tiny-anthropic")))
    yield served
    served.stop()


@pytest.fixture(scope="module")
def client(served):
    return anthropic.Anthropic(base_url=served.root, api_key="unused", max_retries=0, timeout=120)


def ask(client, content, **kwargs):
    kwargs.setdefault("max_tokens", 40)
    return client.messages.create(model=MODEL_ID, messages=[{"role": "user", "content": content}], **kwargs)


def test_text_reply_with_system_prompt_streamed_and_not(served, client):
    served.script("Hello there.")
    message = ask(client, "Say hello", system="Be brief.")
    assert message.type == "message" and message.role == "assistant" and message.model == MODEL_ID
    assert [block.type for block in message.content] == ["text"] and message.content[0].text == "Hello there."
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    prompt_tokens = len(served.observed.prompts[-1])
    assert message.usage.input_tokens + message.usage.cache_read_input_tokens == prompt_tokens
    assert "Be brief." in served.prompt_text()

    served.script("Hello there.")
    events = list(ask(client, "Say hello", system=[{"type": "text", "text": "Be brief."}], stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds.count("content_block_start") == 1 and kinds.count("content_block_stop") == 1
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == "Hello there."
    assert events[-2].delta.stop_reason == "end_turn" and events[-2].usage.output_tokens > 0

    served.script("Streamed by the helper.")
    with client.messages.stream(model=MODEL_ID, max_tokens=40,
                                messages=[{"role": "user", "content": "Go"}]) as stream:
        final = stream.get_final_message()
    assert final.content[0].text == "Streamed by the helper." and final.stop_reason == "end_turn"


def test_tool_use_and_tool_result_round_trip(served, client):
    served.script('Let me check.<|tool_call>call:get_weather{city:<|"|>Oslo<|"|>}<tool_call|>',
                  end=TOOL_RESPONSE)
    first = ask(client, "Weather in Oslo?", tools=[WEATHER])
    assert first.stop_reason == "tool_use"
    text, tool_use = first.content
    assert text.text == "Let me check." and tool_use.type == "tool_use"
    assert tool_use.name == "get_weather" and tool_use.input == {"city": "Oslo"}
    assert tool_use.id.startswith("toolu_")

    served.script("It is 3 degrees in Oslo.")
    messages = [{"role": "user", "content": "Weather in Oslo?"},
                {"role": "assistant", "content": [block.model_dump() for block in first.content]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id,
                                              "content": '{"celsius": 3}'}]}]
    second = client.messages.create(model=MODEL_ID, max_tokens=40, tools=[WEATHER],
                                    messages=messages)
    assert second.content[0].text == "It is 3 degrees in Oslo." and second.stop_reason == "end_turn"
    assert "response:get_weather{celsius:3}" in served.prompt_text()

    served.script('<|tool_call>call:get_weather{city:<|"|>Rome<|"|>}<tool_call|>', end=TOOL_RESPONSE)
    with client.messages.stream(model=MODEL_ID, max_tokens=40, tools=[WEATHER],
                                tool_choice={"type": "any"},
                                messages=[{"role": "user", "content": "Rome?"}]) as stream:
        final = stream.get_final_message()
    (block,) = final.content
    assert block.type == "tool_use" and block.input == {"city": "Rome"} and final.stop_reason == "tool_use"


def test_thinking_blocks_with_a_signature_and_back(served, client):
    served.script("<|channel>thought\nSmall sums.<channel|>Four.")
    message = ask(client, "2+2?", thinking={"type": "enabled", "budget_tokens": 1024}, max_tokens=2048)
    thinking, text = message.content
    assert thinking.type == "thinking" and thinking.thinking == "Small sums." and thinking.signature
    assert text.text == "Four."

    served.script("Still four.")
    again = client.messages.create(model=MODEL_ID, max_tokens=40, messages=[
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": [thinking.model_dump(), text.model_dump()]},
        {"role": "user", "content": "Sure?"}])
    assert again.content[0].text == "Still four."

    served.script("<|channel>thought\nHmm.<channel|>Yes.")
    events = list(ask(client, "Think", thinking={"type": "enabled", "budget_tokens": 1024}, max_tokens=2048,
                      stream=True))
    deltas = [e.delta.type for e in events if e.type == "content_block_delta"]
    assert deltas[0] == "thinking_delta" and "signature_delta" in deltas and deltas[-1] == "text_delta"


def test_images_stop_sequences_and_max_tokens(served, client):
    served.script("A small square.")
    media_type, data = png_data_url().removeprefix("data:").split(";base64,")
    source = {"type": "base64", "media_type": media_type, "data": data}
    message = ask(client, [{"type": "text", "text": "What is it?"}, {"type": "image", "source": source}])
    assert message.content[0].text == "A small square."
    assert served.observed.attachments[-1][0][0] == "image"

    served.script("alpha beta STOP gamma")
    message = ask(client, "Letters", stop_sequences=["STOP"])
    assert message.content[0].text.strip() == "alpha beta"
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "STOP"

    served.script("one two three four five six seven")
    message = ask(client, "Count", max_tokens=3)
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 3


def test_count_tokens_matches_the_prompt_that_is_read(served, client):
    served.script("Ok.")
    message = ask(client, "Count me", system="Be brief.", tools=[WEATHER])
    counted = client.messages.count_tokens(model=MODEL_ID, system="Be brief.", tools=[WEATHER],
                                           messages=[{"role": "user", "content": "Count me"}])
    assert counted.input_tokens == message.usage.input_tokens + message.usage.cache_read_input_tokens


def test_api_key_errors_and_model_listing_in_anthropics_shape(served, client):
    guarded = served.also_serve(ServerOptions(api_key="sesame"))
    root = guarded[: -len("/v1")]
    with pytest.raises(anthropic.AuthenticationError) as caught:
        anthropic.Anthropic(base_url=root, api_key="wrong", max_retries=0).messages.create(
            model=MODEL_ID, max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "authentication_error"
    served.script("Welcome.")
    keyed = anthropic.Anthropic(base_url=root, api_key="sesame", max_retries=0, timeout=60)
    assert keyed.messages.create(model=MODEL_ID, max_tokens=8,
                                 messages=[{"role": "user", "content": "hi"}]).content[0].text == "Welcome."

    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(
            model="claude-sonnet-4-5", max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body["error"]["type"] == "not_found_error" and MODEL_ID in caught.value.message
    with pytest.raises(anthropic.BadRequestError) as caught:
        ask(client, [{"type": "document", "source": {"type": "text", "data": "x"}}])
    assert caught.value.body["error"]["type"] == "invalid_request_error"
    assert "messages.0.content.0" in caught.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError):
        ask(client, "hi", tools=[{"type": "web_search_20250305", "name": "web_search"}])

    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_ID] and models.data[0].type == "model"
