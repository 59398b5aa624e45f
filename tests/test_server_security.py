"""No way in from a web page or a huge request, and a fair queue: the server's refusals at their edges.

Host and Origin checks (DNS rebinding, cross-site posts), CORS preflight for allowed origins, local image
paths off by default, the body and prompt bounds, streams that get their headers at once while queued,
clients that leave the queue at once, 429 with Retry-After; and, against a `serve` process, a 60 MB
message and a 1 GB local file refused quickly with little memory.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time

import openai
import pytest

from gemma4_mac.server.errors import PayloadTooLarge
from gemma4_mac.server.guard import OriginError, accepted_hosts, host_name, normalize_origin
from gemma4_mac.server.limits import ContextExceeded, check_prompt_size, read_limited
from gemma4_mac.server.routes import ServerOptions
from tests.server_support import MODEL_ID, build_tiny_multimodal_model, raw_request, serve, serve_process



@pytest.fixture(scope="module")
def served(tmp_path_factory):
    served = serve(build_tiny_multimodal_model(tmp_path_factory.mktemp("tiny-security")))
    yield served
    served.stop()


def chat_body(text: str = "hi", **extra) -> bytes:
    return json.dumps({"model": MODEL_ID, "messages": [{"role": "user", "content": text}], "max_tokens": 2,
                       **extra}).encode()


# ----------------------------------------------------------------------------------------- Host, Origin

def test_a_page_under_another_host_name_is_refused(served):
    # the report's reproduction: a DNS-rebinding page posts text/plain (no preflight) under its own name
    status, body, _ = raw_request(served.base_url, "POST", "/chat/completions", chat_body(),
                                  {"Host": "attacker.example:8080", "Content-Type": "text/plain",
                                   "Origin": "http://attacker.example:8080"})
    assert status == 403 and body["error"]["code"] == "forbidden_host"
    status, body, _ = raw_request(served.base_url, "GET", "/models", headers={"Host": "attacker.example"})
    assert status == 403
    status, body, _ = raw_request(served.base_url, "POST", "/messages", b"{}", {"Host": "attacker.example"})
    assert status == 403 and body == {"type": "error", "error": {"type": "permission_error",
                                                                 "message": body["error"]["message"]}}
    for name in ("localhost", "127.0.0.1", "[::1]", "LOCALHOST."):
        status, _, _ = raw_request(served.base_url, "GET", "/models", headers={"Host": f"{name}:1234"})
        assert status == 200, name


def test_web_pages_are_refused_unless_their_origin_is_allowed(served):
    status, body, headers = raw_request(served.base_url, "POST", "/chat/completions", chat_body(),
                                        {"Origin": "http://evil.example"})
    assert status == 403 and body["error"]["code"] == "forbidden_origin"
    assert "access-control-allow-origin" not in headers
    status, _, _ = raw_request(served.base_url, "GET", "/models", headers={"Sec-Fetch-Site": "cross-site"})
    assert status == 403  # a browser request without an Origin (a navigation, an image)
    preflight = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    status, _, headers = raw_request(served.base_url, "OPTIONS", "/chat/completions", headers=preflight)
    assert status == 403 and "access-control-allow-origin" not in headers  # CORS is off by default

    allowed = served.also_serve(ServerOptions(cors_origins=("http://localhost:3000",)))
    status, _, headers = raw_request(allowed, "OPTIONS", "/chat/completions", headers=preflight)
    assert status == 204
    assert headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "POST" in headers["access-control-allow-methods"]
    assert headers["access-control-allow-headers"] == "authorization, content-type"
    assert headers["vary"] == "Origin"
    served.script("From a page.")
    status, body, headers = raw_request(allowed, "POST", "/chat/completions", chat_body(max_tokens=8),
                                        {"Origin": "http://localhost:3000"})
    assert status == 200 and body["choices"][0]["message"]["content"] == "From a page."
    assert headers["access-control-allow-origin"] == "http://localhost:3000"
    status, _, _ = raw_request(allowed, "POST", "/chat/completions", chat_body(), {"Origin": "http://localhost:4000"})
    assert status == 403


def test_hosts_and_origins_are_read_strictly():
    assert accepted_hosts("0.0.0.0") is None and accepted_hosts("::") is None  # every address: any name
    expected = {"localhost", "127.0.0.1", "::1", "192.168.1.5", "mac.local"}
    assert set(accepted_hosts("192.168.1.5", ["Mac.local"])) == expected
    assert host_name("[::1]:8080") == "::1" and host_name("Example.COM.:80") == "example.com"
    assert normalize_origin("http://LocalHost:3000/") == "http://localhost:3000"
    for bad in ("*", "localhost:3000", "http://localhost:3000/app", "file:///tmp"):
        with pytest.raises(OriginError):
            normalize_origin(bad)


# ------------------------------------------------------------------------------------------ local files

def test_local_image_paths_are_off_by_default_and_sized_before_reading(served, tmp_path):
    picture = tmp_path / "picture.png"
    picture.write_bytes(b"not read")
    client = openai.OpenAI(base_url=served.base_url, api_key="unused", max_retries=0, timeout=60)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL_ID, max_tokens=2, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": str(picture)}}]}])
    assert caught.value.body["code"] == "local_files_disabled"

    edge = tmp_path / "edge.bin"
    edge.write_bytes(b"x" * 100)
    assert len(read_limited(edge, 100, param="p")) == 100
    with pytest.raises(PayloadTooLarge):
        read_limited(edge, 99, param="p")


# ---------------------------------------------------------------------------------------------- bounds

def test_the_body_limit_at_its_edge(served):
    guarded = served.also_serve(ServerOptions(max_body_bytes=4096))
    body = chat_body()
    exact = body[:-1] + b" " * (4096 - len(body)) + b"}"
    assert len(exact) == 4096
    status, _, _ = raw_request(guarded, "POST", "/chat/completions", exact)
    assert status == 200
    status, body, _ = raw_request(guarded, "POST", "/chat/completions", exact[:-1] + b" }")
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    status, _, _ = raw_request(guarded, "POST", "/chat/completions", b"",
                               {"Content-Length": str(10 ** 12)})  # refused from the header, before a byte
    assert status == 413


class CountingTokenizer:
    """One token per word; counts how many characters it was asked to read."""

    def __init__(self, longest: int = 8):
        self.read = 0
        self.longest = longest

    def get_vocab(self):
        return {"x" * self.longest: 0, "a": 1}

    def encode(self, text, add_special_tokens=False):
        self.read += len(text)
        return text.split()


def test_the_prompt_bound_refuses_from_size_alone_and_stops_counting_early():
    context = 1000
    tokenizer = CountingTokenizer(longest=8)
    check_prompt_size(["ab " * 50], context, tokenizer)  # 4 bytes a character at most: surely fits
    assert tokenizer.read == 0
    with pytest.raises(ContextExceeded):  # more characters than 8 a token could ever fit
        check_prompt_size(["x" * (context * 8 + 1)], context, tokenizer)
    assert tokenizer.read == 0
    check_prompt_size(["x" * (context * 8)], context, tokenizer)  # the edge: one long word may be one token
    fits = " ".join(["w"] * (context - 10))
    check_prompt_size([fits], context, tokenizer)
    words = " ".join(["w"] * 200_000)  # 400 K characters, far more words than the context
    tokenizer.read = 0
    with pytest.raises(ContextExceeded):
        check_prompt_size([words[: context * 8 - 1]], context, tokenizer)
    assert tokenizer.read <= 8 * 32_768 + 32_768  # stopped after the first batch of slices


# ---------------------------------------------------------------------------------------------- queue

def _wait(predicate, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def _open_stream(base_url: str) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    host, port = re.match(r"http://([^:/]+):(\d+)", base_url).groups()
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request("POST", "/v1/chat/completions", body=chat_body(stream=True),
                       headers={"Content-Type": "application/json"})
    return connection, connection.getresponse()


def test_queued_streams_get_headers_at_once_and_leave_when_their_client_goes(served):
    gate = threading.Event()
    served.worker.submit("server", lambda slot: gate.wait(60), label="hold the model")
    try:
        assert _wait(lambda: served.worker.current is not None)
        connection, response = _open_stream(served.base_url)
        assert response.status == 200 and response.getheader("content-type").startswith("text/event-stream")
        assert response.readline() == b": keep-alive\n"  # at once, while the request waits
        assert _wait(lambda: served.service.scheduler.waiting() == 1)
        connection.close()
        assert _wait(lambda: served.service.scheduler.waiting() == 0, 3.0)  # gone while the model is busy

        impatient = openai.OpenAI(base_url=served.base_url, api_key="unused", max_retries=0, timeout=1.0)
        with pytest.raises(openai.APITimeoutError):
            impatient.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "hi"}])
        assert _wait(lambda: served.service.scheduler.waiting() == 0, 3.0)

        served.worker.queue_limit = 1
        connection, response = _open_stream(served.base_url)
        assert response.status == 200 and _wait(lambda: served.service.scheduler.waiting() == 1)
        status, body, headers = raw_request(served.base_url, "POST", "/chat/completions", chat_body())
        assert status == 429 and body["error"]["type"] == "rate_limit_error"
        assert int(headers["retry-after"]) >= 1
        status, body, headers = raw_request(served.base_url, "POST", "/messages", json.dumps(
            {"model": MODEL_ID, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}).encode())
        assert status == 429 and body["error"]["type"] == "rate_limit_error" and "retry-after" in headers
        connection.close()
        assert _wait(lambda: served.service.scheduler.waiting() == 0, 3.0)
    finally:
        served.worker.queue_limit = 64
        gate.set()


# ------------------------------------------------------------------------- memory, against `serve`

@pytest.mark.slow
def test_a_60_mb_message_and_a_1_gb_file_are_refused_quickly_with_little_memory(tiny_chat_model_dir,
                                                                                 tmp_path):
    import psutil

    with serve_process(tiny_chat_model_dir, tmp_path / "home", "--allow-local-files") as (process, url):
        server = psutil.Process(process.pid)
        status, _, _ = raw_request(url, "POST", "/chat/completions", chat_body())  # warm: imports, caches
        assert status == 200

        def peak_during(send) -> tuple[float, float, tuple]:
            idle = server.memory_info().rss
            peak, done = [idle], threading.Event()

            def sample() -> None:
                while not done.is_set():
                    peak[0] = max(peak[0], server.memory_info().rss)
                    time.sleep(0.002)

            sampler = threading.Thread(target=sample)
            sampler.start()
            started = time.monotonic()
            result = send()
            elapsed = time.monotonic() - started
            done.set()
            sampler.join()
            return (peak[0] - idle) / 2 ** 20, elapsed, result

        message = b'{"model": "%s", "max_tokens": 2, "messages": [{"role": "user", "content": "' % \
            tiny_chat_model_dir.name.encode() + b"word " * (12 * 2 ** 20) + b'"}]}'
        assert 60 * 2 ** 20 <= len(message) < 64 * 2 ** 20
        grown, elapsed, (status, body, _) = peak_during(
            lambda: raw_request(url, "POST", "/chat/completions", message, timeout=120))
        assert status == 400 and body["error"]["code"] == "context_length_exceeded"
        assert grown < 200 and elapsed < 15, (grown, elapsed)

        sparse = tmp_path / "huge.png"
        with open(sparse, "wb") as handle:
            handle.truncate(2 ** 30)
        parts = [{"type": "image_url", "image_url": {"url": str(sparse)}}]
        request = json.dumps({"model": tiny_chat_model_dir.name, "max_tokens": 2,
                              "messages": [{"role": "user", "content": parts}]}).encode()
        grown, elapsed, (status, body, _) = peak_during(
            lambda: raw_request(url, "POST", "/chat/completions", request))
        assert status == 413 and body["error"]["code"] == "payload_too_large"
        assert grown < 200 and elapsed < 5, (grown, elapsed)
