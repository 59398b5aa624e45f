"""Gemma's chat format in one place: rendering conversations (render.py), parsing replies into answer,
thoughts and tool calls (parse.py), keeping typed control tokens as text (control_text.py), the grammar of
a tool call for constrained decoding (call_grammar.py) and the control-token constants (markers.py).

The processor and tokenizer reach it for the app; mlx-lm keeps its Gemma 4 tool parser beside its tokenizer
in the same way.
"""

from .control_text import LITERAL_MARK, control_tokens, encode_with_literals, escape_messages, escape_text
from .markers import (CALL_CLOSE, CALL_OPEN, DELIM, DROPPED_MARKERS, END_MARKERS, THINK, THOUGHT_CLOSE,
                      THOUGHT_LABEL, THOUGHT_OPEN, TURN_CLOSE, TURN_OPEN)
from .parse import (AnswerDelta, OutputParser, ParsedOutput, ThoughtDelta, ToolCall, ToolCallSyntaxError,
                    parse_call_block, parse_call_text, parse_output, parse_tool_calls, prompt_opens_thought)
from .render import (STYLES, ChatFormatError, normalize_tools, prepare_messages, render_builtin, render_template,
                     strip_thinking)

__all__ = [
    "AnswerDelta", "CALL_CLOSE", "CALL_OPEN", "ChatFormatError", "DELIM", "DROPPED_MARKERS", "END_MARKERS",
    "LITERAL_MARK", "OutputParser", "ParsedOutput", "STYLES", "THINK", "THOUGHT_CLOSE", "THOUGHT_LABEL",
    "THOUGHT_OPEN", "TURN_CLOSE", "TURN_OPEN", "ThoughtDelta", "ToolCall", "ToolCallSyntaxError",
    "control_tokens", "encode_with_literals", "escape_messages", "escape_text", "normalize_tools",
    "parse_call_block", "parse_call_text", "parse_output", "parse_tool_calls", "prepare_messages",
    "prompt_opens_thought", "render_builtin", "render_template", "strip_thinking",
]
