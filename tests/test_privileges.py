"""Roles that cannot be escalated through a pod: what weakens confinement needs the admin role,
what reaches kurmad's own files is refused to every role, and an image's own isolators count
as if the request had asked for them. The pod manager as the API calls it (tests of the
certificates that carry the role are in test_auth.py)."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kurmad.appc import PodManifest
from kurmad.images.store import ImageStore
from kurmad.linux.cgroups import CgroupDriver
from kurmad.pods.builder import RunRequest, manifest_for_run
from kurmad.pods.manager import PodManager
from kurmad.pods.privileges import Forbidden, HostPolicy, PrivilegeRequired

from .busybox import busybox_path, import_busybox

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or busybox_path() is None,
    reason="needs root and busybox (apt-get install busybox-static)",
)
PARENT = f"/kurmad-test-{os.getpid()}-privileges"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("privileges")
    allowed, tls = root / "allowed", root / "tls"
    allowed.mkdir()
    tls.mkdir()
    (tls / "ca.key").write_text("secret")
    store = ImageStore(root / "store", durable=False)
    plain = import_busybox(store)
    greedy = import_busybox(store, "example.com/greedy", app={
        "exec": ["/bin/true"], "user": "0", "group": "0",
        "isolators": [{"name": "os/linux/capabilities-retain-set", "value": {"set": ["CAP_SYS_ADMIN"]}}],
    })  # fmt: skip
    policy = HostPolicy(protected=(str(tls), str(root / "state" / "kurmad.sock")),
                        host_volumes=(str(allowed),), api_socket=str(root / "state" / "kurmad.sock"))  # fmt: skip
    manager = PodManager(root / "state", store, cgroup_parent=PARENT, host_policy=policy)
    yield manager, plain, greedy, root
    for pod in manager.pods():
        manager.remove(pod.uuid, force=True)
    manager.close()
    store.close()
    CgroupDriver(PARENT).cgroup("").remove()


def pod(image_id: str, app: dict[str, Any] | None = None, **extra: Any) -> PodManifest:
    runtime: dict[str, Any] = {"name": "main", "image": {"id": image_id}}
    if app is not None:
        runtime["app"] = {"exec": ["/bin/true"], "user": "0", "group": "0", **app}
    return PodManifest.from_json(
        {"acKind": "PodManifest", "acVersion": "0.8.11", "apps": [runtime], **extra}
    )


def isolators(*pairs: tuple[str, Any]) -> dict[str, Any]:
    return {"isolators": [{"name": name, "value": value} for name, value in pairs]}


def with_volume(image_id: str, source: Path | str) -> PodManifest:
    return PodManifest.from_json({
        "acKind": "PodManifest", "acVersion": "0.8.11",
        "apps": [{"name": "main", "image": {"id": image_id}, "mounts": [{"volume": "v", "path": "/v"}]}],
        "volumes": [{"name": "v", "kind": "host", "source": str(source)}],
    })  # fmt: skip


WEAKENINGS = {
    "host network": (lambda i, _: pod(i, annotations=[{"name": "kurmad.io/host-network", "value": "true"}]),
                     "the host's network"),
    "capability": (lambda i, _: pod(i, isolators(("os/linux/capabilities-retain-set", {"set": ["CAP_SYS_ADMIN"]}))),
                   "capabilities CAP_SYS_ADMIN (beyond the default set)"),
    "seccomp": (lambda i, _: pod(i, isolators(("os/linux/seccomp-retain-set", {"set": ["bpf", "read", "write"]}))),
                "a seccomp filter that allows bpf"),
    "seccomp all": (lambda i, _: pod(i, isolators(("os/linux/seccomp-retain-set", {"set": ["@appc.io/all"]}))),
                    "a seccomp filter that allows every call"),
    "device": (lambda i, _: pod(i, isolators(("kurmad.io/devices", {"devices": [{"path": "/dev/null"}]}))),
               "devices /dev/null"),
    "api socket": (lambda i, _: pod(i, isolators(("kurmad.io/api-socket", {"path": "/run/kurmad.sock"}))),
                   "kurmad's API socket"),
    "host sysctl": (lambda i, _: pod(i, isolators=[{"name": "os/unix/sysctl", "value": {"kernel.panic": "0"}}]),
                    "sysctl kernel.panic (not in the pod's namespaces)"),
    "host net sysctl": (lambda i, _: pod(i, annotations=[{"name": "kurmad.io/host-network", "value": "true"}],
                                          isolators=[{"name": "os/unix/sysctl", "value": {"net.ipv4.ip_forward": "1"}}]),
                        "sysctl net.ipv4.ip_forward (the host's network)"),
    "lower oom score": (lambda i, _: pod(i, isolators(("os/linux/oom-score-adj", 100))),
                        "oom-score-adj 100 (below the pods' 500)"),
    "host volume": (lambda i, root: with_volume(i, root / "store"), "outside the allowed host paths"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(WEAKENINGS))
def test_what_weakens_confinement_needs_the_admin_role(env, case: str) -> None:
    manager, plain, _, root = env
    make, phrase = WEAKENINGS[case]
    before = sorted(p.name for p in manager.root.iterdir())
    with pytest.raises(PrivilegeRequired) as caught:
        manager.create(make(plain.id, root))
    assert phrase in str(caught.value) and "needs the admin role" in str(caught.value)
    assert sorted(p.name for p in manager.root.iterdir()) == before, "nothing was kept"
    made = manager.create(make(plain.id, root), allow_privileged=True)
    manager.remove(made.uuid)


def test_an_images_own_isolators_count_as_if_asked(env) -> None:
    manager, _, greedy, _ = env
    with pytest.raises(PrivilegeRequired, match="CAP_SYS_ADMIN"):
        manager.create(pod(greedy.id))
    with pytest.raises(PrivilegeRequired, match="CAP_SYS_ADMIN"):
        manager.create(
            manifest_for_run(manager.store, RunRequest("example.com/greedy", [], {}, []))
        )


def test_what_confines_more_needs_no_role(env) -> None:
    manager, plain, _, root = env
    (root / "allowed" / "data").mkdir(exist_ok=True)
    tighter = pod(plain.id, isolators(
        ("os/linux/capabilities-remove-set", {"set": ["CAP_NET_RAW"]}),
        ("os/linux/seccomp-retain-set", {"set": ["read", "write", "exit_group"]}),
        ("os/linux/oom-score-adj", 800), ("os/linux/no-new-privileges", True)))  # fmt: skip
    for manifest in (tighter, with_volume(plain.id, root / "allowed" / "data"),
                     pod(plain.id, isolators=[{"name": "os/unix/sysctl", "value": {"net.ipv4.ip_forward": "1"}}])):  # fmt: skip
        manager.remove(manager.create(manifest).uuid)


@pytest.mark.parametrize("where", ["state", "state/pods", "state/kurmad.sock", "tls", "tls/ca.key",
                                   "parent", "/"])  # fmt: skip
def test_no_role_may_mount_kurmads_own_files_or_what_holds_them(env, where: str) -> None:
    manager, plain, _, root = env
    source = {"parent": root, "/": Path("/")}.get(where, root / where)
    if where.endswith(".sock"):
        source.touch()
    with pytest.raises(Forbidden, match="kurmad keeps from every pod|API socket"):
        manager.create(with_volume(plain.id, source), allow_privileged=True)


def test_a_bind_mount_elsewhere_does_not_get_around_it(env, tmp_path: Path) -> None:
    manager, plain, _, root = env
    alias = tmp_path / "alias"
    alias.mkdir()
    subprocess.run(["mount", "--bind", str(root), str(alias)], check=True)
    try:
        for source in (alias, alias / "state", alias / "tls" / "ca.key"):
            with pytest.raises(Forbidden, match="kurmad keeps from every pod"):
                manager.create(with_volume(plain.id, source), allow_privileged=True)
    finally:
        subprocess.run(["umount", str(alias)], check=True)


def test_device_nodes_come_only_through_the_device_isolator(env) -> None:
    manager, plain, _, _ = env
    with pytest.raises(
        Forbidden, match="is a device node: devices come through the kurmad.io/devices isolator"
    ):
        manager.create(with_volume(plain.id, "/dev/null"), allow_privileged=True)
    with pytest.raises(Exception, match="not a device node"):
        manager.create(pod(plain.id, isolators(("kurmad.io/devices", {"devices": [{"path": "/dev/shm"}]}))),
                       allow_privileged=True)  # fmt: skip


def test_the_api_socket_isolator_gives_an_admins_pod_the_socket(env) -> None:
    manager, plain, _, root = env
    path = root / "state" / "kurmad.sock"
    path.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(1)
        made = manager.create(pod(plain.id, {"exec": ["/bin/sh", "-c", "test -S /run/kurmad.sock && echo socket"],
                                             **isolators(("kurmad.io/api-socket", {"path": "/run/kurmad.sock"}))}),
                              allow_privileged=True)  # fmt: skip
        manager.start(made.uuid)
        manager.wait(made.uuid, 20)
        assert [r.line for r in manager.logs(made.uuid)] == [b"socket"]
        manager.remove(made.uuid)
