"""ACI archives: reading in one pass, image IDs, layout checks, deterministic writing."""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
from pathlib import Path

import pytest

from kurmad.appc import ImageManifest
from kurmad.images.aci import AciError, BuildOptions, build, scan
from kurmad.images.streams import Compression

from .tarcraft import (
    MANIFEST,
    compress,
    directory,
    file,
    hardlink,
    manifest_entry,
    minimal_entries,
    symlink,
    tar_bytes,
)

ALL_COMPRESSIONS = ["none", "gzip", "bzip2", "xz", "zstd"]


def scan_bytes(data: bytes):
    return scan(io.BytesIO(data))


@pytest.mark.parametrize("how", ALL_COMPRESSIONS)
def test_image_id_is_the_hash_of_the_uncompressed_tar(how: str) -> None:
    tar = tar_bytes(minimal_entries())
    info = scan_bytes(compress(tar, how))
    assert info.image_id == "sha512-" + hashlib.sha512(tar).hexdigest()
    assert info.compression == Compression(how)
    assert info.tar_size == len(tar)
    assert info.manifest.name == "example.com/test"


def test_compression_is_detected_by_magic_not_by_name(tmp_path: Path) -> None:
    misleading = tmp_path / "image.tar.zst.aci"
    misleading.write_bytes(compress(tar_bytes(minimal_entries()), "gzip"))
    with open(misleading, "rb") as f:
        assert scan(f).compression is Compression.GZIP


def test_scan_reads_from_a_pipe_like_stream() -> None:
    data = compress(tar_bytes(minimal_entries()), "zstd")

    class Pipe(io.RawIOBase):
        def __init__(self) -> None:
            self.src = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:  # short reads, no seek
            return self.src.read(min(n, 7) if n > 0 else 7)

    assert scan(Pipe()).image_id == scan_bytes(data).image_id  # type: ignore[arg-type]


def test_manifest_may_stand_anywhere_in_the_tar() -> None:
    entries = [directory("rootfs"), file("rootfs/a", "x"), manifest_entry(), file("rootfs/b", "y")]
    assert scan_bytes(tar_bytes(entries)).manifest.name == "example.com/test"


def test_leading_dot_slash_names_are_accepted() -> None:
    entries = [file("./manifest", manifest_entry().data), directory("./rootfs"), file("./rootfs/x")]
    assert scan_bytes(tar_bytes(entries)).entries == 3


def test_an_archive_without_rootfs_is_an_empty_image() -> None:
    seen: list[str] = []
    info = scan(
        io.BytesIO(tar_bytes([manifest_entry()])), lambda path, member, tar: seen.append(path)
    )
    assert info.entries == 1 and seen == []


def test_visitor_sees_every_rootfs_entry_in_order() -> None:
    seen: list[str] = []
    entries = [
        *minimal_entries(),
        symlink("rootfs/link", "hello"),
        hardlink("rootfs/hard", "rootfs/hello"),
    ]
    scan(io.BytesIO(tar_bytes(entries)), lambda path, member, tar: seen.append(path))
    assert seen == ["rootfs", "rootfs/hello", "rootfs/link", "rootfs/hard"]


BAD_ARCHIVES = {
    "missing manifest": ([directory("rootfs"), file("rootfs/a")], "no 'manifest'"),
    "duplicate manifest": ([*minimal_entries(), manifest_entry()], "'manifest' appears twice"),
    "duplicate rootfs file": ([*minimal_entries(), file("rootfs/hello")], "'rootfs/hello' appears twice"),
    "extra top-level file": ([*minimal_entries(), file("README")], "'README' is outside rootfs/"),
    "rootfs-prefixed sibling": ([*minimal_entries(), file("rootfsX/a")], "'rootfsX/a' is outside rootfs/"),
    "absolute path": ([*minimal_entries(), file("/rootfs/etc/passwd")], "absolute path"),
    "dot-dot path": ([*minimal_entries(), file("rootfs/../../etc/passwd")], "'..' component"),
    "manifest is a directory": ([directory("manifest"), directory("rootfs")], "not a regular file"),
    "rootfs is a file": ([manifest_entry(), file("rootfs")], "'rootfs' is not a directory"),
    "manifest not JSON": ([manifest_entry("{not json"), directory("rootfs")], "invalid manifest: not valid JSON"),
    "manifest is a pod manifest": (
        [manifest_entry({**MANIFEST, "acKind": "PodManifest"}), directory("rootfs")],
        'acKind: "PodManifest" must be "ImageManifest"',
    ),
    "manifest with a bad name": (
        [manifest_entry({**MANIFEST, "name": "Bad Name"}), directory("rootfs")],
        'name: "Bad Name" is not an AC Identifier',
    ),
    "hardlink escaping the archive": ([*minimal_entries(), hardlink("rootfs/x", "../etc/shadow")], "outside the archive"),
    "hardlink to a later entry": ([*minimal_entries(), hardlink("rootfs/x", "rootfs/y"), file("rootfs/y")], "not an earlier rootfs entry"),
    "hardlink to the manifest": ([*minimal_entries(), hardlink("rootfs/m", "manifest")], "not an earlier rootfs entry"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_ARCHIVES, ids=list(BAD_ARCHIVES))
@pytest.mark.parametrize("how", ["none", "gzip"])
def test_bad_layouts_are_refused_with_a_clear_reason(case: str, how: str) -> None:
    entries, reason = BAD_ARCHIVES[case]
    with pytest.raises(AciError, match=re.escape(reason)):
        scan_bytes(compress(tar_bytes(entries), how))


@pytest.mark.parametrize("how", ALL_COMPRESSIONS)
@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_truncated_archives_are_refused(how: str, keep: float) -> None:
    entries = [*minimal_entries(), file("rootfs/big", os.urandom(200_000))]
    data = compress(tar_bytes(entries), how)
    with pytest.raises(AciError, match=r"truncated|corrupt"):
        scan_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "empty"),
        (b"hello, this is not an archive" * 40, "not a tar archive"),
        (b"\x1f\x8b" + b"\x00" * 100, "gzip stream is corrupt"),
        (b"BZh9" + b"\x00" * 100, "bzip2 stream is corrupt"),
    ],
)
def test_garbage_is_refused(data: bytes, reason: str) -> None:
    with pytest.raises(AciError, match=reason):
        scan_bytes(data)


# --- writing ------------------------------------------------------------------------------


def make_rootfs(root: Path) -> Path:
    rootfs = root / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "etc").mkdir()
    (rootfs / "bin" / "tool").write_bytes(b"#!/bin/sh\necho hi\n")
    (rootfs / "bin" / "tool").chmod(0o755)
    (rootfs / "etc" / "motd").write_text("hello\n")
    os.link(rootfs / "etc" / "motd", rootfs / "etc" / "motd.hard")
    (rootfs / "bin" / "alias").symlink_to("tool")
    (rootfs / "empty").mkdir(mode=0o700)
    return rootfs


def build_bytes(rootfs: Path, compression: Compression, **kw: object) -> tuple[bytes, str]:
    out = io.BytesIO()
    manifest = ImageManifest.from_json(MANIFEST)
    image_id = build(rootfs, manifest, out, BuildOptions(compression=compression, **kw))  # type: ignore[arg-type]
    return out.getvalue(), image_id


@pytest.mark.parametrize("compression", [Compression.NONE, Compression.GZIP, Compression.ZSTD])
def test_built_archive_reads_back_with_the_same_id(
    tmp_path: Path, compression: Compression
) -> None:
    rootfs = make_rootfs(tmp_path)
    data, image_id = build_bytes(rootfs, compression)
    info = scan_bytes(data)
    assert info.image_id == image_id
    assert info.manifest == ImageManifest.from_json(MANIFEST)


def test_builds_are_deterministic_across_mtimes_and_owners(tmp_path: Path) -> None:
    rootfs = make_rootfs(tmp_path)
    first, first_id = build_bytes(rootfs, Compression.GZIP)
    for path in rootfs.rglob("*"):
        os.utime(path, (1_000_000, 1_000_000), follow_symlinks=False)
        if os.geteuid() == 0:
            os.lchown(path, 1234, 5678)
    second, second_id = build_bytes(rootfs, Compression.GZIP)
    assert first == second and first_id == second_id


def test_keep_mtimes_changes_the_id_when_mtimes_change(tmp_path: Path) -> None:
    rootfs = make_rootfs(tmp_path)
    _, first_id = build_bytes(rootfs, Compression.NONE, keep_mtimes=True)
    os.utime(rootfs / "etc" / "motd", (1_000_000, 1_000_000))
    _, second_id = build_bytes(rootfs, Compression.NONE, keep_mtimes=True)
    assert first_id != second_id


def test_built_entries_are_sorted_with_modes_links_and_hardlinks(tmp_path: Path) -> None:
    data, _ = build_bytes(make_rootfs(tmp_path), Compression.NONE)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        names = [m.name for m in tar.getmembers()]
    assert names == [
        "manifest", "rootfs", "rootfs/bin", "rootfs/bin/alias", "rootfs/bin/tool", "rootfs/empty",
        "rootfs/etc", "rootfs/etc/motd", "rootfs/etc/motd.hard",
    ]  # fmt: skip
    assert members["rootfs/bin/tool"].mode & 0o777 == 0o755
    assert members["rootfs/empty"].mode & 0o777 == 0o700
    assert members["rootfs/bin/alias"].issym() and members["rootfs/bin/alias"].linkname == "tool"
    assert members["rootfs/etc/motd.hard"].islnk()
    assert all(m.uid == 0 and m.gid == 0 and m.mtime == 0 for m in members.values())


def test_xattrs_are_written_as_pax_records(tmp_path: Path) -> None:
    rootfs = make_rootfs(tmp_path)
    target = rootfs / "etc" / "motd"
    try:
        os.setxattr(target, "user.kurmad.test", b"value\xff")
    except OSError as err:
        pytest.skip(f"this filesystem does not take user xattrs: {err}")
    data, _ = build_bytes(rootfs, Compression.NONE)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        headers = tar.getmember("rootfs/etc/motd").pax_headers
    assert (
        headers["SCHILY.xattr.user.kurmad.test"].encode("utf-8", "surrogateescape") == b"value\xff"
    )
