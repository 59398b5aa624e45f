"""The real Gemma 4 tokenizer (llama.cpp's vocab GGUF via transformers) and Gemma 3's, via load_tokenizer."""

from __future__ import annotations

import json
import shutil

import pytest

from mlx_model.chat_format import AnswerDelta, OutputParser, ThoughtDelta, ToolCall, render_builtin, render_template
from mlx_model.tokenizer import TokenizerLoadError, builtin_style_for, load_tokenizer
from tests import assets

pytestmark = pytest.mark.network_asset

# From the architecture notes: the ids our engine and parser rely on.
SPECIAL_IDS = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<|tool>": 46, "<tool|>": 47, "<|tool_call>": 48,
               "<tool_call|>": 49, "<|tool_response>": 50, "<tool_response|>": 51, '<|"|>': 52,
               "<|think|>": 98,
               "<|channel>": 100, "<channel|>": 101, "<|turn>": 105, "<turn|>": 106, "<|image>": 255999,
               "<|audio>": 256000, "<|image|>": 258880, "<|audio|>": 258881, "<image|>": 258882,
               "<audio|>": 258883, "<|video|>": 258884}
STREAM_TEXTS = [
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 😶‍🌫️ 漢字 ëé — «quotes»\n\n  indented\tTab",
    "<|channel>thought\nThe user wants 2 < 3.\n<channel|>Yes: 2 < 3 ✓<turn|>",
    'Checking.<|tool_call>call:get_weather{city:<|"|>São Paulo<|"|>,days:3}<tool_call|><|tool_response>',
    "<bos><|turn>user\n<|image|>What is this?<turn|>\n<|turn>model\n",
]


@pytest.fixture(scope="module")
def gemma4(gemma4_tokenizer):
    return gemma4_tokenizer


def test_llama_cpp_vectors(gemma4):
    vectors = assets.vocab_test_vectors()
    assert len(vectors) == 46
    mismatched = [text for text, ids in vectors if gemma4.encode(text, add_special_tokens=False) != ids]
    assert mismatched == []


def test_decode_round_trip(gemma4):
    for text, ids in assets.vocab_test_vectors():
        assert gemma4.decode(ids) == text
    for text in STREAM_TEXTS:
        assert gemma4.decode(gemma4.encode(text, add_special_tokens=False)) == text


def test_special_tokens_and_end_ids(gemma4):
    assert {token: gemma4.token_id(token) for token in SPECIAL_IDS} == SPECIAL_IDS
    assert gemma4.token_id("<no such token>") is None
    assert gemma4.eos_token_ids == (1, 50, 106) and gemma4.bos_token_id == 2 and gemma4.vocab_size == 262144
    assert gemma4.encode("<|turn>model\n<|channel>", add_special_tokens=False)[:1] == [105]
    assert gemma4.encode("<|channel>", add_special_tokens=False) == [100]
    # the reference Gemma 4 tokenizer adds no <bos>: its chat template writes it
    assert gemma4.encode("hi") == gemma4.encode("hi", add_special_tokens=False) == [2202]


@pytest.mark.parametrize("text", STREAM_TEXTS)
def test_streaming_detokenizer_reproduces_decode(gemma4, text):
    ids = gemma4.encode(text, add_special_tokens=False)
    detokenizer = gemma4.detokenizer
    segments = []
    for token in ids:
        detokenizer.add_token(token)
        segments.append(detokenizer.last_segment)
    detokenizer.finalize()
    segments.append(detokenizer.last_segment)
    assert "".join(segments) == gemma4.decode(ids) == text
    assert not any("\ufffd" in segment for segment in segments)  # never half a character


def test_byte_fallback_is_covered_and_detokenizers_are_independent(gemma4):
    ids = gemma4.encode(STREAM_TEXTS[0], add_special_tokens=False)
    assert "<0xF0>" in gemma4.hf_tokenizer.convert_ids_to_tokens(ids)  # 𝔘 is spelled in bytes
    first, second = gemma4.detokenizer, gemma4.detokenizer
    first.add_token(ids[0])
    assert second.tokens == []


def test_stream_through_parser(gemma4):
    reply = ('<|channel>thought\nNeed weather.\n<channel|>Let me check.<|tool_call>call:get_weather{'
             'city:<|"|>Zürich<|"|>,days:2}<tool_call|>')
    ids = gemma4.encode(reply, add_special_tokens=False) + [50]
    detokenizer, parser, events = gemma4.detokenizer, OutputParser(), []
    for token in ids:
        if token in gemma4.eos_token_ids:
            break
        detokenizer.add_token(token)
        events += parser.feed(detokenizer.last_segment)
    detokenizer.finalize()
    events += parser.feed(detokenizer.last_segment) + parser.finish()
    assert "".join(e.text for e in events if isinstance(e, ThoughtDelta)) == "Need weather.\n"
    assert "".join(e.text for e in events if isinstance(e, AnswerDelta)) == "Let me check."
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "Zürich", "days": 2})]


def test_chat_template_from_the_checkpoint(gemma4):
    # transformers read this template out of the vocab GGUF: our vendored copy must be the same text
    embedded = assets.reference_chat_template("gemma-4-vocab-embedded")
    assert gemma4.chat_template == embedded
    sources = assets.gemma4_vocab_sources()
    # our vendored 31B templates are llama.cpp's, byte for byte
    for ours, upstream in [("gemma-4-31b-it", "google-gemma-4-31B-it.jinja"),
                           ("gemma-4-31b-it-interleaved", "google-gemma-4-31B-it-interleaved.jinja")]:
        assert assets.reference_chat_template(ours) == (sources / upstream).read_text(encoding="utf-8")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    prompt = gemma4.apply_chat_template(messages)
    assert prompt == render_template(embedded, messages) == render_builtin(messages, style="large")
    assert gemma4.encode(prompt, add_special_tokens=False)[:3] == [2, 105, 9731]  # <bos> <|turn> system


def test_builtin_format_and_end_ids_from_config_files(gemma4, tmp_path):
    source = assets.gemma4_vocab_dir()
    for name in ("tokenizer.json", "tokenizer_config.json"):  # no chat_template.jinja: the built-in renders
        (tmp_path / name).symlink_to(source / name)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 106, 777]}))
    config = {"text_config": {"attention_k_eq_v": True, "eos_token_id": 5}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    tokenizer = load_tokenizer(tmp_path)
    assert tokenizer.chat_template is None and tokenizer.builtin_style == "large"
    assert tokenizer.eos_token_ids == (1, 5, 50, 106, 777)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    tools = [{"name": "now", "description": "The time."}]  # a bare function is accepted too
    prompt = tokenizer.apply_chat_template(messages, tools=tools, enable_thinking=True)
    wrapped = [{"type": "function", "function": tools[0]}]
    assert prompt == render_builtin(messages, wrapped, True, style="large")
    assert 258880 in tokenizer.encode(prompt, add_special_tokens=False)


def test_builtin_style_rules():
    gemma4_vocab, gemma3_vocab = {"<|turn>": 105}, {"<start_of_turn>": 105}
    assert builtin_style_for({}, gemma3_vocab) == "gemma3"
    assert builtin_style_for({}, gemma4_vocab) == "small"
    assert builtin_style_for({"text_config": {"hidden_size_per_layer_input": 256}}, gemma4_vocab) == "small"
    assert builtin_style_for({"audio_config": {"hidden_size": 8}, "text_config": {}}, gemma4_vocab) == "small"
    assert builtin_style_for({"text_config": {"hidden_size_per_layer_input": 0}}, gemma4_vocab) == "large"


def test_folders_without_or_with_broken_tokenizer_files(tmp_path):
    assert load_tokenizer(tmp_path) is None
    (tmp_path / "config.json").write_text("{}")
    assert load_tokenizer(tmp_path) is None
    (tmp_path / "tokenizer.json").write_text("{ not json")
    with pytest.raises(TokenizerLoadError, match=str(tmp_path)):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    shutil.copy(assets.gemma4_vocab_dir() / "tokenizer_config.json", tmp_path)
    (tmp_path / "generation_config.json").write_text("[1, 2")
    with pytest.raises(TokenizerLoadError, match="generation_config.json"):
        load_tokenizer(tmp_path)


def test_gemma3_tokenizer():
    tokenizer = load_tokenizer(assets.gemma3_vocab_dir())
    assert tokenizer.eos_token_ids == (1, 106) and tokenizer.bos_token_id == 2
    assert tokenizer.chat_template is None and tokenizer.builtin_style == "gemma3"
    assert tokenizer.encode("hi there") == [2, 2202, 993]  # Gemma 3 adds <bos>
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hello"}]
    prompt = tokenizer.apply_chat_template(messages)
    assert prompt == render_template(assets.reference_chat_template("gemma-3-it"), messages)
    assert prompt == "<bos><start_of_turn>user\nBe kind.\n\nHello<end_of_turn>\n<start_of_turn>model\n"
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    assert ids[:2] == [2, 105] and 106 in ids
    text = "Привет 👋🏽 <end_of_turn>"
    ids = tokenizer.encode(text, add_special_tokens=False)
    detokenizer = tokenizer.detokenizer
    for token in ids:
        detokenizer.add_token(token)
    detokenizer.finalize()
    assert detokenizer.text == tokenizer.decode(ids) == text
