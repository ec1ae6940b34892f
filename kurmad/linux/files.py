"""Small file-system helpers the whole daemon uses: atomic writes and durable renames."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_writer(path: Path, mode: int = 0o644) -> Iterator[BinaryIO]:
    """A file to write that replaces ``path`` only when the block ends without error, so a
    reader or a crash sees the old content or the new, never a mix: a temporary file beside
    it, fsync, rename, fsync of the directory. On error nothing is left behind."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    with atomic_writer(path, mode) as f:
        f.write(data)


def write_atomic_alone(path: Path, data: bytes, temporary: Path, mode: int = 0o644) -> None:
    """write_atomic for a file's only writer, which names the temporary beside it: no
    tempfile module, no random names, no file object (the pod init, where each module and
    object it wakes after its fork costs every pod memory)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(temporary, flags, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: Path, value: Any, mode: int = 0o644) -> None:
    write_atomic(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode(), mode)


def read_json(path: Path) -> Any:
    return json.loads(path.read_bytes())


def remove_tree(path: Path) -> None:
    """Remove a file or a directory tree, making read-only directories writable on the way
    (an image may well contain them)."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
        return

    def make_writable_and_retry(func: Any, failed: str, _exc: Any) -> None:
        os.chmod(os.path.dirname(failed), 0o700)
        func(failed)

    shutil.rmtree(path, onerror=make_writable_and_retry)


def copy_metadata(origin: Path, destination: Path) -> None:
    """Give ``destination`` the mode, owner (as root), times and xattrs of ``origin``."""
    info = origin.lstat()
    for name in os.listxattr(origin, follow_symlinks=False):
        try:
            value = os.getxattr(origin, name, follow_symlinks=False)
            os.setxattr(destination, name, value, follow_symlinks=False)
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.ENOTSUP):
                raise
    if os.geteuid() == 0:
        os.chown(destination, info.st_uid, info.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(info.st_mode):
        os.chmod(destination, stat.S_IMODE(info.st_mode))
    os.utime(destination, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)


def copy_tree(source: Path, target: Path) -> None:
    """Copy the tree ``source`` into the existing empty directory ``target`` keeping file
    types, hard links between its files, modes, owners, times and xattrs."""
    linked: dict[tuple[int, int], Path] = {}  # (dev, ino) of a source -> its first copy
    directories = [(source, target)]
    for current, dirs, files in os.walk(source):
        here = Path(current)
        there = target / here.relative_to(source)
        for name in dirs:
            if (here / name).is_symlink():
                files.append(name)  # os.walk lists a symlink to a directory among the dirs
                continue
            (there / name).mkdir()
            directories.append((here / name, there / name))
        dirs[:] = [d for d in dirs if not (here / d).is_symlink()]
        for name in files:
            _copy_entry(here / name, there / name, linked)
    for origin, destination in reversed(directories):
        copy_metadata(origin, destination)


def _copy_entry(origin: Path, destination: Path, linked: dict[tuple[int, int], Path]) -> None:
    info = origin.lstat()
    key = (info.st_dev, info.st_ino)
    if info.st_nlink > 1 and key in linked:
        os.link(linked[key], destination)
        return
    if stat.S_ISLNK(info.st_mode):
        os.symlink(os.readlink(origin), destination)
    elif stat.S_ISREG(info.st_mode):
        shutil.copyfile(origin, destination, follow_symlinks=False)
    elif stat.S_ISFIFO(info.st_mode):
        os.mkfifo(destination)
    else:
        os.mknod(destination, info.st_mode, info.st_rdev)
    copy_metadata(origin, destination)
    linked[key] = destination
