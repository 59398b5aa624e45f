"""The fuzzers in CI (issue 14.6): every target of tests/fuzz/targets.py runs for a few seconds in its own
process, as `make fuzz` runs them for a minute each; the whole run stays well under two minutes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS

REPO = Path(__file__).resolve().parents[1]
SECONDS_PER_TARGET = 7  # nine targets: about 75 s with process start-up on the 2-core machines


@pytest.mark.slow
def test_every_fuzzer_runs_briefly_without_a_crash(tmp_path):
    command = [sys.executable, "-m", "tests.fuzz.run", "--seconds", str(SECONDS_PER_TARGET),
               "--engine", "mutation", "--out", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=115,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    report = result.stdout + result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[2:] if line.strip()}
    assert set(rows) == set(TARGETS), report
    for name, row in rows.items():
        executions, crashes = int(row[1]), int(row[3])
        assert executions > 0 and crashes == 0, f"{name}: {report}\n" + "\n".join(
            p.read_text() for p in (tmp_path / name / "crashes").glob("*.txt"))
    assert result.returncode == 0, report
