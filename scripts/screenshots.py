"""Save screenshots of the app's main states.

    python scripts/screenshots.py [OUTPUT_FOLDER]      (default: .cache/screenshots)
    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshots.py docs/screenshots   (the committed set)
    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshots.py docs/screenshots --add-model
    python scripts/screenshots.py --real docs/screenshots     (the real engine and real models)
    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshots.py --tools docs/screenshots

Runs offscreen unless a display is set (under Xvfb it uses the virtual screen). The default set uses the
scripted engine (no model needed), so its replies and figures are made up: each picture carries a
"Mock-up" badge. It writes: empty, conversation (image with boxes, code), thinking (expanded), recording,
model manager, settings, and a dark-mode conversation.

`--real` runs the real engine: a tiny random Gemma 4 with the real tokenizer reads a long paste (the
reading-progress bar), and the offline starter model (Gemma 3 270M) answers in the minimum-size window.
Every figure in these pictures is measured on the machine that made them.

`--tools` runs the real engine with a real MCP server (tests/mcp_servers/notes.py over stdio): the tiny model's
reply is forced token by token (a random model writes no sensible call), everything after it is the app's own:
the constrained call, the approval prompt, the MCP call, its result and the answer that follows.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

WINDOW_SIZE = (1280, 820)

PHOTO_ANSWER = """I found both. The red car is parked on the road at the lower left, and the tree stands on the hill to its right:

```json
[
  {"box_2d": [590, 120, 800, 430], "label": "red car"},
  {"box_2d": [250, 640, 640, 860], "label": "tree"}
]
```

To crop the car out of the photo with Pillow, scale the normalised box to pixels:

```python
from PIL import Image

def crop_box(path, box_2d):
    image = Image.open(path)
    ymin, xmin, ymax, xmax = box_2d
    w, h = image.size
    return image.crop((xmin * w // 1000, ymin * h // 1000,
                       xmax * w // 1000, ymax * h // 1000))

crop_box("street.png", [590, 120, 800, 430]).save("car.png")
```

The coordinates are **normalised to 0–1000**, so the same box works at any resolution."""

THOUGHT = ("The person wants to know why the sky is blue. Key idea: Rayleigh scattering — scattering strength "
           "goes as 1/λ⁴, so blue light (≈450 nm) scatters about 5.5× more than red (≈700 nm). Violet scatters "
           "even more, but the Sun emits less violet and our eyes are less sensitive to it. Mention sunsets: "
           "longer path through air removes the blue. Keep it short, with one formula.")

SKY_ANSWER = """The sky is blue because air molecules scatter short wavelengths of sunlight far more than long ones — **Rayleigh scattering**. The scattered intensity grows as

`I ∝ 1 / λ⁴`

so blue light (≈450 nm) is scattered about **5.5 times** more than red light (≈700 nm). That scattered blue light reaches your eyes from every direction of the sky.

- **Why not violet?** The Sun emits less violet, and our eyes are less sensitive to it.
- **Why are sunsets red?** Near the horizon sunlight crosses much more air, so most of the blue is scattered away before it reaches you."""


def _script(request):
    last = request.messages[-1]["content"]
    text = last if isinstance(last, str) else " ".join(p.get("text", "") for p in last if p.get("type") == "text")
    steps = []
    if request.enable_thinking:
        steps += [("thought", w + " ") for w in THOUGHT.split(" ")]
    answer = PHOTO_ANSWER if "car" in text else SKY_ANSWER
    steps += [("answer", answer[i:i + 8]) for i in range(0, len(answer), 8)]
    return steps


def make_photo(path: Path) -> Path:
    """A small illustrated street scene (sky, hills, a tree, a red car) to attach."""
    from PySide6.QtCore import QPointF, QRectF, Qt
    from PySide6.QtGui import QColor, QImage, QLinearGradient, QPainter, QPainterPath

    w, h = 960, 640
    image = QImage(w, h, QImage.Format_RGB32)
    p = QPainter(image)
    p.setRenderHint(QPainter.Antialiasing)
    sky = QLinearGradient(0, 0, 0, h)
    sky.setColorAt(0, QColor("#7EC8F7"))
    sky.setColorAt(1, QColor("#DDF1FD"))
    p.fillRect(0, 0, w, h, sky)
    p.setPen(Qt.NoPen)
    p.setBrush(QColor("#FFE27A"))
    p.drawEllipse(QPointF(150, 110), 52, 52)
    hill = QPainterPath(QPointF(0, 420))
    hill.cubicTo(260, 300, 520, 330, 960, 380)
    hill.lineTo(960, 640)
    hill.lineTo(0, 640)
    p.setBrush(QColor("#7CC46A"))
    p.drawPath(hill)
    p.setBrush(QColor("#8B8F98"))
    p.drawRect(QRectF(0, 470, w, 110))
    p.setBrush(QColor("#F5F5F5"))
    for x in range(20, w, 120):
        p.drawRect(QRectF(x, 520, 60, 8))
    p.setBrush(QColor("#7A4E2D"))
    p.drawRect(QRectF(718, 280, 26, 130))
    p.setBrush(QColor("#3E9B4F"))
    p.drawEllipse(QPointF(731, 240), 92, 84)
    p.setBrush(QColor("#E0403A"))
    body = QPainterPath()
    body.addRoundedRect(QRectF(130, 420, 270, 70), 22, 22)
    body.addRoundedRect(QRectF(185, 383, 150, 60), 24, 24)
    p.drawPath(body.simplified())
    p.setBrush(QColor("#CFE8F7"))
    p.drawRoundedRect(QRectF(200, 395, 56, 36), 8, 8)
    p.drawRoundedRect(QRectF(264, 395, 56, 36), 8, 8)
    p.setBrush(QColor("#222222"))
    for x in (190, 340):
        p.drawEllipse(QPointF(x, 492), 28, 28)
    p.setBrush(QColor("#BBBBBB"))
    for x in (190, 340):
        p.drawEllipse(QPointF(x, 492), 11, 11)
    p.end()
    image.save(str(path))
    return path


def make_fake_models(root: Path) -> None:
    """Model folders with sparse weight files, so sizes and memory fit show without real weights."""
    import json

    gib = 1024 ** 3
    for folder, label, size, extra in (
            ("gemma-4-e2b-it-4bit", "Gemma 4 E2B instruct (4-bit)", 3.4 * gib, {}),
            ("gemma-4-e4b-it-4bit", "Gemma 4 E4B instruct (4-bit)", 5.2 * gib, {}),
            ("gemma-4-31b-it-4bit", "Gemma 4 31B instruct (4-bit)", 18.4 * gib, {}),
            ("starter", "Gemma 3 270M (base, completion only; not a chat model)", 0.24 * gib, {"starter": True})):
        path = root / folder
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps({"gemma4_mac": {"display_name": label, **extra}}))
        (path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "x"} if not extra else {}))
        with open(path / "model.safetensors", "wb") as f:
            f.truncate(int(size))


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--add-model" in argv:  # the real app and engine: first start, adding models (add_model_shots)
        return add_model_shots([a for a in argv if a != "--add-model"])
    out = Path(argv[0]) if argv else ROOT / ".cache" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="gemma4-shots-"))
    os.environ["GEMMA4_MAC_HOME"] = str(home)

    from PySide6.QtCore import QEventLoop
    from PySide6.QtWidgets import QApplication

    from ui.app import build_app
    from gemma4_mac.fake_backend import FakeBackend
    from gemma4_mac.paths import models_dir
    from gemma4_mac.settings import AppSettings, save_settings
    from ui.recorder import FakeAudioSource, Recorder

    make_fake_models(models_dir())
    model_path = str(models_dir() / "gemma-4-e2b-it-4bit")
    save_settings(AppSettings(model_path=model_path))
    photo = make_photo(home / "street.png")
    backend = FakeBackend(_script, token_delay=0.02, model_name="Gemma 4 E2B instruct (4-bit)", context_limit=32768)
    recorder = Recorder(lambda: FakeAudioSource(chunk_seconds=0.05, interval_ms=15))
    app, window, controller = build_app(["--theme", "light"], backend=backend, recorder=recorder)
    window.resize(*WINDOW_SIZE)
    window.show()
    controller.start()

    def settle(seconds: float = 0.3) -> None:
        end = time.time() + seconds
        while time.time() < end:
            app.processEvents(QEventLoop.AllEvents, 20)
            time.sleep(0.01)

    def wait(predicate, timeout: float = 20.0) -> None:
        end = time.time() + timeout
        while not predicate() and time.time() < end:
            app.processEvents(QEventLoop.AllEvents, 20)
            time.sleep(0.005)
        settle(0.3)

    def shoot(widget, name: str) -> None:
        settle(0.2)
        path = out / f"{name}.png"
        widget.grab().save(str(path))
        label_mockup(path)  # the scripted engine's replies and figures are not a model's
        print(path)

    wait(lambda: controller.model_info is not None)
    # a few older conversations for the sidebar
    day = 86400
    for title, age in (("Trip ideas for Lisbon", 0.2), ("Regex for ISO dates", 1.1), ("Summarise Q3 report.pdf", 3),
                       ("SwiftUI list performance", 5), ("Sourdough hydration", 12), ("Explain KV caches", 40)):
        conversation = controller.history.create_conversation(title)
        controller.history.add_message(conversation.id, "user", title)
        controller.history.db.execute("UPDATE conversations SET updated_at=? WHERE id=?",
                                      (time.time() - age * day, conversation.id))
    controller.history.db.commit()
    controller.refresh_sidebar()
    shoot(window, "01-empty")

    controller.attach_files([str(photo)])
    window.composer.set_text("Where is the red car? Also write Python to crop it.")
    settle()
    shoot(window, "02-composer-with-image")
    controller.send()
    wait(lambda: controller.stream is None)
    window.transcript.scroll_to_bottom()
    settle()
    window.transcript.verticalScrollBar().setValue(0)
    shoot(window, "03-conversation-image-code")
    window.transcript.scroll_to_bottom()
    shoot(window, "04-conversation-code")

    controller.new_chat()
    window.composer.set_thinking(True)
    controller.set_thinking(True)
    window.composer.set_text("Why is the sky blue?")
    controller.send()
    wait(lambda: controller.stream is None)
    answer = window.transcript.messages[-1]
    answer.thinking.set_expanded(True)
    settle()
    window.transcript.verticalScrollBar().setValue(0)
    shoot(window, "05-thinking-expanded")

    controller.recorder.start()
    wait(lambda: controller.recorder.samples > 16000 * 7, timeout=10)
    shoot(window, "06-recording")
    controller.recorder.cancel()

    dialog = controller.open_model_manager()
    dialog.resize(640, 600)
    dialog.set_progress({"stage": "download", "fraction": 0.42, "message": "model-00001-of-00002.safetensors"})
    shoot(dialog, "07-model-manager")
    dialog.close()
    settings_dialog = controller.open_settings()
    shoot(settings_dialog, "08-settings")
    settings_dialog.close()

    controller.theme.set_preference("dark")
    window.apply_palette(controller.theme.palette)
    first = controller.history.conversations()
    target = next(c for c in first if "red car" in c.title)
    controller.open_conversation(target.id)
    settle()
    window.transcript.verticalScrollBar().setValue(0)
    shoot(window, "09-dark-conversation")
    controller.new_chat()
    shoot(window, "10-dark-empty")
    controller.shutdown()
    QApplication.processEvents()
    return 0


def _tiny_models(person: Path) -> dict:
    """Real tiny random Gemma 4 models (built with transformers, as the tests make them) where a person keeps
    models: a checkpoint in ~/Downloads, an MLX conversion in ~/Models, Hugging Face's cache (an MLX model, a
    checkpoint, an unfinished download) and LM Studio's folder (a GGUF file)."""
    import shutil

    from convert import convert_checkpoint
    from tests.model_files import hub_repo
    from tests.reference_models import build_gemma4
    from tests.test_convert_support import QUANT_FRIENDLY, write_gemma4_gguf

    checkpoint = person / "Downloads" / "gemma-4-tiny-it"
    model = build_gemma4("e2b", checkpoint, **QUANT_FRIENDLY)
    mine = convert_checkpoint(checkpoint, person / "Models" / "gemma-4-tiny-it-4bit", bits=4,
                              label="Gemma 4 tiny (my 4-bit conversion)")
    hub = person / ".cache" / "huggingface" / "hub"
    hub_repo(hub, "my-org/gemma-4-tiny-it-mlx-4bit",
             lambda target: convert_checkpoint(checkpoint, target, bits=4))
    hub_repo(hub, "my-org/gemma-4-tiny-it", lambda target: shutil.copytree(checkpoint, target))

    def unfinished(target: Path) -> None:
        shutil.copytree(checkpoint, target)
        shards = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
        index = {"weight_map": {"a": shards[0], "b": shards[1]}}
        (target / "model.safetensors").rename(target / shards[0])
        (target / "model.safetensors.index.json").write_text(json.dumps(index))

    hub_repo(hub, "my-org/gemma-4-tiny-it-draft", unfinished)
    lm_studio = person / ".lmstudio" / "models" / "my-org" / "gemma-4-tiny-it-GGUF"
    lm_studio.mkdir(parents=True)
    write_gemma4_gguf(model, lm_studio / "gemma-4-tiny-it-F32.gguf")
    (person / "Pictures").mkdir()
    return {"checkpoint": checkpoint, "mine": mine}


def add_model_shots(argv) -> int:
    """Screenshots of the first start and of adding models, from the real app: the real engine (MlxBackend),
    the real starter model built on first use, and real tiny Gemma 4 models converted by the real converter.
    Writes first-start-starter-progress, add-model-menu, add-model-drop, add-model-converting,
    add-model-manager and add-model-not-a-model."""
    out = Path(argv[0]) if argv else ROOT / ".cache" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="gemma4-add-model-shots-"))
    person = scratch / "person"  # the home folder whose caches the app searches
    os.environ["HOME"] = str(person)
    for variable in ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):
        os.environ.pop(variable, None)
    os.environ["GEMMA4_MAC_HOME"] = str(person / "Library" / "Application Support" / "Gemma 4")
    models = _tiny_models(person)

    from PySide6.QtCore import QEventLoop, QMimeData, QPoint, QPointF, Qt, QUrl
    from PySide6.QtGui import QDragEnterEvent, QDropEvent, QPainter
    from PySide6.QtWidgets import QApplication

    from ui.app import build_app

    app, window, controller = build_app(["--theme", "light"])  # no backend given: the real MlxBackend
    window.resize(*WINDOW_SIZE)
    window.show()

    def settle(seconds: float = 0.3) -> None:
        end = time.time() + seconds
        while time.time() < end:
            app.processEvents(QEventLoop.AllEvents, 20)
            time.sleep(0.01)

    def wait(predicate, timeout: float = 600.0) -> None:
        end = time.time() + timeout
        while not predicate() and time.time() < end:
            app.processEvents(QEventLoop.AllEvents, 20)
            time.sleep(0.01)
        if not predicate():
            raise SystemExit(f"timed out; the banner says: {window.banner.label.text()}")
        settle(0.3)

    def save(pixmap, name: str) -> None:
        path = out / f"{name}.png"
        pixmap.save(str(path))
        print(path)

    grabbed = {}

    def grab_starter_once(report: dict) -> None:  # on the Qt thread, while the starter is being converted
        if report.get("stage") == "convert" and report.get("fraction", 0) >= 0.45 and \
                "starter" not in grabbed:
            app.processEvents(QEventLoop.ExcludeUserInputEvents, 20)
            grabbed["starter"] = window.grab()

    controller.engine.modelProgress.connect(grab_starter_once)
    controller.start()  # no model yet: the starter model is built on this first start
    wait(lambda: controller.model_state in ("ready", "error"))
    save(grabbed["starter"], "first-start-starter-progress")

    sidebar = window.sidebar
    sidebar.show_model_menu()
    settle(0.4)
    shot = window.grab()
    painter = QPainter(shot)
    painter.drawPixmap(window.mapFromGlobal(sidebar.model_menu.pos()), sidebar.model_menu.grab())
    painter.end()
    sidebar.model_menu.hide()
    save(shot, "add-model-menu")

    def drag(path: Path, then_drop: bool):
        mime = QMimeData()
        mime.setUrls([QUrl.fromLocalFile(str(path))])
        window.dragEnterEvent(QDragEnterEvent(QPoint(600, 400), Qt.CopyAction, mime, Qt.LeftButton,
                                              Qt.NoModifier))
        if then_drop:
            window.dropEvent(QDropEvent(QPointF(600, 400), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier))

    drag(models["checkpoint"], then_drop=False)
    settle(0.3)
    save(window.grab(), "add-model-drop")
    window.dragLeaveEvent(None)

    def grab_conversion_once(report: dict) -> None:
        if report.get("stage") == "convert" and report.get("fraction", 0) >= 0.4 and "convert" not in grabbed:
            app.processEvents(QEventLoop.ExcludeUserInputEvents, 20)
            grabbed["convert"] = window.grab()

    controller.engine.conversionProgress.connect(grab_conversion_once)
    drag(models["checkpoint"], then_drop=True)
    wait(lambda: (controller.model_info or {}).get("path", "").endswith("gemma-4-tiny-it-4bit"))
    save(grabbed["convert"], "add-model-converting")

    controller.choose_model_folder = lambda: str(models["mine"])
    dialog = controller.open_model_manager()
    dialog.resize(680, 860)
    dialog.add_folder_button.click()
    wait(lambda: (controller.model_info or {}).get("path") == str(models["mine"])
         and len(dialog.found_rows) >= 4)
    save(dialog.grab(), "add-model-manager")
    dialog.close()

    drag(person / "Pictures", then_drop=True)
    wait(lambda: "cannot be added" in window.banner.label.text())
    save(window.grab(), "add-model-not-a-model")
    controller.shutdown()
    QApplication.processEvents()
    return 0


MOCKUP_LABEL = "Mock-up · scripted engine, figures made up"


def label_mockup(path: Path, text: str = MOCKUP_LABEL) -> None:
    """Draw a "Mock-up" badge (or `text`) in the top-right corner (left of the window's header buttons) of a
    screenshot made with the scripted engine."""
    from PySide6.QtCore import QRectF, Qt
    from PySide6.QtGui import QColor, QFont, QFontMetrics, QImage, QPainter

    image = QImage(str(path))
    if image.isNull():
        return
    painter = QPainter(image)
    painter.setRenderHint(QPainter.Antialiasing)
    font = QFont()
    font.setPixelSize(13)
    font.setBold(True)
    painter.setFont(font)
    width = QFontMetrics(font).horizontalAdvance(text) + 20
    badge = QRectF(image.width() - width - 56, 12, width, 24)
    painter.setPen(Qt.NoPen)
    painter.setBrush(QColor(196, 60, 20, 230))
    painter.drawRoundedRect(badge, 6, 6)
    painter.setPen(QColor("#FFFFFF"))
    painter.drawText(badge, Qt.AlignCenter, text)
    painter.end()
    image.save(str(path))


def long_notes() -> str:
    """A long paste (about 70 KB): what the reading-progress bar is shown with."""
    sections = [f"## {i}. Caching turn {i}\n\nThe cache keeps every token it has read, so each new turn "
                "costs only its new words. Sliding layers keep a window of recent tokens; full layers keep "
                f"all of them, which is why turn {i} still fits." for i in range(1, 400)]
    return "# Notes on caches\n\n" + "\n\n".join(sections)


def real_main(out: Path) -> int:
    """Screenshots from the real engine: the reading bar of a long paste (a tiny random Gemma 4 with the real
    Gemma 4 tokenizer: it reads quickly, so its answer is noise and is not shown) and the minimum-size window
    with an answer of the offline starter model (Gemma 3 270M, a real model that continues text)."""
    out.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="gemma4-real-shots-"))
    os.environ["GEMMA4_MAC_HOME"] = str(home)
    starters = ROOT / ".cache" / "app-starter-models"  # the converted starter, shared with the tests
    starters.mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(starters, target_is_directory=True)

    from PySide6.QtCore import QEventLoop
    from PySide6.QtWidgets import QApplication

    from gemma4_mac.settings import AppSettings, save_settings
    from tests.tiny_chat_model import build_tiny_chat_model
    from ui.app import build_app

    tiny = build_tiny_chat_model(home / "tiny-gemma-4")
    save_settings(AppSettings(model_path=str(tiny), temperature=0.0, max_tokens=24, context_size=32768))
    app, window, controller = build_app(["--theme", "light"])
    window.resize(*WINDOW_SIZE)
    window.show()
    controller.start()

    def wait(predicate, timeout: float = 900.0) -> bool:
        end = time.time() + timeout
        while not predicate() and time.time() < end:
            app.processEvents(QEventLoop.AllEvents, 20)
            time.sleep(0.005)
        return predicate()

    def shoot(name: str) -> None:
        wait(lambda: False, 0.3)
        path = out / f"{name}.png"
        window.grab().save(str(path))
        print(path)

    wait(lambda: controller.model_state in ("ready", "error"), 600)
    if controller.model_state != "ready":
        print("the tiny model did not load", file=sys.stderr)
        return 1
    controller.attach_long_text(long_notes())  # as a paste of more than 3,000 characters becomes
    window.composer.set_text("Summarise these notes in three points.")
    controller.send()
    answer = window.transcript.messages[-1]
    bar = answer.reading.bar
    if not wait(lambda: answer.reading.isVisible() and 0.3 <= bar.value() / bar.maximum() <= 0.8):
        print("the reading bar never showed", file=sys.stderr)
        return 1
    shoot("11-reading-progress")
    controller.stop()
    wait(lambda: controller.stream is None)

    controller.apply_settings(AppSettings(temperature=0.0, max_tokens=24))  # no model chosen: the starter
    if not wait(lambda: (controller.model_info or {}).get("is_starter", False), 900):
        print("the starter model did not load", file=sys.stderr)
        return 1
    controller.new_chat()
    window.resize(720, 480)
    window.banner.dismiss()
    window.composer.set_text("The capital of France is")
    controller.send()
    wait(lambda: controller.stream is None, 900)
    window.transcript.scroll_to_bottom()
    shoot("12-minimum-size")
    controller.shutdown()
    QApplication.processEvents()
    return 0


TOOLS_LABEL = "Scripted reply · real engine and MCP server"
NOTE_CALL = '<|tool_call>call:write_note{title:<|"|>March invoices<|"|>,text:<|"|>The 14 invoices from March ' \
    'come to 1,240.50 EUR; the largest is from Studio Lumen (380 EUR).<|"|>}<tool_call|>'


def tools_main(out: Path) -> int:
    """A tool call waiting for approval, then done: the real engine and a real MCP server over stdio, with the
    tiny model's two replies forced token by token (tests.tiny_chat_model.TurnScriptedModel)."""
    out.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="gemma4-tool-shots-"))
    os.environ["GEMMA4_MAC_HOME"] = str(home)
    notes = home / "Notes"
    notes.mkdir()

    from PySide6.QtCore import QEventLoop
    from PySide6.QtWidgets import QApplication

    from gemma4_mac.settings import AppSettings, save_settings
    from tests.tiny_chat_model import build_tiny_chat_model, scripted_backend
    from ui.app import build_app

    tiny = build_tiny_chat_model(home / "tiny-gemma-4")
    server = {"command": sys.executable, "args": ["-m", "tests.mcp_servers.notes", str(notes)],
              "env": {"PYTHONPATH": str(ROOT)}}
    save_settings(AppSettings(model_path=str(tiny), temperature=0.0, max_tokens=120, mcp_servers={"notes": server},
                              mcp_approval={"notes": "always"}))
    app, window, controller = build_app(["--theme", "light"], backend=scripted_backend(
        ["I'll save that as a note." + NOTE_CALL, "Saved. The note **March invoices** now holds the total, "
         "1,240.50 EUR, and the largest invoice."]))
    window.resize(*WINDOW_SIZE)
    window.show()
    controller.start()

    def wait(predicate, timeout: float = 600.0) -> bool:
        end = time.time() + timeout
        while not predicate() and time.time() < end:
            app.processEvents(QEventLoop.AllEvents, 20)
            time.sleep(0.005)
        return predicate()

    def shoot(name: str) -> None:
        wait(lambda: False, 0.4)
        path = out / f"{name}.png"
        window.grab().save(str(path))
        label_mockup(path, TOOLS_LABEL)
        print(path)

    wait(lambda: controller.model_state in ("ready", "error"))
    if controller.model_state != "ready":
        print("the tiny model did not load", file=sys.stderr)
        return 1
    window.banner.dismiss()
    window.composer.set_text("Keep a note of the March invoices: 14 of them, 1,240.50 EUR in all, the largest "
                             "from Studio Lumen (380 EUR).")
    controller.send()
    answer = window.transcript.messages[-1]
    if not wait(lambda: bool(answer.tool_cards) and answer.tool_cards[0].call.get("status") == "waiting"):
        print("the call never asked for approval", file=sys.stderr)
        return 1
    window.transcript.scroll_to_bottom()
    shoot("14-tool-call-approval")
    answer.tool_cards[0].allow_button.click()
    if not wait(lambda: controller.stream is None) or not (notes / "March invoices.txt").is_file():
        print("the call did not run", file=sys.stderr)
        return 1
    window.transcript.scroll_to_bottom()
    shoot("15-tool-call-done")
    controller.shutdown()
    QApplication.processEvents()
    return 0


if __name__ == "__main__":
    if "--tools" in sys.argv[1:]:
        rest = [a for a in sys.argv[1:] if a != "--tools"]
        sys.exit(tools_main(Path(rest[0]) if rest else ROOT / ".cache" / "screenshots"))
    if "--real" in sys.argv[1:]:
        rest = [a for a in sys.argv[1:] if a != "--real"]
        sys.exit(real_main(Path(rest[0]) if rest else ROOT / ".cache" / "screenshots"))
    sys.exit(main())
