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

from . import instance, netns
from .config import BridgeSpec
from .instance import TAG_DIGITS, Instance
from .ipam import Ipam

VETH_PREFIX = "k"  # host ends: k<instance tag><pod><network index>, see veth_name
POD_DIGITS = 9  # hex digits of the pod's UUID in a host veth's name
MAX_NETWORKS = 16  # a pod's networks: the index is one hex digit
VETH_LENGTH = len(VETH_PREFIX) + TAG_DIGITS + POD_DIGITS + 1  # 15: IFNAMSIZ less the NUL
TEMPORARY_PREFIX = "kb"  # a bridge being made, until it carries its owner


class NetworkSetupError(Exception):
    pass


class BridgeInUse(NetworkSetupError, ValueError):
    """A configured bridge is another's: the daemon refuses to start (a ValueError, as the
    faults of its configuration are), a pod to start on it."""


@dataclass(frozen=True)
class VethName:
    """What a host veth's name says: the instance (its tag), the pod (the first POD_DIGITS
    hex digits of its UUID) and the pod's network (its index)."""

    instance: str
    pod: str
    index: int

    def __str__(self) -> str:
        return f"{VETH_PREFIX}{self.instance}{self.pod}{self.index:x}"


def veth_name(instance_tag: str, pod_uuid: str, index: int) -> str:
    """The host end of a pod's veth on its network ``index``: 1 + 4 + 9 + 1 = 15 bytes. Nine
    hex digits are the UUID's first 36 random bits: n pods of one instance share a name with
    odds n²/2³⁷ (7·10⁻⁶ for 1,000 at once, 7·10⁻⁴ for 10,000), and a clash is no silent
    mix-up: the second pod's start fails."""
    if not 0 <= index < MAX_NETWORKS:
        raise ValueError(f"network index {index} is not in 0..{MAX_NETWORKS - 1}")
    return str(VethName(instance_tag, pod_uuid.replace("-", "")[:POD_DIGITS], index))


def parse_veth(name: str) -> VethName | None:
    """The instance, pod and network of a host veth, if the name is one kurmad makes."""
    body = name[len(VETH_PREFIX) :]
    if not name.startswith(VETH_PREFIX) or len(name) != VETH_LENGTH or not _is_hex(body):
        return None
    tag, pod = body[:TAG_DIGITS], body[TAG_DIGITS : TAG_DIGITS + POD_DIGITS]
    return VethName(tag, pod, int(body[-1], 16))


def peer_name(index: int) -> str:
    """The pod's end, until it is renamed inside the pod: it is made in the pod's namespace,
    so it need only differ from the pod's other networks'."""
    return f"kp{index:x}"


def _is_hex(text: str) -> bool:
    return bool(text) and all(c in "0123456789abcdef" for c in text)


class BridgeNetwork:
    def __init__(self, spec: BridgeSpec, state_dir: Path, owner: Instance) -> None:
        self.spec = spec
        self.owner = owner
        self.ipam = Ipam(
            state_dir / "networks" / spec.name / "leases.json", spec.subnet, spec.gateway
        )
        self.network = ipaddress.ip_network(spec.subnet)

    @property
    def gateway(self) -> str:
        return str(self.ipam.gateway)

    def ensure_bridge(self, ipr: IPRoute) -> str:
        """The bridge, ours, up, with the gateway address; IPv4 forwarding on. Idempotent.
        Says what it did; raises BridgeInUse, with nothing changed, if the bridge is
        another's."""
        index, done = self._claim(ipr)
        settings: dict[str, Any] = {"state": "up"}
        if self.spec.mtu:
            settings["mtu"] = self.spec.mtu
        ipr.link("set", index=index, **settings)
        ipr.addr("replace", index=index, address=self.gateway, prefixlen=self.network.prefixlen)
        netns.write_sysctl(None, "net.ipv4.ip_forward", "1")
        # DNAT from 127.0.0.1 to a pod: the kernel must route loopback sources out of the bridge.
        netns.write_sysctl(None, f"net.ipv4.conf.{self.spec.bridge}.route_localnet", "1")
        return done

    def _claim(self, ipr: IPRoute) -> tuple[int, str]:
        """The bridge's index, once it is ours: made now, found ours (a previous run's), found
        unowned, or left by an instance that is gone. Anything else is refused."""
        link = self._link(ipr)
        if link is None:
            made = self._make(ipr)
            if made is not None:
                return made, f"made bridge {self.spec.bridge}"
            link = self._link(ipr)  # another instance named its bridge so meanwhile
            if link is None:
                raise NetworkSetupError(f"{self._what}: a device of that name came and went")
        index = int(link["index"])
        kind = link.get(("linkinfo", "kind"))
        if kind != "bridge":
            raise BridgeInUse(f"{self._what} exists and is a {kind or 'device'}, not a bridge")
        alias = link.get("ifalias") or ""
        holder = instance.owner_of(alias)
        if holder is not None and holder.id == self.owner.id:
            return index, f"reused bridge {self.spec.bridge}"
        if alias and holder is None:
            raise BridgeInUse(
                f"{self._what} is not kurmad's (its alias is {alias!r}): it is left alone"
            )
        if holder is not None:
            self._check_gone(ipr, index, holder)
        ipr.link("set", index=index, ifalias=self.owner.alias)
        if holder is None:
            return index, f"took bridge {self.spec.bridge}, which had no owner"
        return index, f"took bridge {self.spec.bridge} over from {holder.describe()}, gone"

    @property
    def _what(self) -> str:
        return f"network {self.spec.name}: bridge {self.spec.bridge}"

    def _link(self, ipr: IPRoute) -> Any:
        found = ipr.link_lookup(ifname=self.spec.bridge)
        return ipr.get_links(found[0])[0] if found else None

    def _make(self, ipr: IPRoute) -> int | None:
        """A new bridge, named only once it carries its owner, so that no other instance
        ever sees it unowned; None if the name was taken meanwhile."""
        temporary = f"{TEMPORARY_PREFIX}{self.owner.tag}{os.urandom(4).hex()}"
        try:
            ipr.link("add", ifname=temporary, kind="bridge")
            index = int(ipr.link_lookup(ifname=temporary)[0])
        except (NetlinkError, IndexError) as err:
            raise NetworkSetupError(f"{self._what}: cannot make it: {err}") from None
        try:
            ipr.link("set", index=index, ifalias=self.owner.alias)
            ipr.link("set", index=index, ifname=self.spec.bridge)
        except NetlinkError as err:
            ipr.link("del", index=index)
            if err.code == errno.EEXIST:
                return None
            raise NetworkSetupError(f"{self._what}: cannot make it: {err}") from None
        return index

    def _check_gone(self, ipr: IPRoute, index: int, holder: Instance) -> None:
        """A bridge of another instance is taken over only if that instance is not running
        and no pod is left on the bridge (its addresses are theirs until then)."""
        if instance.is_running(holder.id):
            raise BridgeInUse(f"{self._what} belongs to {holder.describe()}, which is running")
        ports = [link.get("ifname") for link in ipr.get_links() if link.get("master") == index]
        if ports:
            raise BridgeInUse(
                f"{self._what} belongs to {holder.describe()}, which has pods on it "
                f"({', '.join(sorted(ports))})"
            )

    def attach(self, ipr: IPRoute, pod_uuid: str, index: int, namespace: Path, ifname: str,
               address: str, default_route: bool) -> None:  # fmt: skip
        """Wire the pod's namespace to the bridge; on failure nothing of it is left. The veth
        is made with its peer already in the pod's namespace, on the bridge and up, in one
        request: moving a device between namespaces later costs a wait for RCU."""
        host = veth_name(self.owner.tag, pod_uuid, index)
        peer = peer_name(index)
        if not ipr.link_lookup(ifname=self.spec.bridge):
            self.ensure_bridge(ipr)  # lost since the daemon started: made again, ours
        made = False
        try:
            bridge = ipr.link_lookup(ifname=self.spec.bridge)
            fd = os.open(namespace, os.O_RDONLY | os.O_CLOEXEC)
            try:
                ipr.link("add", ifname=host, kind="veth", peer={"ifname": peer, "net_ns_fd": fd},
                         master=bridge[0], state="up", **({"mtu": self.spec.mtu} if self.spec.mtu else {}))  # fmt: skip
                made = True
            finally:
                os.close(fd)
            self._configure_inside(namespace, peer, ifname, address, default_route)
        except (NetlinkError, OSError, IndexError) as err:
            if made:  # a name that was taken is another pod's veth: never remove that one
                self.detach(ipr, pod_uuid, index)
            raise NetworkSetupError(
                f"network {self.spec.name}: wiring pod {pod_uuid} (veth {host}): {err}"
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
        found = ipr.link_lookup(ifname=veth_name(self.owner.tag, pod_uuid, index))
        if found:
            try:
                ipr.link("del", index=found[0])
            except NetlinkError as err:
                if err.code != errno.ENODEV:
                    raise
