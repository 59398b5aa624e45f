"""Token counts for the composer's meter, made with the model's tokenizer on a thread of their own.

The window must never wait for a tokenizer (a pasted document takes a while to encode), and the model
thread may be busy answering for minutes, so counting has its own thread. It runs the tokenizer only,
never MLX. Requests replace each other: only the newest waiting one is counted. Texts already counted
(earlier turns, a document) come from a cache, so typing costs only the message being written.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Callable, Optional

from .attachments import Attachment, estimate_attachment_tokens, model_cannot_read
from .documents import estimate_tokens
from .history import Message, model_messages

TURN_TOKENS = 5  # "<|turn>user\n" ... "<turn|>\n" around each message
PROMPT_TOKENS = 8  # <bos> and the generation prompt "<|turn>model\n<|channel>thought\n<channel|>"
NOTE_TOKENS = 30  # "[x.png (image) was attached, but this model cannot take image files…]"
CACHE_ENTRIES = 512
log = logging.getLogger(__name__)

Counter = Callable[[str], int]


@dataclass
class CountRequest:
    """What the next prompt will hold: the conversation so far and the message being written (last)."""

    messages: list[Message]
    system_prompt: str = ""
    image_token_budget: int = 280
    raw: bool = False  # a base model reads only the last message (documents and text), no chat format
    model: Optional[dict] = None  # the engine's model info: media it cannot take count as a short note


@dataclass
class TokenCount:
    """The tokens of a prompt; `exact` when the model's tokenizer counted them (not an estimate)."""

    total: int
    exact: bool
    documents: dict[str, int] = field(default_factory=dict)  # attachment path -> tokens of its text


def count_prompt(request: CountRequest, count: Counter, exact: bool = True,
                 document_tokens: Optional[Callable[[Attachment], int]] = None) -> TokenCount:
    """The tokens `request` comes to with `count` (a tokenizer's token count of a text); `document_tokens`
    counts a document attachment (by default: its text as the prompt holds it, with `count`)."""
    document_tokens = document_tokens or (lambda a: count(document_as_read(a)))
    # a base model is given the message being written, alone
    messages = [m for m in request.messages[-1:] if m.role == "user"] if request.raw else request.messages
    if not messages and not request.system_prompt.strip():
        return TokenCount(0, exact)
    documents: dict[str, int] = {}
    total = 1 if request.raw else PROMPT_TOKENS
    if request.system_prompt.strip() and not request.raw:
        total += count(request.system_prompt.strip()) + TURN_TOKENS
    for message in messages:
        if message.role == "assistant":
            total += count(message.content) + TURN_TOKENS
            continue
        parts = []  # the pieces model_messages joins with a blank line (one token each)
        for a in message.attachments:
            if a.is_document:
                documents[str(a.path)] = document_tokens(a)
                parts.append(documents[str(a.path)])
            elif request.raw:
                continue  # a base model is given text only
            elif model_cannot_read(a, request.model):
                parts.append(NOTE_TOKENS)
            else:
                total += estimate_attachment_tokens(a, request.image_token_budget)
        if message.content:
            parts.append(count(message.content))
        total += sum(parts) + max(len(parts) - 1, 0) + (0 if request.raw else TURN_TOKENS)
    return TokenCount(total, exact, documents)


def document_as_read(attachment: Attachment) -> str:
    """A document's text as the prompt holds it (wrapped, trimmed as the person chose)."""
    shown = Message(0, 0, 0, "user", "", attachments=[attachment])
    content = model_messages([shown])[0]["content"]
    return content if isinstance(content, str) else ""


class TokenCounter:
    """A thread that counts prompts. `counter()` gives (token count of a text, exact?, cache key) for the
    model loaded now; `on_counted(request_id, TokenCount)` hears each result, on this thread."""

    def __init__(self, counter: Callable[[], tuple[Counter, bool, object]],
                 on_counted: Callable[[int, TokenCount], None], *, name: str = "gemma-token-count"):
        self._counter = counter
        self._on_counted = on_counted
        self._condition = threading.Condition()
        self._waiting: Optional[tuple[int, CountRequest]] = None
        self._next_id = 0
        self._closed = False
        self._cache: "collections.OrderedDict[tuple, int]" = collections.OrderedDict()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def request(self, request: CountRequest) -> int:
        """Queue a count (replacing one not yet started); returns its id."""
        with self._condition:
            self._next_id += 1
            self._waiting = (self._next_id, request)
            self._condition.notify()
            return self._next_id

    def close(self, timeout: float = 1.0) -> None:
        with self._condition:
            self._closed = True
            self._waiting = None
            self._condition.notify()
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout)

    def _take(self) -> Optional[tuple[int, CountRequest]]:
        with self._condition:
            while self._waiting is None and not self._closed:
                self._condition.wait()
            if self._closed:
                return None
            job, self._waiting = self._waiting, None
            return job

    def _run(self) -> None:
        while True:
            job = self._take()
            if job is None:
                return
            request_id, request = job
            try:
                count, exact, model_key = self._counter()
                cached = self._cached(count, model_key)
                result = count_prompt(request, cached, exact, lambda a: self._document(a, cached, model_key))
            except (OSError, ValueError, RuntimeError) as error:  # a tokenizer or file problem: estimate
                log.warning("counting tokens failed (%s); showing an estimate", error)
                result = count_prompt(request, estimate_tokens, exact=False)
            self._on_counted(request_id, result)

    def _document(self, attachment: Attachment, count: Counter, model_key: object) -> int:
        """A document's tokens, read and counted once per file, encoding and trim."""
        try:
            stat = attachment.path.stat()
            identity = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            identity = None  # gone: model_messages puts a note in its place, counted each time
        key = ("document", model_key, str(attachment.path), identity, attachment.meta.get("encoding"),
               attachment.meta.get("max_chars"))
        if identity is not None and key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        value = count(document_as_read(attachment))
        if identity is not None:
            self._remember(key, value)
        return value

    def _remember(self, key: tuple, value: int) -> None:
        self._cache[key] = value
        if len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)

    def _cached(self, count: Counter, model_key: object) -> Counter:
        def cached(text: str) -> int:
            key = (model_key, hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest())
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            value = count(text)
            self._remember(key, value)
            return value

        return cached
