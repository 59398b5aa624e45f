"""Text out of documents: PDFs (pypdfium2) with page thumbnails, and text, Markdown or code files.

Every failure is a `DocumentError` whose message names the file and says what to do.
"""

from __future__ import annotations

import codecs
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

LONG_PASTE_CHARS = 3000  # a paste longer than this becomes a document attachment
LONG_PASTE_LINES = 60
MAX_TEXT_BYTES = 50 * 1024 * 1024
WESTERN = ("cp1252", "latin_1", "iso8859_15", "mac_roman")
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


class DocumentError(ValueError):
    """A document cannot be read; the message names it and says why."""


@dataclass
class TextDocument:
    """The decoded text of a file and the encoding it was read with."""

    text: str
    encoding: str


def is_long_paste(text: str) -> bool:
    """Whether pasted text is long enough to become a document attachment instead of composer text."""
    return len(text) > LONG_PASTE_CHARS or text.count("\n") >= LONG_PASTE_LINES


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


def decode_text(data: bytes) -> TextDocument:
    """Decode bytes of unknown encoding: byte-order mark, then UTF-8, then charset detection, then Latin-1."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            # a file cut short mid-character (odd-length UTF-16) keeps its text, with U+FFFD at the cut
            return TextDocument(data.decode(encoding, errors="replace"), encoding.replace("-sig", ""))
    try:
        return TextDocument(data.decode("utf-8"), "utf-8")
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    matches = list(from_bytes(data))
    if matches:
        best = matches[0]
        # equally plausible candidates: prefer the Western code page, by far the most common legacy one
        western = next((m for m in matches if m.encoding in WESTERN and m.chaos <= best.chaos
                        and m.coherence >= best.coherence), None)
        chosen = western or best
        return TextDocument(str(chosen), chosen.encoding)
    return TextDocument(data.decode("latin-1"), "latin-1")


def read_text_document(path: Path) -> TextDocument:
    """Read a text, Markdown or code file in whatever encoding it uses."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_TEXT_BYTES:
            raise DocumentError(f"{path.name} is {size / 1e6:.0f} MB; text files up to "
                                f"{MAX_TEXT_BYTES / 1e6:.0f} MB can be attached. Split it first.")
        data = path.read_bytes()
    except OSError as error:
        raise DocumentError(f"{path.name} cannot be read ({error.strerror or error}).") from error
    if looks_binary(data):
        raise DocumentError(f"{path.name} is not a text file. Attach text, Markdown, code, PDF, image, "
                            "audio or video files.")
    return decode_text(data)


def _open_pdf(path: Path):
    import pypdfium2 as pdfium

    try:
        return pdfium.PdfDocument(str(path))
    except pdfium.PdfiumError as error:
        hint = "it is password-protected" if "password" in str(error).lower() else "it is damaged or not a PDF"
        raise DocumentError(f"{Path(path).name} cannot be opened: {hint} ({error}).") from error


def pdf_page_count(path: Path) -> int:
    """Number of pages of a PDF."""
    pdf = _open_pdf(path)
    try:
        return len(pdf)
    finally:
        pdf.close()


def _damaged_page(path: Path, index: int, error: Exception) -> DocumentError:
    return DocumentError(f"{Path(path).name}: page {index + 1} cannot be read; the PDF is damaged ({error}). "
                         "Re-export or re-download it.")


def extract_pdf_pages(path: Path, max_pages: Optional[int] = None) -> list[str]:
    """The text of each page (an empty string for a page that is only a scan)."""
    import pypdfium2 as pdfium

    pdf = _open_pdf(path)
    pages = []
    try:
        for index in range(len(pdf) if max_pages is None else min(len(pdf), max_pages)):
            try:
                page = pdf[index]
            except pdfium.PdfiumError as error:
                raise _damaged_page(path, index, error) from error
            try:
                textpage = page.get_textpage()
                try:
                    pages.append(textpage.get_text_range().replace("\r\n", "\n").replace("\r", "\n"))
                finally:
                    textpage.close()
            except pdfium.PdfiumError as error:
                raise _damaged_page(path, index, error) from error
            finally:
                page.close()
    finally:
        pdf.close()
    return pages


def extract_pdf_text(path: Path) -> str:
    """All of a PDF's text, pages separated by a marker line; a scanned PDF raises with a hint."""
    pages = extract_pdf_pages(path)
    if pages and not any(p.strip() for p in pages):
        raise DocumentError(f"{Path(path).name} has no text layer (a scan?). Attach its pages as images instead.")
    return "\n\n".join(f"--- page {i + 1} ---\n{text.strip()}" for i, text in enumerate(pages))


def render_pdf_thumbnails(path: Path, out_dir: Path, *, max_pages: int = 1, width: int = 360) -> list[Path]:
    """PNG thumbnails of the first pages, `width` pixels wide, written to `out_dir`."""
    import pypdfium2 as pdfium

    pdf = _open_pdf(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        for index in range(min(len(pdf), max_pages)):
            try:
                page = pdf[index]
            except pdfium.PdfiumError as error:
                raise _damaged_page(path, index, error) from error
            try:
                scale = width / max(page.get_width(), 1.0)
                image = page.render(scale=scale).to_pil()
                target = out_dir / f"{Path(path).stem}-p{index + 1}.png"
                image.save(target)
                written.append(target)
            except pdfium.PdfiumError as error:
                raise _damaged_page(path, index, error) from error
            finally:
                page.close()
    finally:
        pdf.close()
    return written


def document_text(path: Path, kind: str) -> str:
    """The text a document attachment contributes to the prompt."""
    if kind == "pdf":
        return extract_pdf_text(path)
    return read_text_document(path).text


def wrap_document(name: str, text: str) -> str:
    """A document as it is placed before the question in the prompt."""
    return f"<document name=\"{name}\">\n{text.strip()}\n</document>"
