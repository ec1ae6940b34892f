"""seccomp filters from the appc isolators (ace.md: os/linux/seccomp-remove-set and -retain-set),
compiled to classic BPF for x86_64.

An app that asks for no seccomp isolator gets the default filter: what Docker's default profile
(moby/profiles seccomp/default.json) refuses, unless the app holds the capability that Docker
lets lift it. Docker writes an allow-list; the same decisions are kept here as the calls it does
not allow, so that a remove set can add to them, and as three argument rules (clone,
personality, socket) that a filter applies before its list, whether it is a remove or a retain
set: a retain set that lists clone still does not get namespaces."""

from __future__ import annotations

import errno as errno_module
import functools
import os
import platform
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .syscall_table import SYSCALLS_X86_64

# BPF instruction classes and fields (linux/filter.h, linux/bpf_common.h)
_LD_W_ABS = 0x00 | 0x00 | 0x20
_JMP_JA = 0x05 | 0x00
_JMP_JEQ_K = 0x05 | 0x10 | 0x00
_JMP_JGT_K = 0x05 | 0x20 | 0x00
_JMP_JGE_K = 0x05 | 0x30 | 0x00
_JMP_JSET_K = 0x05 | 0x40 | 0x00
_RET_K = 0x06 | 0x00
_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_SYSCALL_BIT = 0x40000000
# struct seccomp_data: nr, arch, instruction_pointer, then args[6] as u64 (little-endian: the
# low half first). The calls with argument rules take an int there, so the low half is all.
_NR = 0
_ARCH = 4
_ARG0_LOW = 16
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_ALLOW = 0x7FFF0000
_MAX_JUMP = 255  # jt and jf are one byte

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

# Refused by the default filter whatever the app's capabilities (Docker allows them to none):
# kernel keyrings, io_uring, userfaultfd, kexec, swap, pivot_root, moving other processes'
# pages, and obsolete calls.
ALWAYS_BLOCKED = (
    "add_key", "keyctl", "request_key", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "userfaultfd", "kexec_load", "kexec_file_load", "swapon", "swapoff", "pivot_root",
    "migrate_pages", "move_pages", "_sysctl", "uselib", "ustat", "sysfs", "create_module",
    "get_kernel_syms", "query_module", "nfsservctl", "getpmsg", "putpmsg", "afs_syscall",
    "tuxcall", "security", "vserver",
)  # fmt: skip

# Refused by the default filter unless the app holds one of the capabilities listing the call
# (a call under two capabilities is lifted by either, as in Docker's profile). Stricter than
# Docker in one place: adjtimex and clock_adjtime need CAP_SYS_TIME here even to read.
LIFTED_BY: dict[str, tuple[str, ...]] = {
    "CAP_SYS_ADMIN": (
        "unshare", "setns", "mount", "umount2", "fsopen", "fsconfig", "fsmount", "fspick",
        "move_mount", "open_tree", "open_tree_attr", "mount_setattr", "bpf", "perf_event_open",
        "fanotify_init", "lookup_dcookie", "quotactl", "quotactl_fd", "sethostname",
        "setdomainname", "syslog", "lsm_get_self_attr", "lsm_set_self_attr", "lsm_list_modules",
        "listns",
    ),
    "CAP_SYS_PTRACE": ("kcmp", "pidfd_getfd", "process_madvise"),
    "CAP_SYS_BOOT": ("reboot",),
    "CAP_SYS_MODULE": ("init_module", "finit_module", "delete_module"),
    "CAP_SYS_TIME": ("settimeofday", "clock_settime", "adjtimex", "clock_adjtime"),
    "CAP_SYS_PACCT": ("acct",),
    "CAP_SYS_RAWIO": ("iopl", "ioperm"),
    "CAP_SYS_NICE": ("mbind", "set_mempolicy", "get_mempolicy", "set_mempolicy_home_node"),
    "CAP_SYS_TTY_CONFIG": ("vhangup",),
    "CAP_SYS_CHROOT": ("chroot",),
    "CAP_SYSLOG": ("syslog",),
    "CAP_BPF": ("bpf",),
    "CAP_PERFMON": ("perf_event_open",),
    "CAP_DAC_READ_SEARCH": ("open_by_handle_at",),
}  # fmt: skip

# Before Linux 4.8 ptrace could change a traced process's system call after seccomp had checked
# it; Docker then lets only CAP_SYS_PTRACE have these.
_PTRACE_BEFORE_4_8 = ("ptrace", "process_vm_readv", "process_vm_writev")

# Argument rules, each with the capabilities that lift it (none: nothing does):
#   clone        clone with a CLONE_NEW* flag fails EPERM; clone3, whose flags sit in memory
#                seccomp cannot read, fails ENOSYS so that libc falls back to clone
#   personality  only the default personas (and the query) pass, else EPERM
#   socket       AF_ALG and AF_VSOCK sockets fail EPERM (neither is namespaced)
ARGUMENT_RULES: dict[str, tuple[str, ...]] = {
    "clone": ("CAP_SYS_ADMIN",),
    "personality": (),
    "socket": (),
}
# CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID and NEWNET
_CLONE_NAMESPACE_FLAGS = 0x7E020000
_DEFAULT_PERSONAS = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)  # PER_LINUX(32), UNAME26, query
_AF_ALG = 38
_AF_VSOCK = 40


class SeccompError(ValueError):
    pass


@dataclass(frozen=True)
class Filter:
    """Which syscalls a filter lists, and whether listing means allowing (retain) or
    blocking (remove). ``errno`` empty means a blocked call kills the process with SIGSYS.
    ``arguments`` names the ARGUMENT_RULES the filter applies before its list."""

    syscalls: frozenset[str]
    retain: bool
    errno: str = ""
    arguments: frozenset[str] = frozenset()

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
    """The calls the default filter refuses by name to an app holding ``capabilities`` (the
    argument rules come on top: see argument_rules)."""
    kept = set(capabilities)
    lifted = {call for cap, calls in LIFTED_BY.items() if cap in kept for call in calls}
    listed = {call for calls in LIFTED_BY.values() for call in calls}
    if not _kernel_at_least(4, 8) and "CAP_SYS_PTRACE" not in kept:
        listed.update(_PTRACE_BEFORE_4_8)
    return frozenset(listed - lifted) | frozenset(ALWAYS_BLOCKED)


def argument_rules(capabilities: Iterable[str]) -> frozenset[str]:
    """The ARGUMENT_RULES that apply to an app holding ``capabilities``."""
    kept = set(capabilities)
    return frozenset(rule for rule, lifting in ARGUMENT_RULES.items() if not kept & set(lifting))


@functools.lru_cache(maxsize=1)
def _kernel_at_least(major: int, minor: int) -> bool:
    release = os.uname().release.split("-")[0].split(".")
    try:
        return (int(release[0]), int(release[1])) >= (major, minor)
    except (IndexError, ValueError):
        return False


@functools.lru_cache(maxsize=64)
def compile_filter(rules: Filter) -> bytes | None:
    """The BPF program of ``rules``; None when it would allow everything."""
    check_names(rules.syscalls)
    unknown = rules.arguments - set(ARGUMENT_RULES)
    if unknown:
        raise SeccompError(f"unknown argument rule {sorted(unknown)[0]!r}")
    names = set(rules.syscalls)
    if rules.retain and APPC_ALL in names:
        listed: set[str] = set()
        on_match = otherwise = RET_ALLOW
    elif rules.retain:
        listed = (names - {APPC_EMPTY}) | set(LIFECYCLE_SYSCALLS)
        on_match, otherwise = RET_ALLOW, rules.action()
    else:
        listed = names - {APPC_EMPTY, APPC_ALL}
        on_match, otherwise = rules.action(), RET_ALLOW
    if otherwise == RET_ALLOW and not listed and not rules.arguments:
        return None
    numbers = sorted(SYSCALLS_X86_64[name] for name in listed)
    return _program(rules.arguments, numbers, on_match, otherwise)


def _program(arguments: frozenset[str], numbers: list[int], on_match: int, otherwise: int) -> bytes:
    """Checked in this order: the architecture, the x32 ABI, calls newer than the table (when
    the list is of blocked calls), the argument rules, then the list, as a binary search over
    runs of consecutive numbers: a few comparisons per call however long the list is."""
    p = _Assembler()
    p.load(_ARCH)
    p.guard(_JMP_JEQ_K, _AUDIT_ARCH_X86_64, RET_KILL_PROCESS, when=False)
    p.load(_NR)
    p.guard(_JMP_JGE_K, _X32_SYSCALL_BIT, RET_KILL_PROCESS)  # the x32 ABI would dodge the rest
    if otherwise == RET_ALLOW and numbers:
        # as runc does: a call newer than this table cannot have been judged, and ENOSYS makes
        # libc fall back to an older one
        p.guard(_JMP_JGT_K, max(SYSCALLS_X86_64.values()), _errno("ENOSYS"))
    if "clone" in arguments:
        _clone_rules(p)
    if "personality" in arguments:
        _argument_check(p, "personality", _default_personas)
    if "socket" in arguments:
        _argument_check(p, "socket", _refuse_families)
    _search(p, _runs(numbers), on_match, otherwise)
    return p.assemble()


def _errno(name: str) -> int:
    return RET_ERRNO | int(getattr(errno_module, name))


def _clone_rules(p: _Assembler) -> None:
    p.guard(_JMP_JEQ_K, SYSCALLS_X86_64["clone3"], _errno("ENOSYS"))
    _argument_check(
        p,
        "clone",
        lambda p, deny, keep: p.jump(_JMP_JSET_K, _CLONE_NAMESPACE_FLAGS, jt=deny, jf=keep),
    )


def _default_personas(p: _Assembler, deny: _Label, keep: _Label) -> None:
    *others, last = _DEFAULT_PERSONAS
    for persona in others:
        p.jump(_JMP_JEQ_K, persona, jt=keep)
    p.jump(_JMP_JEQ_K, last, jt=keep, jf=deny)


def _refuse_families(p: _Assembler, deny: _Label, keep: _Label) -> None:
    p.jump(_JMP_JEQ_K, _AF_ALG, jt=deny)
    p.jump(_JMP_JEQ_K, _AF_VSOCK, jt=deny, jf=keep)


def _argument_check(
    p: _Assembler, call: str, tests: Callable[[_Assembler, _Label, _Label], None]
) -> None:
    """For ``call`` only: load its first argument, let ``tests`` jump to deny (EPERM) or keep
    (on to the list, with the call's number loaded again)."""
    after, deny, keep = _Label(), _Label(), _Label()
    p.jump(_JMP_JEQ_K, SYSCALLS_X86_64[call], jf=after)
    p.load(_ARG0_LOW)
    tests(p, deny, keep)
    p.place(deny)
    p.ret(_errno("EPERM"))
    p.place(keep)
    p.load(_NR)
    p.place(after)


def _runs(numbers: list[int]) -> list[tuple[int, int]]:
    """Sorted numbers as (first, last) runs of consecutive ones."""
    runs: list[tuple[int, int]] = []
    for number in numbers:
        if runs and number == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], number)
        else:
            runs.append((number, number))
    return runs


_LEAF_RUNS = 4


def _search(p: _Assembler, runs: list[tuple[int, int]], on_match: int, otherwise: int) -> None:
    if len(runs) <= _LEAF_RUNS:
        _leaf(p, runs, on_match, otherwise)
        return
    middle = len(runs) // 2
    upper = _Label()
    # a JA reaches the upper half however far it is; jt/jf reach only 255 instructions
    p.jump(_JMP_JGE_K, runs[middle][0], jf=1)
    p.goto(upper)
    _search(p, runs[:middle], on_match, otherwise)
    p.place(upper)
    _search(p, runs[middle:], on_match, otherwise)


def _leaf(p: _Assembler, runs: list[tuple[int, int]], on_match: int, otherwise: int) -> None:
    if not runs:
        p.ret(otherwise)
        return
    match, miss = _Label(), _Label()
    for first, last in runs:
        beyond = _Label()
        p.jump(_JMP_JGT_K, last, jt=beyond)
        p.jump(_JMP_JGE_K, first, jt=match, jf=miss)
        p.place(beyond)
    p.place(miss)
    p.ret(otherwise)
    p.place(match)
    p.ret(on_match)


class _Label:
    """A place in a program, jumped to before it is placed."""


_Target = _Label | int  # a label, or how many instructions to skip (0: the next one)


class _Assembler:
    """Classic BPF with forward jumps to labels, resolved when assembled."""

    def __init__(self) -> None:
        self._code: list[tuple[int, _Target, _Target, int]] = []
        self._where: dict[_Label, int] = {}

    def load(self, offset: int) -> None:
        self._code.append((_LD_W_ABS, 0, 0, offset))

    def jump(self, code: int, k: int, jt: _Target = 0, jf: _Target = 0) -> None:
        self._code.append((code, jt, jf, k))

    def ret(self, action: int) -> None:
        self._code.append((_RET_K, 0, 0, action))

    def guard(self, code: int, k: int, action: int, *, when: bool = True) -> None:
        """Return ``action`` right here when the comparison is ``when``, else go on."""
        self.jump(code, k, jt=0 if when else 1, jf=1 if when else 0)
        self.ret(action)

    def goto(self, label: _Label) -> None:
        self._code.append((_JMP_JA, label, 0, 0))

    def place(self, label: _Label) -> None:
        self._where[label] = len(self._code)

    def assemble(self) -> bytes:
        out = []
        for index, (code, jt, jf, k) in enumerate(self._code):
            if code == _JMP_JA:  # its distance is k, 32 bits wide
                out.append(struct.pack("=HBBI", code, 0, 0, self._offset(index, jt, 2**32 - 1)))
            else:
                jt_, jf_ = self._offset(index, jt), self._offset(index, jf)
                out.append(struct.pack("=HBBI", code, jt_, jf_, k))
        return b"".join(out)

    def _offset(self, index: int, target: _Target, limit: int = _MAX_JUMP) -> int:
        offset = target if isinstance(target, int) else self._where[target] - index - 1
        if not 0 <= offset <= limit:
            raise SeccompError(f"internal: a jump of {offset} instructions at {index}")
        return offset
