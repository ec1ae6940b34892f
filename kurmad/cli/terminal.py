"""Interactive sessions for exec -it and run -it: the local terminal in raw mode, keystrokes
and window sizes to the server, output back."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from kurmad.api.v1 import kurma_pb2 as pb
from kurmad.linux import tty

_END = object()


def window_size() -> pb.TerminalSize:
    rows, columns = tty.window_size(sys.stdout.fileno())
    return pb.TerminalSize(rows=rows, columns=columns)


def raw_terminal(enabled: bool) -> contextlib.AbstractContextManager[None]:
    """The local terminal (stdin) raw for the session, when there is one and it is wanted."""
    return tty.raw_mode(0, enabled)


class Input:
    """What goes to the server after the start message: stdin (when wanted), resizes (with a
    terminal) and the end of input."""

    def __init__(self, first: Any, *, stdin: bool, terminal: bool, wrap: Any) -> None:
        self._queue: queue.Queue[Any] = queue.Queue()
        self._first = first
        self._wrap = wrap  # builds the request message from keyword fields
        self._closed = threading.Event()
        if terminal:
            signal.signal(
                signal.SIGWINCH, lambda *_: self._queue.put(self._wrap(resize=window_size()))
            )
        if stdin:
            threading.Thread(target=self._read_stdin, args=(terminal,), daemon=True).start()

    def _read_stdin(self, terminal: bool) -> None:
        while not self._closed.is_set():
            try:
                data = os.read(0, 65536)
            except OSError:
                data = b""
            if not data:
                if not terminal:
                    self._queue.put(self._wrap(close_stdin=True))
                return
            self._queue.put(self._wrap(stdin=data))

    def __iter__(self) -> Iterator[Any]:
        yield self._first
        while True:
            item = self._queue.get()
            if item is _END:
                return
            yield item

    def close(self) -> None:
        self._closed.set()
        self._queue.put(_END)


def relay(responses: Iterator[pb.ExecResponse]) -> int:
    """Write what the server sends to stdout and stderr; return the exit code."""
    code = 255
    for response in responses:
        kind = response.WhichOneof("response")
        if kind == "stdout":
            os.write(1, response.stdout)
        elif kind == "stderr":
            os.write(2, response.stderr)
        elif kind == "exit_code":
            code = response.exit_code
    return code
