"""cgroupfs, v1 and v2 alike: a pod's and its apps' control groups, their limits, the devices
they may use, and their processes. Hybrid hosts (v1 controllers plus a cgroup2 mount) are
common: each controller is used wherever this host has it."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from . import bpf

CONTROLLERS = ("memory", "cpu", "pids", "io", "devices")
# v1 names the block I/O controller blkio
_V1_NAMES = {"io": "blkio"}
# cgroup2 has no devices controller: a BPF program on the cgroup's directory does its work, so
# any cgroup2 hierarchy has it and nothing is enabled in cgroup.subtree_control for it
_V2_PROGRAMS = frozenset({"devices"})
CPU_PERIOD_US = 100_000
_MAX_MAJOR = 2**12 - 1  # a dev_t has 12 bits of major and 20 of minor
_MAX_MINOR = 2**20 - 1


class CgroupError(OSError):
    pass


@dataclass(frozen=True)
class DeviceRule:
    """One entry of a device allow-list, as cgroup v1's devices.allow takes it: ``kind`` c
    (character), b (block) or a (every device, with any access); ``major`` and ``minor``,
    None for any; ``access``, some of r (read), w (write) and m (mknod)."""

    kind: str
    major: int | None
    minor: int | None
    access: str

    def __post_init__(self) -> None:
        if self.kind not in ("c", "b", "a"):
            raise ValueError(f"device kind {self.kind!r}: not c, b or a")
        if self.kind == "a" and (self.major, self.minor, self.access) != (None, None, "rwm"):
            raise ValueError("device kind 'a' means every device with any access: *:* rwm")
        _check_device_number("major", self.major, _MAX_MAJOR)
        _check_device_number("minor", self.minor, _MAX_MINOR)
        if not _is_access(self.access):
            raise ValueError(f"device access {self.access!r}: not some of r, w and m, each once")

    @classmethod
    def from_text(cls, text: str) -> DeviceRule:
        """``c 1:3 rwm``, ``c 136:* rw``, ``a`` (as devices.list and devices.allow write them)."""
        parts = text.split()
        if parts in (["a"], ["a", "*:*", "rwm"]):
            return cls("a", None, None, "rwm")
        if len(parts) != 3:
            raise ValueError(f"device rule {text!r}: not KIND MAJOR:MINOR ACCESS")
        kind, numbers, access = parts
        major, colon, minor = numbers.partition(":")
        if not colon:
            raise ValueError(f"device rule {text!r}: {numbers!r} is not MAJOR:MINOR")
        try:
            return cls(kind, _device_number(major), _device_number(minor), access)
        except ValueError as err:
            raise ValueError(f"device rule {text!r}: {err}") from None

    def to_text(self) -> str:
        if self.kind == "a":
            return "a *:* rwm"
        major = "*" if self.major is None else str(self.major)
        minor = "*" if self.minor is None else str(self.minor)
        access = "".join(a for a in "rwm" if a in self.access)  # as devices.list shows it
        return f"{self.kind} {major}:{minor} {access}"


def _is_access(access: object) -> bool:
    return (
        isinstance(access, str)
        and bool(access)
        and set(access) <= set("rwm")
        and len(set(access)) == len(access)
    )


def _check_device_number(what: str, number: object, highest: int) -> None:
    if number is None:
        return
    if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number <= highest:
        raise ValueError(f"device {what} {number!r}: not a number from 0 to {highest}")


def _device_number(text: str) -> int | None:
    if text == "*":
        return None
    if not text.isdigit() or not text.isascii():
        raise ValueError(f"device number {text!r}: not a number or *")
    return int(text)


# What runc lets every container have: the null, zero, full, random and urandom devices, tty,
# console, ptmx and the pseudo-terminals.
DEFAULT_DEVICES: tuple[DeviceRule, ...] = tuple(
    DeviceRule.from_text(text)
    for text in (
        "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm", "c 5:0 rwm",
        "c 5:1 rwm", "c 5:2 rwm", "c 136:* rwm",
    )
)  # fmt: skip


@dataclass(frozen=True)
class Hierarchy:
    mount: Path
    version: int
    controllers: frozenset[str]


def discover(mountinfo: str = "/proc/self/mountinfo") -> list[Hierarchy]:
    """The cgroup hierarchies mounted in this mount namespace."""
    found = []
    with open(mountinfo) as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rest = left.split(), right.split()
            if not rest or rest[0] not in ("cgroup", "cgroup2"):
                continue
            mount = Path(fields[4])
            if rest[0] == "cgroup2":
                controllers = _read(mount / "cgroup.controllers").split()
                found.append(Hierarchy(mount, 2, frozenset(controllers)))
            else:
                options = rest[2].split(",") if len(rest) > 2 else []
                found.append(Hierarchy(mount, 1, frozenset(o for o in options if o in _v1_known())))
    return found


def _v1_known() -> set[str]:
    return {"memory", "cpu", "cpuacct", "pids", "blkio", "cpuset", "devices", "freezer"}


def own_cgroups(path: str = "/proc/self/cgroup") -> dict[str, str]:
    """This process's cgroup per v1 controller name, and under "" its cgroup2 path."""
    out: dict[str, str] = {}
    with open(path) as f:
        for line in f:
            _, names, cgroup = line.rstrip("\n").split(":", 2)
            for name in names.split(",") if names else [""]:
                out[name] = cgroup
    return out


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as err:
        raise CgroupError(err.errno, f"cannot write {value!r} to {path}: {err.strerror}") from None


@dataclass
class Cgroup:
    """One control group, present in every hierarchy that has a controller kurmad uses."""

    relative: str
    dirs: dict[str, Path]  # controller -> directory of this cgroup
    version: dict[str, int]

    def _dir(self, controller: str) -> Path | None:
        return self.dirs.get(controller)

    @property
    def all_dirs(self) -> list[Path]:
        return sorted(set(self.dirs.values()))

    def child(self, name: str) -> Cgroup:
        return Cgroup(
            f"{self.relative}/{name}",
            {c: d / name for c, d in self.dirs.items()},
            dict(self.version),
        )

    # -- limits ------------------------------------------------------------------------------

    def set_memory_limit(self, limit: int) -> bool:
        directory = self._dir("memory")
        if directory is None:
            return False
        if self.version["memory"] == 1:
            _write(directory / "memory.limit_in_bytes", str(limit))
            swap = directory / "memory.memsw.limit_in_bytes"
            if swap.exists():  # no swapping past the limit either
                _write(swap, str(limit))
        else:
            _write(directory / "memory.max", str(limit))
            if (directory / "memory.swap.max").exists():
                _write(directory / "memory.swap.max", "0")
        return True

    def set_cpu(self, limit_millicores: int | None = None, shares: int | None = None) -> bool:
        directory = self._dir("cpu")
        if directory is None:
            return False
        quota = (
            None
            if limit_millicores is None
            else max(1000, limit_millicores * CPU_PERIOD_US // 1000)
        )
        if self.version["cpu"] == 1:
            if quota is not None:
                _write(directory / "cpu.cfs_period_us", str(CPU_PERIOD_US))
                _write(directory / "cpu.cfs_quota_us", str(quota))
            if shares is not None:
                _write(directory / "cpu.shares", str(shares))
        else:
            if quota is not None:
                _write(directory / "cpu.max", f"{quota} {CPU_PERIOD_US}")
            if shares is not None:
                _write(directory / "cpu.weight", str(shares_to_weight(shares)))
        return True

    def set_pids_limit(self, limit: int) -> bool:
        directory = self._dir("pids")
        if directory is None:
            return False
        _write(directory / "pids.max", str(limit))
        return True

    def set_io_limits(self, devices: Iterable[str], bps: int | None, iops: int | None) -> bool:
        """Throttle reads and writes on every block device ``MAJ:MIN`` given."""
        directory = self._dir("io")
        if directory is None:
            return False
        for device in devices:
            if self.version["io"] == 1:
                for kind, value in (("bps", bps), ("iops", iops)):
                    if value is not None:
                        _write(
                            directory / f"blkio.throttle.read_{kind}_device", f"{device} {value}"
                        )
                        _write(
                            directory / f"blkio.throttle.write_{kind}_device", f"{device} {value}"
                        )
            else:
                parts = [
                    f"rbps={bps} wbps={bps}" if bps is not None else "",
                    f"riops={iops} wiops={iops}" if iops is not None else "",
                ]
                _write(directory / "io.max", f"{device} {' '.join(p for p in parts if p)}")
        return True

    def set_devices(self, rules: Iterable[DeviceRule]) -> bool:
        """Deny every device, then allow exactly ``rules``: the devices controller on v1, a
        device program on the cgroup2 directory otherwise. On v1 a child cannot allow what
        its parent denies, and starts with its parent's list."""
        directory = self._dir("devices")
        if directory is None:
            return False
        rules = tuple(rules)
        if self.version["devices"] == 1:
            _set_v1_devices(directory, rules)
        else:
            try:
                bpf.attach_device_program(directory, rules)
            except OSError as err:
                raise CgroupError(
                    err.errno, f"cannot set the devices of {directory}: {err.strerror}"
                ) from None
        return True

    # -- processes ---------------------------------------------------------------------------

    def attach(self, pid: int) -> None:
        """Move ``pid`` (as this process's PID namespace sees it) into this cgroup."""
        for directory in self.all_dirs:
            _write(directory / "cgroup.procs", str(pid))

    def pids(self) -> set[int]:
        found: set[int] = set()
        for directory in self.all_dirs:
            for current, _, files in os.walk(directory):
                if "cgroup.procs" in files:
                    found.update(int(p) for p in _read(Path(current, "cgroup.procs")).split())
        return found

    def kill(self) -> None:
        """SIGKILL every process in this cgroup and below."""
        for directory in self.all_dirs:
            kill_file = directory / "cgroup.kill"
            if kill_file.exists():
                _write(kill_file, "1")
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def remove(self, timeout: float = 2.0) -> None:
        """Remove this cgroup and its children, killing what is left in them."""
        deadline = time.monotonic() + timeout
        for directory in self.all_dirs:
            for current, subdirs, _ in sorted(os.walk(directory), key=lambda w: -len(w[0])):
                del subdirs
                self._rmdir(Path(current), deadline)

    def _rmdir(self, directory: Path, deadline: float) -> None:
        while True:
            try:
                directory.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError as err:
                if err.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise CgroupError(
                        err.errno, f"cannot remove {directory}: {err.strerror}"
                    ) from None
                self.kill()
                time.sleep(0.01)


def _set_v1_devices(directory: Path, rules: tuple[DeviceRule, ...]) -> None:
    deny = directory / "devices.deny"
    wanted = [rule.to_text() for rule in rules]
    try:
        _write(deny, "a")
    except CgroupError as err:
        if err.errno != errno.EINVAL:
            raise
        # a cgroup with children may not switch to deny-all; one that denies already can drop
        # the entries it no longer wants one by one (its children lose them too)
        current = _read(directory / "devices.list").splitlines()
        if "a *:* rwm" in current:
            raise CgroupError(
                errno.EBUSY,
                f"cannot deny every device in {directory}: set its devices before its children",
            ) from None
        for line in current:
            if line not in wanted:
                _write(deny, line)
    for text in wanted:
        try:
            _write(directory / "devices.allow", text)
        except CgroupError as err:
            if err.errno != errno.EPERM:
                raise
            raise CgroupError(
                err.errno, f"cannot allow {text} in {directory}: its parent denies it"
            ) from None


def shares_to_weight(shares: int) -> int:
    """cgroup v1 cpu.shares (2..262144) to v2 cpu.weight (1..10000), as runc converts them."""
    return 1 + ((max(2, min(shares, 262144)) - 2) * 9999) // 262142


def millicores_to_shares(millicores: int) -> int:
    return max(2, min(262144, millicores * 1024 // 1000))


@dataclass
class CgroupDriver:
    """Creates cgroups under one parent, explicitly set: an absolute path in every hierarchy,
    or a name under this process's own cgroup (delegation-friendly; the default)."""

    parent: str = "kurmad"
    hierarchies: list[Hierarchy] = field(default_factory=discover)

    def __post_init__(self) -> None:
        # controller -> (hierarchy mount, directory of the parent, cgroup version)
        self._roots: dict[str, tuple[Path, Path, int]] = {}
        own = own_cgroups()
        for controller in CONTROLLERS:
            found = self._hierarchy_for(controller)
            if found is None:
                continue
            key = _V1_NAMES.get(controller, controller) if found.version == 1 else ""
            base = (
                self.parent
                if self.parent.startswith("/")
                else f"{own.get(key, '/').rstrip('/')}/{self.parent}"
            )
            self._roots[controller] = (found.mount, found.mount / base.lstrip("/"), found.version)

    def _hierarchy_for(self, controller: str) -> Hierarchy | None:
        v1_name = _V1_NAMES.get(controller, controller)
        for h in self.hierarchies:
            if h.version == 1 and v1_name in h.controllers:
                return h
        for h in self.hierarchies:
            if h.version == 2 and (controller in h.controllers or controller in _V2_PROGRAMS):
                return h
        return None

    @property
    def controllers(self) -> list[str]:
        return sorted(self._roots)

    def cgroup(self, relative: str) -> Cgroup:
        """The cgroup at ``relative`` below the parent (not created)."""
        return Cgroup(
            relative,
            {c: base / relative for c, (_, base, _) in self._roots.items()},
            {c: version for c, (_, _, version) in self._roots.items()},
        )

    def create(self, relative: str) -> Cgroup:
        """Create ``relative`` (and the parent) in every hierarchy; on cgroup2, enable the
        controllers kurmad uses on every level from the mount down."""
        for controller, (mount, base, version) in self._roots.items():
            target = base / relative
            if version == 2 and controller not in _V2_PROGRAMS:
                self._enable_down_to(mount, target, controller)
            target.mkdir(parents=True, exist_ok=True)
        return self.cgroup(relative)

    @staticmethod
    def _enable_down_to(mount: Path, target: Path, controller: str) -> None:
        levels = [
            mount,
            *(
                mount / Path(*target.relative_to(mount).parts[:n])
                for n in range(1, len(target.relative_to(mount).parts))
            ),
        ]
        for directory in levels:
            directory.mkdir(exist_ok=True)
            if controller in _read(directory / "cgroup.subtree_control").split():
                continue
            try:
                (directory / "cgroup.subtree_control").write_text(f"+{controller}")
            except OSError as err:
                hint = (
                    " (it holds processes: give kurmad a parent outside its own cgroup)"
                    if err.errno == errno.EBUSY
                    else ""
                )
                raise CgroupError(
                    err.errno, f"cannot enable {controller} below {directory}: {err.strerror}{hint}"
                ) from None
