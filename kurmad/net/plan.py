"""A pod's network plan: the networks it joins (interface, address, gateway, what a CNI plugin
answered) and the host ports it publishes. Made at create (addresses leased, ports reserved),
filled in when the pod is wired, kept in the pod's record; the manager, the firewall and the
API read it. JSON both ways, in the shape records have always had."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .ports import PortRequest


class PlanError(ValueError):
    """A plan that cannot be read: ``str()`` names the field."""


@dataclass(frozen=True)
class Attachment:
    """The pod on one network: ``ifname`` (eth0, eth1, ...) in the pod, its ``index`` among the
    pod's networks (the first has the default route)."""

    name: str
    ifname: str
    index: int
    address: str = ""  # ADDRESS/PREFIX: leased at create (bridge) or given by CNI at wiring
    gateway: str = ""
    cni: str | None = None  # the ADD result, verbatim: what DEL must be given back
    attempted: bool = False  # an ADD was tried: a failed one still wants its DEL

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "ifname": self.ifname, "index": self.index}
        for key, value in (("address", self.address), ("gateway", self.gateway),
                           ("cni", self.cni), ("attempted", self.attempted)):  # fmt: skip
            if value:
                out[key] = value
        return out

    @classmethod
    def from_json(cls, data: Any, path: str) -> Attachment:
        if not isinstance(data, dict):
            raise PlanError(f"{path}: not an object")
        try:
            return cls(
                name=str(data["name"]), ifname=str(data["ifname"]), index=int(data["index"]),
                address=str(data.get("address") or ""), gateway=str(data.get("gateway") or ""),
                cni=data.get("cni"), attempted=bool(data.get("attempted", False)),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as err:
            raise PlanError(f"{path}: {err!r}") from None


@dataclass(frozen=True)
class PublishedPort:
    """A host port forwarded to the pod's ``port``."""

    pod: str
    protocol: str
    host_port: int
    port: int

    @property
    def key(self) -> str:
        return PortRequest(self.protocol, self.host_port, self.port).key

    def to_json(self) -> dict[str, Any]:
        return {"pod": self.pod, "protocol": self.protocol, "host_port": self.host_port,
                "port": self.port}  # fmt: skip

    @classmethod
    def from_json(cls, data: Any, path: str) -> PublishedPort:
        if not isinstance(data, dict):
            raise PlanError(f"{path}: not an object")
        try:
            return cls(str(data["pod"]), str(data["protocol"]), int(data["host_port"]),
                       int(data["port"]))  # fmt: skip
        except (KeyError, TypeError, ValueError) as err:
            raise PlanError(f"{path}: {err!r}") from None


@dataclass(frozen=True)
class NetworkPlan:
    networks: tuple[Attachment, ...] = ()
    ports: tuple[PublishedPort, ...] = ()

    @property
    def wired(self) -> bool:
        """Whether the pod has networks of its own to wire (not loopback only)."""
        return bool(self.networks)

    def first_address(self) -> str:
        """The address on the first network that has one, without the prefix ('' if none)."""
        return next((n.address.split("/")[0] for n in self.networks if n.address), "")

    def with_attachment(self, attachment: Attachment) -> NetworkPlan:
        """The plan with ``attachment`` in place of the one of the same index."""
        networks = tuple(attachment if n.index == attachment.index else n for n in self.networks)
        return replace(self, networks=networks)

    def all_attempted(self) -> NetworkPlan:
        """The plan as if each network's wiring had been tried: what undoes a start whose
        progress was never saved (a crash mid-wiring). CNI's DEL of what was never added
        succeeds, so nothing is missed and nothing breaks."""
        return replace(self, networks=tuple(replace(n, attempted=True) for n in self.networks))

    def unwired(self) -> NetworkPlan:
        """The plan once unwired: what CNI said is given back, the leases are kept."""
        return replace(
            self, networks=tuple(replace(n, cni=None, attempted=False) for n in self.networks)
        )

    def to_json(self) -> dict[str, Any]:
        return {"networks": [n.to_json() for n in self.networks],
                "ports": [p.to_json() for p in self.ports]}  # fmt: skip

    @classmethod
    def from_json(cls, data: Any) -> NetworkPlan:
        if not isinstance(data, dict):
            raise PlanError("network: not an object")
        networks = data.get("networks", [])
        ports = data.get("ports", [])
        if not isinstance(networks, list) or not isinstance(ports, list):
            raise PlanError("network: networks and ports must be lists")
        return cls(
            tuple(
                Attachment.from_json(n, f"network.networks[{i}]") for i, n in enumerate(networks)
            ),
            tuple(PublishedPort.from_json(p, f"network.ports[{i}]") for i, p in enumerate(ports)),
        )
