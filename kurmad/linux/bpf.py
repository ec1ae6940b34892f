"""The device filter of cgroup2, where the devices controller of v1 is an eBPF program
(BPF_PROG_TYPE_CGROUP_DEVICE) that the kernel runs on every open and mknod of a device node.
Written here by hand, instruction by instruction, from a device allow-list."""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import syscalls

if TYPE_CHECKING:
    from .cgroups import DeviceRule

# <linux/bpf.h>
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2
_PROGRAM_NAME = "kurmad_devices"
_LICENSE = "Apache-2.0"

# struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }: access_type holds the
# device type in its low 16 bits and the access asked for in its high 16 bits
_DEVICE_TYPE = {"b": 1, "c": 2}
_ACCESS_BITS = {"m": 1, "r": 2, "w": 4}

# eBPF opcodes (linux/bpf_common.h, linux/bpf.h): class | operation | source
_LDX_MEM_W = 0x01 | 0x60 | 0x00
_ALU32_MOV_X = 0x04 | 0xB0 | 0x08
_ALU32_AND_K = 0x04 | 0x50 | 0x00
_ALU32_RSH_K = 0x04 | 0x70 | 0x00
_ALU64_MOV_K = 0x07 | 0xB0 | 0x00
_JMP_JNE_K = 0x05 | 0x50 | 0x00
_JMP_EXIT = 0x05 | 0x90
# registers: r0 the verdict, r1 the context on entry (a scratch register once it is read)
_R0, _R1, _R2, _R3, _R4, _R5 = range(6)
_TYPE, _ACCESS, _MAJOR, _MINOR = _R2, _R3, _R4, _R5


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def device_program(rules: Sequence[DeviceRule]) -> bytes:
    """An eBPF program that allows a device access when one of ``rules`` covers it (its
    kind, major, minor, and every kind of access asked for) and denies it otherwise."""
    code = [
        _insn(_LDX_MEM_W, _TYPE, _R1, off=0),
        _insn(_ALU32_MOV_X, _ACCESS, _TYPE),
        _insn(_ALU32_RSH_K, _ACCESS, imm=16),
        _insn(_ALU32_AND_K, _TYPE, imm=0xFFFF),
        _insn(_LDX_MEM_W, _MAJOR, _R1, off=4),
        _insn(_LDX_MEM_W, _MINOR, _R1, off=8),
    ]
    for rule in rules:
        code += _rule_block(rule)
    code += [_insn(_ALU64_MOV_K, _R0, imm=0), _insn(_JMP_EXIT)]
    return b"".join(code)


def _rule_block(rule: DeviceRule) -> list[bytes]:
    """Tests that each skip to the next rule when they fail, then "allow"."""
    tests: list[tuple[int, int] | bytes] = []  # (register, value) to compare, or an instruction
    if rule.kind != "a":
        tests.append((_TYPE, _DEVICE_TYPE[rule.kind]))
    allowed = sum(_ACCESS_BITS[a] for a in rule.access)
    if allowed != sum(_ACCESS_BITS.values()):
        # what is asked for, less what the rule allows, must be nothing
        tests.append(_insn(_ALU32_MOV_X, _R1, _ACCESS))
        tests.append(_insn(_ALU32_AND_K, _R1, imm=~allowed & 0xFFFF))
        tests.append((_R1, 0))
    if rule.major is not None:
        tests.append((_MAJOR, rule.major))
    if rule.minor is not None:
        tests.append((_MINOR, rule.minor))
    allow = [_insn(_ALU64_MOV_K, _R0, imm=1), _insn(_JMP_EXIT)]
    block = []
    for index, test in enumerate(tests):
        if isinstance(test, bytes):
            block.append(test)
        else:
            register, value = test
            remaining = len(tests) - index - 1 + len(allow)
            block.append(_insn(_JMP_JNE_K, register, off=remaining, imm=value))
    return block + allow


def attach_device_program(directory: str | os.PathLike[str], rules: Sequence[DeviceRule]) -> None:
    """Make ``rules`` the device allow-list of the cgroup2 directory ``directory``: load the
    program, attach it (BPF_F_ALLOW_MULTI, so that the programs of the cgroups above apply
    too), then detach the programs attached there before, so that a second call replaces the
    first rather than narrowing it. The kernel keeps the program while the cgroup lives."""
    program = syscalls.bpf_prog_load(
        BPF_PROG_TYPE_CGROUP_DEVICE,
        device_program(rules),
        _LICENSE,
        BPF_CGROUP_DEVICE,
        _PROGRAM_NAME,
    )
    try:
        cgroup = os.open(Path(directory), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            previous = syscalls.bpf_prog_query(cgroup, BPF_CGROUP_DEVICE)
            syscalls.bpf_prog_attach(cgroup, program, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI)
            for prog_id in previous:
                _detach(cgroup, prog_id)
        finally:
            os.close(cgroup)
    finally:
        os.close(program)


def attached_programs(directory: str | os.PathLike[str]) -> list[int]:
    """The IDs of the device programs attached to the cgroup2 directory itself."""
    cgroup = os.open(Path(directory), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return syscalls.bpf_prog_query(cgroup, BPF_CGROUP_DEVICE)
    finally:
        os.close(cgroup)


def _detach(cgroup: int, prog_id: int) -> None:
    try:
        program = syscalls.bpf_prog_get_fd_by_id(prog_id)
    except FileNotFoundError:
        return  # gone already
    try:
        with contextlib.suppress(FileNotFoundError):
            syscalls.bpf_prog_detach(cgroup, program, BPF_CGROUP_DEVICE)
    finally:
        os.close(program)
