"""Pod network definitions, checked before anything is made from them: names unique and not
"host" or "none", types known, subnets valid and apart from one another. Light on purpose: the
boot config checks networks with it, long before pyroute2 is imported.

parse_networks() turns the YAML form (a list of objects: ``kurmad serve --network-config``, the
boot config's ``pod_networks``) into the types the rest of kurmad passes around: BridgeSpec and
CniSpec, and only net/ reads them."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

HOST, NONE = "host", "none"


class NetworkError(Exception):
    """A request the networks cannot meet; ``str()`` says which and why."""


@dataclass(frozen=True)
class BridgeSpec:
    """A network of kurmad's own: a bridge, its subnet, and kurmad's IPAM and firewall."""

    name: str
    bridge: str
    subnet: str
    gateway: str | None = None  # default: the subnet's first address
    mtu: int | None = None
    masquerade: bool = True

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": "bridge", "subnet": self.subnet}
        if self.bridge != self.name:
            out["bridge"] = self.bridge
        out |= {"gateway": self.gateway} if self.gateway is not None else {}
        out |= {"mtu": self.mtu} if self.mtu is not None else {}
        return out | ({} if self.masquerade else {"masquerade": False})


@dataclass(frozen=True)
class CniSpec:
    """A network that CNI plugins make: their configuration, CNI's own JSON, as text."""

    name: str
    config: str
    plugin_dirs: tuple[str, ...] | None = None  # default: cni.DEFAULT_PLUGIN_DIRS
    timeout: float | None = None  # seconds a plugin may take; default: cni.DEFAULT_TIMEOUT

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": "cni", "config": json.loads(self.config)}
        out |= {"plugin_dirs": list(self.plugin_dirs)} if self.plugin_dirs is not None else {}
        return out | ({"timeout": self.timeout} if self.timeout is not None else {})


NetworkSpec = BridgeSpec | CniSpec


def parse_networks(configs: Any) -> tuple[NetworkSpec, ...]:
    """The networks of their YAML form, checked (NetworkError names the network and field)."""
    if not isinstance(configs, list) or not all(isinstance(c, dict) for c in configs):
        raise NetworkError("networks must be a list of objects")
    check_network_configs(configs)
    return tuple(_cni(c) if c.get("type", "bridge") == "cni" else _bridge(c) for c in configs)


def _bridge(config: dict[str, Any]) -> BridgeSpec:
    name = config["name"]
    subnet = ipaddress.ip_network(config["subnet"])
    gateway, mtu, masquerade = (
        config.get("gateway"),
        config.get("mtu"),
        config.get("masquerade", True),
    )
    if gateway is not None and not _address_in(gateway, subnet):
        raise NetworkError(f"network {name}: gateway {gateway!r} is not an address in {subnet}")
    if mtu is not None and (
        isinstance(mtu, bool) or not isinstance(mtu, int) or not 68 <= mtu <= 65535
    ):
        raise NetworkError(f"network {name}: mtu {mtu!r} is not a whole number from 68 to 65535")
    if not isinstance(masquerade, bool):
        raise NetworkError(f"network {name}: masquerade {masquerade!r} is not true or false")
    return BridgeSpec(
        name, config.get("bridge", name), str(config["subnet"]), gateway, mtu, masquerade
    )


def _address_in(text: object, subnet: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    try:
        return isinstance(text, str) and ipaddress.ip_address(text) in subnet
    except ValueError:
        return False


def _cni(config: dict[str, Any]) -> CniSpec:
    name = config["name"]
    dirs, timeout = config.get("plugin_dirs"), config.get("timeout")
    if dirs is not None and (
        not isinstance(dirs, list) or not all(isinstance(d, str) for d in dirs)
    ):
        raise NetworkError(f"network {name}: plugin_dirs must be a list of paths")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
    ):
        raise NetworkError(
            f"network {name}: timeout {timeout!r} is not a number of seconds above 0"
        )
    plugin_dirs = None if dirs is None else tuple(dirs)
    return CniSpec(name, json.dumps(config["config"]), plugin_dirs,
                   None if timeout is None else float(timeout))  # fmt: skip


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
