"""seccomp filters from the appc isolators (ace.md: os/linux/seccomp-remove-set and -retain-set),
compiled to classic BPF for x86_64."""

from __future__ import annotations

import errno as errno_module
import functools
import platform
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from .syscall_table import SYSCALLS_X86_64

# BPF instruction classes and fields (linux/filter.h, linux/bpf_common.h)
_LD_W_ABS = 0x00 | 0x00 | 0x20
_JMP_JEQ_K = 0x05 | 0x10 | 0x00
_JMP_JGE_K = 0x05 | 0x30 | 0x00
_RET_K = 0x06 | 0x00
_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_SYSCALL_BIT = 0x40000000
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_ALLOW = 0x7FFF0000

APPC_EMPTY = "@appc.io/empty"
APPC_ALL = "@appc.io/all"

# Always allowed under a retain set: what the executor itself needs between installing the
# filter and exec, and what every process needs to exit (ace.md: "the minimum set of syscalls
# required for app life-cycle").
LIFECYCLE_SYSCALLS = (
    "execve", "execveat", "exit", "exit_group", "rt_sigreturn", "rt_sigprocmask", "rt_sigaction",
    "setgroups", "setresgid", "setresuid", "setgid", "setuid", "capget", "capset", "prctl",
    "brk", "mmap", "munmap", "mprotect", "madvise", "futex", "close", "write", "getpid",
    "chdir", "fchdir",
)  # fmt: skip

# Blocked for every app unless its capabilities say it may do the thing (a remove set adds to
# it; it applies when the app asks for no seccomp isolator). Errno EPERM, not a kill.
DEFAULT_BLOCKED: dict[str, tuple[str, ...]] = {
    "CAP_SYS_BOOT": ("reboot", "kexec_load", "kexec_file_load"),
    "CAP_SYS_MODULE": ("init_module", "finit_module", "delete_module"),
    "CAP_SYS_TIME": ("settimeofday", "clock_settime", "clock_adjtime", "adjtimex"),
    "CAP_SYS_PACCT": ("acct",),
    "CAP_DAC_READ_SEARCH": ("open_by_handle_at",),
    "CAP_SYS_ADMIN": ("swapon", "swapoff", "bpf", "userfaultfd", "add_key", "request_key",
                      "keyctl", "fsopen", "fsmount", "move_mount", "open_tree", "kcmp"),
}  # fmt: skip


class SeccompError(ValueError):
    pass


@dataclass(frozen=True)
class Filter:
    """Which syscalls a filter lists, and whether listing means allowing (retain) or
    blocking (remove). ``errno`` empty means a blocked call kills the process with SIGSYS."""

    syscalls: frozenset[str]
    retain: bool
    errno: str = ""

    def action(self) -> int:
        if not self.errno:
            return RET_KILL_PROCESS
        number = getattr(errno_module, self.errno, None)
        if not isinstance(number, int):
            raise SeccompError(f"unknown errno {self.errno!r}")
        return RET_ERRNO | number


def supported() -> bool:
    return platform.machine() == "x86_64"


def check_names(names: Iterable[str]) -> None:
    for name in names:
        if name.startswith("@"):
            if name not in (APPC_EMPTY, APPC_ALL):
                raise SeccompError(f"unknown seccomp wildcard {name!r}")
        elif name not in SYSCALLS_X86_64:
            raise SeccompError(f"unknown system call {name!r}")


def default_blocked(capabilities: Iterable[str]) -> frozenset[str]:
    kept = set(capabilities)
    return frozenset(
        call for cap, calls in DEFAULT_BLOCKED.items() if cap not in kept for call in calls
    )


@functools.lru_cache(maxsize=64)
def compile_filter(rules: Filter) -> bytes | None:
    """The BPF program of ``rules``; None when it would allow everything."""
    check_names(rules.syscalls)
    names = set(rules.syscalls)
    if rules.retain:
        if APPC_ALL in names:
            return None
        listed = (names - {APPC_EMPTY}) | set(LIFECYCLE_SYSCALLS)
        on_match, otherwise = RET_ALLOW, rules.action()
    else:
        listed = (
            set() if APPC_EMPTY in names and len(names) == 1 else names - {APPC_EMPTY, APPC_ALL}
        )
        if not listed:
            return None
        on_match, otherwise = rules.action(), RET_ALLOW
    return _program(sorted(SYSCALLS_X86_64[n] for n in listed), on_match, otherwise)


def _program(numbers: list[int], on_match: int, otherwise: int) -> bytes:
    code = [
        (_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
        (_JMP_JEQ_K, 1, 0, _AUDIT_ARCH_X86_64),
        (_RET_K, 0, 0, RET_KILL_PROCESS),
        (_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
        (_JMP_JGE_K, 0, 1, _X32_SYSCALL_BIT),  # the x32 ABI would dodge the numbers below
        (_RET_K, 0, 0, RET_KILL_PROCESS),
    ]
    for number in numbers:
        # a compare and its own return: jump offsets stay small however long the list is
        code.append((_JMP_JEQ_K, 0, 1, number))
        code.append((_RET_K, 0, 0, on_match))
    code.append((_RET_K, 0, 0, otherwise))
    return b"".join(struct.pack("=HBBI", *instruction) for instruction in code)
