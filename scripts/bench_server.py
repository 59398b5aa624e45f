"""Time to first token of the OpenAI-compatible server: a resent long conversation against a fresh prefill.

    python scripts/bench_server.py [--model PATH] [--tokens 8192]

Starts the server in this process on a free port and talks to it with the `openai` client, as an
agent would: it sends a conversation of about `--tokens` tokens, appends the reply and a new question,
and sends the whole conversation again. The resent request should cost only its new tokens (the
server's session pool hands it the cache of its first turn); the same request is then sent once more
after the caches were dropped, which is the fresh prefill it is compared with. Without --model a
random-weight model with the real Gemma 4 vocabulary and tokenizer is built (gemma4_mac.bench's
shape; the tokenizer comes from the test assets). Prints one JSON object.
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
    """The benchmark checkpoint of gemma4_mac.bench with the real tokenizer files beside it."""
    from gemma4_mac.bench import write_checkpoint
    from tests.assets import gemma4_vocab_dir

    write_checkpoint(folder)
    for file in gemma4_vocab_dir().iterdir():
        if file.is_file() and not file.name.startswith("."):
            shutil.copy(file, folder / file.name)
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="a converted model folder (default: random weights, real vocabulary)")
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
        path = Path(args.model).expanduser() if args.model else synthetic_model(scratch)
        worker = ModelWorker()
        slot = worker.load(lambda: load_slot(path)).wait()
        slot.info["context_limit"] = None  # measure the given length even where the planner would refuse it
        service = GenerationService(worker, sessions=2)
        handle = ServerHandle(create_app(service), "127.0.0.1", 0).start()
        client = openai.OpenAI(base_url=handle.base_url, api_key="unused", max_retries=0, timeout=3600)
        model_id = service.model_id()
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
