"""Byte streams for ACI archives: compression detected by magic bytes, and hashing taps that
compute the image ID while the bytes pass through."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import io
import lzma
import threading
import zlib
from collections.abc import Callable, Iterator
from enum import StrEnum
from functools import partial
from queue import Empty, Queue
from typing import Any, BinaryIO, Protocol

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


def open_decompressed(
    raw: ByteReader, compression: Compression, *, threaded: bool = False
) -> ByteReader:
    """A reader of the uncompressed bytes of ``raw``. Every format raises EOFError when the
    input ends inside a compressed stream, and no single read holds more than a few MiB in
    memory however well the input compresses. With ``threaded``, decompression runs in a
    thread of its own (the codecs release the GIL), so it overlaps the consumer's work."""
    if compression is Compression.NONE:
        return raw
    chunks = _decoder_for(compression)(raw)
    if threaded:
        chunks = _prefetch(chunks)
    return io.BufferedReader(ChunkReader(chunks), buffer_size=_CHUNK)


_CHUNK = 1 << 20  # the largest piece of output produced at once
_INPUT = 1 << 18


def _decoder_for(compression: Compression) -> Callable[[ByteReader], Iterator[bytes]]:
    decoders: dict[Compression, Callable[[ByteReader], Iterator[bytes]]] = {
        Compression.GZIP: _decode_gzip,
        Compression.BZIP2: partial(_decode_with, bz2.BZ2Decompressor),
        Compression.XZ: partial(_decode_with, lambda: lzma.LZMADecompressor(format=lzma.FORMAT_XZ)),
        Compression.ZSTD: _decode_zstd,
    }
    return decoders[compression]


def _decode_gzip(raw: ByteReader) -> Iterator[bytes]:
    """gzip members one after another; zlib checks each member's CRC and length."""
    member = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    pending = b""
    started = False
    while True:
        if not pending:
            pending = raw.read(_INPUT)
            if not pending:
                if started and not member.eof:
                    raise EOFError("the gzip stream ends before its end marker")
                return
        started = True
        out = member.decompress(pending, _CHUNK)
        pending = member.unconsumed_tail
        if member.eof:
            pending = member.unused_data
            member = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            started = bool(pending)
        if out:
            yield out


def _decode_with(new: Callable[[], Any], raw: ByteReader) -> Iterator[bytes]:
    """bz2 and xz: decompressors with max_length, needs_input, eof and unused_data."""
    stream = new()
    pending = b""
    started = False
    while True:
        if stream.eof:
            pending = stream.unused_data
            stream = new()
            started = bool(pending)
        if stream.needs_input and not pending:
            pending = raw.read(_INPUT)
            if not pending:
                if started:
                    raise EOFError("the compressed stream ends before its end marker")
                return
        started = True
        out = stream.decompress(pending, _CHUNK)
        pending = b""
        if out:
            yield out


def _decode_zstd(raw: ByteReader) -> Iterator[bytes]:
    """zstandard's stream reader bounds each read but says nothing when its input stops inside
    a frame; a frame tracker watches the compressed bytes go by and tells."""
    tracker = ZstdFrameTracker(raw)
    reader = zstandard.ZstdDecompressor().stream_reader(tracker, read_across_frames=True)  # type: ignore[arg-type]
    while True:
        out = reader.read(_CHUNK)
        if not out:
            break
        yield out
    tracker.drain()
    if not tracker.at_frame_boundary:
        raise EOFError("the zstd stream ends inside a frame")


class ZstdFrameTracker:
    """Follows the zstd frame format (RFC 8878) over the compressed bytes it passes through,
    skipping block bodies by their sizes, to know whether the input ended between frames."""

    _MAGIC = 0xFD2FB528
    _SKIPPABLE = 0x184D2A50  # ..5F: the low four bits are free

    def __init__(self, raw: ByteReader) -> None:
        self._raw = raw
        self._buffer = bytearray()
        self._skip = 0  # body bytes still to pass over
        self._state = "magic"
        self._checksum = False

    @property
    def at_frame_boundary(self) -> bool:
        return self._state == "magic" and not self._buffer and self._skip == 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size if size > 0 else _INPUT)
        self._advance(data)
        return data

    def drain(self) -> None:
        """Consume what the decompressor did not read (bytes after its last frame)."""
        while self.read(_INPUT):
            pass

    def _advance(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._skip:
                step = min(self._skip, len(view))
                self._skip -= step
                view = view[step:]
                continue
            self._buffer += view[:1]
            view = view[1:]
            self._parse_buffer()

    def _parse_buffer(self) -> None:
        need = {"magic": 4, "header": self._header_size(), "block": 3, "checksum": 4}[self._state]
        if len(self._buffer) < need:
            return
        parse = getattr(self, f"_on_{self._state}")
        parse(bytes(self._buffer[:need]))
        del self._buffer[:need]

    def _header_size(self) -> int:
        # Frame_Header_Descriptor, then Window_Descriptor, Dictionary_ID and Frame_Content_Size
        if not self._buffer:
            return 1
        descriptor = self._buffer[0]
        single_segment = descriptor >> 5 & 1
        fcs = (0, 2, 4, 8)[descriptor >> 6] or (1 if single_segment else 0)
        dict_id = (0, 1, 2, 4)[descriptor & 3]
        return 1 + (0 if single_segment else 1) + dict_id + fcs

    def _on_magic(self, header: bytes) -> None:
        magic = int.from_bytes(header, "little")
        if magic == self._MAGIC:
            self._state = "header"
        elif magic & 0xFFFFFFF0 == self._SKIPPABLE:
            self._state = "skippable"
        else:
            self._state = "garbage"  # the decompressor reports it; nothing more to follow

    def _on_header(self, header: bytes) -> None:
        self._checksum = bool(header[0] >> 2 & 1)
        self._state = "block"

    def _on_block(self, header: bytes) -> None:
        value = int.from_bytes(header, "little")
        last, kind, size = value & 1, value >> 1 & 3, value >> 3
        self._skip = 1 if kind == 1 else size  # an RLE block carries one byte
        if last:
            self._state = "checksum" if self._checksum else "magic"

    def _on_checksum(self, _: bytes) -> None:
        self._state = "magic"

    def _on_skippable(self, size: bytes) -> None:
        self._skip = int.from_bytes(size, "little")
        self._state = "magic"


class ChunkReader(io.RawIOBase):
    """A raw reader over an iterator of byte chunks (a decoder's output, an Import stream's
    messages); wrap it in io.BufferedReader for reads of any size."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()
        super().close()


_DONE = object()


def _prefetch(chunks: Iterator[bytes], depth: int = 8) -> Iterator[bytes]:
    """Run ``chunks`` in a thread, ``depth`` chunks ahead of the consumer. Errors reach the
    consumer in order; a consumer that stops early stops the thread (generator close)."""
    queue: Queue[Any] = Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for chunk in chunks:
                if stop.is_set():
                    return
                queue.put(chunk)
            queue.put(_DONE)
        except BaseException as err:  # handed to the consumer, raised there
            queue.put(err)

    worker = threading.Thread(target=produce, name="decompress", daemon=True)
    worker.start()
    try:
        while True:
            item = queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(Empty):
                queue.get(timeout=0.05)


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
    """Reads from ``source`` and feeds every byte to a hash: SHA-512 gives the image ID of what
    was read; an OCI layer's uncompressed bytes hash (SHA-256) to its diff ID."""

    def __init__(self, source: ByteReader, algorithm: str = "sha512") -> None:
        self._source = source
        self._hash = hashlib.new(algorithm)
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

    def close(self) -> None:
        close = getattr(self._source, "close", None)
        if close is not None:
            close()
        super().close()

    def drain(self, chunk: int = 1 << 20) -> None:
        """Read to the end, so the hash covers the whole stream (tar's trailing blocks too)."""
        while self.read(chunk):
            pass

    @property
    def image_id(self) -> ImageID:
        return ImageID.from_digest(self._hash.hexdigest())

    @property
    def digest(self) -> str:
        """``algorithm:hex``, as OCI spells a digest."""
        return f"{self._hash.name}:{self._hash.hexdigest()}"


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
