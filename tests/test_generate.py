"""Streaming generation end to end: real tokenizer, chat format, sampling, parsing, stats, CLI."""

from __future__ import annotations

import io
import json
import shutil
import threading

import pytest

from gemma4_mac.cli import main as cli_main
from gemma4_mac.generate import GenerationError, SamplingSettings, StopStringWatcher, stream_generate
from gemma4_mac.session import ChatSession
from mlx_model import load
from tests.tiny_chat_model import ScriptedModel

GREEDY = SamplingSettings(temperature=0.0, max_tokens=12)


@pytest.fixture(scope="module")
def chat_model(tiny_chat_model_dir):
    model, processor = load(tiny_chat_model_dir)
    return tiny_chat_model_dir, model, processor


def _collect(events):
    out = {"answer": "", "thought": "", "tool_calls": [], "done": None}
    for e in events:
        if e.kind in ("answer", "thought"):
            out[e.kind] += e.text
        elif e.kind == "tool_call":
            out["tool_calls"].append(e.tool_call)
        else:
            out["done"] = e.stats
    return out


def test_seeded_sampling_is_reproducible_and_reports_stats(chat_model):
    _, model, processor = chat_model
    messages = [{"role": "user", "content": "Hello there"}]
    sampling = SamplingSettings(temperature=0.8, top_p=0.9, top_k=40, seed=7, max_tokens=10)
    first = _collect(stream_generate(model, processor, messages, sampling=sampling))
    second = _collect(stream_generate(model, processor, messages, sampling=sampling))
    assert first["answer"] == second["answer"]
    stats = first["done"]
    assert stats.prompt_tokens > 5 and 0 < stats.generation_tokens <= 10
    assert stats.finish_reason in ("length", "stop")
    assert stats.peak_memory_bytes > 0 and stats.time_to_first_token > 0


def test_thought_answer_and_tool_call_are_split(chat_model):
    _, model, processor = chat_model
    tok = processor
    reply = ("<|channel>thought\nThe user wants weather.<channel|>Let me check."
             '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>,days:2}<tool_call|>')
    script = tok.encode(reply, add_special_tokens=False) + [106]
    scripted = ScriptedModel(model, script)
    out = _collect(stream_generate(scripted, processor, [{"role": "user", "content": "Weather in Paris?"}],
                                   enable_thinking=True, sampling=SamplingSettings(temperature=0.0, max_tokens=64)))
    assert out["thought"].strip() == "The user wants weather."
    assert out["answer"].strip() == "Let me check."
    assert out["tool_calls"] == [{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}]
    assert out["done"].finish_reason == "tool_calls"


def test_stop_string_and_max_tokens(chat_model):
    _, model, processor = chat_model
    script = processor.encode("one two three STOP four five", add_special_tokens=False) + [106]
    stopped = _collect(stream_generate(ScriptedModel(model, script), processor, [{"role": "user", "content": "count"}],
                                       sampling=SamplingSettings(temperature=0.0, stop_strings=("STOP",))))
    assert stopped["answer"].strip() == "one two three"
    limited = _collect(stream_generate(ScriptedModel(model, script), processor, [{"role": "user", "content": "count"}],
                                       sampling=SamplingSettings(temperature=0.0, max_tokens=2)))
    assert limited["done"].generation_tokens == 2 and limited["done"].finish_reason == "length"


def test_cancel_stops_at_the_next_token(chat_model):
    _, model, processor = chat_model
    cancel = threading.Event()
    events = stream_generate(model, processor, [{"role": "user", "content": "Tell me a story"}],
                             sampling=SamplingSettings(temperature=0.0, max_tokens=200), cancel=cancel)
    seen = 0
    for event in events:
        if event.kind == "answer":
            seen += 1
            cancel.set()
        if event.kind == "done":
            assert event.stats.finish_reason == "cancelled"
            assert event.stats.generation_tokens <= 3
    assert seen >= 1


def test_session_second_turn_prefills_only_new_tokens(chat_model):
    _, model, processor = chat_model
    session = ChatSession(model)
    history = [{"role": "user", "content": "First question about a long topic " * 20}]
    first = _collect(stream_generate(model, processor, history, sampling=GREEDY, session=session))
    history += [{"role": "assistant", "content": first["answer"]}, {"role": "user", "content": "And then?"}]
    second = _collect(stream_generate(model, processor, history, sampling=GREEDY, session=session))
    # only the answer, the new user turn and the generation prompt are new (the history form of the
    # model turn may differ from the generation prompt, e.g. an empty thought block, so a few more)
    new_tokens = second["done"].prompt_tokens - second["done"].cached_tokens
    assert new_tokens <= (second["done"].prompt_tokens - first["done"].prompt_tokens) + 16
    assert second["done"].cached_tokens >= first["done"].prompt_tokens - 16
    fresh = _collect(stream_generate(model, processor, history, sampling=GREEDY))
    assert second["answer"] == fresh["answer"]


def test_stop_string_watcher_holds_back_partial_matches():
    watcher = StopStringWatcher(["</end>"])
    assert watcher.feed("hello </e") == ("hello ", False)
    assert watcher.feed("nd> tail") == ("", True)
    assert StopStringWatcher(["xyz"]).feed("abc") == ("abc", False)


def test_errors_are_clear(chat_model):
    _, model, processor = chat_model
    with pytest.raises(GenerationError, match="no messages"):
        list(stream_generate(model, processor, []))
    with pytest.raises(GenerationError, match="no tokenizer"):
        list(stream_generate(model, None, [{"role": "user", "content": "hi"}]))


def test_cli_streams_and_fails_cleanly(chat_model, tmp_path):
    path, _, _ = chat_model
    out, err = io.StringIO(), io.StringIO()
    assert cli_main(["ask", "--model", str(path), "--max-tokens", "5", "Hi"], out=out, err=err) == 0
    assert "prompt tokens" in err.getvalue() and out.getvalue().endswith("\n")
    out, err = io.StringIO(), io.StringIO()
    assert cli_main(["ask", "--model", str(tmp_path / "missing"), "Hi"], out=out, err=err) == 2
    assert err.getvalue().startswith("error: model folder") and "Traceback" not in err.getvalue()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    assert cli_main(["ask", "--model", str(broken), "Hi"], out=out, err=err) == 2
    assert "not valid JSON" in err.getvalue()
    assert cli_main(["ask", "--model", str(path), "--image", str(tmp_path / "nope.png"), "Hi"], out=out, err=err) == 2
    assert "cannot read image file" in err.getvalue()


def test_cli_continues_a_base_models_text_as_the_window_does(chat_model, tmp_path):
    path, _, _ = chat_model
    base = tmp_path / "base"
    shutil.copytree(path, base)
    config = json.loads((base / "config.json").read_text())
    config["gemma4_mac"] = {**config.get("gemma4_mac", {}), "chat": False}  # as `convert --base-model` writes
    (base / "config.json").write_text(json.dumps(config))
    question = ["--max-tokens", "6", "--temperature", "0", "The capital of France is"]
    out, err = io.StringIO(), io.StringIO()
    assert cli_main(["ask", "--model", str(base), *question], out=out, err=err) == 0
    assert "a base model: continuing your text as is" in err.getvalue()
    raw_out, raw_err = io.StringIO(), io.StringIO()
    assert cli_main(["ask", "--model", str(base), "--raw", *question], out=raw_out, err=raw_err) == 0
    assert out.getvalue() == raw_out.getvalue()  # no chat template around the text
    tokens = err.getvalue().splitlines()[-1].split(",")[0]
    assert tokens == raw_err.getvalue().splitlines()[-1].split(",")[0]  # "[6 prompt tokens": the text alone
    out, err = io.StringIO(), io.StringIO()
    assert cli_main(["ask", "--model", str(base), "--system", "Be brief.", "Hi"], out=out, err=err) == 2
    assert "base model" in err.getvalue() and "Traceback" not in err.getvalue()
