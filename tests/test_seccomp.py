"""The default seccomp filter, as tight as Docker's: what it refuses, to whom, and that the
kernel enforces it (root: a forked child installs the filter and tries)."""

from __future__ import annotations

import errno
import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from kurmad.appc import DEFAULT_CAPABILITIES, Isolator
from kurmad.linux import seccomp
from kurmad.linux import syscalls as sc
from kurmad.linux.syscall_table import SYSCALLS_X86_64
from kurmad.runtime.isolators import app_policy, default_seccomp, filter_of

from .forked import outcomes_in_child

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="installs seccomp filters: needs root")
needs_x86_64 = pytest.mark.skipif(
    not seccomp.supported(), reason="the filters are built for x86_64 only"
)

CLONE_NEWNS = sc.CLONE_NEWNS
ADDR_NO_RANDOMIZE = 0x0040000
ALLOW, EPERM, ENOSYS, KILL = "allow", "EPERM", "ENOSYS", "kill"
AUDIT_ARCH_I386 = 0x40000003


# --- a classic BPF interpreter, to read every verdict of a program ----------------------------


def run_filter(program: bytes, nr: int, arg0: int = 0, arch: int = 0xC000003E) -> tuple[str, int]:
    """The verdict of ``program`` for one call, and how many instructions it took."""
    data = struct.pack("=IIQ6Q", nr, arch, 0, arg0, 0, 0, 0, 0, 0)
    code = [struct.unpack_from("=HBBI", program, i) for i in range(0, len(program), 8)]
    pc, acc, steps = 0, 0, 0
    while True:
        op, jt, jf, k = code[pc]
        steps += 1
        if op == 0x20:  # ld [k]
            acc = struct.unpack_from("=I", data, k)[0]
            pc += 1
        elif op == 0x05:  # ja
            pc += 1 + k
        elif op in (0x15, 0x25, 0x35, 0x45):  # jeq, jgt, jge, jset
            taken = {0x15: acc == k, 0x25: acc > k, 0x35: acc >= k, 0x45: bool(acc & k)}[op]
            pc += 1 + (jt if taken else jf)
        elif op == 0x06:
            return _verdict(k), steps
        else:
            raise AssertionError(f"unexpected instruction {op:#x} at {pc}")


def _verdict(action: int) -> str:
    if action == seccomp.RET_ALLOW:
        return ALLOW
    if action == seccomp.RET_KILL_PROCESS:
        return KILL
    assert action & 0xFFFF0000 == seccomp.RET_ERRNO
    return errno.errorcode[action & 0xFFFF]


def default_program(capabilities: list[str]) -> bytes:
    spec = default_seccomp(capabilities)
    assert spec is not None
    program = seccomp.compile_filter(filter_of(spec))
    assert program is not None
    return program


# --- what the default refuses, by name and by argument (no root needed) -----------------------


@needs_x86_64
def test_every_call_gets_the_verdict_of_the_default_list() -> None:
    program = default_program(list(DEFAULT_CAPABILITIES))
    blocked = seccomp.default_blocked(DEFAULT_CAPABILITIES)
    for name, number in SYSCALLS_X86_64.items():
        expected = ENOSYS if name == "clone3" else EPERM if name in blocked else ALLOW
        assert run_filter(program, number)[0] == expected, name
    newest = max(SYSCALLS_X86_64.values())
    assert run_filter(program, newest + 1)[0] == ENOSYS, "a call newer than the table"
    assert run_filter(program, 0x40000000 | 1)[0] == KILL, "the x32 ABI"
    assert run_filter(program, 1, arch=AUDIT_ARCH_I386)[0] == KILL, "another architecture"


@needs_x86_64
def test_the_default_refuses_what_docker_refuses_without_the_capability() -> None:
    blocked = seccomp.default_blocked(DEFAULT_CAPABILITIES)
    for call in ("unshare", "setns", "mount", "umount2", "pivot_root", "fsopen", "fsconfig",
                 "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr", "bpf",
                 "perf_event_open", "io_uring_setup", "io_uring_enter", "io_uring_register",
                 "userfaultfd", "keyctl", "add_key", "request_key", "kexec_load", "init_module",
                 "finit_module", "delete_module", "reboot", "swapon", "swapoff", "acct",
                 "settimeofday", "clock_settime", "iopl", "ioperm", "quotactl", "syslog",
                 "lookup_dcookie", "open_by_handle_at", "mbind", "set_mempolicy",
                 "get_mempolicy", "move_pages", "kcmp", "pidfd_getfd", "process_madvise",
                 "vhangup", "sethostname", "fanotify_init"):  # fmt: skip
        assert call in blocked, call
    for everyday in ("read", "openat", "clone", "fork", "execve", "socket", "personality",
                     "chroot", "ptrace", "process_vm_readv", "name_to_handle_at", "mknodat"):  # fmt: skip
        assert everyday not in blocked, everyday  # chroot: CAP_SYS_CHROOT is a default one


@needs_x86_64
def test_each_capability_lifts_its_own_group_only() -> None:
    def lifted(*caps: str) -> set[str]:
        return set(seccomp.default_blocked([])) - set(seccomp.default_blocked(caps))

    assert {"unshare", "mount", "setns", "bpf", "perf_event_open", "syslog"} <= lifted(
        "CAP_SYS_ADMIN"
    )
    assert lifted("CAP_BPF") == {"bpf"}
    assert lifted("CAP_PERFMON") == {"perf_event_open"}
    assert lifted("CAP_SYSLOG") == {"syslog"}
    assert lifted("CAP_SYS_PTRACE") == {"kcmp", "pidfd_getfd", "process_madvise"}
    assert lifted("CAP_SYS_TIME") >= {"settimeofday", "clock_settime"}
    assert lifted("CAP_SYS_NICE") == {"mbind", "set_mempolicy", "get_mempolicy", "set_mempolicy_home_node"}  # fmt: skip
    assert lifted("CAP_SYS_MODULE") == {"init_module", "finit_module", "delete_module"}
    everything = seccomp.default_blocked(seccomp.LIFTED_BY)  # every capability there is
    assert everything == frozenset(seccomp.ALWAYS_BLOCKED)
    assert {"io_uring_setup", "keyctl", "userfaultfd", "kexec_load"} <= everything


@needs_x86_64
def test_ptrace_needs_the_capability_on_kernels_before_4_8(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seccomp, "_kernel_at_least", lambda major, minor: False)
    assert {"ptrace", "process_vm_readv", "process_vm_writev"} <= seccomp.default_blocked([])
    assert "ptrace" not in seccomp.default_blocked(["CAP_SYS_PTRACE"])


@needs_x86_64
def test_argument_rules_refuse_namespace_flags_personas_and_families() -> None:
    program = default_program(list(DEFAULT_CAPABILITIES))
    clone, personality, sock = (SYSCALLS_X86_64[n] for n in ("clone", "personality", "socket"))
    for flag in (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000):  # fmt: skip
        assert run_filter(program, clone, flag | 17)[0] == EPERM, hex(flag)
        assert run_filter(program, clone, (1 << 32) | flag)[0] == EPERM, "the low half counts"
    thread_flags = 0x003D0F00  # what glibc's pthread_create passes
    assert run_filter(program, clone, thread_flags)[0] == ALLOW
    assert run_filter(program, clone, 17)[0] == ALLOW, "fork: SIGCHLD only"
    for persona in (0, 8, 0x20000, 0x20008, 0xFFFFFFFF):
        assert run_filter(program, personality, persona)[0] == ALLOW, hex(persona)
    assert run_filter(program, personality, ADDR_NO_RANDOMIZE)[0] == EPERM
    for family in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK, 39, 41):
        assert run_filter(program, sock, family)[0] == ALLOW, family
    assert run_filter(program, sock, 38)[0] == EPERM, "AF_ALG"
    assert run_filter(program, sock, 40)[0] == EPERM, "AF_VSOCK"
    admin = default_program([*DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN"])
    assert run_filter(admin, clone, CLONE_NEWNS | 17)[0] == ALLOW
    assert run_filter(admin, SYSCALLS_X86_64["clone3"])[0] == ALLOW
    assert run_filter(admin, personality, ADDR_NO_RANDOMIZE)[0] == EPERM, "nothing lifts it"


@needs_x86_64
def test_a_retain_set_keeps_the_argument_rules() -> None:
    retain = Isolator.from_json(
        {"name": "os/linux/seccomp-retain-set", "value": {"set": ["clone", "clone3", "read"]}}, ""
    )
    policy = app_policy([retain])
    assert policy.seccomp is not None and "clone" in policy.seccomp.arguments
    program = seccomp.compile_filter(filter_of(policy.seccomp))
    assert program is not None
    clone = SYSCALLS_X86_64["clone"]
    assert run_filter(program, clone, CLONE_NEWNS | 17)[0] == EPERM
    assert run_filter(program, clone, 17)[0] == ALLOW
    assert run_filter(program, SYSCALLS_X86_64["clone3"])[0] == ENOSYS
    assert run_filter(program, SYSCALLS_X86_64["mkdir"])[0] == KILL, "not retained"
    everything = Isolator.from_json(
        {"name": "os/linux/seccomp-retain-set", "value": {"set": [seccomp.APPC_ALL]}}, ""
    )
    policy = app_policy([everything])
    assert policy.seccomp is not None
    program = seccomp.compile_filter(filter_of(policy.seccomp))
    assert program is not None, "@appc.io/all still refuses namespace flags"
    assert run_filter(program, clone, CLONE_NEWNS)[0] == EPERM
    assert run_filter(program, SYSCALLS_X86_64["mkdir"])[0] == ALLOW


@needs_x86_64
def test_a_remove_set_adds_to_the_default() -> None:
    remove = Isolator.from_json(
        {"name": "os/linux/seccomp-remove-set", "value": {"set": ["mkdir"], "errno": "EACCES"}}, ""
    )
    policy = app_policy([remove])
    assert policy.seccomp is not None
    program = seccomp.compile_filter(filter_of(policy.seccomp))
    assert program is not None
    assert run_filter(program, SYSCALLS_X86_64["mkdir"])[0] == "EACCES"
    assert run_filter(program, SYSCALLS_X86_64["unshare"])[0] == "EACCES"
    assert run_filter(program, SYSCALLS_X86_64["clone"], CLONE_NEWNS)[0] == EPERM


@needs_x86_64
def test_the_filter_stays_short_and_every_call_takes_few_steps() -> None:
    program = default_program(list(DEFAULT_CAPABILITIES))
    assert len(program) // 8 < 200
    steps = max(run_filter(program, n)[1] for n in range(max(SYSCALLS_X86_64.values()) + 2))
    assert steps <= 32, f"the longest path is {steps} instructions"
    # a long list is a deeper search, not a longer walk; and its jumps still fit
    every_other = frozenset(list(SYSCALLS_X86_64)[::2])
    long = seccomp.compile_filter(seccomp.Filter(every_other, retain=False, errno="EPERM"))
    assert long is not None
    for name, number in SYSCALLS_X86_64.items():
        verdict, steps = run_filter(long, number)
        assert verdict == (EPERM if name in every_other else ALLOW), name
        assert steps <= 32, name


def test_unknown_argument_rules_are_refused() -> None:
    with pytest.raises(seccomp.SeccompError, match="unknown argument rule 'ponies'"):
        seccomp.compile_filter(seccomp.Filter(frozenset(), False, "EPERM", frozenset({"ponies"})))


# --- the kernel enforces it (root) -------------------------------------------------------------


def in_filtered_child(
    program: bytes | None, probes: dict[str, Callable[[], object]]
) -> dict[str, str]:
    """Fork; the child installs ``program`` (none: no filter) and runs each probe: "ok", or the
    errno name it failed with."""

    def install() -> None:
        if program is not None:
            sc.seccomp_filter(program)

    return outcomes_in_child(install, probes)


def clone_into(flags: int) -> None:
    pid = sc.fork_into_namespaces(flags)
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def fork_and_wait() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 7


def start_a_thread() -> None:
    box: list[int] = []
    thread = threading.Thread(target=lambda: box.append(1))
    thread.start()
    thread.join()
    if box != [1]:
        raise OSError(errno.EIO, "the thread did not run")


def read_a_file() -> None:
    Path("/proc/self/status").read_text()


PROBES: dict[str, Callable[[], object]] = {  # in this order: after unshare, a child is elsewhere
    "clone(CLONE_NEWNS)": lambda: clone_into(CLONE_NEWNS),
    "clone3": lambda: sc.raw_syscall(SYSCALLS_X86_64["clone3"], 0, 0),
    "io_uring_setup": lambda: sc.raw_syscall(SYSCALLS_X86_64["io_uring_setup"], 1, 0),
    "perf_event_open": lambda: sc.raw_syscall(SYSCALLS_X86_64["perf_event_open"], 0, 0, -1, -1, 0),
    "personality(ADDR_NO_RANDOMIZE)": lambda: sc.raw_syscall(SYSCALLS_X86_64["personality"], ADDR_NO_RANDOMIZE),
    "personality(query)": lambda: sc.raw_syscall(SYSCALLS_X86_64["personality"], 0xFFFFFFFF),
    "fork": fork_and_wait,
    "clone()": lambda: clone_into(0),
    "thread": start_a_thread,
    "subprocess": lambda: subprocess.run([sys.executable, "-c", "pass"], check=True),
    "read": read_a_file,
    "socket(AF_INET)": lambda: socket.socket().close(),
    "unshare(CLONE_NEWUSER)": lambda: sc.unshare(sc.CLONE_NEWUSER),
}  # fmt: skip


@needs_root
@needs_x86_64
def test_without_a_filter_the_probes_reach_the_kernel() -> None:
    results = in_filtered_child(None, PROBES)
    # what the later tests see as EPERM or ENOSYS is the filter's doing, not the kernel's
    assert results["unshare(CLONE_NEWUSER)"] == "ok"
    assert results["clone(CLONE_NEWNS)"] == "ok"
    assert results["clone3"] == "EINVAL"  # a NULL clone_args: the kernel looked at it
    assert results["io_uring_setup"] == "EFAULT"
    assert results["perf_event_open"] == "EFAULT"


@needs_root
@needs_x86_64
def test_the_default_filter_of_the_default_capabilities_in_the_kernel() -> None:
    results = in_filtered_child(default_program(list(DEFAULT_CAPABILITIES)), PROBES)
    assert "child" not in results, results
    assert results["unshare(CLONE_NEWUSER)"] == "EPERM"
    assert results["clone(CLONE_NEWNS)"] == "EPERM"
    assert results["clone3"] == "ENOSYS"
    assert results["io_uring_setup"] == "EPERM"
    assert results["perf_event_open"] == "EPERM"
    assert results["personality(ADDR_NO_RANDOMIZE)"] == "EPERM"
    for everyday in ("personality(query)", "fork", "clone()", "thread", "subprocess", "read",
                     "socket(AF_INET)"):  # fmt: skip
        assert results[everyday] == "ok", everyday


@needs_root
@needs_x86_64
def test_cap_sys_admin_lifts_the_namespace_rules() -> None:
    program = default_program([*DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN"])
    results = in_filtered_child(program, PROBES)
    assert results["unshare(CLONE_NEWUSER)"] == "ok"
    assert results["clone(CLONE_NEWNS)"] == "ok"
    assert results["clone3"] == "EINVAL", "clone3 reaches the kernel"
    assert results["perf_event_open"] == "EFAULT", "CAP_SYS_ADMIN lifts it too"
    assert results["io_uring_setup"] == "EPERM", "no capability lifts io_uring"
    assert results["thread"] == "ok"


@needs_root
@needs_x86_64
def test_a_retain_set_that_lists_clone_still_refuses_namespaces() -> None:
    retain = Isolator.from_json(
        {"name": "os/linux/seccomp-retain-set", "value": {"set": list(SYSCALLS_X86_64)}}, ""
    )
    policy = app_policy([retain])
    assert policy.seccomp is not None
    program = seccomp.compile_filter(filter_of(policy.seccomp))
    assert program is not None
    results = in_filtered_child(program, PROBES)
    assert results["clone(CLONE_NEWNS)"] == "EPERM"
    assert results["clone3"] == "ENOSYS"
    assert results["unshare(CLONE_NEWUSER)"] == "ok", "the retain set lists unshare itself"
    assert results["fork"] == results["thread"] == results["subprocess"] == "ok"
