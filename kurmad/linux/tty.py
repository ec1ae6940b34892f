"""Terminals: the ioctls the CLI, the API and the executor use on them."""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import termios
import tty
from collections.abc import Iterator
from pathlib import Path

# <asm/ioctls.h>: unlock a pty master, and read its number (termios lacks them)
_TIOCSPTLCK = 0x40045431
_TIOCGPTN = 0x80045430
DEFAULT_SIZE = (24, 80)


def set_window_size(fd: int, rows: int, columns: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


def window_size(fd: int) -> tuple[int, int]:
    """(rows, columns) of the terminal ``fd``, or the classic 24x80 when it is none."""
    try:
        rows, columns, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return DEFAULT_SIZE
    return rows, columns


def open_pty(devpts: Path) -> tuple[int, int]:
    """A new terminal of the devpts instance at ``devpts`` (so its slave is a /dev/pts/N of
    the world that mounted it): (master, slave), the master close-on-exec."""
    master = os.open(devpts / "ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, _TIOCSPTLCK, struct.pack("i", 0))
    number = struct.unpack("I", fcntl.ioctl(master, _TIOCGPTN, b"\0" * 4))[0]
    return master, os.open(devpts / str(number), os.O_RDWR | os.O_NOCTTY)


def become_controlled_by(slave: int) -> None:
    """Make ``slave`` this new session's controlling terminal and its stdio (in a child about
    to exec)."""
    os.setsid()
    for target in (0, 1, 2):
        os.dup2(slave, target)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    if slave > 2:
        os.close(slave)


@contextlib.contextmanager
def raw_mode(fd: int, enabled: bool = True) -> Iterator[None]:
    """The terminal ``fd`` in raw mode for the block (nothing when it is not a terminal)."""
    if not enabled or not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
