"""Lark rules for Gemma 4 tool calls whose arguments follow each tool's JSON schema.

Gemma writes `<|tool_call>call:NAME{key:value,...}<tool_call|>` with bare keys, strings between
`<|"|>` tokens and JSON-like numbers, booleans, lists and nested objects. The rules below allow
exactly that, with the function names, keys and value types the tools declare (any key order;
`required` is not enforced). A schema part we do not model falls back to "any Gemma value".
"""

from __future__ import annotations

import json
from typing import Any, Optional

INT = r"/-?(0|[1-9][0-9]*)/"
NUMBER = r"/-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/"


def _literal(text: str) -> str:
    return json.dumps(text)  # JSON string escapes are Lark string escapes


class CallRules:
    """Collects the rules for one grammar; `calls_rule(tools)` returns the start rule's name."""

    def __init__(self, string_token: int, call_open: int, call_close: int):
        self.string_token, self.call_open, self.call_close = string_token, call_open, call_close
        self.rules: list[str] = []
        self._count = 0
        self._generic = False

    def _name(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"

    def _add(self, name: str, body: str) -> str:
        self.rules.append(f"{name}: {body}")
        return name

    def _string(self) -> str:
        q = f"<[{self.string_token}]>"
        if not any(rule.startswith("gstr:") for rule in self.rules):
            self._add("gstr", f"{q} GSTR_TEXT? {q}")
            self.rules.append(r"GSTR_TEXT: /(.|\n)+/")
        return "gstr"

    def generic(self) -> str:
        """Any Gemma value (the fallback for schema parts without a usable type)."""
        if not self._generic:
            self._generic = True
            string = self._string()
            self.rules += [
                f'gany: {string} | GNUMBER | "true" | "false" | "null" | "{{" gpairs "}}" | "[" gitems "]"',
                'gpairs: (GKEY ":" gany ("," GKEY ":" gany)*)?',
                'gitems: (gany ("," gany)*)?',
                r"GKEY: /[A-Za-z_][A-Za-z0-9_\-.]*/",
                f"GNUMBER: {NUMBER}",
            ]
        return "gany"

    def value(self, schema: Any) -> str:
        """A rule name matching values of `schema` in Gemma's syntax."""
        if not isinstance(schema, dict):
            return self.generic()
        if "enum" in schema and isinstance(schema["enum"], list) and schema["enum"]:
            return self._add(self._name("enum"), " | ".join(self._constant(v) for v in schema["enum"]))
        if "const" in schema:
            return self._add(self._name("const"), self._constant(schema["const"]))
        choices = schema.get("anyOf") or schema.get("oneOf")
        if isinstance(choices, list) and choices:
            return self._add(self._name("alt"), " | ".join(self.value(c) for c in choices))
        kinds = schema.get("type")
        kinds = kinds if isinstance(kinds, list) else [kinds] if kinds else []
        if schema.get("nullable") and "null" not in kinds:
            kinds = kinds + ["null"]
        if not kinds:
            return self.generic() if "properties" not in schema else self.value({**schema, "type": "object"})
        return self._add(self._name("val"), " | ".join(self._typed(k, schema) for k in kinds))

    def _constant(self, value: Any) -> str:
        if isinstance(value, str):
            q = f"<[{self.string_token}]>"
            return f"{q} {_literal(value)} {q}" if value else f"{q} {q}"
        if isinstance(value, bool) or value is None:
            return _literal(json.dumps(value))
        if isinstance(value, (int, float)):
            return _literal(json.dumps(value))
        return self.generic()

    def _typed(self, kind: Any, schema: dict) -> str:
        if kind == "string":
            return self._string()
        if kind == "integer":
            return INT
        if kind == "number":
            return NUMBER
        if kind == "boolean":
            return '"true" | "false"'
        if kind == "null":
            return '"null"'
        if kind == "array":
            items = schema.get("items")
            item = self.value(items) if isinstance(items, dict) else self.generic()
            return f'"[" ({item} ("," {item})*)? "]"'
        if kind == "object":
            return f'"{{" {self.pairs(schema)} "}}"'
        return self.generic()

    def pairs(self, schema: Optional[dict]) -> str:
        """The `key:value,...` inside braces for an object schema (any keys when it names none)."""
        properties = (schema or {}).get("properties")
        if not isinstance(properties, dict) or not properties:
            self.generic()
            return "gpairs"
        choices = [f'{_literal(str(key))} ":" {self.value(sub)}' for key, sub in properties.items()]
        pair = self._add(self._name("pair"), " | ".join(choices))
        return self._add(self._name("pairs"), f'({pair} ("," {pair})*)?')

    def calls_rule(self, tools: list[tuple[str, Optional[dict]]], single: bool) -> str:
        """`calls`: one (or, unless `single`, more) calls to these tools."""
        alternatives = [f'{_literal(name)} "{{" {self.pairs(parameters)} "}}"' for name, parameters in tools]
        named = " | ".join(alternatives)
        self._add("call", f'<[{self.call_open}]> "call:" ({named}) <[{self.call_close}]>')
        return self._add("calls", "call" if single else "call+")
