"""Data disks on loop devices: found by path, label and UUID; formatted only when empty (or
forced); grown; mounted; and the bad cases reported clearly."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kurmad.host import disks
from kurmad.host.mounts import mounted
from kurmad.host.sections import DiskConfig, DiskMatch
from kurmad.linux import syscalls as sc

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/loop-control"),
    reason="needs root and loop devices (/dev/loop-control)",
)
MIB = 2**20


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A 64 MiB disk on a loop device, and its backing file."""
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(64 * MIB)
    device = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True,
                            text=True, check=True).stdout.strip()  # fmt: skip
    mountpoint = tmp_path / "mnt"
    try:
        yield device, mountpoint
    finally:
        if mounted(str(mountpoint)):
            sc.umount(str(mountpoint), sc.MNT_DETACH)
        subprocess.run(["losetup", "-d", device], check=False)


def entry(value: dict[str, Any]) -> DiskConfig:
    """A disk as the boot config gives it."""
    return DiskConfig.from_json(value, "disks[0]")


def mkfs(device: str, label: str) -> None:
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", label, device], check=True)


def put_marker(device: str, mountpoint: Path) -> None:
    mountpoint.mkdir(exist_ok=True)
    sc.mount(device, str(mountpoint), "ext4")
    (mountpoint / "marker").write_text("keep me")
    sc.umount(str(mountpoint))


def unique_label() -> str:
    return f"KT{uuid.uuid4().hex[:8].upper()}"


def test_an_empty_disk_is_formatted_labelled_and_mounted(loop: tuple[str, Path]) -> None:
    device, mountpoint = loop
    label = unique_label()
    disk, line = disks.prepare(entry({"match": {"path": device}, "format": True, "label": label,
                                      "mount": str(mountpoint)}))  # fmt: skip
    assert (disk.fstype, disk.label) == ("ext4", label)
    assert line == f"{device} ({label}): formatted, mounted on {mountpoint}"
    assert mounted(str(mountpoint))
    (mountpoint / "written").write_text("state")  # writable


def test_a_disk_with_a_filesystem_is_never_formatted_unless_forced(loop: tuple[str, Path]) -> None:
    device, mountpoint = loop
    label = unique_label()
    mkfs(device, label)
    put_marker(device, mountpoint)
    _, line = disks.prepare(
        entry({"match": {"label": label}, "format": True, "mount": str(mountpoint)})
    )
    assert "formatted" not in line
    assert (mountpoint / "marker").read_text() == "keep me"
    sc.umount(str(mountpoint))
    _, line = disks.prepare(
        entry({"match": {"path": device}, "format": "force", "mount": str(mountpoint)})
    )
    assert "formatted" in line
    assert not (mountpoint / "marker").exists()


def test_a_foreign_filesystem_is_kept_and_its_mount_failure_named(loop: tuple[str, Path]) -> None:
    device, mountpoint = loop
    subprocess.run(["mkswap", device], check=True, capture_output=True)
    with pytest.raises(disks.DiskError, match=rf"cannot mount {device} \(swap\) on {mountpoint}"):
        disks.prepare(entry({"match": {"path": device}, "format": True, "mount": str(mountpoint)}))
    assert disks.probe(device).fstype == "swap"  # not formatted


def test_found_by_uuid_and_mounted_only_once(loop: tuple[str, Path]) -> None:
    device, mountpoint = loop
    mkfs(device, unique_label())
    found = disks.probe(device)
    first = disks.prepare(entry({"match": {"uuid": found.uuid}, "mount": str(mountpoint)}))
    again = disks.prepare(entry({"match": {"uuid": found.uuid}, "mount": str(mountpoint)}))
    assert first[0].device == device
    assert first[1].endswith(f"mounted on {mountpoint}")
    assert again[1].endswith(f"already mounted on {mountpoint}")  # a restarted kurmad boot


def test_grow_fills_an_enlarged_disk(loop: tuple[str, Path], tmp_path: Path) -> None:
    device, mountpoint = loop
    mkfs(device, unique_label())
    with open(tmp_path / "disk.img", "r+b") as f:
        f.truncate(160 * MIB)
    subprocess.run(["losetup", "-c", device], check=True)
    _, line = disks.prepare(
        entry({"match": {"path": device}, "grow": True, "mount": str(mountpoint)})
    )
    assert line.endswith("grown, mounted on " + str(mountpoint))
    stat = os.statvfs(mountpoint)
    assert stat.f_blocks * stat.f_frsize > 120 * MIB


def test_an_empty_disk_without_format_is_an_error(loop: tuple[str, Path]) -> None:
    device, mountpoint = loop
    with pytest.raises(
        disks.DiskError, match="has no filesystem \\(set format: true to make one\\)"
    ):
        disks.prepare(entry({"match": {"path": device}, "mount": str(mountpoint)}))
    assert not mounted(str(mountpoint))


def test_an_absent_disk_is_named() -> None:
    with pytest.raises(disks.DiskError, match="no disk with label=KURMA_NO_SUCH_DISK"):
        disks.find(DiskMatch("label", "KURMA_NO_SUCH_DISK"), wait=0.2)
    with pytest.raises(disks.DiskError, match="no disk with path=/dev/kurma-absent"):
        disks.find(DiskMatch("path", "/dev/kurma-absent"), wait=0.0)
