"""The app's server settings: allowed web origins and local image files, from the settings file and the
dialog to the running server."""

from __future__ import annotations

import pytest

from gemma4_mac.server.control import LocalServer, ServerConfig, ServerControlError
from gemma4_mac.settings import AppSettings, from_dict
from gemma4_mac.worker import ModelWorker
from tests.server_support import raw_request


def test_the_server_fields_are_validated_on_load():
    settings, warnings = from_dict({"server_cors_origins": "http://localhost:3000 https://app.example",
                                    "server_allow_local_files": True})
    assert not warnings and settings.server_allow_local_files
    config = ServerConfig.from_settings(settings)
    assert config.cors_origins == ("http://localhost:3000", "https://app.example") and config.allow_local_files
    settings, warnings = from_dict({"server_cors_origins": "localhost:3000/app", "server_allow_local_files": "yes"})
    assert settings.server_cors_origins == "" and not settings.server_allow_local_files
    assert len(warnings) == 2 and "server_cors_origins" in warnings[0]


def test_the_dialog_edits_the_server_fields(qtbot):
    from ui.settings_dialog import SettingsDialog

    dialog = SettingsDialog(AppSettings(server_cors_origins="http://localhost:3000"), [], 8192)
    qtbot.addWidget(dialog)
    assert dialog.server_cors_origins.text() == "http://localhost:3000"
    assert not dialog.server_allow_local_files.isChecked()
    dialog.server_cors_origins.setText("http://localhost:3000,  http://localhost:5173 ")
    dialog.server_allow_local_files.setChecked(True)
    edited = dialog.settings()
    assert edited.server_cors_origins == "http://localhost:3000 http://localhost:5173"
    assert edited.server_allow_local_files


def test_the_apps_server_answers_allowed_pages_and_refuses_a_wrong_origin_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMMA4_MAC_HOME", str(tmp_path / "home"))
    worker = ModelWorker()
    control = LocalServer(worker)
    try:
        url = control.apply(AppSettings(server_enabled=True, server_port=0,
                                        server_cors_origins="http://localhost:3000"))
        preflight = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"}
        status, _, headers = raw_request(url, "OPTIONS", "/chat/completions", headers=preflight)
        assert status == 204 and headers["access-control-allow-origin"] == "http://localhost:3000"
        status, _, _ = raw_request(url, "GET", "/models", headers={"Origin": "http://localhost:4000"})
        assert status == 403
        with pytest.raises(ServerControlError, match="allowed web origins"):
            control.start(ServerConfig(port=0, cors_origins=("*",)))
        assert not control.running
    finally:
        control.stop()
        worker.stop()
