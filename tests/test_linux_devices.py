"""Device access control in cgroups: the allow-list syntax, then as root the v1 devices
controller and the cgroup2 device program, each shown on a loop device that a process in the
cgroup can neither make a node for nor open (unless a rule lets it)."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import struct
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kurmad.linux import bpf
from kurmad.linux import syscalls as sc
from kurmad.linux.cgroups import (
    DEFAULT_DEVICES,
    CgroupDriver,
    CgroupError,
    DeviceRule,
    Hierarchy,
    discover,
)

from .forked import outcomes_in_child

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="makes cgroups and loop devices: needs root"
)

# --- the rules ---------------------------------------------------------------------------------


def test_rules_read_and_write_the_v1_syntax() -> None:
    for text in ("c 1:3 rwm", "b 7:0 rw", "c 136:* rwm", "b *:* m", "c *:5 r", "a *:* rwm"):
        assert DeviceRule.from_text(text).to_text() == text
    assert DeviceRule.from_text("c 1:3 rwm") == DeviceRule("c", 1, 3, "rwm")
    assert DeviceRule.from_text("c 136:* rw") == DeviceRule("c", 136, None, "rw")
    assert DeviceRule.from_text("a") == DeviceRule("a", None, None, "rwm")
    assert DeviceRule.from_text("  b 7:1   r ") == DeviceRule("b", 7, 1, "r")
    assert DeviceRule("c", 1, 3, "mwr").to_text() == "c 1:3 rwm", "in the kernel's order"


def test_the_default_devices_are_runcs() -> None:
    assert [r.to_text() for r in DEFAULT_DEVICES] == [
        "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm", "c 5:0 rwm",
        "c 5:1 rwm", "c 5:2 rwm", "c 136:* rwm",
    ]  # fmt: skip
    assert not any(r.kind == "b" for r in DEFAULT_DEVICES), "no block device at all"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x 1:3 rwm", "device kind 'x': not c, b or a"),
        ("c 1:3", "not KIND MAJOR:MINOR ACCESS"),
        ("c 1:3 rwm extra", "not KIND MAJOR:MINOR ACCESS"),
        ("", "not KIND MAJOR:MINOR ACCESS"),
        ("c 1-3 rwm", "'1-3' is not MAJOR:MINOR"),
        ("c a:3 rwm", "device number 'a': not a number or \\*"),
        ("c 1:-3 rwm", "device number '-3'"),
        ("c 4096:0 r", "device major 4096: not a number from 0 to 4095"),
        ("c 1:1048576 r", "device minor 1048576: not a number from 0 to 1048575"),
        ("c 1:3 rwx", "device access 'rwx': not some of r, w and m"),
        ("c 1:3 rr", "device access 'rr'"),
        ("a 1:3 r", "kind 'a' means every device"),
        ("a *:* r", "kind 'a' means every device"),
    ],
)
def test_bad_rules_are_refused_naming_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        DeviceRule.from_text(text)
    if text:
        assert repr(text) in str(caught.value) or "kind" in str(caught.value)


def test_bad_fields_are_refused_when_built_directly() -> None:
    with pytest.raises(ValueError, match="device major -1"):
        DeviceRule("c", -1, 3, "r")
    with pytest.raises(ValueError, match="device minor True"):
        DeviceRule("c", 1, True, "r")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="device access ''"):
        DeviceRule("c", 1, 3, "")
    with pytest.raises(ValueError, match="device kind 'char'"):
        DeviceRule("char", 1, 3, "r")


def test_the_program_grows_with_the_rules_only() -> None:
    assert len(bpf.device_program([])) == 8 * 8, "loads, then deny"
    many = [DeviceRule("c", 1, n, "rw") for n in range(500)]
    assert len(bpf.device_program(many)) // 8 == 8 + 500 * 8


# --- the kernel enforces them (root) ----------------------------------------------------------


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[Path]:
    """A loop device over a small file, detached again at the end."""
    backing = tmp_path / "disk.img"
    backing.write_bytes(b"\0" * 2**20)
    found = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], capture_output=True, text=True, check=True
    )
    device = Path(found.stdout.strip())
    try:
        yield device
    finally:
        subprocess.run(["losetup", "--detach", str(device)], check=True)
        backing.unlink()


@pytest.fixture
def v1_devices(tmp_path: Path) -> Iterator[Hierarchy]:
    """The v1 devices hierarchy: the host's, or one mounted here (a cgroup2-only host still
    has the controller for a v1 mount)."""
    found = [h for h in discover() if h.version == 1 and "devices" in h.controllers]
    if found:
        yield found[0]
        return
    mount = tmp_path / "devices"
    mount.mkdir()
    sc.mount("cgroup", mount, "cgroup", 0, "devices")
    try:
        yield Hierarchy(mount, 1, frozenset({"devices"}))
    finally:
        sc.umount(mount, sc.MNT_DETACH)


@pytest.fixture
def cgroup2(tmp_path: Path) -> Iterator[Hierarchy]:
    """The cgroup2 hierarchy: the host's mount, or one mounted here (a v1-only host)."""
    found = [h for h in discover() if h.version == 2]
    if found:
        yield Hierarchy(found[0].mount, 2, frozenset())  # the devices program only
        return
    mount = tmp_path / "unified"
    mount.mkdir()
    sc.mount("cgroup2", mount, "cgroup2", 0)
    try:
        yield Hierarchy(mount, 2, frozenset())
    finally:
        sc.umount(mount, sc.MNT_DETACH)


@contextlib.contextmanager
def driver_on(hierarchy: Hierarchy) -> Iterator[CgroupDriver]:
    driver = CgroupDriver(f"/kurmad-test-devices-{os.getpid()}", hierarchies=[hierarchy])
    assert driver.controllers == ["devices"]
    try:
        yield driver
    finally:
        driver.cgroup("").remove()
        assert not (hierarchy.mount / driver.parent.lstrip("/")).exists()


def tries(loop: Path, scratch: Path) -> dict[str, Callable[[], object]]:
    numbers = loop.stat().st_rdev
    return {
        "open /dev/null": lambda: os.close(os.open("/dev/null", os.O_RDWR)),
        "read /dev/zero": lambda: _read_one("/dev/zero"),
        "mknod block": lambda: _mknod_and_remove(scratch / "disk", stat.S_IFBLK, numbers),
        "open loop": lambda: _read_one(str(loop)),
        "open loop-control": lambda: os.close(os.open("/dev/loop-control", os.O_RDWR)),
    }


def _mknod_and_remove(path: Path, kind: int, numbers: int) -> None:
    os.mknod(path, kind | 0o600, numbers)
    path.unlink()


def _read_one(path: str) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        assert len(os.read(fd, 1)) == 1
    finally:
        os.close(fd)


def inside(procs: list[Path], attempts: dict[str, Callable[[], object]]) -> dict[str, str]:
    """Fork a child into the cgroups whose cgroup.procs are given; it makes each attempt:
    "ok", or the errno name it failed with."""

    def join() -> None:
        for path in procs:
            path.write_text(str(os.getpid()))

    return outcomes_in_child(join, attempts)


def assert_confined(results: dict[str, str]) -> None:
    assert "child" not in results, results
    assert results["open /dev/null"] == "ok"
    assert results["read /dev/zero"] == "ok"
    assert results["mknod block"] == "EPERM"
    assert results["open loop"] == "EPERM"
    assert results["open loop-control"] == "EPERM", "a character device not on the list"


def rule_for(device: Path, access: str) -> DeviceRule:
    numbers = device.stat().st_rdev
    kind = "b" if stat.S_ISBLK(device.stat().st_mode) else "c"
    return DeviceRule(kind, os.major(numbers), os.minor(numbers), access)


@needs_root
def test_outside_any_device_list_the_loop_device_is_open_to_root(
    loop_device: Path, tmp_path: Path
) -> None:
    # the control: the denials below are the cgroup's doing
    results = inside([], tries(loop_device, tmp_path))
    assert results["mknod block"] == results["open loop"] == results["open loop-control"] == "ok"


@needs_root
def test_v1_devices_controller_allows_exactly_the_list(
    v1_devices: Hierarchy, loop_device: Path, tmp_path: Path
) -> None:
    with driver_on(v1_devices) as driver:
        pod = driver.create("pod")
        assert pod.version["devices"] == 1
        assert pod.set_devices(DEFAULT_DEVICES)
        listed = (pod.dirs["devices"] / "devices.list").read_text().split("\n")
        assert set(filter(None, listed)) == {r.to_text() for r in DEFAULT_DEVICES}
        procs = [d / "cgroup.procs" for d in pod.all_dirs]
        assert_confined(inside(procs, tries(loop_device, tmp_path)))
        # setting again replaces the list: one more device, read and write but no mknod
        assert pod.set_devices((*DEFAULT_DEVICES, rule_for(loop_device, "rw")))
        results = inside(procs, tries(loop_device, tmp_path))
        assert results["open loop"] == "ok"
        assert results["mknod block"] == "EPERM"
        assert results["open loop-control"] == "EPERM"


@needs_root
def test_v1_children_inherit_and_cannot_widen(v1_devices: Hierarchy, loop_device: Path) -> None:
    with driver_on(v1_devices) as driver:
        pod = driver.create("pod")
        pod.set_devices(DEFAULT_DEVICES)
        app = driver.create("pod/app")
        inherited = (app.dirs["devices"] / "devices.list").read_text()
        assert inherited == (pod.dirs["devices"] / "devices.list").read_text()
        with pytest.raises(CgroupError, match="cannot allow b .* its parent denies it"):
            app.set_devices((*DEFAULT_DEVICES, rule_for(loop_device, "rw")))
        # a pod with children can still narrow its list, entry by entry; its children lose
        # what it drops and keep the rest
        pod.set_devices(DEFAULT_DEVICES[:-1])
        for group in (pod, app):
            listed = (group.dirs["devices"] / "devices.list").read_text().splitlines()
            assert set(listed) == {r.to_text() for r in DEFAULT_DEVICES[:-1]}


@needs_root
def test_v1_a_pod_with_children_cannot_start_denying(v1_devices: Hierarchy) -> None:
    with driver_on(v1_devices) as driver:
        driver.create("pod/app")
        with pytest.raises(CgroupError, match="set its devices before its children"):
            driver.cgroup("pod").set_devices(DEFAULT_DEVICES)


@needs_root
def test_v2_device_program_allows_exactly_the_list(
    cgroup2: Hierarchy, loop_device: Path, tmp_path: Path
) -> None:
    with driver_on(cgroup2) as driver:
        pod = driver.create("pod")
        assert pod.version["devices"] == 2
        assert pod.set_devices(DEFAULT_DEVICES)
        assert len(bpf.attached_programs(pod.dirs["devices"])) == 1
        procs = [pod.dirs["devices"] / "cgroup.procs"]
        assert_confined(inside(procs, tries(loop_device, tmp_path)))
        assert pod.set_devices((*DEFAULT_DEVICES, rule_for(loop_device, "rw")))
        assert len(bpf.attached_programs(pod.dirs["devices"])) == 1, "replaced, not added"
        results = inside(procs, tries(loop_device, tmp_path))
        assert results["open loop"] == "ok"
        assert results["mknod block"] == "EPERM", "rw, not m"
        assert results["open loop-control"] == "EPERM"


@needs_root
def test_v2_programs_of_a_pod_and_its_app_both_apply(
    cgroup2: Hierarchy, loop_device: Path, tmp_path: Path
) -> None:
    with driver_on(cgroup2) as driver:
        pod = driver.create("pod")
        pod.set_devices(DEFAULT_DEVICES)
        app = driver.create("pod/app")
        app.set_devices((*DEFAULT_DEVICES, rule_for(loop_device, "rw")))
        procs = [app.dirs["devices"] / "cgroup.procs"]
        results = inside(procs, tries(loop_device, tmp_path))
        assert results["open loop"] == "EPERM", "the pod's program still denies it"
        assert results["open /dev/null"] == "ok"


@needs_root
def test_v2_program_on_any_cgroup2_directory(
    cgroup2: Hierarchy, loop_device: Path, tmp_path: Path
) -> None:
    directory = cgroup2.mount / f"kurmad-test-devices-direct-{os.getpid()}"
    directory.mkdir()
    try:
        bpf.attach_device_program(directory, [DeviceRule.from_text("c 1:3 rw")])
        results = inside([directory / "cgroup.procs"], tries(loop_device, tmp_path))
        assert results["open /dev/null"] == "ok"
        assert results["read /dev/zero"] == "EPERM", "not listed"
        assert results["open loop"] == "EPERM"
    finally:
        directory.rmdir()


@needs_root
def test_long_lists_load_and_a_refused_program_says_why(cgroup2: Hierarchy) -> None:
    with driver_on(cgroup2) as driver:
        pod = driver.create("pod")
        assert pod.set_devices([DeviceRule("c", 1, minor, "rw") for minor in range(2000)])
    exit_without_a_verdict = struct.pack("<BBhi", 0x95, 0, 0, 0)
    with pytest.raises(OSError, match="R0 !read_ok") as caught:
        sc.bpf_prog_load(
            bpf.BPF_PROG_TYPE_CGROUP_DEVICE, exit_without_a_verdict, "Apache-2.0",
            bpf.BPF_CGROUP_DEVICE, "kurmad_test",
        )  # fmt: skip
    assert caught.value.errno == errno.EACCES
