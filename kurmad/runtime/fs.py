"""An app's filesystem world (ace.md §Filesystem Setup, OS-SPEC.md): its root, /proc, /sys, a
minimal /dev, /etc/hosts and /etc/resolv.conf, and its volumes.

Everything is set up from the pod init's mount namespace before the app starts, on paths inside
the app's root that are resolved the way the app itself will see them: a symlink in the image
is followed within the root, never out to the host.

Devices, in layers as runc has them: the root, the volumes and /dev are ``nodev`` (a device node
an app makes, or finds in a volume, cannot be opened), the few devices an app may use are the
host's own nodes bind-mounted into its /dev, and the cgroup allows only those (the pod manager
sets its device rules). Paths of /proc and /sys that tell about or reach the host's kernel are
masked, as runc's defaults mask them."""

from __future__ import annotations

import os
import stat
from collections import deque
from pathlib import Path

from kurmad.linux import syscalls as sc

from .rootfs import ROOTFS_FLAGS
from .spec import AppSpec, MountSpec

_MAX_LINKS = 40
# The host's nodes every app gets (the cgroup allows them and /dev/pts, /dev/ptmx, console).
_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
# runc's defaults: files hidden behind /dev/null, directories behind an empty read-only tmpfs.
MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/proc/sysrq-trigger", "/sys/firmware", "/sys/devices/virtual/powercap",
    "/sys/kernel/security", "/sys/kernel/debug",
)  # fmt: skip
_VOLUME_FLAGS = sc.MOUNT_ATTR_NODEV | sc.MOUNT_ATTR_NOSUID
_DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
              ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx"))  # fmt: skip
_NO_EXEC = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC


class SetupError(Exception):
    """The app's filesystem cannot be set up; the message says what to fix."""


def resolve_in_root(root: str, path: str) -> str:
    """The host path of ``path`` as seen from inside ``root``: symlinks are followed relative
    to ``root`` and ``..`` stops at it. Components that do not exist are kept as they are."""
    pending = deque(p for p in path.split("/") if p not in ("", "."))
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.popleft()
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        try:
            info = os.lstat(candidate)
        except FileNotFoundError:
            resolved.append(part)
            continue
        if not stat.S_ISLNK(info.st_mode):
            resolved.append(part)
            continue
        links += 1
        if links > _MAX_LINKS:
            raise SetupError(f"{path}: too many levels of symbolic links")
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved = []
        pending.extendleft(reversed([p for p in target.split("/") if p not in ("", ".")]))
    return os.path.join(root, *resolved)


def make_dirs_in_root(root: str, path: str, mode: int = 0o755) -> str:
    """Create ``path`` inside ``root`` (and missing parents, 0755 owned by root: ace.md) and
    return its host path."""
    target = resolve_in_root(root, path)
    missing = []
    current = target
    while not os.path.lexists(current) and current != root:
        missing.append(current)
        current = os.path.dirname(current)
    for directory in reversed(missing):
        os.mkdir(directory, mode)
    return target


def setup_app_filesystem(rootfs: str, app: AppSpec, resolv_conf: Path, hosts: str) -> list[str]:
    """Mount everything an app needs inside ``rootfs``; return warnings for the user."""
    warnings: list[str] = []
    _write_hosts_if_missing(rootfs, hosts)
    _mount_proc_and_sys(rootfs)
    _mask_paths(rootfs)
    _mount_dev(rootfs)
    for device in app.devices:
        _bind_device(rootfs, device.path)
    _bind_file(rootfs, "/etc/resolv.conf", str(resolv_conf))
    for mount in app.mounts:
        warnings.extend(_mount_volume(rootfs, mount))
    if app.read_only_rootfs:
        sc.mount(None, rootfs, None, sc.MS_REMOUNT | sc.MS_RDONLY | ROOTFS_FLAGS)
    return warnings


def _write_hosts_if_missing(rootfs: str, hosts: str) -> None:
    """OS-SPEC: provide /etc/hosts with localhost, but leave the image's own alone."""
    target = resolve_in_root(rootfs, "/etc/hosts")
    if os.path.lexists(target):
        return
    make_dirs_in_root(rootfs, "/etc")
    with open(target, "x") as f:
        f.write(hosts)


def _mount_proc_and_sys(rootfs: str) -> None:
    sc.mount("proc", make_dirs_in_root(rootfs, "/proc"), "proc", _NO_EXEC | sc.MS_RDONLY)
    sc.mount("sysfs", make_dirs_in_root(rootfs, "/sys"), "sysfs", _NO_EXEC | sc.MS_RDONLY)


def _mask_paths(rootfs: str) -> None:
    for path in MASKED_PATHS:
        target = os.path.join(rootfs, path.lstrip("/"))  # in the fresh /proc and /sys: no links
        try:
            kind = os.lstat(target).st_mode
        except FileNotFoundError:
            continue  # this kernel has no such file
        if stat.S_ISDIR(kind):
            sc.mount("tmpfs", target, "tmpfs", _NO_EXEC | sc.MS_RDONLY, "size=0,mode=0555")
        elif not stat.S_ISLNK(kind):
            _bind_node("/dev/null", target, sc.MS_RDONLY)


def _mount_dev(rootfs: str) -> None:
    """A tmpfs /dev that is nodev, with the host's own nodes of the allowed devices bound in
    (a bind keeps the host mount's permission to open devices)."""
    dev = make_dirs_in_root(rootfs, "/dev")
    sc.mount("tmpfs", dev, "tmpfs", _NO_EXEC | sc.MS_STRICTATIME, "mode=755,size=65536k")
    for name in _DEVICES:
        _bind_node(f"/dev/{name}", os.path.join(dev, name))
    console = os.path.join(dev, "console")
    open(console, "x").close()
    sc.mount("/dev/null", console, None, sc.MS_BIND)  # no terminal: a console that goes nowhere
    for name, target in _DEV_LINKS:
        os.symlink(target, os.path.join(dev, name))
    os.mkdir(os.path.join(dev, "pts"), 0o755)
    sc.mount("devpts", os.path.join(dev, "pts"), "devpts", sc.MS_NOSUID | sc.MS_NOEXEC,
             "newinstance,ptmxmode=0666,mode=0620")  # fmt: skip
    os.mkdir(os.path.join(dev, "shm"), 0o1777)
    sc.mount(
        "shm",
        os.path.join(dev, "shm"),
        "tmpfs",
        sc.MS_NOSUID | sc.MS_NODEV,
        "mode=1777,size=65536k",
    )
    os.mkdir(os.path.join(dev, "mqueue"), 0o755)
    sc.mount("mqueue", os.path.join(dev, "mqueue"), "mqueue", _NO_EXEC)


def _bind_device(rootfs: str, path: str) -> None:
    """A host device the app was given (kurmad.io/devices), at the same path in its world."""
    make_dirs_in_root(rootfs, os.path.dirname(path))
    _bind_node(path, resolve_in_root(rootfs, path))


def _bind_node(source: str, target: str, extra_flags: int = 0) -> None:
    """The host's device node ``source`` on ``target`` (made if missing): the one kind of mount
    in an app's world that is not nodev."""
    info = os.stat(source)
    if not (stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)):
        raise SetupError(f"{source} on this host is not a device node")
    if not os.path.lexists(target):
        open(target, "x").close()
    sc.mount(source, target, None, sc.MS_BIND)
    flags = sc.MS_BIND | sc.MS_REMOUNT | sc.MS_NOSUID | sc.MS_NOEXEC | extra_flags
    sc.mount(None, target, None, flags)


def _bind_file(rootfs: str, path: str, source: str) -> None:
    target = resolve_in_root(rootfs, path)
    if not os.path.lexists(target):
        make_dirs_in_root(rootfs, os.path.dirname(path))
        open(target, "x").close()
    sc.mount(source, target, None, sc.MS_BIND)


def _mount_volume(rootfs: str, mount: MountSpec) -> list[str]:
    warnings = []
    source_is_dir = os.path.isdir(mount.source)
    target = resolve_in_root(rootfs, mount.target)
    if os.path.lexists(target):
        is_dir = os.path.isdir(target)
        if source_is_dir and not is_dir:
            # ace.md: a file where a volume directory goes is replaced, and the user warned
            os.unlink(target)
            os.mkdir(target, 0o755)
            warnings.append(
                f"{mount.target}: a file in the image was replaced by the volume directory"
            )
        elif source_is_dir and os.listdir(target):
            warnings.append(f"{mount.target}: the image's files there are hidden by the volume")
    elif source_is_dir:
        make_dirs_in_root(rootfs, mount.target)
    else:
        make_dirs_in_root(rootfs, os.path.dirname(mount.target))
        open(target, "x").close()
    flags = sc.MS_BIND | (sc.MS_REC if mount.recursive else 0)
    try:
        sc.mount(mount.source, target, None, flags)
        # every mount of the tree, not just its top: a submount of the host's must not carry
        # devices or setuid programs in, nor stay writable in a read-only volume
        sc.set_mount_flags(target, _VOLUME_FLAGS | (sc.MOUNT_ATTR_RDONLY if mount.read_only else 0))
    except OSError as err:
        raise SetupError(f"volume {mount.source} on {mount.target}: {err.strerror}") from None
    return warnings


def enter_root(rootfs: str) -> None:
    """Give this process its own mount namespace with ``rootfs`` as /: pivot_root, then
    detach the old root so nothing of the host stays reachable."""
    sc.unshare(sc.CLONE_NEWNS)
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    os.chdir(rootfs)
    sc.pivot_root(".", ".")
    sc.umount(".", sc.MNT_DETACH)
    os.chdir("/")
