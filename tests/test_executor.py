"""The executor, end to end as root: pods in namespaces on this host, as spec/ace.md says."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import socket
import struct
import termios
import time
from pathlib import Path
from typing import Any

import pytest

from kurmad.appc import DEFAULT_CAPABILITIES, PodManifest
from kurmad.images.store import ImageStore
from kurmad.linux.cgroups import CgroupDriver
from kurmad.pods.manager import PodManager
from kurmad.pods.model import InvalidPod, Pod, PodConflict, PodState
from kurmad.pods.privileges import PrivilegeRequired

from .busybox import busybox_path, import_busybox
from .tarcraft import file

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or busybox_path() is None,
    reason="needs root and busybox (apt-get install busybox-static)",
)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("executor")
    store = ImageStore(root / "store", durable=False)
    image = import_busybox(store, extra=[file("opt/work/marker", "here")])
    manager = PodManager(root / "state", store, cgroup_parent=f"/kurmad-test-{os.getpid()}")
    yield manager, store, image
    for pod in manager.pods():
        manager.remove(pod.uuid, force=True)
    manager.close()
    store.close()
    CgroupDriver(f"/kurmad-test-{os.getpid()}").cgroup("").remove()


def manifest(apps: list[dict[str, Any]], **extra: Any) -> PodManifest:
    return PodManifest.from_json(
        {"acKind": "PodManifest", "acVersion": "0.8.11", "apps": apps, **extra}
    )


def app(name: str, image_id: str, script: str, **fields: Any) -> dict[str, Any]:
    override = {
        "exec": ["/bin/sh", "-c", script],
        "user": "0",
        "group": "0",
        **fields.pop("app", {}),
    }
    return {"name": name, "image": {"id": image_id}, "app": override, **fields}


def create(manager: PodManager, pod: PodManifest, name: str | None = None) -> Pod:
    """These tests are of the executor: they create as the admin role would (the roles'
    limits are tested in test_privileges.py)."""
    return manager.create(pod, name, allow_privileged=True)


def run(manager: PodManager, apps: list[dict[str, Any]], timeout: float = 20, **extra: Any) -> Pod:
    pod = create(manager, manifest(apps, **extra))
    manager.start(pod.uuid)
    return manager.wait(pod.uuid, timeout)


def output(
    manager: PodManager, pod: Pod, app_name: str | None = None, stream: str = "stdout"
) -> str:
    return "\n".join(
        r.line.decode() for r in manager.logs(pod.uuid, app_name) if r.stream == stream
    )


def one(manager: PodManager, image_id: str, script: str, **fields: Any) -> tuple[Pod, str]:
    pod = run(manager, [app("main", image_id, script, **fields)])
    return pod, output(manager, pod)


# --- isolation -------------------------------------------------------------------------------------


def test_a_pod_sees_neither_host_pids_nor_host_mounts_nor_the_host_name(env) -> None:
    manager, _, image = env
    pod, out = one(
        manager,
        image.id,
        "hostname; ls /proc | grep -E '^[0-9]+$' | sort -n | tail -1; cat /proc/mounts | cut -d' ' -f2; ls /sys/class/net",
    )
    assert pod.state == PodState.EXITED and pod.apps[0].exit_code == 0
    lines = out.splitlines()
    assert lines[0] == pod.name != socket.gethostname()
    assert int(lines[1]) < 20, "PIDs of the pod's own namespace, not the host's"
    mounts = set(lines[2:-1])
    assert "/" in mounts and "/proc" in mounts and "/dev" in mounts
    assert not any(
        m.startswith(("/work", "/home", "/root", "/sys/fs/cgroup/memory")) for m in mounts
    )
    assert lines[-1] in ("1", "lo"), "a network namespace with only lo"


def test_loopback_is_up_and_usable(env) -> None:
    manager, _, image = env
    _pod, out = one(
        manager, image.id, "nc -l -p 7000 -e echo pong & sleep 0.2; echo ping | nc 127.0.0.1 7000"
    )
    assert out.strip() == "pong", out


def test_apps_of_a_pod_share_pid_uts_ipc_namespaces(env) -> None:
    manager, _, image = env
    pod = run(manager, [
        app("server", image.id, "sleep 3 & echo $! > /proc/1/cwd 2>/dev/null; sleep 1; ps -o comm | sort | uniq -c | grep -c sleep"),
        app("client", image.id, "sleep 0.5; pidof sleep | wc -w; hostname"),
    ])  # fmt: skip
    assert pod.state == PodState.EXITED
    lines = output(manager, pod, "client").splitlines()
    assert int(lines[0]) >= 2, "the client sees the server's processes"
    assert lines[1] == pod.name


def test_each_app_has_its_own_root_and_volumes_are_shared(env) -> None:
    manager, _, image = env
    pod = run(manager, [
        app("writer", image.id, "echo private > /private; echo shared > /data/note; sleep 1",
            mounts=[{"volume": "data", "path": "/data"}]),
        app("reader", image.id, "sleep 0.5; cat /data/note; ls /private 2>&1 || true",
            mounts=[{"volume": "data", "path": "/data"}]),
    ], volumes=[{"name": "data", "kind": "empty"}])  # fmt: skip
    out = output(manager, pod, "reader").splitlines()
    assert out[0] == "shared"
    assert "No such file" in out[1]


def test_host_volumes_and_read_only(env, tmp_path: Path) -> None:
    manager, _, image = env
    (tmp_path / "in").write_text("from host\n")
    pod = run(manager, [app("main", image.id, "cat /host/in; echo x > /host/out; echo rw=$?; touch /ro/z; echo ro=$?",
                            mounts=[{"volume": "rw", "path": "/host"}, {"volume": "ro", "path": "/ro"}])],
              volumes=[{"name": "rw", "kind": "host", "source": str(tmp_path)},
                       {"name": "ro", "kind": "host", "source": str(tmp_path), "readOnly": True}])  # fmt: skip
    out = output(manager, pod)
    assert "from host" in out and "rw=0" in out and "ro=1" in out
    assert (tmp_path / "out").read_text() == "x\n"
    assert not (tmp_path / "z").exists()


# --- the app's world (ace.md §Execution Environment, OS-SPEC) ----------------------------------------


def test_environment_has_the_spec_variables_with_the_right_precedence(env) -> None:
    manager, _, image = env
    _pod, out = one(manager, image.id, "env | sort", app={"environment": [{"name": "MINE", "value": "yes"},
                                                                         {"name": "AC_APP_NAME", "value": "spoofed"}]})  # fmt: skip
    variables = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert variables["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert variables["AC_APP_NAME"] == "main", "the executor's value wins"
    assert variables["container"] == "kurmad"
    assert variables["MINE"] == "yes"


def test_an_app_may_set_its_own_path(env) -> None:
    manager, _, image = env
    _, out = one(
        manager, image.id, "echo $PATH", app={"environment": [{"name": "PATH", "value": "/bin"}]}
    )
    assert out == "/bin"


def test_working_directory_and_exec_lookup_in_path(env) -> None:
    manager, _, image = env
    pod = run(
        manager,
        [
            app(
                "main",
                image.id,
                "",
                app={"exec": ["sh", "-c", "pwd; cat marker"], "workingDirectory": "/opt/work"},
            )
        ],
    )
    assert output(manager, pod).splitlines() == ["/opt/work", "here"]


def test_a_missing_working_directory_fails_the_app(env) -> None:
    manager, _, image = env
    pod, _ = one(manager, image.id, "true", app={"workingDirectory": "/nowhere"})
    assert pod.state == PodState.FAILED
    assert "working directory /nowhere does not exist" in (pod.apps[0].reason or "")


def test_users_and_groups_by_name_number_and_file(env) -> None:
    manager, _, image = env
    cases = {("app", "appgroup"): "1234 2345", ("4321", "5432"): "4321 5432",
             ("/etc/owned-by-app", "/etc/owned-by-app"): "0 0", ("nobody", "nogroup"): "65534 65534"}  # fmt: skip
    for (user, group), expected in cases.items():
        _, out = one(
            manager, image.id, "echo $(id -u) $(id -g)", app={"user": user, "group": group}
        )
        assert out == expected, (user, group)


def test_supplementary_gids(env) -> None:
    manager, _, image = env
    _, out = one(
        manager,
        image.id,
        "id -G",
        app={"user": "app", "group": "appgroup", "supplementaryGIDs": [3456, 7777]},
    )
    assert set(out.split()) == {"2345", "3456", "7777"}


@pytest.mark.parametrize(
    "fields,reason",
    [
        ({"user": "ghost"}, "user 'ghost' is not in the image's /etc/passwd"),
        ({"group": "ghosts"}, "group 'ghosts' is not in the image's /etc/group"),
        ({"exec": ["/bin/nothing-here"]}, "/bin/nothing-here: no such file in the image"),
        ({"exec": ["nothing-here"]}, "nothing-here: no such file in the image in PATH="),
        ({"exec": ["/etc/passwd"]}, "permission denied"),
    ],
)
def test_start_failures_give_a_reason_a_person_can_act_on(
    env, fields: dict[str, Any], reason: str
) -> None:
    manager, _, image = env
    pod = run(manager, [app("main", image.id, "true", app=fields)])
    assert pod.state == PodState.FAILED
    assert reason in (pod.apps[0].reason or ""), pod.apps[0].reason
    assert reason in (pod.reason or "")


def test_proc_sys_and_dev_as_the_os_spec_says(env) -> None:
    manager, _, image = env
    script = ("grep -E ' /proc | /sys | /dev | /dev/pts | /dev/shm ' /proc/mounts | cut -d' ' -f2,3,4 | cut -d, -f1;"
              "for d in null zero full random urandom tty console; do test -c /dev/$d && echo $d; done;"
              "readlink /dev/ptmx; head -c 4 /dev/zero | wc -c; touch /proc/x 2>/dev/null || echo proc-ro")  # fmt: skip
    _, out = one(manager, image.id, script)
    lines = out.splitlines()
    assert "/proc proc ro" in lines and "/sys sysfs ro" in lines
    assert (
        "/dev tmpfs rw" in lines and "/dev/pts devpts rw" in lines and "/dev/shm tmpfs rw" in lines
    )
    for device in ("null", "zero", "full", "random", "urandom", "tty", "console"):
        assert device in lines
    assert "pts/ptmx" in lines and "4" in lines and "proc-ro" in lines


def test_etc_hosts_is_provided_but_an_images_own_is_kept(env, tmp_path: Path) -> None:
    manager, store, _ = env
    _, out = one(manager, env[2].id, "cat /etc/hosts; cat /etc/resolv.conf")
    assert "127.0.0.1\tlocalhost" in out
    own = import_busybox(
        store, "example.com/with-hosts", extra=[file("etc/hosts", "10.0.0.1 mine\n")]
    )
    _, out = one(manager, own.id, "cat /etc/hosts")
    assert out == "10.0.0.1 mine"


def test_each_run_starts_from_a_clean_rootfs(env) -> None:
    manager, _, image = env
    _first, _ = one(manager, image.id, "test -e /left-behind && echo dirty; touch /left-behind")
    _second, out = one(manager, image.id, "test -e /left-behind && echo dirty || echo clean")
    assert out == "clean"


def test_a_read_only_rootfs(env) -> None:
    manager, _, image = env
    pod = run(
        manager,
        [
            app(
                "main",
                image.id,
                "touch /x 2>&1; echo rc=$?; touch /tmp/y; echo tmp=$?",
                readOnlyRootFS=True,
            )
        ],
    )
    out = output(manager, pod)
    assert "Read-only file system" in out and "rc=1" in out


# --- event handlers ----------------------------------------------------------------------------------


def test_handlers_run_in_order_in_the_apps_rootfs(env) -> None:
    manager, _, image = env
    handlers = [{"name": "pre-start", "exec": ["/bin/sh", "-c", "echo pre > /order; echo pre-start ran"]},
                {"name": "post-stop", "exec": ["/bin/sh", "-c", "cat /order; echo post-stop ran"]}]  # fmt: skip
    pod, out = one(
        manager, image.id, "echo main >> /order; echo main ran", app={"eventHandlers": handlers}
    )
    assert pod.state == PodState.EXITED
    assert out.splitlines() == ["pre-start ran", "main ran", "pre", "main", "post-stop ran"]


def test_a_failing_pre_start_fails_the_app(env) -> None:
    manager, _, image = env
    handlers = [{"name": "pre-start", "exec": ["/bin/sh", "-c", "exit 4"]}]
    pod, out = one(manager, image.id, "echo should-not-run", app={"eventHandlers": handlers})
    assert pod.state == PodState.FAILED
    assert "pre-start handler /bin/sh exited with status 4" in (pod.apps[0].reason or "")
    assert "should-not-run" not in out


# --- stop, kill, zombies, crashes ----------------------------------------------------------------------


def test_stop_sends_sigterm_and_waits_for_a_clean_exit(env) -> None:
    manager, _, image = env
    pod = create(
        manager,
        manifest(
            [
                app(
                    "main",
                    image.id,
                    "trap 'echo got-term; exit 7' TERM; echo up; while true; do sleep 0.05; done",
                )
            ]
        ),
    )
    manager.start(pod.uuid)
    time.sleep(0.3)
    stopped = manager.stop(pod.uuid, grace=5)
    assert stopped.state == PodState.STOPPED
    assert stopped.apps[0].exit_code == 7
    assert output(manager, stopped).splitlines() == ["up", "got-term"]


def test_stop_kills_what_ignores_sigterm_after_the_grace_period(env) -> None:
    manager, _, image = env
    pod = create(
        manager,
        manifest([app("main", image.id, "trap '' TERM; echo up; while true; do sleep 0.05; done")]),
    )
    manager.start(pod.uuid)
    time.sleep(0.3)
    started = time.monotonic()
    stopped = manager.stop(pod.uuid, grace=1)
    took = time.monotonic() - started
    assert stopped.state == PodState.STOPPED
    assert stopped.apps[0].signal == "SIGKILL"
    assert 0.9 < took < 6


def test_orphaned_zombies_are_reaped(env) -> None:
    manager, _, image = env
    script = "for i in 1 2 3 4 5; do (sleep 0.1 &) ; done; sleep 1; ps -o stat | grep -c Z || true"
    _, out = one(manager, image.id, script)
    assert out.strip() == "0"


def test_a_crashing_app_is_reported_and_the_executor_carries_on(env) -> None:
    manager, _, image = env
    pod, _ = one(manager, image.id, "kill -SEGV $$")
    assert pod.state == PodState.EXITED
    assert pod.apps[0].signal == "SIGSEGV" and pod.apps[0].exit_code == 128 + signal.SIGSEGV
    _again, out = one(manager, image.id, "echo still-works")
    assert out == "still-works"


def test_one_failing_app_stops_its_pod_but_not_other_pods(env) -> None:
    manager, _, image = env
    bystander = create(manager, manifest([app("calm", image.id, "sleep 30")]))
    manager.start(bystander.uuid)
    pod = run(
        manager,
        [app("good", image.id, "sleep 30"), app("bad", image.id, "", app={"exec": ["/missing"]})],
    )
    assert pod.state == PodState.FAILED
    assert pod.app("good").state == "exited" and pod.app("bad").state == "failed"
    assert manager.get(bystander.uuid).state == PodState.RUNNING
    manager.stop(bystander.uuid, grace=0)


# --- create-time validation --------------------------------------------------------------------------


def test_create_refuses_what_cannot_run(env, tmp_path: Path) -> None:
    manager, _, image = env
    missing_image = {"name": "main", "image": {"id": "sha512-" + "0" * 128}}
    with pytest.raises(InvalidPod, match="is not in the store"):
        create(manager, manifest([missing_image]))
    with pytest.raises(InvalidPod, match="mount point data .* has no volume"):
        create(
            manager,
            manifest(
                [
                    app(
                        "main",
                        image.id,
                        "true",
                        app={"mountPoints": [{"name": "data", "path": "/data"}]},
                    )
                ]
            ),
        )
    with pytest.raises(InvalidPod, match="host path /no/such/dir does not exist"):
        create(manager, manifest([app("main", image.id, "true", mounts=[{"volume": "v", "path": "/v"}])],
                                volumes=[{"name": "v", "kind": "host", "source": "/no/such/dir"}]))  # fmt: skip
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(InvalidPod, match="is a symlink"):
        create(manager, manifest([app("main", image.id, "true", mounts=[{"volume": "v", "path": "/v"}])],
                                volumes=[{"name": "v", "kind": "host", "source": str(tmp_path / "link")}]))  # fmt: skip
    with pytest.raises(InvalidPod, match="overlap"):
        create(manager, manifest([app("main", image.id, "true", mounts=[{"volume": "v", "path": "/a"}, {"volume": "v", "path": "/a/b"}])],
                                volumes=[{"name": "v", "kind": "empty"}]))  # fmt: skip


def test_a_template_is_reified_by_name_and_labels(env) -> None:
    manager, _, image = env
    template = PodManifest.from_json({"acKind": "PodManifest", "acVersion": "0.7.4", "apps": [
        {"name": "main", "image": {"name": "example.com/busybox"}, "app": {"exec": ["/bin/true"], "user": "0", "group": "0"}}]})  # fmt: skip
    pod = create(manager, template)
    assert pod.manifest.apps[0].image.id == image.id


def test_names_are_unique_and_pods_are_found_by_name_uuid_or_prefix(env) -> None:
    manager, _, image = env
    pod = create(manager, manifest([app("main", image.id, "true")]), name="unique-one")
    with pytest.raises(PodConflict, match="exists already"):
        create(manager, manifest([app("main", image.id, "true")]), name="unique-one")
    assert manager.get("unique-one").uuid == manager.get(pod.uuid[:8]).uuid == pod.uuid
    with pytest.raises(InvalidPod, match="pod name"):
        create(manager, manifest([app("main", image.id, "true")]), name="Not A Name")


def test_removing_a_running_pod_needs_force_and_frees_its_images(env) -> None:
    manager, store, image = env
    pod = create(manager, manifest([app("main", image.id, "sleep 30")]))
    manager.start(pod.uuid)
    with pytest.raises(PodConflict, match="stop it first"):
        manager.remove(pod.uuid)
    assert any(pod.uuid[:8] in h for h in store.holders(image.id))
    manager.remove(pod.uuid, force=True)
    assert not any(pod.uuid[:8] in h for h in store.holders(image.id))
    assert not (manager.root / pod.uuid).exists()


# --- logs and enter ------------------------------------------------------------------------------------


def test_logs_keep_streams_apart_and_follow_until_the_app_ends(env) -> None:
    manager, _, image = env
    pod = create(
        manager,
        manifest([app("main", image.id, "echo one; echo two >&2; sleep 0.5; printf three")]),
    )
    manager.start(pod.uuid)
    records = list(manager.logs(pod.uuid, follow=True))
    assert [(r.stream, r.line, r.partial) for r in records] == [
        ("stdout", b"one", False), ("stderr", b"two", False), ("stdout", b"three", True)
    ]  # fmt: skip
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", records[0].timestamp)


def test_enter_runs_in_the_apps_namespaces_with_its_user(env) -> None:
    manager, _, image = env
    pod = create(
        manager,
        manifest(
            [
                app(
                    "main",
                    image.id,
                    "echo $$ > /tmp/main.pid; sleep 30",
                    app={"user": "app", "group": "appgroup"},
                )
            ]
        ),
    )
    manager.start(pod.uuid)
    time.sleep(0.3)
    read_end, write_end = os.pipe()
    entered = manager.enter(pod.uuid, None, ["/bin/sh", "-c", "hostname; id -u; cat /tmp/main.pid; exit 3"],
                            stdio=[os.open("/dev/null", os.O_RDONLY), write_end, write_end])  # fmt: skip
    os.close(write_end)
    assert manager.wait_enter(entered.pid, 10) == 3
    out = os.read(read_end, 4096).decode().split()
    assert out[0] == pod.name and out[1] == "1234" and int(out[2]) < 20
    manager.stop(pod.uuid, grace=0)


def test_enter_with_a_terminal(env) -> None:
    manager, _, image = env
    pod = create(manager, manifest([app("main", image.id, "sleep 30")]))
    manager.start(pod.uuid)
    time.sleep(0.2)
    entered = manager.enter(
        pod.uuid,
        None,
        ["/bin/sh", "-c", "tty; stty size; sleep 0.3; stty size"],
        stdio=None,
        window=(33, 111),
    )
    assert entered.terminal is not None
    time.sleep(0.1)
    fcntl.ioctl(
        entered.terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0)
    )  # a resize
    out = b""
    while True:
        try:
            chunk = os.read(entered.terminal, 4096)
        except OSError:  # EIO: the other side closed
            break
        if not chunk:
            break
        out += chunk
    assert manager.wait_enter(entered.pid, 10) == 0
    lines = out.decode().split()
    assert lines[0].startswith("/dev/pts/") and lines[1:] == ["33", "111", "40", "120"]
    manager.stop(pod.uuid, grace=0)


# --- isolators -----------------------------------------------------------------------------------------


def isolator(name: str, value: Any) -> dict[str, Any]:
    return {"name": name, "value": value}


def status_field(out: str, field: str) -> str:
    return next(
        line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith(field + ":")
    )


def test_default_capabilities_are_the_spec_set(env) -> None:
    manager, _, image = env
    _, out = one(manager, image.id, "grep -E 'Cap(Bnd|Eff)' /proc/self/status")
    default = sum(1 << n for n in (29, 0, 1, 4, 3, 5, 27, 13, 10, 7, 6, 8, 31, 18))
    assert int(status_field(out, "CapBnd"), 16) == default
    assert int(status_field(out, "CapEff"), 16) == default


def test_capability_retain_and_remove_sets(env) -> None:
    manager, _, image = env
    _, out = one(manager, image.id, "grep CapBnd /proc/self/status",
                 app={"isolators": [isolator("os/linux/capabilities-retain-set", {"set": ["CAP_NET_ADMIN", "CAP_KILL"]})]})  # fmt: skip
    assert int(status_field(out, "CapBnd"), 16) == (1 << 12) | (1 << 5)
    _, out = one(manager, image.id, "grep CapBnd /proc/self/status",
                 app={"isolators": [isolator("os/linux/capabilities-remove-set", {"set": ["CAP_CHOWN", "CAP_SYS_ADMIN"]})]})  # fmt: skip
    bounding = int(status_field(out, "CapBnd"), 16)
    assert not bounding & 1 and bounding & (1 << 5), "CHOWN gone, KILL kept"


def test_a_non_root_user_has_no_effective_capabilities(env) -> None:
    manager, _, image = env
    _, out = one(
        manager, image.id, "grep CapEff /proc/self/status", app={"user": "app", "group": "appgroup"}
    )
    assert int(status_field(out, "CapEff"), 16) == 0


def test_no_new_privileges(env) -> None:
    manager, _, image = env
    _, out = one(
        manager,
        image.id,
        "grep NoNewPrivs /proc/self/status",
        app={"isolators": [isolator("os/linux/no-new-privileges", True)]},
    )
    assert status_field(out, "NoNewPrivs") == "1"
    _, out = one(manager, image.id, "grep NoNewPrivs /proc/self/status")
    assert status_field(out, "NoNewPrivs") == "0"


def test_seccomp_remove_set_with_an_errno_and_without(env) -> None:
    manager, _, image = env
    blocked = isolator(
        "os/linux/seccomp-remove-set", {"set": ["mkdir", "mkdirat"], "errno": "EACCES"}
    )
    pod, out = one(
        manager, image.id, "mkdir /x; echo rc=$?; echo alive", app={"isolators": [blocked]}
    )
    assert "Permission denied" in output(manager, pod, stream="stderr") and "alive" in out
    killing = isolator("os/linux/seccomp-remove-set", {"set": ["mkdir", "mkdirat"]})
    pod, _ = one(manager, image.id, "exec mkdir /x", app={"isolators": [killing]})
    assert pod.apps[0].signal == "SIGSYS"


def test_seccomp_retain_set_blocks_everything_else(env) -> None:
    manager, _, image = env
    allowed = ["read", "write", "open", "openat", "close", "fstat", "newfstatat", "stat", "lseek", "mmap", "brk",
               "rt_sigaction", "rt_sigprocmask", "ioctl", "exit_group", "getpid", "getuid", "execve", "arch_prctl",
               "set_tid_address", "uname", "getcwd", "prlimit64", "access", "readlink", "getppid", "geteuid"]  # fmt: skip
    retain = isolator("os/linux/seccomp-retain-set", {"set": allowed, "errno": "ENOSYS"})
    pod = run(
        manager,
        [
            app(
                "main",
                image.id,
                "",
                app={"exec": ["/bin/busybox", "mkdir", "/x"], "isolators": [retain]},
            )
        ],
    )
    assert pod.apps[0].exit_code == 1
    assert "Function not implemented" in output(manager, pod, stream="stderr")


def test_the_default_filter_blocks_what_containers_should_not_do(env) -> None:
    manager, _, image = env
    script = ("grep Seccomp: /proc/self/status; unshare -U true; echo userns=$?; "
              "unshare -m true; echo mountns=$?; sh -c 'exit 3'; echo fork=$?")  # fmt: skip
    pod, out = one(manager, image.id, script)
    assert status_field(out, "Seccomp") == "2", "a filter is on by default"
    assert "userns=1" in out and "mountns=1" in out and "fork=3" in out
    assert "Operation not permitted" in output(manager, pod, stream="stderr")
    admin = isolator("os/linux/capabilities-retain-set",
                     {"set": [*DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN"]})  # fmt: skip
    _, out = one(manager, image.id, script, app={"isolators": [admin]})
    assert "userns=0" in out and "mountns=0" in out, "CAP_SYS_ADMIN lifts the namespace rules"


def test_memory_limit_kills_an_app_that_exceeds_it(env) -> None:
    manager, _, image = env
    limit = isolator("resource/memory", {"limit": "32Mi"})
    pod, _ = one(
        manager,
        image.id,
        "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
        app={"isolators": [limit]},
    )
    assert pod.apps[0].signal == "SIGKILL", "the OOM killer ended it"


def test_cpu_limit_and_shares_reach_the_cgroup(env) -> None:
    manager, _, image = env
    pod = create(manager, manifest([app("main", image.id, "sleep 30", app={"isolators": [
        isolator("resource/cpu", {"request": "250m", "limit": "500m"})]})]))  # fmt: skip
    manager.start(pod.uuid)
    group = manager.cgroup(pod.uuid, "main")
    cpu = group.dirs["cpu"]
    if group.version["cpu"] == 1:
        assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "50000"
        assert (cpu / "cpu.shares").read_text().strip() == "256"
    else:
        assert (cpu / "cpu.max").read_text().split()[0] == "50000"
    manager.stop(pod.uuid, grace=0)


def test_pod_limits_bound_the_apps(env) -> None:
    manager, _, image = env
    pod = create(
        manager,
        manifest(
            [app("main", image.id, "sleep 30")],
            isolators=[isolator("resource/memory", {"limit": "64Mi"})],
        ),
    )
    manager.start(pod.uuid)
    memory = manager.cgroup(pod.uuid).dirs["memory"]
    name = "memory.limit_in_bytes" if (memory / "memory.limit_in_bytes").exists() else "memory.max"
    assert int((memory / name).read_text()) == 64 * 2**20
    manager.stop(pod.uuid, grace=0)
    deadline = time.monotonic() + 2
    while memory.exists() and time.monotonic() < deadline:
        time.sleep(0.01)  # freed right after the pod is reported stopped
    assert not memory.exists(), "the pod's cgroup goes with the pod"


def test_sysctls_apply_to_the_pod_and_host_ones_need_the_admin_role(env) -> None:
    manager, _, image = env
    pod = run(manager, [app("main", image.id, "cat /proc/sys/net/ipv4/ip_forward")],
              isolators=[isolator("os/unix/sysctl", {"net.ipv4.ip_forward": "1"})])  # fmt: skip
    assert output(manager, pod) == "1"
    host_wide = manifest(
        [app("main", image.id, "true")],
        isolators=[isolator("os/unix/sysctl", {"kernel.panic": "1"})],
    )
    with pytest.raises(
        PrivilegeRequired, match=r"sysctl kernel.panic \(not in the pod's namespaces\)"
    ):
        manager.create(host_wide)
    for bad, why in (
        ({"kernel.panic": "1\n2"}, "newline"),
        ({"../../etc/x": "1"}, "not a sysctl name"),
    ):
        with pytest.raises(InvalidPod, match=why):
            create(
                manager,
                manifest(
                    [app("main", image.id, "true")], isolators=[isolator("os/unix/sysctl", bad)]
                ),
            )


def test_oom_score_adj_can_be_raised(env) -> None:
    manager, _, image = env
    _, out = one(
        manager,
        image.id,
        "cat /proc/self/oom_score_adj",
        app={"isolators": [isolator("os/linux/oom-score-adj", 500)]},
    )
    assert out == "500"


def test_ignored_isolators_are_reported(env) -> None:
    manager, _, image = env
    pod = create(manager, manifest([app("main", image.id, "true", app={"isolators": [
        isolator("example.com/ponies", 1), isolator("resource/network-bandwidth", {"default": True, "limit": "1M"}),
        isolator("resource/memory", {"limit": "1G"})]})]))  # fmt: skip
    report = pod.apps[0].isolators.to_json()
    assert "resource/memory" in report["enforced"]
    ignored = {i["name"]: i["reason"] for i in report["ignored"]}
    assert ignored["example.com/ponies"] == "unknown isolator"
    assert "no traffic shaper" in ignored["resource/network-bandwidth"]


def test_unknown_capabilities_and_syscalls_are_refused_at_create(env) -> None:
    manager, _, image = env
    with pytest.raises(InvalidPod, match="unknown capability 'CAP_PONIES'"):
        create(manager, manifest([app("main", image.id, "true", app={"isolators": [
            isolator("os/linux/capabilities-retain-set", {"set": ["CAP_PONIES"]})]})]))  # fmt: skip
    with pytest.raises(InvalidPod, match="unknown system call 'frobnicate'"):
        create(manager, manifest([app("main", image.id, "true", app={"isolators": [
            isolator("os/linux/seccomp-remove-set", {"set": ["frobnicate"]})]})]))  # fmt: skip


# --- socket activation and volumes --------------------------------------------------------------------


def test_socket_activated_ports_are_passed_as_listening_fds(env) -> None:
    manager, _, image = env
    ports = [{"name": "web", "protocol": "tcp", "port": 8080, "socketActivated": True}]
    _pod, out = one(manager, image.id, "echo $LISTEN_FDS $LISTEN_FDNAMES; test $LISTEN_PID = $$ && echo pid-ok; ls -l /proc/self/fd/3",
                   app={"ports": ports})  # fmt: skip
    lines = out.splitlines()
    assert lines[0] == "1 web" and lines[1] == "pid-ok" and "socket:" in lines[2]


def test_empty_volumes_get_their_mode_and_owner(env) -> None:
    manager, _, image = env
    pod = run(manager, [app("main", image.id, "stat -c '%a %u %g' /scratch", mounts=[{"volume": "s", "path": "/scratch"}])],
              volumes=[{"name": "s", "kind": "empty", "mode": "0700", "uid": 1234, "gid": 2345}])  # fmt: skip
    assert output(manager, pod) == "700 1234 2345"


def test_a_symlink_in_the_image_cannot_redirect_a_volume_onto_the_host(env, tmp_path: Path) -> None:
    manager, store, _ = env
    from .tarcraft import symlink

    sneaky = import_busybox(
        store, "example.com/sneaky", extra=[symlink("data", "/etc/kurmad-escape")]
    )
    (tmp_path / "payload").write_text("volume content\n")
    pod = run(manager, [app("main", sneaky.id, "cat /data/payload", mounts=[{"volume": "v", "path": "/data"}])],
              volumes=[{"name": "v", "kind": "host", "source": str(tmp_path)}])  # fmt: skip
    assert output(manager, pod) == "volume content"
    assert not Path("/etc/kurmad-escape").exists(), "the host's /etc is untouched"


# --- restart of the manager -----------------------------------------------------------------------------


def test_a_new_manager_readopts_running_pods_and_settles_ended_ones(env, tmp_path: Path) -> None:
    _, store, image = env
    state = tmp_path / "state"
    first = PodManager(state, store, cgroup_parent=f"/kurmad-test-{os.getpid()}-restart")
    long = first.create(manifest([app("main", image.id, "sleep 30")]), name="long")
    short = first.create(manifest([app("main", image.id, "sleep 0.5; exit 9")]), name="short")
    first.start(long.uuid)
    first.start(short.uuid)
    first.close()  # the daemon goes away; the pods do not
    time.sleep(1.0)
    second = PodManager(state, store, cgroup_parent=f"/kurmad-test-{os.getpid()}-restart")
    try:
        assert second.get("long").state == PodState.RUNNING
        ended = second.get("short")
        assert ended.state == PodState.EXITED and ended.apps[0].exit_code == 9
        assert any("long" in h for h in store.holders(image.id)), "holds are taken again"
        stopped = second.stop("long", grace=0)
        assert stopped.state == PodState.STOPPED
    finally:
        for pod in second.pods():
            second.remove(pod.uuid, force=True)
        second.close()
        CgroupDriver(f"/kurmad-test-{os.getpid()}-restart").cgroup("").remove()


def test_block_io_limits_and_cpu_shares_reach_the_cgroup(env) -> None:
    manager, _, image = env
    isolators = [isolator("resource/block-bandwidth", {"default": True, "limit": "10M"}),
                 isolator("resource/block-iops", {"default": True, "limit": "500"}),
                 isolator("os/linux/cpu-shares", 2048)]  # fmt: skip
    pod = create(
        manager, manifest([app("main", image.id, "sleep 30", app={"isolators": isolators})])
    )
    manager.start(pod.uuid)
    group = manager.cgroup(pod.uuid, "main")
    try:
        if group.version.get("io") == 1:
            bps = (group.dirs["io"] / "blkio.throttle.read_bps_device").read_text()
            iops = (group.dirs["io"] / "blkio.throttle.write_iops_device").read_text()
            assert " 10000000" in bps and " 500" in iops
        elif "io" in group.dirs:
            assert "rbps=10000000" in (group.dirs["io"] / "io.max").read_text()
        if group.version.get("cpu") == 1:
            assert (group.dirs["cpu"] / "cpu.shares").read_text().strip() == "2048"
    finally:
        manager.stop(pod.uuid, grace=0)
