"""Hostile inputs, round two (issue 14) and complete models only (issue 13 part 3): each case is refused at
the door, in words, with nothing left behind. One test per row of docs/hostile-inputs.md's round-two table."""

from __future__ import annotations

import errno
import io
import json
import shutil
import struct
import wave
from pathlib import Path

import numpy as np
import pytest

import mlx.core as mx

from gemma4_mac import documents
from gemma4_mac.attachments import AttachmentError, AttachmentStore
from gemma4_mac.cli import main as cli_main
from gemma4_mac.history import model_messages
from mlx_model.audio_io import AudioLoadError, load_audio
from mlx_model.image_processor import ImageLoadError, open_image
from mlx_model.loader import ModelLoadError, load, load_model
from mlx_model.video import VideoLoadError, load_video
from tests.fuzz import seeds
from tests.hostile_support import complete_model
from tests.pdf_fixtures import write_pdf
from tests.ui_support import harness  # noqa: F401 (fixture)

LATIN = "Café déjà vu, naïve façade, Ærø"


@pytest.fixture
def store(tmp_path):
    return AttachmentStore(tmp_path / "attachments")


def _kept(store, conversation=1) -> list:
    folder = store.root / str(conversation)
    return sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.exists() else []


# ------------------------------------------------------------------- 1. Western single-byte encodings


@pytest.mark.parametrize("text, codec", [
    ((LATIN + "\n") * 3, "latin-1"),  # was read as cp1257: "déją … naļve faēade … Ęrų"
    ("Le cœur a ses raisons “que” la raison ne connaît point — été\n" * 2, "cp1252"),
    ("Grüße aus Köln, naïve façade\n", "mac_roman"),
    ("déjà vu", "latin-1"),
])
def test_western_text_is_read_as_western(text, codec):
    document = documents.decode_text(text.encode(codec))
    assert document.text == text
    assert documents.encoding_label(document.encoding).startswith(("Latin-1", "Windows-1252", "Mac Roman"))


@pytest.mark.parametrize("text, codec", [("Привет мир, как дела? Это тест кодировки.", "cp1251"),
                                         ("Καλημέρα κόσμε, τι κάνεις σήμερα;", "cp1253"),
                                         ("Zażółć gęślą jaźń, mały błąd w ustawieniach.", "cp1250")])
def test_other_scripts_are_still_detected(text, codec):
    assert documents.decode_text(text.encode(codec)).text == text


def test_the_chip_names_the_encoding_and_another_can_be_picked(store):
    attachment = store.import_bytes(1, ((LATIN + "\n") * 3).encode("latin-1"), "notes.txt")
    assert attachment.meta["encoding"] == "latin_1" and LATIN in documents.document_text(
        attachment.path, "text", attachment.meta["encoding"])
    choices = dict(store.encoding_choices(attachment))
    assert "cp1257" in choices and "utf-8" not in choices  # only encodings the bytes are valid in
    store.reread_text(attachment, "cp1257")  # the person picks Baltic on the chip
    assert attachment.meta["encoding"] == "cp1257"
    from gemma4_mac.history import Message

    prompt = model_messages([Message(0, 1, 0, "user", "Summarise", attachments=[attachment])])
    assert "Ęrų" in prompt[0]["content"]  # what is sent is what the chip says
    with pytest.raises(AttachmentError, match="cannot be read as UTF-8.*Choose another"):
        store.reread_text(attachment, "utf-8")
    assert attachment.meta["encoding"] == "cp1257"


def test_the_composer_chip_shows_latin1_and_its_menu_rereads(harness, tmp_path):
    from ui.widgets import attachment_subtitle

    path = tmp_path / "brief.txt"
    path.write_bytes(((LATIN + "\n") * 3).encode("latin-1"))
    harness.controller.attach_files([str(path)])
    chip = harness.window.composer.chips[0]
    assert "Latin-1" in chip.meta.text() and "Latin-1" in chip.toolTip()
    menu = chip.encoding_menu()
    checked = [a.text() for a in menu.actions() if a.isChecked()]
    assert checked == ["Latin-1 (Western European)"]
    next(a for a in menu.actions() if a.text().startswith("Windows-1257")).trigger()
    attachment = harness.controller.pending[0]
    assert attachment.meta["encoding"] == "cp1257"
    assert "Windows-1257" in attachment_subtitle("text", attachment.meta, attachment.name)
    assert "Windows-1257" in harness.window.composer.chips[0].meta.text()


# --------------------------------------------------------------------- 2. refused when attached


def _wav_without_samples() -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16_000)
    return out.getvalue()


def test_a_wav_with_no_samples_is_refused_when_attached(store):
    with pytest.raises(AttachmentError, match="memo.wav contains no audio samples"):
        store.import_bytes(1, _wav_without_samples(), "memo.wav")
    assert _kept(store) == []


@pytest.mark.parametrize("data, name, kind", [(seeds.png(64, 64), "clip.mp4", "PNG"),
                                              (seeds.jpeg(64, 64), "clip.mov", "JPEG")])
def test_a_still_image_attached_as_video_is_refused_when_attached(store, data, name, kind):
    with pytest.raises(AttachmentError, match=f"{name}: it is a still image \\({kind}\\), not a video. "
                                              "Attach it as "
                                              "an image"):
        store.import_bytes(1, data, name)
    assert _kept(store) == []


# ------------------------------------------------------------------ 3. messages, not tracebacks

def _cli(*args) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli_main(["ask", *args], out=out, err=err)
    return code, err.getvalue()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return complete_model(tmp_path_factory.mktemp("tiny") / "model")


def _edited(tiny_model: Path, tmp_path: Path, **changes) -> Path:
    folder = tmp_path / "edited"
    shutil.copytree(tiny_model, folder)
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_the_tiny_model_answers_on_the_cli(tiny_model):
    code, err = _cli("--model", str(tiny_model), "--raw", "--max-tokens", "2", "w5 w6")
    assert code == 0, err


@pytest.mark.parametrize("changes, reason", [
    ({"intermediate_size": 160}, "does not match its config.json: .*mlp.* the weights and config do not "
                                 "belong"),
    ({"hidden_size": None, "intermediate_size": None, "num_hidden_layers": None},
     "config.json has a value the model cannot use: layer_types must list 30 entries"),
    ({"hidden_size": "64"}, "config.json has a value the model cannot use: hidden_size must be a whole "
                            "number, not '64' \\(text\\)"),
    ({"rms_norm_eps": None}, None),  # a missing key is the default; a null one is named
    ({"rope_parameters": [1, 2]}, "rope_parameters must be an object"),
    ({"vocab_size": 2 ** 40}, "vocab_size is 1,099,511,627,776, far beyond any real model"),
])
def test_weights_that_do_not_match_the_config_are_a_message_on_the_cli(tiny_model, tmp_path, changes, reason):
    """Regression: ValueError from MLX's quantize ("... divisible by ... group size 64"), IndexError,
    TypeError."""
    folder = _edited(tiny_model, tmp_path, **changes)
    if reason is None:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "rms_norm_eps": None}))
        reason = "rms_norm_eps must be a number, not None \\(null\\)"
    code, err = _cli("--model", str(folder), "--raw", "--max-tokens", "1", "w5")
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err
    assert __import__("re").search(reason, err), err


def _hf_source(folder: Path, config_changes: dict | None = None, weights: bytes | None = None) -> Path:
    """A tiny float checkpoint folder (complete: tokenizer and chat template) for the converter."""
    complete_model(folder, quantized=False)
    config = {**json.loads((folder / "config.json").read_text()), **(config_changes or {})}
    (folder / "config.json").write_text(json.dumps(config))
    if weights is not None:
        (folder / "model.safetensors").write_bytes(weights)
    return folder


def test_an_absurd_safetensors_header_length_is_named_not_out_of_memory(tmp_path):
    """Regression: a length field of 2^62 made the converter read 2^62 bytes (MemoryError)."""
    from convert import CheckpointIndexError, convert_checkpoint
    from convert.hf_source import safetensors_layout

    data = seeds.safetensors()
    source = _hf_source(tmp_path / "src", weights=struct.pack("<Q", 2 ** 62) + data[8:])
    with pytest.raises(CheckpointIndexError, match="header claims 4,611,686,018,427,387,904 bytes but the "
                                                   "file has"):
        safetensors_layout(source / "model.safetensors")
    with pytest.raises(CheckpointIndexError, match="model.safetensors: its header claims"):
        convert_checkpoint(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    header = json.dumps({"a.weight": {"dtype": "F32", "shape": [3, 9], "data_offsets": [0, 48]}}).encode()
    (source / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 48)
    with pytest.raises(CheckpointIndexError, match="tensor 'a.weight' has 48 bytes but its shape"):
        safetensors_layout(source / "model.safetensors")


@pytest.mark.parametrize("changes, reason", [
    ({"vocab_size": 10 ** 12}, "vocab_size is 1,000,000,000,000, far beyond any real"),  # was OverflowError
    ({"hidden_size": "64"}, "hidden_size must be a whole number, not '64'"),  # was "unsupported operand"
    ({"num_attention_heads": 0}, "num_attention_heads is 0; it must be at least 1"),  # was ZeroDivisionError
    ({"layer_types": "sliding"}, "layer_types must be a list"),
])
def test_the_converter_names_a_bad_config_value_and_its_file(tmp_path, changes, reason):
    from convert import UnsupportedSourceError, convert_checkpoint

    source = _hf_source(tmp_path / "src", changes)
    with pytest.raises(UnsupportedSourceError, match=f"src/config.json: {reason}"):
        convert_checkpoint(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------- 4. misleading messages


def test_a_pdf_passed_as_video_says_it_is_a_document(tmp_path, store):
    """Regression: FFmpeg reads a PDF with a JPEG inside as MJPEG; the message said "probably truncated"."""
    from PIL import Image

    pdf = tmp_path / "report.mp4"
    Image.new("RGB", (200, 100), (200, 30, 30)).save(tmp_path / "scan.pdf", "PDF")
    shutil.copy(tmp_path / "scan.pdf", pdf)
    for path in (pdf, write_pdf(tmp_path / "text.pdf", ["Quarterly figures"])):
        with pytest.raises(VideoLoadError, match="it is a PDF document, not a video. Attach it as a "
                                                 "document"):
            load_video(path, num_frames=4)
    with pytest.raises(AttachmentError, match="report.mp4: it is a PDF document"):
        store.import_file(1, pdf)


def test_an_oversized_png_as_video_says_still_image_not_corrupt(tmp_path):
    from PIL import Image

    path = tmp_path / "poster.mov"
    Image.new("RGB", (12000, 9000)).save(path, "PNG")
    with pytest.raises(VideoLoadError, match="still image \\(PNG\\), not a video"):
        load_video(path, num_frames=4)


def _operation_not_permitted(*args, **kwargs):
    raise PermissionError(errno.EPERM, "Operation not permitted", str(args[0]) if args else "")


def test_an_unreadable_file_is_explained_not_errno(tmp_path, store, monkeypatch):
    """macOS privacy (TCC) refuses with EPERM: "[Errno 1] Operation not permitted" was shown as is."""
    import builtins

    photo, memo, clip, notes = (tmp_path / n for n in ("photo.png", "memo.wav", "clip.mp4", "notes.txt"))
    photo.write_bytes(seeds.png())
    memo.write_bytes(seeds.wav())
    clip.write_bytes(seeds.mp4())
    notes.write_text("hello")
    real_open = builtins.open
    blocked = {str(p) for p in (photo, memo, clip, notes)}

    def guarded_open(file, *args, **kwargs):
        if str(file) in blocked:
            _operation_not_permitted(file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(Path, "read_bytes", lambda self: _operation_not_permitted(self)
                        if str(self) in blocked else real_open(self, "rb").read())
    import PIL.Image

    real_pil_open = PIL.Image.open
    monkeypatch.setattr(PIL.Image, "open", lambda fp, *a, **k: _operation_not_permitted(fp)
                        if str(fp) in blocked else real_pil_open(fp, *a, **k))
    calls = [lambda: open_image(photo), lambda: load_audio(str(memo)), lambda: load_video(clip),
             lambda: documents.read_text_document(notes), lambda: store.import_file(1, notes)]
    errors = (ImageLoadError, AudioLoadError, VideoLoadError, documents.DocumentError, AttachmentError)
    for call in calls:
        with pytest.raises(errors) as caught:
            call()
        message = str(caught.value)
        assert "[Errno" not in message and "not allowed to open it" in message
        assert "Privacy & Security" in message
    assert _kept(store) == []


def test_a_gguf_file_passed_as_model_says_how_to_convert_it(tmp_path):
    gguf = tmp_path / "gemma-3-270m.gguf"
    gguf.write_bytes(seeds.gguf())
    code, err = _cli("--model", str(gguf), "hello")
    assert code == 2 and "does not exist" not in err
    assert f"{gguf} is a GGUF file" in err
    assert f"python -m convert {gguf} {tmp_path / 'gemma-3-270m'}-mlx" in err
    from gemma4_mac.server.app import main as serve_main

    err_stream = io.StringIO()
    assert serve_main(["--model", str(gguf), "--port", "0"], err=err_stream) == 2
    assert "python -m convert" in err_stream.getvalue()


# ---------------------------------------------------------------------------- 5. left behind


def test_stale_work_folders_are_counted_then_cleaned_and_running_ones_kept(tmp_path):
    """Regression: a killed conversion's `.NAME.partial-*` folder was removed only if NAME was converted
    again."""
    import os
    import time

    from convert import partials
    from gemma4_mac import model_manager

    models = tmp_path / "models"
    stale = models / ".gemma-4-e2b-4bit.partial-1a2b3c4d"
    stale.mkdir(parents=True)
    (stale / "part-00001.safetensors").write_bytes(b"\0" * 176_000)
    os.utime(stale, (time.time() - 3600, time.time() - 3600))  # an old converter's folder: no lock file
    running = models / ".other.partial-5e6f7a8b"
    running.mkdir()
    descriptor = partials.lock(running)  # a conversion still writing
    (running / "part-00001.safetensors").write_bytes(b"\0" * 1000)
    try:
        found = {f.path.name: f for f in model_manager.unfinished_conversions(models)}
        assert found[stale.name].size_bytes >= 176_000 and not found[stale.name].running
        assert found[running.name].running
        assert model_manager.unfinished_bytes(models) == found[stale.name].size_bytes
        source = _hf_source(tmp_path / "src")
        from convert import convert_checkpoint

        convert_checkpoint(source, models / "tiny", quantize=False, dtype="float32")  # another name
        assert not stale.exists() and running.is_dir()
        assert sorted(p.name for p in (models / "tiny").iterdir() if p.name.startswith(".")) == []
    finally:
        partials.release(descriptor)
    assert model_manager.clean_unfinished_conversions(models) > 0 and not running.exists()


@pytest.mark.slow  # a child process converts until it is killed
def test_a_killed_conversion_is_counted_and_cleaned_by_the_next_one(tmp_path):
    from gemma4_mac import model_manager
    from tests.test_faults import CONVERT_UNTIL_KILLED, _run_until

    source = _hf_source(tmp_path / "src")
    models = tmp_path / "models"
    process = _run_until(CONVERT_UNTIL_KILLED, [str(source), str(models / "killed")], "converting",
                         timeout=120)
    try:
        assert [f.running for f in model_manager.unfinished_conversions(models)] == [True]
        assert model_manager.unfinished_bytes(models) == 0  # a running conversion is not "left behind"
    finally:
        process.kill()
        process.wait(timeout=10)
    [left] = model_manager.unfinished_conversions(models)
    assert not left.running and model_manager.unfinished_bytes(models) == left.size_bytes > 0
    from convert import convert_checkpoint

    convert_checkpoint(source, models / "next", quantize=False, dtype="float32")
    assert model_manager.unfinished_conversions(models) == []
    assert sorted(p.name for p in models.iterdir()) == ["next"]


# ------------------------------------------------------------ issue 13.3: complete models only


def test_a_checkpoint_without_a_tokenizer_is_refused_before_converting(tmp_path):
    from convert import IncompleteSourceError, convert_checkpoint

    source = _hf_source(tmp_path / "src")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (source / name).unlink()
    with pytest.raises(IncompleteSourceError, match="src lacks a tokenizer \\(tokenizer.json or "
                                                    "tokenizer.model\\)"
                                                    ".*nothing was converted.*Hugging Face repo"):
        convert_checkpoint(source, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # nothing at or beside the destination


def test_a_chat_model_needs_a_chat_template_and_a_base_model_does_not(tmp_path):
    from convert import IncompleteSourceError, convert_checkpoint
    from convert.__main__ import main as convert_main

    source = _hf_source(tmp_path / "src")
    (source / "chat_template.jinja").unlink()
    with pytest.raises(IncompleteSourceError, match="lacks a chat template.*--base-model"):
        convert_checkpoint(source, tmp_path / "chat")
    assert convert_main([str(source), str(tmp_path / "base"), "--base-model", "--bits", "8"]) == 0
    assert json.loads((tmp_path / "base" / "config.json").read_text())["gemma4_mac"]["chat"] is False
    model, processor = load(tmp_path / "base")  # complete as a base model
    assert processor is not None


def test_towers_need_their_processor_settings(tmp_path):
    from convert import IncompleteSourceError, convert_checkpoint

    config = json.loads(seeds.config_json(multimodal=True))
    config.pop("quantization")
    source = complete_model(tmp_path / "src", quantized=False, config=config)
    with pytest.raises(IncompleteSourceError, match="processor settings of its vision and audio towers"):
        convert_checkpoint(source, tmp_path / "out")
    (source / "processor_config.json").write_text("{}")
    load(convert_checkpoint(source, tmp_path / "out", quantize=False, dtype="float32"))


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    from tests.reference_models import build_gemma4
    from tests.test_convert_support import write_gemma4_gguf

    folder = tmp_path_factory.mktemp("gguf")
    return write_gemma4_gguf(build_gemma4("e2b", folder / "hf"), folder / "tiny.gguf")


def _gguf_metadata_edited(monkeypatch, edit) -> None:
    from convert.gguf_reader import GGUFFile

    real_init = GGUFFile.__init__

    def edited(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        edit(self.metadata)

    monkeypatch.setattr(GGUFFile, "__init__", edited)


def test_a_gguf_without_a_chat_template_needs_base_model(tiny_gguf, tmp_path, monkeypatch):
    from convert import IncompleteSourceError, convert_checkpoint

    _gguf_metadata_edited(monkeypatch, lambda metadata: metadata.pop("tokenizer.chat_template", None))
    with pytest.raises(IncompleteSourceError, match="tiny.gguf carries no chat template.*-it.*--base-model"):
        convert_checkpoint(tiny_gguf, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_gguf_metadata_of_the_wrong_type_is_named(tiny_gguf, tmp_path, monkeypatch):
    from convert import UnsupportedSourceError, convert_checkpoint

    _gguf_metadata_edited(monkeypatch, lambda metadata: metadata.update({"gemma4.block_count": "many"}))
    with pytest.raises(UnsupportedSourceError, match="tiny.gguf: its gemma4 metadata holds a value of the wrong "
                                                     "type or range .*Download it again"):
        convert_checkpoint(tiny_gguf, tmp_path / "out")  # was a ValueError traceback
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("remove, missing", [(("tokenizer.json",), "a tokenizer"),
                                             (("chat_template.jinja",), "a chat template")])
def test_loading_refuses_an_incomplete_folder_everywhere(tiny_model, tmp_path, remove, missing):
    """The CLI, the server and the app load through mlx_model.load: one check, before any weight is read."""
    from mlx_model.loader import IncompleteModelError

    folder = tmp_path / "incomplete"
    shutil.copytree(tiny_model, folder)
    for name in remove:
        (folder / name).unlink()
    with pytest.raises(IncompleteModelError, match=f"is not a complete model: it lacks {missing}"):
        load(folder)
    assert load_model(folder) is not None  # the weights themselves are fine
    code, err = _cli("--model", str(folder), "--raw", "hi")
    assert code == 2 and f"it lacks {missing}" in err
    from gemma4_mac.server.app import load_slot

    with pytest.raises(ModelLoadError, match=f"it lacks {missing}"):
        load_slot(folder)
    from gemma4_mac.engine import EngineError, MlxBackend

    with pytest.raises(EngineError, match=f"it lacks {missing}"):
        MlxBackend().load(folder)


def test_a_hub_conversion_brings_the_tokenizer_along(tmp_path, monkeypatch):
    """Converting a repo id downloads the repo's tokenizer and chat template with the weights."""
    from convert import convert_checkpoint
    from convert.hub_download import DOWNLOADS_ENV
    from tests.fake_hub import FakeHub

    repo = _hf_source(tmp_path / "repo")
    monkeypatch.setenv(DOWNLOADS_ENV, str(tmp_path / "downloads"))
    with FakeHub("someone/tiny-gemma", repo) as hub:
        hub.use(monkeypatch)
        converted = convert_checkpoint("someone/tiny-gemma", tmp_path / "out", quantize=False,
                                       dtype="float32")
    assert {"tokenizer.json", "chat_template.jinja"} <= {p.name for p in converted.iterdir()}
    model, processor = load(converted)
    assert np.isfinite(np.array(model(mx.array([[2, 5, 6]])))).all()
