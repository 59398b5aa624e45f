"""A tiny random Gemma 4 with the real 262,144-token vocabulary and the real tokenizer files,
and scripted wrappers whose logits force a chosen reply (for deterministic streams): `ScriptedModel` one
stream of tokens, `TurnScriptedModel` one reply per turn of a conversation (the agent's turns)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from mlx_model.model import Model, ModelConfig
from tests.assets import gemma4_vocab_dir

TINY_CHAT_CONFIG = dict(
    model_type="gemma4_text", vocab_size=262_144, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
    num_attention_heads=2, num_key_value_heads=1, head_dim=32, global_head_dim=64, sliding_window=16,
    layer_types=["sliding_attention", "sliding_attention", "full_attention"], hidden_size_per_layer_input=0,
    final_logit_softcapping=30.0, eos_token_id=[1, 106, 50],
)


def build_tiny_chat_model(path: Path, seed: int = 0) -> Path:
    """Write a random float32 checkpoint with the real Gemma 4 tokenizer files into `path`."""
    path.mkdir(parents=True, exist_ok=True)
    mx.random.seed(seed)
    model = Model(ModelConfig.from_dict(TINY_CHAT_CONFIG))
    weights = {k: 0.05 * mx.random.normal(v.shape) for k, v in tree_flatten(model.parameters())}
    mx.save_safetensors(str(path / "model.safetensors"), weights)
    (path / "config.json").write_text(json.dumps(TINY_CHAT_CONFIG))
    for file in gemma4_vocab_dir().iterdir():
        if file.is_file() and not file.name.startswith("."):
            shutil.copy(file, path / file.name)
    return path


class ScriptedModel:
    """Delegates to a real model (so caches and shapes are real) but forces the next tokens."""

    def __init__(self, model, script: list[int]):
        self.model, self.script, self.step = model, list(script), 0
        self.language_model, self.config = model.language_model, model.config

    def make_cache(self, *args, **kwargs):
        return self.model.make_cache(*args, **kwargs)

    def __call__(self, inputs, cache=None, logits_to_keep=0, **kwargs):
        logits = self.model(inputs, cache=cache, logits_to_keep=logits_to_keep, **kwargs)
        token = self.script[min(self.step, len(self.script) - 1)]
        self.step += 1
        forced = mx.zeros(logits.shape[-1]).at[token].add(100.0)
        return logits * 0 + forced


class _Reading:
    """The language model, noting the prompt tokens it reads (the chunks of a prompt before its last token)."""

    def __init__(self, inner, read: list):
        self.inner, self.read = inner, read

    def __call__(self, inputs, *args, **kwargs):
        if inputs is not None:
            self.read[-1] += inputs.reshape(-1).tolist()
        return self.inner(inputs, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class TurnScriptedModel:
    """A real tiny model whose logits force one scripted reply per turn. Reading a prompt ends with a call
    for the logits of its last token (`logits_to_keep=1`): that starts the next reply; each call of the
    generation loop moves one token on. It keeps the prompt tokens each turn read, to see what the model
    was given."""

    def __init__(self, model, replies: list[list[int]]):
        self.model, self.replies, self.config = model, replies, model.config
        self.turn, self.position = -1, 0
        self.read: list[list[int]] = [[]]
        self.language_model = _Reading(model.language_model, self.read)

    def make_cache(self, *args, **kwargs):
        return self.model.make_cache(*args, **kwargs)

    def __call__(self, inputs, cache=None, logits_to_keep=0, **kwargs):
        logits = self.model(inputs, cache=cache, logits_to_keep=logits_to_keep, **kwargs)
        if logits_to_keep == 1:  # the end of a prompt: the next reply starts
            self.read[-1] += inputs.reshape(-1).tolist()
            self.read.append([])
            self.turn, self.position = self.turn + 1, 0
        else:
            self.position += 1
        reply = self.replies[min(self.turn, len(self.replies) - 1)]
        forced = mx.zeros(logits.shape[-1]).at[reply[min(self.position, len(reply) - 1)]].add(100.0)
        return logits * 0 + forced


TURN_END, TOOL_RESPONSE = 106, 50  # <turn|> ends an answer; <|tool_response> follows a tool call


def scripted_backend(replies: list[str]):
    """The app's real backend (gemma4_mac.engine.MlxBackend) whose loaded model writes `replies`, one per turn
    (a reply ending in a tool call is followed by <|tool_response>, any other by <turn|>)."""
    from gemma4_mac.engine import MlxBackend

    class ScriptedReplies(MlxBackend):
        def load(self, path):
            slot = super().load(path)
            encode = slot.processor.tokenizer.encode
            tokens = [encode(reply, add_special_tokens=False)
                      + [TOOL_RESPONSE if reply.endswith("<tool_call|>") else TURN_END] for reply in replies]
            slot.model = TurnScriptedModel(slot.model, tokens)
            return slot

    return ScriptedReplies()
