"""Small file-system helpers the whole daemon uses: atomic writes and durable renames."""

from __future__ import annotations

import json
import os
import shutil
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


def write_json_atomic(path: Path, value: Any) -> None:
    write_atomic(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


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
