"""Speculative decoding through the server: the per-request `draft` option on every generating endpoint gives
the same greedy answer (and the same logprobs) as `draft: "off"`, drafts where asked, and a bad value is a
400 naming the field. The model is the tiny random Gemma 4 itself (not the scripted wrapper of the other
server tests, whose logits follow its call count), planning its depth as on a Mac's GPU."""

from __future__ import annotations

import json

import pytest

from gemma4_mac.bench_speculative import BandwidthBoundCosts
from gemma4_mac.server.app import ServerHandle, create_app
from gemma4_mac.server.library import ModelLibrary
from gemma4_mac.server.routes import ServerOptions
from gemma4_mac.server.service import GenerationService
from gemma4_mac.worker import ModelSlot, ModelWorker
from tests.server_support import raw_request

MODEL = "tiny-gemma-4"
QUOTE = "one two three four five six seven eight nine ten " * 3


@pytest.fixture(scope="module")
def server(tiny_chat_model_dir):
    from mlx_model import load

    worker = ModelWorker()

    def load_model() -> ModelSlot:
        model, processor = load(tiny_chat_model_dir)
        model.draft_costs = BandwidthBoundCosts()  # verifying is cheap, as on a Mac: drafting pays
        return ModelSlot(model, processor, {"id": MODEL, "path": str(tiny_chat_model_dir),
                                            "context_limit": 4096})

    worker.load(load_model).wait()
    service = GenerationService(worker, library=ModelLibrary(worker, owns_model=False, entries=lambda: []))
    handle = ServerHandle(create_app(service, ServerOptions()), "127.0.0.1", 0).start()
    yield handle.base_url, service
    handle.stop()
    worker.stop()


def _post(base_url: str, path: str, body: dict) -> tuple[int, dict]:
    status, parsed, _ = raw_request(base_url, "POST", path, json.dumps(body).encode(), timeout=120)
    return status, parsed


def _chat(server, draft, **extra):
    base_url, service = server
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Repeat: " + QUOTE}], "max_tokens": 40,
            "temperature": 0, "logprobs": True, "top_logprobs": 2, **extra}
    if draft is not None:
        body["draft"] = draft
    status, reply = _post(base_url, "/chat/completions", body)
    assert status == 200, reply
    return reply["choices"][0], service.finished[-1]


def test_chat_answers_and_logprobs_are_the_same_with_and_without_drafting(server):
    plain, plain_stats = _chat(server, "off")
    assert plain_stats.drafted_tokens == 0
    for draft in ("lookup", None):  # None: the default, auto
        ours, stats = _chat(server, draft)
        assert ours["message"]["content"] == plain["message"]["content"]
        assert stats.drafted_tokens > 0 and stats.decode_forwards < stats.generation_tokens
        theirs, mine = plain["logprobs"]["content"], ours["logprobs"]["content"]
        assert [e["token"] for e in mine] == [e["token"] for e in theirs]
        assert [e["logprob"] for e in mine] == pytest.approx([e["logprob"] for e in theirs], abs=1e-4)
        assert [[t["token"] for t in e["top_logprobs"]] for e in mine] == \
            [[t["token"] for t in e["top_logprobs"]] for e in theirs]


def test_every_generating_endpoint_takes_the_draft_option(server):
    base_url, service = server
    requests = {
        "/completions": ({"prompt": QUOTE, "max_tokens": 30, "temperature": 0},
                         lambda r: r["choices"][0]["text"]),
        "/responses": ({"input": "Repeat: " + QUOTE, "max_output_tokens": 30, "temperature": 0},
                       lambda r: r["output"][-1]["content"][0]["text"]),
        "/messages": ({"messages": [{"role": "user", "content": "Repeat: " + QUOTE}], "max_tokens": 30,
                       "temperature": 0}, lambda r: r["content"][0]["text"]),
    }
    for path, (body, text_of) in requests.items():
        answers = {}
        for draft in ("off", "lookup"):
            status, reply = _post(base_url, path, {"model": MODEL, "draft": draft, **body})
            assert status == 200, (path, reply)
            answers[draft] = (text_of(reply), service.finished[-1].drafted_tokens > 0)
        assert answers["lookup"][0] == answers["off"][0], path
        assert answers["lookup"][1] and not answers["off"][1], path


def test_an_unknown_draft_mode_is_refused_naming_the_field(server):
    base_url, _ = server
    status, reply = _post(base_url, "/chat/completions", {"model": MODEL, "draft": "fast", "max_tokens": 4,
                                                          "messages": [{"role": "user", "content": "hi"}]})
    assert status == 400 and "draft" in json.dumps(reply)
