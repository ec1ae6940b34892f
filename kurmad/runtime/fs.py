"""An app's filesystem world (ace.md §Filesystem Setup, OS-SPEC.md): its root, /proc, /sys, a
minimal /dev, /etc/hosts and /etc/resolv.conf, and its volumes.

Everything is set up from the pod init's mount namespace before the app starts, on paths inside
the app's root that are resolved the way the app itself will see them: a symlink in the image
is followed within the root, never out to the host."""

from __future__ import annotations

import os
import stat
from collections import deque
from pathlib import Path

from kurmad.linux import syscalls as sc

from .spec import AppSpec, MountSpec

_MAX_LINKS = 40
_DEVICES = (
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
)
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


def setup_app_filesystem(rootfs: str, app: AppSpec, pod_dir: Path, hosts: str) -> list[str]:
    """Mount everything an app needs inside ``rootfs``; return warnings for the user."""
    warnings: list[str] = []
    _write_hosts_if_missing(rootfs, hosts)
    _mount_proc_and_sys(rootfs)
    _mount_dev(rootfs)
    _bind_file(rootfs, "/etc/resolv.conf", str(pod_dir / "resolv.conf"))
    for mount in app.mounts:
        warnings.extend(_mount_volume(rootfs, mount))
    if app.read_only_rootfs:
        sc.mount(None, rootfs, None, sc.MS_REMOUNT | sc.MS_RDONLY)
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


def _mount_dev(rootfs: str) -> None:
    dev = make_dirs_in_root(rootfs, "/dev")
    sc.mount("tmpfs", dev, "tmpfs", sc.MS_NOSUID | sc.MS_STRICTATIME, "mode=755,size=65536k")
    for name, major, minor in _DEVICES:
        os.mknod(os.path.join(dev, name), stat.S_IFCHR | 0o666, os.makedev(major, minor))
        os.chmod(os.path.join(dev, name), 0o666)
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
    except OSError as err:
        raise SetupError(f"volume {mount.source} on {mount.target}: {err.strerror}") from None
    if mount.read_only:
        sc.mount(None, target, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_NOSUID)
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
