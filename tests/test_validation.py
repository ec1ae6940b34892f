"""Validate before saving: a request that cannot run is refused before anything is kept, a
record that cannot be read is quarantined (never fatal, never lost), and what a crash left
half-made is finished or rolled back at the next start. The pod manager as the API calls it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from kurmad.appc import PodManifest, ValidationError
from kurmad.images.store import ImageStore
from kurmad.linux.cgroups import CgroupDriver
from kurmad.pods.builder import RunRequest, manifest_for_run
from kurmad.pods.manager import PodManager
from kurmad.pods.model import InvalidPod, PodState

from .busybox import busybox_path, import_busybox

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or busybox_path() is None,
    reason="needs root and busybox (apt-get install busybox-static)",
)
PARENT = f"/kurmad-test-{os.getpid()}-validation"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    store = ImageStore(tmp_path_factory.mktemp("validation") / "store", durable=False)
    import_busybox(store)
    yield store
    store.close()


@pytest.fixture
def manager(store: ImageStore, tmp_path: Path):
    manager = PodManager(tmp_path / "state", store, cgroup_parent=PARENT)
    yield manager
    for pod in manager.pods():
        manager.remove(pod.uuid, force=True)
    manager.close()
    CgroupDriver(PARENT).cgroup("").remove()


def one_app(store: ImageStore, app: dict[str, Any] | None = None, **extra: Any) -> PodManifest:
    image = store.find("example.com/busybox")
    runtime: dict[str, Any] = {"name": "main", "image": {"id": image.id},
                               "app": {"exec": ["/bin/true"], "user": "0", "group": "0", **(app or {})}}  # fmt: skip
    return PodManifest.from_json(
        {"acKind": "PodManifest", "acVersion": "0.8.11", "apps": [runtime], **extra}
    )


def limit(name: str, value: Any) -> dict[str, Any]:
    return {"isolators": [{"name": name, "value": value}]}


def pod_files(manager: PodManager) -> list[str]:
    return sorted(p.name for p in manager.root.iterdir())


@pytest.mark.parametrize(
    "run,why",
    [
        (RunRequest("example.com/busybox", ["/bin/true"], {"A B": "x"}, []), "may only contain"),
        (RunRequest("example.com/busybox", ["/bin/true"], {"A=B": "x"}, []), "may only contain"),
        (RunRequest("example.com/busybox", ["/bin/true"], {"": "x"}, []), "must not be empty"),
        (RunRequest("example.com/busybox", [""], {}, []), "the program to run must not be empty"),
        (RunRequest("example.com/busybox", ["/bin/true"], {}, [], working_directory="../../.."),
         "must be an absolute path"),
    ],
)  # fmt: skip
def test_a_bad_run_is_refused_before_anything_is_kept(
    manager: PodManager, run: RunRequest, why: str
) -> None:
    with pytest.raises(ValidationError, match=why):
        manager.create(manifest_for_run(manager.store, run))
    assert manager.pods() == [] and pod_files(manager) == []


@pytest.mark.parametrize(
    "isolator,why",
    [
        (("resource/memory", {"limit": "-1"}), "resource/memory: -1 is below 6Mi"),
        (("resource/memory", {"limit": "0"}), "resource/memory: 0 is below 6Mi"),
        (("resource/memory", {"limit": "5Mi"}), "resource/memory: 5Mi is below 6Mi"),
        (("resource/memory", {"limit": "1e999999"}), "larger than any limit"),
        (("resource/cpu", {"limit": "0"}), "resource/cpu: 0 is below 1m"),
        (("resource/cpu", {"limit": "-5"}), "resource/cpu: -5 is below 1m"),
        (("os/unix/sysctl", {"net.ipv4.ip_forward": "1\n0"}), "holds a newline or NUL"),
        (("os/unix/sysctl", {"net/../../../etc/passwd": "x"}), "is not a sysctl name"),
    ],
)
def test_limits_the_kernel_cannot_honour_are_refused_at_create(
    manager: PodManager, isolator: tuple[str, Any], why: str
) -> None:
    with pytest.raises(InvalidPod, match=why):
        manager.create(one_app(manager.store, limit(*isolator)), allow_privileged=True)
    assert pod_files(manager) == []


@pytest.mark.parametrize(
    "app,extra,why",
    [
        ({"exec": ["/bin/echo", "a\0b"]}, {}, "exec holds a NUL"),
        ({"environment": [{"name": "A", "value": "x\0y"}]}, {}, "environment holds a NUL"),
        ({"mountPoints": [{"name": "v", "path": "/v"}]},
         {"volumes": [{"name": "v", "kind": "host", "source": "/tmp\0/x"}]}, "NUL"),
        ({"mountPoints": [{"name": "v", "path": "/v"}]},
         {"volumes": [{"name": "v", "kind": "empty", "mode": "4777"}]}, "more than 0777"),
    ],
)  # fmt: skip
def test_what_the_kernel_would_cut_short_is_refused(
    manager: PodManager, app: dict[str, Any], extra: dict[str, Any], why: str
) -> None:
    with pytest.raises(InvalidPod, match=why):
        manager.create(one_app(manager.store, app, **extra), allow_privileged=True)
    assert pod_files(manager) == []


def test_an_unreadable_record_is_quarantined_and_reported(
    manager: PodManager, store: ImageStore, tmp_path: Path
) -> None:
    good = manager.create(one_app(store), name="good")
    bad = manager.create(one_app(store), name="bad")
    manager.close()
    (manager.root / bad.uuid / "pod.json").write_text('{"uuid": "x", "state": "NOT A STATE"}')
    again = PodManager(tmp_path / "state", store, cgroup_parent=PARENT)
    try:
        assert [p.name for p in again.pods()] == ["good"]
        assert again.get("good").uuid == good.uuid
        assert len(again.quarantined) == 1 and again.quarantined[0].startswith(bad.uuid)
        kept = list((again.root / ".quarantine").iterdir())
        assert len(kept) == 1 and (kept[0] / "pod.json").exists(), "kept for a person to look at"
    finally:
        again.close()
    third = PodManager(tmp_path / "state", store, cgroup_parent=PARENT)
    try:
        assert [p.name for p in third.pods()] == ["good"]
        assert third.quarantined == [f"{kept[0].name}: quarantined earlier"]
    finally:
        for pod in third.pods():
            third.remove(pod.uuid)
        third.close()
    manager.__init__(tmp_path / "state", store, cgroup_parent=PARENT)  # for the fixture's cleanup


def test_a_create_and_start_cut_short_is_rolled_back(
    manager: PodManager, store: ImageStore, tmp_path: Path
) -> None:
    manager.create(one_app(store), name="half-made", start_next=True)
    kept = manager.create(one_app(store), name="made-only")
    manager.close()  # as if kurmad died before starting it
    again = PodManager(tmp_path / "state", store, cgroup_parent=PARENT)
    try:
        assert [(p.name, p.state) for p in again.pods()] == [("made-only", PodState.NEW)]
        assert pod_files(again) == [kept.uuid]
    finally:
        again.close()
    manager.__init__(tmp_path / "state", store, cgroup_parent=PARENT)


def test_a_start_cut_short_goes_back_to_new_without_leftovers(
    manager: PodManager, store: ImageStore, tmp_path: Path
) -> None:
    pod = manager.create(one_app(store), name="cut")
    manager.close()
    record = json.loads((manager.root / pod.uuid / "pod.json").read_text())
    (manager.root / pod.uuid / "pod.json").write_text(json.dumps({**record, "state": "STARTING"}))
    cgroups = CgroupDriver(PARENT).create(f"{pod.uuid}/main")  # made by the start before the crash
    again = PodManager(tmp_path / "state", store, cgroup_parent=PARENT)
    try:
        assert again.get("cut").state == PodState.NEW
        assert not any(d.exists() for d in cgroups.all_dirs)
        assert again.start("cut") and again.wait("cut", 10).state == PodState.EXITED
    finally:
        again.close()
    manager.__init__(tmp_path / "state", store, cgroup_parent=PARENT)


def test_records_and_the_state_directory_are_owner_only(
    manager: PodManager, store: ImageStore
) -> None:
    pod = manager.create(one_app(store, {"environment": [{"name": "TOKEN", "value": "s3cret"}]}))
    assert os.stat(manager.root).st_mode & 0o077 == 0
    assert os.stat(manager.root / pod.uuid / "pod.json").st_mode & 0o077 == 0
