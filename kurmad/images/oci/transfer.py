"""A blob on its way from a registry or an archive into a sink: hashed as it arrives, and
judged against its descriptor (size and digest) once it has all arrived."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, BinaryIO

from .documents import Descriptor

CHUNK = 1 << 20


@dataclass
class BlobTransfer:
    descriptor: Descriptor
    sink: BinaryIO
    progress: Callable[[int], None] | None = None
    received: int = 0
    hasher: hashlib._Hash = field(init=False)

    def __post_init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        """From the first byte again (a server that ignored a Range)."""
        self.sink.seek(0)
        self.sink.truncate()
        self.hasher = hashlib.new(self.descriptor.digest.split(":", 1)[0])
        self.received = 0

    def take(self, chunk: bytes) -> None:
        """One more piece; refused (ValueError) as soon as it is more than the descriptor says."""
        if self.received + len(chunk) > self.descriptor.size:
            raise ValueError(f"blob {self.descriptor.digest} is longer than its "
                             f"{self.descriptor.size} bytes")  # fmt: skip
        self.hasher.update(chunk)
        self.sink.write(chunk)
        self.received += len(chunk)
        if self.progress is not None:
            self.progress(len(chunk))

    def digest(self) -> str:
        return f"{self.hasher.name}:{self.hasher.hexdigest()}"

    def problem(self) -> str | None:
        """Why what arrived is not the blob the descriptor names, or None."""
        if self.received == self.descriptor.size and self.digest() == self.descriptor.digest:
            return None
        return (f"blob {self.descriptor.digest} does not match its digest "
                f"({self.received} bytes, {self.digest()[:23]}…)")  # fmt: skip

    def copy_from(self, source: IO[bytes]) -> None:
        while chunk := source.read(CHUNK):
            self.take(chunk)
