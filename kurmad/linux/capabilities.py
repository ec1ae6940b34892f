"""Linux capabilities: names, the bounding set, and the process's own sets."""

from __future__ import annotations

import errno
import functools
from collections.abc import Iterable
from pathlib import Path

from . import syscalls

CAPABILITIES: dict[str, int] = {
    "CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3,
    "CAP_FSETID": 4, "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8,
    "CAP_LINUX_IMMUTABLE": 9, "CAP_NET_BIND_SERVICE": 10, "CAP_NET_BROADCAST": 11,
    "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_IPC_LOCK": 14, "CAP_IPC_OWNER": 15,
    "CAP_SYS_MODULE": 16, "CAP_SYS_RAWIO": 17, "CAP_SYS_CHROOT": 18, "CAP_SYS_PTRACE": 19,
    "CAP_SYS_PACCT": 20, "CAP_SYS_ADMIN": 21, "CAP_SYS_BOOT": 22, "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24, "CAP_SYS_TIME": 25, "CAP_SYS_TTY_CONFIG": 26, "CAP_MKNOD": 27,
    "CAP_LEASE": 28, "CAP_AUDIT_WRITE": 29, "CAP_AUDIT_CONTROL": 30, "CAP_SETFCAP": 31,
    "CAP_MAC_OVERRIDE": 32, "CAP_MAC_ADMIN": 33, "CAP_SYSLOG": 34, "CAP_WAKE_ALARM": 35,
    "CAP_BLOCK_SUSPEND": 36, "CAP_AUDIT_READ": 37, "CAP_PERFMON": 38, "CAP_BPF": 39,
    "CAP_CHECKPOINT_RESTORE": 40,
}  # fmt: skip


class UnknownCapability(ValueError):
    pass


def numbers(names: Iterable[str]) -> set[int]:
    """Capability numbers of ``names``; raises UnknownCapability naming the first bad one."""
    out = set()
    for name in names:
        number = CAPABILITIES.get(name)
        if number is None:
            raise UnknownCapability(f"unknown capability {name!r}")
        out.add(number)
    return out


@functools.lru_cache(maxsize=1)
def last_cap() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return max(CAPABILITIES.values())


def limit_bounding_set(keep: set[int]) -> None:
    """Drop every capability not in ``keep`` from this process's bounding set (needs
    CAP_SETPCAP, so call it while still root)."""
    for cap in range(last_cap() + 1):
        if cap in keep:
            continue
        try:
            syscalls.prctl(syscalls.PR_CAPBSET_DROP, cap)
        except OSError as err:
            if err.errno != errno.EINVAL:  # a capability this kernel does not have
                raise


def restrict_to(keep: set[int]) -> None:
    """Limit this process's effective, permitted and inheritable sets to ``keep``."""
    mask = sum(1 << cap for cap in keep)
    effective, permitted, inheritable = syscalls.capget()
    syscalls.capset(effective & mask, permitted & mask, inheritable & mask)
