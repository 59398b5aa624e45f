"""Time to first token of the OpenAI-compatible server: a resent long conversation against a fresh prefill.

    python scripts/bench_server.py [--model PATH] [--tokens 8192]
    python scripts/bench_server.py --limits [--model PATH]
    python scripts/bench_server.py --concurrency [--model PATH] [--streams 1 4 8] [--rounds 3]

With --limits it measures what the largest requests cost instead (see `limits` below); with
--concurrency, the total tokens/s of concurrent streams against the same requests one after another
(see `concurrency` below).

Starts the server in this process on a free port and talks to it with the `openai` client, as an
agent would: it sends a conversation of about `--tokens` tokens, appends the reply and a new question,
and sends the whole conversation again. The resent request should cost only its new tokens (the
server's session pool hands it the cache of its first turn); the same request is then sent once more
after the caches were dropped, which is the fresh prefill it is compared with. Without --model a
random-weight model with the real Gemma 4 vocabulary and tokenizer is built (gemma4_mac.bench's
shape, converted to the app's 4-bit recipe as a user's model is; the tokenizer comes from the test
assets). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

WORDS = ("model cache token window layer memory answer question river mountain garden library music "
         "language program window engine signal pattern history science letter market travel winter").split()


def synthetic_model(folder: Path) -> Path:
    """The benchmark checkpoint of gemma4_mac.bench, converted as the app converts a model (Gemma 4's 4-bit
    recipe, bfloat16 elsewhere: what a user's folder holds, not the float32 source), with the real tokenizer
    files beside it. The quality gate is skipped: random weights have no quality to keep."""
    from convert import convert_checkpoint
    from gemma4_mac.bench import write_checkpoint
    from tests.assets import gemma4_vocab_dir

    source = folder.with_name(folder.name + "-float32")
    source.mkdir(parents=True, exist_ok=True)
    write_checkpoint(source)
    for file in gemma4_vocab_dir().iterdir():
        if file.is_file() and not file.name.startswith("."):
            shutil.copy(file, source / file.name)
    convert_checkpoint(source, folder, bits=4, force=True, skip_quality_check=True)
    shutil.rmtree(source)
    return folder


def filler(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)) + "."


def conversation_of(tokenizer, target: int, rng: random.Random) -> list[dict]:
    """User/assistant turns until the rendered prompt has about `target` tokens."""
    messages = [{"role": "system", "content": "You are a helpful assistant. " + filler(rng, 40)}]
    while True:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        have = len(tokenizer.encode(text, add_special_tokens=False))
        if have >= target - 300:
            break
        words = min(250, max(10, (target - have) // 2))
        messages.append({"role": "user", "content": filler(rng, words)})
        messages.append({"role": "assistant", "content": filler(rng, words)})
    question = "Summarise our conversation in one sentence. "
    messages.append({"role": "user", "content": question + filler(rng, 20)})
    return messages


def time_to_first_token(client, model_id: str, messages: list[dict],
                        max_tokens: int) -> tuple[float, str, dict]:
    """(seconds to the first generated token, the reply text, usage) of one streamed request."""
    started = time.perf_counter()
    first, parts, usage = None, [], {}
    stream = client.chat.completions.create(model=model_id, messages=messages, max_tokens=max_tokens,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        if first is None and (choice.delta.content or choice.finish_reason):
            first = time.perf_counter() - started
        parts.append(choice.delta.content or "")
    return first or (time.perf_counter() - started), "".join(parts), usage


def serve_process(path: Path, home: Path):
    """`python -m gemma4_mac serve` on a free port with local files allowed; (process, base URL)."""
    import os
    import re
    import subprocess
    import threading

    env = {**os.environ, "GEMMA4_MAC_HOME": str(home), "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "gemma4_mac", "serve", "--model", str(path), "--port", "0",
               "--allow-local-files"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                               cwd=REPO)
    for line in process.stderr:
        found = re.search(r"at (http://\S+/v1)", line)
        if found:
            threading.Thread(target=process.stderr.read, daemon=True).start()
            return process, found.group(1)
    raise RuntimeError("the server did not start")


def post(url: str, path: str, body: bytes) -> tuple[int, str]:
    import http.client
    from urllib.parse import urlparse

    parts = urlparse(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
    try:
        connection.request("POST", parts.path + path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        data = json.loads(response.read() or b"null")
        return response.status, ((data or {}).get("error") or {}).get("code") or "ok"
    finally:
        connection.close()


def measure(process, url: str, body: bytes) -> dict:
    """The serve process's peak memory above idle while it answers `body`, the time it took, and the
    longest another client waited for /health meanwhile."""
    import threading
    import urllib.request

    import psutil

    server = psutil.Process(process.pid)
    idle = server.memory_info().rss
    peak, stall, done = [idle], [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], server.memory_info().rss)
            time.sleep(0.002)

    def ping() -> None:
        health = url[: -len("/v1")] + "/health"
        while not done.is_set():
            started = time.perf_counter()
            urllib.request.urlopen(health, timeout=60).read()
            stall[0] = max(stall[0], time.perf_counter() - started)
            time.sleep(0.01)

    threads = [threading.Thread(target=sample), threading.Thread(target=ping)]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    status, code = post(url, "/chat/completions", body)
    elapsed = time.perf_counter() - started
    done.set()
    for thread in threads:
        thread.join()
    return {"status": status, "answer": code, "seconds": round(elapsed, 2),
            "peak_mb_above_idle": round((peak[0] - idle) / 2 ** 20, 1),
            "longest_health_wait_s": round(stall[0], 3)}


def limits(path: Path, scratch: Path) -> dict:
    """What the largest requests cost the server: a 60 MB message, a 64 MB body whose text holds one emoji
    (Python then keeps the text at four bytes a character), text just short of the size bound (counted
    in slices, then refused), a 1 GB local file, an image of the most pixels decoded (49 MP) and one
    over that limit (89 MP, refused from its header)."""
    from PIL import Image

    process, url = serve_process(path, scratch / "home")
    model = path.name

    def chat(content) -> bytes:
        messages = [{"role": "user", "content": content}]
        body = {"model": model, "max_tokens": 2, "messages": messages}
        return json.dumps(body, ensure_ascii=False).encode()

    try:  # warm up with a tool: it waits for the grammar engine's vocabulary, built as the model loaded
        tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
        post(url, "/chat/completions", json.dumps({"model": model, "max_tokens": 2, "tools": [tool],
                                                   "messages": [{"role": "user", "content": "hi"}]}).encode())
        results = {}
        results["message_60mb_ascii"] = measure(process, url, chat("word " * (12 * 2 ** 20)))
        emoji_text = "\N{GRINNING FACE}" + "word " * 13_400_000
        results["body_64mb_with_an_emoji"] = measure(process, url, chat(emoji_text))
        results["text_5mb_counted"] = measure(process, url, chat("word " * (2 ** 20)))
        sparse = scratch / "huge.png"
        with open(sparse, "wb") as handle:
            handle.truncate(2 ** 30)
        results["local_file_1gb"] = measure(process, url, chat([{"type": "image_url",
                                                                 "image_url": {"url": str(sparse)}}]))
        for side in (7_000, 9_400):
            big = scratch / f"big-{side}.png"
            Image.new("RGB", (side, side), (200, 120, 40)).save(big)
            results[f"image_{side * side // 10 ** 6}mp"] = measure(
                process, url, chat([{"type": "image_url", "image_url": {"url": str(big)}}]))
        return results
    finally:
        process.terminate()
        process.wait(30)


def concurrency(client, model_id: str, streams: tuple[int, ...], rounds: int, max_tokens: int,
                seed: int) -> dict:
    """Total generated tokens/s of `n` streams at once against the same `n` requests one after another,
    for each `n` in `streams`: `rounds` paired rounds (the order of the two alternates), greedy raw-prompt
    completions of different lengths. Reports the median ratio and its spread (min, max) over rounds."""
    import statistics
    import threading

    rng = random.Random(seed)
    prompts = [filler(rng, rng.randint(5, 120)) for _ in range(max(streams))]

    def one(prompt: str) -> int:
        reply = client.completions.create(model=model_id, prompt=prompt, max_tokens=max_tokens, temperature=0)
        return reply.usage.completion_tokens

    def one_after_another(batch: list[str]) -> tuple[int, float]:
        started = time.perf_counter()
        tokens = sum(one(prompt) for prompt in batch)
        return tokens, time.perf_counter() - started

    def at_once(batch: list[str]) -> tuple[int, float]:
        counts = [0] * len(batch)

        def send(index: int) -> None:
            counts[index] = one(batch[index])

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(batch))]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return sum(counts), time.perf_counter() - started

    one(prompts[0])  # warm up
    results = {}
    for n in streams:
        batch = prompts[:n]
        ratios, sequential_tps, concurrent_tps = [], [], []
        for round_index in range(rounds):
            runs = {}
            order = ("sequential", "concurrent") if round_index % 2 == 0 else ("concurrent", "sequential")
            for kind in order:
                tokens, seconds = (one_after_another if kind == "sequential" else at_once)(batch)
                runs[kind] = tokens / seconds
            sequential_tps.append(runs["sequential"])
            concurrent_tps.append(runs["concurrent"])
            ratios.append(runs["concurrent"] / runs["sequential"])
        results[f"{n}_streams"] = {
            "sequential_tokens_per_s": round(statistics.median(sequential_tps), 1),
            "concurrent_tokens_per_s": round(statistics.median(concurrent_tps), 1),
            "ratio_median": round(statistics.median(ratios), 2),
            "ratio_min": round(min(ratios), 2), "ratio_max": round(max(ratios), 2),
        }
    return results


def forward_ms_by_batch(slot, sizes: tuple[int, ...], steps: int = 5) -> dict:
    """One decode step's forward pass (milliseconds) for each batch size, on the model thread: where it grows
    in proportion to the batch, the machine is compute-bound and batching cannot add throughput."""
    import mlx.core as mx

    from gemma4_mac.batch import batch_caches

    model, figures = slot.model, {}
    for size in sizes:
        caches = []
        for row in range(size):
            cache = model.make_cache()
            mx.eval(model(mx.array([list(range(10, 20 + 7 * row))]), cache=cache))
            caches.append(cache)
        batched, inputs = batch_caches(caches), mx.array([[7]] * size)
        mx.eval(model(inputs, cache=batched))
        started = time.perf_counter()
        for _ in range(steps):
            mx.eval(model(inputs, cache=batched))
        figures[str(size)] = round((time.perf_counter() - started) / steps * 1000, 1)
    return figures


def _mlx_device() -> str:
    import mlx.core as mx

    return str(mx.default_device())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="a converted model folder (default: random weights, real vocabulary)")
    parser.add_argument("--limits", action="store_true",
                        help="measure the cost of the largest requests instead")
    parser.add_argument("--concurrency", action="store_true",
                        help="measure concurrent streams against the same requests one after another instead")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 8], help="with --concurrency")
    parser.add_argument("--rounds", type=int, default=3, help="paired rounds, with --concurrency")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per reply, with --concurrency")
    parser.add_argument("--tokens", type=int, default=8192, help="length of the resent conversation")
    parser.add_argument("--reply-tokens", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import openai

    from gemma4_mac.server.app import ServerHandle, create_app, load_slot
    from gemma4_mac.server.service import GenerationService
    from gemma4_mac.worker import ModelWorker

    scratch = Path(tempfile.mkdtemp(prefix="bench-server-"))
    try:
        path = Path(args.model).expanduser() if args.model else synthetic_model(scratch / "model")
        if args.limits:
            print(json.dumps({"model": str(path) if args.model else "random weights, real vocabulary",
                              **limits(path, scratch)}, indent=2))
            return 0
        worker = ModelWorker()
        slot = worker.load(lambda: load_slot(path)).wait()
        slot.info["context_limit"] = None  # measure the given length even where the planner would refuse it
        service = GenerationService(worker, sessions=2)
        handle = ServerHandle(create_app(service), "127.0.0.1", 0).start()
        client = openai.OpenAI(base_url=handle.base_url, api_key="unused", max_retries=0, timeout=3600)
        model_id = service.model_id()
        if args.concurrency:
            import platform

            figures = concurrency(client, model_id, tuple(args.streams), args.rounds, args.max_tokens,
                                  args.seed)
            streams = tuple(args.streams)
            figures["forward_ms_by_batch_size"] = worker.submit(
                "server", lambda slot: forward_ms_by_batch(slot, streams)).wait()
            handle.stop()
            worker.stop()
            described = str(path) if args.model else "random weights, real vocabulary (bench shape)"
            machine = f"{platform.machine()} {platform.system()}, MLX on {_mlx_device()}"
            print(json.dumps({"model": described, "max_tokens": args.max_tokens, "rounds": args.rounds,
                              "machine": machine, **figures}, indent=2))
            return 0
        tokenizer = slot.processor.tokenizer if hasattr(slot.processor, "tokenizer") else slot.processor
        rng = random.Random(args.seed)
        messages = conversation_of(tokenizer, args.tokens, rng)

        time_to_first_token(client, model_id, [{"role": "user", "content": "warm up"}], 2)
        first_ttft, reply, first_usage = time_to_first_token(client, model_id, messages, args.reply_tokens)
        messages += [{"role": "assistant", "content": reply},
                     {"role": "user", "content": "And in one word? " + filler(rng, 10)}]
        resent_ttft, _, resent_usage = time_to_first_token(client, model_id, messages, args.reply_tokens)
        worker.submit("server", lambda _slot: service.pool.clear()).wait()  # drop every cache
        fresh_ttft, _, fresh_usage = time_to_first_token(client, model_id, messages, args.reply_tokens)
        handle.stop()
        worker.stop()
        cached = (resent_usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        fresh_cached = (fresh_usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        print(json.dumps({
            "model": str(path) if args.model else "random weights, real vocabulary (gemma4_mac.bench shape)",
            "first_turn_prompt_tokens": first_usage.get("prompt_tokens"),
            "first_turn_ttft_s": round(first_ttft, 3),
            "resent_prompt_tokens": resent_usage.get("prompt_tokens"),
            "resent_cached_tokens": cached,
            "resent_ttft_s": round(resent_ttft, 3),
            "fresh_prefill_ttft_s": round(fresh_ttft, 3),
            "fresh_prefill_cached_tokens": fresh_cached,
            "speedup": round(fresh_ttft / max(resent_ttft, 1e-9), 1),
        }, indent=2))
        return 0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
