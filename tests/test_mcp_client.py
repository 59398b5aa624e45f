"""The MCP client against real MCP servers (tests/mcp_servers/notes.py, written with the `mcp` SDK) over stdio
and streamable HTTP: configurations as Claude Desktop writes them, listing, calls that write files, tool errors,
images, a tool that hangs, a server that crashes, one that never answers, stopping a call, and `mcp list`."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gemma4_mac.cli import main as cli_main
from gemma4_mac.mcp_client import McpCancelled, McpError, McpHub, McpTimeout, McpUnavailable
from gemma4_mac.mcp_config import McpConfigError, ServerConfig, load_config_file, parse_servers, parse_text

ROOT = Path(__file__).resolve().parent.parent
ENV = {"PYTHONPATH": str(ROOT)}


def notes_entry(folder: Path, **extra) -> dict:
    return {"command": sys.executable, "args": ["-m", "tests.mcp_servers.notes", str(folder)], "env": ENV, **extra}


def notes_server(folder: Path, name: str = "notes", **extra) -> ServerConfig:
    servers, problems = parse_servers({"mcpServers": {name: notes_entry(folder, **extra)}})
    assert problems == []
    return servers[0]


@pytest.fixture(scope="module")
def notes_folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("notes")


@pytest.fixture(scope="module")
def hub(notes_folder):
    hub = McpHub([notes_server(notes_folder, timeout=3)], connect_timeout=20)
    yield hub
    hub.close()


def test_claude_desktop_configurations_are_read_and_problems_named():
    text = json.dumps({"mcpServers": {
        "files": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "/Users/me"]},
        "remote": {"url": "https://example.com/mcp", "headers": {"Authorization": "Bearer x"}, "timeout": 5},
        "off": {"command": "uvx", "args": ["mcp-server-time"], "disabled": True},
        "both": {"command": "a", "url": "http://b"},
        "old": {"type": "sse", "url": "http://127.0.0.1:9/sse"},
        "built-in": {"command": "x"},
        "odd": {"command": "x", "args": "not a list", "timeout": -1}}})
    servers, problems = parse_text(text)
    assert [s.name for s in servers] == ["files", "remote", "off"]
    files, remote, off = servers
    assert files.transport == "stdio" and files.describe().startswith("npx -y @modelcontextprotocol")
    assert remote.transport == "http" and remote.headers == {"Authorization": "Bearer x"} and remote.timeout == 5
    assert off.disabled
    joined = " ".join(problems)
    for expected in ("'both' has both", "'old' uses the old SSE transport", "'built-in' must be",
                     "'odd': \"args\" must be a list", "'odd': \"timeout\" must be"):
        assert expected in joined
    assert parse_text("{not json")[1][0].startswith("The MCP configuration is not valid JSON")
    assert parse_servers({"files": {"command": "x"}})[0][0].name == "files"  # the bare inner object


def test_a_configuration_file_with_a_mistake_is_refused_with_the_reason(tmp_path):
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps({"mcpServers": {"a": {"args": ["x"]}}}))
    with pytest.raises(McpConfigError, match="needs a \"command\""):
        load_config_file(path)
    with pytest.raises(McpConfigError, match="cannot read"):
        load_config_file(tmp_path / "missing.json")


def test_tools_are_listed_with_descriptions_schemas_and_what_they_may_change(hub):
    tools = {t.name: t for t in hub.tools("notes")}
    assert {"list_notes", "read_note", "write_note", "delete_note", "screenshot", "wait", "crash"} <= set(tools)
    read, write, delete = tools["read_note"], tools["write_note"], tools["delete_note"]
    assert read.read_only and not read.writes and read.description == "Read the note with this title."
    assert read.input_schema["required"] == ["title"] and read.key == "notes/read_note"
    assert write.writes and not write.read_only  # no annotations: taken to write
    assert delete.writes and delete.destructive is True


def test_calls_run_and_their_results_and_errors_come_back(hub, notes_folder):
    out = hub.call("notes", "write_note", {"title": "march", "text": "Invoice 42: 120 EUR"})
    assert out.text == "saved march" and not out.is_error
    assert (notes_folder / "march.txt").read_text() == "Invoice 42: 120 EUR"
    assert hub.call("notes", "read_note", {"title": "march"}).text == "Invoice 42: 120 EUR"
    missing = hub.call("notes", "read_note", {"title": "april"})
    assert missing.is_error and "there is no note called 'april'" in missing.text
    picture = hub.call("notes", "screenshot", {})
    (data, mime), = picture.images
    assert mime == "image/png" and data.startswith(b"\x89PNG")


def test_a_tool_that_hangs_times_out_and_the_server_still_answers(hub):
    started = time.monotonic()
    with pytest.raises(McpTimeout, match="did not answer within 3 s"):
        hub.call("notes", "wait", {"seconds": 30})
    assert time.monotonic() - started < 6
    assert hub.call("notes", "wait", {"seconds": 0}).text == "waited 0.0 s"


def test_stopping_a_call_ends_it_at_once(hub):
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(McpCancelled):
        hub.call("notes", "wait", {"seconds": 20}, cancel=cancel, timeout=30)
    assert time.monotonic() - started < 2


def test_a_server_that_crashes_ends_the_call_with_what_it_said_and_starts_again(hub):
    with pytest.raises(McpUnavailable) as caught:
        hub.call("notes", "crash", {})
    assert "notes stopped while running crash" in str(caught.value)
    assert "crashing on request" in str(caught.value)  # its last words on stderr
    assert hub.call("notes", "list_notes", {}).text.startswith("march")  # started again for the next call


def test_servers_that_cannot_start_or_never_answer_are_reported_not_waited_for(tmp_path):
    servers, _ = parse_servers({
        "dies": {"command": sys.executable, "args": ["-c", "raise SystemExit('NOTES_TOKEN is not set')"]},
        "silent": {"command": sys.executable, "args": ["-m", "tests.mcp_servers.silent"], "env": ENV},
        "nowhere": {"command": "gemma-no-such-mcp-server"},
        "notes": notes_entry(tmp_path)})
    hub = McpHub(servers, connect_timeout=4)
    try:
        started = time.monotonic()
        tools, problems = hub.all_tools()
        assert time.monotonic() - started < 15
        assert {t.server for t in tools} == {"notes"}
        assert "NOTES_TOKEN is not set" in problems["dies"] and "could not be started" in problems["dies"]
        assert problems["silent"] == "silent did not start within 4 s"
        assert "'gemma-no-such-mcp-server' was not found" in problems["nowhere"]
        started = time.monotonic()
        assert hub.all_tools()[1].keys() == problems.keys()  # not tried again at once
        assert time.monotonic() - started < 1
        with pytest.raises(McpError):
            hub.call("nowhere", "x", {})
    finally:
        hub.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_streamable_http_server_is_listed_and_called(tmp_path):
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "tests.mcp_servers.notes", str(tmp_path), "--http", str(port)],
                              cwd=ROOT, env={**os.environ, **ENV}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        servers, problems = parse_servers({"mcpServers": {"web": {"url": f"http://127.0.0.1:{port}/mcp"}}})
        hub = McpHub(servers, connect_timeout=20)
        try:
            assert "write_note" in {t.name for t in hub.tools("web")}
            assert hub.call("web", "write_note", {"title": "web", "text": "over HTTP"}).text == "saved web"
            assert (tmp_path / "web.txt").read_text() == "over HTTP"
        finally:
            hub.close()
    finally:
        server.terminate()
        server.wait(10)


def test_mcp_list_prints_each_servers_tools(tmp_path):
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"notes": notes_entry(tmp_path)}}))
    result = subprocess.run([sys.executable, "-m", "gemma4_mac", "mcp", "list", str(config)], cwd=ROOT,
                            env={**os.environ, **ENV}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"notes ({sys.executable} -m tests.mcp_servers.notes")
    assert "  read_note  [read-only]  Read the note with this title." in lines
    assert "  write_note  [writes]  Write (or replace) the note with this title." in lines
    assert "      title: string (required), text: string (required)" in lines
    out, err = io.StringIO(), io.StringIO()
    config.write_text(json.dumps({"mcpServers": {"broken": {"command": sys.executable,
                                                            "args": ["-c", "raise SystemExit(1)"]}}}))
    assert cli_main(["mcp", "list", str(config)], out=out, err=err) == 1
    assert "error: broken could not be started" in err.getvalue()
    config.write_text("{}")
    assert cli_main(["mcp", "list", str(config)], out=out, err=err) == 2
    assert "configures no MCP server" in err.getvalue()
