"""OpenAI's Responses API (POST /v1/responses) end to end, through the official `openai` client on 127.0.0.1.

The tiny random Gemma 4 with the real tokenizer answers; scripted replies make thoughts and tool calls
deterministic. Covers text, streaming (raw events and the client's own stream accumulator), instructions,
function tools with their call/output round trip over `previous_response_id`, reasoning items, JSON
output, images, max_output_tokens, stored responses and errors in OpenAI's shape.
"""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from gemma4_mac.server.errors import NotFound
from gemma4_mac.server.responses_items import ResponseStore, input_messages
from tests.server_support import MODEL_ID, TOOL_RESPONSE, build_tiny_multimodal_model, png_data_url, serve

WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    served = serve(build_tiny_multimodal_model(tmp_path_factory.mktemp("tiny-responses")))
    yield served
    served.stop()


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served.base_url, api_key="unused", max_retries=0, timeout=120)


def test_text_response_and_its_stream_say_the_same(served, client):
    served.script("Hello from Gemma.")
    response = client.responses.create(model=MODEL_ID, input="Say hello", instructions="Be brief.",
                                       temperature=0)
    assert response.status == "completed" and response.object == "response"
    assert response.output_text == "Hello from Gemma."
    (message,) = response.output
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "output_text"
    assert response.usage.input_tokens == len(served.observed.prompts[-1])
    assert response.usage.output_tokens > 0
    prompt = served.prompt_text()
    assert "Be brief." in prompt and prompt.index("Be brief.") < prompt.index("Say hello")

    served.script("Hello from Gemma.")
    events = list(client.responses.create(model=MODEL_ID, input="Say hello", stream=True, temperature=0))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    for expected in ("response.output_item.added", "response.content_part.added",
                     "response.output_text.delta", "response.output_text.done", "response.content_part.done",
                     "response.output_item.done"):
        assert expected in kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Hello from Gemma."
    assert events[-1].response.output_text == "Hello from Gemma."

    served.script("Hello again.")  # the client's own accumulator follows the events to the end
    with client.responses.stream(model=MODEL_ID, input="Say hello", temperature=0) as stream:
        final = stream.get_final_response()
    assert final.output_text == "Hello again."


def test_function_call_round_trip_through_previous_response_id(served, client):
    served.script('<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>', end=TOOL_RESPONSE)
    first = client.responses.create(model=MODEL_ID, input="Weather in Paris?", tools=[WEATHER], temperature=0)
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    assert call.call_id.startswith("call_") and first.status == "completed"

    served.script("It is 21 degrees.")
    second = client.responses.create(
        model=MODEL_ID, previous_response_id=first.id, tools=[WEATHER], temperature=0,
        input=[{"type": "function_call_output", "call_id": call.call_id,
                "output": json.dumps({"celsius": 21})}])
    assert second.output_text == "It is 21 degrees." and second.previous_response_id == first.id
    prompt = served.prompt_text()
    assert "Weather in Paris?" in prompt and "response:get_weather{celsius:21}" in prompt

    served.script('<|tool_call>call:get_weather{city:<|"|>Rome<|"|>}<tool_call|>', end=TOOL_RESPONSE)
    events = list(client.responses.create(model=MODEL_ID, input="And Rome?", tools=[WEATHER], stream=True,
                                          previous_response_id=second.id, temperature=0))
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(done) == 1 and done[0].name == "get_weather"
    assert json.loads(done[0].arguments) == {"city": "Rome"}
    assert "It is 21 degrees." in served.prompt_text()  # the whole chain was read back


def test_reasoning_items_json_output_and_images(served, client):
    served.script("<|channel>thought\nThink first.<channel|>Done.")
    response = client.responses.create(model=MODEL_ID, input="Think", reasoning={"effort": "high"},
                                       temperature=0)
    reasoning, message = response.output
    assert reasoning.type == "reasoning" and reasoning.content[0].text == "Think first."
    assert response.output_text == "Done."

    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 9}},
              "required": ["n"], "additionalProperties": False}
    response = client.responses.create(model=MODEL_ID, input="A number as JSON", max_output_tokens=60,
                                       temperature=0, text={"format": {"type": "json_schema", "name": "n",
                                                                       "schema": schema}})
    jsonschema.validate(json.loads(response.output_text), schema)

    served.script("A tiny picture.")
    parts = [{"type": "input_text", "text": "What is this?"},
             {"type": "input_image", "image_url": png_data_url()}]
    response = client.responses.create(model=MODEL_ID, temperature=0,
                                       input=[{"role": "user", "content": parts}])
    assert response.output_text == "A tiny picture."
    assert served.observed.attachments[-1][0][0] == "image"


def test_max_output_tokens_makes_the_response_incomplete(served, client):
    served.script("one two three four five six seven eight nine ten")
    response = client.responses.create(model=MODEL_ID, input="Count", max_output_tokens=3, temperature=0)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 3


def test_stored_responses_can_be_read_and_deleted_and_errors_have_openai_shape(served, client):
    served.script("Kept.")
    response = client.responses.create(model=MODEL_ID, input="Keep this", temperature=0)
    assert client.responses.retrieve(response.id).output_text == "Kept."
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model=MODEL_ID, input="hi", previous_response_id="resp_missing")
    assert caught.value.body["param"] == "previous_response_id"

    served.script("Not kept.")
    unstored = client.responses.create(model=MODEL_ID, input="Forget this", store=False, temperature=0)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)

    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="gpt-5", input="hi")
    assert caught.value.body["code"] == "model_not_found" and MODEL_ID in caught.value.body["message"]
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=MODEL_ID, input="hi", tools=[{"type": "web_search"}])
    assert caught.value.body["param"] == "tools.0.type"
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=MODEL_ID, input=[{"type": "computer_call", "id": "x"}])
    assert caught.value.body["param"] == "input.0.type"


def test_input_items_become_chat_messages():
    messages = input_messages([
        {"role": "developer", "content": "Rules."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        {"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "ponder"}]},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "Let me look."}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{\"a\": 1}"},
        {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "one"},
    ], "Top.")
    assert [m["role"] for m in messages] == ["system", "system", "user", "assistant", "tool"]
    assistant = messages[3]
    assert assistant["content"] == "Let me look." and assistant["reasoning_content"] == "ponder"
    assert [c["id"] for c in assistant["tool_calls"]] == ["c1", "c2"]
    assert messages[4] == {"role": "tool", "tool_call_id": "c1", "content": "one"}


def test_the_store_drops_the_oldest_by_count_and_by_size():
    store = ResponseStore(max_items=2, max_bytes=10_000)
    for name in ("a", "b", "c"):
        assert store.put({"id": name, "output": []}, [{"type": "message", "role": "user", "content": name}])
    with pytest.raises(NotFound):
        store.get("a")
    assert store.get("c")[1][0]["content"] == "c"
    assert not store.put({"id": "big", "output": []}, [{"content": "x" * 20_000}])  # larger than the store
    store.put({"id": "d", "output": []}, [{"content": "y" * 6_000}])
    store.put({"id": "e", "output": []}, [{"content": "z" * 6_000}])  # together past 10 KB: d goes
    with pytest.raises(NotFound):
        store.get("d")
    assert store.get("e")
