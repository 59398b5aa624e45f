"""The control tokens of Gemma's chat format, as text (the detokenizer keeps special tokens as text)."""

TURN_OPEN, TURN_CLOSE = "<|turn>", "<turn|>"
THOUGHT_OPEN, THOUGHT_CLOSE = "<|channel>", "<channel|>"
THOUGHT_LABEL = "thought"
THINK = "<|think|>"  # at the top of the system turn: thinking on
CALL_OPEN, CALL_CLOSE = "<|tool_call>", "<tool_call|>"
DELIM = '<|"|>'  # Gemma 4's string delimiter in tool declarations, calls and results
# End of the model's turn (Gemma 4, and Gemma 3's <end_of_turn>): closes an open thought or call, never
# answer text; the tokenizer stops generation on each of these the vocabulary has.
END_MARKERS = ("<turn|>", "<eos>", "<|tool_response>", "<end_of_turn>")
# Other control tokens that are never answer text.
DROPPED_MARKERS = ("<|turn>", "<bos>", "<pad>", "<tool_response|>", "<start_of_turn>", "<|think|>")
