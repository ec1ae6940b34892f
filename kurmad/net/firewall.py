"""Packet filtering for pod networks: nftables, through the nft program.

The choice: nftables only. It is the kernel's packet filter since 3.13 and Debian's default
since 10; an iptables fallback would double the code for hosts that do not exist on any
kernel kurmad boots. Without nft, networks that need NAT fail with a clear error.

Everything an instance of kurmad makes lives in its own table, ``inet kurmad-<identity>``
(instance.py), written whole from its state in one nft transaction (the table is deleted and
made again atomically): the table is always exactly what the state says, after a restart or a
crash too, removing it removes every rule the instance ever made, and another instance's table
is never touched. Published ports are elements of two maps (tcp, udp): host port → pod address
and port; masquerading is one rule per network."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .instance import TABLE_PREFIX

LEGACY_TABLE = "kurmad"  # the one table of kurmad before instances had their own
NFT_TIMEOUT = 30.0


class FirewallError(Exception):
    pass


@dataclass(frozen=True)
class Masquerade:
    network: str
    subnet: str  # egress from it to anywhere else is masqueraded


@dataclass(frozen=True)
class Forward:
    protocol: str  # tcp or udp
    host_port: int
    address: str  # the pod's, without prefix
    port: int
    pod: str  # its UUID, kept as the element's comment


def render(table: str, masquerades: Iterable[Masquerade], forwards: Iterable[Forward]) -> str:
    """The nft script that replaces ``table`` with exactly this content."""
    lines = [f"table inet {table} {{}}", f"delete table inet {table}", f"table inet {table} {{"]
    for protocol in ("tcp", "udp"):
        lines.append(f"  map {protocol}_ports {{ type inet_service : ipv4_addr . inet_service; }}")
    dnat = [
        f"    fib daddr type local dnat ip addr . port to {p} dport map @{p}_ports"
        for p in ("tcp", "udp")
    ]
    lines += [
        "  chain prerouting {",
        "    type nat hook prerouting priority dstnat; policy accept;",
        *dnat,
        "  }",
    ]
    # Connections from the host itself to a published port (also to 127.0.0.1) go through output.
    lines += [
        "  chain output {",
        "    type nat hook output priority -100; policy accept;",
        *dnat,
        "  }",
    ]
    lines += [
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
    ]
    subnets = []
    for rule in masquerades:
        subnets.append(rule.subnet)
        lines.append(
            f'    ip saddr {rule.subnet} ip daddr != {rule.subnet} masquerade comment "network {rule.network}"'
        )
        lines.append(
            f'    ip saddr 127.0.0.0/8 ip daddr {rule.subnet} masquerade comment "localhost to {rule.network}"'
        )
    lines += [
        "  }",
        "  chain forward {",
        "    type filter hook forward priority filter; policy accept;",
    ]
    for subnet in subnets:
        lines += [f"    ip saddr {subnet} accept", f"    ip daddr {subnet} accept"]
    lines += ["  }", "}"]
    for forward in forwards:
        lines.append(
            f"add element inet {table} {forward.protocol}_ports {{ {forward.host_port} "
            f'comment "pod {forward.pod}" : {forward.address} . {forward.port} }}'
        )
    return "\n".join(lines) + "\n"


def nft_path() -> str:
    # The daemon's PATH may lack the sbin directories (a service manager's minimal one).
    found = shutil.which("nft") or next(
        (p for p in ("/usr/sbin/nft", "/sbin/nft") if os.path.exists(p)), None
    )
    if found is None:
        raise FirewallError(
            "nft is not installed: pod networks need nftables (apt-get install nftables)"
        )
    return found


def _nft(*args: str, script: str | None = None) -> str:
    try:
        result = subprocess.run([nft_path(), *args], input=script, capture_output=True,
                                text=True, timeout=NFT_TIMEOUT)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise FirewallError(f"nft did not answer within {NFT_TIMEOUT:g}s") from None
    if result.returncode != 0:
        raise FirewallError(f"nft: {result.stderr.strip() or 'failed'}")
    return result.stdout


def apply(script: str) -> None:
    _nft("-f", "-", script=script)


def replace(table: str, masquerades: Iterable[Masquerade], forwards: Iterable[Forward]) -> None:
    apply(render(table, masquerades, forwards))


def remove(table: str) -> None:
    """Delete the table, and with it every rule the instance made."""
    apply(f"table inet {table} {{}}\ndelete table inet {table}\n")


def ports_of_other_instances(own_table: str) -> dict[str, str]:
    """The host ports that other kurmad instances publish ("tcp/8080"), each to its table:
    the same port in two tables would reach whichever table's chain the kernel runs first,
    and that changes when a table is written again."""
    return published_ports(json.loads(_nft("-j", "list", "maps") or "{}"), own_table)


def published_ports(listing: dict[str, Any], own_table: str) -> dict[str, str]:
    """The ports in the maps of ``nft -j list maps`` of kurmad tables other than our own."""
    published = {}
    for item in listing.get("nftables", []):
        found = item.get("map", {})
        table, protocol = found.get("table", ""), found.get("name", "").removesuffix("_ports")
        if found.get("family") != "inet" or table == own_table or not _is_kurmads(table):
            continue
        if protocol not in ("tcp", "udp"):
            continue
        for key, _ in found.get("elem", []):
            port = key["elem"]["val"] if isinstance(key, dict) else key  # dict: with a comment
            published[f"{protocol}/{port}"] = table
    return published


def _is_kurmads(table: str) -> bool:
    return table == LEGACY_TABLE or table.startswith(TABLE_PREFIX)
