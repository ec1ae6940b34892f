"""A bridge network: a Linux bridge on the host holding the subnet's gateway address, and per pod
a veth pair, its host end on the bridge and the other in the pod's namespace with an address
from the network's IPAM and, on the pod's first network, the default route via the bridge.
Egress is masqueraded by the firewall (firewall.py)."""

from __future__ import annotations

import errno
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from . import netns
from .ipam import Ipam

VETH_PREFIX = "kv"  # host ends are kv<12 hex of the pod UUID><network index>
PEER_PREFIX = "kp"  # the pod's end, until it is renamed inside the pod (names have 15 bytes)


class NetworkSetupError(Exception):
    pass


@dataclass(frozen=True)
class BridgeSpec:
    name: str
    bridge: str
    subnet: str
    gateway: str | None = None
    mtu: int | None = None
    masquerade: bool = True

    @classmethod
    def from_config(cls, entry: dict[str, Any]) -> BridgeSpec:
        return cls(entry["name"], entry.get("bridge", entry["name"]), entry["subnet"],
                   entry.get("gateway"), entry.get("mtu"), entry.get("masquerade", True))  # fmt: skip


def veth_name(pod_uuid: str, index: int, prefix: str = VETH_PREFIX) -> str:
    return f"{prefix}{pod_uuid.replace('-', '')[:12]}{index}"


def pod_of_veth(name: str) -> str | None:
    """The UUID prefix (12 hex digits) a host veth was made for, if it is one of ours."""
    rest = name[len(VETH_PREFIX) :]
    if (
        name.startswith(VETH_PREFIX)
        and len(rest) == 13
        and all(c in "0123456789abcdef" for c in rest[:12])
    ):
        return rest[:12]
    return None


class BridgeNetwork:
    def __init__(self, spec: BridgeSpec, state_dir: Path) -> None:
        self.spec = spec
        self.ipam = Ipam(
            state_dir / "networks" / spec.name / "leases.json", spec.subnet, spec.gateway
        )
        self.network = ipaddress.ip_network(spec.subnet)

    @property
    def gateway(self) -> str:
        return str(self.ipam.gateway)

    def ensure_bridge(self, ipr: IPRoute) -> None:
        """The bridge, up, with the gateway address; IPv4 forwarding on. Idempotent."""
        found = ipr.link_lookup(ifname=self.spec.bridge)
        if not found:
            try:
                ipr.link("add", ifname=self.spec.bridge, kind="bridge")
            except NetlinkError as err:
                if err.code != errno.EEXIST:
                    raise NetworkSetupError(
                        f"network {self.spec.name}: cannot make bridge {self.spec.bridge}: {err}"
                    ) from None
            found = ipr.link_lookup(ifname=self.spec.bridge)
        index = found[0]
        settings: dict[str, Any] = {"state": "up"}
        if self.spec.mtu:
            settings["mtu"] = self.spec.mtu
        ipr.link("set", index=index, **settings)
        ipr.addr("replace", index=index, address=self.gateway, prefixlen=self.network.prefixlen)
        netns.write_sysctl(None, "net.ipv4.ip_forward", "1")
        # DNAT from 127.0.0.1 to a pod: the kernel must route loopback sources out of the bridge.
        netns.write_sysctl(None, f"net.ipv4.conf.{self.spec.bridge}.route_localnet", "1")

    def attach(self, ipr: IPRoute, pod_uuid: str, index: int, namespace: Path, ifname: str,
               address: str, default_route: bool) -> None:  # fmt: skip
        """Wire the pod's namespace to the bridge; on failure nothing of it is left. The veth
        is made with its peer already in the pod's namespace, on the bridge and up, in one
        request: moving a device between namespaces later costs a wait for RCU."""
        host = veth_name(pod_uuid, index)
        peer = veth_name(pod_uuid, index, PEER_PREFIX)
        bridge = ipr.link_lookup(ifname=self.spec.bridge)
        if not bridge:
            self.ensure_bridge(ipr)
            bridge = ipr.link_lookup(ifname=self.spec.bridge)
        try:
            fd = os.open(namespace, os.O_RDONLY | os.O_CLOEXEC)
            try:
                ipr.link("add", ifname=host, kind="veth", peer={"ifname": peer, "net_ns_fd": fd},
                         master=bridge[0], state="up", **({"mtu": self.spec.mtu} if self.spec.mtu else {}))  # fmt: skip
            finally:
                os.close(fd)
            self._configure_inside(namespace, peer, ifname, address, default_route)
        except (NetlinkError, OSError, IndexError) as err:
            self.detach(ipr, pod_uuid, index)
            raise NetworkSetupError(
                f"network {self.spec.name}: wiring pod {pod_uuid}: {err}"
            ) from None

    def _configure_inside(
        self, namespace: Path, peer: str, ifname: str, address: str, default_route: bool
    ) -> None:
        interface = ipaddress.ip_interface(address)
        with IPRoute(fileno=netns.netlink_socket(namespace).detach()) as inside:
            index = inside.link_lookup(ifname=peer)[0]
            settings: dict[str, Any] = {"ifname": ifname}
            if self.spec.mtu:
                settings["mtu"] = self.spec.mtu
            inside.link("set", index=index, **settings)
            inside.addr(
                "add", index=index, address=str(interface.ip), prefixlen=interface.network.prefixlen
            )
            inside.link("set", index=index, state="up")
            inside.link("set", index=inside.link_lookup(ifname="lo")[0], state="up")
            if default_route:
                inside.route("add", dst="0.0.0.0/0", gateway=self.gateway, oif=index)

    def detach(self, ipr: IPRoute, pod_uuid: str, index: int) -> None:
        """Remove the pod's veth pair by its host end (the other goes with it), after a failed
        attach. Idempotent. (A wired pod's pair goes with its namespace.)"""
        found = ipr.link_lookup(ifname=veth_name(pod_uuid, index))
        if found:
            try:
                ipr.link("del", index=found[0])
            except NetlinkError as err:
                if err.code != errno.ENODEV:
                    raise
