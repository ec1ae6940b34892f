"""OCI layers extracted for overlayfs (kurmad/images/oci/layers.py): whiteouts and opaque
directories in overlayfs's own form, the diff ID checked, every unsafe entry refused; and the
three layers of a umoci-built image stacked by the kernel as a pod's root would be."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from kurmad.images.extract import OPAQUE_XATTR
from kurmad.images.oci.archives import open_archive
from kurmad.images.oci.documents import LAYER_COMPRESSION, Platform
from kurmad.images.oci.layers import LayerError, extract_layer
from kurmad.images.streams import Compression

from .registry import build_busybox_layout, missing_tools

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root (trusted.* xattrs, mknod, mounts)"
)
pytestmark = needs_root


def layer(*entries: tuple[str, str, bytes | str], pax: dict[str, str] | None = None) -> bytes:
    """A layer tar: (name, kind, data or link target) with kind file, dir, symlink or link."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            info.mode = 0o755 if kind == "dir" else 0o644
            if kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind in ("symlink", "link"):
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = str(data)
            body = data.encode() if isinstance(data, str) else data
            if kind == "file":
                info.size = len(body)
                info.pax_headers = dict(pax or {})
                tar.addfile(info, io.BytesIO(body))
            else:
                tar.addfile(info)
    return out.getvalue()


def diff_id(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def extracted(tmp_path: Path, data: bytes, compression: Compression = Compression.NONE,
              raw: bytes | None = None) -> Path:  # fmt: skip
    root = tmp_path / "root"
    root.mkdir()
    extract_layer(io.BytesIO(raw if raw is not None else data), compression, diff_id(data), root)
    return root


BASIC = layer(
    ("etc", "dir", ""), ("etc/hostname", "file", "pod\n"), ("etc/.wh.deleted", "file", ""),
    ("data", "dir", ""), ("data/.wh..wh..opq", "file", ""), ("data/new", "file", "n"),
    ("bin", "dir", ""), ("bin/sh", "file", "#!"), ("bin/ash", "link", "bin/sh"),
    ("bin/busybox", "symlink", "sh"), (".wh..wh.plnk", "dir", ""),
)  # fmt: skip


@pytest.mark.parametrize("compression", [Compression.NONE, Compression.GZIP, Compression.ZSTD])
def test_a_layer_becomes_an_overlay_lower_layer(tmp_path: Path, compression: Compression) -> None:
    raw = {
        Compression.NONE: BASIC,
        Compression.GZIP: gzip.compress(BASIC),
        Compression.ZSTD: subprocess.run(
            ["zstd", "-q", "-c"], input=BASIC, capture_output=True, check=True
        ).stdout,
    }[compression]
    root = extracted(tmp_path, BASIC, compression, raw)
    deleted = (root / "etc/deleted").lstat()
    assert stat.S_ISCHR(deleted.st_mode) and deleted.st_rdev == os.makedev(0, 0)
    assert os.getxattr(root / "data", OPAQUE_XATTR) == b"y"
    assert (root / "data/new").read_text() == "n" and not (root / "data/.wh..wh..opq").exists()
    assert (root / "bin/ash").stat().st_ino == (root / "bin/sh").stat().st_ino
    assert os.readlink(root / "bin/busybox") == "sh"
    assert not (root / ".wh..wh.plnk").exists()  # aufs bookkeeping, left out


def test_every_media_type_names_its_compression() -> None:
    assert set(LAYER_COMPRESSION.values()) == {Compression.NONE, Compression.GZIP, Compression.ZSTD}


def test_a_layer_whose_content_is_not_its_diff_id_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(LayerError, match="not the config's diff ID"):
        extract_layer(io.BytesIO(BASIC), Compression.NONE, diff_id(b"other"), root)


@pytest.mark.parametrize(
    ("entries", "names"),
    [
        ([("../escape", "file", "x")], "'..' component"),
        ([("/etc/passwd", "file", "x")], "absolute path"),
        ([("a", "symlink", "/"), ("a/etc-passwd", "file", "x")], "through"),
        ([("etc", "dir", ""), ("etc/.wh..", "file", "")], "whiteout of no name"),
        ([("etc", "dir", ""), ("etc/.wh.", "file", "")], "whiteout of no name"),
        ([("x", "file", "1"), ("x", "file", "2")], "appears twice"),
        ([("etc", "dir", ""), ("etc/f", "file", "x"), ("etc/.wh.f", "file", "")], "etc/f"),
    ],
)
def test_unsafe_entries_are_refused(
    tmp_path: Path, entries: list[tuple[str, str, str]], names: str
) -> None:
    with pytest.raises(Exception) as refused:
        extracted(tmp_path, layer(*entries))
    assert names in str(refused.value)
    assert "\n" not in str(refused.value)


def test_an_image_cannot_bring_its_own_overlay_attributes(tmp_path: Path) -> None:
    sneaky = layer(
        ("d", "dir", ""), ("d/f", "file", "x"), pax={"SCHILY.xattr.trusted.overlay.opaque": "y"}
    )
    with pytest.raises(Exception, match="trusted"):
        extracted(tmp_path, sneaky)


MISSING = [t for t in missing_tools() if t == "umoci"]


@pytest.mark.skipif(bool(MISSING), reason="needs umoci (make deps)")
def test_the_layers_of_a_real_image_stack_into_its_root(tmp_path: Path) -> None:
    layout = build_busybox_layout(tmp_path / "layout")
    lowers = []
    with open_archive(layout) as archive:
        image = archive.resolve(Platform("linux", "amd64"))
        for i, (descriptor, diff) in enumerate(
            zip(image.manifest.layers, image.config.diff_ids, strict=True)
        ):
            blob = io.BytesIO()
            archive.blob(descriptor, blob)
            blob.seek(0)
            root = tmp_path / f"layer{i}"
            root.mkdir()
            extract_layer(blob, LAYER_COMPRESSION[descriptor.media_type], diff, root)
            lowers.append(root)
    merged = tmp_path / "merged"
    merged.mkdir()
    lowerdir = ":".join(str(p) for p in reversed(lowers))  # the top layer first
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lowerdir}", str(merged)], check=True
    )
    try:
        assert (merged / "www/index.html").read_text() == "hello from an OCI image\n"
        assert not (merged / "etc/deleted").exists()  # removed by the second layer
        assert sorted(p.name for p in (merged / "data").iterdir()) == [
            "newest"
        ]  # opaque in the third
        assert os.access(merged / "bin/busybox", os.X_OK)
    finally:
        subprocess.run(["umount", str(merged)], check=True)
