"""The person's MCP tools for programs using the local server: a chat completion with "mcp_tools": true is
offered the read-only tools of a real MCP server (tests/mcp_servers/notes.py over stdio) beside its own; the
server runs the model's call, the model reads the result and answers; tools that write are never offered; a
request's own tool call still comes back to the program; without the person's consent there are none."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gemma4_mac.mcp_config import parse_servers
from gemma4_mac.server.routes import ServerOptions
from gemma4_mac.toolbox import ToolRegistry
from tests.server_support import MODEL_ID, TOOL_RESPONSE, build_tiny_multimodal_model, raw_request, serve

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
OWN_TOOL = {"type": "function", "function": {
    "name": "send_mail", "description": "Send a mail",
    "parameters": {"type": "object", "properties": {"to": {"type": "string"}}, "required": ["to"]}}}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    notes = tmp_path_factory.mktemp("notes")
    (notes / "march.txt").write_text("14 invoices, 1240.50 EUR")
    servers, problems = parse_servers({"notes": {
        "command": sys.executable, "args": ["-m", "tests.mcp_servers.notes", str(notes)],
        "env": {"PYTHONPATH": str(ROOT)}, "timeout": 10}})
    assert not problems
    registry = ToolRegistry(servers, builtins=["read_file"], approval={"notes": "always"})
    served = serve(build_tiny_multimodal_model(tmp_path_factory.mktemp("tiny-chat")),
                   ServerOptions(tools=lambda: registry))
    served.refused_url = served.also_serve(ServerOptions())
    served.notes = notes
    yield served
    served.stop()
    registry.close()


def chat(base_url: str, **body) -> tuple[int, dict]:
    status, reply, _headers = raw_request(base_url, "POST", "/chat/completions",
                                          json.dumps({"model": MODEL_ID, **body}).encode(), timeout=120)
    return status, reply


def test_a_read_only_mcp_tool_is_run_by_the_server_and_the_model_answers_with_its_result(served):
    served.script('<|tool_call>call:read_note{title:<|"|>march<|"|>}<tool_call|>', end=TOOL_RESPONSE)
    served.script("The March note says 1240.50 EUR.")
    status, reply = chat(served.base_url, messages=[{"role": "user", "content": "What is in my March note?"}],
                         mcp_tools=True, max_tokens=60)
    assert status == 200, reply
    (choice,) = reply["choices"]
    assert choice["message"]["content"] == "The March note says 1240.50 EUR."
    assert choice["finish_reason"] == "stop" and "tool_calls" not in choice["message"]
    (call,) = reply["mcp_calls"]
    assert call["server"] == "notes" and call["tool"] == "read_note" and call["arguments"] == {"title": "march"}
    assert call["status"] == "done" and call["result"] == "14 invoices, 1240.50 EUR"
    turn, result = reply["mcp_messages"]
    assert json.loads(turn["tool_calls"][0]["function"]["arguments"]) == {"title": "march"}
    assert result == {"role": "tool", "tool_call_id": call["id"], "name": "read_note",
                      "content": "14 invoices, 1240.50 EUR"}
    assert "14 invoices, 1240.50 EUR" in served.prompt_text()  # the second turn read the result
    offered = served.prompt_text()
    assert "read_note" in offered and "list_notes" in offered
    assert "write_note" not in offered and "delete_note" not in offered  # nobody is there to approve
    assert "read_file" not in offered  # the built-in tools are the window's only
    assert reply["usage"]["completion_tokens"] > 0


def test_a_call_of_the_requests_own_tool_goes_back_to_the_program(served):
    served.script('<|tool_call>call:send_mail{to:<|"|>ana@example.com<|"|>}<tool_call|>', end=TOOL_RESPONSE)
    status, reply = chat(served.base_url, messages=[{"role": "user", "content": "Mail Ana"}], mcp_tools=True,
                         tools=[OWN_TOOL], max_tokens=60)
    assert status == 200, reply
    (choice,) = reply["choices"]
    assert choice["finish_reason"] == "tool_calls" and reply["mcp_calls"] == []
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "send_mail"
    assert json.loads(call["function"]["arguments"]) == {"to": "ana@example.com"}
    assert "read_note" in served.prompt_text() and "send_mail" in served.prompt_text()


def test_mcp_tools_are_refused_with_what_to_do_where_not_allowed_or_not_possible(served):
    status, reply = chat(served.refused_url, messages=[{"role": "user", "content": "hi"}], mcp_tools=True)
    assert status == 400 and reply["error"]["param"] == "mcp_tools"
    assert "allow programs to use them in the app's Settings" in reply["error"]["message"]
    status, reply = chat(served.base_url, messages=[{"role": "user", "content": "hi"}], mcp_tools=True,
                         stream=True)
    assert status == 400 and "stream: false" in reply["error"]["message"]
    clash = {"type": "function", "function": {"name": "read_note", "parameters": {"type": "object"}}}
    status, reply = chat(served.base_url, messages=[{"role": "user", "content": "hi"}], mcp_tools=True,
                         tools=[clash])
    assert status == 400 and "has the name of an MCP tool" in reply["error"]["message"]


def test_the_apps_switch_gives_requests_the_engines_tools_only_when_the_person_allowed_it(served):
    from gemma4_mac.server.control import LocalServer, ServerConfig
    from gemma4_mac.settings import AppSettings
    from gemma4_mac.worker import ModelWorker

    class Owner:  # the app's Engine, as the switch sees it: a worker and the person's tools
        def __init__(self):
            self.worker, self.tools = ModelWorker(), object()

    owner = Owner()
    control = LocalServer(owner)
    try:
        assert ServerConfig.from_settings(AppSettings(server_mcp_tools=True)).mcp_tools
        for allowed in (False, True):
            url = control.start(ServerConfig(port=0, mcp_tools=allowed))
            status, reply = chat(url, messages=[{"role": "user", "content": "hi"}], mcp_tools=True, stream=True)
            assert status == 400 and reply["error"]["param"] == "mcp_tools"
            said = reply["error"]["message"]
            assert ("offers no MCP tools" in said) is not allowed and ("stream: false" in said) is allowed
    finally:
        control.stop()
        owner.worker.stop()


def test_serve_names_a_bad_mcp_configuration_before_loading_a_model(tmp_path):
    model = tmp_path / "no-model-needed"
    model.mkdir()
    (tmp_path / "mcp.json").write_text('{"mcpServers": {"notes": {"args": []}}}')
    result = subprocess.run([sys.executable, "-m", "gemma4_mac", "serve", "--model", str(model), "--port", "0",
                             "--mcp", str(tmp_path / "mcp.json")], capture_output=True, text=True, timeout=120,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT),
                                           "GEMMA4_MAC_HOME": str(tmp_path / "home")})
    assert result.returncode == 2 and "error: --mcp: " in result.stderr and "notes" in result.stderr
