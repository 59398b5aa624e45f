"""`--split auto` (gemma4_mac/links.py): split by heads only where every other Mac is reached over
Thunderbolt, as macOS's `route` and `networksetup` say; by layers elsewhere, and where they cannot be asked."""

from __future__ import annotations

import subprocess

import pytest

from gemma4_mac.links import choose_split, route_interface, thunderbolt_devices

PORTS = """
Hardware Port: Ethernet
Device: en0
Ethernet Address: 3c:a6:f6:00:00:01

Hardware Port: Thunderbolt 1
Device: en2
Ethernet Address: 36:1f:30:00:00:02

Hardware Port: Wi-Fi
Device: en1
Ethernet Address: 3c:a6:f6:00:00:03

Hardware Port: Thunderbolt Bridge
Device: bridge0
Ethernet Address: 36:1f:30:00:00:00
"""


def _route(interface: str) -> str:
    return (f"   route to: 169.254.10.2\ndestination: 169.254.0.0\n       mask: 255.255.0.0\n"
            f"  interface: {interface}\n      flags: <UP,DONE,CLONING,STATIC>\n")


def _mac(routes: dict[str, str]):
    def run(command):
        if command[0] == "networksetup":
            return PORTS
        return _route(routes[command[-1]])
    return run


def test_the_outputs_are_read():
    assert thunderbolt_devices(PORTS) == {"en2", "bridge0"}
    assert route_interface(_route("bridge0")) == "bridge0"
    assert route_interface("no such line") is None


def test_auto_splits_by_heads_over_thunderbolt_only():
    bridge = _mac({"169.254.10.2": "bridge0", "169.254.10.3": "en2"})
    assert choose_split("auto", ["169.254.10.2", "169.254.10.3"], bridge, "darwin")[0] == "heads"
    ethernet = _mac({"169.254.10.2": "bridge0", "192.168.1.20": "en0"})
    split, why = choose_split("auto", ["169.254.10.2", "192.168.1.20"], ethernet, "darwin")
    assert (split, why) == ("layers", "the Macs are not linked by Thunderbolt")


def test_auto_splits_by_layers_where_the_link_is_unknown():
    def failing(command):
        raise subprocess.CalledProcessError(1, command)

    assert choose_split("auto", ["10.0.0.2"], failing, "darwin")[0] == "layers"
    assert choose_split("auto", ["127.0.0.1"], _mac({}), "linux")[0] == "layers"
    assert choose_split("heads", ["10.0.0.2"], failing, "linux") == ("heads", "as asked")
    with pytest.raises(ValueError, match="--split must be one of"):
        choose_split("rows", ["10.0.0.2"])
