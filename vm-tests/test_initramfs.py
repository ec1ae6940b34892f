"""The initramfs itself: reproducible, within its size budget, and holding what a boot needs."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path

import zstandard
from vmkit import BUILD, INITRAMFS, REPO

# The budget of the density issue (32 MB): the cryptography package that certificates and
# (later) signatures need brought the image from 23.5 to about 27 MiB.
MAX_BYTES = 32 * 10**6


def cpio_members(data: bytes) -> dict[str, tuple[int, bytes]]:
    """name -> (mode, contents) of a newc archive."""
    members, offset = {}, 0
    while True:
        header = data[offset : offset + 110]
        assert header[:6] == b"070701", f"bad magic at {offset}"
        fields = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        mode, size, name_size = fields[1], fields[6], fields[11]
        name_start = offset + 110
        name = data[name_start : name_start + name_size - 1].decode()
        body = name_start + name_size + (-(110 + name_size) % 4)
        if name == "TRAILER!!!":
            return members
        members[name] = (mode, data[body : body + size])
        offset = body + size + (-size % 4)


def test_the_same_inputs_give_the_same_bytes(tmp_path: Path) -> None:
    (tmp_path / "debs").symlink_to(BUILD / "debs")  # the same packages, no second download
    env = {**os.environ, "SOURCE_DATE_EPOCH": os.environ.get("SOURCE_DATE_EPOCH", "0")}
    subprocess.run([sys.executable, "-m", "initrd.build", "--build", str(tmp_path)], cwd=REPO,
                   check=True, env=env, capture_output=True)  # fmt: skip
    again = (tmp_path / "initramfs.cpio.zst").read_bytes()
    assert hashlib.sha256(again).hexdigest() == hashlib.sha256(INITRAMFS.read_bytes()).hexdigest()


def test_it_fits_the_budget_and_holds_what_a_boot_needs() -> None:
    packed = INITRAMFS.read_bytes()
    assert len(packed) <= MAX_BYTES
    data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(packed)).read()
    members = cpio_members(data)
    assert members["init"][1].startswith(b"#!/usr/bin/python3.11")
    assert members["dev/console"][0] == 0o20600 and members["dev/urandom"][0] == 0o20666
    assert "etc/kurma.yml" in members and "usr/sbin/mke2fs" in members
    modules = [n for n in members if n.startswith("usr/lib/modules/") and n.endswith(".ko")]
    assert {Path(n).name for n in modules} >= {"virtio_pci.ko", "virtio_net.ko", "virtio_blk.ko",
                                               "overlay.ko", "veth.ko", "bridge.ko"}  # fmt: skip
    alias = next(v for n, v in members.items() if n.endswith("/modules.alias"))[1].decode()
    assert "virtio:d00000002v* virtio_blk" in alias.replace("alias ", "")
    images = sorted(n.rsplit("/", 1)[1] for n in members if n.startswith("usr/share/kurma/images/"))
    assert images == ["busybox.aci", "console.aci", "ntp.aci"]
    assert {m for m in members if m.startswith("usr/lib/python")} >= {
        "usr/lib/python311.zip", "usr/lib/python3/kurmad-packages.zip"}  # fmt: skip
