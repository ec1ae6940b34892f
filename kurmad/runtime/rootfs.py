"""An app's root filesystem for one run: a fresh writable layer over the image's read-only,
shared trees (an ACI's rendered tree, or an OCI image's layers) with overlayfs, or a copy of
the one tree where overlayfs is missing.

The kernel takes one page of mount options. When the lower directories' paths do not fit,
they are named relative to the directory that holds them all (the store's short links),
from inside it, as Docker's overlay2 driver does."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kurmad.linux import syscalls
from kurmad.linux.files import copy_metadata, copy_tree

# An app's root never opens device nodes: the devices it may use are bound into its /dev.
ROOTFS_FLAGS = syscalls.MS_NODEV
# The kernel copies one page of mount options; leave room for its terminating NUL.
MAX_OPTIONS = 4095


@dataclass
class AppRootfs:
    """The root filesystem at ``path``; ``mounted`` when it is a mount (overlayfs, or a bind
    of a copy) that ``release`` must undo."""

    path: Path
    mounted: bool

    def release(self) -> None:
        if self.mounted:
            try:
                syscalls.umount(self.path, syscalls.MNT_DETACH)
            except OSError as err:
                if err.errno != errno.EINVAL:  # EINVAL: not mounted any more
                    raise


def overlay_available() -> bool:
    return os.geteuid() == 0 and syscalls.filesystem_supported("overlay")


def mount_app_rootfs(
    lowers: list[Path], scratch: Path, *, read_only: bool = False, prefer_overlay: bool = True
) -> AppRootfs:
    """Give an app a fresh root filesystem over ``lowers`` (uppermost first) in the empty
    directory ``scratch``: overlayfs (``scratch/upper`` and ``scratch/work``, mounted on
    ``scratch/rootfs``) when the kernel has it, else a copy of the one lower tree in
    ``scratch/rootfs``. The result is always a mount point when running as root (pivot_root
    needs one)."""
    target = scratch / "rootfs"
    target.mkdir(parents=True)
    if prefer_overlay and overlay_available():
        try:
            _mount_overlay(lowers, scratch, target, read_only)
            return AppRootfs(target, mounted=True)
        except OSError as err:
            if err.errno not in (errno.ENODEV, errno.EINVAL, errno.EOPNOTSUPP) or len(lowers) > 1:
                raise
    if len(lowers) != 1:
        raise OSError(errno.EOPNOTSUPP, f"{len(lowers)} layers need overlayfs, which is missing")
    copy_tree(lowers[0], target)
    if os.geteuid() != 0:
        return AppRootfs(target, mounted=False)
    syscalls.mount(str(target), target, None, syscalls.MS_BIND | syscalls.MS_REC)
    readonly = syscalls.MS_RDONLY if read_only else 0
    syscalls.mount(
        None, target, None, syscalls.MS_BIND | syscalls.MS_REMOUNT | ROOTFS_FLAGS | readonly
    )
    return AppRootfs(target, mounted=True)


def _mount_overlay(lowers: list[Path], scratch: Path, target: Path, read_only: bool) -> None:
    upper, work = scratch / "upper", scratch / "work"
    upper.mkdir()
    work.mkdir()
    copy_metadata(lowers[0], upper)  # overlayfs shows the upper root's mode and owner
    rest = f",upperdir={_escape(upper.absolute())},workdir={_escape(work.absolute())}"
    flags = ROOTFS_FLAGS | (syscalls.MS_RDONLY if read_only else 0)
    lowerdir = ":".join(_escape(p) for p in lowers)
    if len("lowerdir=" + lowerdir + rest) < MAX_OPTIONS:
        syscalls.mount("overlay", target, "overlay", flags, "lowerdir=" + lowerdir + rest)
        return
    base = lowers[0].parent
    if any(p.parent != base for p in lowers):
        raise OSError(
            errno.E2BIG, f"{len(lowers)} layers in several directories do not fit one mount"
        )
    relative = ":".join(_escape(Path(p.name)) for p in lowers)
    if len("lowerdir=" + relative + rest) >= MAX_OPTIONS:
        raise OSError(
            errno.E2BIG, f"{len(lowers)} layers are more than one overlayfs mount can name"
        )
    with _working_directory(base):
        syscalls.mount(
            "overlay", target.absolute(), "overlay", flags, "lowerdir=" + relative + rest
        )


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    previous = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.chdir(path)
        yield
    finally:
        os.fchdir(previous)
        os.close(previous)


def _escape(path: Path) -> str:
    # overlayfs splits its options on ',' and lowerdir lists on ':'; escape both.
    return str(path).replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")
