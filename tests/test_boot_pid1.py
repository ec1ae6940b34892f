"""kurmad boot as PID 1 of fresh PID, mount, UTS and network namespaces: the boot stages and
their errors through the API, system mounts, reaping of orphans, system pods and their restart
policy, a crashed daemon brought back, and shutdown by signal and by API."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kurmad.api.v1 import kurma_pb2 as pb
from kurmad.client import Client, KurmaError
from kurmad.linux.cgroups import CgroupDriver

from .busybox import busybox_entries, busybox_path
from .tarcraft import aci, image_manifest

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or busybox_path() is None,
    reason="needs root (namespaces, mounts) and busybox (apt-get install busybox-static)",
)


def wait_until(check: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except (KurmaError, OSError, ValueError):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.1)


class BootedNamespace:
    """``unshare --pid --fork --mount --uts --net python -m kurmad boot``, its console in a file."""

    def __init__(self, root: Path, config: dict[str, Any], cmdline: str = "") -> None:
        self.root = root
        self.state = Path(config["state_dir"])
        self.console = root / "console.log"
        config_file = root / "kurma.yml"
        config_file.write_text(yaml.safe_dump(config))
        self.process = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount", "--uts", "--net", "--propagation", "private",
             sys.executable, "-m", "kurmad", "boot", "--config", str(config_file), "--cmdline", cmdline],
            stdout=open(self.console, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115 - the child keeps it
        )  # fmt: skip
        self.pid1 = wait_until(self._find_pid1, 10, "PID 1 of the namespace")
        wait_until(lambda: "boot finished" in self.text(), 90, "the end of the boot sequence")

    def _find_pid1(self) -> int | None:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text()
        return int(children.split()[0]) if children.split() else None

    def text(self) -> str:
        return self.console.read_text(errors="replace")

    def client(self) -> Client:
        return Client(f"unix://{self.state}/kurmad.sock", timeout=30)

    def children_of_pid1(self) -> list[tuple[int, str, str]]:
        """(pid, command, state) of every process whose parent is our PID 1."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                status = dict(
                    line.split(":\t", 1) for line in (entry / "status").read_text().splitlines()
                )
            except (OSError, ValueError):
                continue
            if int(status.get("PPid", "0")) == self.pid1:
                found.append((int(entry.name), status["Name"].strip(), status["State"].strip()))
        return found

    def daemon_pid(self) -> int:
        pids = [pid for pid, name, state in self.children_of_pid1() if name.startswith("python") and not state.startswith("Z")]  # fmt: skip
        assert len(pids) == 1, self.children_of_pid1()
        return pids[0]

    def wait_exit(self, timeout: float = 60) -> int:
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.pid1, signal.SIGKILL)  # the whole namespace goes with its init
            self.process.wait(30)


def stage(info: pb.HostInfo, name: str) -> pb.BootStage:
    return next(s for s in info.boot_stages if s.name == name)


@pytest.fixture(scope="module")
def booted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootedNamespace]:
    root = tmp_path_factory.mktemp("boot")
    images = root / "images"
    images.mkdir()
    manifest = image_manifest("example.com/busybox", "1.0.0")
    manifest["app"] = {"exec": ["/bin/sh"], "user": "0", "group": "0"}
    (images / "busybox.aci").write_bytes(aci(manifest, busybox_entries(), "gzip"))
    sh = ["/bin/sh", "-c"]
    config = {
        "hostname": "from-the-file",
        "state_dir": str(root / "state"),
        "cgroup_parent": f"/kurmad-test-{os.getpid()}-boot",
        "hardware": {"coldplug": False, "hotplug": False},
        "modules": ["kurma_no_such_module"],
        "disks": [{"match": {"label": "KURMA_ABSENT_DISK"}, "mount": str(root / "data"), "wait": 0}],
        "network": {"interfaces": []},
        "api": {"listen": ""},
        "images": [str(images / "*.aci")],
        "initial_pods": [
            {"name": "sleeper", "image": "example.com/busybox", "exec": [*sh, "exec sleep 1000"]},
            {"name": "flaky", "image": "example.com/busybox", "exec": [*sh, "sleep 0.3; exit 3"],
             "restart": "on-failure"},
            {"name": "ghost", "image": "example.com/not-imported"},
        ],
        "bogus_key": 1,
    }  # fmt: skip
    boot = BootedNamespace(root, config, cmdline="quiet kurma.hostname=from-cmdline")
    try:
        yield boot
    finally:
        boot.kill()
        CgroupDriver(config["cgroup_parent"]).cgroup("").remove()


def test_boot_stages_report_each_problem_and_the_api_comes_up(booted: BootedNamespace) -> None:
    with booted.client() as client:
        info = client.info()
    assert info.mode == "boot"
    assert info.hostname == "from-cmdline"  # the command line wins over the file
    names = [s.name for s in info.boot_stages]
    assert names == ["system mounts", "ctrl-alt-del", "config", "modules", "oem-config",
                     "cgroups", "disks", "hostname", "network", "api", "images", "system-pods"]  # fmt: skip
    failed = {s.name: s.error for s in info.boot_stages if not s.ok}
    assert set(failed) == {"config", "modules", "disks", "system-pods"}
    assert "bogus_key: unknown key" in failed["config"]
    assert failed["modules"].startswith("kurma_no_such_module: ")
    assert "no disk with label=KURMA_ABSENT_DISK" in failed["disks"]
    assert stage(info, "images").detail == "1 image(s): example.com/busybox"
    pods = stage(info, "system-pods").detail
    assert "sleeper: running" in pods and "ghost: failed to start: " in pods
    assert "not-imported" in pods
    assert "config: FAILED: " in booted.text()  # and on the console


def test_pid1_mounted_proc_and_run_of_its_own(booted: BootedNamespace) -> None:
    inside_init = Path(f"/proc/{booted.pid1}/root/proc/1/cmdline").read_bytes().split(b"\0")
    assert b"kurmad" in inside_init and b"boot" in inside_init  # its own /proc, its own PID 1
    mounts = {
        line.split()[4]: line.split(" - ")[1].split()[0]
        for line in Path(f"/proc/{booted.pid1}/mountinfo").read_text().splitlines()
    }
    assert mounts["/proc"] == "proc" and mounts["/run"] == "tmpfs"


def test_orphaned_grandchildren_are_reaped(booted: BootedNamespace) -> None:
    subprocess.run(["nsenter", f"--target={booted.pid1}", "--pid", "--mount", "--",
                    "/bin/sh", "-c", "sleep 1.5 & sleep 1.5 & exit 0"], check=True)  # fmt: skip
    orphans = [pid for pid, name, _ in booted.children_of_pid1() if name == "sleep"]
    assert len(orphans) == 2  # their shell is gone: the kernel gave them to PID 1
    wait_until(lambda: not any(name == "sleep" for _, name, _ in booted.children_of_pid1()), 10,
               "the orphans to be reaped")  # fmt: skip
    assert not [c for c in booted.children_of_pid1() if c[2].startswith("Z")]


def test_system_pods_restart_by_policy(booted: BootedNamespace) -> None:
    with booted.client() as client:
        first = client.get("flaky").uuid
        wait_until(lambda: client.get("flaky").uuid != first, 20, "flaky to be restarted")
        sleeper = client.get("sleeper")
    assert sleeper.state == pb.POD_STATE_RUNNING
    assert re.search(r"system pod flaky: exited \(busybox=3\); restart 1 in 1s", booted.text())
    assert "system pod ghost: " in booted.text()


def test_a_crashed_daemon_is_restarted_and_adopts_its_pods(booted: BootedNamespace) -> None:
    with booted.client() as client:
        sleeper = client.get("sleeper")
    os.kill(booted.daemon_pid(), signal.SIGKILL)
    wait_until(lambda: "the daemon ended (signal SIGKILL)" in booted.text(), 10, "PID 1 to notice")

    def back() -> pb.HostInfo | None:
        with booted.client() as client:
            info = client.info()
        return info if any(s.name == "system-pods" for s in info.boot_stages) else None

    info = wait_until(back, 60, "the restarted daemon")
    daemon = stage(info, "daemon")
    assert not daemon.ok and daemon.error == "the daemon ended (signal SIGKILL); restart 1 in 1s"
    with booted.client() as client:
        again = client.get("sleeper")
        named = [p for p in client.pods() if p.name == "sleeper"]
    assert (again.uuid, again.state) == (sleeper.uuid, pb.POD_STATE_RUNNING)  # adopted
    assert len(named) == 1


def test_a_pod_an_operator_stopped_stays_stopped(booted: BootedNamespace) -> None:
    with booted.client() as client:
        stopped = client.stop("sleeper", grace=1)
        time.sleep(3)  # longer than the first backoff: a restart would have come
        now = client.get("sleeper")
    assert now.uuid == stopped.uuid and now.state == pb.POD_STATE_STOPPED
    assert (
        "system pod sleeper: stopped (busybox=143); stopped on request, so left stopped"
        in booted.text()
    )


def test_sigterm_stops_the_pods_and_powers_off(booted: BootedNamespace) -> None:
    namespace = os.readlink(f"/proc/{booted.pid1}/ns/pid")
    os.kill(booted.pid1, signal.SIGTERM)
    code = booted.wait_exit(60)
    assert code == -signal.SIGINT  # reboot(POWER_OFF) in a PID namespace: its init gets SIGINT
    console = booted.text()
    for line in ("poweroff requested", "stop system pod supervision: ok", "stop pods: ok",
                 "unmount disks: ok", "poweroff now"):  # fmt: skip
        assert line in console
    states = {json.loads(p.read_text())["name"]: json.loads(p.read_text())["state"]
              for p in (booted.state / "pods").glob("*/pod.json")}  # fmt: skip
    assert states and "RUNNING" not in states.values()
    left = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _pid_ns(p) == namespace]
    assert left == []


def _pid_ns(proc: Path) -> str:
    try:
        return os.readlink(proc / "ns" / "pid")
    except OSError:
        return ""


@pytest.fixture
def minimal(tmp_path: Path) -> Iterator[Callable[..., BootedNamespace]]:
    booted: list[BootedNamespace] = []

    def boot(**overrides: Any) -> BootedNamespace:
        cmdline = overrides.pop("cmdline", "")
        config = {"state_dir": str(tmp_path / "state"), "hardware": {"coldplug": False, "hotplug": False},
                  "network": {"interfaces": []}, "api": {"listen": ""}, **overrides}  # fmt: skip
        booted.append(BootedNamespace(tmp_path, config, cmdline))
        return booted[-1]

    yield boot
    for one in booted:
        one.kill()


def test_an_api_reboot_reboots(minimal: Callable[..., BootedNamespace], tmp_path: Path) -> None:
    bad = tmp_path / "extra.yml"
    bad.write_text("hostname: [unclosed\n")
    booted = minimal(cmdline=f"kurma.config={bad}")
    with booted.client() as client:
        config = stage(client.info(), "config")
        client.reboot()
    assert not config.ok and f"{bad}: not valid YAML at line" in config.error
    assert booted.wait_exit(60) == -signal.SIGHUP  # reboot(RESTART) in a PID namespace
    assert "reboot requested" in booted.text() and "reboot now" in booted.text()


def test_sigint_from_ctrl_alt_del_reboots(minimal: Callable[..., BootedNamespace]) -> None:
    booted = minimal()
    os.kill(booted.pid1, signal.SIGINT)
    assert booted.wait_exit(60) == -signal.SIGHUP
    assert "reboot requested" in booted.text()


def test_kurmad_boot_refuses_to_run_as_anything_but_pid1() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kurmad", "boot"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "kurmad boot runs as PID 1" in result.stderr
