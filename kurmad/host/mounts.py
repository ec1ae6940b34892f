"""The filesystems every Linux system needs, and leaving the initramfs for a tmpfs root."""

from __future__ import annotations

import errno
import os
import re
import stat

from kurmad.linux import syscalls as sc

_NOSUID_NODEV_NOEXEC = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC

# (source, target, type, flags, data)
SYSTEM_MOUNTS: list[tuple[str, str, str, int, str | None]] = [
    ("proc", "/proc", "proc", _NOSUID_NODEV_NOEXEC, None),
    ("sysfs", "/sys", "sysfs", _NOSUID_NODEV_NOEXEC, None),
    ("devtmpfs", "/dev", "devtmpfs", sc.MS_NOSUID, "mode=0755"),
    ("devpts", "/dev/pts", "devpts", sc.MS_NOSUID | sc.MS_NOEXEC, "gid=5,mode=0620,ptmxmode=0666"),
    ("shm", "/dev/shm", "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "mode=1777"),
    ("run", "/run", "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "mode=0755"),
]
V1_CONTROLLERS = ("cpu,cpuacct", "memory", "pids", "blkio", "devices", "freezer", "cpuset")


def mount_table() -> list[tuple[str, str]]:
    """(mount point, filesystem type) of every mount, in mount order, from mountinfo (whose
    mount points escape spaces and the like as octal: decoded here)."""
    table = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                table.append((_unescape(left.split()[4]), right.split()[0]))
    except OSError:
        pass
    return table


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def mounted(target: str) -> bool:
    """Whether something is mounted exactly at ``target``."""
    return any(point == target for point, _ in mount_table())


def mount_system(mounts: list[tuple[str, str, str, int, str | None]] = SYSTEM_MOUNTS) -> list[str]:
    """Mount what is missing; return what was mounted."""
    done = []
    for source, target, fstype, flags, data in mounts:
        present = _proc_is_ours() if fstype == "proc" else mounted(target)
        if present:
            continue
        os.makedirs(target, exist_ok=True)
        try:
            sc.mount(source, target, fstype, flags, data)
        except OSError as err:
            if err.errno != errno.EBUSY:
                raise
            continue
        done.append(target)
    return done


def _proc_is_ours() -> bool:
    """A /proc of this PID namespace: one inherited from the parent namespace shows other PIDs
    (so /proc/self is not us)."""
    try:
        return os.readlink("/proc/self") == str(os.getpid())
    except OSError:
        return False


def mount_cgroups(version: str, root: str = "/sys/fs/cgroup") -> str:
    """cgroup v2 (unified, the default) or the v1 hierarchies; what is already mounted at
    ``root`` stays (a restarted kurmad, or a host that set its cgroups up itself)."""
    existing = fstype_at(root)
    if existing == "cgroup2" or (existing and version == "v2"):
        kind = "cgroup2" if existing == "cgroup2" else f"{existing} (v1 or hybrid hierarchies)"
        return f"kept {kind} already on {root}" + (
            "" if existing == "cgroup2" else f" ({version} asked)"
        )
    if version == "v2":
        os.makedirs(root, exist_ok=True)
        sc.mount("cgroup2", root, "cgroup2", _NOSUID_NODEV_NOEXEC, "nsdelegate")
        return f"cgroup2 on {root}"
    if not existing:
        os.makedirs(root, exist_ok=True)
        sc.mount("cgroup", root, "tmpfs", _NOSUID_NODEV_NOEXEC, "mode=0755")
    mounted_now, kept = [], []
    for controllers in V1_CONTROLLERS:
        target = os.path.join(root, controllers)
        if mounted(target):
            kept.append(controllers)
            continue
        os.makedirs(target, exist_ok=True)
        try:
            sc.mount("cgroup", target, "cgroup", _NOSUID_NODEV_NOEXEC, controllers)
            mounted_now.append(controllers)
        except OSError:
            os.rmdir(target)  # this kernel lacks the controller
    return (
        f"cgroup v1 on {root}: mounted {' '.join(mounted_now) or '-'}; kept {' '.join(kept) or '-'}"
    )


def fstype_at(target: str) -> str:
    """The filesystem type mounted at ``target`` ('' when nothing is); the last of stacked
    mounts is the one in use."""
    types = [fstype for point, fstype in mount_table() if point == target]
    return types[-1] if types else ""


def root_is_initramfs() -> bool:
    """pivot_root, which every pod needs, refuses a rootfs (initramfs) root."""
    return fstype_at("/") in ("rootfs", "ramfs")


def move_root_to_tmpfs(new_root: str = "/.kurma-root") -> int:
    """Put a tmpfs under everything and make it the root: pivot_root refuses the initramfs
    (rootfs has no parent mount), and every pod needs pivot_root. Unlike switch_root, nothing
    is copied: each top-level directory of the initramfs is bind-mounted onto the tmpfs, so the
    same files (the very ones this process runs from) stay in place, and no re-exec is needed.
    Returns how many entries were carried over."""
    os.makedirs(new_root, exist_ok=True)
    sc.mount("tmpfs", new_root, "tmpfs", 0, "mode=0755")
    moved = ("proc", "sys", "dev", "run")
    present = {entry for entry in moved if mounted("/" + entry)}  # before /proc moves away
    carried = 0
    for entry in sorted(os.listdir("/"), key=lambda e: e == "proc"):  # /proc last
        source, target = os.path.join("/", entry), os.path.join(new_root, entry)
        if entry == new_root.lstrip("/"):
            continue
        if entry in moved:
            os.makedirs(target, exist_ok=True)
            if entry in present:
                sc.mount(source, target, None, sc.MS_MOVE)
            continue
        if os.path.islink(source):
            os.symlink(os.readlink(source), target)
        else:
            if os.path.isdir(source):
                os.mkdir(target, stat.S_IMODE(os.lstat(source).st_mode))
            else:
                open(target, "x").close()
            sc.mount(source, target, None, sc.MS_BIND | sc.MS_REC)
        carried += 1
    os.chdir(new_root)
    sc.mount(new_root, "/", None, sc.MS_MOVE)
    os.chroot(".")
    os.chdir("/")
    return carried


def unmount_all(keep: tuple[str, ...] = ("/", "/proc", "/sys", "/dev", "/run")) -> list[str]:
    """Unmount every filesystem but the essential ones, deepest first; return failures."""
    failures = []
    targets = [point for point, _ in mount_table()]
    if not targets:
        return ["cannot read /proc/self/mountinfo"]
    for target in sorted(set(targets), key=lambda t: t.count("/"), reverse=True):
        if target in keep or any(target.startswith(k + "/") for k in ("/proc", "/sys", "/dev")):
            continue
        try:
            sc.umount(target)
        except OSError as err:
            if err.errno in (errno.ENOENT, errno.EINVAL):
                continue  # hidden under a later mount, or gone with its parent
            try:
                sc.umount(target, sc.MNT_DETACH)
            except OSError as err:
                failures.append(f"{target}: {err.strerror}")
    return failures
