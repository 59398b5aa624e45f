"""The server under test: a tiny random Gemma 4 (with tiny vision and audio towers) and the real tokenizer,
served on 127.0.0.1 by the real app, with a wrapper whose logits can force each reply token by token.

Each server test module starts its own (module-scoped) with `serve()`; `raw_request` talks HTTP without a
client library, for headers and bodies the official clients never send.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import http.client
import io
import json
import os
import re
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

import mlx.core as mx
import numpy as np

from gemma4_mac.server.app import ServerHandle, create_app
from gemma4_mac.server.routes import ServerOptions
from gemma4_mac.server.service import GenerationService
from gemma4_mac.worker import ModelSlot, ModelWorker
from tests.tiny_chat_model import TINY_CHAT_CONFIG, build_tiny_chat_model

MODEL_ID = "tiny-gemma-4"
TOOL_CALL_OPEN, TOOL_RESPONSE, END_OF_TURN = 48, 50, 106
CONTEXT_LIMIT = 16384


class ScriptBook:
    """Wraps the real model (real caches and shapes). While scripts are queued, each reply follows the next
    one token by token (its last token repeats); with none queued the model's own logits are used, plus
    `bias` (token id -> added logit) when set. A reply starts at the prompt's last prefill chunk, the one
    call made with `logits_to_keep`."""

    capabilities = ("vision", "audio")  # the wrapped model has both towers; the reply is scripted anyway

    def __init__(self, model):
        self.model = model
        self.language_model, self.config = model.language_model, model.config
        self.scripts: collections.deque[list[int]] = collections.deque()
        self.current: Optional[list[int]] = None
        self.step = 0
        self.bias: Optional[mx.array] = None

    def make_cache(self, *args, **kwargs):
        return self.model.make_cache(*args, **kwargs)

    def __getattr__(self, name):  # the towers (image_features, audio_features, ...) are the real model's
        return getattr(self.model, name)

    def __call__(self, inputs, cache=None, logits_to_keep=0, **kwargs):
        logits = self.model(inputs, cache=cache, logits_to_keep=logits_to_keep, **kwargs)
        if logits_to_keep:
            self.current = self.scripts.popleft() if self.scripts else None
            self.step = 0
        if self.current is None:
            return logits if self.bias is None else logits + self.bias
        token = self.current[min(self.step, len(self.current) - 1)]
        self.step += 1
        return logits * 0 + mx.zeros(logits.shape[-1]).at[token].add(100.0)


@dataclass
class Observed:
    """What the service saw on the model thread: each prompt, and each attachment (type, path, existed)."""

    prompts: list[list[int]] = field(default_factory=list)
    attachments: list[list[tuple[str, str, bool]]] = field(default_factory=list)

    def __call__(self, prepared, job) -> None:
        self.prompts.append(list(prepared.tokens))
        parts = []
        for message in job.conversation.messages if job.conversation else []:
            content = message.get("content")
            for part in content if isinstance(content, list) else []:
                if part.get("type") in ("image", "audio"):
                    parts.append((part["type"], part["path"], Path(part["path"]).is_file()))
        self.attachments.append(parts)


@dataclass
class Served:
    """A running server over the tiny model; `script(text)` forces the next reply."""

    handle: ServerHandle
    base_url: str
    book: ScriptBook
    tokenizer: object
    service: GenerationService
    worker: ModelWorker
    observed: Observed
    extra: list = field(default_factory=list)  # more handles over the same service

    def script(self, text: str, end: int = END_OF_TURN) -> None:
        self.book.scripts.append(self.tokenizer.encode(text, add_special_tokens=False) + [end])

    def also_serve(self, options: ServerOptions) -> str:
        """Another server (other options) over the same model; returns its base URL."""
        handle = ServerHandle(create_app(self.service, options), "127.0.0.1", 0).start()
        self.extra.append(handle)
        return handle.base_url

    @property
    def root(self) -> str:
        return self.base_url[: -len("/v1")]

    def stop(self) -> None:
        for handle in [self.handle, *self.extra]:
            handle.stop()
        self.service.close()
        self.worker.stop()

    def prompt_text(self) -> str:
        return self.tokenizer.decode(self.observed.prompts[-1])


def build_tiny_multimodal_model(path: Path, **text_overrides) -> Path:
    """The tiny chat model plus tiny vision and audio towers (so the processor expands attachments);
    `text_overrides` change its text config (e.g. hidden_size_per_layer_input for PLE)."""
    from mlx.utils import tree_flatten
    from transformers import Gemma4AudioConfig, Gemma4VisionConfig

    from mlx_model.model import Model, ModelConfig

    build_tiny_chat_model(path)  # tokenizer files
    vision = Gemma4VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=2, head_dim=16,
                                position_embedding_size=64).to_dict()
    audio = Gemma4AudioConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                              subsampling_conv_channels=[128, 8], output_proj_dims=32).to_dict()
    config = {"model_type": "gemma4", "text_config": {**TINY_CHAT_CONFIG, **text_overrides}, "vision_config": vision,
              "audio_config": audio, "eos_token_id": TINY_CHAT_CONFIG["eos_token_id"]}
    mx.random.seed(0)
    model = Model(ModelConfig.from_dict(config))
    weights = {k: 0.05 * mx.random.normal(v.shape) for k, v in tree_flatten(model.parameters())}
    mx.save_safetensors(str(path / "model.safetensors"), weights)
    (path / "config.json").write_text(json.dumps(config))
    (path / "processor_config.json").write_text("{}")  # the towers' settings: the published defaults
    return path


def serve(path: Path, options: Optional[ServerOptions] = None, *, worker: Optional[ModelWorker] = None,
          library_entries=lambda: []) -> Served:
    """Load the tiny model (wrapped in a ScriptBook) on a worker and serve it on a free port, as the app
    does (the server never swaps the model); `library_entries()` stands for the app's model library."""
    from gemma4_mac.server.library import ModelLibrary
    from mlx_model import load

    worker = worker or ModelWorker()

    def load_wrapped() -> ModelSlot:
        model, processor = load(path)
        processor.image_token_budget = 70  # the smallest: a short prompt on two cores
        return ModelSlot(ScriptBook(model), processor,
                         {"id": MODEL_ID, "path": str(path), "context_limit": CONTEXT_LIMIT})

    slot = worker.load(load_wrapped).wait()
    observed = Observed()
    library = ModelLibrary(worker, owns_model=False, entries=library_entries)
    service = GenerationService(worker, observer=observed, library=library)
    handle = ServerHandle(create_app(service, options or ServerOptions()), "127.0.0.1", 0).start()
    return Served(handle, handle.base_url, slot.model, slot.processor, service, worker, observed)


@contextlib.contextmanager
def serve_process(model: Path, home: Path, *flags: str):
    """`python -m gemma4_mac serve --model MODEL --port 0 FLAGS` in its own process, with its data folder in
    `home`; yields (the process, its base URL) once it said where it listens."""
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "GEMMA4_MAC_HOME": str(home), "PYTHONPATH": str(repo)}
    command = [sys.executable, "-m", "gemma4_mac", "serve", "--model", str(model), "--port", "0", *flags]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                               cwd=repo)
    try:
        url = None
        for line in process.stderr:
            found = re.search(r"at (http://\S+/v1)", line)
            if found:
                url = found.group(1)
                break
        assert url, "the server never said where it listens"
        threading.Thread(target=process.stderr.read, daemon=True).start()  # keep its log flowing
        yield process, url
    finally:
        process.terminate()
        process.wait(30)


def raw_request(base_url: str, method: str, path: str, body: bytes = b"", headers: Optional[dict] = None,
                timeout: float = 30) -> tuple[int, dict, dict]:
    """A request without a client library; (status, JSON body or None, response headers in lower case)."""
    url = urlparse(base_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    try:
        connection.putrequest(method, url.path + path, skip_host=True, skip_accept_encoding=True)
        sent = {"Host": f"{url.hostname}:{url.port}", "Content-Type": "application/json",
                "Content-Length": str(len(body)), **(headers or {})}
        for name, value in sent.items():
            if value is not None:
                connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        data = response.read()
        try:
            parsed = json.loads(data) if data else None
        except ValueError:
            parsed = None
        return response.status, parsed, {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()


def png_data_url(size: int = 8) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    pixels = (np.arange(size * size * 3) % 251).astype(np.uint8).reshape(size, size, 3)
    Image.fromarray(pixels).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
