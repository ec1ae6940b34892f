"""An app's root filesystem for one run: a fresh writable layer over the image's rendered
(read-only, shared) tree, with overlayfs, or a copy of the tree where overlayfs is missing."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

from kurmad.linux import syscalls
from kurmad.linux.files import copy_metadata, copy_tree

# An app's root never opens device nodes: the devices it may use are bound into its /dev.
ROOTFS_FLAGS = syscalls.MS_NODEV


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
    lower: Path, scratch: Path, *, read_only: bool = False, prefer_overlay: bool = True
) -> AppRootfs:
    """Give an app a fresh root filesystem over ``lower`` in the empty directory ``scratch``:
    overlayfs (``scratch/upper`` and ``scratch/work``, mounted on ``scratch/rootfs``) when the
    kernel has it, else a copy in ``scratch/rootfs``. The result is always a mount point when
    running as root (pivot_root needs one)."""
    target = scratch / "rootfs"
    target.mkdir(parents=True)
    if prefer_overlay and overlay_available():
        try:
            _mount_overlay(lower, scratch, target, read_only)
            return AppRootfs(target, mounted=True)
        except OSError as err:
            if err.errno not in (errno.ENODEV, errno.EINVAL, errno.EOPNOTSUPP):
                raise
    copy_tree(lower, target)
    if os.geteuid() != 0:
        return AppRootfs(target, mounted=False)
    syscalls.mount(str(target), target, None, syscalls.MS_BIND | syscalls.MS_REC)
    readonly = syscalls.MS_RDONLY if read_only else 0
    syscalls.mount(
        None, target, None, syscalls.MS_BIND | syscalls.MS_REMOUNT | ROOTFS_FLAGS | readonly
    )
    return AppRootfs(target, mounted=True)


def _mount_overlay(lower: Path, scratch: Path, target: Path, read_only: bool) -> None:
    upper, work = scratch / "upper", scratch / "work"
    upper.mkdir()
    work.mkdir()
    copy_metadata(lower, upper)  # overlayfs shows the upper root's mode and owner
    options = f"lowerdir={_escape(lower)},upperdir={_escape(upper)},workdir={_escape(work)}"
    flags = ROOTFS_FLAGS | (syscalls.MS_RDONLY if read_only else 0)
    syscalls.mount("overlay", target, "overlay", flags, options)


def _escape(path: Path) -> str:
    # overlayfs splits its options on ',' and lowerdir lists on ':'; escape both.
    return str(path).replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")
