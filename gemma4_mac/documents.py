"""Text out of documents: PDFs (pypdfium2) with page thumbnails, and text, Markdown or code files.

Every failure is a `DocumentError` whose message names the file and says what to do.
"""

from __future__ import annotations

import codecs
import locale
import math
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from mlx_model.file_errors import unreadable_reason

LONG_PASTE_CHARS = 3000  # a paste longer than this becomes a document attachment
LONG_PASTE_LINES = 60
MAX_TEXT_BYTES = 50 * 1024 * 1024
# The encodings a text attachment's chip offers, most common first (Python codec name, label).
ENCODING_CHOICES = (
    ("utf-8", "UTF-8"), ("latin_1", "Latin-1 (Western European)"), ("cp1252", "Windows-1252 (Western "
                                                                              "European)"),
    ("mac_roman", "Mac Roman (Western European)"), ("iso8859_15", "Latin-9 (Western European, with €)"),
    ("cp1250", "Windows-1250 (Central European)"), ("iso8859_2", "Latin-2 (Central European)"),
    ("cp1257", "Windows-1257 (Baltic)"), ("cp1254", "Windows-1254 (Turkish)"), ("cp1251", "Windows-1251 "
                                                                                          "(Cyrillic)"),
    ("koi8_r", "KOI8-R (Cyrillic)"), ("cp1253", "Windows-1253 (Greek)"), ("cp1255", "Windows-1255 (Hebrew)"),
    ("cp1256", "Windows-1256 (Arabic)"), ("shift_jis", "Shift JIS (Japanese)"),
    ("euc_jp", "EUC-JP (Japanese)"),
    ("gb18030", "GB18030 (Chinese)"), ("big5", "Big5 (Traditional Chinese)"), ("euc_kr", "EUC-KR (Korean)"),
    ("utf-16", "UTF-16"),
)
# Western words mix ASCII and accented letters ("déjà", "Grüße"); other scripts read as Windows-1252 give
# words of accented letters only ("Ïðèâåò"). More than a fifth of such words (and more than one): not Western.
FOREIGN_WORD_ACCENTED_SHARE = 0.6
WESTERN_MAX_FOREIGN_WORDS = 0.2
_WORD = re.compile(r"[^\W\d_]+")
_BETWEEN_LETTERS = "’‘´`·-–—/'"  # apostrophes, Catalan's middle dot and dashes may stand between letters
_CONTROLS = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


class DocumentError(ValueError):
    """A document cannot be read; the message names it and says why."""


@dataclass
class TextDocument:
    """The decoded text of a file and the encoding it was read with."""

    text: str
    encoding: str


def unreadable(name: str, error: OSError) -> DocumentError:
    """A DocumentError for a file the system will not let us read, in words (see mlx_model.file_errors)."""
    return DocumentError(f"{name} {unreadable_reason(error)}")


def is_long_paste(text: str) -> bool:
    """Whether pasted text is long enough to become a document attachment instead of composer text."""
    return len(text) > LONG_PASTE_CHARS or text.count("\n") >= LONG_PASTE_LINES


PASTE_TITLE_CHARS = 40
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$")
_SETEXT_RULE = re.compile(r"^\s{0,3}(=+|-+)\s*$")
_MARKUP = re.compile(r"^[\s>*+\-#`~|]+|[\s*`~|:]+$")
_LABEL_COLON = re.compile(r"\s*:\s+")
_SEPARATORS = re.compile(r"[/\\|]+")
_NOT_IN_NAMES = re.compile(r'[*?"<>\x00-\x1f\x7f]')


def paste_title(text: str, limit: int = PASTE_TITLE_CHARS) -> str:
    """A name for pasted text: its first heading when one opens it (within its first lines), else its first
    line of words; without Markdown marks, cut at a word boundary with "…" when longer than `limit`."""
    fences = ("```", "~~~")
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith(fences)][:12]
    title = ""
    for index, line in enumerate(lines[:6]):
        heading = _HEADING.match(line)
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if heading or (_SETEXT_RULE.match(following) and _WORD.search(line)):
            title = heading.group(1) if heading else line
            break
    if not title:
        title = next((line for line in lines if _WORD.search(line)), "")
    title = " ".join(_MARKUP.sub("", title).split())
    # it becomes a file name: "Plan: Lisbon/Porto" -> "Plan - Lisbon-Porto", "12:00" -> "12.00"
    title = _LABEL_COLON.sub(" - ", title).replace(":", ".")
    title = _NOT_IN_NAMES.sub("", _SEPARATORS.sub("-", title))
    if len(title) > limit:
        cut = title[: limit + 1].rsplit(" ", 1)[0] if " " in title[: limit + 1] else title[:limit]
        title = cut.rstrip(" ,.;:-–—(") + "…"
    return title or "Pasted text"


def estimate_tokens(text: str) -> int:
    """A quick token estimate without the tokenizer: ~4 characters per token for ASCII, 1 for the rest."""
    ascii_chars = sum(1 for ch in text if ord(ch) < 128)
    return math.ceil(ascii_chars / 4) + (len(text) - ascii_chars)


def looks_binary(data: bytes) -> bool:
    """True for data that is clearly not text (NUL bytes outside UTF-16/32, or many control bytes)."""
    sample = data[:8192]
    if any(sample.startswith(bom) for bom, _ in _BOMS):
        return False
    if b"\x00" in sample:
        return True
    controls = sum(1 for b in sample if b < 9 or 13 < b < 32)
    return bool(sample) and controls / len(sample) > 0.1


def encoding_label(encoding: str) -> str:
    """A person's name for a Python codec name ("latin_1" -> "Latin-1 (Western European)")."""
    try:
        key = codecs.lookup(encoding).name
    except LookupError:
        return encoding
    return next((label for codec, label in ENCODING_CHOICES if codecs.lookup(codec).name == key), encoding)


def _decodes_cleanly(data: bytes, encoding: str, final: bool = True) -> Optional[str]:
    """The text when `data` decodes without errors and without control characters (other than layout ones)."""
    try:
        text = codecs.getincrementaldecoder(encoding)(errors="strict").decode(data, final=final)
    except (UnicodeError, LookupError):  # UnicodeError: UTF-16 without a byte-order mark
        return None
    return None if _CONTROLS.search(text) else text


def _reads_as_western(text: str) -> bool:
    """Whether legacy-decoded text looks like a Western European language and not another script's bytes
    shown as accented Latin letters (Cyrillic, Greek, Hebrew: words made of accented letters only) or as
    symbols (Polish ł, ą, ż read as ³, ¹, ¿ between letters)."""
    words = [w for w in _WORD.findall(text) if len(w) >= 3]
    foreign = sum(1 for w in words
                  if sum(not ch.isascii() for ch in w) > FOREIGN_WORD_ACCENTED_SHARE * len(w))
    if foreign > max(1, WESTERN_MAX_FOREIGN_WORDS * len(words)):  # one odd word ("Ærø") is not enough
        return False
    return not any(not ch.isascii() and not ch.isalpha() and ch not in _BETWEEN_LETTERS
                   and before.isalpha() and after.isalpha()
                   for before, ch, after in zip(text, text[1:], text[2:]))


def _legacy_candidates(data: bytes) -> list[str]:
    """Single-byte encodings to try before guessing: the locale's, then the Western ones (Latin-1 when the
    bytes never use 0x80-0x9F, where it and Windows-1252 differ; then Windows-1252, then Mac Roman)."""
    candidates = []
    preferred = locale.getpreferredencoding(False)
    try:
        if codecs.lookup(preferred).name not in ("utf-8", "ascii"):
            candidates.append(preferred)
    except LookupError:
        pass
    uses_c1 = any(0x80 <= b <= 0x9F for b in data)
    candidates += ["cp1252", "mac_roman"] if uses_c1 else ["latin_1"]
    return candidates


def decode_text(data: bytes, encoding: Optional[str] = None) -> TextDocument:
    """Decode bytes: with `encoding` when given (what the person chose, or what attaching found), else
    byte-order mark, UTF-8, the locale's and the Western encodings when they decode cleanly and read as
    Western text, then charset detection for other scripts, then Latin-1."""
    if encoding:
        codec = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
        return TextDocument(data.decode(codec, errors="replace"), encoding)
    for bom, name in _BOMS:
        if data.startswith(bom):
            # a file cut short mid-character (odd-length UTF-16) keeps its text, with U+FFFD at the cut
            return TextDocument(data.decode(name, errors="replace"), name.replace("-sig", ""))
    try:
        return TextDocument(data.decode("utf-8"), "utf-8")
    except UnicodeDecodeError:
        pass
    for candidate in _legacy_candidates(data):
        text = _decodes_cleanly(data, candidate)
        if text is not None and _reads_as_western(text):
            return TextDocument(text, candidate)
    from charset_normalizer import from_bytes

    best = from_bytes(data).best()
    if best is not None:
        return TextDocument(str(best), best.encoding)
    return TextDocument(data.decode("latin-1"), "latin_1")


def encoding_choices(data: bytes) -> list[tuple[str, str]]:
    """(codec, label) of the encodings in ENCODING_CHOICES that read `data` (its first megabyte) cleanly:
    what the attachment chip offers when the guess was wrong."""
    sample = data[:1 << 20]
    return [(codec, label) for codec, label in ENCODING_CHOICES
            if _decodes_cleanly(sample, codec, final=len(sample) == len(data)) is not None]


def read_text_document(path: Path, encoding: Optional[str] = None) -> TextDocument:
    """Read a text, Markdown or code file in whatever encoding it uses (or in `encoding`)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_TEXT_BYTES:
            raise DocumentError(f"{path.name} is {size / 1e6:.0f} MB; text files up to "
                                f"{MAX_TEXT_BYTES / 1e6:.0f} MB can be attached. Split it first.")
        data = path.read_bytes()
    except OSError as error:
        raise unreadable(path.name, error) from error
    if looks_binary(data):
        raise DocumentError(f"{path.name} is not a text file. Attach text, Markdown, code, PDF, image, "
                            "audio or video files.")
    return decode_text(data, encoding)


@contextmanager
def _open_pdf(path: Path) -> Iterator[Any]:
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(str(path))
    except pdfium.PdfiumError as error:
        hint = "it is password-protected" if "password" in str(error).lower() else "it is damaged or not a PDF"
        raise DocumentError(f"{Path(path).name} cannot be opened: {hint} ({error}).") from error
    except OSError as error:
        raise unreadable(Path(path).name, error) from error
    try:
        yield pdf
    finally:
        pdf.close()


@contextmanager
def _pdf_page(pdf: Any, path: Path, index: int) -> Iterator[Any]:
    """Page `index`, closed afterwards; PDFium failing on it (load, text or render) names the page."""
    import pypdfium2 as pdfium

    try:
        page = pdf[index]
    except pdfium.PdfiumError as error:
        raise _damaged_page(path, index, error) from error
    try:
        yield page
    except pdfium.PdfiumError as error:
        raise _damaged_page(path, index, error) from error
    finally:
        page.close()


def pdf_page_count(path: Path) -> int:
    """Number of pages of a PDF."""
    with _open_pdf(path) as pdf:
        return len(pdf)


def _damaged_page(path: Path, index: int, error: Exception) -> DocumentError:
    return DocumentError(f"{Path(path).name}: page {index + 1} cannot be read; the PDF is damaged ({error}). "
                         "Re-export or re-download it.")


def extract_pdf_pages(path: Path, max_pages: Optional[int] = None) -> list[str]:
    """The text of each page (an empty string for a page that is only a scan)."""
    pages = []
    with _open_pdf(path) as pdf:
        for index in range(len(pdf) if max_pages is None else min(len(pdf), max_pages)):
            with _pdf_page(pdf, path, index) as page:
                textpage = page.get_textpage()
                try:
                    pages.append(textpage.get_text_range().replace("\r\n", "\n").replace("\r", "\n"))
                finally:
                    textpage.close()
    return pages


def extract_pdf_text(path: Path) -> str:
    """All of a PDF's text, pages separated by a marker line; a scanned PDF raises with a hint."""
    pages = extract_pdf_pages(path)
    if pages and not any(p.strip() for p in pages):
        raise DocumentError(f"{Path(path).name} has no text layer (a scan?). Attach its pages as images instead.")
    return "\n\n".join(f"--- page {i + 1} ---\n{text.strip()}" for i, text in enumerate(pages))


def render_pdf_thumbnails(path: Path, out_dir: Path, *, max_pages: int = 1, width: int = 360) -> list[Path]:
    """PNG thumbnails of the first pages, `width` pixels wide, written to `out_dir`."""
    written = []
    with _open_pdf(path) as pdf:
        out_dir.mkdir(parents=True, exist_ok=True)
        for index in range(min(len(pdf), max_pages)):
            with _pdf_page(pdf, path, index) as page:
                scale = width / max(page.get_width(), 1.0)
                target = out_dir / f"{Path(path).stem}-p{index + 1}.png"
                page.render(scale=scale).to_pil().save(target)
                written.append(target)
    return written


def document_text(path: Path, kind: str, encoding: Optional[str] = None) -> str:
    """The text a document attachment contributes to the prompt (a text file read in `encoding` when given:
    the one its chip shows)."""
    if kind == "pdf":
        return extract_pdf_text(path)
    return read_text_document(path, encoding).text


def wrap_document(name: str, text: str) -> str:
    """A document as it is placed before the question in the prompt."""
    return f"<document name=\"{name}\">\n{text.strip()}\n</document>"
