"""Default confinement, end to end as root: a pod cannot reach the host's disks through device
nodes (nodev everywhere, a device allow-list in the cgroup), sees runc's masked /proc and /sys
paths, cannot starve the host of processes, and is what the OOM killer takes first."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kurmad.appc import PodManifest
from kurmad.images.store import ImageStore
from kurmad.linux.cgroups import CgroupDriver
from kurmad.pods.manager import PodManager
from kurmad.pods.model import Pod, PodState
from kurmad.runtime.spec import APP_OOM_SCORE_ADJ, DEFAULT_PIDS_LIMIT, POD_INIT_OOM_SCORE_ADJ

from .busybox import busybox_path, import_busybox

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or busybox_path() is None,
    reason="needs root and busybox (apt-get install busybox-static)",
)
PARENT = f"/kurmad-test-{os.getpid()}-confinement"
MARKER = b"KURMAD-DISK-MARKER"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("confinement")
    store = ImageStore(root / "store", durable=False)
    image = import_busybox(store)
    manager = PodManager(root / "state", store, cgroup_parent=PARENT)
    yield manager, image.id
    for pod in manager.pods():
        manager.remove(pod.uuid, force=True)
    manager.close()
    store.close()
    CgroupDriver(PARENT).cgroup("").remove()


@pytest.fixture
def loop_disk(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A block device (a loop device over a file) that holds a marker: the host's disk."""
    backing = tmp_path / "disk.img"
    backing.write_bytes(MARKER + bytes(1 << 20))
    device = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True,
                            text=True, check=True).stdout.strip()  # fmt: skip
    try:
        yield device, backing
    finally:
        subprocess.run(["losetup", "--detach", device], check=False)


def run_script(manager: PodManager, image_id: str, script: str, privileged: bool = False,
               **app: Any) -> tuple[Pod, str]:  # fmt: skip
    manifest = PodManifest.from_json({
        "acKind": "PodManifest", "acVersion": "0.8.11",
        "apps": [{"name": "main", "image": {"id": image_id}, "mounts": [{"volume": "scratch", "path": "/scratch"}],
                  "app": {"exec": ["/bin/sh", "-c", script], "user": "0", "group": "0", **app}}],
        "volumes": [{"name": "scratch", "kind": "empty"}],
    })  # fmt: skip
    pod = manager.create(manifest, allow_privileged=privileged)
    manager.start(pod.uuid)
    ended = manager.wait(pod.uuid, 30)
    out = "\n".join(r.line.decode() for r in manager.logs(pod.uuid) if r.stream == "stdout")
    manager.remove(pod.uuid, force=True)
    return ended, out


def test_a_default_pod_cannot_write_the_hosts_disk_through_a_device_node(
    env, loop_disk: tuple[str, Path]
) -> None:
    manager, image_id = env
    device, backing = loop_disk
    info = os.stat(device)
    major, minor = os.major(info.st_rdev), os.minor(info.st_rdev)
    script = "; ".join(
        f"mknod {where}/disk b {major} {minor} && echo made {where}; "
        f"[ -b {where}/disk ] && echo overwritten | dd of={where}/disk conv=notrunc 2>/dev/null && echo wrote {where}; "
        f"head -c 18 {where}/disk 2>/dev/null | grep -q KURMAD && echo read {where}"
        for where in ("/tmp", "/dev", "/scratch")
    )
    ended, out = run_script(manager, image_id, script)
    assert ended.state == PodState.EXITED
    assert "wrote" not in out and "read" not in out, out
    assert "made" not in out, f"the cgroup refuses to make the node at all: {out}"
    assert backing.read_bytes().startswith(MARKER)


def test_a_device_given_by_the_admin_is_usable_and_only_that_one(
    env, loop_disk: tuple[str, Path]
) -> None:
    manager, image_id = env
    device, backing = loop_disk
    given = {"isolators": [{"name": "kurmad.io/devices", "value": {"devices": [{"path": device}]}}]}
    script = f"echo GIVEN-TO-THE-POD | dd of={device} conv=notrunc 2>/dev/null && echo wrote; head -c 1 /dev/loop-control 2>/dev/null && echo other"
    ended, out = run_script(manager, image_id, script, privileged=True, **given)
    assert ended.state == PodState.EXITED and out.splitlines() == ["wrote"], out
    subprocess.run(["blockdev", "--flushbufs", device], check=False)
    assert backing.read_bytes().startswith(b"GIVEN-TO-THE-POD")


def test_proc_and_sys_paths_of_the_host_kernel_are_masked(env) -> None:
    manager, image_id = env
    # (a path this kernel lacks reads as empty too: cat fails and prints nothing)
    script = ("for f in kcore keys timer_list sched_debug; do cat /proc/$f 2>/dev/null | wc -c; done; "
              "ls -A /sys/firmware | wc -l; ls -A /sys/kernel/security | wc -l; "
              "echo x > /proc/sysrq-trigger 2>/dev/null && echo sysrq")  # fmt: skip
    ended, out = run_script(manager, image_id, script)
    assert ended.state == PodState.EXITED
    assert [line.strip() for line in out.splitlines()] == ["0"] * 6, out


def test_pods_are_taken_first_by_the_oom_killer(env) -> None:
    manager, image_id = env
    _, out = run_script(manager, image_id, "cat /proc/self/oom_score_adj /proc/1/oom_score_adj")
    assert out.split() == [str(APP_OOM_SCORE_ADJ), str(POD_INIT_OOM_SCORE_ADJ)]
    assert int(Path("/proc/self/oom_score_adj").read_text()) < POD_INIT_OOM_SCORE_ADJ


def test_a_pod_has_a_process_limit_by_default(env) -> None:
    manager, image_id = env
    manifest = PodManifest.from_json({"acKind": "PodManifest", "acVersion": "0.8.11", "apps": [
        {"name": "main", "image": {"id": image_id}, "app": {"exec": ["/bin/sleep", "30"], "user": "0", "group": "0"}}]})  # fmt: skip
    pod = manager.create(manifest)
    manager.start(pod.uuid)
    try:
        pids = manager.cgroup(pod.uuid).dirs["pids"]
        assert (pids / "pids.max").read_text().strip() == str(DEFAULT_PIDS_LIMIT)
    finally:
        manager.remove(pod.uuid, force=True)
