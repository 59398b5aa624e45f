"""Attachments are copied into the data folder under safe names; documents give their text."""

import codecs
import os

import pytest
from PIL import Image

from gemma4_mac import documents
from gemma4_mac.attachments import (Attachment, AttachmentError, AttachmentStore, estimate_attachment_tokens,
                                    kind_for, sanitize_filename)
from tests.pdf_fixtures import write_pdf


@pytest.fixture
def store(tmp_path):
    return AttachmentStore(tmp_path / "attachments")


@pytest.mark.parametrize("name, expected", [
    ("../../etc/passwd", "passwd"),
    ("/absolute/path/photo.png", "photo.png"),
    ("..\\..\\windows\\evil.txt", "evil.txt"),
    ("..", "attachment"),
    ("", "attachment"),
    (".hidden", "hidden"),
    ("a\x00b\x1fc?.md", "a_b_c_.md"),
    ('re:port*"1"<x>|.pdf', "re_port__1__x__.pdf"),
])
def test_sanitize_filename(name, expected):
    assert sanitize_filename(name) == expected


def test_sanitized_long_names_keep_their_suffix():
    name = sanitize_filename("x" * 300 + ".jpeg")
    assert len(name) <= 120 and name.endswith(".jpeg")


@pytest.mark.parametrize("name", ["../../escape.txt", "/etc/passwd", "..", "a/../../b.txt"])
def test_raw_data_never_lands_outside_the_conversation_folder(store, name):
    attachment = store.import_bytes(7, b"hello", name, "text")
    folder = (store.root / "7").resolve()
    assert folder in attachment.path.resolve().parents
    assert attachment.path.read_bytes() == b"hello"


def test_imported_file_survives_the_original_moving(store, tmp_path):
    original = tmp_path / "photo.png"
    Image.new("RGB", (64, 48), "red").save(original)
    attachment = store.import_file(3, original)
    original.unlink()
    assert attachment.kind == "image" and attachment.meta == {"width": 64, "height": 48}
    assert attachment.path.is_file() and attachment.path.parent == store.root / "3"
    assert attachment.name == "photo.png"


def test_same_name_twice_gets_a_new_name(store, tmp_path):
    source = tmp_path / "notes.md"
    source.write_text("# Notes\n")
    first, second = store.import_file(1, source), store.import_file(1, source)
    assert first.path != second.path and second.path.name == "notes (2).md"


def test_unknown_binary_is_refused_with_a_clear_message(store, tmp_path):
    blob = tmp_path / "program.bin"
    blob.write_bytes(bytes(range(256)) * 10)
    with pytest.raises(AttachmentError, match="program.bin.*cannot be attached"):
        store.import_file(1, blob)
    assert not (store.root / "1").exists() or not any((store.root / "1").iterdir())


def test_unknown_suffix_with_text_is_a_text_document(store, tmp_path):
    source = tmp_path / "Dockerfile"
    source.write_text("FROM python:3.11\nRUN pip install x\n")
    attachment = store.import_file(1, source)
    assert attachment.kind == "text" and attachment.meta["lines"] == 3


def test_folders_and_missing_files_are_refused(store, tmp_path):
    with pytest.raises(AttachmentError, match="not a file"):
        store.import_file(1, tmp_path)
    with pytest.raises(AttachmentError, match="not a file"):
        store.import_file(1, tmp_path / "gone.txt")


def test_broken_image_is_refused_and_not_kept(store, tmp_path):
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"not a png at all")
    with pytest.raises(AttachmentError, match="fake.png"):
        store.import_file(2, fake)
    assert list((store.root / "2").iterdir()) == []


def test_pdf_gets_page_count_thumbnail_and_text(store, tmp_path):
    pdf = write_pdf(tmp_path / "report.pdf", ["Revenue grew 12 percent", "Costs fell in March"])
    attachment = store.import_file(4, pdf)
    assert attachment.kind == "pdf" and attachment.meta["pages"] == 2
    assert attachment.thumbnail is not None and attachment.thumbnail.is_file()
    text = documents.document_text(attachment.path, "pdf")
    assert "--- page 1 ---\nRevenue grew 12 percent" in text and "--- page 2 ---\nCosts fell in March" in text


def test_damaged_pdf_names_the_file(store, tmp_path):
    bad = tmp_path / "broken.pdf"
    bad.write_bytes(b"%PDF-1.4\ngarbage")
    with pytest.raises(documents.DocumentError, match="broken.pdf"):
        store.import_file(1, bad)


@pytest.mark.parametrize("data, encoding", [
    ("Grüße aus Köln".encode("utf-8"), "utf-8"),
    (codecs.BOM_UTF16_LE + "Grüße aus Köln".encode("utf-16-le"), "utf-16"),
    (codecs.BOM_UTF8 + "Grüße aus Köln".encode("utf-8"), "utf-8"),
])
def test_text_encodings(data, encoding):
    document = documents.decode_text(data)
    assert document.text == "Grüße aus Köln" and document.encoding == encoding


def test_legacy_encoding_is_detected():
    text = "Le cœur a ses raisons que la raison ne connaît point. " * 4
    document = documents.decode_text(text.encode("cp1252"))
    assert document.text == text


def test_long_paste_becomes_a_text_document(store):
    pasted = "line of a log file\n" * 200
    assert documents.is_long_paste(pasted) and not documents.is_long_paste("short question")
    attachment = store.import_text(5, pasted, "server.log.txt")
    assert attachment.kind == "text" and attachment.path.read_text() == pasted
    assert attachment.meta["tokens"] == documents.estimate_tokens(pasted)


def test_round_trip_through_json_keeps_paths_relative(store, tmp_path):
    attachment = store.import_bytes(9, _tiny_wav(), "clip.wav", "audio")
    data = attachment.to_dict(store.root)
    assert data["path"] == os.path.join("9", "clip.wav")
    again = Attachment.from_dict(data, store.root)
    assert again.path == store.root / "9" / "clip.wav" and again.kind == "audio"


def test_remove_conversation_deletes_its_folder(store, tmp_path):
    store.import_bytes(11, b"a", "a.txt", "text")
    store.remove_conversation(11)
    assert not (store.root / "11").exists()


def test_token_estimates():
    assert kind_for("x.PNG") == "image" and kind_for("talk.m4a") == "audio" and kind_for("a.pdf") == "pdf"
    image = Attachment("image", "x.png", "x.png")
    audio = Attachment("audio", "a.wav", "a.wav", meta={"duration": 10.0})
    long_audio = Attachment("audio", "b.wav", "b.wav", meta={"duration": 95.0})
    assert estimate_attachment_tokens(image, 280) == 284
    assert estimate_attachment_tokens(audio) == 254 and estimate_attachment_tokens(long_audio) == 754


def _tiny_wav() -> bytes:
    """A real 10 ms mono WAV (attachments are checked when they are imported)."""
    import io
    import wave

    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1), wav.setsampwidth(2), wav.setframerate(16000)
        wav.writeframes(b"\0\0" * 160)
    return out.getvalue()
