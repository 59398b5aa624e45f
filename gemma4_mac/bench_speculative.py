"""Speculative decoding benchmark: `python -m gemma4_mac.bench --speculative [--tokens 48] [--rounds 2]`.

In one run, on this machine: (1) the real Gemma 3 270M (the starter model) with prompt lookup on tasks that
quote the prompt: tokens per model forward at a fixed depth (machine-independent: greedy acceptance), and the
wall-clock ratio of the adaptive depth against plain decoding, paired and alternating; the measured cost of
a forward of n tokens, so the gain on a bandwidth-bound GPU can be projected; (2) zero acceptance (a random
drafter) against plain decoding; (3) a tiny Gemma 4 with an oracle drafter (the model's own greedy tokens)
at depth 2, 4 and 8; (4) the same tiny model with a random-weight MTP drafter (what drafting costs). Every
speculative answer is checked to equal the plain greedy answer. Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import sys
import statistics
import time
from typing import Optional

import mlx.core as mx
import numpy as np

from .draft_policy import DepthPolicy, ForwardCosts
from .generate import SamplingSettings, TokenStep, generate_tokens
from .prompt import PreparedPrompt
from .session import ChatSession
from .speculative import Draft, SpeculationState, speculative_tokens

PARAGRAPH = ("The old lighthouse stood on the northern cliff for more than a century. Every night its keeper "
             "climbed the spiral stairs, trimmed the wick and polished the great lens until it shone. Ships "
             "passing in the storm could see its beam from twenty miles away, and many sailors owed their "
             "lives to that light.")
CODE = '''def total_price(items, tax_rate):
    subtotal = 0
    for item in items:
        subtotal += item.price * item.quantity
    tax = subtotal * tax_rate
    return subtotal + tax


def cheapest(items):
    best = None
    for item in items:
        if best is None or item.price < best.price:
            best = item
    return best
'''
TASKS = {  # base-model prompts: the answer quotes the prompt with one change
    "paragraph, one word changed": ("Original paragraph:\n" + PARAGRAPH + "\n\nThe same paragraph with the "
                                    "word \"northern\" changed to \"southern\":\nThe old lighthouse stood on "
                                    "the southern cliff"),
    "code file, function renamed": ("# prices.py\n" + CODE + "\n\n# prices.py, with total_price renamed to "
                                    "order_total:\ndef order_total(items, tax_rate):\n"),
}
TINY_GEMMA4 = dict(
    model_type="gemma4_text", vocab_size=262_144, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
    num_attention_heads=2, num_key_value_heads=1, head_dim=64, global_head_dim=128, sliding_window=64,
    layer_types=["sliding_attention"] * 3 + ["full_attention"], hidden_size_per_layer_input=0,
    final_logit_softcapping=30.0)
GPU_SHARES = (0.02, 0.05, 0.1)  # one more token's cost in a verify on a bandwidth-bound GPU (projections)


class OracleProposer:
    """Proposes the plain greedy answer's next tokens: every draft is right (the ceiling)."""

    kind = "oracle"

    def __init__(self, prompt, answer_tokens):
        self.sequence = list(prompt) + list(answer_tokens)

    def available(self, context) -> int:
        return 8

    def propose(self, context, depth) -> Draft:
        at = len(context.lookup.tokens) + 1  # the token being verified sits at len(tokens)
        return Draft(mx.array(self.sequence[at:at + depth] or [0], dtype=mx.int32))


class RandomProposer:
    """Random drafts (never right); `sampled`: drawn from a random q, given with it (for sampled answers)."""

    kind = "random"

    def __init__(self, vocab: int, seed: int = 0, sampled: bool = False):
        self.vocab, self.sampled = vocab, sampled
        self.rng = np.random.default_rng(seed)
        self.q = mx.softmax(mx.array(self.rng.standard_normal(vocab).astype(np.float32)))

    def available(self, context) -> int:
        return 8

    def propose(self, context, depth) -> Draft:
        if self.sampled:
            tokens = mx.random.categorical(mx.log(self.q), num_samples=depth).astype(mx.int32)
            return Draft(tokens, [self.q] * depth, [None] * depth)
        return Draft(mx.array(self.rng.integers(0, self.vocab, depth), dtype=mx.int32))


class BandwidthBoundCosts(ForwardCosts):
    """Fixed costs of a bandwidth-bound GPU, whatever this machine measures: a step that verifies n drafted
    tokens costs 1 + n * `share` plain steps. Shows the depth the adaptive policy picks on a Mac."""

    plain = 1.0

    def __init__(self, share: float = 0.05):
        super().__init__()
        self.share = share

    def record(self, kind, depth, seconds) -> None:
        pass

    def estimate(self, kind, depth) -> float:
        return 1.0 + self.share * depth

    def deepest_timed(self, kind) -> int:
        return 8


def bandwidth_bound_session(model, share: float = 0.05) -> ChatSession:
    """A conversation whose draft policy plans with BandwidthBoundCosts."""
    session = ChatSession(model)
    session.speculation = SpeculationState(policy=DepthPolicy(costs=BandwidthBoundCosts(share)))
    return session


class _Counts:
    drafted_tokens = accepted_tokens = decode_forwards = 0


def run_answer(model, prompt: list[int], n_tokens: int, *, plain: bool = False, draft: str = "lookup",
               proposers: Optional[list] = None, fixed_depth: Optional[int] = None,
               session: Optional[ChatSession] = None) -> dict:
    """One greedy answer of `n_tokens`; the prompt is read first and not timed."""
    session = session or ChatSession(model)
    logits, _ = session.read_prompt(PreparedPrompt(list(prompt), None, parse_output=False))
    sampling = SamplingSettings(temperature=0.0, max_tokens=n_tokens, draft=draft)
    counts = _Counts()
    started, cpu_started = time.perf_counter(), time.process_time()
    if plain:
        steps = generate_tokens(model, logits, session.cache, sampling, history=prompt)
    else:
        steps = speculative_tokens(model, logits, session, sampling, TokenStep, history=prompt, stats=counts,
                                   proposers=proposers, fixed_depth=fixed_depth)
    tokens = [step.token for step in steps]
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    forwards = len(tokens) if plain else counts.decode_forwards
    return {"tokens": tokens, "seconds": seconds, "cpu_seconds": cpu_seconds, "forwards": forwards,
            "drafted": counts.drafted_tokens, "accepted": counts.accepted_tokens, "session": session}


def forward_costs(model, prompt: list[int], sizes=(1, 2, 3, 5, 9), repeats: int = 3) -> dict:
    """Median seconds of one forward of n tokens after `prompt`, and each extra token's share of a 1-token
    forward."""
    session = ChatSession(model)
    session.read_prompt(PreparedPrompt(list(prompt), None, parse_output=False))
    times: dict[int, list] = {n: [] for n in sizes}
    for _ in range(repeats):
        for n in sizes:  # alternating sizes, so load on the machine hits them alike
            started = time.perf_counter()
            mx.eval(model(mx.array([prompt[:n]]), cache=session.cache))
            times[n].append(time.perf_counter() - started)
            for c in session.cache:
                c.trim(n)
    median = {n: statistics.median(t) for n, t in times.items()}
    shares = {n: (median[n] - median[1]) / ((n - 1) * median[1]) for n in sizes if n > 1}
    return {"seconds": {str(n): round(s, 4) for n, s in median.items()},
            "extra_token_share": {str(n): round(s, 3) for n, s in shares.items()}}


def paired_ratio(model, prompt, n_tokens: int, rounds: int, reference: list[int], **speculative) -> dict:
    """Plain and speculative answers in `rounds` rounds of plain, speculative, speculative, plain (drift in
    the machine's load cancels within a round): speedup = plain time / speculative time per round, wall clock
    and this process's CPU time, and their medians; fails loudly if an answer differs from `reference`."""
    wall, cpu, plain_s, spec_s, last = [], [], [], [], None
    for _ in range(rounds):
        first = run_answer(model, prompt, n_tokens, plain=True)
        spec = (run_answer(model, prompt, n_tokens, **speculative), run_answer(model, prompt, n_tokens,
                                                                              **speculative))
        plain, last = (first, run_answer(model, prompt, n_tokens, plain=True)), spec[1]
        for result in (*plain, *spec):
            if result["tokens"] != reference:
                raise AssertionError("a speculative answer differs from plain greedy decoding")
        plain_s.append(sum(r["seconds"] for r in plain))
        spec_s.append(sum(r["seconds"] for r in spec))
        wall.append(plain_s[-1] / spec_s[-1])
        cpu.append(sum(r["cpu_seconds"] for r in plain) / sum(r["cpu_seconds"] for r in spec))
    return {"speedup": round(statistics.median(wall), 3), "per_round": [round(r, 3) for r in wall],
            "speedup_cpu_time": round(statistics.median(cpu), 3),
            "plain_s": [round(s, 2) for s in plain_s], "speculative_s": [round(s, 2) for s in spec_s],
            "tokens_per_forward": round(len(reference) / last["forwards"], 2),
            "drafted": last["drafted"], "accepted": last["accepted"],
            "depths_timed": _depths(last["session"])}


def _depths(session) -> list:
    costs: ForwardCosts = session.speculation.policy.costs
    return sorted({f"{kind}:{depth}" for kind, depth in costs.seconds})


def _planned_on_gpu(model, prompt, n_tokens: int, reference: list[int]) -> dict:
    """What the adaptive policy does where a drafted token costs 5% of a step: tokens per forward."""
    result = run_answer(model, prompt, n_tokens, session=bandwidth_bound_session(model))
    if result["tokens"] != reference:
        raise AssertionError("a speculative answer differs from plain greedy decoding")
    return {"tokens_per_forward": round(len(reference) / result["forwards"], 2), "drafted": result["drafted"],
            "accepted": result["accepted"]}


def gemma3_prompt_lookup(n_tokens: int, rounds: int) -> dict:
    """The real Gemma 3 270M with prompt lookup (see the module docstring)."""
    from mlx_model import load

    from .model_manager import ensure_starter

    model, processor = load(ensure_starter())
    out: dict = {"model": "Gemma 3 270M base (the starter model, 8-bit)", "tasks": {}}
    first_prompt = None
    for name, text in TASKS.items():
        prompt = [2] + processor.tokenizer.encode(text, add_special_tokens=False)
        first_prompt = first_prompt or prompt
        plain = run_answer(model, prompt, n_tokens, plain=True)
        fixed = run_answer(model, prompt, n_tokens, fixed_depth=8)
        if fixed["tokens"] != plain["tokens"]:
            raise AssertionError(f"{name}: the fixed-depth answer differs from plain greedy decoding")
        per_forward = len(plain["tokens"]) / fixed["forwards"]
        # a verify costs one step plus `share` of a step per drafted token on a bandwidth-bound GPU
        projected = {str(share): round(len(plain["tokens"]) / (fixed["forwards"] + share * fixed["drafted"]),
                                       2) for share in GPU_SHARES}
        out["tasks"][name] = {
            "answer": processor.tokenizer.decode(plain["tokens"]),
            "fixed_depth_8": {"tokens_per_forward": round(per_forward, 2), "drafted": fixed["drafted"],
                              "accepted": fixed["accepted"],
                              "speedup_this_cpu": round(plain["seconds"] / fixed["seconds"], 3),
                              "projected_speedup_gpu": projected},
            "adaptive": paired_ratio(model, prompt, n_tokens, rounds, plain["tokens"]),
            "adaptive_planning_with_gpu_costs": _planned_on_gpu(model, prompt, n_tokens, plain["tokens"]),
        }
        _progress(name, out["tasks"][name])
    out["forward_cost"] = forward_costs(model, first_prompt)
    prompt = [2] + processor.tokenizer.encode(TASKS["paragraph, one word changed"], add_special_tokens=False)
    reference = run_answer(model, prompt, n_tokens, plain=True)["tokens"]
    out["zero_acceptance_random_drafter"] = paired_ratio(model, prompt, n_tokens, rounds, reference,
                                                         proposers=[RandomProposer(262_144)])
    _progress("zero acceptance", out["zero_acceptance_random_drafter"])
    return out


def _progress(section: str, figures: dict) -> None:
    """A finished section on stderr at once (the whole run takes minutes on a loaded machine)."""
    sys.stderr.write(f"{section}: {json.dumps(figures, ensure_ascii=False)}\n")
    sys.stderr.flush()


def tiny_gemma4(n_tokens: int, rounds: int) -> dict:
    """A tiny random Gemma 4 (real vocabulary): oracle drafts at depth 2, 4, 8; a random-weight MTP
    drafter."""
    from mlx_model.assistant import optional_attach
    from mlx_model.model import Model, ModelConfig

    mx.random.seed(0)
    model = Model(ModelConfig.from_dict(TINY_GEMMA4))
    mx.eval(model.parameters())
    prompt = [2] + [int(t) for t in np.random.default_rng(0).integers(1000, 200_000, 200)]
    reference = run_answer(model, prompt, n_tokens, plain=True)["tokens"]
    oracle = OracleProposer(prompt, reference)
    out: dict = {"model": "tiny random Gemma 4 (hidden 64, 4 layers, vocabulary 262,144), float32",
                 "forward_cost": forward_costs(model, prompt), "oracle": {}}
    for depth in (2, 4, 8):
        out["oracle"][f"depth_{depth}"] = paired_ratio(model, prompt, n_tokens, rounds, reference,
                                                       proposers=[oracle], fixed_depth=depth)
    optional_attach(model, _random_drafter(model))
    try:
        out["mtp_random_weights"] = {
            "fixed_depth_4": paired_ratio(model, prompt, n_tokens, rounds, reference, draft="mtp",
                                          fixed_depth=4),
            "adaptive": paired_ratio(model, prompt, n_tokens, rounds, reference, draft="mtp"),
        }
    finally:
        optional_attach(model, None)
    return out


def _random_drafter(model):
    """A drafter shaped like the published ones (4 layers, centroid head) for `model`, random weights."""
    from mlx_model.assistant import Drafter
    from mlx_model.assistant_config import AssistantConfig

    text = model.config.text_config
    config = AssistantConfig.from_dict({
        "model_type": "gemma4_assistant", "backbone_hidden_size": text.hidden_size,
        "use_ordered_embeddings": True,
        "text_config": {"vocab_size": text.vocab_size, "hidden_size": 32, "intermediate_size": 64,
                        "num_hidden_layers": 4, "num_attention_heads": 2, "num_key_value_heads": 1,
                        "head_dim": text.head_dim, "global_head_dim": text.global_head_dim,
                        "sliding_window": text.sliding_window,
                        "layer_types": ["sliding_attention"] * 3 + ["full_attention"]}})
    drafter = Drafter(config)
    order = np.random.default_rng(0).permutation(text.vocab_size).astype(np.int32)
    drafter.masked_embedding.token_ordering = mx.array(order)
    mx.eval(drafter.parameters())
    return drafter


def run(n_tokens: int = 48, rounds: int = 2, real: bool = True, tiny: bool = True) -> dict:
    """Every section; the machine's load is recorded before and after (2 shared cores here)."""
    result: dict = {"machine": {"cpus": os.cpu_count(), "load_before": os.getloadavg(),
                                "device": str(mx.default_device()), "gpu": "none (this session has no GPU)"},
                    "tokens_per_answer": n_tokens, "rounds": rounds}
    if tiny:
        result["tiny_gemma4"] = tiny_gemma4(n_tokens, rounds)
    if real:
        result["gemma3_270m"] = gemma3_prompt_lookup(n_tokens, rounds)
    result["machine"]["load_after"] = os.getloadavg()
    return result


def main(n_tokens: int, rounds: int, real: bool, tiny: bool = True) -> int:
    print(json.dumps(run(n_tokens, rounds, real, tiny), indent=2, ensure_ascii=False))
    return 0
