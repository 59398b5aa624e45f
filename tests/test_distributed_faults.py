"""A Mac of a split model that stays connected but stops answering (a stopped process, a Mac asleep, a pulled
cable without a reset): rank 0 ends the request once a step has waited --peer-timeout seconds, stays up and
reports itself degraded, and the follower, once it runs again, finds its link broken and exits.
Two ranks on 127.0.0.1 (`mlx.launch --backend ring`), the follower stopped with SIGSTOP.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.test_distributed import _free_port_pair, is_launcher

PEER_TIMEOUT = 6.0  # seconds


def _follower(server_pid: int):
    """The follower process under the server (not the mlx.launch that started it)."""
    import psutil

    children = psutil.Process(server_pid).children(recursive=True)
    found = [p for p in children if "gemma4_mac.cluster" in p.cmdline()
             and not is_launcher(p)]
    assert len(found) == 1
    return found[0]


@pytest.mark.slow
def test_a_silent_follower_ends_the_request_after_the_peer_timeout(tiny_chat_model_dir, tmp_path):
    import psutil

    from tests.server_support import raw_request, serve_process

    hosts = tmp_path / "hosts.json"
    hosts.write_text(json.dumps([{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}] * 2))
    question = json.dumps({"model": tiny_chat_model_dir.name, "max_tokens": 4, "temperature": 0,
                           "messages": [{"role": "user", "content": "Hello there"}]}).encode()
    with serve_process(tiny_chat_model_dir, tmp_path / "home", "--hosts", str(hosts), "--ring-port",
                       str(_free_port_pair()), "--peer-timeout", str(PEER_TIMEOUT)) as (process, url):
        # (no answer first: a first answer compiles MLX's kernels, which on a busy 2-core machine can take
        # longer than this short timeout; test_distributed.py shows that the group answers)
        follower = _follower(process.pid)
        follower.suspend()  # SIGSTOP: its connections stay open, nothing answers on them
        try:
            started = time.monotonic()
            status, body, _ = raw_request(url, "POST", "/chat/completions", question,
                                          timeout=PEER_TIMEOUT + 60)
            waited = time.monotonic() - started
            assert status == 503 and body["error"]["code"] == "group_degraded", body
            message = body["error"]["message"]
            # the time the step had waited when the watchdog ran: 6 s, more on a busy machine
            assert re.search(r"the Mac at 127\.0\.0\.1 stopped answering for \d+ s \(it is still connected", message)
            assert "--peer-timeout" in message
            assert PEER_TIMEOUT <= waited < PEER_TIMEOUT + 20
            status, health, _ = raw_request(url[: -len("/v1")], "GET", "/health")
            assert status == 200 and health["status"] == "degraded" and health["error"] == message
            status, body, _ = raw_request(url, "POST", "/chat/completions", question)
            assert status == 503 and body["error"]["message"] == message  # at once, not after another wait
            assert process.poll() is None  # the server stays up

            follower.resume()  # it finds rank 0's side of the ring closed and exits by itself
            follower.wait(30)
        finally:
            if follower.is_running():
                follower.resume()
                follower.kill()
                follower.wait(30)
        assert not psutil.pid_exists(follower.pid) or follower.status() == psutil.STATUS_ZOMBIE


def test_a_rank_waiting_on_a_stopped_peer_breaks_the_ring_after_its_timeout(tmp_path):
    """The watchdog itself, on a follower's side of the ring (rank 1 waiting for a stopped rank 0)."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    port = _free_port_pair()
    ring = tmp_path / "ring.json"
    ring.write_text(json.dumps([[f"127.0.0.1:{port}"], [f"127.0.0.1:{port + 1}"]]))
    ranks = [subprocess.Popen([sys.executable, str(root / "tests" / "ringwatch_worker.py"), "2"], cwd=root,
                              env={**os.environ, "PYTHONPATH": str(root), "MLX_HOSTFILE": str(ring),
                                   "MLX_RANK": str(rank)},
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for rank in range(2)]
    try:
        for rank in ranks:
            # both links found among its files, and the system probes them while idle
            assert rank.stdout.readline().strip() == "sockets 2 probed 2"
            assert rank.stdout.readline().strip() == "ready"
        ranks[0].send_signal(signal.SIGSTOP)
        started = time.monotonic()
        out, _ = ranks[1].communicate(timeout=30)
        assert 2.0 <= time.monotonic() - started < 20
        assert ranks[1].returncode == 3 and out.startswith("the other rank stopped answering for 2 s")
        assert out.strip().endswith("alive: 3")  # MLX still computes after the error
        ranks[0].send_signal(signal.SIGCONT)
        out, _ = ranks[0].communicate(timeout=30)
        # it finds the ring closed by rank 1 (or its own watchdog, whose clock ran on while it was stopped)
        assert ranks[0].returncode in (1, 3), out
    finally:
        for rank in ranks:
            if rank.poll() is None:
                rank.send_signal(signal.SIGCONT)
                rank.kill()
                rank.wait(30)
