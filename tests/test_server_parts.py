"""The server's parts without a model: the fair model thread, the session pool, message conversion,
reply shapes and grammars, and the `serve` command's refusals."""

from __future__ import annotations

import io
import threading

import pytest

from gemma4_mac.constrained import ReplyShape, build_grammar
from gemma4_mac.server.app import main
from gemma4_mac.worker import ModelSlot, ModelWorker, QueueFullError, WorkerStoppedError
from mlx_model.chat_format.call_grammar import CallRules
from gemma4_mac.server.errors import BadRequest
from gemma4_mac.server.messages import MediaFolder, convert_messages
from gemma4_mac.server.replies import ChatReply
from gemma4_mac.server.chat_spec import reply_shape
from gemma4_mac.server.routes_openai import chat_spec_of
from gemma4_mac.server.schemas import ChatCompletionRequest
from gemma4_mac.server.sessions import SessionPool
from gemma4_mac.generate import GenerationEvent

IDS = {"call_open": 48, "call_close": 49, "string": 52, "thought_open": 100, "thought_close": 101}


# ------------------------------------------------------------------------------------------ the worker

def test_worker_alternates_between_window_and_server():
    worker = ModelWorker()
    gate, order = threading.Event(), []
    try:
        worker.submit("window", lambda slot: gate.wait(10), label="gate").started.wait(10)
        jobs = [worker.submit(source, lambda slot, name=name: order.append(name), label=name)
                for source, name in [("window", "w1"), ("window", "w2"), ("window", "w3"),
                                     ("server", "s1"), ("server", "s2")]]
        gate.set()
        for job in jobs:
            job.wait(10)
        # after a window job the server gets a turn, and back; the leftover window job runs last
        assert order == ["s1", "w1", "s2", "w2", "w3"]
        assert {job.source for job in jobs} == {"window", "server"}
    finally:
        worker.stop()


def test_worker_skips_cancelled_jobs_reports_errors_and_limits_its_queue():
    worker = ModelWorker(queue_limit=2)
    gate = threading.Event()
    try:
        worker.submit("server", lambda slot: gate.wait(10)).started.wait(10)  # running, no longer queued
        dropped = []
        skipped = worker.submit("server", lambda slot: pytest.fail("a cancelled job ran"),
                                on_dropped=lambda: dropped.append("skipped"))
        failing = worker.submit("server", lambda slot: 1 / 0)
        with pytest.raises(QueueFullError):
            worker.submit("server", lambda slot: None)
        assert worker.submit("window", lambda slot: "window has its own queue") is not None
        skipped.cancel.set()
        gate.set()
        skipped.finished.wait(10)
        assert skipped.skipped and not skipped.started.is_set() and dropped == ["skipped"]
        with pytest.raises(ZeroDivisionError):
            failing.wait(10)
        gate.clear()
        worker.submit("window", lambda slot: gate.wait(0.5)).started.wait(10)
        left = worker.submit("server", lambda slot: None, on_dropped=lambda: dropped.append("left at stop"))
    finally:
        worker.stop()
    assert not worker.running
    assert dropped == ["skipped", "left at stop"] and left.skipped
    with pytest.raises(WorkerStoppedError):
        left.wait(1)


def test_worker_runs_every_job_on_its_one_thread_and_loads_the_model_there():
    worker = ModelWorker(name="model-thread-under-test")
    try:
        slot = worker.load(lambda: type("Slot", (), {"model": "m", "processor": None, "info": {}})()).wait(10)
        assert worker.slot is slot
        names = {worker.submit(source, lambda slot: threading.current_thread().name).wait(10)
                 for source in ("window", "server")}
        assert names == {"model-thread-under-test"}
    finally:
        worker.stop()


# ------------------------------------------------------------------------------------- session pool

class FakeSession:
    def __init__(self, model):
        self.tokens: list[int] = []
        self.resets = 0

    def reset(self):
        self.tokens, self.resets = [], self.resets + 1

    def reusable(self, prompt):
        return next((i for i, (a, b) in enumerate(zip(self.tokens, prompt)) if a != b),
                    min(len(self.tokens), len(prompt)))


def test_a_long_job_serves_waiting_jobs_between_its_steps_but_never_another_long_one():
    worker = ModelWorker()
    order, gate = [], threading.Event()

    def long_job(name):
        def run(slot):
            for step in range(3):
                order.append(f"{name} {step}")
                if step == 0:
                    gate.wait(10)  # the others queue up meanwhile
                worker.serve_waiting()
        return run

    try:
        first = worker.submit("window", long_job("convert A"), exclusive=True)
        second = worker.submit("window", long_job("convert B"), exclusive=True)
        quick = [worker.submit(source, lambda slot, s=source: order.append(s)) for source in ("server", "window")]
        gate.set()
        for job in (first, second, *quick):
            job.wait(10)
        # both quick jobs ran inside A's first step; B waited for A to end (no conversion inside another)
        assert order == ["convert A 0", "server", "window", "convert A 1", "convert A 2",
                         "convert B 0", "convert B 1", "convert B 2"]
        assert worker.serve_waiting() == 0  # off the model thread it does nothing
    finally:
        assert worker.stop()


def test_stopping_cancels_the_long_job_and_the_one_it_serves():
    worker = ModelWorker()
    inner_started = threading.Event()

    def inner(slot):
        inner_started.set()
        worker.current.cancel.wait(10)

    def outer(slot):
        while not worker.current.cancel.is_set():
            worker.serve_waiting()
            threading.Event().wait(0.01)
        return "stopped"

    outer_job = worker.submit("window", outer, exclusive=True)
    inner_job = worker.submit("server", inner)
    assert inner_started.wait(10)
    assert worker.stop(timeout=10)
    assert outer_job.wait(1) == "stopped" and inner_job.cancel.is_set() and outer_job.cancel.is_set()


def test_slot_listeners_hear_each_model_change_on_the_model_thread():
    worker = ModelWorker(name="model-thread")
    heard = []
    worker.add_slot_listener(lambda slot: heard.append((slot, threading.current_thread().name)))
    try:
        slot = worker.load(lambda: ModelSlot("model", "processor")).wait(10)
        assert heard == [(None, "model-thread"), (slot, "model-thread")]
    finally:
        worker.stop()


def test_session_pool_picks_the_longest_prefix_and_evicts_the_least_recent():
    pool, model = SessionPool(2, make_session=FakeSession), object()
    a = pool.acquire(model, [1, 2, 3])
    a.tokens = [1, 2, 3, 9]
    b = pool.acquire(model, [7, 8])
    b.tokens = [7, 8, 9]
    assert b is not a
    assert pool.acquire(model, [1, 2, 3, 9, 4, 5]) is a  # the conversation comes back to its cache
    assert pool.acquire(model, [7, 8, 9, 1]) is b
    c = pool.acquire(model, [5, 5])  # no match and the pool is full: the least recent (a) is reused, emptied
    assert c is a and a.resets == 1
    assert pool.acquire(object(), [7, 8, 9]) is not b  # another model: all caches dropped


def test_session_pool_keeps_conversations_with_other_attachments_apart():
    pool, model = SessionPool(2, make_session=FakeSession), object()
    first = pool.acquire(model, [1, 2], ["image-a"])
    first.tokens = [1, 2, 3]
    assert pool.acquire(model, [1, 2, 3, 4], ["image-b"]) is not first  # same tokens, other picture
    assert pool.acquire(model, [1, 2, 3, 4], ["image-a", "image-c"]) is first


# ---------------------------------------------------------------------------------- message conversion

def test_tool_results_fold_into_the_calling_message_with_json_as_fields():
    media = MediaFolder()
    conversation = convert_messages([
        {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
            {"id": "c2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c2", "content": "12:00"},
        {"role": "tool", "tool_call_id": "c1", "content": '{"temp": 3}'},
    ], media, allow_local_files=False)
    system, user, assistant = conversation.messages
    assert system == {"role": "system", "content": "Be brief."}
    assert assistant["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}
    assert assistant["tool_responses"] == [{"name": "get_time", "response": "12:00"},
                                           {"name": "get_weather", "response": {"temp": 3}}]
    assert media.path is None  # nothing was saved


@pytest.mark.parametrize("messages, param", [
    ([{"role": "tool", "content": "x"}], "messages.0.role"),
    ([{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}],
     "messages.0.tool_calls.0.function.arguments"),
    ([{"role": "user", "content": [{"type": "video_url", "video_url": {}}]}], "messages.0.content.0.type"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "/etc/hostname"}}]}],
     "messages.0.content.0.image_url.url"),
    ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "!!", "format": "wav"}}]}],
     "messages.0.content.0.input_audio.data"),
    ([{"role": "user"}], "messages.0.content"),
])
def test_bad_messages_name_the_field(messages, param):
    with pytest.raises(BadRequest) as caught:
        convert_messages(messages, MediaFolder(), allow_local_files=False)
    assert caught.value.param == param and caught.value.status == 400


def test_an_unreadable_tool_call_is_returned_as_text_not_as_an_empty_call():
    reply = ChatReply()
    reply.add(GenerationEvent("thought", "hmm"))
    unreadable = {"name": "f", "arguments": {}, "error": "bad", "raw": "f{("}
    reply.add(GenerationEvent("tool_call", tool_call=unreadable))
    delta = reply.add(GenerationEvent("tool_call", tool_call={"name": "g", "arguments": {"x": 1}}))
    (entry,) = delta["tool_calls"]
    assert entry["index"] == 0 and entry["function"]["arguments"] == '{"x": 1}'
    message = reply.message()
    assert message["content"] == "f{(" and message["reasoning_content"] == "hmm"
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["g"]


# ------------------------------------------------------------------------------ reply shapes, grammars

TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}},
         {"type": "function", "function": {"name": "g"}}]


def _shape(tools=None, **fields):
    messages = [{"role": "user", "content": "x"}]
    request = ChatCompletionRequest.model_validate({"model": "m", "messages": messages,
                                                    **({"tools": tools} if tools else {}), **fields})
    return reply_shape(chat_spec_of(request, 64))


def test_reply_shapes_follow_tool_choice_and_response_format():
    assert _shape() == (None, False, "response_format")
    shape, ban, param = _shape(TOOLS)  # auto: free text, but a call follows its schema
    assert shape.free_text and [n for n, _ in shape.tools] == ["f", "g"]
    assert not ban and param == "tool_choice"
    assert _shape(TOOLS, tool_choice="none") == (None, True, "response_format")
    shape, _, param = _shape(TOOLS, tool_choice="required", parallel_tool_calls=False)
    assert [n for n, _ in shape.tools] == ["f", "g"] and shape.single_call and shape.json_schema is None
    assert param == "tool_choice" and not shape.free_text
    shape, _, _ = _shape(TOOLS, tool_choice={"type": "function", "function": {"name": "g"}})
    assert shape.tools == [("g", None)]
    shape, _, _ = _shape(TOOLS, response_format={"type": "json_object"}, reasoning_effort="low")
    assert shape.tools_or_json and shape.json_schema == {"type": "object"} and shape.allow_thought


def test_grammar_text_for_calls_json_and_thought():
    tools = [("f", {"properties": {"n": {"type": "integer"}}})]
    shape = ReplyShape(json_schema={"type": "object"}, tools=tools, tools_or_json=True, allow_thought=True)
    grammar = build_grammar(shape, IDS)
    assert grammar.startswith("start: thought? body\nbody: json_reply | calls\n")
    assert '"x-guidance": {"whitespace_flexible": false' in grammar
    assert '<[48]> "call:" ("f" "{" obj_' in grammar and "<[49]>" in grammar
    assert '"n" ":" val_' in grammar and "thought: <[100]>" in grammar


def test_call_rules_cover_enums_arrays_nesting_and_unknown_parts():
    rules = CallRules(52, 48, 49)
    rules.calls_rule([("f", {"type": "object", "properties": {
        "mode": {"enum": ["a", "b"]}, "xs": {"type": "array", "items": {"type": "number"}},
        "inner": {"type": "object", "properties": {"ok": {"type": "boolean", "nullable": True}}},
        "free": {"description": "anything"}}})], single=False)
    text = "\n".join(rules.rules)
    assert '<[52]> "a" <[52]> | <[52]> "b" <[52]>' in text
    assert '"true" | "false" | "null"' in text
    assert '"free" ":" gany' in text and "calls: call+" in text


# --------------------------------------------------------------------------------------- the command

def test_serve_refuses_an_open_address_without_a_key_and_a_missing_model(tmp_path):
    err = io.StringIO()
    assert main(["--host", "0.0.0.0", "--model", str(tmp_path)], err=err) == 2
    assert "without an API key" in err.getvalue() and "--api-key" in err.getvalue()
    err = io.StringIO()
    assert main(["--model", str(tmp_path / "missing")], err=err) == 2
    assert "does not exist" in err.getvalue()
    err = io.StringIO()
    assert main(["--host", "0.0.0.0", "--api-key", "k", "--model", str(tmp_path / "missing")], err=err) == 2
    assert "does not exist" in err.getvalue()  # with a key the address is accepted
