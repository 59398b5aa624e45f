"""Bounds on what one request may cost, checked before the expensive step they guard.

- The body: larger than `max_body_bytes` is refused from its Content-Length, before it is read, and
  while it arrives; it is read into one buffer that is freed as soon as it is decoded.
- The prompt: a token covers at most `longest_token_bytes` bytes of text (48 for Gemma 4's vocabulary)
  and a character is at least one byte, so text with more characters than context x that many cannot
  fit and is refused from its length alone, before it is tokenized. Text short enough to surely fit
  (four bytes a character at most, a token at least one byte) goes straight on. In between it is
  counted in slices, on a worker thread, stopping as soon as the count passes the context: the
  tokenizer's batch call runs without Python's lock, so other clients are served meanwhile, and the
  work done is bounded by the context, not by the text.
- Local image files: their size is checked before a byte is read (`check_file_size`).
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import Iterable, Iterator, Optional

from .errors import BadRequest, PayloadTooLarge

FALLBACK_LONGEST_TOKEN = 64  # bytes; when the vocabulary cannot be read (above Gemma 3's and 4's)
SLICE_CHARS = 32_768
SLICES_PER_BATCH = 8
TEMPLATE_ALLOWANCE = 64  # tokens the chat template adds around each message, at most
MAX_LOCAL_FILE_BYTES = 50 * 1024 * 1024
DEFAULT_CONTEXT = 131_072

_longest: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class ContextExceeded(BadRequest):
    code = "context_length_exceeded"


def longest_token_bytes(tokenizer) -> int:
    """The most bytes of text one token of this vocabulary stands for (computed once per tokenizer)."""
    try:
        return _longest[tokenizer]
    except (KeyError, TypeError):
        pass
    hf = getattr(tokenizer, "hf_tokenizer", tokenizer)
    try:
        vocab = hf.get_vocab()
        longest = max(len(piece.replace("\u2581", " ").encode("utf-8")) for piece in vocab)
    except (AttributeError, TypeError, ValueError):
        longest = FALLBACK_LONGEST_TOKEN
    try:
        _longest[tokenizer] = longest
    except TypeError:
        pass
    return longest


def texts_of(value) -> Iterator[str]:
    """Every string inside a decoded JSON value (message text, tool arguments, schemas), data URLs
    excepted: an attachment costs its soft tokens, not its characters."""
    if isinstance(value, str):
        if not value.startswith("data:"):
            yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            if key in ("data", "image_url", "url", "input_audio", "file_data") and isinstance(item, str):
                continue  # base64 payloads
            yield from texts_of(item)
    elif isinstance(value, list):
        for item in value:
            yield from texts_of(item)


def _slices(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        start = 0
        while start < len(text):
            end = min(start + SLICE_CHARS, len(text))
            if end < len(text):  # cut at a space where one is near, as the tokenizer's pre-split does
                space = text.rfind(" ", start + SLICE_CHARS // 2, end)
                end = space if space > start else end
            yield text[start:end]
            start = end


def check_prompt_size(texts: list[str], context: Optional[int], tokenizer, *,
                      param: str = "messages") -> None:
    """Refuse (400 context_length_exceeded) text that cannot fit `context` tokens; never tokenizes more
    than about `context` tokens' worth. Blocking: call it on a worker thread."""
    context = int(context or DEFAULT_CONTEXT)
    chars = sum(len(t) for t in texts)
    allowance = TEMPLATE_ALLOWANCE * max(1, len(texts))
    if 4 * chars + allowance <= context:
        return  # surely fits: a token is at least one byte
    longest = longest_token_bytes(tokenizer)
    if chars > context * longest:
        raise ContextExceeded(f"the request holds {chars} characters of text; this model's context is "
                              f"{context} tokens and one token covers at most {longest} characters, so it "
                              "cannot fit. Shorten the conversation.", param=param)
    hf = getattr(tokenizer, "hf_tokenizer", tokenizer)
    backend = getattr(hf, "backend_tokenizer", None)
    counted, batch, slices = 0, [], 0
    for piece in _slices(texts):
        batch.append(piece)
        slices += 1
        if len(batch) == SLICES_PER_BATCH:
            counted += _count(batch, backend, hf)
            batch = []
            if counted - 2 * slices > context:  # a cut may merge two tokens at most
                break
    if batch:
        counted += _count(batch, backend, hf)
    if counted - 2 * slices > context:
        raise ContextExceeded(f"the request's text is more than {context} tokens, this model's context; "
                              "shorten the conversation.", param=param)


def _count(batch: list[str], backend, hf) -> int:
    if backend is not None:  # the Rust tokenizer's batch call releases Python's lock while it works
        return sum(len(e.ids) for e in backend.encode_batch(batch, add_special_tokens=False))
    return sum(len(hf.encode(piece, add_special_tokens=False)) for piece in batch)


def check_file_size(path: Path, limit: int = MAX_LOCAL_FILE_BYTES, *, param: str) -> int:
    """The size of a local file, refused (413) above `limit` before any of it is read."""
    try:
        size = os.stat(path).st_size
    except OSError as error:
        raise BadRequest(f"{param}: cannot read {path} ({error.strerror or error})", param=param) from error
    if size > limit:
        raise PayloadTooLarge(f"{param}: {path} is {size} bytes; the most read from a local file is {limit}",
                              param=param)
    return size


def read_limited(path: Path, limit: int = MAX_LOCAL_FILE_BYTES, *, param: str) -> bytes:
    """A local file's bytes, its size checked first, and never more than `limit` read (it may grow)."""
    check_file_size(path, limit, param=param)
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"{param}: {path} grew past {limit} bytes while it was read", param=param)
    return data
