"""The raw kernel calls Python's os module lacks, through libc. The only ctypes in kurmad."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import signal
import socket
import struct

# glibc by its soname: ctypes.util.find_library would run ldconfig at every start, PID 1's too.
_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_pythonapi = ctypes.pythonapi

_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.syncfs.argtypes = [ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.prctl.argtypes = [
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
]
_libc.syscall.restype = ctypes.c_long
# The same libc through PyDLL, which keeps the GIL held across the call: for clone(2), which
# must run between PyOS_BeforeFork and PyOS_AfterFork_* exactly as os.fork() does.
_libc_gil = ctypes.PyDLL(_libc._name, use_errno=True)
_libc_gil.syscall.restype = ctypes.c_long

# x86_64 system call numbers used directly
_SYS_CLONE = 56
_SYS_PIVOT_ROOT = 155
_SYS_CAPGET = 125
_SYS_CAPSET = 126
_SYS_SECCOMP = 317
_SYS_INIT_MODULE = 175
_SYS_REBOOT = 169

# <sched.h> namespace flags
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# <sys/mount.h>
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 0x2
MS_NOATIME = 0x400
MS_STRICTATIME = 1 << 24

# <sys/prctl.h>
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _bytes(value: str | os.PathLike[str] | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def mount(
    source: str | None,
    target: str | os.PathLike[str],
    fstype: str | None,
    flags: int = 0,
    data: str | None = None,
) -> None:
    result = _libc.mount(_bytes(source), _bytes(target), _bytes(fstype), flags, _bytes(data))
    _check(result, f"mount {fstype or source} on {os.fspath(target)}")


def umount(target: str | os.PathLike[str], flags: int = 0) -> None:
    _check(_libc.umount2(_bytes(target), flags), f"umount {os.fspath(target)}")


def syncfs(path: str | os.PathLike[str]) -> None:
    """Flush the whole filesystem holding ``path`` to disk (cheaper than an fsync per file)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _check(_libc.syncfs(fd), f"syncfs {os.fspath(path)}")
    finally:
        os.close(fd)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def pivot_root(new_root: str, put_old: str) -> None:
    result = _libc.syscall(_SYS_PIVOT_ROOT, os.fsencode(new_root), os.fsencode(put_old))
    _check(int(result), f"pivot_root {new_root}")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    result = _libc.prctl(option, arg2, arg3, arg4, arg5)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")
    return int(result)


def fork_into_namespaces(flags: int) -> int:
    """fork() whose child starts in new namespaces (CLONE_NEWPID makes it PID 1 of its own).
    Returns 0 in the child and the child's PID in the parent, like os.fork(), and keeps the
    interpreter consistent the same way. Only for single-threaded processes, as fork is."""
    _pythonapi.PyOS_BeforeFork()
    pid = _libc_gil.syscall(_SYS_CLONE, flags | signal.SIGCHLD, 0, 0, 0, 0)
    err = ctypes.get_errno()
    if pid == 0:
        _pythonapi.PyOS_AfterFork_Child()
    else:
        _pythonapi.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(err, f"clone: {os.strerror(err)}")
    return int(pid)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


_CAP_V3 = 0x20080522


def capget() -> tuple[int, int, int]:
    """This process's (effective, permitted, inheritable) capability sets as bit masks."""
    header = _CapHeader(_CAP_V3, 0)
    data = (_CapData * 2)()
    _check(int(_libc.syscall(_SYS_CAPGET, ctypes.byref(header), data)), "capget")
    low, high = data[0], data[1]
    return (
        low.effective | high.effective << 32,
        low.permitted | high.permitted << 32,
        low.inheritable | high.inheritable << 32,
    )


def capset(effective: int, permitted: int, inheritable: int) -> None:
    header = _CapHeader(_CAP_V3, 0)
    data = (_CapData * 2)()
    for index in (0, 1):
        shift = 32 * index
        data[index].effective = (effective >> shift) & 0xFFFFFFFF
        data[index].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[index].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(int(_libc.syscall(_SYS_CAPSET, ctypes.byref(header), data)), "capset")


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_SECCOMP_SET_MODE_FILTER = 1


def seccomp_filter(program: bytes) -> None:
    """Install a classic-BPF seccomp program (a sequence of 8-byte sock_filter records)."""
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    _check(
        int(_libc.syscall(_SYS_SECCOMP, _SECCOMP_SET_MODE_FILTER, 0, ctypes.byref(fprog))),
        "seccomp",
    )


_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


def set_link_up(name: str) -> None:
    """Bring up interface ``name`` of this network namespace. The pod init only ever needs this
    for its loopback, and one ioctl does it without loading a netlink library into every pod;
    all other link configuration goes through pyroute2 (kurmad/net)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH", name.encode(), 0)
        flags = struct.unpack("16sH", fcntl.ioctl(sock, _SIOCGIFFLAGS, request)[:18])[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH", name.encode(), flags | _IFF_UP))


def init_module(image: bytes, params: str = "") -> None:
    """Insert a kernel module from its (uncompressed) ELF image."""
    buffer = ctypes.create_string_buffer(image, len(image))
    result = _libc.syscall(_SYS_INIT_MODULE, buffer, ctypes.c_ulong(len(image)), params.encode())
    _check(int(result), "init_module")


# <linux/reboot.h>
RB_AUTOBOOT = 0x01234567
RB_POWER_OFF = 0x4321FEDC
RB_DISABLE_CAD = 0


def reboot(command: int) -> None:
    """reboot(2); in a child PID namespace it ends that namespace's init instead."""
    result = _libc.syscall(_SYS_REBOOT, 0xFEE1DEAD, 672274793, ctypes.c_int(command), None)
    _check(int(result), "reboot")


def filesystem_supported(name: str) -> bool:
    """Whether the running kernel lists ``name`` in /proc/filesystems."""
    try:
        with open("/proc/filesystems") as f:
            return any(line.split()[-1] == name for line in f if line.strip())
    except OSError:
        return False


# <linux/mount.h>: mount_setattr(2), which changes the flags of a whole mount tree at once
_SYS_MOUNT_SETATTR = 442
_AT_FDCWD = -100
_AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def set_mount_flags(target: str | os.PathLike[str], attributes: int) -> None:
    """Add MOUNT_ATTR_* ``attributes`` to the mount at ``target`` and every mount below it.
    Kernels before 5.12 lack mount_setattr: then only the top mount is remounted."""
    attr = _MountAttr(attributes, 0, 0, 0)
    result = _libc.syscall(_SYS_MOUNT_SETATTR, _AT_FDCWD, os.fsencode(target), _AT_RECURSIVE,
                           ctypes.byref(attr), ctypes.sizeof(attr))  # fmt: skip
    if result == 0:
        return
    err = ctypes.get_errno()
    if err != errno.ENOSYS:
        raise OSError(err, f"mount_setattr {os.fspath(target)}: {os.strerror(err)}")
    flags = {MOUNT_ATTR_RDONLY: MS_RDONLY, MOUNT_ATTR_NOSUID: MS_NOSUID,
             MOUNT_ATTR_NODEV: MS_NODEV, MOUNT_ATTR_NOEXEC: MS_NOEXEC}  # fmt: skip
    remount = sum(flag for attribute, flag in flags.items() if attributes & attribute)
    mount(None, target, None, MS_BIND | MS_REMOUNT | remount)


def raw_syscall(number: int, *args: int) -> int:
    """A system call by number with integer arguments; raises OSError on failure. For calls
    libc has no wrapper for (or would emulate), such as clone3 or io_uring_setup."""
    result = int(_libc.syscall(ctypes.c_long(number), *(ctypes.c_long(a) for a in args)))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"system call {number}: {os.strerror(err)}")
    return result


# bpf(2): <linux/bpf.h>
_SYS_BPF = 321
_BPF_PROG_LOAD = 5
_BPF_PROG_ATTACH = 8
_BPF_PROG_DETACH = 9
_BPF_PROG_GET_FD_BY_ID = 13
_BPF_PROG_QUERY = 16
_BPF_LOG_SIZE = 65536


def _bpf_attr(fields: bytes) -> ctypes.Array[ctypes.c_char]:
    """A union bpf_attr of exactly these bytes (the kernel zeroes the rest of the union)."""
    return ctypes.create_string_buffer(fields, len(fields))


def _bpf(command: int, attr: ctypes.Array[ctypes.c_char], what: str) -> int:
    result = int(_libc.syscall(_SYS_BPF, command, attr, ctypes.c_uint(len(attr))))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def bpf_prog_load(
    prog_type: int, instructions: bytes, license: str, attach_type: int, name: str
) -> int:
    """Load an eBPF program (8-byte instructions); returns its fd. A program the verifier
    refuses raises OSError whose message ends with the verifier's log."""
    try:
        return _bpf_prog_load(prog_type, instructions, license, attach_type, name, None)
    except OSError as err:
        # loaded again only to hear why: a log asked for on every load fails a long program
        # that is fine, once the log outgrows its buffer
        log = ctypes.create_string_buffer(_BPF_LOG_SIZE)
        with contextlib.suppress(OSError):
            os.close(_bpf_prog_load(prog_type, instructions, license, attach_type, name, log))
        verifier = log.value.decode(errors="replace").strip()
        message = f"{err.strerror}: {verifier}" if verifier else err.strerror
        raise OSError(err.errno, message) from None


def _bpf_prog_load(
    prog_type: int,
    instructions: bytes,
    license: str,
    attach_type: int,
    name: str,
    log: ctypes.Array[ctypes.c_char] | None,
) -> int:
    code = ctypes.create_string_buffer(instructions, len(instructions))
    license_buffer = ctypes.create_string_buffer(license.encode())
    attr = _bpf_attr(
        struct.pack(
            "=IIQQIIQII16sII",
            prog_type,
            len(instructions) // 8,
            ctypes.addressof(code),
            ctypes.addressof(license_buffer),
            0 if log is None else 1,  # log_level
            0 if log is None else len(log),
            0 if log is None else ctypes.addressof(log),
            0,  # kern_version
            0,  # prog_flags
            name.encode()[:15],
            0,  # prog_ifindex
            attach_type,
        )
    )
    return _bpf(_BPF_PROG_LOAD, attr, "bpf program load")


def bpf_prog_attach(target_fd: int, prog_fd: int, attach_type: int, flags: int) -> None:
    attr = _bpf_attr(struct.pack("=IIIII", target_fd, prog_fd, attach_type, flags, 0))
    _bpf(_BPF_PROG_ATTACH, attr, "bpf program attach")


def bpf_prog_detach(target_fd: int, prog_fd: int, attach_type: int) -> None:
    attr = _bpf_attr(struct.pack("=IIIII", target_fd, prog_fd, attach_type, 0, 0))
    _bpf(_BPF_PROG_DETACH, attr, "bpf program detach")


def bpf_prog_query(target_fd: int, attach_type: int, capacity: int = 64) -> list[int]:
    """The IDs of the programs of ``attach_type`` attached to ``target_fd`` itself."""
    ids = (ctypes.c_uint32 * capacity)()
    attr = _bpf_attr(
        struct.pack("=IIIIQI4x", target_fd, attach_type, 0, 0, ctypes.addressof(ids), capacity)
    )
    _bpf(_BPF_PROG_QUERY, attr, "bpf program query")
    count = struct.unpack_from("=I", attr.raw, 24)[0]
    return list(ids[: min(count, capacity)])


def bpf_prog_get_fd_by_id(prog_id: int) -> int:
    attr = _bpf_attr(struct.pack("=III", prog_id, 0, 0))
    return _bpf(_BPF_PROG_GET_FD_BY_ID, attr, f"bpf program {prog_id}")
