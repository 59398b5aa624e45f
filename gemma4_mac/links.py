"""Which way to split a model across Macs: by the link between them.

Split by heads (tensor parallel, mlx_model/sharding.py) every layer waits for two collectives per token,
which only a Thunderbolt link makes cheap; split by layers (pipeline, mlx_model/pipeline.py) sends one
hidden vector per token and Mac, which suits Ethernet and Wi-Fi (docs/distributed.md has the figures).
`auto` asks macOS which interface reaches each other Mac (`route -n get IP`) and whether that interface is
a Thunderbolt port or the Thunderbolt Bridge (`networksetup -listallhardwareports`).
"""

from __future__ import annotations

import subprocess
import sys
from typing import Callable, Optional, Sequence

SPLITS = ("auto", "layers", "heads")

Runner = Callable[[Sequence[str]], str]


def _run(command: Sequence[str]) -> str:
    return subprocess.run(list(command), capture_output=True, text=True, timeout=10, check=True).stdout


def route_interface(route_output: str) -> Optional[str]:
    """The `interface:` of `route -n get IP`'s output."""
    for line in route_output.splitlines():
        key, _, value = line.strip().partition(":")
        if key == "interface" and value.strip():
            return value.strip()
    return None


def thunderbolt_devices(ports_output: str) -> set[str]:
    """The devices (en2, bridge0) of the Thunderbolt ports in `networksetup -listallhardwareports`' output."""
    devices, port = set(), ""
    for line in ports_output.splitlines():
        key, _, value = line.strip().partition(":")
        if key == "Hardware Port":
            port = value.strip()
        elif key == "Device" and "thunderbolt" in port.lower():
            devices.add(value.strip())
    return devices


def thunderbolt_links(ips: Sequence[str], run: Runner = _run, platform: str = sys.platform) -> Optional[bool]:
    """Whether every address in `ips` is reached over Thunderbolt; None where macOS cannot be asked."""
    if platform != "darwin" or not ips:
        return None
    try:
        devices = thunderbolt_devices(run(["networksetup", "-listallhardwareports"]))
        interfaces = [route_interface(run(["route", "-n", "get", ip])) for ip in ips]
    except (OSError, subprocess.SubprocessError):
        return None
    if any(interface is None for interface in interfaces):
        return None
    return all(interface in devices for interface in interfaces)


def choose_split(requested: str, peer_ips: Sequence[str], run: Runner = _run,
                 platform: str = sys.platform) -> tuple[str, str]:
    """(split, why) for `--split requested`: "auto" is heads over Thunderbolt, layers otherwise."""
    if requested not in SPLITS:
        raise ValueError(f"--split must be one of {', '.join(SPLITS)}, not {requested!r}")
    if requested != "auto":
        return requested, "as asked"
    thunderbolt = thunderbolt_links(peer_ips, run, platform)
    if thunderbolt:
        return "heads", "the Macs are linked by Thunderbolt"
    if thunderbolt is None:
        return "layers", "the link could not be identified as Thunderbolt"
    return "layers", "the Macs are not linked by Thunderbolt"
