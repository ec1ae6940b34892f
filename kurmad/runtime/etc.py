"""The files of an app's /etc that the executor writes: /etc/hosts (when the image has none) and
/etc/resolv.conf."""

from __future__ import annotations

from pathlib import Path

_HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{address}\t{hostname}\n"
_LOOPBACK_NAME = "127.0.1.1"  # Debian's address for the host's own name without a network


def hosts_file(hostname: str, address: str = "") -> str:
    """localhost, and the pod's name on its address (on 127.0.1.1 when it has none)."""
    return _HOSTS.format(address=address or _LOOPBACK_NAME, hostname=hostname)


def resolv_conf(host_file: Path, host_network: bool) -> bytes:
    """The host's resolv.conf for a pod. A pod with a network of its own cannot reach the
    host's loopback resolver (a local stub such as systemd-resolved's 127.0.0.53): those name
    servers are left out."""
    try:
        text = host_file.read_bytes()
    except OSError:
        return b""
    if host_network:
        return text
    lines = text.decode(errors="replace").splitlines(keepends=True)
    return "".join(line for line in lines if not _loopback_server(line)).encode()


def _loopback_server(line: str) -> bool:
    words = line.split()
    return len(words) >= 2 and words[0] == "nameserver" and words[1].startswith(("127.", "::1"))
