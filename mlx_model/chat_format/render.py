"""Gemma chat formats: a checkpoint's Jinja template rendered as transformers does, and our own renderer.

`render_builtin` writes the same text as Google's templates, byte for byte, without Jinja:
style "small" = gemma-4-e2b-it.jinja (E2B/E4B), "large" = gemma-4-31b-it.jinja (26B/31B: an empty thought
block closes the generation prompt when thinking is off), "gemma3" = Gemma 3's template. Where a template
fails on an input (a dict as a tool result, JSON-string arguments in "small"), ours renders the evident
intent.

Messages are HF/OpenAI dicts: {"role": "system"|"user"|"assistant"|"tool", "content": str | [parts],
"tool_calls": [{"type": "function", "function": {"name", "arguments": dict}}], "reasoning_content": str}
("thinking" and "reasoning" are accepted as names of the reasoning, as transformers does); content parts are
{"type": "text", "text"}, {"type": "image"}, {"type": "audio"}, {"type": "video"}.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any, Optional, Sequence

from .markers import DELIM

STYLES = ("small", "large", "gemma3")
_STANDARD_KEYS = ("description", "type", "properties", "required", "nullable")
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class ChatFormatError(ValueError):
    """A conversation cannot be rendered; the message names the message or template at fault."""


# ----------------------------------------------------------------------------------------- shared input rules

def _plain(value: Any) -> Any:
    """A copy of plain JSON-like types only (transformers' _plain_template_data): templates are untrusted."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _plain(value.item())
    return f"<{type(value).__name__}>"


def prepare_messages(messages: Sequence[Mapping]) -> list[dict]:
    """What a template sees, as in transformers' apply_chat_template: plain copies, keys whose value is None
    dropped, and `reasoning_content` filled from `thinking`/`reasoning` (and `thinking` from either)."""
    prepared = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ChatFormatError(f"message {index} is a {type(message).__name__}, "
                                  "not a dict with 'role' and 'content'")
        message = {k: v for k, v in _plain(message).items() if v is not None}
        if not isinstance(message.get("role"), str):
            raise ChatFormatError(f"message {index} has no 'role' (user, assistant, system or tool)")
        reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        prepared.append(message)
    return prepared


def normalize_tools(tools: Optional[Sequence[Mapping]]) -> Optional[list[dict]]:
    """Tools as OpenAI-style {"type": "function", "function": {...}}; a bare function dict is wrapped."""
    if tools is None:
        return None
    normalized = []
    for index, tool in enumerate(tools):
        if not isinstance(tool, Mapping):
            raise ChatFormatError(f"tool {index} is a {type(tool).__name__}; tools are JSON-schema dicts")
        tool = _plain(tool)
        if "function" not in tool and "name" in tool:
            tool = {"type": "function", "function": tool}
        normalized.append(tool)
    return normalized


# ------------------------------------------------------------------------------- checkpoint templates (Jinja)

@lru_cache(maxsize=16)
def _compile(template: str):
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}` (transformers' assistant-span marker): the body only."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    class Namespace(jinja2.utils.Namespace):
        """namespace() that refuses underscore attributes, as transformers' sandbox does."""

        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"chat templates may not set {name!r} on a namespace")

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.globals["dict"] = lambda *a, **k: dict(*a, **k)
    env.globals["namespace"] = Namespace
    return env.from_string(template)


def render_template(template: str, messages: Sequence[Mapping], tools: Optional[Sequence[Mapping]] = None,
                    enable_thinking: bool = False, add_generation_prompt: bool = True, **extra) -> str:
    """Render a checkpoint's chat template exactly as transformers' `apply_chat_template(tokenize=False)`.

    `extra` reaches the template as variables (bos_token, eos_token, preserve_thinking, ...); bos_token
    defaults to Gemma's "<bos>".
    """
    import jinja2

    try:
        compiled = _compile(template)
    except jinja2.TemplateSyntaxError as error:
        raise ChatFormatError(f"the chat template does not parse (line {error.lineno}): "
                              f"{error.message}") from error
    variables = {"bos_token": "<bos>", **_plain(extra)}
    try:
        return compiled.render(messages=prepare_messages(messages), tools=_plain(tools),
                               documents=None, add_generation_prompt=add_generation_prompt,
                               enable_thinking=enable_thinking, **variables)
    except (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError) as error:
        raise ChatFormatError(f"the chat template refused this conversation: {error}") from error


# ------------------------------------------------------------------------------- our own renderer (no Jinja)

class _Missing:
    """A value the template would see as undefined: falsy, prints as ''."""

    def __bool__(self):
        return False

    def __str__(self):
        return ""


_MISSING = _Missing()


def _get(obj: Any, key: str) -> Any:
    return obj.get(key, _MISSING) if isinstance(obj, Mapping) else _MISSING


def _text(value: Any) -> str:
    """How Jinja prints a value."""
    return str(value)


def _upper(value: Any) -> str:
    return str(value).upper()


def _dictsort(mapping: Mapping) -> list:
    """Jinja's dictsort: by key, case-insensitive, stable."""
    return sorted(mapping.items(), key=lambda kv: kv[0].lower() if isinstance(kv[0], str) else kv[0])


def strip_thinking(text: str) -> str:
    """Drop `<|channel>...<channel|>` spans (the templates' strip_thinking macro), then trim."""
    kept = []
    for part in text.split("<channel|>"):
        kept.append(part.split("<|channel>")[0] if "<|channel>" in part else part)
    return "".join(kept).strip()


class _Commas:
    """The templates' add_comma flag: a comma before every item except the first."""

    def __init__(self, started: bool = False):
        self.started = started

    def __call__(self) -> str:
        if self.started:
            return ","
        self.started = True
        return ""


class _Gemma4Renderer:
    """Google's Gemma 4 templates as Python; each method follows the template macro of the same purpose."""

    def __init__(self, style: str):
        self.small = style == "small"

    # -- values ------------------------------------------------------------------------------------------
    def argument(self, value: Any, escape_keys: bool = True) -> str:
        if value is _MISSING:
            return "[]"  # Jinja's undefined passes the template's `is sequence` test
        if value is None and self.small:
            return "null"
        if isinstance(value, str):
            return DELIM + value + DELIM
        if value is True or value is False:
            return "true" if value else "false"
        if isinstance(value, Mapping):
            items = [(DELIM + _text(k) + DELIM if escape_keys else _text(k)) + ":"
                     + self.argument(v, escape_keys) for k, v in _dictsort(value)]
            return "{" + ",".join(items) + "}"
        if isinstance(value, (list, tuple)):
            return "[" + ",".join(self.argument(v, escape_keys) for v in value) + "]"
        return _text(value)

    def _quoted_list(self, items: Any) -> str:
        return "[" + ",".join(DELIM + _text(item) + DELIM for item in items) + "]"

    # -- tool declarations -------------------------------------------------------------------------------
    def parameters(self, properties: Mapping, filter_keys: bool = False) -> str:
        out, between = [], _Commas()
        for key, value in _dictsort(properties):
            if (self.small and not filter_keys) or key not in _STANDARD_KEYS:
                out.append(between() + _text(key) + ":{")
                comma = _Commas()
                if _get(value, "description"):
                    out.append("description:" + DELIM + _text(value["description"]) + DELIM)
                    comma.started = True
                kind = _upper(_get(value, "type"))
                if kind == "STRING":
                    if _get(value, "enum"):
                        out.append(comma() + "enum:" + self.argument(value["enum"]))
                elif kind == "ARRAY":
                    items = _get(value, "items")
                    if isinstance(items, Mapping) and items:
                        out.append(comma() + "items:{" + self._array_items(items) + "}")
                if _get(value, "nullable"):
                    out.append(comma() + "nullable:true")
                if kind == "OBJECT":
                    nested = _get(value, "properties")
                    if isinstance(nested, Mapping):
                        out.append(comma() + "properties:{" + self.parameters(nested) + "}")
                    elif isinstance(value, Mapping):
                        out.append(comma() + "properties:{" + self.parameters(value, filter_keys=True) + "}")
                    if _get(value, "required"):
                        out.append(comma() + "required:" + self._quoted_list(value["required"]))
                out.append(comma() + "type:" + DELIM + kind + DELIM + "}")
        return "".join(out)

    def _array_items(self, items: Mapping) -> str:
        out, between = [], _Commas()
        for key, value in _dictsort(items):
            if value is None:
                continue
            out.append(between())
            if key == "properties":
                inner = self.parameters(value) if isinstance(value, Mapping) else ""
                out.append("properties:{" + inner + "}")
            elif key == "required":
                out.append("required:" + self._quoted_list(value))
            elif key == "type":
                upper = value.upper() if isinstance(value, str) else [_upper(v) for v in value]
                out.append("type:" + self.argument(upper))
            else:
                out.append(_text(key) + ":" + self.argument(value))
        return "".join(out)

    def declaration(self, tool: Mapping) -> str:
        function = _get(tool, "function")
        out = ["declaration:" + _text(_get(function, "name")) + "{description:" + DELIM
               + _text(_get(function, "description")) + DELIM]
        params = _get(function, "parameters")
        if params:
            out.append(",parameters:{")
            if _get(params, "properties"):
                out.append("properties:{" + self.parameters(params["properties"]) + "},")
            if _get(params, "required"):
                out.append("required:" + self._quoted_list(params["required"]) + ",")
            if _get(params, "type"):
                out.append("type:" + DELIM + _upper(params["type"]) + DELIM + "}")
        if isinstance(function, Mapping) and "response" in function:
            response = function["response"]
            out.append(",response:{")
            if _get(response, "description"):
                out.append("description:" + DELIM + _text(response["description"]) + DELIM + ",")
            if _upper(_get(response, "type")) == "OBJECT":
                out.append("type:" + DELIM + "OBJECT" + DELIM + "}")
        out.append("}")
        return "".join(out).strip()

    # -- calls and results -------------------------------------------------------------------------------
    def tool_call(self, call: Mapping, index: int) -> str:
        function = _get(call, "function")
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise ChatFormatError(f"message {index}: each tool call needs function.name")
        arguments = function.get("arguments")
        body = ""
        if isinstance(arguments, str) and self.small:
            arguments = _json_arguments(arguments, index)
        if isinstance(arguments, Mapping):
            body = self._fields(arguments)
        elif isinstance(arguments, str):
            body = arguments  # the 26B/31B template pastes a string as it is
        return "<|tool_call>call:" + function["name"] + "{" + body + "}<tool_call|>"

    def _fields(self, mapping: Mapping) -> str:
        """key:value pairs with bare keys, as in calls and results."""
        return ",".join(_text(k) + ":" + self.argument(v, escape_keys=False) for k, v in _dictsort(mapping))

    def response_block(self, name: str, response: Any) -> str:
        if isinstance(response, Mapping):
            inner = "response:" + name + "{" + self._fields(response) + "}"
        else:
            inner = "response:" + name + "{value:" + self.argument(response, escape_keys=False) + "}"
        return "<|tool_response>" + inner + "<tool_response|>"

    def tool_message(self, follow: Mapping, calls: Sequence[Mapping]) -> str:
        name = (follow.get("name") or "unknown") if self.small else follow.get("name")
        for call in calls:
            # the templates compare with .get on both sides, so a call without id matches a result without one
            if isinstance(call, Mapping) and call.get("id") == follow.get("tool_call_id"):
                name = _get(_get(call, "function"), "name")
        name = name if isinstance(name, str) else "unknown"
        body = follow.get("content")
        if isinstance(body, (list, tuple)):
            parts = [p for p in body if isinstance(p, Mapping)]
            text = "".join(_text(p.get("text") or "") for p in parts if p.get("type") == "text")
            out = self.response_block(name, text)
            if self.small:
                out += "".join(self.placeholder(p) for p in parts)
            return out
        return self.response_block(name, body)

    def placeholder(self, part: Mapping) -> str:
        kind = part.get("type")
        if kind in (("image", "image_url") if self.small else ("image",)):
            return "<|image|>"
        if kind in (("audio", "input_audio") if self.small else ("audio",)):
            return "<|audio|>"
        if kind == "video":
            return "<|video|>"
        return ""

    def content(self, content: Any, is_model: bool) -> tuple[str, Optional[str]]:
        """Rendered content and, for "large", the last placeholder kind (the template tracks it)."""
        if isinstance(content, str):
            return (strip_thinking(content) if is_model else content.strip()), None
        if not isinstance(content, (list, tuple)):
            return "", None
        out, last_media = [], None
        for index, part in enumerate(content):
            if not isinstance(part, Mapping):
                raise ChatFormatError(f"content part {index} is a {type(part).__name__}, "
                                      "not a dict with 'type'")
            if part.get("type") == "text":
                text = _text(part.get("text", ""))
                out.append(strip_thinking(text) if is_model else text.strip())
            else:
                marker = self.placeholder(part)
                if marker:
                    out.append(marker)
                    last_media = part["type"]
        return "".join(out), last_media

    # -- the conversation --------------------------------------------------------------------------------
    def render(self, messages: list[dict], tools: Optional[list[dict]], enable_thinking: bool,
               add_generation_prompt: bool, preserve_thinking: bool, bos_token: str) -> str:
        out = [bos_token]
        prev_type = None
        loop = messages
        first_role = messages[0]["role"] if messages else None
        if enable_thinking or tools or first_role in ("system", "developer"):
            out.append("<|turn>system\n")
            if enable_thinking:
                out.append("<|think|>\n")
                prev_type = "think"
            if first_role in ("system", "developer"):
                system = messages[0].get("content")
                if isinstance(system, str):
                    out.append(system.strip())
                elif isinstance(system, (list, tuple)):  # "large" prints the list's repr; we take its text
                    out.append("".join(_text(_get(p, "text")).strip() + " " for p in system))
                loop = messages[1:]
            if tools:
                out.extend("<|tool>" + self.declaration(tool) + "<tool|>" for tool in tools)
                prev_type = "tool"
            out.append("<turn|>\n")

        last_user = max((i for i, m in enumerate(loop) if m["role"] == "user"), default=-1)
        prev_non_tool_role = None
        for index, message in enumerate(loop):
            if message["role"] == "tool":
                continue
            prev_type = None
            role = "model" if message["role"] == "assistant" else message["role"]
            if not (role == "model" and prev_non_tool_role == "assistant"):
                out.append("<|turn>" + role + "\n")
            calls = message.get("tool_calls") or []
            thinking = message.get("reasoning") or message.get("reasoning_content")
            after_last_user = index > last_user
            if self.small:
                show = after_last_user or (preserve_thinking and calls)
            else:
                show = after_last_user and calls
            if thinking and show:
                out.append("<|channel>thought\n" + _text(thinking) + "\n<channel|>")
            if calls:
                out.extend(self.tool_call(call, index) for call in calls)
                prev_type = "tool_call"

            responded = False
            if message.get("tool_responses"):
                for response in message["tool_responses"]:
                    name = _get(response, "name")
                    name = (name or "unknown") if self.small else ("unknown" if name is _MISSING else name)
                    out.append(self.response_block(_text(name), _get(response, "response")))
                    responded, prev_type = True, "tool_response"
            elif calls:
                for follow in loop[index + 1:]:
                    if follow["role"] != "tool":
                        break
                    out.append(self.tool_message(follow, calls))
                    responded, prev_type = True, "tool_response"

            rendered, last_media = self.content(message.get("content"), role == "model")
            out.append(rendered)
            if last_media is not None and not self.small:
                prev_type = last_media  # the 26B/31B template records the last placeholder
            next_role = next((m["role"] for m in loop[index + 1:] if m["role"] != "tool"), None)
            if prev_type == "tool_call" and not responded:
                out.append("<|tool_response>")
            elif self.small:
                continues = role == "model" and next_role == "assistant" and (not calls or responded)
                if not continues and not (responded and not rendered.strip() and next_role is None):
                    out.append("<turn|>\n")
            elif not (responded and not message.get("content")):
                out.append("<turn|>\n")
            prev_non_tool_role = message["role"]

        if add_generation_prompt:
            if prev_type not in ("tool_response", "tool_call"):
                out.append("<|turn>model\n")
                if not self.small and not enable_thinking:
                    out.append("<|channel>thought\n<channel|>")
            elif self.small and prev_type == "tool_response" and enable_thinking:
                out.append("<|channel>thought\n")
        return "".join(out)


def _json_arguments(arguments: str, index: int) -> dict:
    try:
        parsed = json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError as error:
        raise ChatFormatError(f"message {index}: tool call arguments are not a JSON object "
                              f"({error})") from error
    if not isinstance(parsed, dict):
        raise ChatFormatError(f"message {index}: tool call arguments must be a JSON object, "
                              f"got {arguments[:80]!r}")
    return parsed


def _render_gemma3(messages: list[dict], add_generation_prompt: bool, bos_token: str) -> str:
    out = [bos_token]
    prefix, loop = "", messages
    if messages and messages[0]["role"] == "system":
        system = messages[0].get("content", "")
        if isinstance(system, str):
            prefix = system + "\n\n"
        else:
            prefix = _text(_get(system[0] if system else _MISSING, "text")) + "\n\n"
        loop = messages[1:]
    for index, message in enumerate(loop):
        if (message["role"] == "user") != (index % 2 == 0):
            raise ChatFormatError("Gemma 3 conversations must alternate user/assistant/user/assistant/... "
                                  f"(message {index + len(messages) - len(loop)} is {message['role']!r})")
        role = "model" if message["role"] == "assistant" else message["role"]
        out.append("<start_of_turn>" + role + "\n" + (prefix if index == 0 else ""))
        content = message.get("content", [])
        if isinstance(content, str):
            out.append(content.strip())
        elif isinstance(content, (list, tuple)):
            for part in content:
                if _get(part, "type") == "image":
                    out.append("<start_of_image>")
                elif _get(part, "type") == "text":
                    out.append(_text(part.get("text", "")).strip())
        else:
            raise ChatFormatError(f"message {index}: content must be text or a list of parts")
        out.append("<end_of_turn>\n")
    if add_generation_prompt:
        out.append("<start_of_turn>model\n")
    return "".join(out)


def render_builtin(messages: Sequence[Mapping], tools: Optional[Sequence[Mapping]] = None,
                   enable_thinking: bool = False, add_generation_prompt: bool = True, style: str = "small", *,
                   preserve_thinking: bool = False, bos_token: str = "<bos>") -> str:
    """Render a conversation in Gemma's chat format without a template file (see the module docstring)."""
    if style not in STYLES:
        raise ChatFormatError(f"unknown chat style {style!r}; use one of {STYLES}")
    prepared = prepare_messages(messages)
    if style == "gemma3":
        return _render_gemma3(prepared, add_generation_prompt, bos_token)
    renderer = _Gemma4Renderer(style)
    return renderer.render(prepared, normalize_tools(tools), enable_thinking, add_generation_prompt,
                           preserve_thinking, bos_token)
