"""Processes as /proc and wait(2) show them."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def reap_all() -> Iterator[tuple[int, int]]:
    """(pid, wait status) of every child that has ended, without blocking."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, status


def start_time(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (field 22 of /proc/PID/stat): with the
    PID, it tells a process from a later one that reused its number."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def child_with_namespace_pid(parent: int, namespace_pid: int) -> int | None:
    """The host PID of ``parent``'s child that is ``namespace_pid`` in its own PID namespace."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    for child in children:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{child}/status").read_text().splitlines():
                if line.startswith("NSpid:") and int(line.split()[-1]) == namespace_pid:
                    return int(child)
    return None


def pss_kib(pid: int) -> int:
    """The proportional set size of ``pid`` in KiB."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0
