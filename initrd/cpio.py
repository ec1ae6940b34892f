"""A reproducible cpio archive in the kernel's "newc" format: entries sorted by path, owned by
root, one fixed mtime, inode numbers in order. The same tree gives the same bytes."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

MAGIC = b"070701"
TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    path: str  # relative, no leading slash
    mode: int  # type and permission bits
    data: bytes = b""  # file contents, or a symlink's target
    rdev: tuple[int, int] = (0, 0)  # major, minor of a device node


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _header(entry: Entry, inode: int, mtime: int) -> bytes:
    name = entry.path.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (inode, entry.mode, 0, 0, nlink, mtime, len(entry.data), 0, 0,
              entry.rdev[0], entry.rdev[1], len(name), 0)  # fmt: skip
    header = MAGIC + b"".join(b"%08X" % value for value in fields) + name
    return header + _pad(len(header))


def write(entries: Iterable[Entry], out: BinaryIO, mtime: int = 0) -> None:
    for inode, entry in enumerate(sorted(entries, key=lambda e: e.path), start=1):
        out.write(_header(entry, inode, mtime))
        out.write(entry.data + _pad(len(entry.data)))
    out.write(_header(Entry(TRAILER, 0), 0, 0))


def entries_of(root: Path) -> list[Entry]:
    """Every file, directory and symlink under ``root``, read from disk. Permission bits are
    kept; owners and times are not."""
    found = []
    for current, dirs, files in os.walk(root):
        dirs.sort()
        for name in [*dirs, *sorted(files)]:
            path = Path(current, name)
            info = path.lstat()
            relative = str(path.relative_to(root))
            if stat.S_ISLNK(info.st_mode):
                found.append(Entry(relative, stat.S_IFLNK | 0o777, os.readlink(path).encode()))
            elif stat.S_ISDIR(info.st_mode):
                found.append(Entry(relative, stat.S_IFDIR | stat.S_IMODE(info.st_mode)))
            elif stat.S_ISREG(info.st_mode):
                found.append(
                    Entry(relative, stat.S_IFREG | stat.S_IMODE(info.st_mode), path.read_bytes())
                )
    return found
