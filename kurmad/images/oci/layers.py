"""An OCI layer extracted into a directory that overlayfs can stack as a lower layer.

The layer's tar (gzip, zstd or none) goes through the store's safe extractor entry by entry,
so every rule of an ACI's rootfs holds: no ``..`` or absolute path, nothing written through a
symlink, hard links only to earlier entries, no ``trusted.*`` attribute from the image. The OCI
whiteouts become overlayfs's own form, written by kurmad: ``DIR/.wh.NAME`` a 0:0 character
device ``DIR/NAME``, ``DIR/.wh..wh..opq`` the ``trusted.overlay.opaque`` attribute on ``DIR``
(the kernel of 6.1 reads no other form). Other ``.wh..wh.`` names are aufs bookkeeping and
are left out. The uncompressed bytes must hash to the layer's diff ID from the image config.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from kurmad.images.aci import AciError, normalise_member_name
from kurmad.images.extract import DEFAULT_POLICY, ExtractPolicy, ExtractResult, SafeExtractor
from kurmad.images.streams import Compression, HashingReader, open_decompressed

from .convert import CanonicalAci

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
AUFS_META = ".wh..wh."
_TAR_BUFFER = 1 << 20


class LayerError(AciError):
    """A layer that cannot be stored; ``str()`` says which entry or check failed."""


def extract_layer(source: BinaryIO, compression: Compression, diff_id: str, root: Path,
                  policy: ExtractPolicy = DEFAULT_POLICY,
                  charge: Callable[[int], None] = lambda n: None,
                  canonical: CanonicalAci | None = None) -> ExtractResult:  # fmt: skip
    """Extract the layer read from ``source`` into ``root`` (an empty directory); every entry
    also goes to ``canonical``, which hashes the layer's ACI."""
    algorithm = diff_id.split(":", 1)[0]
    # Decompressed in this thread: a pull runs layers in parallel threads already, and a
    # decompression thread for each made bench-pull ~25 % slower (their hand-offs contend).
    tap = HashingReader(open_decompressed(source, compression, threaded=False), algorithm)
    canonical = canonical or CanonicalAci(b"")
    try:
        with SafeExtractor(root, policy, charge, canonical.data) as extractor:
            _walk(tap, extractor, canonical)
            tap.drain()
            result = extractor.finish()
    except (tarfile.TarError, EOFError, OSError) as err:
        raise LayerError(f"layer {diff_id}: not a readable tar ({err})") from None
    finally:
        tap.close()
    if tap.digest != diff_id:
        raise LayerError(f"layer {diff_id}: its content is {tap.digest} (not the config's diff ID)")
    return result


def _walk(tap: HashingReader, extractor: SafeExtractor, canonical: CanonicalAci) -> None:
    seen: set[str] = set()
    with tarfile.open(fileobj=tap, mode="r|", errorlevel=2, bufsize=_TAR_BUFFER) as tar:
        for member in tar:
            if member.isdir() and member.name.strip("/.") == "" and not member.name.startswith("/"):
                extractor("rootfs", member, tar)  # "./": the layer's root directory itself
                continue
            path = normalise_member_name(member.name)
            if path in seen:
                raise LayerError(f"entry {path!r} appears twice in the layer")
            seen.add(path)
            link = f"rootfs/{normalise_member_name(member.linkname)}" if member.islnk() else ""
            canonical.entry(member, path, link)
            if not _one_entry(path, member, tar, extractor) and member.isreg():
                _read_into(tar, member, canonical)  # data the extractor did not read
            canonical.end(member.size if member.isreg() else 0)


def _read_into(tar: tarfile.TarFile, member: tarfile.TarInfo, canonical: CanonicalAci) -> None:
    source = tar.extractfile(member)
    assert source is not None
    while chunk := source.read(_TAR_BUFFER):
        canonical.data(chunk)


def _one_entry(path: str, member: tarfile.TarInfo, tar: tarfile.TarFile,
               extractor: SafeExtractor) -> bool:  # fmt: skip
    """Extract one entry; False when it is a marker whose data (if any) was not read."""
    parent, _, name = path.rpartition("/")
    if name == OPAQUE:
        extractor.make_opaque(parent)
        return False
    if name.startswith(AUFS_META):
        return False
    if name.startswith(WHITEOUT):
        hidden = name[len(WHITEOUT) :]
        if hidden in ("", ".", ".."):  # ".wh.." would hide the directory's parent
            raise LayerError(f"entry {path!r} is a whiteout of no name in its directory")
        extractor.whiteout(f"{parent}/{hidden}" if parent else hidden)
        return False
    if member.islnk():  # a hard link names an archive path: the ACI form the extractor reads
        member.linkname = f"rootfs/{normalise_member_name(member.linkname)}"
    extractor(f"rootfs/{path}", member, tar)
    return True
