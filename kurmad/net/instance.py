"""Which kurmad this is, among the instances that may share one network namespace (one host,
several state dirs): the name of what it makes there, and how another instance tells that it
is running.

The identity is derived from the state dir, from the directory itself (its device and inode),
not its path and not a file in it. Two instances cannot share a state dir (the image store
holds its lock), and two directories that exist at once never share a device and an inode: so
two instances never share an identity, a copied state dir included (a random id persisted in
it would be copied with it). One instance keeps its identity across restarts whatever path
reaches the directory (a symlink, a bind mount, another mount namespace's view) and nothing
can be lost or edited. It may change across a reboot (a disk's device number can), which is
harmless: the veths, bridges and tables it names do not outlive the kernel either.

Running is a bound abstract unix socket named after the identity. Abstract names belong to
the network namespace, the very scope of bridges, and whatever PID or mount namespace the
daemon sees; the kernel lets go of the name when the process ends, SIGKILL included."""

from __future__ import annotations

import errno
import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

ID_DIGITS = 16  # hex digits of the identity: the nftables table name carries all of them
TAG_DIGITS = 4  # of those, in host veth names (15 bytes in all, see bridge.py)
ALIAS_WORD = "kurmad"  # a bridge's alias: "kurmad <identity> <state dir>"
ALIAS_BYTES = 255  # IFALIASZ less the NUL
TABLE_PREFIX = "kurmad-"


class InstanceRunning(ValueError):
    """This instance runs already, in another process (a ValueError, as the daemon's faults
    of configuration are: it refuses to start)."""


@dataclass(frozen=True)
class Instance:
    id: str  # ID_DIGITS hex digits
    state_dir: str  # for people reading an alias or an error

    @classmethod
    def of(cls, state_dir: Path) -> Instance:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        found = os.stat(state_dir)
        digest = hashlib.sha256(f"{found.st_dev}:{found.st_ino}".encode()).hexdigest()
        return cls(digest[:ID_DIGITS], str(state_dir.resolve()))

    @property
    def tag(self) -> str:
        return self.id[:TAG_DIGITS]

    @property
    def table(self) -> str:
        return f"{TABLE_PREFIX}{self.id}"

    @property
    def alias(self) -> str:
        text = f"{ALIAS_WORD} {self.id} {self.state_dir}".encode()
        return text[:ALIAS_BYTES].decode(errors="ignore")

    def describe(self) -> str:
        return f"kurmad instance {self.id} (state dir {self.state_dir})"


def owner_of(alias: str) -> Instance | None:
    """The instance an alias names, if it is a kurmad alias."""
    word, _, rest = alias.partition(" ")
    identity, _, state_dir = rest.partition(" ")
    if word != ALIAS_WORD or len(identity) != ID_DIGITS or not _is_hex(identity):
        return None
    return Instance(identity, state_dir or "unknown")


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


# The sockets this process holds, by identity: held once, until the process ends.
_held: dict[str, socket.socket] = {}


def _address(identity: str) -> str:
    return f"\0kurmad/net/{identity}"


def hold(instance: Instance) -> None:
    """Say, to the other instances in this network namespace, that this one is running."""
    if instance.id in _held:
        return
    marker = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        marker.bind(_address(instance.id))
    except OSError as err:
        marker.close()
        if err.errno == errno.EADDRINUSE:
            raise InstanceRunning(
                f"{instance.describe()} is running already in this network namespace"
            ) from None
        raise
    _held[instance.id] = marker


def is_running(identity: str) -> bool:
    """Whether another process runs the instance ``identity`` in this network namespace."""
    if identity in _held:
        # This process serves one instance; any other it holds is one whose start failed
        # (kurmad boot's fallback API then replaces it), not a live owner.
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as probe:
        try:
            probe.connect(_address(identity))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
    return True
