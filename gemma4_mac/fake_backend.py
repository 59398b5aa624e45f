"""A scripted backend for the engine: no MLX, the same threading and signals (tests, screenshots, demos)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from .documents import estimate_tokens
from .engine import CANCELLED_DOWNLOAD, DEFAULT_CONTEXT, EngineError, GenerationRequest
from .worker import ModelSlot


@dataclass
class FakeEvent:
    """The shape of `generate.GenerationEvent`, without MLX."""

    kind: str
    text: str = ""
    tool_call: Optional[dict] = None
    stats: Optional[dict] = None
    progress: Optional[tuple[int, int]] = None


def default_fake_reply(request: GenerationRequest) -> list[tuple[str, Any]]:
    """A deterministic reply that exercises thoughts, Markdown and code."""
    last = request.messages[-1]["content"] if request.messages else request.raw_prompt or ""
    if isinstance(last, list):
        last = " ".join(p.get("text", "") for p in last if p.get("type") == "text")
    steps: list[tuple[str, Any]] = []
    if request.enable_thinking:
        steps += [("thought", w + " ") for w in "The person asked something; answer briefly and show code.".split()]
    reply = (f"You said: **{last.strip()[:200]}**\n\nHere is some code:\n\n```python\n"
             "def greet(name):\n    return f\"Hello, {name}!\"\n```\n\nAnything else?")
    steps += [("answer", piece) for piece in _pieces(reply)]
    return steps


def _pieces(text: str, size: int = 6) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


class FakeBackend:
    """A scripted backend for tests and screenshots: no MLX, same threading and signals.

    `script(request)` returns (kind, payload) steps: ("answer"|"thought", text), ("tool_call", dict) or
    ("progress", (read, total)).
    `token_delay` seconds pass between steps; the cancel event is honoured between steps.
    """

    def __init__(self, script: Optional[Callable[[GenerationRequest], list]] = None, *, token_delay: float = 0.0,
                 load_delay: float = 0.0, load_error: Optional[str] = None, generate_error: Optional[str] = None,
                 context_limit: int = DEFAULT_CONTEXT, model_name: str = "Fake Gemma", can_see: bool = True,
                 can_hear: bool = True):
        self.script = script or default_fake_reply
        self.token_delay, self.load_delay = token_delay, load_delay
        self.load_error, self.generate_error = load_error, generate_error
        self.context_limit, self.model_name = context_limit, model_name
        self.can_see, self.can_hear = can_see, can_hear  # the towers the scripted model claims to have
        self.requests: list[GenerationRequest] = []
        self.threads: set[str] = set()
        self.conversions: list[tuple[str, Path]] = []
        self.base_models: list[bool] = []  # each conversion's base_model flag

    def load(self, path: Optional[Path]) -> ModelSlot:
        self.threads.add(threading.current_thread().name)
        time.sleep(self.load_delay)
        if self.load_error:
            raise EngineError(self.load_error)
        starter = path is None
        name = "Gemma 3 270M (base, completion only; not a chat model)" if starter else self.model_name
        info = {"path": str(path or "starter"), "name": name, "is_starter": starter, "chat": not starter,
                "size_bytes": 0, "context_limit": self.context_limit, "can_see": self.can_see,
                "can_hear": self.can_hear}
        return ModelSlot(object(), None, info)

    def generate(self, loaded: ModelSlot, request: GenerationRequest, cancel: threading.Event) -> Iterator[Any]:
        self.threads.add(threading.current_thread().name)
        self.requests.append(request)
        if self.generate_error:
            raise EngineError(self.generate_error)
        started = time.perf_counter()
        first = None
        count, finish = 0, "stop"
        for kind, payload in self.script(request):
            if cancel.is_set():
                finish = "cancelled"
                break
            if self.token_delay:
                time.sleep(self.token_delay)
            if kind == "progress":
                yield FakeEvent("progress", progress=tuple(payload))
                continue
            first = first or time.perf_counter()
            count += 1
            if kind == "tool_call":
                finish = "tool_calls"
                yield FakeEvent("tool_call", tool_call=payload)
            else:
                yield FakeEvent(kind, text=payload)
        elapsed = time.perf_counter() - (first or started)
        prompt = sum(estimate_tokens(str(m.get("content", ""))) for m in request.messages)
        yield FakeEvent("done", stats={
            "prompt_tokens": prompt, "generation_tokens": count, "prompt_tps": 1500.0,
            "generation_tps": count / elapsed if elapsed > 0 else 0.0,
            "time_to_first_token": (first or started) - started, "peak_memory_bytes": 3_200_000_000,
            "finish_reason": finish})

    def download(self, repo_id: str, progress: Callable[[dict], None], cancel: threading.Event) -> str:
        self.threads.add(threading.current_thread().name)
        self._steps(range(0, 6), "download", repo_id, progress, cancel)
        return f"cache/{repo_id}"

    def prepare_starter(self, progress: Callable[[dict], None]) -> Optional[Path]:
        return None  # load(None) is the scripted starter

    def convert(self, repo_id: str, destination: Path, label: str, progress: Callable[[dict], None],
                cancel: threading.Event, source: Optional[str] = None, base_model: bool = False) -> Path:
        self.threads.add(threading.current_thread().name)
        self._steps(range(6, 11), "convert", repo_id, progress, cancel)
        destination.mkdir(parents=True, exist_ok=True)
        meta = {"display_name": label, "source": repo_id}
        (destination / "config.json").write_text(json.dumps({"gemma4_mac": meta}))
        (destination / "model.safetensors").write_bytes(b"\0" * 16)
        self.conversions.append((repo_id, destination))
        self.base_models.append(base_model)
        return destination

    def _steps(self, steps: range, stage: str, repo_id: str, progress: Callable[[dict], None],
               cancel: threading.Event) -> None:
        for i in steps:
            if cancel.is_set():
                raise EngineError(CANCELLED_DOWNLOAD)
            progress({"stage": stage, "fraction": i / 10, "message": f"step {i} of 10", "item": repo_id})
            time.sleep(self.token_delay)

    def count_tokens(self, loaded: Optional[ModelSlot], text: str) -> int:
        return estimate_tokens(text)
