"""One rank of tests/test_distributed_faults.py's watchdog test: joins a 2-rank ring (MLX_HOSTFILE, MLX_RANK),
then sums over it in a loop, each sum watched by a RingWatchdog (whose idle probes are on).

Usage: ringwatch_worker.py TIMEOUT. Prints "ready" after the first sum; when the peer goes silent, prints the
watchdog's description and exits with 3 (1 when the peer closed the ring instead).
"""

from __future__ import annotations

import json
import os
import socket
import sys

import mlx.core as mx

from gemma4_mac.ringwatch import RingWatchdog


def main(timeout: float) -> int:
    group = mx.distributed.init(strict=True, backend="ring")
    with open(os.environ["MLX_HOSTFILE"], encoding="utf-8") as handle:
        ring = json.load(handle)
    watchdog = RingWatchdog(ring, group.rank(), timeout, "the other rank")
    watchdog.keep_alive()
    probed = [socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM) for fd in watchdog.sockets()]
    alive = sum(link.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0 for link in probed)
    for link in probed:
        link.close()
    print(f"sockets {len(probed)} probed {alive}", flush=True)
    try:
        for step in range(10 ** 9):
            with watchdog.watch():
                mx.eval(mx.distributed.all_sum(mx.ones((1024,)), group=group))
            if step == 0:
                print("ready", flush=True)
    except RuntimeError as error:
        if watchdog.silent_for is None:
            print(f"lost: {error}", flush=True)
            return 1
        print(f"{watchdog.describe()}; alive: {mx.sum(mx.ones((3,))).item():g}", flush=True)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(float(sys.argv[1])))
