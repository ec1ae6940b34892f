"""Network namespaces as files, made and entered without fork().

The daemon has gRPC threads, and fork() from a threaded process is unsafe (DESIGN.md: fork
with care). Namespaces are per thread on Linux, so a short-lived thread does the work: it
unshares (or joins) a network namespace, does one thing there, and ends. What it leaves behind
is a bind-mounted namespace file, or a netlink socket that stays in the namespace it was
opened in."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from kurmad.linux import syscalls as sc

T = TypeVar("T")
NETLINK_ROUTE = 0


def in_thread(action: Callable[[], T]) -> T:
    """Run ``action`` in a new thread and return its result (or raise its error)."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["result"] = action()
        except BaseException as err:
            box["error"] = err

    thread = threading.Thread(target=run, name="netns")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]


def create(path: Path) -> Path:
    """A new network namespace, kept alive by a bind mount on ``path`` (as `ip netns add`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(exist_ok=True)

    def make() -> None:
        sc.unshare(sc.CLONE_NEWNET)
        sc.mount(f"/proc/self/task/{threading.get_native_id()}/ns/net", str(path), None, sc.MS_BIND)

    try:
        in_thread(make)
    except OSError:
        path.unlink(missing_ok=True)
        raise
    return path


def remove(path: Path) -> None:
    """Let go of a namespace file; the namespace goes when nothing else holds it."""
    with contextlib.suppress(OSError):
        sc.umount(str(path), sc.MNT_DETACH)
    path.unlink(missing_ok=True)


def run_in(path: Path, action: Callable[[], T]) -> T:
    """Run ``action`` inside the namespace of ``path`` (in a thread of its own)."""

    def entered() -> T:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            sc.setns(fd, sc.CLONE_NEWNET)
        finally:
            os.close(fd)
        return action()

    return in_thread(entered)


def netlink_socket(path: Path) -> socket.socket:
    """An rtnetlink socket that talks to the namespace of ``path``, for pyroute2's
    ``IPRoute(fileno=...)``."""
    return run_in(path, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE))


def write_sysctl(path: Path | None, key: str, value: str) -> None:
    """A net.* sysctl in the namespace of ``path`` (or this one): /proc/sys/net shows the
    namespace of the thread that opens it."""

    def write() -> None:
        Path("/proc/sys", *key.split(".")).write_text(value)

    if path is None:
        write()
    else:
        run_in(path, write)
