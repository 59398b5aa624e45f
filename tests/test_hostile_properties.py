"""Property-based hostile inputs: random and mutated bytes either parse or raise the reader's own error.

The same targets as `make fuzz` (tests/fuzz/targets.py), with a bounded number of examples so the suite
stays quick; any other exception, or a hang past the deadline below, fails the test.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.run import _mutate
from tests.fuzz.targets import TARGETS, seed_inputs

EXAMPLES = {"image": 50, "audio": 50, "video": 25, "pdf": 50, "text": 50, "gguf": 50, "safetensors": 50,
            "config": 50, "hf_header": 50}
SLOWEST_INPUT_S = 10.0  # one input taking longer is a hang


def _mutated(name: str):
    seeds = seed_inputs(name)
    return st.one_of(
        st.binary(max_size=4096),
        st.tuples(st.sampled_from(seeds), st.randoms(use_true_random=False)).map(
            lambda pair: _mutate(bytearray(pair[0]), pair[1])),
        st.sampled_from(seeds).flatmap(lambda seed: st.integers(0, len(seed)).map(lambda n: seed[:n])),
    )


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_reader_parses_or_raises_its_own_error(name):
    target = TARGETS[name]

    @settings(max_examples=EXAMPLES[name], deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=_mutated(name))
    def check(data):
        started = time.monotonic()
        target(data)  # raises only on a crash: an exception other than the reader's own
        assert time.monotonic() - started < SLOWEST_INPUT_S

    check()

