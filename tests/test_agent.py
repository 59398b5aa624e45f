"""The agent loop with a real MCP server over stdio: a scripted model's call (Gemma 4's own call syntax, held to
the tool's schema by constrained decoding) runs, its result is read by the model on the next turn, approval
holds a write until the person answers, failures and crashes are told to the model, the step limit ends a run,
images go back as images for a model that sees, and the built-in tools read only what the person named."""

from __future__ import annotations

import io
import sys
import threading
import time
from pathlib import Path

import pytest

from gemma4_mac.agent import AgentRun, StepResult, replay_messages
from gemma4_mac.builtin_tools import builtin_tools, named_paths, run_builtin
from gemma4_mac.cli_tools import ask_with_tools
from gemma4_mac.engine import GenerationRequest, MlxBackend
from gemma4_mac.history import Message, model_messages
from gemma4_mac.mcp_config import parse_servers
from gemma4_mac.toolbox import ToolRegistry
from gemma4_mac.worker import ModelSlot
from tests.tiny_chat_model import TurnScriptedModel

ROOT = Path(__file__).resolve().parent.parent


def notes_registry(folder: Path, approval: str = "always", **kwargs) -> ToolRegistry:
    servers, _ = parse_servers({"mcpServers": {"notes": {
        "command": sys.executable, "args": ["-m", "tests.mcp_servers.notes", str(folder)],
        "env": {"PYTHONPATH": str(ROOT)}, "timeout": 3}}})
    return ToolRegistry(servers, approval={"notes": approval}, **kwargs)


@pytest.fixture(scope="module")
def tiny_chat(tiny_chat_model_dir):
    from mlx_model import load

    return load(tiny_chat_model_dir)


@pytest.fixture(scope="module")
def notes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("agent-notes")
    registry = notes_registry(folder)
    yield folder, registry
    registry.close()


class ScriptedSteps:
    """Model turns that follow a script: each is (answer, [calls]); records the conversation of each turn."""

    def __init__(self, turns: list[tuple[str, list[dict]]]):
        self.turns, self.seen, self.allowed = list(turns), [], []

    def __call__(self, messages: list[dict], allow_calls: bool) -> StepResult:
        self.seen.append([dict(m) for m in messages])
        self.allowed.append(allow_calls)
        answer, calls = self.turns.pop(0) if self.turns else ("Done.", [])
        return StepResult(answer=answer, calls=calls if allow_calls else [],
                          stats={"generation_tokens": 5, "finish_reason": "tool_calls" if calls else "stop"})


def run_agent(registry, steps, *, approve=lambda record: True, person=("",), **kwargs):
    toolbox, problems = registry.toolbox()
    reports = []
    run = AgentRun(toolbox, step=steps, approve=approve, report=lambda kind, r: reports.append((kind, r)),
                   person_texts=list(person), **kwargs)
    return run.run([{"role": "user", "content": person[0]}]), reports


def test_a_write_waits_for_approval_runs_and_its_result_reaches_the_next_turn(notes):
    folder, registry = notes
    steps = ScriptedSteps([("Let me save it.", [{"name": "write_note",
                                                 "arguments": {"title": "march", "text": "120 EUR"}}]),
                           ("Saved.", [])])
    asked, answer = threading.Event(), threading.Event()

    def approve(record):
        assert record.status == "waiting" and record.arguments == {"title": "march", "text": "120 EUR"}
        asked.set()
        answer.wait(10)
        return True

    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(outcome=run_agent(registry, steps, approve=approve)))
    worker.start()
    assert asked.wait(20)
    time.sleep(0.3)
    assert not (folder / "march.txt").exists()  # nothing is written while the person decides
    answer.set()
    worker.join(20)
    outcome, reports = result["outcome"]
    assert (folder / "march.txt").read_text() == "120 EUR"
    (record,) = outcome.records
    assert record.status == "done" and record.result == "saved march" and record.seconds is not None
    assert [(kind, r["status"]) for kind, r in reports] == [("tool_call", "asked"), ("tool_update", "waiting"),
                                                           ("tool_update", "running"), ("tool_update", "done")]
    turn, tool = steps.seen[1][-2:]
    assert turn["role"] == "assistant" and turn["tool_calls"][0]["function"]["name"] == "write_note"
    assert tool == {"role": "tool", "tool_call_id": record.id, "name": "write_note", "content": "saved march"}
    assert outcome.answer == "Let me save it.Saved." and outcome.stats["steps"] == 2
    assert outcome.stats["generation_tokens"] == 10


def test_a_denied_write_does_not_run_and_the_model_is_told(notes):
    folder, registry = notes
    steps = ScriptedSteps([("", [{"name": "delete_note", "arguments": {"title": "march"}}]), ("OK.", [])])
    (folder / "march.txt").write_text("keep me")
    outcome, _ = run_agent(registry, steps, approve=lambda record: False)
    assert (folder / "march.txt").read_text() == "keep me"
    assert outcome.records[0].status == "denied"
    assert steps.seen[1][-1]["content"].startswith("Error: The person did not allow this call")


def test_ask_once_per_chat_and_never_ask(tmp_path):
    for mode, expected_questions in (("once", 1), ("never", 0)):
        registry = notes_registry(tmp_path, approval=mode)
        try:
            asked = []
            calls = [{"name": "write_note", "arguments": {"title": f"n{i}", "text": "x"}} for i in range(2)]
            approved: set[str] = set()
            for call in calls:  # two turns of the same chat
                run_agent(registry, ScriptedSteps([("", [call]), ("ok", [])]),
                          approve=lambda record: asked.append(record.tool) or True, approved=approved)
            assert len(asked) == expected_questions, mode
            assert (tmp_path / "n0.txt").exists() and (tmp_path / "n1.txt").exists()
        finally:
            registry.close()


def test_failures_crashes_hangs_and_unknown_tools_are_told_to_the_model(notes):
    folder, registry = notes
    steps = ScriptedSteps([("", [{"name": "read_note", "arguments": {"title": "nothing"}},
                                 {"name": "wait", "arguments": {"seconds": 30}},
                                 {"name": "crash", "arguments": {}},
                                 {"name": "fly", "arguments": {}},
                                 {"name": "read_note", "error": "expected ':'", "arguments": {}}]),
                           ("Sorry.", [])])
    started = time.monotonic()
    outcome, _ = run_agent(registry, steps)
    assert time.monotonic() - started < 20
    results = {r.tool: (r.status, r.result) for r in outcome.records}
    assert [r.status for r in outcome.records] == ["failed"] * 5
    assert "there is no note called 'nothing'" in outcome.records[0].result
    assert results["wait"][1] == "The tool failed: notes did not answer within 3 s while running wait."
    assert "notes stopped while running crash" in results["crash"][1]
    assert "There is no tool called 'fly'" in results["fly"][1] and "write_note" in results["fly"][1]
    assert "could not be read (expected ':')" in outcome.records[4].result
    told = [m["content"] for m in steps.seen[1] if m["role"] == "tool"]
    assert len(told) == 5 and all(text.startswith("Error: ") for text in told)
    assert outcome.answer == "Sorry."


def test_the_step_limit_ends_a_run_with_an_answer_and_cancel_stops_it(notes):
    _folder, registry = notes
    looping = [("", [{"name": "list_notes", "arguments": {}}])] * 5
    steps = ScriptedSteps(looping)
    outcome, _ = run_agent(registry, steps, max_steps=3)
    assert steps.allowed == [True, True, False]  # the last turn may not call: it must answer
    assert outcome.stats["steps"] == 3 and len(outcome.records) == 2
    cancel = threading.Event()
    steps = ScriptedSteps([("", [{"name": "wait", "arguments": {"seconds": 20}}])] * 3)
    threading.Timer(0.5, cancel.set).start()
    started = time.monotonic()
    outcome, _ = run_agent(registry, steps, cancel=cancel)
    assert time.monotonic() - started < 5
    assert outcome.records[0].status == "cancelled" and outcome.stats["finish_reason"] == "cancelled"
    assert len(steps.seen) == 1


def test_images_go_back_as_images_to_a_model_that_sees(notes, tmp_path):
    _folder, registry = notes
    for can_see in (True, False):
        steps = ScriptedSteps([("", [{"name": "screenshot", "arguments": {}}]), ("A red square.", [])])
        outcome, _ = run_agent(registry, steps, can_see=can_see, image_dir=tmp_path / "images")
        (path,) = outcome.records[0].images
        assert Path(path).read_bytes().startswith(b"\x89PNG")
        content = steps.seen[1][-1]["content"]
        if can_see:
            assert content == [{"type": "text", "text": "1 image"}, {"type": "image", "path": path}]
        else:
            assert isinstance(content, str) and "1 image(s), which this model cannot see" in content


@pytest.mark.slow
def test_a_tool_image_is_read_as_an_image_by_a_vision_model(tmp_path):
    """The tool message's picture becomes image tokens the vision tower reads (a tiny model that sees)."""
    from PIL import Image

    from gemma4_mac.generate import prepare_prompt
    from mlx_model import load
    from tests.server_support import build_tiny_multimodal_model

    model, processor = load(build_tiny_multimodal_model(tmp_path / "sees"))
    picture = tmp_path / "shot.png"
    Image.new("RGB", (64, 64), (200, 20, 20)).save(picture)
    messages = [{"role": "user", "content": "What is on screen?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "screenshot", "arguments": {}}}]},
                {"role": "tool", "tool_call_id": "call_1", "name": "screenshot",
                 "content": [{"type": "text", "text": "1 image"}, {"type": "image", "path": str(picture)}]}]
    tools = [{"type": "function", "function": {"name": "screenshot", "description": "A picture of the screen",
                                               "parameters": {"type": "object", "properties": {}}}}]
    prepared = prepare_prompt(processor, messages, tools=tools)
    assert len(prepared.media) == 1 and prepared.media[0].kind == "image"
    request = GenerationRequest(1, messages, tools=tools, sampling={"temperature": 0.0, "max_tokens": 2})
    events = list(MlxBackend().generate(ModelSlot(model, processor, {}), request, threading.Event()))
    assert events[-1].kind == "done" and events[-1].stats.prompt_tokens == len(prepared.tokens)


def test_builtin_tools_read_only_what_the_person_named(tmp_path):
    folder = tmp_path / "Invoices March"
    folder.mkdir()
    (folder / "a.txt").write_text("Invoice A: 100 EUR")
    (tmp_path / "secret.txt").write_text("do not read")
    person = [f'Total the invoices in "{folder}" please']
    assert named_paths(person) == [folder.resolve()]
    listing = run_builtin("list_folder", {"path": str(folder)}, person)
    assert not listing.is_error and "a.txt (18 bytes" in listing.text
    assert run_builtin("read_file", {"path": str(folder / "a.txt")}, person).text == "Invoice A: 100 EUR"
    refused = run_builtin("read_file", {"path": str(tmp_path / "secret.txt")}, person)
    assert refused.is_error and "has not named" in refused.text
    sneaky = run_builtin("read_file", {"path": str(folder / ".." / "secret.txt")}, person)
    assert sneaky.is_error and "has not named" in sneaky.text
    assert "UTC" in run_builtin("current_time", {}, []).text
    assert [t.key for t in builtin_tools(["read_file"])] == ["built-in/read_file"]
    assert all(t.read_only for t in builtin_tools())


def test_stored_agent_answers_are_replayed_with_their_calls_and_results():
    records = [{"id": "call_1", "name": "read_note", "arguments": {"title": "a"}, "status": "done",
                "result": "hello"},
               {"id": "call_2", "name": "write_note", "arguments": {}, "status": "denied", "result": "no"}]
    stored = [Message(1, 1, 0, "user", "read a"), Message(2, 1, 1, "assistant", "It says hello.",
                                                          tool_calls=records)]
    messages = model_messages(stored)
    assert messages[1]["tool_calls"][0]["function"] == {"name": "read_note", "arguments": {"title": "a"}}
    assert messages[2] == {"role": "tool", "tool_call_id": "call_1", "name": "read_note", "content": "hello"}
    assert messages[3]["content"] == "Error: no" and messages[4] == {"role": "assistant",
                                                                     "content": "It says hello."}
    assert replay_messages("plain", []) == [{"role": "assistant", "content": "plain"}]


def test_a_scripted_models_call_is_held_to_the_schema_runs_and_is_read_back(tiny_chat, notes):
    """Through the app's backend: Gemma 4's call syntax, constrained decoding, the MCP call, the result in the
    next prompt the model reads, and the answer, with one conversation cache for both turns."""
    folder, registry = notes
    model, processor = tiny_chat
    tokenizer = processor.tokenizer
    call = '<|tool_call>call:write_note{title:<|"|>april<|"|>,text:<|"|>Rent 900<|"|>}<tool_call|>'
    replies = [tokenizer.encode("I will save it." + call, add_special_tokens=False) + [50],
               tokenizer.encode("Saved your note.", add_special_tokens=False) + [106]]
    scripted = TurnScriptedModel(model, replies)
    backend, slot = MlxBackend(), ModelSlot(scripted, processor, {"can_see": False})
    cancel = threading.Event()

    def step_events(messages, tools, schemas, allow_calls):
        request = GenerationRequest(1, messages, tools=tools, tool_schemas=schemas, ban_tool_calls=not allow_calls,
                                    sampling={"temperature": 0.0, "max_tokens": 60})
        return backend.generate(slot, request, cancel)

    out, err = io.StringIO(), io.StringIO()
    stats = ask_with_tools(registry, [{"role": "user", "content": "Note that April's rent is 900."}],
                           step_events=step_events, out=out, err=err, allow_writes=True, max_steps=4,
                           can_see=False, interactive=False)
    assert (folder / "april.txt").read_text() == "Rent 900"
    assert out.getvalue().split() == ["I", "will", "save", "it.", "Saved", "your", "note."]
    assert '[tool] notes/write_note {"title": "april", "text": "Rent 900"}' in err.getvalue()
    assert "[done in " in err.getvalue() and "] saved april" in err.getvalue()
    second = tokenizer.decode(scripted.read[1])
    assert "saved april" in second  # the tool's result, in what the model read for its second turn
    assert stats["steps"] == 2
    assert len(scripted.read[1]) < len(scripted.read[0])  # the second turn read only what was new


def test_a_call_that_breaks_the_schema_cannot_be_written(tiny_chat, notes):
    """The scripted model tries a key the tool does not have; constrained decoding refuses its tokens, so the
    call it ends up writing still fits the schema (or it writes none)."""
    _folder, registry = notes
    model, processor = tiny_chat
    tokenizer = processor.tokenizer
    bad = '<|tool_call>call:read_note{colour:<|"|>red<|"|>}<tool_call|>'
    scripted = TurnScriptedModel(model, [tokenizer.encode(bad, add_special_tokens=False) + [50]])
    toolbox, _ = registry.toolbox()
    request = GenerationRequest(1, [{"role": "user", "content": "read"}], tools=toolbox.offered(),
                                tool_schemas=toolbox.shapes(), sampling={"temperature": 0.0, "max_tokens": 24})
    events = list(MlxBackend().generate(ModelSlot(scripted, processor, {}), request, threading.Event()))
    calls = [e.tool_call for e in events if e.kind == "tool_call"]
    assert all(set(c["arguments"]) <= {"title"} for c in calls)
    assert not any("colour" in str(c) for c in calls)
