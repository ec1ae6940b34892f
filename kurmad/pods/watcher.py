"""Notice when processes end, whether or not they are our children: one thread, pidfds."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
from collections.abc import Callable

log = logging.getLogger("kurmad")


class PidWatcher:
    def __init__(self, on_exit: Callable[[str], None]) -> None:
        self._on_exit = on_exit
        self._lock = threading.Lock()
        self._fds: dict[int, str] = {}
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="pod-watcher", daemon=True)
        self._thread.start()

    def watch(self, pid: int, key: str) -> bool:
        """Call ``on_exit(key)`` when ``pid`` ends; False if it has already ended."""
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False
        if select.select([fd], [], [], 0)[0]:  # ended already (a zombie nobody reaped yet)
            os.close(fd)
            return False
        with self._lock:
            self._fds[fd] = key
        os.write(self._wake_w, b"x")
        return True

    def _loop(self) -> None:
        while not self._closed:
            with self._lock:
                fds = list(self._fds)
            readable, _, _ = select.select([self._wake_r, *fds], [], [])
            for fd in readable:
                if fd == self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                    continue
                with self._lock:
                    key = self._fds.pop(fd, None)
                os.close(fd)
                if key is not None:
                    self._notify(key)

    def _notify(self, key: str) -> None:
        """One ended process's callback; whatever it raises is logged, and the watching goes
        on: if this thread died, no other exit would ever be noticed."""
        try:
            self._on_exit(key)
        except Exception:
            log.exception("handling the end of %s", key)

    def close(self) -> None:
        self._closed = True
        os.write(self._wake_w, b"x")
        self._thread.join(2)
        with self._lock:
            for fd in self._fds:
                os.close(fd)
            self._fds.clear()
