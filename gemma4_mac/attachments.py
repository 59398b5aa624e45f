"""Attached files, copied into the app's data folder with their conversation.

History keeps working when the original file moves or is deleted. File names are sanitised so that
no name (``../../x``, absolute paths, control characters) can place a copy outside the folder.
"""

from __future__ import annotations

import math
import re
import shutil
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from mlx_model.file_errors import unreadable_reason

from . import documents

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".heic"}
AUDIO_SUFFIXES = {".wav", ".mp3", ".m4a", ".aac", ".flac", ".ogg", ".oga", ".opus", ".aiff", ".aif", ".caf"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi"}
TEXT_SUFFIXES = {
    ".txt", ".md", ".markdown", ".rst", ".csv", ".tsv", ".json", ".jsonl", ".yaml", ".yml", ".toml", ".xml",
    ".html", ".htm", ".css", ".scss", ".py", ".pyi", ".js", ".mjs", ".ts", ".tsx", ".jsx", ".c", ".h", ".cc",
    ".cpp", ".hpp", ".m", ".mm", ".swift", ".go", ".rs", ".java", ".kt", ".rb", ".php", ".sh", ".zsh", ".bash",
    ".sql", ".r", ".lua", ".pl", ".scala", ".cs", ".ini", ".cfg", ".conf", ".log", ".tex", ".ipynb", ".diff",
    ".patch", ".srt", ".vtt",
}
KINDS = ("image", "audio", "video", "pdf", "text")
MAX_ATTACHMENT_BYTES = 2 * 1024 ** 3
AUDIO_TOKENS_PER_SECOND = 25  # Gemma 4's audio encoder (field notes)
MAX_AUDIO_SECONDS = 30.0
_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')
_MAX_NAME = 120


class AttachmentError(ValueError):
    """A file cannot be attached; the message names it and says what to do."""


class DocumentAttachmentError(AttachmentError, documents.DocumentError):
    """A document (PDF or text) cannot be attached: both an AttachmentError and the reader's DocumentError."""


@dataclass
class Attachment:
    """One attached file. `path` is the copy in the data folder; `name` is what the person saw."""

    kind: str
    path: Path
    name: str
    size: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, root: Optional[Path] = None) -> dict[str, Any]:
        """JSON form; the path is stored relative to `root` when it lies inside it."""
        path = Path(self.path)
        if root is not None:
            try:
                path = path.resolve().relative_to(Path(root).resolve())
            except ValueError:
                pass
        return {"kind": self.kind, "path": str(path), "name": self.name, "size": self.size, "meta": self.meta}

    @classmethod
    def from_dict(cls, data: dict[str, Any], root: Optional[Path] = None) -> "Attachment":
        path = Path(data["path"])
        if root is not None and not path.is_absolute():
            path = Path(root) / path
        return cls(data["kind"], path, data.get("name", path.name), int(data.get("size", 0)), dict(data.get("meta", {})))

    @property
    def is_document(self) -> bool:
        return self.kind in ("pdf", "text")

    @property
    def thumbnail(self) -> Optional[Path]:
        """A picture standing for the file: the image itself or a PDF's first page."""
        if self.kind == "image":
            return Path(self.path)
        thumb = self.meta.get("thumbnail")
        return Path(self.path).parent / thumb if thumb else None


def kind_for(path: Path) -> Optional[str]:
    """The attachment kind a file name implies, or None when the suffix is not known."""
    suffix = Path(path).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in AUDIO_SUFFIXES:
        return "audio"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if suffix == ".pdf":
        return "pdf"
    if suffix in TEXT_SUFFIXES:
        return "text"
    return None


def sanitize_filename(name: str, fallback: str = "attachment") -> str:
    """A file name safe to create inside a folder: no separators, control characters or leading dots."""
    name = unicodedata.normalize("NFC", str(name)).replace("\\", "/").split("/")[-1]
    name = _UNSAFE.sub("_", name)
    name = re.sub(r"\s+", " ", name).strip(" .")
    if not name or set(name) <= {"_", " ", "."}:
        name = fallback
    if len(name) > _MAX_NAME:
        stem, dot, suffix = name.rpartition(".")
        suffix = suffix[:16] if dot else ""
        name = (stem if dot else name)[: _MAX_NAME - len(suffix) - 1].rstrip(" .") + (f".{suffix}" if suffix else "")
    return name


MEDIA_KINDS = ("image", "audio", "video")


def model_cannot_read(attachment: Attachment, model: Optional[dict]) -> Optional[str]:
    """Why the model described by `model` (the engine's model info: "chat", "can_see", "can_hear") cannot take
    `attachment`, in words; None when it can, or when no model is known yet."""
    if model is None or attachment.kind not in MEDIA_KINDS:
        return None  # documents are text: every model reads them
    name = model.get("name") or "This model"
    if not model.get("chat", True):
        return f"{name} continues text only: it cannot take images, audio or video."
    if attachment.kind in ("image", "video") and not model.get("can_see", True):
        return f"{name} cannot see images or videos (it has no vision tower)."
    if attachment.kind == "audio" and not model.get("can_hear", True):
        return f"{name} cannot hear audio: only Gemma 4 E2B and E4B have an audio tower."
    return None


def estimate_attachment_tokens(attachment: Attachment, image_token_budget: int = 280) -> int:
    """Tokens an attachment will take in the prompt (an estimate good enough for the context meter)."""
    if attachment.kind == "image":
        return image_token_budget + 4
    if attachment.kind == "audio":
        seconds = min(float(attachment.meta.get("duration", MAX_AUDIO_SECONDS)), MAX_AUDIO_SECONDS)
        return math.ceil(seconds * AUDIO_TOKENS_PER_SECOND) + 4
    if attachment.kind == "video":
        frames = min(int(attachment.meta.get("duration", 32)), 32)  # one frame a second, at most 32
        return frames * 70 + 4
    return int(attachment.meta.get("tokens", 0)) + 12


class AttachmentStore:
    """Per-conversation folders of attached files under one root."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def conversation_dir(self, conversation_id: int, create: bool = True) -> Path:
        folder = self.root / str(int(conversation_id))
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _unique_target(self, folder: Path, name: str) -> Path:
        target = folder / name
        stem, suffix = Path(name).stem, Path(name).suffix
        n = 2
        while target.exists():
            target = folder / f"{stem} ({n}){suffix}"
            n += 1
        if folder.resolve() not in target.resolve().parents:
            raise AttachmentError(f"Refusing to write {name!r} outside the attachments folder.")
        return target

    def import_file(self, conversation_id: int, source: Path) -> Attachment:
        """Copy `source` into the conversation's folder and describe it."""
        source = Path(source).expanduser()
        try:
            if source.is_dir():
                raise AttachmentError(f"{source.name or source} is a folder, not a file (folders cannot be "
                                      "attached).")
            size = source.stat().st_size
            if size > MAX_ATTACHMENT_BYTES:
                raise AttachmentError(f"{source.name} is {size / 1024 ** 3:.1f} GB; attachments are limited "
                                      "to 2 GB.")
            kind = kind_for(source)
            with open(source, "rb") as handle:  # unreadable files are refused here, in words
                head = handle.read(8192)
        except FileNotFoundError as error:
            raise AttachmentError(f"{source.name or source} is not a file that exists (moved, renamed or "
                                  "deleted?); choose it again.") from error
        except OSError as error:
            raise AttachmentError(f"{source.name or source} {unreadable_reason(error)}") from error
        if kind is None:
            if documents.looks_binary(head):
                raise AttachmentError(f"{source.name}: this kind of file cannot be attached. Attach images, "
                                      "audio, video, PDFs, or text, Markdown and code files.")
            kind = "text"
        target = self._unique_target(self.conversation_dir(conversation_id), sanitize_filename(source.name))
        try:
            shutil.copy2(source, target)
        except OSError as error:
            target.unlink(missing_ok=True)
            raise AttachmentError(f"{source.name} {unreadable_reason(error)}") from error
        return self._describe(kind, target, source.name)

    def import_bytes(self, conversation_id: int, data: bytes, name: str, kind: Optional[str] = None) -> Attachment:
        """Save raw data (a pasted image, a recording, a long paste) as an attachment."""
        name = sanitize_filename(name)
        kind = kind or kind_for(Path(name)) or "text"
        if len(data) > MAX_ATTACHMENT_BYTES:
            raise AttachmentError(f"{name} is larger than 2 GB and cannot be attached.")
        target = self._unique_target(self.conversation_dir(conversation_id), name)
        target.write_bytes(data)
        return self._describe(kind, target, name)

    def import_text(self, conversation_id: int, text: str, name: str = "Pasted text.txt") -> Attachment:
        """A long paste, kept as a text document."""
        # a paste can carry lone UTF-16 surrogates (broken emoji); keep the rest instead of failing
        return self.import_bytes(conversation_id, text.encode("utf-8", errors="replace"), name, "text")

    def _describe(self, kind: str, path: Path, name: str) -> Attachment:
        attachment = Attachment(kind, path, name, path.stat().st_size)
        try:
            if attachment.size == 0:
                raise AttachmentError(f"{name} is empty (0 bytes): it was not fully written or downloaded. "
                                      "Attach it again.")
            attachment.meta = self._metadata(kind, path, name)
        except AttachmentError:
            path.unlink(missing_ok=True)
            raise
        except documents.DocumentError as error:
            path.unlink(missing_ok=True)  # the reader named the stored copy ("x (2).pdf"): use the person's
            raise DocumentAttachmentError(str(error).replace(path.name, name)) from error
        return attachment

    def _metadata(self, kind: str, path: Path, name: str) -> dict[str, Any]:
        if kind == "image":
            # the model's own reader: refuses bombs, truncation and non-images now rather than at send time
            from mlx_model.image_processor import ImageLoadError, open_image

            try:
                image = open_image(path, name=name)
            except ImageLoadError as error:
                raise AttachmentError(str(error)) from error
            return {"width": image.width, "height": image.height}
        if kind == "audio":
            return _audio_meta(path, name)
        if kind == "video":
            return _video_meta(path, name)
        if kind == "pdf":
            text = documents.extract_pdf_text(path)
            thumbs = documents.render_pdf_thumbnails(path, path.parent / ".thumbs", max_pages=1)
            return {"pages": documents.pdf_page_count(path), "tokens": documents.estimate_tokens(text),
                    "thumbnail": str(thumbs[0].relative_to(path.parent)) if thumbs else None}
        if kind == "text":
            return _text_meta(documents.read_text_document(path))
        return {}

    def reread_text(self, attachment: Attachment, encoding: str) -> Attachment:
        """Read a text attachment again in the encoding the person picked on its chip; its facts follow.
        Raises AttachmentError when the file is not valid in that encoding (nothing changes then)."""
        try:
            data = Path(attachment.path).read_bytes()
        except OSError as error:
            raise AttachmentError(f"{attachment.name} {unreadable_reason(error)}") from error
        if not any(codec == encoding for codec, _ in documents.encoding_choices(data)):
            raise AttachmentError(f"{attachment.name} cannot be read as "
                                  f"{documents.encoding_label(encoding)}: it holds bytes that are not valid "
                                  "(or are control codes) in it. Choose another.")
        attachment.meta.update(_text_meta(documents.decode_text(data, encoding)))
        return attachment

    def encoding_choices(self, attachment: Attachment) -> list[tuple[str, str]]:
        """(codec, label) of the encodings a text attachment reads cleanly in, for its chip's menu."""
        try:
            return documents.encoding_choices(Path(attachment.path).read_bytes())
        except OSError:
            return []

    def remove(self, attachment: Attachment) -> None:
        """Delete one attachment's copy (when its chip is removed before sending)."""
        path = Path(attachment.path)
        if self.root.resolve() in path.resolve().parents:
            path.unlink(missing_ok=True)

    def remove_conversation(self, conversation_id: int) -> None:
        """Delete every attachment of a conversation."""
        folder = self.conversation_dir(conversation_id, create=False)
        if folder.exists():
            shutil.rmtree(folder)


def _text_meta(document: documents.TextDocument) -> dict[str, Any]:
    text = document.text
    return {"encoding": document.encoding, "chars": len(text), "lines": text.count("\n") + 1,
            "tokens": documents.estimate_tokens(text)}


def _audio_meta(path: Path, name: str) -> dict[str, Any]:
    """Decode the recording as sending it will (the model's own reader, same limits): a file it cannot use
    is refused now. Returns its length and original format."""
    from mlx_model.audio_io import AudioLoadError, load_audio

    try:
        samples, info = load_audio(str(path), name=name)
    except AudioLoadError as error:
        raise AttachmentError(str(error)) from error
    return {"duration": round(samples.size / 16_000, 2), "samplerate": info.original_rate,
            "channels": info.original_channels}


def _video_meta(path: Path, name: str) -> dict[str, Any]:
    """The video checks sending runs (container, content, frames, the first frame decoded): its length."""
    from mlx_model.video import VideoLoadError, check_video

    try:
        facts = check_video(path)
    except VideoLoadError as error:
        raise AttachmentError(str(error).replace(f"'{path}'", name).replace(str(path), name)) from error
    return {"duration": round(float(facts["duration"]), 2)}
