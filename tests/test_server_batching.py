"""Continuous batching: concurrent requests decode together and each gets exactly what it gets alone.

The tiny random Gemma 4 with the real tokenizer (sliding window 16, so longer prompts wrap the ring)
speaks for itself, greedy unless said otherwise. A window job holds the model thread while the requests
arrive, so that they are all waiting when it lets go and must share the batch (joining one after
another as their prompts are read, and leaving as each reaches its own max_tokens).
"""

from __future__ import annotations

import contextlib
import threading
import time

import openai
import pytest

from gemma4_mac.generate import SamplingSettings, prepare_prompt, run_prompt
from gemma4_mac.session import ChatSession
from tests.server_support import MODEL_ID, serve

PROMPTS = ["Hi", "Tell me about the sea and the ships that sail on it, please.",
           " ".join(["The quick brown fox jumps over the lazy dog."] * 8) + " What next?",
           "Count: one two three four five six seven eight nine ten eleven twelve thirteen"]


@pytest.fixture(scope="module")
def served(tiny_chat_model_dir):
    server = serve(tiny_chat_model_dir)
    yield server
    server.stop()


def client(served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.base_url, api_key="unused", max_retries=0, timeout=120)


@contextlib.contextmanager
def model_thread_held(served, waiting: int):
    """Hold the model thread with a window job until `waiting` server requests wait for the batch."""
    release = threading.Event()
    blocker = served.worker.submit("window", lambda slot: release.wait(60), label="test blocker")
    try:
        yield
        deadline = time.monotonic() + 60
        while served.service.scheduler.waiting() < waiting and time.monotonic() < deadline:
            time.sleep(0.02)
        assert served.service.scheduler.waiting() == waiting
    finally:
        release.set()
        blocker.wait(60)


def run_concurrently(served, requests: list[dict]) -> list:
    """Send every request at once (each on its own thread) while the model thread is held."""
    results: list = [None] * len(requests)

    def send(index: int) -> None:
        body = dict(requests[index])
        if body.pop("stream", False):
            chunks = list(client(served).chat.completions.create(model=MODEL_ID, stream=True, **body))
            results[index] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            results[index] = client(served).chat.completions.create(model=MODEL_ID, **body)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
    with model_thread_held(served, len(requests)):
        for thread in threads:
            thread.start()
    for thread in threads:
        thread.join(120)
    return results


def alone_with_run_prompt(served, prompt: str, max_tokens: int, **sampling) -> str:
    """The window's single-request path (run_prompt on a fresh cache) on the model thread: the reference
    (greedy unless `sampling` says otherwise)."""
    def generate(slot):
        prepared = prepare_prompt(slot.processor, [{"role": "user", "content": prompt}])
        settings = SamplingSettings(**{"temperature": 0.0, **sampling, "max_tokens": max_tokens})
        events = run_prompt(slot.model, slot.processor, prepared, settings, session=ChatSession(slot.model))
        return "".join(event.text for event in events if event.kind == "answer")

    return served.worker.submit("window", generate, label="reference").wait(120)


def test_concurrent_greedy_replies_equal_each_reply_alone(served):
    lengths = [16, 24, 32, 40]  # rows leave the batch at different steps
    expected = [alone_with_run_prompt(served, p, n) for p, n in zip(PROMPTS, lengths)]
    requests = [{"messages": [{"role": "user", "content": p}], "max_tokens": n, "temperature": 0,
                 "stream": i % 2 == 0} for i, (p, n) in enumerate(zip(PROMPTS, lengths))]
    served.service.scheduler.most_rows = 0
    replies = run_concurrently(served, requests)
    texts = [r if isinstance(r, str) else r.choices[0].message.content for r in replies]
    assert texts == expected
    assert all(text for text in texts)
    assert served.service.scheduler.most_rows >= 3  # they were decoded together


def test_each_request_keeps_its_own_sampling_stop_and_logprobs_in_the_batch(served):
    stop_word = alone_with_run_prompt(served, PROMPTS[1], 16).split()[3]
    requests = [
        {"messages": [{"role": "user", "content": PROMPTS[1]}], "max_tokens": 16, "temperature": 0,
         "stop": [stop_word]},
        {"messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 16, "temperature": 1.0,
         "seed": 7, "top_p": 0.9},
        {"messages": [{"role": "user", "content": PROMPTS[2]}], "max_tokens": 10, "temperature": 0, "n": 2,
         "logprobs": True, "top_logprobs": 2},
        {"messages": [{"role": "user", "content": PROMPTS[3]}], "max_tokens": 24, "temperature": 0,
         "frequency_penalty": 1.5},
    ]
    alone = [client(served).chat.completions.create(model=MODEL_ID, **body) for body in requests]
    served.service.scheduler.most_rows = 0
    together = run_concurrently(served, requests)
    assert served.service.scheduler.most_rows >= 3  # (a row may end early: the stop word, end of turn)

    def summary(reply):
        return [(c.message.content, c.finish_reason,
                 [(t.token, [a.token for a in t.top_logprobs]) for t in c.logprobs.content]
                 if c.logprobs else None) for c in reply.choices]

    def logprobs(reply):
        return [t.logprob for c in reply.choices if c.logprobs for t in c.logprobs.content]

    assert [summary(r) for r in together] == [summary(r) for r in alone]
    for batched, single in zip(together, alone):
        assert logprobs(batched) == pytest.approx(logprobs(single), abs=1e-4)
    assert together[0].choices[0].finish_reason == "stop"
    assert stop_word not in together[0].choices[0].message.content
    assert together[2].choices[0].message.content == together[2].choices[1].message.content  # greedy twice
    assert len(together[2].choices[0].logprobs.content) == 10
    assert together[3].usage.completion_tokens == 24


def test_a_seeded_sampled_reply_in_the_batch_is_the_one_run_prompt_draws_with_that_seed(served):
    # each row swaps in its own generator state: the same draws as mx.random.seed(seed) on the single path
    sampled = {"temperature": 1.0, "top_p": 1.0, "top_k": 0}
    expected = [alone_with_run_prompt(served, PROMPTS[i], 20, seed=seed, **sampled)
                for i, seed in ((0, 0), (1, 11))]
    requests = [{"messages": [{"role": "user", "content": PROMPTS[i]}], "max_tokens": 20, "temperature": 1.0,
                 "top_p": 1.0, "extra_body": {"top_k": 0}, "seed": seed} for i, seed in ((0, 0), (1, 11))]
    requests.append({"messages": [{"role": "user", "content": PROMPTS[2]}], "max_tokens": 20,
                     "temperature": 0})
    served.service.scheduler.most_rows = 0
    replies = run_concurrently(served, requests)
    assert [reply.choices[0].message.content for reply in replies[:2]] == expected
    assert served.service.scheduler.most_rows >= 2


def test_a_client_that_leaves_frees_its_row_and_the_others_go_on(served):
    expected = alone_with_run_prompt(served, PROMPTS[1], 30)
    leaver_done = threading.Event()

    def leave_after_a_chunk() -> None:
        stream = client(served).chat.completions.create(
            model=MODEL_ID, messages=[{"role": "user", "content": PROMPTS[3]}], max_tokens=5000,
            temperature=0, stream=True)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break
        stream.close()
        leaver_done.set()

    finished_before = len(served.service.finished)
    leaver = threading.Thread(target=leave_after_a_chunk)
    stayer: dict = {}
    stays = threading.Thread(target=lambda: stayer.update(reply=client(served).chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": PROMPTS[1]}], max_tokens=30, temperature=0)))
    with model_thread_held(served, 2):
        leaver.start()
        stays.start()
    leaver.join(120)
    stays.join(120)
    assert stayer["reply"].choices[0].message.content == expected
    deadline = time.monotonic() + 30
    while len(served.service.finished) < finished_before + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    reasons = sorted(stats.finish_reason for stats in list(served.service.finished)[finished_before:])
    assert reasons == ["cancelled", "length"]
    assert served.service.scheduler.active() == 0 and served.service.scheduler.waiting() == 0


def test_a_queued_stream_gets_headers_at_once_and_leaves_the_queue_when_its_client_does(served):
    import http.client
    import json
    from urllib.parse import urlparse

    url = urlparse(served.base_url)
    body = json.dumps({"model": MODEL_ID, "messages": [{"role": "user", "content": "Hi"}], "stream": True,
                       "max_tokens": 4}).encode()
    release = threading.Event()
    blocker = served.worker.submit("window", lambda slot: release.wait(60), label="test blocker")
    try:
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        connection.request("POST", url.path + "/chat/completions", body,
                           {"Content-Type": "application/json", "Host": f"{url.hostname}:{url.port}"})
        response = connection.getresponse()  # the headers came while the model thread is held
        assert response.status == 200 and response.getheader("content-type").startswith("text/event-stream")
        assert response.readline() == b": keep-alive\n"
        assert served.service.scheduler.waiting() == 1
        connection.close()
        deadline = time.monotonic() + 10
        while served.service.scheduler.waiting() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert served.service.scheduler.waiting() == 0  # left while the model thread was still held
        assert not blocker.finished.is_set()
    finally:
        release.set()
        blocker.wait(60)


def test_a_lost_mac_of_a_split_model_is_a_503_group_degraded():
    from gemma4_mac.distributed import LeaderModel, PeerLostError
    from gemma4_mac.server.errors import GroupDegraded
    from gemma4_mac.server.scheduler import as_api_error

    error = as_api_error(PeerLostError("a Mac of the 2-Mac group stopped answering"))
    assert isinstance(error, GroupDegraded) and error.status == 503 and "stopped answering" in str(error)
    assert LeaderModel.supports_batching is False  # its followers mirror its own caches, not a batch's


# ------------------------------------------------------------------- replies written back to their sessions
# Thinking on: the template's generation prompt then is what the next turn renders before the answer (with
# thinking off it adds an empty thought block the history leaves out, so no path can reuse the answer).
THINKING = {"chat_template_kwargs": {"enable_thinking": True}}


def solo_two_turns(served, first: str, answer: str, follow_up: str, max_tokens: tuple[int, int]) -> dict:
    """On the model thread: the first turn and then the second on one session (`run_prompt`, as the window
    does), and the second turn on a fresh session; the second turn's reused tokens and both of its texts."""
    def run(slot):
        def turn(session, messages, n):
            prepared = prepare_prompt(slot.processor, messages, enable_thinking=True)
            events = list(run_prompt(slot.model, slot.processor, prepared, SamplingSettings(
                temperature=0.0, max_tokens=n, draft="off"), session=session))
            text = "".join(e.text for e in events if e.kind == "answer")
            return text, events[-1].stats, len(prepared.tokens)

        session = ChatSession(slot.model)
        first_answer, _, first_length = turn(session, [{"role": "user", "content": first}], max_tokens[0])
        text, stats, _ = turn(session, conversation(first, answer, follow_up), max_tokens[1])
        fresh, _, _ = turn(ChatSession(slot.model), conversation(first, answer, follow_up), max_tokens[1])
        return {"first_answer": first_answer, "first_length": first_length, "reused": stats.cached_tokens,
                "text": text, "fresh": fresh}

    return served.worker.submit("window", run, label="reference").wait(120)


def conversation(first: str, answer: str, follow_up: str) -> list[dict]:
    return [{"role": "user", "content": first}, {"role": "assistant", "content": answer},
            {"role": "user", "content": follow_up}]


def pool_is_consistent(served) -> bool:
    """Every pooled session's caches hold exactly its tokens (read on the model thread)."""
    def check(slot):
        return all(c.offset == len(e.session.tokens)
                   for e in served.service.pool.entries for c in e.session.cache)

    return served.worker.submit("window", check, label="pool check").wait(60)


def test_the_next_turn_of_a_batched_conversation_reuses_its_answer_as_after_a_solo_reply(served):
    # "Hi" has 16 prompt tokens, the window: its sliding rings wrapped while the answer was decoded
    firsts, lengths, follow_ups = [PROMPTS[0], PROMPTS[3]], (12, 18), ["And then?", "Go on, please."]
    served.service.scheduler.most_rows = 0
    replies = run_concurrently(served, [{"messages": [{"role": "user", "content": p}], "max_tokens": n,
                                         "temperature": 0, "extra_body": THINKING}
                                        for p, n in zip(firsts, lengths)])
    assert served.service.scheduler.most_rows >= 2  # the first turns were decoded together
    answers = [reply.choices[0].message.content for reply in replies]
    for first, answer, follow_up, n in zip(firsts, answers, follow_ups, lengths):
        solo = solo_two_turns(served, first, answer, follow_up, (n, 10))
        assert solo["first_answer"] == answer
        reply = client(served).chat.completions.create(
            model=MODEL_ID, messages=conversation(first, answer, follow_up), max_tokens=10, temperature=0,
            extra_body=THINKING)
        # the batched first turn left its session as the solo one did: prompt and answer are reused
        assert reply.usage.prompt_tokens_details.cached_tokens == solo["reused"] == solo["first_length"] + n
        assert reply.choices[0].message.content == solo["fresh"] == solo["text"]
    assert pool_is_consistent(served)


def test_n_choices_and_a_cancelled_row_leave_the_pool_sound(served):
    # two sampled choices (seeds 3 and 4): only choice 0's answer goes back into the conversation's session
    first = PROMPTS[3]
    sampled = {"messages": [{"role": "user", "content": first}], "max_tokens": 12, "n": 2, "temperature": 1.0,
               "seed": 3, "extra_body": {**THINKING, "top_k": 2}}
    leaver_prompt = [{"role": "user", "content": PROMPTS[2]}]
    leaver = threading.Thread(target=lambda: leave_after_a_chunk(served, leaver_prompt))
    together: dict = {}
    stays = threading.Thread(target=lambda: together.update(
        reply=client(served).chat.completions.create(model=MODEL_ID, **sampled)))
    served.service.scheduler.most_rows = 0
    with model_thread_held(served, 2):
        leaver.start()
        stays.start()
    leaver.join(120)
    stays.join(120)
    assert served.service.scheduler.most_rows >= 2
    choices = [c.message.content for c in together["reply"].choices]
    assert choices[0] != choices[1]
    assert pool_is_consistent(served)

    def leaver_kept(slot):  # its session holds its prompt and the part of the reply decoded before it left
        prompt = prepare_prompt(slot.processor, leaver_prompt).tokens
        return any(e.session.tokens[:len(prompt)] == prompt and len(e.session.tokens) > len(prompt)
                   for e in served.service.pool.entries)

    assert served.worker.submit("window", leaver_kept, label="pool check").wait(60)
    for index, answer in enumerate(choices):
        solo = solo_two_turns(served, first, answer, "And then?", (12, 10))
        reply = client(served).chat.completions.create(
            model=MODEL_ID, messages=conversation(first, answer, "And then?"), max_tokens=10, temperature=0,
            extra_body=THINKING)
        reused = reply.usage.prompt_tokens_details.cached_tokens
        # choice 0's turn reuses its answer; choice 1's (asked after it) the first prompt, which that session
        # still has a restore point for
        assert reused == solo["first_length"] + (12 if index == 0 else 0)
        assert reply.choices[0].message.content == solo["fresh"]
    # the cancelled reply went back as run_prompt leaves one: the same prompt again is answered as alone
    again = client(served).chat.completions.create(model=MODEL_ID, messages=leaver_prompt, max_tokens=8,
                                                   temperature=0)
    assert again.choices[0].message.content == alone_with_run_prompt(served, PROMPTS[2], 8)
    assert pool_is_consistent(served)


def leave_after_a_chunk(served, messages: list[dict]) -> None:
    stream = client(served).chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=5000,
                                                    temperature=0, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    stream.close()
