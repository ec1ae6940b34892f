"""The host's own interfaces: matched by name pattern or MAC, brought up with a bounded wait for
link, then addressed statically or by DHCP (pyroute2's client: lease, renewal, release at
shutdown). Name servers from the config and from leases go to /etc/resolv.conf.

DHCP clients share one asyncio loop in a thread of their own; a lease that has not come by the
boot's deadline is reported, and the client keeps trying in the background."""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.dhcp import hooks as dhcp_hooks
from pyroute2.dhcp.client import AsyncDHCPClient, ClientConfig
from pyroute2.dhcp.hooks import Trigger, hook
from pyroute2.dhcp.leases import JSONFileLease, Lease, MissingOptionError

from kurmad.linux.files import write_atomic, write_json_atomic

from .interfaces import InterfaceConfig, NetworkConfig

log = logging.getLogger("kurmad.net")


class NetworkError(Exception):
    pass


@dataclass
class Link:
    index: int
    name: str
    mac: str


@dataclass
class InterfaceState:
    """What one interface got; kept for the boot report and for resolv.conf."""

    name: str
    method: str  # static or dhcp
    addresses: list[str] = field(default_factory=list)
    gateway: str = ""
    name_servers: list[str] = field(default_factory=list)
    search: list[str] = field(default_factory=list)
    server: str = ""

    def describe(self) -> str:
        via = f" via {self.gateway}" if self.gateway else ""
        source = f" from {self.server}" if self.server else ""
        return (
            f"{self.name}: {', '.join(self.addresses) or 'no address'}{via} ({self.method}{source})"
        )


# --- links -----------------------------------------------------------------------------------------


def list_links(ipr: IPRoute) -> list[Link]:
    links = []
    for message in ipr.get_links():
        name = message.get("ifname")
        if name and name != "lo":
            links.append(Link(message["index"], name, (message.get("address") or "").lower()))
    return links


def assign(
    links: list[Link], interfaces: Sequence[InterfaceConfig]
) -> list[tuple[Link, InterfaceConfig]]:
    """Each link to the first config entry that matches it; an entry may match several."""
    chosen = []
    for link in links:
        for entry in interfaces:
            if entry.matches(link.name, link.mac):
                chosen.append((link, entry))
                break
    return chosen


def bring_up(ipr: IPRoute, link: Link, mtu: int | None, timeout: float) -> None:
    """Set the link up (and its MTU) and wait, at most ``timeout`` seconds, for carrier."""
    settings: dict[str, Any] = {"state": "up"}
    if mtu:
        settings["mtu"] = mtu
    ipr.link("set", index=link.index, **settings)
    deadline = time.monotonic() + timeout
    while not _has_carrier(ipr, link.index):
        if time.monotonic() >= deadline:
            raise NetworkError(f"{link.name}: no link (carrier) after {timeout:g}s")
        time.sleep(0.05)


def _has_carrier(ipr: IPRoute, index: int) -> bool:
    message = ipr.get_links(index)[0]
    return bool(message.get("carrier")) or message.get("operstate") == "UP"


def set_static(ipr: IPRoute, link: Link, address: str, gateway: str | None) -> InterfaceState:
    interface = ipaddress.ip_interface(address)
    ipr.addr(
        "replace",
        index=link.index,
        address=str(interface.ip),
        prefixlen=interface.network.prefixlen,
    )
    if gateway:
        ipr.route("replace", dst="0.0.0.0/0" if interface.version == 4 else "::/0",
                  gateway=gateway, oif=link.index)  # fmt: skip
    return InterfaceState(link.name, "static", [address], gateway or "")


# --- DHCP ------------------------------------------------------------------------------------------


def lease_type(directory: Path) -> type[Lease]:
    """pyroute2's JSON lease, kept in our state directory and written atomically."""
    directory.mkdir(parents=True, exist_ok=True)

    class StateDirLease(JSONFileLease):
        @classmethod
        def _get_lease_dir(cls) -> Path:
            return directory

        def dump(self) -> None:
            write_json_atomic(self._get_path(self.interface), asdict(self))

    return StateDirLease


def lease_state(lease: Lease) -> InterfaceState:
    state = InterfaceState(lease.interface, "dhcp", [f"{lease.ip}/{lease.prefixlen}"])
    state.gateway = _optional(lambda: lease.default_gateway, "")
    state.name_servers = list(_optional(lambda: lease.name_servers, []))
    domain = _optional(lambda: lease.domain_name, "")
    state.search = [domain] if domain else []
    state.server = _optional(lambda: lease.server_id, "")
    return state


def _optional(read: Callable[[], Any], default: Any) -> Any:
    try:
        return read()
    except (MissingOptionError, IndexError, KeyError):
        return default


class DhcpClients:
    """Every DHCP client of the host on one asyncio loop in its own thread."""

    def __init__(
        self, lease_dir: Path, on_change: Callable[[str, InterfaceState | None], None]
    ) -> None:
        self.lease_dir = lease_dir
        self.on_change = on_change
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="dhcp", daemon=True)
        self.thread.start()
        self.clients: dict[str, AsyncDHCPClient] = {}
        self._stop = asyncio.Event()
        self._tasks: list[concurrent.futures.Future[None]] = []
        # set once a lease's hooks have all run (the client says BOUND before they do)
        self._configured: dict[str, threading.Event] = {}

    def start(self, interface: str, hostname: str | None) -> None:
        self._configured[interface] = threading.Event()
        future = asyncio.run_coroutine_threadsafe(self._run(interface, hostname), self.loop)
        self._tasks.append(future)

    async def _run(self, interface: str, hostname: str | None) -> None:
        config = ClientConfig(
            interface=interface,
            lease_type=lease_type(self.lease_dir),
            hooks=self._hooks(),
            handle_signals=False,  # PID 1 owns the signals
            write_pidfile=False,
            vendor_id="kurmad",
            host_name=hostname,
        )
        async with AsyncDHCPClient(config) as client:
            self.clients[interface] = client
            await client.bootstrap()
            await self._stop.wait()
        # leaving the context sent DHCPRELEASE and ran the UNBOUND hooks

    def _hooks(self) -> list[Any]:
        @hook(Trigger.BOUND, Trigger.RENEWED, Trigger.REBOUND)
        async def remember(lease: Lease) -> None:
            self.on_change(lease.interface, lease_state(lease))
            self._configured[lease.interface].set()

        @hook(Trigger.UNBOUND, Trigger.EXPIRED)
        async def forget(lease: Lease) -> None:
            self.on_change(lease.interface, None)

        return [dhcp_hooks.configure_ip, dhcp_hooks.add_default_gw, remember,
                dhcp_hooks.remove_ip, dhcp_hooks.remove_default_gw, forget]  # fmt: skip

    def wait_bound(self, interface: str, timeout: float) -> bool:
        """Whether the interface holds a lease, its address and route set, within ``timeout``."""
        return self._configured[interface].wait(timeout)

    def state(self, interface: str) -> str:
        client = self.clients.get(interface)
        return client.state.name if client is not None else "OFF"

    def renew(self, interface: str) -> None:
        """Ask for renewal now instead of at T1 (for operators and tests)."""
        client = self.clients[interface]
        asyncio.run_coroutine_threadsafe(client._renew(), self.loop).result(5)

    def release_all(self, timeout: float = 5.0) -> None:
        """Send DHCPRELEASE for every lease, remove the addresses, stop the loop."""
        self.loop.call_soon_threadsafe(self._stop.set)
        deadline = time.monotonic() + timeout
        for task in self._tasks:
            try:
                task.result(max(deadline - time.monotonic(), 0.01))
            except Exception as err:  # a client that died must not stop the shutdown
                log.warning("DHCP client ended with %s", err)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)
        for lease in self.lease_dir.glob("*.lease.json"):
            lease.unlink(missing_ok=True)  # given back: the next boot asks afresh


# --- the whole host ----------------------------------------------------------------------------------


class HostNetwork:
    def __init__(self, state_dir: Path, resolv_conf: Path = Path("/etc/resolv.conf")) -> None:
        self.lease_dir = state_dir / "network"
        self.resolv_conf = resolv_conf
        self.states: dict[str, InterfaceState] = {}
        self.static_dns: list[str] = []
        self._lock = threading.Lock()
        self.dhcp: DhcpClients | None = None

    def configure(self, config: NetworkConfig, hostname: str | None = None) -> str:
        """Configure every matched interface; return the report, or raise NetworkError naming
        each interface that failed (the others stay configured)."""
        self.static_dns = list(config.dns)
        problems: list[str] = []
        dhcp_wanted: list[str] = []
        with IPRoute() as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            links = list_links(ipr)
            problems += _unmatched(config.interfaces, links)
            for link, entry in assign(links, config.interfaces):
                try:
                    bring_up(ipr, link, entry.mtu, config.link_timeout)
                    if entry.address:
                        self._record(link.name, set_static(ipr, link, entry.address, entry.gateway))
                    if entry.wants_dhcp:
                        dhcp_wanted.append(link.name)
                except (NetworkError, OSError) as err:
                    problems.append(
                        str(err) if isinstance(err, NetworkError) else f"{link.name}: {err}"
                    )
        problems += self._start_dhcp(dhcp_wanted, config.dhcp_timeout, hostname)
        self.write_resolv_conf()
        report = "; ".join(s.describe() for s in self.states.values()) or "no interface configured"
        if problems:
            raise NetworkError("; ".join(problems) + f" (configured: {report})")
        return report

    def _start_dhcp(self, names: list[str], timeout: float, hostname: str | None) -> list[str]:
        if not names:
            return []
        if self.dhcp is None:
            self.dhcp = DhcpClients(self.lease_dir, self._on_lease)
        for name in names:
            self.dhcp.start(name, hostname)
        deadline = time.monotonic() + timeout
        return [
            f"{name}: no DHCP lease within {timeout:g}s (still asking in the background)"
            for name in names
            if not self.dhcp.wait_bound(name, max(deadline - time.monotonic(), 0.01))
        ]

    def _on_lease(self, interface: str, state: InterfaceState | None) -> None:
        with self._lock:
            if state is None:
                self.states.pop(interface, None)
            else:
                self.states[interface] = state
        log.info("%s", state.describe() if state else f"{interface}: lease given up")
        self.write_resolv_conf()

    def _record(self, name: str, state: InterfaceState) -> None:
        with self._lock:
            self.states[name] = state

    def name_servers(self) -> tuple[list[str], list[str]]:
        servers, search = list(self.static_dns), []
        with self._lock:
            for state in self.states.values():
                servers += [s for s in state.name_servers if s not in servers]
                search += [d for d in state.search if d not in search]
        return servers, search

    def write_resolv_conf(self) -> None:
        """resolv.conf from config and leases; left alone when there is nothing to say."""
        servers, search = self.name_servers()
        if not servers:
            return
        lines = ["# written by kurmad from its config and DHCP leases"]
        lines += [f"search {' '.join(search)}"] if search else []
        lines += [f"nameserver {s}" for s in servers[:3]]  # the resolver reads three at most
        write_atomic(self.resolv_conf, ("\n".join(lines) + "\n").encode())

    def release(self) -> None:
        """At shutdown: give the leases back."""
        if self.dhcp is not None:
            self.dhcp.release_all()
            self.dhcp = None


def _unmatched(interfaces: Iterable[InterfaceConfig], links: list[Link]) -> list[str]:
    return [
        f"network.interfaces[{i}]: no interface matches {entry.describe_match()}"
        for i, entry in enumerate(interfaces)
        if not any(entry.matches(link.name, link.mac) for link in links)
    ]
