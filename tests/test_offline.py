"""Safety: the offline paths touch no network, attachment names cannot escape the data folder, and
conversation text never reaches the logs."""

from __future__ import annotations

import logging
import os
import socket

import pytest

from gemma4_mac.attachments import AttachmentStore, sanitize_filename
from gemma4_mac.history import HistoryStore, model_messages
from gemma4_mac.settings import AppSettings, from_dict
from tests.fuzz import seeds

SECRET = "my bank PIN is 4912 and my diagnosis is private"
_LOCAL = {"127.0.0.1", "::1", "localhost"}


class NetworkUsed(AssertionError):
    pass


@pytest.fixture
def no_network(monkeypatch):
    """Every way out to the network raises, except loopback and Unix sockets; attempts are recorded."""
    attempts = []

    def refuse(what):
        attempts.append(what)
        raise NetworkUsed(f"network access attempted: {what}")

    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def local(address) -> bool:
        return not isinstance(address, tuple) or str(address[0]) in _LOCAL

    def connect(self, address):
        return real_connect(self, address) if local(address) else refuse(f"connect {address}")

    def connect_ex(self, address):
        return real_connect_ex(self, address) if local(address) else refuse(f"connect {address}")

    def getaddrinfo(host, *args, **kwargs):
        return real_getaddrinfo(host, *args, **kwargs) if host in _LOCAL or host is None else refuse(f"resolve {host}")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket, "gethostbyname", lambda host: refuse(f"resolve {host}"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield attempts


def test_the_guard_really_blocks(no_network):
    with pytest.raises(NetworkUsed):
        socket.create_connection(("example.com", 443), timeout=1)
    with pytest.raises(NetworkUsed):
        socket.socket().connect(("93.184.216.34", 80))


@pytest.mark.slow  # builds the tiny model with the real tokenizer (cached after the first run)
def test_offline_paths_use_no_network_and_log_no_conversation(no_network, tmp_path, caplog, capfd, monkeypatch):
    from gemma4_mac.generate import SamplingSettings, stream_generate
    from mlx_model import load
    from tests.tiny_chat_model import build_tiny_chat_model

    monkeypatch.setenv("GEMMA4_MAC_HOME", str(tmp_path / "home"))
    caplog.set_level(logging.DEBUG)  # everything any logger would write, at the most verbose level
    folder = build_tiny_chat_model(tmp_path / "tiny")
    model, processor = load(folder)
    attachments = AttachmentStore(tmp_path / "home" / "attachments")
    history = HistoryStore(tmp_path / "home" / "history.sqlite3", attachments.root)
    conversation = history.create_conversation()
    note = attachments.import_text(conversation.id, f"{SECRET}\n" * 200, "notes.txt")
    picture = attachments.import_bytes(conversation.id, seeds.png(), "Screenshot.png", "image")
    history.add_message(conversation.id, "user", f"Read this. {SECRET}", attachments=[note])
    messages = model_messages(history.messages(conversation.id))
    events = list(stream_generate(model, processor, messages,
                                  sampling=SamplingSettings(temperature=0.0, max_tokens=8)))
    answer = "".join(e.text for e in events if e.kind == "answer")
    history.add_message(conversation.id, "assistant", answer, stats=events[-1].stats.__dict__
                        if hasattr(events[-1].stats, "__dict__") else None)
    assert history.search("diagnosis") and picture.meta["width"] == 24
    assert no_network == []
    captured = capfd.readouterr()
    for output in (caplog.text, captured.out, captured.err):
        assert "4912" not in output and "diagnosis" not in output


def test_conversation_logging_is_off_unless_turned_on():
    assert AppSettings().log_conversations is False
    settings, warnings = from_dict({"log_conversations": True})
    assert settings.log_conversations is True and warnings == []
    settings, warnings = from_dict({"log_conversations": "yes"})
    assert settings.log_conversations is False and "log_conversations" in warnings[0]


# ------------------------------------------------------------------------------- attachment names

HOSTILE_NAMES = [
    "../../etc/passwd", "..\\..\\Windows\\system32\\drivers\\etc\\hosts", "/etc/passwd", "C:\\evil.txt",
    "a/../../b.txt", "..", ".", "", "   ", "name\x00.txt", "\x00", "evil\x00/../../x.txt", "con\nsole.txt",
    "x" * 5000 + ".txt", "é" * 300 + ".png", "\u202etxt.exe", "..\u2215..\u2215etc\u2215passwd",
    "\uff0e\uff0e\uff0fescape.txt", "．．/．．/x.txt", "a" * 255 + "/" + "b" * 300, "~/.ssh/authorized_keys",
    "$HOME/x.txt", "%APPDATA%\\x.txt", ".hidden", "...", "normal name.txt",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_attachment_names_cannot_escape_the_data_folder(tmp_path, name):
    root = tmp_path / "home" / "attachments"
    store = AttachmentStore(root)
    clean = sanitize_filename(name)
    assert clean and "/" not in clean and "\\" not in clean and "\x00" not in clean
    assert clean not in (".", "..") and not clean.startswith(".") and len(clean.encode()) <= 255 * 2
    attachment = store.import_bytes(7, b"hello, safe text\n", name, "text")
    resolved = attachment.path.resolve()
    assert resolved.parent == (root / "7").resolve() and resolved.is_file()
    everything = {p.resolve() for p in tmp_path.rglob("*")}
    assert all(root.resolve() in p.parents or p == root.resolve() or p in root.resolve().parents
               for p in everything)


def test_imported_file_with_a_hostile_name_lands_inside(tmp_path):
    outside = tmp_path / "downloads"
    outside.mkdir()
    source = outside / "..evil name .txt"
    source.write_text("text")
    store = AttachmentStore(tmp_path / "attachments")
    attachment = store.import_file(3, source)
    assert attachment.path.parent == store.root / "3" and attachment.name == source.name
    assert os.path.commonpath([attachment.path.resolve(), store.root.resolve()]) == str(store.root.resolve())
