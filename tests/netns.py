"""Network namespaces joined by veth pairs, made with pyroute2, and a real DHCP server
(dnsmasq) in one of them: the fixtures of the network tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute, NetNS, netns

NETNS_DIR = Path("/run/netns")


def dnsmasq_path() -> str | None:
    return shutil.which("dnsmasq") or (
        "/usr/sbin/dnsmasq" if os.path.exists("/usr/sbin/dnsmasq") else None
    )


@contextmanager
def namespaces(*names: str) -> Iterator[dict[str, str]]:
    """Fresh network namespaces, by short name → real name, removed afterwards."""
    real = {name: f"kt-{name}-{uuid.uuid4().hex[:6]}" for name in names}
    for ns in real.values():
        netns.create(ns)
    try:
        yield real
    finally:
        for ns in real.values():
            netns.remove(ns)


def veth(a_ns: str, a_name: str, b_ns: str, b_name: str, b_mac: str | None = None) -> None:
    """A veth pair with one end in each namespace."""
    temporary = f"kv{uuid.uuid4().hex[:8]}"
    with IPRoute() as ipr:
        ipr.link("add", ifname=temporary, kind="veth", peer=f"{temporary}p")
        a = ipr.link_lookup(ifname=temporary)[0]
        b = ipr.link_lookup(ifname=f"{temporary}p")[0]
        ipr.link("set", index=a, net_ns_fd=a_ns)
        ipr.link("set", index=b, net_ns_fd=b_ns)
    with NetNS(a_ns) as ns:
        ns.link("set", index=ns.link_lookup(ifname=temporary)[0], ifname=a_name)
    with NetNS(b_ns) as ns:
        index = ns.link_lookup(ifname=f"{temporary}p")[0]
        ns.link("set", index=index, ifname=b_name, **({"address": b_mac} if b_mac else {}))


def address(ns_name: str, ifname: str, ip: str, prefix: int, up: bool = True) -> None:
    with NetNS(ns_name) as ns:
        index = ns.link_lookup(ifname=ifname)[0]
        ns.addr("add", index=index, address=ip, prefixlen=prefix)
        if up:
            ns.link("set", index=index, state="up")


def link_info(ns_name: str, ifname: str) -> dict[str, Any]:
    """Addresses, MTU and state of an interface, and the namespace's default route."""
    with NetNS(ns_name) as ns:
        index = ns.link_lookup(ifname=ifname)[0]
        link = ns.get_links(index)[0]
        addresses = [
            f"{a.get('address')}/{a['prefixlen']}" for a in ns.get_addr(index=index, family=2)
        ]
        gateways = [
            r.get("gateway")
            for r in ns.get_routes(family=2)
            if r["dst_len"] == 0 and r.get("gateway")
        ]
    return {"addresses": addresses, "mtu": link.get("mtu"), "state": link.get("operstate"),
            "gateways": gateways}  # fmt: skip


class Dnsmasq:
    """A DHCP server on ``interface`` of namespace ``ns`` with a short lease time."""

    def __init__(self, ns: str, interface: str, workdir: Path, lease_seconds: int = 120) -> None:
        self.log = workdir / "dnsmasq.log"
        self.leases = workdir / "dnsmasq.leases"
        binary = dnsmasq_path()
        assert binary is not None
        self.process = subprocess.Popen(
            ["nsenter", f"--net={NETNS_DIR / ns}", binary, "--keep-in-foreground",
             "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--port=0", "--no-ping",
             f"--interface={interface}", "--bind-interfaces", f"--dhcp-leasefile={self.leases}",
             f"--dhcp-range=10.77.0.50,10.77.0.60,255.255.255.0,{lease_seconds}",
             "--dhcp-option=option:router,10.77.0.1", "--dhcp-option=option:dns-server,10.77.0.53",
             "--dhcp-option=option:domain-name,kurma.test", "--log-dhcp", "--log-facility=-"],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"),  # noqa: SIM115 - the child keeps it
        )  # fmt: skip
        self.wait_for("started")

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise AssertionError(f"dnsmasq never logged {needle!r}:\n{self.text()}")
            time.sleep(0.05)
        return self.text()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def run_in(ns: str, code: str, timeout: float = 60) -> dict[str, Any]:
    """Run Python ``code`` in namespace ``ns``; it prints one JSON object as its last line."""
    result = subprocess.run(
        ["nsenter", f"--net={NETNS_DIR / ns}", sys.executable, "-c", code],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))
