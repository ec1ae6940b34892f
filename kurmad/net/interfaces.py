"""What the host's own interfaces are to be: the boot config's ``network`` section, parsed and
checked by host/sections.py, applied by net/host.py. The types live here because the host's
boot reaches down into net/, never the other way."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class InterfaceConfig:
    """The host links an entry matches (a name pattern, a MAC; neither: every link) and how
    they are set up: DHCP (not given: unless there is a static address), an address, an MTU."""

    match_name: str | None = None
    match_mac: str | None = None
    dhcp: bool | None = None
    address: str | None = None  # ADDRESS/PREFIX
    gateway: str | None = None
    mtu: int | None = None

    def matches(self, name: str, mac: str) -> bool:
        """A name glob, a MAC (any case), or both; neither matches every link."""
        if self.match_name is not None and not fnmatch.fnmatchcase(name, self.match_name):
            return False
        return self.match_mac is None or mac == self.match_mac.lower()

    @property
    def wants_dhcp(self) -> bool:
        return self.dhcp if self.dhcp is not None else not self.address

    def describe_match(self) -> str:
        parts = [f"name={self.match_name}"] if self.match_name is not None else []
        parts += [f"mac={self.match_mac}"] if self.match_mac is not None else []
        return " ".join(parts) or "anything"

    def to_json(self) -> dict[str, Any]:
        match = {key: value for key, value in (("name", self.match_name), ("mac", self.match_mac))
                 if value is not None}  # fmt: skip
        given = {"dhcp": self.dhcp, "address": self.address, "gateway": self.gateway,
                 "mtu": self.mtu}  # fmt: skip
        out: dict[str, Any] = {"match": match} if match else {}
        out.update({key: value for key, value in given.items() if value is not None})
        return out


@dataclass(frozen=True)
class NetworkConfig:
    interfaces: tuple[InterfaceConfig, ...] = (InterfaceConfig(match_name="eth*", dhcp=True),)
    dns: tuple[str, ...] = ()
    link_timeout: float = 10.0  # seconds to wait for carrier
    dhcp_timeout: float = 15.0  # seconds the boot waits for a lease (the client keeps trying)

    def to_json(self) -> dict[str, Any]:
        return {"interfaces": [i.to_json() for i in self.interfaces], "dns": list(self.dns),
                "link_timeout": self.link_timeout, "dhcp_timeout": self.dhcp_timeout}  # fmt: skip
