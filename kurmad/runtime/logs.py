"""Per-app logs: what an app writes to stdout and stderr, kept in files capped in size and
rotated, readable while the app runs (follow) and after it ends.

Lines are stored in the CRI log format, one record per line:
``2026-11-26T16:00:00.123456789Z stdout F the line`` where F marks a full line and P a part of
a longer one (a record is cut at 16 KiB, or when the stream ends without a newline)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

LOG_FILE = "log"
_MAX_RECORD = 16 * 1024


def _timestamp(now: float) -> str:
    seconds = int(now)
    nanos = int((now - seconds) * 1e9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


class LogWriter:
    """Appends records to ``directory/log``, rotating to log.1, log.2, ... past ``max_bytes``."""

    def __init__(self, directory: Path, max_bytes: int, keep: int) -> None:
        self.path = directory / LOG_FILE
        self._max = max_bytes
        self._keep = keep
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - lives as long as the app
        self._size = self._file.tell()
        self._partial: dict[str, bytes] = {"stdout": b"", "stderr": b""}
        self._lost = 0  # bytes of output the disk did not take since the last good write
        self._why = ""

    def write(self, stream: str, data: bytes) -> None:
        """Record what ``stream`` produced; a line without its newline waits for the rest."""
        buffered = self._partial[stream] + data
        lines = buffered.split(b"\n")
        self._partial[stream] = lines.pop()
        records = [record for line in lines for record in self._line_records(stream, line)]
        while len(self._partial[stream]) >= _MAX_RECORD:
            chunk, self._partial[stream] = (
                self._partial[stream][:_MAX_RECORD],
                self._partial[stream][_MAX_RECORD:],
            )
            records.append(self._record(stream, b"P", chunk))
        if records:
            self._append(b"".join(records))

    def _line_records(self, stream: str, line: bytes) -> list[bytes]:
        """A complete line: records of at most 16 KiB, all but the last marked partial."""
        pieces = [line[i : i + _MAX_RECORD] for i in range(0, len(line), _MAX_RECORD)] or [b""]
        return [
            self._record(stream, b"P" if i < len(pieces) - 1 else b"F", piece)
            for i, piece in enumerate(pieces)
        ]

    def flush_partial(self) -> None:
        """The streams ended: keep what they wrote after their last newline."""
        for stream, rest in self._partial.items():
            if rest:
                self._append(self._record(stream, b"P", rest))
                self._partial[stream] = b""

    def _record(self, stream: str, tag: bytes, line: bytes) -> bytes:
        return b"%s %s %s %s\n" % (_timestamp(time.time()).encode(), stream.encode(), tag, line)

    def _append(self, data: bytes) -> None:
        """Write records; what the disk refuses (full, failing) is counted, and said in the
        log once it takes writes again. An app is never stopped for its logs."""
        payload = data
        if self._lost:
            note = f"kurmad: {self._lost} bytes of output were lost: {self._why}".encode()
            payload = self._record("stderr", b"F", note) + data
        try:
            if self._file.closed:  # a rotation the disk cut short
                self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115
                self._size = self._file.tell()
            if self._size + len(payload) > self._max and self._size > 0:
                self._rotate()
            self._file.write(payload)
        except OSError as err:
            self._lost += len(data)
            self._why = err.strerror or str(err)
            return
        self._size += len(payload)
        self._lost = 0

    def _rotate(self) -> None:
        self._file.close()
        for index in range(self._keep, 0, -1):
            older = self.path.with_name(f"{LOG_FILE}.{index}")
            newer = self.path.with_name(f"{LOG_FILE}.{index - 1}") if index > 1 else self.path
            if index == self._keep:
                older.unlink(missing_ok=True)
            if newer.exists():
                newer.rename(older)
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115
        self._size = 0

    def close(self) -> None:
        self.flush_partial()
        self._file.close()


@dataclass(frozen=True)
class LogRecord:
    timestamp: str
    stream: str
    partial: bool
    line: bytes

    @classmethod
    def parse(cls, raw: bytes) -> LogRecord | None:
        parts = raw.rstrip(b"\n").split(b" ", 3)
        if len(parts) < 3:
            return None
        line = parts[3] if len(parts) == 4 else b""
        return cls(parts[0].decode(), parts[1].decode(), parts[2] == b"P", line)


def read_logs(
    directory: Path,
    follow: bool = False,
    still_running: Callable[[], bool] | None = None,
    poll_interval: float = 0.1,
    pause: Callable[[float], object] = time.sleep,
    still_wanted: Callable[[], bool] | None = None,
) -> Iterator[LogRecord]:
    """Every record of an app, oldest first (rotated files too). With ``follow``, keep
    waiting for more while ``still_running()`` says the app runs, across rotations, and
    ``still_wanted()`` says the reader is there (asked at every look, so a follower of a silent
    app ends within a ``poll_interval`` of its reader going away).
    ``pause(seconds)`` waits between looks; one that returns early when the app ends (the
    pod manager's) makes the end of the stream prompt."""
    for rotated in sorted(directory.glob(f"{LOG_FILE}.*"), key=lambda p: -int(p.suffix[1:])):
        yield from _records(rotated)
    tail = _Tail(directory / LOG_FILE)
    while True:
        # asked before reading, so the read after the app stops is the final, complete one
        running = follow and still_running is not None and still_running()
        yield from tail.new_records()
        if not running or (still_wanted is not None and not still_wanted()):
            return
        pause(poll_interval)


class _Tail:
    """Reads the records appended to a log file since the last call, following rotation."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._position = 0
        self._inode: int | None = None

    def new_records(self) -> Iterator[LogRecord]:
        try:
            f = open(self._path, "rb")  # noqa: SIM115 - closed below, after a generator pause
        except FileNotFoundError:
            return
        with f:
            inode = os.fstat(f.fileno()).st_ino
            if self._inode is not None and inode != self._inode:
                yield from self._rest_of_rotated(self._inode)
                self._position = 0  # the new file starts from the beginning
            self._inode = inode
            yield from self._read_from(f)

    def _read_from(self, f: BinaryIO) -> Iterator[LogRecord]:
        f.seek(self._position)
        for raw in f:
            if not raw.endswith(b"\n"):
                break  # a record still being written
            self._position += len(raw)
            record = LogRecord.parse(raw)
            if record is not None:
                yield record

    def _rest_of_rotated(self, inode: int) -> Iterator[LogRecord]:
        """What the file we were reading got before it was rotated away."""
        for rotated in sorted(self._path.parent.glob(f"{LOG_FILE}.*")):
            with open(rotated, "rb") as f:
                if os.fstat(f.fileno()).st_ino == inode:
                    yield from self._read_from(f)
                    return


def _records(path: Path) -> Iterator[LogRecord]:
    with open(path, "rb") as f:
        for raw in f:
            record = LogRecord.parse(raw)
            if record is not None:
                yield record
