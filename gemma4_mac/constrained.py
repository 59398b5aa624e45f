"""Constrained decoding: tokens that would break a JSON schema or a tool's parameters are masked.

Used by the server's endpoints (gemma4_mac.server) and by the app's agent (gemma4_mac.agent); Qt-free and
server-free: a grammar that cannot be built raises `ConstraintError`, which the server answers as a 400.

The grammar engine is llguidance (Rust; the one vLLM, SGLang and llama.cpp use). A grammar is written
in its Lark dialect, where `%json {...}` embeds a JSON schema and `<[id]>` names a special token, so a
reply can be "an optional thought, then JSON that fits the schema", "one or more tool calls to these
functions, with arguments that fit their schemas" (mlx_model/chat_format/call_grammar.py), or, for
tool_choice "auto", "free text, then optionally such calls". The logits processor feeds each sampled
token to the matcher and sets every token the grammar does not allow next to -inf; once the grammar is
complete only end-of-turn tokens remain.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import mlx.core as mx
import numpy as np

from mlx_model.chat_format.call_grammar import CallRules, text_terminal

log = logging.getLogger(__name__)

# JSON is written the way json.dumps writes it ({"a": 1, "b": [1, 2]}): natural for the model, and a
# fixed layout means a model cannot run away with whitespace.
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": ", "lenient": True}
MARKERS = {"call_open": "<|tool_call>", "call_close": "<tool_call|>", "string": '<|"|>',
           "thought_open": "<|channel>", "thought_close": "<channel|>"}


class ConstraintError(ValueError):
    """A constraint that cannot be enforced; `param` names the request field at fault, `code` says why."""

    def __init__(self, message: str, *, param: Optional[str] = None, code: Optional[str] = "invalid_schema"):
        super().__init__(message)
        self.param, self.code = param, code


class ConstraintUnavailable(ConstraintError):
    """The model's vocabulary lacks what the constraint needs (Gemma 3 has no tool-call tokens)."""


@dataclass
class ReplyShape:
    """What the reply must look like; None fields are unconstrained."""

    json_schema: Optional[dict] = None  # the answer is JSON fitting this schema
    tools: Optional[list[tuple[str, Optional[dict]]]] = None  # the reply is calls to these (name, parameters)
    tools_or_json: bool = False  # with both set: either calls or JSON
    free_text: bool = False  # tool_choice "auto": text, then (optionally) calls that fit their schemas
    single_call: bool = False  # parallel_tool_calls=false: at most one call
    allow_thought: bool = False  # a thought block may come first
    in_thought: bool = False  # the prompt opened a thought: the reply starts inside it

    @property
    def needs_markers(self) -> bool:
        return bool(self.tools) or self.allow_thought or self.in_thought


def build_grammar(shape: ReplyShape, token_ids: dict[str, int], *, lenient: bool = False) -> str:
    """The Lark grammar for a reply shape (token ids of the markers by MARKERS key)."""
    if shape.json_schema is None and not shape.tools:
        raise ValueError("an unconstrained reply needs no grammar")
    rules, bodies = [], []
    if shape.json_schema is not None and not shape.free_text:
        schema = dict(shape.json_schema)
        schema["x-guidance"] = {**JSON_LAYOUT, **(schema.get("x-guidance") or {})}
        rules.append("json_reply: %json " + json.dumps(schema))
        bodies.append("json_reply")
    if shape.tools:
        calls = CallRules(token_ids["string"], token_ids["call_open"], token_ids["call_close"],
                          lenient=lenient)
        calls_rule = calls.calls_rule(shape.tools, shape.single_call)
        bodies.append(f"ANSWER_TEXT? {calls_rule}?" if shape.free_text else calls_rule)
        rules += calls.rules
        if shape.free_text:
            rules.append(f"ANSWER_TEXT: {text_terminal()}")
    if not shape.tools_or_json:
        bodies = bodies[:1]
    rules.insert(0, "body: " + " | ".join(bodies))
    close = f'<[{token_ids.get("thought_close")}]>'
    if shape.in_thought:
        head = f"start: THOUGHT_TEXT? {close} body"
    elif shape.allow_thought:
        head = "start: thought? body"
        rules.append(f'thought: <[{token_ids["thought_open"]}]> "thought\\n" THOUGHT_TEXT? {close}')
    else:
        head = "start: body"
    if shape.in_thought or shape.allow_thought:
        rules.append(f"THOUGHT_TEXT: {text_terminal()}")
    return "\n".join([head] + rules) + "\n"


def _unpack(bitmask: bytes, size: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bitmask, dtype=np.uint8), bitorder="little")[:size].astype(bool)


class GrammarLogitsProcessor:
    """A `generate_tokens` logits processor: masks what the grammar forbids after the tokens so far.

    The history of the first call is the prompt (or `prompt_length` tokens of it are); every later
    token was sampled and is fed to the matcher exactly once.
    """

    def __init__(self, matcher, eos_token_ids: Sequence[int], prompt_length: Optional[int] = None):
        self.matcher = matcher
        self.prompt_length = prompt_length
        self.eos_token_ids = list(eos_token_ids)
        self.consumed = 0
        self.failed: Optional[str] = None

    def __call__(self, history: mx.array, logits: mx.array) -> mx.array:
        if self.prompt_length is None:
            self.prompt_length = history.size
        start = self.prompt_length + self.consumed
        new = history[start:].tolist() if history.size > start else []
        for token in new:
            self.consumed += 1
            if self.failed is None and not self.matcher.consume_token(int(token)):
                self.failed = self.matcher.get_error() or f"token {token} was refused"
                log.warning("constrained decoding stopped following the grammar: %s", self.failed)
        vocab = logits.shape[-1]
        if self.failed is not None or self.matcher.is_error():
            allowed = np.zeros(vocab, dtype=bool)
            allowed[[t for t in self.eos_token_ids if t < vocab]] = True  # end rather than go on blind
        else:
            allowed = _unpack(self.matcher.compute_bitmask(), vocab)
        return mx.where(mx.array(allowed), logits, mx.array(-float("inf"), dtype=logits.dtype))


class BannedTokensProcessor:
    """Never samples the given tokens (tool_choice "none" bans the tool-call opener). The mask is made on
    the first call, on the model thread, like every MLX array."""

    def __init__(self, token_ids: Sequence[int], vocab_size: int):
        self.token_ids, self.vocab_size = list(token_ids), vocab_size
        self.banned: Optional[mx.array] = None

    def __call__(self, history: mx.array, logits: mx.array) -> mx.array:
        if self.banned is None:
            banned = np.zeros(self.vocab_size, dtype=bool)
            banned[[t for t in self.token_ids if 0 <= t < self.vocab_size]] = True
            self.banned = mx.array(banned)
        return mx.where(self.banned, mx.array(-float("inf"), dtype=logits.dtype), logits)


_VOCABULARIES: dict[tuple, object] = {}  # (tokenizer.json digest or object id, size, eos) -> LLTokenizer
_VOCABULARIES_LOCK = threading.Lock()


def vocabulary_for_grammars(tokenizer, vocab_size: int):
    """llguidance's tokenizer for this vocabulary: seconds of work that hold Python's lock, so it is done
    once per vocabulary in the process (a restarted server, a reloaded model reuse it), from the model's
    tokenizer.json as written when there is one (serializing the loaded tokenizer costs as much again)."""
    import llguidance
    import llguidance.hf

    hf = tokenizer.hf_tokenizer
    size = max(vocab_size, len(hf))
    eos = tuple(tokenizer.eos_token_ids)
    source = Path(str(getattr(hf, "name_or_path", "") or "")) / "tokenizer.json"
    text = source.read_text(encoding="utf-8") if source.is_file() else None
    key = (hashlib.sha256(text.encode("utf-8")).hexdigest() if text else id(tokenizer), size, eos)
    with _VOCABULARIES_LOCK:
        built = _VOCABULARIES.get(key)
        if built is None:
            built = llguidance.LLTokenizer(text, n_vocab=size, eos_token=list(eos)) if text else None
            if built is None or built.vocab_size != size:
                built = llguidance.hf.from_tokenizer(hf, n_vocab=size, eos_token=list(eos))
            _VOCABULARIES[key] = built
        return built


class ConstraintFactory:
    """Logits processors for one tokenizer; llguidance's view of the vocabulary is built once (~5 s)."""

    def __init__(self, tokenizer, vocab_size: int):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._ll_tokenizer = None
        self._lock = threading.Lock()

    def token_ids(self) -> dict[str, int]:
        """Ids of Gemma 4's reply markers; ConstraintUnavailable when the vocabulary lacks one."""
        ids = {key: self.tokenizer.token_id(text) for key, text in MARKERS.items()}
        missing = [MARKERS[k] for k, v in ids.items() if v is None]
        if missing:
            raise ConstraintUnavailable(f"the loaded model has no {', '.join(missing)} token(s): tool calls "
                                        "and thoughts cannot be constrained with it (is it a Gemma 3 model?)",
                                        code=None)
        return ids

    def ll_tokenizer(self):
        """llguidance's view of the vocabulary, built once per vocabulary in this process."""
        with self._lock:
            if self._ll_tokenizer is None:
                self._ll_tokenizer = vocabulary_for_grammars(self.tokenizer, self.vocab_size)
            return self._ll_tokenizer

    def grammar_processor(self, shape: ReplyShape, *,
                          param: str = "response_format") -> GrammarLogitsProcessor:
        """A fresh processor for one reply; ConstraintError (naming `param`) when the grammar cannot be built.

        A tool schema whose patterns the engine cannot compile is enforced without its patterns and
        formats (agents do not choose their tools' schemas; refusing them would refuse the agent)."""
        import llguidance

        ids = self.token_ids() if shape.needs_markers else {}
        tokenizer = self.ll_tokenizer()
        grammar = llguidance.LLMatcher.grammar_from_lark(build_grammar(shape, ids))
        problem = llguidance.LLMatcher.validate_grammar(grammar, tokenizer)
        if problem and shape.tools:
            log.warning("tool schemas enforced without their patterns: %s", problem.strip())
            grammar = llguidance.LLMatcher.grammar_from_lark(build_grammar(shape, ids, lenient=True))
            problem = llguidance.LLMatcher.validate_grammar(grammar, tokenizer)
        if problem:
            raise ConstraintError(f"{param}: the schema cannot be enforced: {problem.strip()}", param=param)
        matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise ConstraintError(f"{param}: the schema cannot be enforced: {matcher.get_error()}", param=param)
        return GrammarLogitsProcessor(matcher, self.tokenizer.eos_token_ids)

    def banned(self, texts: Sequence[str]) -> BannedTokensProcessor:
        ids = [self.tokenizer.token_id(t) for t in texts]
        return BannedTokensProcessor([i for i in ids if i is not None], self.vocab_size)


def factory_for(model, tokenizer) -> ConstraintFactory:
    """A ConstraintFactory for a loaded model (its vocabulary size comes from its config)."""
    text_config = getattr(getattr(model, "config", None), "text_config", None)
    vocab = getattr(text_config, "vocab_size", None)
    return ConstraintFactory(tokenizer, int(vocab or tokenizer.vocab_size))


def agent_processors(factory: ConstraintFactory, tools: Sequence[tuple[str, Optional[dict]]], *,
                     allow_calls: bool, in_thought: bool) -> list:
    """Logits processors for one turn of the app's agent: free text, then (optionally) calls to `tools` whose
    arguments fit their schemas; or, with `allow_calls` false, no call at all. A vocabulary without the
    markers (Gemma 3) or a schema the engine cannot compile leaves the turn unconstrained."""
    if not allow_calls:
        return [factory.banned([MARKERS["call_open"]])]
    shape = ReplyShape(tools=list(tools), free_text=True, allow_thought=True, in_thought=in_thought)
    try:
        return [factory.grammar_processor(shape, param="tools")]
    except ConstraintError as error:
        log.warning("tool calls left unconstrained: %s", error)
        return []
