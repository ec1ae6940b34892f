"""Pod network definitions, checked before anything is made from them: names unique and not
"host" or "none", types known, subnets valid and apart from one another. Light on purpose: the
boot config checks networks with it, long before pyroute2 is imported."""

from __future__ import annotations

import ipaddress
from typing import Any

HOST, NONE = "host", "none"


class NetworkError(Exception):
    """A request the networks cannot meet; ``str()`` says which and why."""


def check_network_configs(configs: list[dict[str, Any]]) -> None:
    """Names unique, types known, subnets valid and not overlapping one another."""
    seen: dict[str, ipaddress.IPv4Network | ipaddress.IPv6Network] = {}
    names: set[str] = set()
    bridges: dict[str, str] = {}  # bridge -> the network it is
    for i, config in enumerate(configs):
        name = config.get("name")
        if not isinstance(name, str) or not name or name in (HOST, NONE) or "," in name:
            raise NetworkError(f"networks[{i}]: a name is needed (not host or none), got {name!r}")
        if name in names:
            raise NetworkError(f"networks[{i}]: the name {name} is given twice")
        names.add(name)
        kind = config.get("type", "bridge")
        if kind == "cni":
            if not isinstance(config.get("config"), dict):
                raise NetworkError(
                    f"network {name}: a cni network needs its plugin configuration in config"
                )
            continue
        if kind != "bridge":
            raise NetworkError(f"network {name}: type {kind!r} is not bridge or cni")
        try:
            subnet = ipaddress.ip_network(config.get("subnet", ""))
        except ValueError:
            raise NetworkError(
                f"network {name}: subnet {config.get('subnet')!r} is not a network like 10.88.0.0/16"
            ) from None
        _check_bridge(name, config.get("bridge", name), bridges)
        for other, taken in seen.items():
            if subnet.overlaps(taken):
                raise NetworkError(
                    f"network {name}: subnet {subnet} overlaps {taken} of network {other}"
                )
        seen[name] = subnet


def _check_bridge(network: str, bridge: object, bridges: dict[str, str]) -> None:
    """A bridge name the kernel takes (15 bytes, no / : or space), of one network only:
    two would each set their gateway on it."""
    if (
        not isinstance(bridge, str)
        or not bridge
        or len(bridge.encode()) > 15
        or bridge in (".", "..")
        or any(c in "/:" or c.isspace() for c in bridge)
    ):
        raise NetworkError(
            f"network {network}: bridge {bridge!r} is not an interface name "
            "(1 to 15 bytes, no '/', ':' or spaces)"
        )
    if bridge in bridges:
        raise NetworkError(
            f"network {network}: bridge {bridge} is network {bridges[bridge]}'s already"
        )
    bridges[bridge] = network
