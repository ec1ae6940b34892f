"""Addresses for pods on a subnet, persistent: a lease is written to disk (atomically) before
it is handed out, survives a restart of the daemon, and is released when its pod is removed.

Allocation goes round the pool from the last address handed out (as CNI's host-local does), so
an address just released is not reused at once; a lock makes concurrent creates safe."""

from __future__ import annotations

import ipaddress
import threading
from pathlib import Path

from kurmad.linux.files import read_json, write_json_atomic


class IpamError(Exception):
    pass


class PoolExhausted(IpamError):
    pass


class Ipam:
    def __init__(self, state_file: Path, subnet: str, gateway: str | None = None) -> None:
        self.path = state_file
        self.subnet = ipaddress.ip_network(subnet)
        hosts = self.subnet.hosts()
        first = next(hosts)
        self.gateway = ipaddress.ip_address(gateway) if gateway else first
        if self.gateway not in self.subnet:
            raise IpamError(f"gateway {self.gateway} is not in {self.subnet}")
        self._lock = threading.Lock()
        self._leases: dict[str, str] = {}  # address -> owner (a pod UUID)
        self._last = self.gateway
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = read_json(self.path)
        if data.get("subnet") != str(self.subnet):
            raise IpamError(
                f"{self.path} holds leases of {data.get('subnet')}, not {self.subnet}: "
                "the network's subnet changed while pods still hold addresses"
            )
        self._leases = dict(data.get("leases", {}))
        self._last = ipaddress.ip_address(data.get("last", str(self.gateway)))

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(
            self.path, {"subnet": str(self.subnet), "last": str(self._last), "leases": self._leases}
        )

    def leases(self) -> dict[str, str]:
        with self._lock:
            return dict(self._leases)

    def allocate(self, owner: str) -> str:
        """An address for ``owner`` (the one it holds already, if any), as ADDRESS/PREFIX."""
        with self._lock:
            held = next((a for a, holder in self._leases.items() if holder == owner), None)
            if held is not None:
                return f"{held}/{self.subnet.prefixlen}"
            fresh = self._next_free()
            self._leases[str(fresh)] = owner
            self._last = fresh
            self._save()
        return f"{fresh}/{self.subnet.prefixlen}"

    def _next_free(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        first, last = int(self.subnet.network_address) + 1, int(self.subnet.broadcast_address) - 1
        size = last - first + 1
        start = int(self._last) + 1
        for step in range(size):
            candidate = ipaddress.ip_address(first + (start - first + step) % size)
            if candidate != self.gateway and str(candidate) not in self._leases:
                return candidate
        raise PoolExhausted(f"no free address left in {self.subnet} ({len(self._leases)} in use)")

    def release(self, owner: str) -> list[str]:
        """Give back every address ``owner`` holds; return them."""
        with self._lock:
            released = [a for a, holder in self._leases.items() if holder == owner]
            for address in released:
                del self._leases[address]
            if released:
                self._save()
        return released

    def release_unless(self, keep: set[str]) -> list[str]:
        """Release the leases of every owner not in ``keep`` (pods that no longer exist)."""
        with self._lock:
            gone = [a for a, holder in self._leases.items() if holder not in keep]
            for address in gone:
                del self._leases[address]
            if gone:
                self._save()
        return gone
