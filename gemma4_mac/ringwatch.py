"""A bounded wait for the Macs' ring: a Mac that stays connected but stops answering must not hang the others.

MLX's ring backend (mlx 0.32) has no timeout: a collective whose peer is stopped (SIGSTOP, a Mac asleep, a
cable pulled without a TCP reset) blocks forever, while a peer that closes its connections makes the
collective fail with "[ring] connection to a peer was lost". `RingWatchdog` turns the first case into the
second: each model call is watched, and one that is still running after `timeout` seconds makes a thread
shut down this process's ring sockets (found among its open file descriptors by their addresses, so it
works on macOS and Linux alike). The blocked MLX call then raises RuntimeError, the process stays alive
and the caller reports the silent Mac by name (measured on Linux, mlx 0.32.4: the error comes back at
once and MLX keeps working for the other models).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator, Optional

# A 512-token prefill chunk of the 31B at 256K tokens of context is about 6e13 flops on each of two Macs
# (~30 s on the slowest Mac with 32 GB) plus ~660 MB of activations through the link (~30 s over Wi-Fi):
# about a minute at worst. Five times that is generous for a slow step and still ends a hang.
DEFAULT_TIMEOUT = 300.0
# Rank 0 waits for the other Macs to load their shards: they read as much as it does, maybe from a slower disk
LOAD_TIMEOUT = 600.0
KEEPALIVE_INTERVAL, KEEPALIVE_PROBES = 10, 6  # then a Mac gone from the link is dropped ~60 s later
MAX_KEEPALIVE_IDLE = 32767  # Linux refuses longer idle times


def _address(ip_port: str) -> tuple[str, int]:
    """The (IPv4 address, port) of an "ip:port" of the ring's hostfile (a name is resolved, as MLX does)."""
    host, _, port = ip_port.rpartition(":")
    return socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_STREAM)[0][4][:2]


def _open_descriptors() -> list[int]:
    """This process's open file descriptors (/dev/fd lists them on macOS and on Linux)."""
    return sorted(int(name) for name in os.listdir("/dev/fd") if name.isdigit())


def ring_sockets(own: tuple[str, int], right: tuple[str, int]) -> list[int]:
    """The descriptors of this process's ring connections: the one accepted on its own ring address (from
    the left neighbour) and the one it opened to its right neighbour's."""
    found = []
    for fd in _open_descriptors():
        try:
            probe = socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM)  # a duplicate: closing it is harmless
        except OSError:  # not a socket, or closed since it was listed
            continue
        with probe:
            try:
                local, peer = probe.getsockname()[:2], probe.getpeername()[:2]
            except OSError:  # not connected (a listening socket, a pipe's end)
                continue
        if local == own or peer == right:
            found.append(fd)
    return found


class RingWatchdog:
    """Ends any watched step that runs longer than `timeout` seconds by breaking this rank's ring
    connections; `silent_for` then says how long the step had waited."""

    def __init__(self, ring: list[list[str]], rank: int, timeout: float, peers: str):
        """`ring`: the ring's hostfile (one ["ip:port"] per rank); `peers`: the other Macs, in words."""
        if timeout <= 0:
            raise ValueError(f"the peer timeout must be a positive number of seconds, not {timeout}")
        self.timeout, self.peers = timeout, peers
        self._own = _address(ring[rank][0])
        self._right = _address(ring[(rank + 1) % len(ring)][0])
        self._started: Optional[float] = None
        self._limit = timeout
        self._depth = 0  # a cache change sent from inside a watched model call is part of that call
        self._wake = threading.Condition()
        self.silent_for: Optional[float] = None
        self._thread = threading.Thread(target=self._run, name="ring-watchdog", daemon=True)
        self._thread.start()

    def sockets(self) -> list[int]:
        """This rank's ring connections (two once the group is up; a Mac on both sides of a 2-Mac ring)."""
        return ring_sockets(self._own, self._right)

    @contextmanager
    def watch(self, limit: Optional[float] = None) -> Iterator[None]:
        """Bound the wait of the enclosed ring operations (one model call, one message) by `timeout` seconds,
        or by `limit` where that is longer."""
        with self._wake:
            self._depth += 1
            if self._depth == 1:
                self._started, self._limit = time.monotonic(), max(limit or 0.0, self.timeout)
                self._wake.notify()
        try:
            yield
        finally:
            with self._wake:
                self._depth -= 1
                if self._depth == 0:
                    self._started = None

    def keep_alive(self) -> None:
        """Have the system probe the ring's links while they are idle, so that a Mac that is gone from the
        link (asleep, unplugged) is noticed after `timeout` seconds of silence plus a minute of probes
        even when no model call is running (a stopped process still answers these: its system does)."""
        for fd in self.sockets():
            with socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM) as link:
                link.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                # Linux names the idle time TCP_KEEPIDLE, macOS TCP_KEEPALIVE
                idle = getattr(socket, "TCP_KEEPIDLE", getattr(socket, "TCP_KEEPALIVE", None))
                for option, value in ((idle, min(max(int(self.timeout), 1), MAX_KEEPALIVE_IDLE)),
                                      (getattr(socket, "TCP_KEEPINTVL", None), KEEPALIVE_INTERVAL),
                                      (getattr(socket, "TCP_KEEPCNT", None), KEEPALIVE_PROBES)):
                    if option is not None:
                        link.setsockopt(socket.IPPROTO_TCP, option, value)

    def _run(self) -> None:
        with self._wake:
            while True:
                if self._started is None:
                    self._wake.wait()
                    continue
                waited = time.monotonic() - self._started
                if waited < self._limit:
                    self._wake.wait(self._limit - waited)
                    continue
                self.silent_for = waited
                break
        self.break_links()

    def break_links(self) -> None:
        """Shut down this rank's ring connections: MLX's pending and later ring operations fail at once."""
        fds = self.sockets()
        if not fds:
            sys.stderr.write("the Macs' ring connections were not found among this process's files; "
                             "a step that waits for a silent Mac cannot be ended.\n")
        for fd in fds:
            with socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM) as link:
                try:
                    link.shutdown(socket.SHUT_RDWR)  # acts on the connection itself, not on this duplicate
                except OSError:  # already closed by the peer
                    pass

    def describe(self) -> str:
        """What happened, for the error message of the step that was ended."""
        return f"{self.peers} stopped answering for {self.silent_for:.0f} s"
