"""Data disks: found by LABEL, UUID or path, formatted when asked and empty (never when they
hold a filesystem, unless ``format: force``), grown, mounted. ``blkid``, ``mkfs.ext4`` and
``resize2fs`` are the real programs for the parts that are no business of Python."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from kurmad.linux import syscalls as sc

from .mounts import mounted
from .sections import DiskConfig, DiskMatch


class DiskError(Exception):
    pass


class DiskAbsent(DiskError):
    """No disk matches; an ``optional: true`` entry is then simply skipped."""


@dataclass(frozen=True)
class Disk:
    device: str
    label: str = ""
    uuid: str = ""
    fstype: str = ""


def _run(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise DiskError(f"{argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise DiskError(f"{argv[0]} took more than {timeout:.0f}s") from None


def block_devices(sys_block: Path = Path("/sys/block")) -> list[str]:
    """Every disk and partition, as /dev paths (loop devices only when attached to a file)."""
    devices = []
    for disk in sorted(sys_block.iterdir()) if sys_block.exists() else []:
        if disk.name.startswith(("ram", "zram")):
            continue
        if disk.name.startswith("loop") and not (disk / "loop" / "backing_file").exists():
            continue
        devices.append(f"/dev/{disk.name}")
        devices.extend(
            f"/dev/{p.name}" for p in sorted(disk.iterdir()) if (p / "partition").exists()
        )
    return devices


def probe(device: str) -> Disk:
    """What blkid reads on ``device`` (no filesystem: empty fields)."""
    result = _run("blkid", "-p", "-o", "export", device)
    if result.returncode == 2:
        return Disk(device)
    if result.returncode != 0:
        raise DiskError(f"blkid {device}: {result.stderr.strip() or 'failed'}")
    values = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    fstype = values.get("TYPE", "") or ("partitioned" if values.get("PTTYPE") else "")
    return Disk(device, values.get("LABEL", ""), values.get("UUID", ""), fstype)


def find(match: DiskMatch, wait: float = 5.0) -> Disk:
    """The disk a config entry names; waits a little for it to appear (udev-less boot). Its
    absence is reported with what was seen instead."""
    deadline = time.monotonic() + wait
    while True:
        found, seen = _find_once(match)
        if found is not None:
            return found
        if time.monotonic() >= deadline:
            raise DiskAbsent(f"no disk with {match} (seen: {'; '.join(seen) or 'no disks'})")
        time.sleep(0.2)


def _find_once(match: DiskMatch) -> tuple[Disk | None, list[str]]:
    if match.by == "path":
        return (probe(match.value) if os.path.exists(match.value) else None), []
    seen = []
    for device in block_devices():
        try:
            disk = probe(device)
        except DiskError as err:
            seen.append(str(err))
            continue
        if (disk.label if match.by == "label" else disk.uuid) == match.value:
            return disk, seen
        seen.append(f"{device} {disk.fstype or 'empty'}{' ' + disk.label if disk.label else ''}")
    return None, seen


def prepare(entry: DiskConfig) -> tuple[Disk, str]:
    """Find, maybe format, mount and maybe grow the disk of one config entry; return the disk
    and a line for the boot report."""
    # Coldplug has loaded the drivers by now; a required disk still gets a moment to show up.
    disk = find(entry.match, wait=entry.wait_seconds)
    done = []
    if entry.format == "force" or (entry.format is True and not disk.fstype):
        label = entry.filesystem_label
        result = _run("mkfs.ext4", "-q", "-F", *(["-L", label] if label else []), disk.device)
        if result.returncode != 0:
            raise DiskError(f"mkfs.ext4 {disk.device}: {result.stderr.strip()}")
        disk = probe(disk.device)
        done.append("formatted")
    elif entry.format is True and disk.fstype and disk.fstype != "ext4":
        done.append(f"kept its {disk.fstype} filesystem (not formatting a disk that has one)")
    if not disk.fstype:
        raise DiskError(f"{disk.device} has no filesystem (set format: true to make one)")
    mountpoint = entry.mount
    if mountpoint and mounted(mountpoint):
        done.append(f"already mounted on {mountpoint}")  # a restarted kurmad boot
        return disk, _line(disk, done)
    if entry.grow:
        done.append(grow(disk))
    if mountpoint:
        os.makedirs(mountpoint, exist_ok=True)
        try:
            sc.mount(disk.device, mountpoint, disk.fstype, sc.MS_NOATIME)
        except OSError as err:
            raise DiskError(
                f"cannot mount {disk.device} ({disk.fstype}) on {mountpoint}: {err.strerror}"
            ) from None
        done.append(f"mounted on {mountpoint}")
    return disk, _line(disk, done)


def grow(disk: Disk) -> str:
    """Fill the device, offline: online growth needs CAP_SYS_RESOURCE, which a container host
    may not give, and the unmounted filesystem must be checked first."""
    if disk.fstype != "ext4":
        raise DiskError(f"{disk.device}: only ext4 can be grown, not {disk.fstype}")
    check = _run("e2fsck", "-f", "-p", disk.device)
    if check.returncode not in (0, 1):  # 1: errors found and fixed
        raise DiskError(f"e2fsck {disk.device}: {check.stderr.strip() or check.stdout.strip()}")
    result = _run("resize2fs", disk.device)
    if result.returncode != 0:
        raise DiskError(f"resize2fs {disk.device}: {result.stderr.strip()}")
    return "grown"


def _line(disk: Disk, done: list[str]) -> str:
    return f"{disk.device} ({disk.label or disk.uuid}): {', '.join(done) or 'found'}"
