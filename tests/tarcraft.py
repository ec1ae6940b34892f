"""Hand-made tar archives for tests, including ones no honest tool would write."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import struct
import tarfile
from dataclasses import dataclass, field
from typing import Any

import zstandard

MANIFEST: dict[str, Any] = {
    "acKind": "ImageManifest",
    "acVersion": "0.8.11",
    "name": "example.com/test",
    "labels": [{"name": "version", "value": "1.0.0"}],
}


@dataclass
class Entry:
    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    linkname: str = ""
    # Extended attributes, written as PAX SCHILY.xattr.* records as GNU tar and Docker do.
    xattrs: dict[str, bytes] = field(default_factory=dict)


def file(
    name: str, data: bytes | str = b"", mode: int = 0o644, xattrs: dict[str, bytes] | None = None
) -> Entry:
    body = data.encode() if isinstance(data, str) else data
    return Entry(name, tarfile.REGTYPE, body, mode, xattrs=xattrs or {})


def directory(name: str, mode: int = 0o755, xattrs: dict[str, bytes] | None = None) -> Entry:
    return Entry(name, tarfile.DIRTYPE, mode=mode, xattrs=xattrs or {})


def file_capabilities(*capabilities: int, effective: bool = True) -> bytes:
    """A ``security.capability`` value (struct vfs_cap_data, revision 2) permitting these
    capability numbers."""
    permitted = sum(1 << c for c in capabilities)
    magic = 0x02000000 | (1 if effective else 0)
    return struct.pack("<5I", magic, permitted & 0xFFFFFFFF, 0, permitted >> 32, 0)


def symlink(name: str, target: str) -> Entry:
    return Entry(name, tarfile.SYMTYPE, linkname=target, mode=0o777)


def hardlink(name: str, target: str) -> Entry:
    return Entry(name, tarfile.LNKTYPE, linkname=target)


def manifest_entry(manifest: dict[str, Any] | str | None = None) -> Entry:
    body = manifest if isinstance(manifest, str) else json.dumps(manifest or MANIFEST)
    return file("manifest", body)


def minimal_entries() -> list[Entry]:
    return [manifest_entry(), directory("rootfs"), file("rootfs/hello", "hi\n")]


def tar_bytes(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = e.type
            info.mode = e.mode
            info.linkname = e.linkname
            info.size = len(e.data) if e.type == tarfile.REGTYPE else 0
            info.pax_headers = {
                f"SCHILY.xattr.{key}": value.decode("utf-8", "surrogateescape")
                for key, value in e.xattrs.items()
            }
            tar.addfile(info, io.BytesIO(e.data) if info.size else None)
    return buf.getvalue()


def compress(data: bytes, how: str) -> bytes:
    if how == "gzip":
        return gzip.compress(data, mtime=0)
    if how == "bzip2":
        return bz2.compress(data)
    if how == "xz":
        return lzma.compress(data)
    if how == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    assert how == "none"
    return data


def image_manifest(
    name: str,
    version: str | None = "1.0.0",
    *,
    labels: dict[str, str] | None = None,
    dependencies: list[dict[str, Any]] | None = None,
    path_whitelist: list[str] | None = None,
) -> dict[str, Any]:
    manifest: dict[str, Any] = {"acKind": "ImageManifest", "acVersion": "0.8.11", "name": name}
    all_labels = {**({"version": version} if version else {}), **(labels or {})}
    if all_labels:
        manifest["labels"] = [{"name": k, "value": v} for k, v in all_labels.items()]
    if dependencies:
        manifest["dependencies"] = dependencies
    if path_whitelist:
        manifest["pathWhitelist"] = path_whitelist
    return manifest


def aci(
    manifest: dict[str, Any],
    entries: list[Entry],
    how: str = "none",
    rootfs_xattrs: dict[str, bytes] | None = None,
) -> bytes:
    """An ACI of ``manifest`` and rootfs ``entries`` (names relative to rootfs/)."""
    rooted = [
        Entry(f"rootfs/{e.name}", e.type, e.data, e.mode, e.linkname, e.xattrs) for e in entries
    ]
    rootfs = directory("rootfs", xattrs=rootfs_xattrs)
    return compress(tar_bytes([manifest_entry(manifest), rootfs, *rooted]), how)
