"""Starting a group of Macs for one model: `serve`/`ask --hosts hosts.json`.

hosts.json is MLX's hostfile (what `mlx.distributed_config` writes): a list of
`{"ssh": "name-or-address", "ips": ["address on the shared link"]}`, this Mac first. This process becomes
rank 0; the other Macs are started through `mlx.launch` (ssh, ring backend) as followers
(`python -m gemma4_mac.cluster --model PATH`) that load their shard and repeat rank 0's model calls
(gemma4_mac/distributed.py). Rank 0 stays outside the launcher so that a follower that dies ends the request
with a clear error and leaves the server up, instead of the launcher stopping every rank. Every rank watches
its ring connections (gemma4_mac/ringwatch.py): a Mac that stays connected but stops answering for
`peer_timeout` seconds in the middle of a model call is dropped the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Optional, Sequence, TextIO

from .links import choose_split
from .ringwatch import DEFAULT_TIMEOUT, RingWatchdog

RING_ENV = "GEMMA4_MAC_RING"  # the ring's addresses, given to the followers by mlx.launch
DEFAULT_PORT = 32323  # mlx.launch's own default first port
CONNECT_TIMEOUT = 120.0


class ClusterError(RuntimeError):
    """The group of Macs cannot be started: the message says which file, host or connection is wrong."""


def read_hosts(path: str | Path) -> list[dict]:
    """The hosts of `path` (MLX's hostfile: the list, or mlx.distributed_config's {"hosts": [...], ...}),
    checked: at least two, each with an ssh name and an IP (the ring uses each host's first IP)."""
    path = Path(path).expanduser()
    try:
        hosts = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ClusterError(f"cannot read the hosts file {path} ({error}).") from error
    if isinstance(hosts, dict):
        hosts = hosts.get("hosts")
    valid = isinstance(hosts, list) and all(
        isinstance(h, dict) and isinstance(h.get("ssh"), str) and isinstance(h.get("ips"), list)
        and h["ips"] and all(isinstance(ip, str) for ip in h["ips"]) for h in hosts)
    if not valid:
        raise ClusterError(f"{path} is not a hosts file: expected a list like "
                           '[{"ssh": "mac-a.local", "ips": ["10.0.0.1"]}, '
                           '{"ssh": "mac-b.local", "ips": ["10.0.0.2"]}] '
                           "with this Mac first (mlx.distributed_config writes one).")
    if len(hosts) < 2:
        raise ClusterError(f"{path} names {len(hosts)} Mac; a split model needs at least two.")
    return hosts


def ring_addresses(hosts: list[dict], port: int) -> list[list[str]]:
    """The ring backend's hostfile: one `ip:port` per rank, rank 0 first."""
    return [[f"{host['ips'][0]}:{port + rank}"] for rank, host in enumerate(hosts)]


def _use_ring(ring: list, rank: int) -> None:
    """Point this process's MLX at the ring as `rank` (what mlx.launch does for the ranks it starts)."""
    handle = tempfile.NamedTemporaryFile("w", suffix=".json", prefix="gemma4-ring-", delete=False)
    with handle:
        json.dump(ring, handle)
    os.environ["MLX_HOSTFILE"] = handle.name
    os.environ["MLX_RANK"] = str(rank)


def _init_group(timeout: float, followers: Optional[subprocess.Popen] = None):
    """`mx.distributed.init` on the ring, given up (with a ClusterError) after `timeout` seconds."""
    import mlx.core as mx

    result: dict = {}

    def connect() -> None:
        try:
            result["group"] = mx.distributed.init(strict=True, backend="ring")
        except RuntimeError as error:
            result["error"] = error

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    if "group" in result:
        return result["group"]
    if followers is not None and followers.poll() is not None:
        raise ClusterError(f"the other Macs could not be started (mlx.launch exited with "
                           f"{followers.returncode}); check that this Mac can `ssh` to each host without a "
                           "password and that the model folder and this program are at the same paths there.")
    reason = result.get("error", f"no answer in {timeout:.0f} s")
    raise ClusterError(f"could not connect the Macs' ring ({reason}); "
                       "check the IPs in the hosts file and that the port is not blocked.")


def _described(host: dict, ip: str) -> str:
    return ip if host.get("ssh") in (None, ip) else f"{host['ssh']} ({ip})"


def _peers_in_words(hosts: list[dict], rank: int) -> str:
    """The Macs other than `rank`'s, for the message that says one of them went silent."""
    others = [_described(host, host["ips"][0]) for index, host in enumerate(hosts) if index != rank]
    return f"the Mac at {others[0]}" if len(others) == 1 else f"one of the Macs at {', '.join(others)}"


class Cluster:
    """Rank 0's view of the group: its `mx.distributed` group, the watchdog of its ring connections and the
    launcher running the followers."""

    def __init__(self, group, followers: subprocess.Popen, hostfile: Path, watchdog: RingWatchdog,
                 split: str = "heads"):
        self.group, self.followers, self._hostfile = group, followers, hostfile
        self.watchdog = watchdog
        self.split = split  # how the model is split: "layers" or "heads" (gemma4_mac/links.py)

    def close(self, timeout: float = 10.0) -> None:
        """Wait for the followers to end (after `LeaderModel.close`), stopping them if they do not."""
        try:
            self.followers.wait(timeout)
        except subprocess.TimeoutExpired:
            self.followers.terminate()
            try:
                self.followers.wait(timeout)
            except subprocess.TimeoutExpired:  # the launcher itself waits on a follower that was stopped
                self.followers.kill()
                self.followers.wait()
        self._hostfile.unlink(missing_ok=True)


def start(hosts_file: str | Path, model: str | Path, *, port: int = DEFAULT_PORT,
          timeout: float = CONNECT_TIMEOUT, peer_timeout: float = DEFAULT_TIMEOUT, split: str = "auto",
          err: Optional[TextIO] = None) -> Cluster:
    """Start the followers on the other hosts through `mlx.launch` and join the ring as rank 0. A model call
    that waits more than `peer_timeout` seconds for the other Macs ends with PeerLostError. `split`: "layers",
    "heads" or "auto" (by the link, gemma4_mac/links.py); the choice is written to `err`."""
    if peer_timeout <= 0:
        raise ClusterError(f"--peer-timeout must be a positive number of seconds, not {peer_timeout:g}.")
    hosts = read_hosts(hosts_file)
    try:
        split, why = choose_split(split, [host["ips"][0] for host in hosts[1:]])
    except ValueError as error:
        raise ClusterError(str(error)) from error
    if err is not None:
        other = "heads" if split == "layers" else "layers"
        err.write(f"splitting the model by {split} ({why}); --split {other} to change\n")
    ring = ring_addresses(hosts, port)
    handle = tempfile.NamedTemporaryFile("w", suffix=".json", prefix="gemma4-followers-", delete=False)
    with handle:
        json.dump(hosts[1:], handle)
    env = [f"{RING_ENV}={json.dumps(ring)}"]
    if os.environ.get("PYTHONPATH"):
        env.append(f"PYTHONPATH={os.environ['PYTHONPATH']}")
    # mlx.launch, less the busy loop that would take a core of this Mac (gemma4_mac/launcher.py)
    command = [sys.executable, "-m", "gemma4_mac.launcher", "--backend", "ring", "--hostfile", handle.name,
               "--cwd", os.getcwd(), "--python", sys.executable]
    for item in env:
        command += ["--env", item]
    command += ["--", "-m", "gemma4_mac.cluster", "--model", str(Path(model).expanduser().resolve()),
                "--peer-timeout", str(peer_timeout), "--split", split]
    followers = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    _use_ring(ring, 0)
    try:
        group = _init_group(timeout, followers)
    except ClusterError:
        followers.terminate()
        raise
    watchdog = RingWatchdog(ring, 0, peer_timeout, _peers_in_words(hosts, 0))
    watchdog.keep_alive()
    return Cluster(group, followers, Path(handle.name), watchdog, split)


def follower_main(argv: Optional[Sequence[str]] = None) -> int:
    """A follower (started by `start` through mlx.launch): load this rank's shard, repeat rank 0's calls."""
    parser = argparse.ArgumentParser(prog="python -m gemma4_mac.cluster")
    parser.add_argument("--model", required=True)
    parser.add_argument("--peer-timeout", type=float, default=DEFAULT_TIMEOUT)
    parser.add_argument("--split", choices=("layers", "heads"), default="heads")
    args = parser.parse_args(argv)
    ring = json.loads(os.environ[RING_ENV])
    _use_ring(ring, int(os.environ.get("MLX_RANK", "0")) + 1)  # mlx.launch numbers the followers from 0
    from mlx_model import ModelLoadError, load_model

    from .distributed import follow

    group = _init_group(CONNECT_TIMEOUT)
    leader = ring[0][0].rpartition(":")[0]
    watchdog = RingWatchdog(ring, group.rank(), args.peer_timeout, f"rank 0's Mac at {leader}")
    watchdog.keep_alive()  # rank 0's Mac gone from the link while idle: this follower ends too
    try:
        model = load_model(args.model, group=group, split=args.split)
    except ModelLoadError as error:
        sys.stderr.write(f"error on rank {group.rank()}: {error}\n")
        return 2
    try:
        follow(model, group, watchdog)
    except RuntimeError as error:  # rank 0 went away or went silent: nothing left to follow
        reason = watchdog.describe() if watchdog.silent_for is not None else f"rank 0 is gone ({error})"
        sys.stderr.write(f"rank {group.rank()}: {reason}; stopping.\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(follower_main())
