"""A TCP relay on 127.0.0.1 that holds every byte back for a fixed one-way delay: two ranks on one machine
see a link with an Ethernet- or Wi-Fi-like latency (Linux's tc cannot add delay without netem).

`DelayProxy(listen_port, target_port, delay_s)` accepts connections on listen_port and relays each, both
ways, to target_port; data read at time t is written at t + delay_s, in order, at the rate it came.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import deque


class _Pipe:
    """One direction of one connection: read, hold back `delay` seconds, write."""

    def __init__(self, source: socket.socket, sink: socket.socket, delay: float):
        self.source, self.sink, self.delay = source, sink, delay
        self.queue: deque = deque()
        self.ready = threading.Condition()
        self.closed = False
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._write, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = self.source.recv(1 << 20)
            except OSError:
                data = b""
            with self.ready:
                self.queue.append((time.perf_counter() + self.delay, data))
                self.ready.notify()
            if not data:
                return

    def _write(self) -> None:
        while True:
            with self.ready:
                while not self.queue:
                    self.ready.wait()
                due, data = self.queue.popleft()
            wait = due - time.perf_counter()
            if wait > 0:
                _sleep_until(due)
            if not data:
                try:
                    self.sink.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            try:
                self.sink.sendall(data)
            except OSError:
                return


def _sleep_until(due: float) -> None:
    """Sleep, then spin the last fraction of a millisecond (sleep alone overshoots by ~0.1 ms)."""
    remaining = due - time.perf_counter()
    if remaining > 0.0005:
        time.sleep(remaining - 0.0005)
    while time.perf_counter() < due:
        pass


class DelayProxy:
    """Relays connections on `listen_port` to `target_port` (127.0.0.1) with `delay_s` one way."""

    def __init__(self, listen_port: int, target_port: int, delay_s: float):
        self.target_port, self.delay = target_port, delay_s
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", listen_port))
        self.server.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        for _ in range(600):  # the target rank may not listen yet
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
                break
            except OSError:
                time.sleep(0.05)
        else:
            client.close()
            return
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _Pipe(client, upstream, self.delay)
        _Pipe(upstream, client, self.delay)

    def close(self) -> None:
        try:
            self.server.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept
        except OSError:
            pass
        self.server.close()
