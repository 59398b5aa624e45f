"""A checkpoint's tokenizer: transformers' tokenizer, mlx-lm's streaming detokenizer and Gemma's chat format.

`load_tokenizer(folder)` reads tokenizer.json / tokenizer_config.json / chat_template.jinja (or the
template in tokenizer_config.json or chat_template.json). Streamed text keeps special tokens such as
`<|channel>` as text, since the output parser reads them. Without a template file the built-in renderer
(chat_format.py) is used.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from .chat_format import (END_MARKERS, STYLES, control_tokens, encode_with_literals, escape_messages,
                          normalize_tools, render_builtin, render_template)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


class TokenizerLoadError(RuntimeError):
    """The folder has tokenizer files that cannot be read; the message names the folder and the fix."""


def _read_json(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TokenizerLoadError(f"{path} is not valid JSON ({error}); download the model again.") from error
    return value if isinstance(value, dict) else {}


def _ids(value: Any) -> list[int]:
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def builtin_style_for(config: Mapping, vocab: Mapping[str, int]) -> str:
    """The built-in chat style that fits a checkpoint: Gemma 3 by its vocabulary, E2B/E4B ("small") by their
    per-layer inputs or audio tower, everything else "large" (26B/31B). No config.json means "small"."""
    if "<|turn>" not in vocab and "<start_of_turn>" in vocab:
        return "gemma3"
    if not config:
        return "small"
    text = config.get("text_config") or config
    if text.get("hidden_size_per_layer_input") or config.get("audio_config"):
        return "small"
    return "large"


def _streaming_detokenizer(hf_tokenizer):
    """mlx-lm's streaming detokenizer that fits the tokenizer's decoder (tokenizer_utils.load's rules)."""
    from mlx_lm.tokenizer_utils import (BPEStreamingDetokenizer, NaiveStreamingDetokenizer,
                                        SPMStreamingDetokenizer)

    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    decoder = backend.decoder if backend is not None else None
    spec = json.loads(decoder.__getstate__()) if decoder is not None else {}
    steps = spec.get("decoders", []) if spec.get("type") == "Sequence" else [spec]
    kinds = [step.get("type") for step in steps]
    if kinds[:3] == ["Replace", "ByteFallback", "Fuse"] and steps[0].get("content") == " ":
        if len(kinds) == 3:  # Gemma: no leading space to drop
            return SPMStreamingDetokenizer(hf_tokenizer, trim_space=False)
        if kinds[3:] == ["Strip"] and (steps[3].get("start"), steps[3].get("stop")) == (1, 0):
            return SPMStreamingDetokenizer(hf_tokenizer, trim_space=True)
    if kinds == ["ByteLevel"]:
        return BPEStreamingDetokenizer(hf_tokenizer)
    return NaiveStreamingDetokenizer(hf_tokenizer)


class Tokenizer:
    """Encode, decode, stream-decode and render chats for one checkpoint."""

    def __init__(self, hf_tokenizer, *, eos_token_ids: Iterable[int], chat_template: Optional[str],
                 builtin_style: str, source: Optional[Path] = None):
        if builtin_style not in STYLES:
            raise ValueError(f"unknown chat style {builtin_style!r}; use one of {STYLES}")
        self._hf = hf_tokenizer
        self._detokenizer = _streaming_detokenizer(hf_tokenizer)  # built once: its token map is large
        self.eos_token_ids: tuple[int, ...] = tuple(sorted(set(eos_token_ids)))
        self.chat_template = chat_template
        self.builtin_style = builtin_style
        self.source = source
        self.control_tokens = control_tokens(getattr(hf_tokenizer, "added_tokens_decoder", {}).values())

    @property
    def hf_tokenizer(self):
        """The underlying transformers tokenizer (for processors that need it)."""
        return self._hf

    @property
    def detokenizer(self):
        """A fresh streaming detokenizer (mlx-lm's) for one generation; special tokens come out as text."""
        detokenizer = copy.copy(self._detokenizer)
        detokenizer.reset()
        return detokenizer

    @property
    def bos_token_id(self) -> Optional[int]:
        return self._hf.bos_token_id

    @property
    def bos_token(self) -> Optional[str]:
        return self._hf.bos_token

    @property
    def pad_token_id(self) -> Optional[int]:
        return self._hf.pad_token_id

    @property
    def vocab_size(self) -> int:
        return len(self._hf)

    def token_id(self, token: str) -> Optional[int]:
        """The id of a token given by its text (e.g. "<|image|>"), or None when the vocabulary lacks it."""
        backend = getattr(self._hf, "backend_tokenizer", None)
        if backend is not None:
            return backend.token_to_id(token)
        return self._hf.get_vocab().get(token)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; special-token text such as "<|turn>" becomes the special token.

        `add_special_tokens` follows the checkpoint: Gemma 3 adds <bos>, Gemma 4's reference tokenizer
        does not (its chat template writes <bos>). Control tokens that `apply_chat_template` marked as
        typed text (control_text.py) become the ids of their characters."""
        return encode_with_literals(text, self._encode_plain, add_special_tokens)

    def _encode_plain(self, text: str, add_special_tokens: bool) -> list[int]:
        return list(self._hf.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self._hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: Sequence[Mapping], tools: Optional[Sequence[Mapping]] = None,
                            enable_thinking: bool = False, add_generation_prompt: bool = True,
                            **extra) -> str:
        """The prompt text for a conversation: the checkpoint's template if it has one, else our renderer.

        Control tokens inside what people and tools wrote are marked to stay text (see `encode`)."""
        tools = normalize_tools(tools)
        messages = escape_messages(messages, self.control_tokens)
        if self.chat_template is not None:
            variables = {k: v for k, v in self._hf.special_tokens_map.items() if isinstance(v, str)}
            return render_template(self.chat_template, messages, tools=tools, enable_thinking=enable_thinking,
                                   add_generation_prompt=add_generation_prompt, **{**variables, **extra})
        return render_builtin(messages, tools, enable_thinking, add_generation_prompt,
                              style=self.builtin_style,
                              preserve_thinking=bool(extra.get("preserve_thinking", False)),
                              bos_token=self.bos_token or "<bos>")


def _chat_template(hf_tokenizer, folder: Path) -> Optional[str]:
    template = hf_tokenizer.chat_template
    if isinstance(template, dict):  # several named templates
        template = template.get("default") or next(iter(template.values()), None)
    if isinstance(template, list):  # [{"name":..., "template":...}] as in older tokenizer_config.json files
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    if not template:
        template = _read_json(folder / "chat_template.json").get("chat_template")  # processor-style file
    return template if isinstance(template, str) and template else None


def load_tokenizer(model_dir: Path | str, *, builtin_style: Optional[str] = None) -> Optional[Tokenizer]:
    """The checkpoint's tokenizer, or None when the folder has no tokenizer files (tiny test checkpoints).

    End-of-reply ids are the union of generation_config.json, config.json, the tokenizer's eos and the
    end tokens the vocabulary has (Gemma 4: 1, 106, 50; Gemma 3: 1, 106).
    """
    folder = Path(model_dir).expanduser()
    if not any((folder / name).exists() for name in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    config = _read_json(folder / "config.json")
    generation_config = _read_json(folder / "generation_config.json")
    try:
        hf = AutoTokenizer.from_pretrained(str(folder))
    except Exception as error:  # the Rust `tokenizers` library reports a bad file as a bare Exception
        raise TokenizerLoadError(f"{folder}: the tokenizer files could not be read ({type(error).__name__}: "
                                 f"{error}). Download the model again or convert it anew.") from error
    vocab = hf.get_vocab()
    eos = set(_ids(hf.eos_token_id))
    eos.update(_ids(generation_config.get("eos_token_id")))
    eos.update(_ids(config.get("eos_token_id")))
    eos.update(_ids((config.get("text_config") or {}).get("eos_token_id")))
    eos.update(vocab[token] for token in END_MARKERS if token in vocab)
    style = builtin_style or builtin_style_for(config, vocab)
    return Tokenizer(hf, eos_token_ids=eos, chat_template=_chat_template(hf, folder), builtin_style=style,
                     source=folder)
