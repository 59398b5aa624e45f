"""Attachments on a model split across two ranks (`serve --hosts`, ring backend on 127.0.0.1): rank 0 runs
the vision and audio towers alone and each rank looks up its own part of the per-layer embeddings (PLE) for
the prompt's text (split by heads its columns of every layer, split by layers its layers' slots, with the
input embeddings handed on beside the hidden states), and the answer equals the one-process server's, token
for token."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.server_support import build_tiny_multimodal_model, png_data_url, raw_request, serve_process
from tests.test_distributed import _free_port_pair
from tests.test_server import wav_base64


def _answer(model: Path, home: Path, request: dict, *flags: str) -> dict:
    with serve_process(model, home, *flags) as (_, url):
        status, body, _ = raw_request(url, "POST", "/chat/completions", json.dumps(request).encode(),
                                      timeout=240)
    assert status == 200, body
    return body


@pytest.mark.slow
@pytest.mark.parametrize("split", ["layers", "heads"])
def test_image_and_audio_on_a_split_model_answer_as_on_one_mac(tmp_path, split):
    # with PLE, which is split by columns across the ranks, unlike the towers
    model = build_tiny_multimodal_model(tmp_path / "tiny-gemma-4-mm", hidden_size_per_layer_input=8)
    content = [{"type": "text", "text": "What is in these?"},
               {"type": "image_url", "image_url": {"url": png_data_url(16)}},
               {"type": "input_audio", "input_audio": {"data": wav_base64(), "format": "wav"}}]
    request = {"model": model.name, "messages": [{"role": "user", "content": content}], "max_tokens": 8,
               "temperature": 0, "logprobs": True, "top_logprobs": 5}
    hosts = tmp_path / "hosts.json"
    hosts.write_text(json.dumps([{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}] * 2))

    alone = _answer(model, tmp_path / "home-alone", request)
    split = _answer(model, tmp_path / "home-split", request, "--hosts", str(hosts), "--split", split,
                    "--ring-port", str(_free_port_pair()))
    assert split["usage"]["prompt_tokens"] == alone["usage"]["prompt_tokens"] > 100  # media expanded
    assert split["choices"][0]["message"]["content"] == alone["choices"][0]["message"]["content"]
    assert split["usage"]["completion_tokens"] == alone["usage"]["completion_tokens"] == 8
    # the distributions too, not only their argmax: a rank reading rank 0's PLE columns would move them
    for ours, theirs in zip(split["choices"][0]["logprobs"]["content"], alone["choices"][0]["logprobs"]["content"]):
        assert [t["token"] for t in ours["top_logprobs"]] == [t["token"] for t in theirs["top_logprobs"]]
        assert ours["top_logprobs"][0]["logprob"] == pytest.approx(theirs["top_logprobs"][0]["logprob"], abs=1e-4)
