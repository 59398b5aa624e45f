"""Tools in the window: the scripted engine calls a real MCP server (tests/mcp_servers/notes.py over stdio);
each call shows in the transcript with its arguments, status, result and time; a write waits for Allow and is
not run on Deny; a crash ends the call with a message; the window keeps answering meanwhile; tools are switched
per chat; the settings' tools editor reads a Claude Desktop configuration and lists the servers' tools."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from PySide6.QtWidgets import QDialogButtonBox

from gemma4_mac.fake_backend import FakeBackend
from gemma4_mac.settings import AppSettings
from tests.ui_support import TIMEOUT, harness_factory  # noqa: F401
from ui.tool_views import ToolCallCard

ROOT = Path(__file__).resolve().parent.parent


def notes_settings(folder: Path, **extra) -> AppSettings:
    servers = {"notes": {"command": sys.executable, "args": ["-m", "tests.mcp_servers.notes", str(folder)],
                         "env": {"PYTHONPATH": str(ROOT)}, "timeout": 5}}
    return AppSettings(mcp_servers=servers, **extra)


def calls_then_answers(*calls: dict):
    """A scripted model: the calls, one per turn, then an answer quoting the last result."""
    def script(request):
        last_user = max(i for i, m in enumerate(request.messages) if m["role"] == "user")
        done = sum(1 for m in request.messages[last_user:] if m["role"] == "tool")
        if done < len(calls):
            return [("answer", "Let me do that. "), ("tool_call", calls[done])]
        last = request.messages[-1]["content"]
        return [("answer", f"Finished: {last}")]
    return script


def cards(h) -> list[ToolCallCard]:
    return h.window.transcript.messages[-1].tool_cards


def send(h, text: str) -> None:
    h.window.composer.set_text(text)
    h.window.composer.send_button.click()


def test_a_write_waits_for_allow_then_runs_and_shows_its_result(harness_factory, qtbot, tmp_path):
    call = {"name": "write_note", "arguments": {"title": "march", "text": "Invoice 42"}}
    h = harness_factory(backend=FakeBackend(calls_then_answers(call)), settings=notes_settings(tmp_path))
    send(h, "Save a note about invoice 42")
    qtbot.waitUntil(lambda: bool(cards(h)) and cards(h)[0].call.get("status") == "waiting", timeout=TIMEOUT * 3)
    card = cards(h)[0]
    assert not card.approval.isHidden() and card.allow_button.isEnabled()
    assert '"text": "Invoice 42"' in card.arguments.text().replace("&quot;", '"') or "Invoice 42" in \
        card.arguments.text()
    assert card.title.text() == "Tool · notes · write_note" and card.status.text() == "Waiting for your approval"
    qtbot.wait(300)
    assert not (tmp_path / "march.txt").exists()  # nothing runs before the person allows it
    h.window.composer.set_text("typing meanwhile")  # the window answers while the call waits
    assert h.window.composer.text == "typing meanwhile"
    card.allow_button.click()
    h.wait_idle()
    assert (tmp_path / "march.txt").read_text() == "Invoice 42"
    assert card.call["status"] == "done" and card.status.text().startswith("Done in ")
    assert "saved march" in card.result.text() and card.approval.isHidden()
    answer = h.window.transcript.messages[-1]
    assert answer.answer == "Let me do that. Finished: saved march"
    assert answer.segments and answer.segments[0].markdown == "Let me do that. "  # the text before the card
    stored = h.history.messages(h.controller.conversation_id)[-1]
    (record,) = stored.tool_calls
    assert record["status"] == "done" and record["result"] == "saved march" and record["at"] == 16
    assert record["seconds"] is not None and stored.content == answer.answer
    h.window.composer.set_text("")
    h.backend.script = lambda request: [("answer", "ok")]
    send(h, "Thanks")
    h.wait_idle()
    replayed = h.backend.requests[-1].messages
    assert {"role": "tool", "tool_call_id": record["id"], "name": "write_note", "content": "saved march"} in replayed
    h.controller.open_conversation(h.controller.conversation_id, reload=True)
    shown = h.window.transcript.messages[1]
    assert shown.tool_cards[0].call["result"] == "saved march" and shown.segments[0].markdown == "Let me do that. "


def test_deny_keeps_the_tool_from_running(harness_factory, qtbot, tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    call = {"name": "delete_note", "arguments": {"title": "keep"}}
    h = harness_factory(backend=FakeBackend(calls_then_answers(call)), settings=notes_settings(tmp_path))
    send(h, "Delete my note")
    qtbot.waitUntil(lambda: bool(cards(h)) and cards(h)[0].call.get("status") == "waiting", timeout=TIMEOUT * 3)
    cards(h)[0].deny_button.click()
    h.wait_idle()
    assert (tmp_path / "keep.txt").read_text() == "precious"
    assert cards(h)[0].status.text() == "Not allowed"
    assert "Finished: Error: The person did not allow this call" in h.window.transcript.messages[-1].answer


def test_a_crash_ends_the_call_with_a_message_and_stop_ends_a_hanging_one(harness_factory, qtbot, tmp_path):
    script = calls_then_answers({"name": "crash", "arguments": {}})
    h = harness_factory(backend=FakeBackend(script), settings=notes_settings(tmp_path, mcp_approval={"notes": "never"}))
    send(h, "Crash it")
    h.wait_idle()
    card = cards(h)[0]
    assert card.call["status"] == "failed" and "notes stopped while running crash" in card.result.text()
    assert "crashing on request" in card.result.text()
    h.backend.script = calls_then_answers({"name": "wait", "arguments": {"seconds": 60}})
    send(h, "Wait a minute")
    qtbot.waitUntil(lambda: bool(cards(h)) and cards(h)[0].call.get("status") == "running", timeout=TIMEOUT * 3)
    h.window.composer.send_button.click()  # Stop
    h.wait_idle()
    assert cards(h)[0].call["status"] == "cancelled" and cards(h)[0].status.text().startswith("Stopped")
    stored = h.history.messages(h.controller.conversation_id)[-1]
    assert stored.partial and stored.stats["finish_reason"] == "cancelled"


def test_tools_are_switched_per_chat_from_the_tools_menu(harness_factory, qtbot, tmp_path):
    h = harness_factory(backend=FakeBackend(lambda request: [("answer", "ok")]),
                        settings=notes_settings(tmp_path, builtin_tools=["current_time"], tools_off=["notes/crash"]))
    composer = h.window.composer
    assert composer.tools_button.isVisible()
    menu = h.controller.open_tools_menu()
    qtbot.waitUntil(lambda: bool(h.controller.known_tools), timeout=TIMEOUT * 3)
    labels = {a.text(): a for a in menu.actions() if a.isCheckable()}
    assert labels["Current date and time"].isChecked()
    assert not labels["crash  (writes: asks first)"].isChecked()  # off in new chats, from the settings
    labels["write_note  (writes: asks first)"].setChecked(False)
    menu.close()
    send(h, "hello")
    h.wait_idle()
    offered = [t["function"]["name"] for t in h.backend.requests[-1].tools]
    assert "write_note" not in offered and "crash" not in offered
    assert "current_time" in offered and "read_note" in offered
    h.controller.new_chat()
    send(h, "again")
    h.wait_idle()
    assert "write_note" in [t["function"]["name"] for t in h.backend.requests[-1].tools]  # a new chat: all on


def test_the_tools_editor_reads_a_pasted_configuration_and_lists_the_tools(harness_factory, qtbot, tmp_path):
    h = harness_factory()
    assert not h.window.composer.tools_button.isVisible()  # no tools set up
    settings = h.controller.open_settings()
    editor = settings.open_tools()
    editor.editor.setPlainText("{ not json")
    editor._parse()
    assert "not valid JSON" in editor.problems.text() and not editor.buttons.button(
        QDialogButtonBox.Save).isEnabled()
    config = {"mcpServers": notes_settings(tmp_path).mcp_servers}
    editor.editor.setPlainText(json.dumps(config))
    editor._parse()
    assert editor.buttons.button(QDialogButtonBox.Save).isEnabled() and list(editor.approval_boxes) == ["notes"]
    editor.approval_boxes["notes"].setCurrentIndex(1)  # ask once per chat
    editor.builtin_boxes["read_file"].setChecked(True)
    editor.check_button.click()
    qtbot.waitUntil(lambda: "notes/write_note" in editor.tool_boxes, timeout=TIMEOUT * 3)
    assert "built-in/read_file" in editor.tool_boxes
    editor.tool_boxes["notes/delete_note"].setChecked(False)
    editor.accept()
    assert "1 MCP server · 1 built-in tool" == settings.tools_summary.text()
    settings.server_mcp_tools.setChecked(True)  # programs may ask for the read-only ones
    settings.accept()
    saved = h.controller.settings
    assert saved.mcp_servers == config["mcpServers"] and saved.mcp_approval == {"notes": "once"}
    assert saved.builtin_tools == ["read_file"] and saved.tools_off == ["notes/delete_note"]
    assert saved.server_mcp_tools
    assert json.loads((h.home / "settings.json").read_text())["mcp_approval"] == {"notes": "once"}
    assert h.engine.tools is not None and h.window.composer.tools_button.isVisible()


def test_a_server_that_cannot_start_is_named_with_why_and_the_answer_still_comes(harness_factory, qtbot, tmp_path):
    servers = {"broken": {"command": str(tmp_path / "no-such-server")}}
    h = harness_factory(backend=FakeBackend(lambda request: [("answer", "ok")]),
                        settings=AppSettings(mcp_servers=servers, builtin_tools=["current_time"]))
    send(h, "What time is it?")
    h.wait_idle()
    banner = h.window.banner
    assert banner.isVisible() and banner.property("level") == "warning"
    assert "Some tools are unavailable" in banner.label.text()
    assert "no-such-server cannot be run: no such program" in banner.label.text()
    assert h.window.transcript.messages[-1].answer == "ok"
    assert [t["function"]["name"] for t in h.backend.requests[-1].tools] == ["current_time"]
    menu = h.controller.open_tools_menu()  # names it too, below the tools that work
    qtbot.waitUntil(lambda: h.controller.tools_listed, timeout=TIMEOUT * 3)
    texts = [a.text() for a in menu.actions()]
    assert "Current date and time" in texts and "broken" in texts
    assert any(t.startswith("Unavailable: broken: ") for t in texts)
    menu.close()


def test_a_tool_that_fails_shows_why_on_its_card_and_the_model_is_told(harness_factory, tmp_path):
    call = {"name": "read_note", "arguments": {"title": "missing"}}
    h = harness_factory(backend=FakeBackend(calls_then_answers(call)), settings=notes_settings(tmp_path))
    send(h, "Read my note")
    h.wait_idle()
    card = cards(h)[0]
    assert card.call["status"] == "failed" and card.status.text().startswith("Failed after ")
    assert "there is no note called &#x27;missing&#x27;" in card.result.text() or \
        "there is no note called 'missing'" in card.result.text()
    assert "there is no note called 'missing'" in h.window.transcript.messages[-1].answer


def test_stop_while_a_call_waits_for_approval_ends_it_unrun(harness_factory, qtbot, tmp_path):
    call = {"name": "write_note", "arguments": {"title": "never", "text": "x"}}
    h = harness_factory(backend=FakeBackend(calls_then_answers(call)), settings=notes_settings(tmp_path))
    send(h, "Save a note")
    qtbot.waitUntil(lambda: bool(cards(h)) and cards(h)[0].call.get("status") == "waiting", timeout=TIMEOUT * 3)
    h.window.composer.send_button.click()  # Stop
    h.wait_idle()
    card = cards(h)[0]
    assert card.call["status"] == "cancelled" and card.approval.isHidden()
    assert not (tmp_path / "never.txt").exists()
    assert h.history.messages(h.controller.conversation_id)[-1].stats["finish_reason"] == "cancelled"


def test_an_unexpected_error_in_the_tools_ends_the_answer_with_a_message(harness_factory, monkeypatch, tmp_path):
    h = harness_factory(backend=FakeBackend(lambda request: [("answer", "ok")]), settings=notes_settings(tmp_path))

    def broken(*args, **kwargs):
        raise RuntimeError("the registry broke")

    monkeypatch.setattr(h.engine.tools, "toolbox", broken)
    send(h, "hello")
    h.wait_idle()
    assert not h.window.composer.generating  # the window is not left waiting
    shown = h.window.transcript.messages[-1].error_label.text()
    assert "Answering with tools stopped on an unexpected error (the registry broke)" in shown
    assert "Traceback" not in shown
