"""Lark rules (llguidance's dialect) for Gemma 4 tool calls whose arguments follow each tool's JSON schema.

Gemma writes `<|tool_call>call:NAME{key:value,...}<tool_call|>` with bare keys, strings between `<|"|>`
tokens and JSON-like numbers, booleans, lists and nested objects. The rules allow exactly the values the
schema allows, so what the parser reads back validates against the schema:

- objects: the declared properties in declared order, every `required` one present, no others (an
  object that declares no properties takes any keys, or the `additionalProperties` schema's values);
- strings: `enum`/`const`, `minLength`/`maxLength`, `pattern` (matched whole), `format` date, date-time,
  time and uuid; numbers and integers with their bounds and `multipleOf` (a nested `%json` grammar);
- arrays: `items`, `prefixItems`, `minItems`/`maxItems`; `anyOf`/`oneOf` as alternatives, `allOf` merged,
  local `$ref`s (recursive ones too), type lists and `nullable`.

Keywords without a rule here (`not`, `if`, `uniqueItems`, `patternProperties`, `minProperties`, ...) are
not enforced. With `lenient=True` patterns and formats are dropped too (for schemas whose regexes the
grammar engine cannot compile). Text never contains a control-token string such as `<|tool_call>`
spelled out in plain characters, which the reply parser would otherwise mistake for the real token.
"""

from __future__ import annotations

import json
import re
from typing import Any, Optional

from .markers import (CALL_CLOSE, CALL_OPEN, DELIM, DROPPED_MARKERS, END_MARKERS, THOUGHT_CLOSE,
                      THOUGHT_OPEN)

INT = r"/-?(0|[1-9][0-9]*)/"
NUMBER = r"/-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/"
MARKER_TEXTS = (THOUGHT_OPEN, THOUGHT_CLOSE, CALL_OPEN, CALL_CLOSE, DELIM) + END_MARKERS + DROPPED_MARKERS
ANY_CHAR = r"(.|\n)"
# Text that never spells out a control token: free answer text, thoughts and string values.
NO_MARKER = "~/" + ANY_CHAR + "*(" + "|".join(re.escape(m).replace("/", "\\/") for m in MARKER_TEXTS) + ")" \
    + ANY_CHAR + "*/"
FORMATS = {
    "date": r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])",
    "time": r"([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})",
    "uuid": r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
}
FORMATS["date-time"] = FORMATS["date"] + "T" + FORMATS["time"]
NUMERIC_KEYWORDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
BARE_KEY = re.compile(r"[^\s:=,{}\[\]()\"'<]+")  # what the reply parser reads as a key without delimiters


def _literal(text: str) -> str:
    return json.dumps(text)  # JSON string escapes are Lark string escapes


def _regex(body: str) -> str:
    return "/" + body.replace("/", "\\/") + "/"


def text_terminal(body: str = ANY_CHAR + "+") -> str:
    """A terminal for text matching the regex `body` that spells out no control token."""
    return f"{_regex(body)} & {NO_MARKER}"


def _strip_anchors(pattern: str) -> str:
    """A JSON-schema pattern as a whole-string regex (the grammar engine matches whole lexemes)."""
    if pattern.startswith("^"):
        pattern = pattern[1:]
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1]
    return pattern


def _repeat(part: str, low: int, high: Optional[int]) -> str:
    """`(part){low,high}` in the grammar engine's terms (it takes no `{0,0}`); high None: no bound."""
    if high is not None and high <= 0:
        return '""'
    return f"({part}){{{low},{'' if high is None else high}}}"


def _matches_empty(pattern: str) -> bool:
    try:
        return re.fullmatch(pattern, "") is not None
    except re.error:
        return False


def merge_all_of(schema: dict) -> dict:
    """`allOf` folded into one schema: properties merged, `required` joined, other keywords overridden."""
    merged = {k: v for k, v in schema.items() if k != "allOf"}
    for part in schema.get("allOf") or []:
        if not isinstance(part, dict):
            continue
        part = merge_all_of(part)
        for key, value in part.items():
            if key == "properties" and isinstance(value, dict):
                merged["properties"] = {**(merged.get("properties") or {}), **value}
            elif key == "required" and isinstance(value, list):
                merged["required"] = list(dict.fromkeys([*(merged.get("required") or []), *value]))
            else:
                merged.setdefault(key, value)
    return merged


class CallRules:
    """Collects the rules for one grammar; `calls_rule(tools)` returns the start rule's name."""

    def __init__(self, string_token: int, call_open: int, call_close: int, *, lenient: bool = False):
        self.string_token, self.call_open, self.call_close = string_token, call_open, call_close
        self.lenient = lenient
        self.rules: list[str] = []
        self._count = 0
        self._named: set[str] = set()
        self._refs: dict[tuple[int, str], str] = {}
        self._root: Any = None

    def _name(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"

    def _add(self, name: str, body: str) -> str:
        self.rules.append(f"{name}: {body}")
        return name

    def _once(self, name: str, *rules: str) -> str:
        """Rules shared by every use (added the first time they are needed)."""
        if name not in self._named:
            self._named.add(name)
            self.rules.extend(rules)
        return name

    @property
    def quote(self) -> str:
        return f"<[{self.string_token}]>"

    # -- strings and constants ----------------------------------------------------------------------------

    def _string(self) -> str:
        return self._once("gstr", f"gstr: {self.quote} GSTR_TEXT? {self.quote}",
                          f"GSTR_TEXT: {text_terminal()}")

    def _constrained_string(self, schema: dict) -> str:
        low = schema.get("minLength") if isinstance(schema.get("minLength"), int) else 0
        high = schema.get("maxLength") if isinstance(schema.get("maxLength"), int) else None
        pattern = schema.get("pattern") if isinstance(schema.get("pattern"), str) else None
        fmt = FORMATS.get(schema.get("format")) if isinstance(schema.get("format"), str) else None
        if self.lenient:
            pattern = fmt = None
        if not low and high is None and pattern is None and fmt is None:
            return self._string()
        if high is not None and high <= 0:
            return self._add(self._name("str"), f"{self.quote} {self.quote}")
        anchored = pattern and _strip_anchors(pattern)
        # a lexeme is never empty: the empty string, where allowed, is the terminal left out
        empty_ok = low <= 0 and fmt is None and (not anchored or _matches_empty(anchored))
        body = _regex(f"{ANY_CHAR}{{{max(low, 1)},{'' if high is None else high}}}")
        for extra in (anchored, fmt):
            if extra:
                body += " & " + _regex(extra)
        terminal = self._add(self._name("STR"), f"{body} & {NO_MARKER}")
        inner = f"{terminal}?" if empty_ok else terminal
        return self._add(self._name("str"), f"{self.quote} {inner} {self.quote}")

    def _constant(self, value: Any) -> str:
        """Grammar text that writes `value` in Gemma's syntax."""
        if isinstance(value, str):
            return f"{self.quote} {_literal(value)} {self.quote}" if value else f"{self.quote} {self.quote}"
        if isinstance(value, (bool, int, float)) or value is None:
            return _literal(json.dumps(value))
        if isinstance(value, list):
            inner = ' "," '.join(self._constant(item) for item in value)
            return f'"[" {inner} "]"' if value else '"[" "]"'
        if isinstance(value, dict):
            pairs = ' "," '.join(f'{self._key(str(k))} ":" {self._constant(v)}' for k, v in value.items())
            return f'"{{" {pairs} "}}"' if value else '"{" "}"'
        return self.generic()

    def _key(self, key: str) -> str:
        if BARE_KEY.fullmatch(key) and key not in ("true", "false", "null"):
            return _literal(key)
        return f"{self.quote} {_literal(key)} {self.quote}" if key else f"{self.quote} {self.quote}"

    # -- any value ----------------------------------------------------------------------------------------

    def generic(self) -> str:
        """Any Gemma value (the fallback for schema parts without a usable type)."""
        string = self._string()
        return self._once(
            "gany",
            f'gany: {string} | GNUMBER | "true" | "false" | "null" | "{{" gpairs "}}" | "[" gitems "]"',
            'gpairs: (GKEY ":" gany ("," GKEY ":" gany)*)?',
            'gitems: (gany ("," gany)*)?',
            r"GKEY: /[A-Za-z_][A-Za-z0-9_\-.]*/",
            f"GNUMBER: {NUMBER}")

    # -- schemas ------------------------------------------------------------------------------------------

    def value(self, schema: Any) -> str:
        """A rule name matching values of `schema` in Gemma's syntax."""
        if schema is True or schema == {}:
            return self.generic()
        if not isinstance(schema, dict):
            return self.generic()
        if isinstance(schema.get("$ref"), str):
            return self._reference(schema["$ref"])
        if isinstance(schema.get("allOf"), list):
            return self.value(merge_all_of(schema))
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return self._add(self._name("enum"), " | ".join(self._constant(v) for v in schema["enum"]))
        if "const" in schema:
            return self._add(self._name("const"), self._constant(schema["const"]))
        choices = schema.get("anyOf") or schema.get("oneOf")
        if isinstance(choices, list) and choices:
            return self._add(self._name("alt"), " | ".join(self.value(c) for c in choices))
        kinds = schema.get("type")
        kinds = list(kinds) if isinstance(kinds, list) else [kinds] if kinds else []
        if schema.get("nullable") and "null" not in kinds:
            kinds.append("null")
        if not kinds:
            if "properties" in schema or "required" in schema:
                kinds = ["object"]
            elif "items" in schema or "prefixItems" in schema:
                kinds = ["array"]
            else:
                return self.generic()
        return self._add(self._name("val"), " | ".join(self._typed(k, schema) for k in kinds))

    def _reference(self, ref: str) -> str:
        key = (id(self._root), ref)
        if key in self._refs:
            return self._refs[key]
        target: Any = self._root
        if not ref.startswith("#"):
            return self.generic()  # a remote schema: not fetched (this server works offline)
        for part in [p for p in ref[1:].split("/") if p]:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and part in target:
                target = target[part]
            else:
                return self.generic()
        name = self._refs[key] = self._name("ref")
        self._add(name, self.value(target))  # recursion finds the name already reserved
        return name

    def _typed(self, kind: Any, schema: dict) -> str:
        if kind == "string":
            return self._constrained_string(schema)
        if kind in ("integer", "number"):
            bounds = {k: schema[k] for k in NUMERIC_KEYWORDS
                      if isinstance(schema.get(k), (int, float)) and not isinstance(schema.get(k), bool)}
            if bounds:  # llguidance writes range-bounded numbers exactly as JSON writes them
                return self._add(self._name("num"), "%json " + json.dumps({"type": kind, **bounds}))
            return INT if kind == "integer" else NUMBER
        if kind == "boolean":
            return '"true" | "false"'
        if kind == "null":
            return '"null"'
        if kind == "array":
            return self._array(schema)
        if kind == "object":
            return f'"{{" {self.pairs(schema)} "}}"'
        return self.generic()

    def _array(self, schema: dict) -> str:
        prefix_items = schema.get("prefixItems") if isinstance(schema.get("prefixItems"), list) else []
        prefix = [self.value(part) for part in prefix_items]
        items = schema.get("items")
        item = None if items is False else self.value(items) if isinstance(items, dict) else self.generic()
        low = schema.get("minItems") if isinstance(schema.get("minItems"), int) else 0
        high = schema.get("maxItems") if isinstance(schema.get("maxItems"), int) else None
        more = f'"," {item}'
        if prefix:  # a tuple: its fixed items in order, then more `items` within the bounds
            head = ' "," '.join(prefix)
            rest_low, rest_high = max(low - len(prefix), 0), None if high is None else high - len(prefix)
            if item is None or rest_high == 0:
                return f'"[" {head} "]"'
            return f'"[" {head} {_repeat(more, rest_low, rest_high)} "]"'
        if item is None or high == 0:
            return '"[" "]"'
        body = f"{item} {_repeat(more, max(low - 1, 0), None if high is None else high - 1)}"
        return f'"[" {body} "]"' if low > 0 else f'"[" ({body})? "]"'

    def pairs(self, schema: Optional[dict]) -> str:
        """The `key:value,...` inside braces for an object schema."""
        schema = merge_all_of(schema) if isinstance(schema, dict) and "allOf" in schema else schema
        if not isinstance(schema, dict):
            return self._add(self._name("pairs"), '""')  # a tool without parameters takes none
        properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else None
        required = [str(k) for k in schema.get("required") or [] if isinstance(k, str)]
        extra = schema.get("additionalProperties", True)
        if properties is None and not required:
            if extra is False:
                return self._add(self._name("pairs"), '""')
            if isinstance(extra, dict) and extra:
                value = self.value(extra)
                self.generic()
                pair = f'GKEY ":" {value}'
                return self._add(self._name("pairs"), f'({pair} ("," {pair})*)?')
            self.generic()
            return "gpairs"
        fields = dict(properties or {})
        for key in required:  # required keys the schema forgot to describe take any value
            fields.setdefault(key, extra if isinstance(extra, dict) else {})
        return self._ordered_pairs([(str(k), v, str(k) in required) for k, v in fields.items()])

    def _ordered_pairs(self, fields: list[tuple[str, Any, bool]]) -> str:
        """Properties in declared order, required ones present, commas only between written ones.

        Two rules per position: `after_i` (something was written before it) and `first_i` (nothing was)."""
        stem = self._name("obj")
        count = len(fields)
        if count == 0:
            return self._add(stem, '""')
        for index in range(count - 1, -1, -1):
            key, schema, needed = fields[index]
            pair = f'{self._key(key)} ":" {self.value(schema)}'
            after_next = f"{stem}_after_{index + 1}" if index + 1 < count else '""'
            first_next = f"{stem}_first_{index + 1}" if index + 1 < count else '""'
            with_comma = f'"," {pair} {after_next}'
            without = f"{pair} {after_next}"
            self._add(f"{stem}_after_{index}", with_comma if needed else f"{with_comma} | {after_next}")
            self._add(f"{stem}_first_{index}", without if needed else f"{without} | {first_next}")
        return f"{stem}_first_0"

    def calls_rule(self, tools: list[tuple[str, Optional[dict]]], single: bool) -> str:
        """`calls`: one (or, unless `single`, more) calls to these tools."""
        alternatives = []
        for name, parameters in tools:
            self._root = parameters
            alternatives.append(f'{_literal(name)} "{{" {self.pairs(parameters)} "}}"')
        named = " | ".join(alternatives)
        self._add("call", f'<[{self.call_open}]> "call:" ({named}) <[{self.call_close}]>')
        return self._add("calls", "call" if single else "call+")
