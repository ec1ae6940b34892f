"""ACI archives (aci.md §Image Archives): read and check one in a single streaming pass, and
write one deterministically.

An ACI is a tar, optionally compressed, holding exactly ``manifest`` (a regular file) and
``rootfs/`` at the top. Its image ID is the SHA-512 of the uncompressed tar, which the reader
computes while it walks the entries, so nothing is decompressed twice.
"""

from __future__ import annotations

import io
import os
import posixpath
import tarfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from kurmad.appc import ImageID, ImageManifest, ValidationError

from .streams import (
    HEADER_PROBE,
    STREAM_ERRORS,
    Compression,
    FormatError,
    HashingReader,
    HashingWriter,
    detect_compression,
    open_compressed,
    open_decompressed,
)

MANIFEST = "manifest"
# tarfile reads its stream in pieces of this size (its default, 10 KiB, costs a call per block).
_TAR_BUFFER = 1 << 20
ROOTFS = "rootfs"
MAX_MANIFEST_BYTES = 1 << 20

# Called for every rootfs entry in archive order: the normalised path and the tar member, with
# the open tar to read a file's content from. Used by the store to extract in the same pass.
EntryVisitor = Callable[[str, tarfile.TarInfo, tarfile.TarFile], None]


class AciError(Exception):
    """An archive is not a valid ACI. ``str()`` is one line naming what is wrong."""


@dataclass(frozen=True)
class AciInfo:
    image_id: ImageID
    manifest: ImageManifest
    # The manifest exactly as the archive holds it (the metadata service serves the original).
    manifest_bytes: bytes
    compression: Compression
    tar_size: int
    entries: int


# A tar member's extended header is read into memory whole; a hostile archive could claim
# gigabytes. Refuse long-name and PAX headers beyond this size before reading them.
MAX_HEADER_BYTES = 1 << 20
_EXTENDED_HEADERS = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)


class _BoundedTarInfo(tarfile.TarInfo):
    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXTENDED_HEADERS and self.size > MAX_HEADER_BYTES:
            raise tarfile.HeaderError(
                f"an extended header of {self.size} bytes (more than {MAX_HEADER_BYTES} allowed)"
            )
        return super()._proc_member(tarfile_)  # type: ignore[misc]


def normalise_member_name(name: str) -> str:
    """The archive path of a tar member without ``./`` or trailing ``/``; refuses absolute
    paths and ``..`` components."""
    if name.startswith("/"):
        raise AciError(f"entry {name!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise AciError(f"entry {name!r} has a '..' component")
    if not parts:
        raise AciError(f"entry {name!r} has an empty path")
    return "/".join(parts)


class _LayoutChecker:
    """Checks each entry against the ACI layout as the archive streams past."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.manifest_bytes: bytes | None = None

    def check(self, path: str, member: tarfile.TarInfo) -> None:
        if path in self.seen:
            raise AciError(f"entry {path!r} appears twice")
        self.seen.add(path)
        top = path.split("/", 1)[0]
        if path == MANIFEST:
            if not member.isreg():
                raise AciError("'manifest' is not a regular file")
        elif top != ROOTFS:
            raise AciError(
                f"entry {path!r} is outside rootfs/ (only 'manifest' and 'rootfs/' may be at the top)"
            )
        elif path == ROOTFS and not member.isdir():
            raise AciError("'rootfs' is not a directory")
        if member.islnk():
            self._check_hardlink(path, member.linkname)

    def _check_hardlink(self, path: str, target: str) -> None:
        try:
            resolved = normalise_member_name(target)
        except AciError:
            raise AciError(f"hard link {path!r} points outside the archive ({target!r})") from None
        if not resolved.startswith(ROOTFS + "/") or resolved not in self.seen:
            raise AciError(
                f"hard link {path!r} points to {target!r}, which is not an earlier rootfs entry"
            )

    def finish(self) -> bytes:
        # An archive with a manifest and no rootfs at all is an image with an empty rootfs:
        # the reference renderer's own test images include such dependency-only layers.
        if self.manifest_bytes is None:
            raise AciError("the archive has no 'manifest'")
        return self.manifest_bytes


def scan(source: BinaryIO, visit: EntryVisitor | None = None) -> AciInfo:
    """Read a whole ACI from ``source``: check its layout, parse its manifest and compute its
    image ID, calling ``visit`` for each rootfs entry. Raises AciError."""
    raw = _Peekable(source)
    try:
        compression = detect_compression(raw.peek(HEADER_PROBE))
    except FormatError as err:
        raise AciError(str(err)) from None
    tap = HashingReader(open_decompressed(raw, compression, threaded=True))
    checker = _LayoutChecker()
    try:
        entries = _walk(tap, checker, visit, compression)
    finally:
        tap.close()  # stops the decompression thread at once if the walk gave up
    manifest_bytes = checker.finish()
    manifest = _parse_manifest(manifest_bytes)
    return AciInfo(tap.image_id, manifest, manifest_bytes, compression, tap.size, entries)


def _walk(
    tap: HashingReader,
    checker: _LayoutChecker,
    visit: EntryVisitor | None,
    compression: Compression,
) -> int:
    entries = 0
    try:
        with tarfile.open(
            fileobj=tap, mode="r|", errorlevel=2, tarinfo=_BoundedTarInfo, bufsize=_TAR_BUFFER
        ) as tar:
            for member in tar:
                path = normalise_member_name(member.name)
                checker.check(path, member)
                if path == MANIFEST:
                    checker.manifest_bytes = _read_manifest(tar, member)
                elif visit is not None:
                    visit(path, member, tar)
                entries += 1
        tap.drain()
    except tarfile.TarError as err:
        if str(err).startswith("zlib error"):  # tarfile wraps the codec's own error
            raise AciError(f"the {compression} stream is corrupt ({err})") from None
        if tap.size == 0 and compression is not Compression.NONE:
            raise AciError(f"the {compression} stream is empty or truncated") from None
        raise AciError(_describe_tar_error(err)) from None
    except STREAM_ERRORS as err:
        raise AciError(f"the {compression} stream is corrupt or truncated ({err})") from None
    return entries


def _describe_tar_error(err: tarfile.TarError) -> str:
    text = str(err)
    if "unexpected end" in text or "truncated" in text:
        return "the archive is truncated"
    if "empty file" in text:
        return "the archive is empty"
    return f"not a valid tar archive ({text})"


def _read_manifest(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    if member.size > MAX_MANIFEST_BYTES:
        raise AciError(
            f"'manifest' is {member.size} bytes, more than the {MAX_MANIFEST_BYTES} allowed"
        )
    stream = tar.extractfile(member)
    assert stream is not None
    return stream.read()


def _parse_manifest(data: bytes) -> ImageManifest:
    try:
        return ImageManifest.loads(data)
    except ValidationError as err:
        raise AciError(f"invalid manifest: {err}") from None


def read_aci(path: Path) -> AciInfo:
    with open(path, "rb") as source:
        return scan(source)


class _Peekable:
    """A reader that can look at its first bytes without consuming them, for magic detection
    on pipes as well as files."""

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self._head = b""

    def peek(self, size: int) -> bytes:
        while len(self._head) < size:
            chunk = self._source.read(size - len(self._head))
            if not chunk:
                break
            self._head += chunk
        return self._head

    def read(self, size: int = -1) -> bytes:
        if self._head:
            head, self._head = self._head, b""
            if size < 0:
                return head + self._source.read()
            if len(head) >= size:
                self._head = head[size:]
                return head[:size]
            return head + self._source.read(size - len(head))
        return self._source.read(size)

    def readable(self) -> bool:
        return True


# --- writing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildOptions:
    compression: Compression = Compression.GZIP
    keep_owners: bool = False
    keep_mtimes: bool = False
    # The mtime given to every entry unless keep_mtimes; SOURCE_DATE_EPOCH by convention.
    mtime: int = 0


def build(rootfs: Path, manifest: ImageManifest, out: BinaryIO, options: BuildOptions) -> ImageID:
    """Write an ACI of ``rootfs`` and ``manifest`` to ``out``; return its image ID.

    Entries are sorted, and unless asked otherwise owners are 0:0 and mtimes fixed, so the same
    directory and manifest always give the same bytes and the same ID.
    """
    if not rootfs.is_dir():
        raise AciError(f"{rootfs} is not a directory")
    rootfs = rootfs.resolve()
    with ExitStack() as stack:
        compressed = stack.enter_context(open_compressed(out, options.compression))
        tap = HashingWriter(compressed)
        tar = stack.enter_context(tarfile.open(fileobj=tap, mode="w|", format=tarfile.PAX_FORMAT))
        _add_manifest(tar, manifest, options)
        for path, arcname in _walk_sorted(rootfs, ROOTFS):
            _add_entry(tar, path, arcname, options)
    return tap.image_id


def _add_manifest(tar: tarfile.TarFile, manifest: ImageManifest, options: BuildOptions) -> None:
    data = manifest.dumps().encode()
    info = tarfile.TarInfo(MANIFEST)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = options.mtime
    tar.addfile(info, io.BytesIO(data))


def _walk_sorted(root: Path, arcname: str) -> Iterator[tuple[Path, str]]:
    """Depth-first, names sorted bytewise: a deterministic order with parents first."""
    yield root, arcname
    if root.is_dir() and not root.is_symlink():
        for name in sorted(os.listdir(root), key=os.fsencode):
            yield from _walk_sorted(root / name, posixpath.join(arcname, name))


def _add_entry(tar: tarfile.TarFile, path: Path, arcname: str, options: BuildOptions) -> None:
    info = tar.gettarinfo(str(path), arcname)
    if info is None:  # sockets cannot be archived; they are runtime artefacts anyway
        return
    if not options.keep_owners:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
    if not options.keep_mtimes:
        info.mtime = options.mtime
    info.pax_headers = {**info.pax_headers, **_xattr_headers(path)}
    if info.isreg():
        with open(path, "rb") as content:
            tar.addfile(info, content)
    else:
        tar.addfile(info)


def _xattr_headers(path: Path) -> dict[str, str]:
    """Extended attributes as PAX ``SCHILY.xattr.*`` records (aci.md: files keep them)."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    headers = {}
    for name in sorted(names):
        value = os.getxattr(path, name, follow_symlinks=False)
        headers[f"SCHILY.xattr.{name}"] = value.decode("utf-8", "surrogateescape")
    return headers
