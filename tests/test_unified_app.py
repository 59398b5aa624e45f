"""Gemma 4 12B in the app: a tiny gemma4_unified checkpoint converted by our converter (4-bit), loaded by the
real engine in the real window, answers a question about a picture and one about a recording.

`GEMMA4_MAC_SHOTS=docs/screenshots` saves the window as `13-12b-image-and-audio.png` there (the committed
screenshot); otherwise it goes to the test's temporary folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image, ImageDraw

from convert.pipeline import convert_checkpoint
from gemma4_mac.engine import MlxBackend
from gemma4_mac.settings import AppSettings
from tests.assets import gemma4_vocab_dir
from tests.ui_support import make_harness
from tests.unified_reference import build_unified

pytestmark = pytest.mark.slow
SHOT_NAME = "13-12b-image-and-audio.png"
LONG = 180_000


def _picture(path: Path) -> Path:
    image = Image.new("RGB", (320, 240), (135, 190, 235))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 170, 320, 240), fill=(90, 160, 80))
    draw.ellipse((230, 30, 290, 90), fill=(250, 215, 80))
    draw.rectangle((60, 140, 170, 185), fill=(200, 40, 40))
    image.save(path)
    return path


def _recording(path: Path) -> Path:
    t = np.arange(16_000 * 2) / 16_000
    soundfile.write(path, (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), 16_000)
    return path


def test_converted_unified_model_answers_an_image_and_an_audio_question_in_the_window(
        qtbot, tmp_path, monkeypatch):
    source = tmp_path / "gemma-4-12b-tiny"
    build_unified(source, seed=4, tokenizer_dir=gemma4_vocab_dir())
    folder = convert_checkpoint(source, tmp_path / "home" / "models" / "gemma-4-12b-tiny-4bit", bits=4,
                                skip_quality_check=True)  # random weights; the gate: test_unified_integration
    quantization = json.loads((folder / "config.json").read_text())["quantization"]
    assert quantization["bits"] == 4 and quantization["model.vision_embedder.patch_dense"]["bits"] == 8

    harness = make_harness(qtbot, tmp_path, monkeypatch, backend=MlxBackend(), load=False,
                           settings=AppSettings(max_tokens=6, temperature=0.0))
    try:
        harness.engine.load_model(str(folder))
        qtbot.waitUntil(lambda: harness.controller.model_info is not None, timeout=LONG)
        controller, window = harness.controller, harness.window
        questions = ((_picture(tmp_path / "garden.png"), "What is in this picture?"),
                     (_recording(tmp_path / "note.wav"), "What do you hear in this recording?"))
        for attachment, question in questions:
            controller.attach_files([str(attachment)])
            window.composer.set_text(question)
            controller.send()
            qtbot.waitUntil(lambda: controller.stream is None, timeout=LONG)
            qtbot.wait(100)
        messages = harness.history.messages(controller.conversation_id)
        assert [m.role for m in messages] == ["user", "assistant", "user", "assistant"]
        assert [a.kind for m in messages[::2] for a in m.attachments] == ["image", "audio"]
        for answer in messages[1::2]:
            assert not answer.partial and answer.stats["generation_tokens"] >= 1
        # the picture is 280 soft tokens of 48-pixel patches; the 2 s recording 50 frames of 40 ms
        assert messages[1].stats["prompt_tokens"] > 280
        assert messages[3].stats["prompt_tokens"] - messages[1].stats["prompt_tokens"] > 50

        window.resize(1100, 900)
        qtbot.wait(200)
        window.transcript.verticalScrollBar().setValue(0)  # the picture, both questions and both answers
        qtbot.wait(200)
        shots = Path(os.environ.get("GEMMA4_MAC_SHOTS") or tmp_path)
        shots.mkdir(parents=True, exist_ok=True)
        assert window.grab().save(str(shots / SHOT_NAME))
    finally:
        harness.controller.shutdown()
        harness.history.close()
