"""File descriptors passed over Unix sockets (SCM_RIGHTS), with a message beside them."""

from __future__ import annotations

import array
import socket

_FD_SIZE = array.array("i").itemsize


def send_with_fds(sock: socket.socket, data: bytes, fds: list[int] | None = None) -> None:
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([data], ancillary)


def receive_with_fds(sock: socket.socket, size: int, max_fds: int = 16) -> tuple[bytes, list[int]]:
    """A message and the descriptors that came with it, close-on-exec from the start (so none
    reaches a process this one execs unless it is handed on on purpose)."""
    fds = array.array("i")
    data, ancillary, _, _ = sock.recvmsg(
        size, socket.CMSG_SPACE(max_fds * _FD_SIZE), socket.MSG_CMSG_CLOEXEC
    )
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % _FD_SIZE])
    return data, list(fds)
