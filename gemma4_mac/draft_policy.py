"""What to draft and how deep, without MLX: prompt lookup and the adaptive draft depth.

`PromptLookup` proposes the tokens that followed the latest earlier occurrence of the conversation's last
few tokens (an n-gram match): free to compute, and right whenever the answer quotes the prompt, edits code
or repeats itself. `DepthPolicy` chooses, before every step, the draft depth (0 = plain decoding) that
maximises the expected tokens per second from two measurements of this conversation on this machine: how
many drafted tokens each drafter gets accepted, and what a forward of n tokens costs. Where verifying costs
about as much per token as decoding (a CPU) it stays at 0 unless nearly everything is accepted; where it
costs little more than one token (a Mac's GPU, bandwidth-bound) it drafts deeper. It falls back to plain
decoding when drafts stop being accepted, and probes again now and then, less and less often.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

MAX_DEPTH = 8
UNSEEN = -1  # stands for tokens lookup must never match (media placeholders)


class PromptLookup:
    """n-gram index over the conversation's tokens: `propose(k)` continues the longest recent match."""

    def __init__(self, tokens: Iterable[int] = (), *, max_ngram: int = 4, min_ngram: int = 2):
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.tokens: list[int] = []
        self._next: dict[tuple, int] = {}  # n-gram -> where its latest occurrence's continuation starts
        self.extend(tokens)

    def extend(self, tokens: Iterable[int]) -> None:
        """Append tokens (the prompt, then each generated one)."""
        for token in tokens:
            end = len(self.tokens)  # `token` continues the n-grams that end here
            for n in range(self.min_ngram, self.max_ngram + 1):
                if end >= n:
                    gram = tuple(self.tokens[end - n:end])
                    if UNSEEN not in gram:
                        self._next[gram] = end
            self.tokens.append(int(token))

    def propose(self, k: int, pending: Sequence[int] = ()) -> list[int]:
        """Up to `k` tokens that followed the longest (then latest) earlier match of the last tokens, the
        `pending` ones (not yet added) included."""
        tail = (self.tokens[-self.max_ngram:] + [int(t) for t in pending])[-self.max_ngram:]
        for n in range(min(self.max_ngram, len(tail)), self.min_ngram - 1, -1):
            start = self._next.get(tuple(tail[-n:]))
            if start is not None:
                proposal = self.tokens[start:start + k]
                if UNSEEN in proposal:
                    proposal = proposal[:proposal.index(UNSEEN)]
                if proposal:
                    return proposal
        return []

    def matches_prefix_of(self, tokens: Sequence[int]) -> bool:
        return len(self.tokens) <= len(tokens) and list(tokens[:len(self.tokens)]) == self.tokens


def expected_tokens(depth: int, acceptance: float) -> float:
    """Tokens one step yields when each draft is accepted with probability `acceptance` until the first
    rejection, plus the target's own token: 1 + a + a^2 + ... + a^depth."""
    return sum(acceptance ** i for i in range(depth + 1))


@dataclass
class Acceptance:
    """Per-draft acceptance of one drafter, recent steps weighing most (prior 1 of 2)."""

    accepted: float = 1.0
    drafted: float = 2.0
    decay: float = 0.9

    @property
    def rate(self) -> float:
        return self.accepted / self.drafted

    def record(self, drafted: int, accepted: int) -> None:
        self.accepted = self.accepted * self.decay + accepted
        self.drafted = self.drafted * self.decay + drafted


@dataclass
class ForwardCosts:
    """Seconds per decoding step by (drafter, depth), as moving averages; depth 0 is a plain step."""

    seconds: dict = field(default_factory=dict)
    weight: float = 0.3
    # before a deeper step was timed, each drafted token is assumed to cost this share of a plain step
    # (a bandwidth-bound GPU's order of magnitude: an optimistic start that one measured step corrects)
    prior_share: float = 0.1

    def record(self, kind: str, depth: int, seconds: float) -> None:
        key = ("plain", 0) if depth == 0 else (kind, depth)
        old = self.seconds.get(key)
        self.seconds[key] = seconds if old is None else old + self.weight * (seconds - old)

    @property
    def plain(self) -> Optional[float]:
        return self.seconds.get(("plain", 0))

    def deepest_timed(self, kind: str) -> int:
        return max((d for (k, d) in self.seconds if k == kind), default=0)

    def estimate(self, kind: str, depth: int) -> float:
        """Measured, else a line through plain decoding and the nearest timed depths of this drafter."""
        plain = self.plain or 0.0
        if depth == 0 or (kind, depth) in self.seconds:
            return self.seconds.get((kind, depth), plain) if depth else plain
        timed = sorted(d for (k, d) in self.seconds if k == kind)
        below = max((d for d in timed if d < depth), default=0)
        above = min((d for d in timed if d > depth), default=None)
        low = self.seconds[(kind, below)] if below else plain
        if above is not None:
            high = self.seconds[(kind, above)]
            return low + (high - low) * (depth - below) / (above - below)
        per_token = (low - plain) / below if below else self.prior_share * plain
        return low + max(per_token, 0.0) * (depth - below)

    def verify_cost_per_token(self) -> Optional[float]:
        """What each token added to a step costs, as a share of a plain step (from the deepest timed step)."""
        plain = self.plain
        deepest = max(((k, d) for (k, d) in self.seconds if d), key=lambda item: item[1], default=None)
        if not plain or deepest is None:
            return None
        return (self.seconds[deepest] - plain) / (deepest[1] * plain)


@dataclass
class DepthPolicy:
    """One conversation's draft-depth choice (see the module docstring)."""

    costs: ForwardCosts = field(default_factory=ForwardCosts)
    acceptance: dict = field(default_factory=dict)
    max_depth: int = MAX_DEPTH
    plain_steps_first: int = 2  # time plain decoding before any draft
    first_probe_gap: int = 24
    longest_probe_gap: int = 512
    plain_count: int = 0
    _since_probe: int = 0
    _probe_gap: int = 0

    def __post_init__(self):
        self._probe_gap = self.first_probe_gap

    def rate(self, kind: str) -> float:
        return self.acceptance.setdefault(kind, Acceptance()).rate

    def choose(self, available: dict[str, int], room: int) -> tuple[str, int]:
        """(drafter, depth) for the next step; `available` maps each drafter that can propose now to the most
        tokens it can propose, `room` is how many more tokens the answer may have. Depth 0 = plain."""
        best = self._best(available, room)
        if best[1] == 0 and available and not self._warming_up(room):
            self._since_probe += 1
            if self._since_probe >= self._probe_gap:  # look again: the text may have turned into a quote
                self._since_probe = 0
                return max(available, key=self.rate), 1
        return best

    def plain_ahead(self, kinds: Iterable[str], room: int) -> bool:
        """Whether the next step is plain whatever the drafters could propose (no depth would pay, no probe is
        due), so it can be started before the current token is known, as plain decoding pipelines it."""
        if self._warming_up(room):
            return True
        could_pay = self._best({kind: self.max_depth for kind in kinds}, room)[1] > 0
        if could_pay or self._since_probe + 1 >= self._probe_gap:
            return False
        self._since_probe += 1
        return True

    def _warming_up(self, room: int) -> bool:
        return self.costs.plain is None or self.plain_count < self.plain_steps_first or room < 2

    def _best(self, available: dict[str, int], room: int) -> tuple[str, int]:
        if self._warming_up(room):
            return "", 0
        best, best_speed = ("", 0), 1.0 / self.costs.plain
        for kind, most in available.items():
            # grow depth one doubling beyond what was timed, so a costly verify is found before a deep one
            limit = min(most, room - 1, self.max_depth, max(1, 2 * self.costs.deepest_timed(kind)))
            for depth in range(1, limit + 1):
                speed = expected_tokens(depth, self.rate(kind)) / self.costs.estimate(kind, depth)
                if speed > best_speed:
                    best, best_speed = (kind, depth), speed
        return best

    def record(self, kind: str, depth: int, accepted: int, seconds: float) -> None:
        """What a step did: drafted `depth` tokens of `kind`, `accepted` of them, in `seconds`."""
        self.costs.record(kind, depth, seconds)
        if depth == 0:
            self.plain_count += 1
            return
        self.acceptance.setdefault(kind, Acceptance()).record(depth, accepted)
        if accepted:
            self._probe_gap = self.first_probe_gap
        elif depth == 1:
            self._probe_gap = min(2 * self._probe_gap, self.longest_probe_gap)
