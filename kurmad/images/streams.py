"""Byte streams for ACI archives: compression detected by magic bytes, and hashing taps that
compute the image ID while the bytes pass through."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import zlib
from enum import StrEnum
from typing import BinaryIO, Protocol

import zstandard

from kurmad.appc import ImageID


class ByteReader(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class Compression(StrEnum):
    NONE = "none"
    GZIP = "gzip"
    BZIP2 = "bzip2"
    XZ = "xz"
    ZSTD = "zstd"


_MAGIC: tuple[tuple[bytes, Compression], ...] = (
    (b"\x1f\x8b", Compression.GZIP),
    (b"BZh", Compression.BZIP2),
    (b"\xfd7zXZ\x00", Compression.XZ),
    (b"\x28\xb5\x2f\xfd", Compression.ZSTD),
)
_TAR_MAGIC_OFFSET = 257
HEADER_PROBE = 512

# The errors a corrupt or truncated compressed stream raises, whichever the format.
STREAM_ERRORS: tuple[type[BaseException], ...] = (
    EOFError,
    zlib.error,
    gzip.BadGzipFile,
    lzma.LZMAError,
    zstandard.ZstdError,
    OSError,
)


class FormatError(ValueError):
    """The bytes are not an archive in any format this reader knows."""


def detect_compression(head: bytes) -> Compression:
    """Tell the format from the first bytes (at least 262 of them for a plain tar)."""
    for magic, compression in _MAGIC:
        if head.startswith(magic):
            return compression
    if head[_TAR_MAGIC_OFFSET : _TAR_MAGIC_OFFSET + 5] == b"ustar":
        return Compression.NONE
    if not head:
        raise FormatError("the file is empty")
    raise FormatError("not a tar archive, nor gzip, bzip2, xz or zstd compressed")


def open_decompressed(raw: ByteReader, compression: Compression) -> ByteReader:
    """A reader of the uncompressed bytes of ``raw``."""
    if compression is Compression.GZIP:
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[call-overload]
    if compression is Compression.BZIP2:
        return bz2.BZ2File(raw, mode="rb")  # type: ignore[call-overload]
    if compression is Compression.XZ:
        return lzma.LZMAFile(raw, mode="rb")  # type: ignore[arg-type]
    if compression is Compression.ZSTD:
        return io.BufferedReader(_ZstdReader(raw), buffer_size=1 << 17)
    return raw


def open_compressed(raw: BinaryIO, compression: Compression, level: int | None = None) -> io.IOBase:
    """A writer that compresses into ``raw``. Output is deterministic: gzip gets no name and a
    zero mtime in its header. Closing the writer does not close ``raw``."""
    if compression is Compression.GZIP:
        return gzip.GzipFile(fileobj=raw, mode="wb", filename="", mtime=0, compresslevel=level or 6)
    if compression is Compression.ZSTD:
        compressor = zstandard.ZstdCompressor(level=level or 10, write_checksum=True)
        return compressor.stream_writer(raw, closefd=False)  # type: ignore[return-value]
    if compression is Compression.BZIP2:
        return bz2.BZ2File(raw, mode="wb", compresslevel=level or 9)
    if compression is Compression.XZ:
        return lzma.LZMAFile(raw, mode="wb", preset=level)
    return _Unclosing(raw)


class _ZstdReader(io.RawIOBase):
    """Decompresses a sequence of zstd frames and, unlike zstandard's stream_reader, raises
    EOFError when the input ends inside a frame: a truncated download must not pass as a
    shorter archive."""

    _CHUNK = 1 << 17

    def __init__(self, raw: ByteReader) -> None:
        self._raw = raw
        self._decompressor = zstandard.ZstdDecompressor()
        self._frame = self._decompressor.decompressobj()
        self._in_frame = False
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            if not self._decompress_more():
                return 0
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def _decompress_more(self) -> bool:
        data = self._raw.read(self._CHUNK)
        if not data:
            if self._in_frame:
                raise EOFError("the zstd stream ends inside a frame")
            return False
        out = []
        while data:
            self._in_frame = True
            out.append(self._frame.decompress(data))
            data = b""
            if self._frame.eof:
                data = self._frame.unused_data
                self._frame = self._decompressor.decompressobj()
                self._in_frame = False
        self._pending = memoryview(b"".join(out))
        return True


class _Unclosing(io.RawIOBase):
    """Pass writes through without closing the underlying stream."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._raw.write(data)
        return len(data)


class HashingReader(io.RawIOBase):
    """Reads from ``source`` and feeds every byte to SHA-512: the image ID of what was read."""

    def __init__(self, source: ByteReader) -> None:
        self._source = source
        self._hash = hashlib.sha512()
        self.size = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self._hash.update(data)
        self.size += len(data)
        return data

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def drain(self, chunk: int = 1 << 20) -> None:
        """Read to the end, so the hash covers the whole stream (tar's trailing blocks too)."""
        while self.read(chunk):
            pass

    @property
    def image_id(self) -> ImageID:
        return ImageID.from_digest(self._hash.hexdigest())


class HashingWriter(io.RawIOBase):
    """Writes to ``sink`` and feeds every byte to SHA-512."""

    def __init__(self, sink: io.IOBase) -> None:
        self._sink = sink
        self._hash = hashlib.sha512()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._hash.update(data)
        self._sink.write(data)
        self.size += len(data)
        return len(data)

    @property
    def image_id(self) -> ImageID:
        return ImageID.from_digest(self._hash.hexdigest())
