"""`gemma4-mac` (`python -m ui`) on a virtual X display with a model added from elsewhere: the settings hold only
`added_models` (an MLX folder in ~/Models, as "Add Model from Folder…" leaves them), and two starts in a row each
load that folder where it lies, answer a question typed into the window and quit with status 0; the list survives
both starts and nothing is copied into the app's models folder."""

from __future__ import annotations

import json
import sys

import pytest

from tests.test_ui_xvfb_app import ask_the_window
from tests.ui_support import xvfb_display

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="drives an X server with xdotool")]


def test_an_added_model_is_used_where_it_lies_on_two_starts(tmp_path, monkeypatch):
    from convert import convert_checkpoint
    from tests.reference_models import build_gemma4
    from tests.test_convert_support import QUANT_FRIENDLY

    person = tmp_path / "person"
    checkpoint = tmp_path / "checkpoint"
    build_gemma4("e2b", checkpoint, **QUANT_FRIENDLY)
    model = convert_checkpoint(checkpoint, person / "Models" / "gemma-4-tiny-it-4bit", bits=4)
    monkeypatch.setenv("HOME", str(person))  # the app's searches of ~/.cache and ~/.lmstudio stay in here
    home = tmp_path / "app-home"
    home.mkdir()
    (home / "settings.json").write_text(json.dumps({"added_models": [str(model)], "max_tokens": 4,
                                                    "temperature": 0.0}))
    with xvfb_display() as display:
        for _start in (1, 2):
            for stale in home.glob("history.sqlite3*"):  # each start's answer is the one waited for
                stale.unlink()
            code, messages, log = ask_the_window(display, home, [], "w5 w6 w7", timeout=300)
            assert code == 0, log[-3000:]
            assert [m["role"] for m in messages] == ["user", "assistant"], log[-3000:]
            assert messages[-1]["stats"]["generation_tokens"] >= 1 and not messages[-1]["partial"]
            settings = json.loads((home / "settings.json").read_text())
            assert settings.get("added_models", [str(model)]) == [str(model)]
    # nothing copied, and no starter built: the added folder was the model both times
    models = home / "models"
    assert not models.exists() or not [p for p in models.iterdir() if not p.name.startswith(".")]
