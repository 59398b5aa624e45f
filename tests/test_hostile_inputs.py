"""Hostile and broken inputs through the real readers: each ends in the reader's own error with a message
a person can act on, or in a usable result. One test per row of docs/hostile-inputs.md."""

from __future__ import annotations

import io
import json
import struct
import time
import wave

import av
import numpy as np
import pytest

import mlx.core as mx

from convert.errors import GGUFFormatError
from convert.gguf_reader import GGUFFile
from gemma4_mac import documents
from gemma4_mac.attachments import AttachmentError, AttachmentStore
from gemma4_mac.document_cache import DocumentCacheStore
from gemma4_mac.documents import DocumentError
from gemma4_mac.history import HistoryError, HistoryStore, model_messages
from mlx_model.audio_io import AudioLoadError, load_audio
from mlx_model.image_processor import ImageLoadError, ImageProcessor, open_image
from mlx_model.loader import ModelLoadError, load_model, read_weights
from mlx_model.video import VideoLoadError, load_video
from tests.fuzz import seeds


@pytest.fixture
def store(tmp_path):
    return AttachmentStore(tmp_path / "attachments")


def _kept(store, conversation=1) -> list:
    folder = store.root / str(conversation)
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ------------------------------------------------------------------------------------------ images


def test_image_zero_bytes(store):
    with pytest.raises(ImageLoadError, match="empty"):
        open_image(b"", name="photo.png")
    with pytest.raises(AttachmentError, match="photo.png is empty"):
        store.import_bytes(1, b"", "photo.png")
    assert _kept(store) == []


def test_image_truncated(store):
    data = seeds.png(64, 64)
    with pytest.raises(ImageLoadError, match="truncated or corrupt"):
        open_image(data[: len(data) // 2], name="half.png")
    with pytest.raises(AttachmentError, match="half.png.*truncated or corrupt"):
        store.import_bytes(1, data[: len(data) // 2], "half.png")
    assert _kept(store) == []


def test_image_wrong_extension(store):
    with pytest.raises(ImageLoadError, match="attach it as a document"):
        open_image(seeds.pdf(), name="report.png")
    jpeg_named_png = store.import_bytes(1, seeds.jpeg(24, 16), "photo.png")  # content decides, not the name
    assert jpeg_named_png.meta == {"width": 24, "height": 16}


def test_image_corrupt_header():
    data = bytearray(seeds.png())
    data[16:24] = b"\xff" * 8  # width and height in IHDR, now with a wrong CRC
    with pytest.raises(ImageLoadError, match="truncated or corrupt|not an image"):
        open_image(bytes(data), name="broken.png")


def test_image_decompression_bomb(store):
    bomb, text_bomb = seeds.png_claiming(40_000, 40_000), seeds.png_text_bomb(64)
    started = time.monotonic()
    with pytest.raises(ImageLoadError, match="megapixel limit"):
        open_image(bomb, name="bomb.png")
    with pytest.raises(AttachmentError, match="megapixel limit"):  # was an uncaught DecompressionBombError
        store.import_bytes(1, bomb, "bomb.png")
    with pytest.raises(ImageLoadError, match="truncated or corrupt"):  # 64 MB of zTXt in 70 kB
        open_image(text_bomb, name="text-bomb.png")
    assert time.monotonic() - started < 2.0 and _kept(store) == []


def test_image_huge_dimensions():
    with pytest.raises(ImageLoadError, match="larger than"):
        open_image(seeds.png_claiming(70_000, 1), name="strip.png")
    with pytest.raises(ImageLoadError, match="10000x10000"):
        open_image(seeds.png_claiming(10_000, 10_000), name="poster.png")
    tall = open_image(seeds.png(2, 3000), name="tall.png")  # extreme aspect ratio, still one patch row wide
    batch = ImageProcessor(max_soft_tokens=70).preprocess(tall)
    assert batch.num_soft_tokens[0] > 0


def test_screenshot_paste(store):
    pasted = store.import_bytes(1, seeds.png(40, 30), "Screenshot.png", "image")
    assert pasted.meta == {"width": 40, "height": 30}
    for data in (b"", b"\x89PNG\r\n\x1a\n", seeds.png_claiming(40_000, 40_000)):
        with pytest.raises(AttachmentError, match="Screenshot"):
            store.import_bytes(2, data, "Screenshot.png", "image")
    assert _kept(store, 2) == []


# --------------------------------------------------------------------------------------------- PDF


def test_pdf_zero_bytes_and_wrong_extension(store, tmp_path):
    with pytest.raises(AttachmentError, match="empty"):
        store.import_bytes(1, b"", "report.pdf")
    with pytest.raises(DocumentError, match="picture.pdf cannot be opened: it is damaged or not a PDF"):
        store.import_bytes(1, seeds.png(), "picture.pdf")
    assert _kept(store) == []


def test_pdf_truncated_or_damaged(tmp_path):
    data = seeds.pdf(("First page text", "Second page text"))
    for name, broken in {"cut.pdf": data[: len(data) // 2], "header-only.pdf": b"%PDF-1.7\n",
                         "garbage.pdf": b"%PDF-1.4\n" + bytes(range(256)) * 8}.items():
        (tmp_path / name).write_bytes(broken)
        try:
            text = documents.extract_pdf_text(tmp_path / name)  # PDFium repairs what it can
        except DocumentError as error:
            assert name in str(error)
        else:
            assert isinstance(text, str)


def test_pdf_password_protected(store, tmp_path):
    path = tmp_path / "payslip.pdf"
    path.write_bytes(seeds.encrypted_pdf())
    with pytest.raises(DocumentError, match="payslip.pdf cannot be opened: it is password-protected"):
        store.import_file(1, path)
    assert _kept(store) == []


def test_pdf_damaged_page_is_a_document_error(tmp_path):
    # regression (fuzz): a page object that fails to load raised a bare PdfiumError
    data = seeds.pdf(("one", "two")).replace(b"/Type /Page /Parent", b"/Type /Pagx /Parent", 1)
    path = tmp_path / "pages.pdf"
    path.write_bytes(data)
    try:
        pages = documents.extract_pdf_pages(path)
    except DocumentError as error:
        assert "pages.pdf" in str(error)
    else:
        assert isinstance(pages, list)


def test_pdf_scan_without_text(tmp_path):
    path = documents.Path(tmp_path / "scan.pdf")
    path.write_bytes(seeds.pdf(("",)))
    with pytest.raises(DocumentError, match="no text layer"):
        documents.extract_pdf_text(path)


# ---------------------------------------------------------------------------------- text and code


def test_text_zero_bytes(store):
    with pytest.raises(AttachmentError, match="notes.md is empty"):
        store.import_bytes(1, b"", "notes.md")


def test_text_non_utf8(store):
    latin = store.import_bytes(1, "Grüße aus Köln, café crème".encode("cp1252"), "brief.txt")
    assert latin.meta["encoding"] in ("cp1252", "latin_1", "iso8859_15")
    assert "Grüße aus Köln" in documents.document_text(latin.path, "text")
    utf16 = store.import_bytes(1, "def f():\n    return 'ünï'\n".encode("utf-16"), "code.py")
    assert utf16.meta["encoding"] == "utf-16"
    # regression (fuzz): UTF-16 cut mid-character raised UnicodeDecodeError
    cut = documents.decode_text("half a character".encode("utf-16")[:-1])
    assert cut.text.startswith("half a characte")


def test_text_binary_with_text_extension(store, tmp_path):
    with pytest.raises(DocumentError, match="program.py is not a text file"):
        store.import_bytes(1, seeds.png() * 4, "program.py")
    path = tmp_path / "huge.log"
    with open(path, "wb") as handle:  # sparse: the size check refuses it before reading
        handle.truncate(documents.MAX_TEXT_BYTES + 1)
    with pytest.raises(DocumentError, match="huge.log is 52 MB"):
        documents.read_text_document(path)


def test_binary_pasted_as_text(store):
    with pytest.raises(DocumentError, match="not a text file"):
        store.import_text(1, seeds.png().decode("latin-1") * 20)
    # regression: a paste with a lone surrogate (half an emoji) raised UnicodeEncodeError
    kept = store.import_text(1, "broken emoji \ud83d here " * 300)
    assert "broken emoji" in documents.document_text(kept.path, "text")


def test_document_larger_than_the_context(store):
    book = store.import_text(1, "All work and no play. " * 20_000, "book.txt")
    assert book.meta["tokens"] > 100_000
    book.meta["max_chars"] = 4_000  # what the window's "trim to fit" choice records
    history = HistoryStore(store.root.parent / "history.sqlite3", store.root)
    conversation = history.create_conversation()
    history.add_message(conversation.id, "user", "Summarise", attachments=[book])
    prompt = model_messages(history.messages(conversation.id))[0]["content"]
    assert len(prompt) < 5_000 and "the rest of book.txt was left out to fit the context" in prompt


# ------------------------------------------------------------------------------------------- audio


def test_audio_zero_bytes_and_truncated(store):
    with pytest.raises(AudioLoadError, match="empty"):
        load_audio(b"", name="memo.wav")
    data = seeds.wav(seconds=2.0)
    with pytest.raises(AudioLoadError, match="memo.wav is truncated"):
        load_audio(data[: len(data) // 2], name="memo.wav")
    flac = seeds.encoded_audio("flac", seconds=3.0)
    try:
        samples, _ = load_audio(flac[: len(flac) // 2], name="cut.flac")
    except AudioLoadError as error:
        assert "cut.flac" in str(error)
    else:
        assert samples.size < 3 * 16_000  # what was there, never invented samples


def test_audio_wrong_extension_and_corrupt_header(store):
    samples, info = load_audio(seeds.encoded_audio("mp3"), name="song.wav")  # content decides
    assert info.container == "mp3" and samples.size > 0
    with pytest.raises(AudioLoadError, match="photo.wav (cannot be read as audio|has no audio track)"):
        load_audio(seeds.png(), name="photo.wav")
    header = bytearray(seeds.wav())
    header[20:36] = b"\xff" * 16  # the fmt chunk: format, channels, rate, block size
    with pytest.raises(AudioLoadError, match="broken.wav"):
        load_audio(bytes(header), name="broken.wav")
    with pytest.raises(AttachmentError, match="photo.m4a (cannot be read as audio|has no audio track)"):
        store.import_bytes(1, seeds.png(), "photo.m4a")
    assert _kept(store) == []


@pytest.mark.parametrize("rate, channels, width", [(8_000, 1, 1), (11_025, 2, 2), (22_050, 6, 2), (44_100, 8, 4),
                                                   (96_000, 2, 2), (384_000, 1, 2), (1_000, 3, 2)])
def test_audio_odd_rates_and_channel_counts(rate, channels, width):
    samples, info = load_audio(seeds.wav(seconds=0.5, rate=rate, channels=channels, sample_width=width))
    assert (info.original_rate, info.original_channels) == (rate, channels)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(samples.size - 8_000) <= 16 and np.abs(samples).max() <= 1.0


def test_audio_nan_samples_are_refused():
    out = io.BytesIO()
    with av.open(out, "w", format="wav") as container:
        stream = container.add_stream("pcm_f32le", rate=16_000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.full((1, 1600), np.nan, np.float32), format="flt", layout="mono")
        frame.sample_rate = 16_000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    with pytest.raises(AudioLoadError, match="NaN"):
        load_audio(out.getvalue(), name="nan.wav")


@pytest.fixture(scope="module")
def two_hour_flac() -> bytes:
    """Two hours of 8 kHz silence as FLAC (1.3 MB)."""
    out = io.BytesIO()
    with av.open(out, "w", format="flac") as container:
        stream = container.add_stream("flac", rate=8_000, layout="mono")
        minute = np.zeros((1, 8_000 * 60), np.int16)
        for i in range(120):
            frame = av.AudioFrame.from_ndarray(minute, format="s16", layout="mono")
            frame.sample_rate, frame.pts = 8_000, i * minute.shape[1]
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


@pytest.mark.slow
def test_audio_hours_long(two_hour_flac, store):
    started = time.monotonic()
    with pytest.raises(AudioLoadError, match="is 120.0 min long, over the limit of 10.0 min"):
        load_audio(two_hour_flac, name="lecture.flac")
    assert time.monotonic() - started < 1.0  # refused from the header, nothing decoded
    samples, info = load_audio(two_hour_flac, name="lecture.flac", truncate=True)
    assert info.truncated and samples.size == 600 * 16_000
    with pytest.raises(AttachmentError, match="is 120.0 min long, over the limit of 10.0 min"):
        store.import_bytes(1, two_hour_flac, "lecture.flac")  # refused when attached, as sending would


# ------------------------------------------------------------------------------------------- video


def test_video_zero_bytes_truncated_and_wrong_extension(tmp_path, store):
    good = seeds.mp4(frames=12)
    files = {"empty.mp4": (b"", "empty"), "cut.mp4": (good[: len(good) // 3], "truncated or corrupt|no frames"),
             "notes.mov": (b"meeting notes\n" * 50, "not a video"),
             "corrupt.mp4": (good[:8] + b"\xff" * 64 + good[72:], "truncated or corrupt|not a video|no frames")}
    for name, (data, reason) in files.items():
        (tmp_path / name).write_bytes(data)
        started = time.monotonic()
        with pytest.raises(VideoLoadError, match=reason):
            load_video(tmp_path / name, num_frames=4)
        assert time.monotonic() - started < 5.0, name
    audio_only = tmp_path / "voice.mp4"
    audio_only.write_bytes(seeds.encoded_audio("mp3"))
    with pytest.raises(VideoLoadError, match="no video track"):
        load_video(audio_only)
    with pytest.raises(AttachmentError, match="Cannot open video notes.mov: it is not a video"):
        store.import_bytes(1, b"meeting notes\n" * 50, "notes.mov")  # attach runs the checks sending runs


def test_video_extreme_dimensions(tmp_path):
    path = tmp_path / "banner.mp4"
    path.write_bytes(seeds.mp4(frames=3, size=(1024, 16)))
    inputs = load_video(path, num_frames=2)
    assert inputs.pixel_values.shape[0] == 2 and inputs.num_soft_tokens_per_frame > 0


@pytest.mark.slow
def test_video_hours_long(tmp_path, store):
    """Two hours at 1 frame/s: 32 frames are sampled across it by seeking, in bounded time."""
    path = tmp_path / "meeting.mp4"
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=1)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        stream.codec_context.gop_size = 60
        for i in range(7200):
            image = np.full((16, 16, 3), i % 256, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    started = time.monotonic()
    inputs = load_video(path)
    assert len(inputs.frame_indices) == 32 and inputs.timestamps[-1] > 6000
    assert time.monotonic() - started < 30
    assert store.import_file(1, path).meta["duration"] == pytest.approx(7200, abs=2)


# ------------------------------------------------------------------------------------- model files


def _gguf_with(tmp_path, edit) -> GGUFFile:
    data = bytearray(seeds.gguf())
    edit(data)
    path = tmp_path / "model.gguf"
    path.write_bytes(bytes(data))
    return GGUFFile(path)


def test_gguf_zero_bytes_truncated_wrong_extension_corrupt_header(tmp_path):
    data = seeds.gguf()
    cases = {"empty.gguf": (b"", "cannot open"), "cut.gguf": (data[:200], "truncated|ends inside"),
             "weights.gguf": (seeds.safetensors(), "not a GGUF file"),
             "future.gguf": (data[:4] + struct.pack("<I", 99) + data[8:], "version 99")}
    for name, (content, reason) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(GGUFFormatError, match=reason):
            GGUFFile(tmp_path / name)
    assert set(GGUFFile(_write(tmp_path / "ok.gguf", data)).tensors) == {"token_embd.weight", "blk.0.attn_q.weight"}


def _write(path, data):
    path.write_bytes(data)
    return path


def test_gguf_damaged_tensor_directory(tmp_path):
    """Regressions (fuzz): dims of 0, more than 4 dims, or a product overflowing int64 ran out of memory
    or raised IndexError; general.alignment 0 divided by zero."""
    data = seeds.gguf()
    directory = data.index(b"token_embd.weight") + len(b"token_embd.weight")

    def set_dims(n_dims, dims):
        def edit(buffer):
            buffer[directory:directory + 4] = struct.pack("<I", n_dims)
            for i, dim in enumerate(dims):
                buffer[directory + 4 + 8 * i: directory + 12 + 8 * i] = struct.pack("<Q", dim)
        return edit

    for edit in (set_dims(2, (32, 0)), set_dims(2, (32, 2 ** 62)), set_dims(0, ()), set_dims(9, ())):
        with pytest.raises(GGUFFormatError, match="damaged|truncated|ends inside"):
            _gguf_with(tmp_path, edit)


def _model_folder(tmp_path, weights: bytes, config=None):
    from tests.tiny_chat_model import TINY_CHAT_CONFIG

    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "config.json").write_text(json.dumps(TINY_CHAT_CONFIG) if config is None else config)
    return folder


def test_safetensors_zero_bytes_truncated_wrong_extension_corrupt_header(tmp_path):
    data = seeds.safetensors()
    cases = {"empty": b"", "truncated": data[: len(data) - 20], "gguf renamed": seeds.gguf(),
             "header length": struct.pack("<Q", 2 ** 60) + data[8:], "header json": data[:8] + b"{" * 40 + data[48:]}
    for case, content in cases.items():
        folder = _model_folder(tmp_path, content)
        with pytest.raises(ModelLoadError, match="model.safetensors cannot be read.*damaged or incomplete"):
            weights = read_weights(folder)
            mx.eval(list(weights.values()))


def test_safetensors_shard_missing(tmp_path):
    folder = _model_folder(tmp_path, seeds.safetensors())
    index = {"weight_map": {"a.weight": "model-00001-of-00002.safetensors", "b.bias": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="incomplete: shard.*model-00001-of-00002.*missing"):
        load_model(folder)


@pytest.mark.parametrize("config, reason", [
    ("", "not valid JSON"), ('{"model_type": "gemma4_te', "not valid JSON"), (b"\xff\xfe{}", "not valid JSON"),
    ("[]", "holds a JSON list"), ("null", "holds a JSON NoneType"),
    ('{"model_type": "llama"}', "not a Gemma 4 or Gemma 3 model"),
])
def test_config_json_broken(tmp_path, config, reason):
    folder = _model_folder(tmp_path, seeds.safetensors(), "")
    (folder / "config.json").write_bytes(config if isinstance(config, bytes) else config.encode())
    with pytest.raises(ModelLoadError, match=reason):
        load_model(folder)


@pytest.mark.parametrize("field, value", [("hidden_size", "big"), ("hidden_size", 10 ** 12)])
def test_config_json_wrong_values(tmp_path, field, value):
    """Regression: a string or out-of-range size raised TypeError / OverflowError out of the loader."""
    from tests.tiny_chat_model import TINY_CHAT_CONFIG

    folder = _model_folder(tmp_path, seeds.safetensors(), json.dumps({**TINY_CHAT_CONFIG, field: value}))
    with pytest.raises(ModelLoadError, match="has a value the model cannot use"):
        load_model(folder)


# --------------------------------------------------------------------------------- app data files


def test_history_database_damaged(tmp_path):
    fresh = tmp_path / "zero.sqlite3"
    fresh.write_bytes(b"")
    assert HistoryStore(fresh).conversations() == []  # SQLite treats 0 bytes as a new database
    good = tmp_path / "good.sqlite3"
    history = HistoryStore(good)
    conversation = history.create_conversation()
    for i in range(40):
        history.add_message(conversation.id, "user", f"message {i} " * 400)
    history.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    history.close()
    data = good.read_bytes()
    flipped = bytearray(data)
    flipped[3 * 4096: 3 * 4096 + 256] = b"\xde" * 256
    cases = {"cut.sqlite3": data[: len(data) // 2], "photo.sqlite3": seeds.png() * 10,
             "flipped.sqlite3": bytes(flipped), "header.sqlite3": b"SQLite format 3\0" + b"\xff" * 4000}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(HistoryError, match="Move it away to start a fresh history"):
            HistoryStore(tmp_path / name)
        assert (tmp_path / name).read_bytes() == content  # left untouched for recovery


@pytest.mark.parametrize("meta", ["", "[]", "null", "{}", '{"n_tokens": "many"}', "{not json"])
def test_document_cache_description_damaged(tmp_path, meta):
    """Regression: a description that parsed but was not an entry raised TypeError/KeyError in lookup."""
    cache = DocumentCacheStore(tmp_path)
    (tmp_path / "entry.json").write_text(meta)
    (tmp_path / "entry.safetensors").write_bytes(seeds.safetensors())
    assert cache.lookup("model", list(range(5000))) is None
    cache.evict()
    assert list(tmp_path.iterdir()) == []
