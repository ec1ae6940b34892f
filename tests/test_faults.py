"""Faults a host meets: a full state disk, a SIGKILL in the middle of work, a state directory
someone else made. No background thread dies, no pod is left half-made, SIGTERM always ends
the daemon, and what the daemon keeps is its owner's alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kurmad.api.v1 import kurma_pb2 as pb
from kurmad.client import KurmaError
from kurmad.linux.cgroups import CgroupDriver

from .busybox import busybox_path, write_busybox_aci
from .daemon import ServeProcess

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or busybox_path() is None,
    reason="needs root and busybox (apt-get install busybox-static)",
)


@pytest.fixture(scope="module")
def busybox_aci(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_busybox_aci(tmp_path_factory.mktemp("aci") / "busybox.aci", ["/bin/sleep", "60"])


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 48 MiB filesystem of its own for the state directory."""
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def started(state: Path, image: Path, *extra: str) -> ServeProcess:
    serve = ServeProcess(state, *extra).start()
    serve.import_image(image)
    return serve


def finished(serve: ServeProcess) -> None:
    serve.cleanup_pods()
    serve.stop()
    CgroupDriver(serve.cgroup_parent).cgroup("").remove()


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M"], capture_output=True)
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}.small", "bs=1k"], capture_output=True)
    return filler


def saved_state(serve: ServeProcess, pod_uuid: str) -> str:
    return json.loads((serve.state / "pods" / pod_uuid / "pod.json").read_text())["state"]


def test_a_full_state_disk_stops_no_thread_and_no_stop(small_disk: Path, busybox_aci: Path) -> None:
    serve = started(small_disk / "state", busybox_aci)
    try:
        with serve.client() as kurma:
            first = kurma.run("example.com/busybox", name="first")
            second = kurma.run("example.com/busybox", name="second")
            filler = fill(small_disk)
            assert kurma.stop("first", 1).state == pb.POD_STATE_STOPPED, "the exit was noticed"
            with pytest.raises(KurmaError) as caught:
                kurma.run("example.com/busybox", exec=["/bin/true"], name="third")
            assert (
                caught.value.code == "RESOURCE_EXHAUSTED"
                and "No space left" in caught.value.message
            )
            assert kurma.stop("second", 1).state == pb.POD_STATE_STOPPED, "the watcher lives on"
            assert {p.name for p in kurma.pods()} == {"first", "second"}
            assert kurma.info().pods == 2
            assert saved_state(serve, first.uuid) != "STOPPED", "the disk did not take it yet"
            filler.unlink()
            Path(f"{filler}.small").unlink()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and saved_state(serve, second.uuid) != "STOPPED":
                time.sleep(0.1)
            assert saved_state(serve, first.uuid) == saved_state(serve, second.uuid) == "STOPPED"
        fill(small_disk)
        assert serve.process is not None
        serve.process.send_signal(signal.SIGTERM)
        assert serve.process.wait(30) is not None, "SIGTERM ends the daemon on a full disk"
    finally:
        serve.stop()
        for leftover in small_disk.glob("filler*"):
            leftover.unlink()
        serve.start()
        finished(serve)


@pytest.mark.parametrize("delay", [0.03, 0.15, 0.5])
def test_a_sigkill_during_concurrent_creates_leaves_nothing_half_made(
    tmp_path: Path, busybox_aci: Path, delay: float
) -> None:
    serve = started(tmp_path / "state", busybox_aci)
    try:

        def create(index: int) -> None:
            try:
                with serve.client() as kurma:
                    kurma.run("example.com/busybox", name=f"pod-{index}")
            except KurmaError:
                pass  # the daemon was killed under it

        threads = [threading.Thread(target=create, args=(i,)) for i in range(20)]
        for thread in threads:
            thread.start()
        time.sleep(delay)
        serve.kill()
        for thread in threads:
            thread.join(30)
        serve.start()
        with serve.client() as kurma:
            pods = kurma.pods()
        states = {p.name: p.state for p in pods}
        assert set(states.values()) <= {pb.POD_STATE_RUNNING}, states
        on_disk = sorted(p.name for p in (serve.state / "pods").iterdir())
        assert on_disk == sorted(p.uuid for p in pods), "no directory without its pod"
        driver = CgroupDriver(serve.cgroup_parent)
        # A kill before the first pod's cgroup leaves no parent in some hierarchies: nothing left.
        for directory in (d for d in driver.cgroup("").all_dirs if d.is_dir()):
            left = {d.name for d in directory.iterdir() if d.is_dir()}
            assert left <= {p.uuid for p in pods}, f"cgroups of no pod in {directory}: {left}"
    finally:
        finished(serve)


def test_a_state_directory_made_earlier_is_tightened(tmp_path: Path, busybox_aci: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    serve = started(state, busybox_aci)
    try:
        with serve.client() as kurma:
            pod = kurma.run("example.com/busybox", exec=["/bin/true"], env={"TOKEN": "s3cret"})
            kurma.wait(pod.uuid, 10)
        for path in (state, state / "pods", state / "pods" / pod.uuid):
            assert os.stat(path).st_mode & 0o077 == 0, path
        assert os.stat(state / "pods" / pod.uuid / "pod.json").st_mode & 0o077 == 0
        nobody = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat",
                                 str(state / "pods" / pod.uuid / "pod.json")], capture_output=True)  # fmt: skip
        assert nobody.returncode != 0 and b"s3cret" not in nobody.stdout
    finally:
        finished(serve)
