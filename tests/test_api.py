"""The API end to end: a real kurmad serve, driven through the client library and kurmactl."""

from __future__ import annotations

import json
import os
import pty
import select
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from kurmad.api.v1 import kurma_pb2 as pb
from kurmad.client import Client, KurmaError
from kurmad.linux.cgroups import CgroupDriver

from .busybox import busybox_entries, busybox_path, write_busybox_aci
from .daemon import ServeProcess
from .tarcraft import aci, image_manifest

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or busybox_path() is None,
    reason="needs root and busybox (apt-get install busybox-static)",
)


@pytest.fixture(scope="module")
def busybox_aci(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("aci") / "busybox.aci"
    return write_busybox_aci(path, ["/bin/sh", "-c", "echo default app"])


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, busybox_aci: Path):
    serve = ServeProcess(tmp_path_factory.mktemp("serve") / "state").start()
    with serve.client() as kurma, open(busybox_aci, "rb") as f:
        kurma.import_image(f)
    yield serve
    serve.cleanup_pods()
    serve.stop()
    CgroupDriver(serve.cgroup_parent).cgroup("").remove()


def kurmactl(
    daemon: ServeProcess | None, *args: str, stdin: bytes | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KURMA_HOST": daemon.socket} if daemon else dict(os.environ)
    result = subprocess.run(
        [sys.executable, "-m", "kurmad.cli.kurmactl", *args],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=timeout,
    )
    return subprocess.CompletedProcess(
        result.args,
        result.returncode,
        result.stdout.decode(errors="replace"),
        result.stderr.decode(errors="replace"),
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kurmactl: error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


# --- the local socket ------------------------------------------------------------------------------


def test_the_socket_is_owner_only(daemon: ServeProcess) -> None:
    mode = os.stat(daemon.state / "kurmad.sock").st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) & 0o077 == 0


def test_health_and_reflection_answer(daemon: ServeProcess) -> None:
    with grpc.insecure_channel(daemon.socket) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="kurma.v1.Pods")
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {"kurma.v1.Pods", "kurma.v1.Images", "kurma.v1.Host", "grpc.health.v1.Health"} <= names


# --- kurmactl, verb by verb --------------------------------------------------------------------------


def test_run_streams_output_and_exits_with_the_apps_code(daemon: ServeProcess) -> None:
    result = kurmactl(
        daemon,
        "run",
        "--rm",
        "example.com/busybox",
        "--",
        "/bin/sh",
        "-c",
        "echo out; echo err >&2; exit 7",
    )
    assert (result.returncode, result.stdout, result.stderr) == (7, "out\n", "err\n")
    assert kurmactl(daemon, "ps", "-a", "-o", "json").stdout.count("example.com/busybox") == 0, (
        "--rm removed it"
    )


def test_run_with_env_volume_user_and_name(daemon: ServeProcess, tmp_path: Path) -> None:
    (tmp_path / "data").write_text("from the host\n")
    tmp_path.chmod(0o755)  # the app runs as uid 1234
    result = kurmactl(daemon, "run", "--rm", "--name", "named", "-e", "GREETING=hi", "-v", f"{tmp_path}:/mnt:ro",
                      "-u", "1234:2345", "-w", "/mnt", "example.com/busybox", "--",
                      "/bin/sh", "-c", "echo $GREETING $(hostname) $(id -u):$(id -g) $(pwd); cat data; touch x || echo ro")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["hi named 1234:2345 /mnt", "from the host", "ro"]


@pytest.mark.parametrize(
    ("user", "ids"),
    [("app", "1234:2345"), ("nobody", "65534:65534"), ("1234", "1234:2345"), ("4321", "4321:0"),
     ("app:extra", "1234:3456"), ("app:0", "1234:0")],
)  # fmt: skip
def test_run_as_a_user_alone_gives_the_users_own_group(
    daemon: ServeProcess, user: str, ids: str
) -> None:
    """As docker run -u: a user without a group runs with its group from the image's
    /etc/passwd (the image's group when it has no entry); a group given is kept."""
    result = kurmactl(daemon, "run", "--rm", "-u", user, "example.com/busybox", "--",
                      "/bin/sh", "-c", "echo $(id -u):$(id -g)")  # fmt: skip
    assert (result.returncode, result.stdout) == (0, f"{ids}\n"), result.stderr


def test_run_with_the_host_network(daemon: ServeProcess) -> None:
    script = "readlink /proc/self/ns/net; readlink /proc/self/ns/uts"
    shared = kurmactl(
        daemon, "run", "--rm", "--net", "host", "example.com/busybox", "--", "/bin/sh", "-c", script
    )
    own = kurmactl(daemon, "run", "--rm", "example.com/busybox", "--", "/bin/sh", "-c", script)
    assert shared.returncode == 0 and own.returncode == 0, shared.stderr + own.stderr
    host_net, host_uts = os.readlink("/proc/self/ns/net"), os.readlink("/proc/self/ns/uts")
    assert shared.stdout.splitlines() == [host_net, shared.stdout.splitlines()[1]]
    assert shared.stdout.splitlines()[1] != host_uts  # only the network is shared
    assert own.stdout.splitlines()[0] != host_net


def test_run_an_aci_file_imports_it_first(daemon: ServeProcess, busybox_aci: Path) -> None:
    result = kurmactl(daemon, "run", "--rm", str(busybox_aci))
    assert result.returncode == 0 and result.stdout == "default app\n"


def test_run_detached_then_ps_show_logs_exec_stop_rm(daemon: ServeProcess) -> None:
    started = kurmactl(daemon, "run", "-d", "--name", "ticker", "example.com/busybox", "--", "/bin/sh", "-c",
                       "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.1; done")  # fmt: skip
    assert started.returncode == 0 and started.stdout.strip() == "ticker"
    time.sleep(0.5)
    ps = kurmactl(daemon, "ps")
    assert "ticker" in ps.stdout and "RUNNING" in ps.stdout
    pods = json.loads(kurmactl(daemon, "ps", "-o", "json").stdout)
    assert any(p["name"] == "ticker" and p["state"] == "POD_STATE_RUNNING" for p in pods)
    shown = kurmactl(daemon, "show", "ticker", "-o", "yaml")
    assert "manifest:" in shown.stdout and "example.com/busybox" in shown.stdout
    assert kurmactl(daemon, "logs", "ticker").stdout.startswith("tick 1\n")
    executed = kurmactl(
        daemon, "exec", "ticker", "--", "/bin/sh", "-c", "echo inside $(hostname); exit 5"
    )
    assert (executed.returncode, executed.stdout) == (5, "inside ticker\n")
    piped = kurmactl(daemon, "exec", "-i", "ticker", "--", "/bin/cat", stdin=b"through stdin\n")
    assert piped.stdout == "through stdin\n"
    busy = kurmactl(daemon, "rm", "ticker")
    assert_one_line_error(busy, "stop it first", "FAILED_PRECONDITION")
    stopped = kurmactl(daemon, "stop", "-t", "2", "ticker")
    assert stopped.returncode == 0 and "STOPPED" in stopped.stdout
    assert kurmactl(daemon, "rm", "ticker").returncode == 0
    assert "ticker" not in kurmactl(daemon, "ps", "-a").stdout


def test_start_runs_pods_made_with_no_start(daemon: ServeProcess, tmp_path: Path) -> None:
    with daemon.client() as kurma:
        image_id = kurma.image("example.com/busybox").id
    for name, argv in (("later", '["/bin/sleep", "30"]'), ("broken", '["/no/such/program"]')):
        (tmp_path / f"{name}.yaml").write_text(f"""acKind: PodManifest
acVersion: 0.8.11
apps:
  - name: one
    image: {{id: "{image_id}"}}
    app: {{exec: {argv}, user: "0", group: "0"}}
""")
        created = kurmactl(daemon, "create", "--no-start", "-f", str(tmp_path / f"{name}.yaml"),
                           "--name", name)  # fmt: skip
        assert created.returncode == 0, created.stderr
    started = kurmactl(daemon, "start", "later")
    assert (started.returncode, started.stdout) == (0, "later RUNNING\n")
    assert_one_line_error(kurmactl(daemon, "start", "later"), "only a NEW pod can start")
    failed = kurmactl(daemon, "start", "broken")
    assert failed.returncode == 125 and "pod broken failed" in failed.stderr
    assert kurmactl(daemon, "rm", "-f", "later", "broken").returncode == 0


def test_logs_follow_until_the_pod_ends(daemon: ServeProcess) -> None:
    kurmactl(daemon, "run", "-d", "--name", "counter", "example.com/busybox", "--", "/bin/sh", "-c",
             "for i in 1 2 3 4 5; do echo line $i; sleep 0.2; done")  # fmt: skip
    followed = kurmactl(daemon, "logs", "-f", "counter")
    assert followed.stdout.splitlines() == [f"line {i}" for i in range(1, 6)]
    kurmactl(daemon, "rm", "counter")


def test_create_from_a_yaml_manifest(daemon: ServeProcess, tmp_path: Path) -> None:
    with daemon.client() as kurma:
        image_id = kurma.image("example.com/busybox").id
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(f"""acKind: PodManifest
acVersion: 0.8.11
apps:
  - name: one
    image: {{id: "{image_id}"}}
    app: {{exec: ["/bin/sh", "-c", "echo from yaml"], user: "0", group: "0"}}
""")
    created = kurmactl(daemon, "create", "-f", str(manifest), "--name", "from-yaml")
    assert created.returncode == 0 and created.stdout.strip() == "from-yaml"
    with daemon.client() as kurma:
        assert kurma.wait("from-yaml", 10).state == pb.POD_STATE_EXITED
    assert kurmactl(daemon, "logs", "from-yaml").stdout == "from yaml\n"
    kurmactl(daemon, "rm", "from-yaml")


def test_images_import_list_show_rm_gc(daemon: ServeProcess, tmp_path: Path) -> None:
    extra = tmp_path / "extra.aci"
    extra.write_bytes(aci(image_manifest("example.com/extra", "2.0.0"), busybox_entries()[:3]))
    imported = kurmactl(daemon, "image", "import", "-", stdin=extra.read_bytes())
    assert imported.returncode == 0 and "example.com/extra" in imported.stdout
    again = kurmactl(daemon, "image", "import", str(extra))
    assert "already in the store" in again.stdout
    listed = kurmactl(daemon, "image", "list")
    assert "example.com/extra" in listed.stdout and "2.0.0" in listed.stdout
    shown = json.loads(kurmactl(daemon, "image", "show", "example.com/extra", "-o", "json").stdout)
    assert shown["name"] == "example.com/extra" and shown["manifest"]["acKind"] == "ImageManifest"
    assert kurmactl(daemon, "image", "rm", "example.com/extra").returncode == 0
    assert_one_line_error(kurmactl(daemon, "image", "show", "example.com/extra"), "NOT_FOUND")
    kurmactl(daemon, "image", "import", str(extra))
    gc = kurmactl(daemon, "image", "gc", "--grace", "3600")
    assert gc.stdout == "", "everything is younger than the grace period"


def test_an_image_in_use_cannot_be_removed(daemon: ServeProcess) -> None:
    kurmactl(daemon, "run", "-d", "--name", "user", "example.com/busybox", "--", "/bin/sleep", "30")
    refused = kurmactl(daemon, "image", "rm", "example.com/busybox")
    assert_one_line_error(refused, "used by pod user", "FAILED_PRECONDITION")
    kurmactl(daemon, "rm", "-f", "user")


def test_host_info_and_power_in_serve_mode(daemon: ServeProcess) -> None:
    info = json.loads(kurmactl(daemon, "host", "info", "-o", "json").stdout)
    assert info["mode"] == "serve" and info["cpus"] >= 1 and info["kurmad_version"]
    refused = kurmactl(daemon, "host", "reboot")
    assert_one_line_error(refused, "does not reboot", "FAILED_PRECONDITION")


# --- bad requests --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,words",
    [
        (("show", "nope"), ("no pod 'nope'", "NOT_FOUND")),
        (
            ("run", "example.com/missing"),
            ("example.com/missing", "not in the store", "pulling it failed", "example.com"),
        ),
        (("stop", "nope"), ("NOT_FOUND",)),
        (("run", "-e", "NOVALUE", "example.com/busybox"), ("KEY=VALUE",)),
        (("run", "-v", "relative:/x", "example.com/busybox"), ("/HOST/PATH:/APP/PATH",)),
        (("exec", "nope", "--", "true"), ("NOT_FOUND",)),
    ],
)
def test_bad_requests_get_one_clear_line(
    daemon: ServeProcess, args: tuple[str, ...], words: tuple[str, ...]
) -> None:
    assert_one_line_error(kurmactl(daemon, *args), *words)


def test_an_invalid_manifest_names_the_field(daemon: ServeProcess, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"acKind": "PodManifest", "acVersion": "0.8.11", "apps": [
        {"name": "Bad_Name", "image": {"id": "sha512-" + "a" * 128}}]}))  # fmt: skip
    assert_one_line_error(
        kurmactl(daemon, "create", "-f", str(bad)), 'apps[0].name: "Bad_Name" is not an AC Name'
    )
    with daemon.client() as kurma, pytest.raises(KurmaError) as caught:
        kurma.create(bad.read_text())
    assert caught.value.code == "INVALID_ARGUMENT" and "apps[0].name" in caught.value.message


def test_a_taken_name_is_already_exists(daemon: ServeProcess) -> None:
    with daemon.client() as kurma:
        kurma.run("example.com/busybox", exec=["/bin/true"], name="taken", start=False)
        with pytest.raises(KurmaError) as caught:
            kurma.run("example.com/busybox", exec=["/bin/true"], name="taken", start=False)
        assert caught.value.code == "ALREADY_EXISTS"
        kurma.remove("taken")


def test_an_unreachable_daemon_is_one_line(tmp_path: Path) -> None:
    result = kurmactl(None, "--host", f"unix://{tmp_path}/none.sock", "ps")
    assert_one_line_error(result, "cannot reach kurmad")


# --- streams: exec with a terminal, attach, events --------------------------------------------------------


def test_exec_with_a_terminal_and_a_resize(daemon: ServeProcess) -> None:
    with daemon.client() as kurma:
        pod = kurma.run("example.com/busybox", exec=["/bin/sleep", "30"], name="termhost")
        resized = threading.Event()

        def requests() -> Any:
            yield pb.ExecRequest(start=pb.ExecStart(ref=pod.uuid, argv=["/bin/sh", "-c", "stty size; read x; stty size"],
                                                    tty=True, size=pb.TerminalSize(rows=30, columns=100)))  # fmt: skip
            resized.wait(5)
            yield pb.ExecRequest(resize=pb.TerminalSize(rows=50, columns=160))
            time.sleep(0.2)
            yield pb.ExecRequest(stdin=b"go\r")

        out, code = b"", None
        for response in kurma.exec(requests()):
            if response.WhichOneof("response") == "stdout":
                out += response.stdout
                if b"30 100" in out:
                    resized.set()
            elif response.WhichOneof("response") == "exit_code":
                code = response.exit_code
        kurma.remove(pod.uuid, force=True)
    assert code == 0
    assert b"30 100" in out and b"50 160" in out


def test_run_interactive_with_a_terminal(daemon: ServeProcess) -> None:
    env = {**os.environ, "KURMA_HOST": daemon.socket}
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(sys.executable, [sys.executable, "-m", "kurmad.cli.kurmactl", "run", "--rm", "-it", "example.com/busybox",
                                   "--", "/bin/sh", "-c", "read name; echo hello $name; tty"], env)  # fmt: skip
    time.sleep(1.5)
    os.write(fd, b"kurma\r")
    out = b""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out
    assert b"hello kurma" in out and b"/dev/pts/" in out


def test_events_report_pod_lifecycles(daemon: ServeProcess) -> None:
    seen: list[tuple[str, str]] = []
    with daemon.client() as kurma:
        stream = kurma.events()

        def collect() -> None:
            try:
                for event in stream:
                    seen.append((event.kind, event.action))
                    if event.action == "removed" and event.kind == "pod":
                        return
            except KurmaError:
                return

        reader = threading.Thread(target=collect, daemon=True)
        reader.start()
        time.sleep(0.3)
        pod = kurma.run("example.com/busybox", exec=["/bin/true"], name="evented")
        kurma.wait(pod.uuid, 10)
        kurma.remove(pod.uuid)
        reader.join(10)
        stream.cancel() if hasattr(stream, "cancel") else None
    assert (
        ("pod", "created") in seen
        and ("pod", "started") in seen
        and ("pod", "exited") in seen
        and ("pod", "removed") in seen
    )


# --- restart ------------------------------------------------------------------------------------------------


def test_pods_and_images_survive_a_sigkill_of_the_daemon(tmp_path: Path, busybox_aci: Path) -> None:
    serve = ServeProcess(tmp_path / "state").start()
    try:
        with serve.client() as kurma, open(busybox_aci, "rb") as f:
            kurma.import_image(f)
            kurma.run(
                "example.com/busybox",
                exec=["/bin/sh", "-c", "echo still here; sleep 30"],
                name="long",
            )
            kurma.run(
                "example.com/busybox", exec=["/bin/sh", "-c", "sleep 1; exit 6"], name="short"
            )
            kurma.run("example.com/busybox", exec=["/bin/sh", "-c", "exit 2"], name="done")
            kurma.wait("done", 10)
        serve.kill()
        time.sleep(1.5)  # short ends while no daemon runs
        serve.start()
        with serve.client() as kurma:
            states = {
                p.name: (p.state, p.apps[0].exit_code if p.apps[0].HasField("exit_code") else None)
                for p in kurma.pods()
            }
            assert states["long"] == (pb.POD_STATE_RUNNING, None)
            assert states["short"] == (pb.POD_STATE_EXITED, 6)
            assert states["done"] == (pb.POD_STATE_EXITED, 2)
            assert [i.name for i in kurma.images()] == ["example.com/busybox"]
            assert [e.line for e in kurma.logs("long")] == [b"still here"]
            assert kurma.stop("long", 0).state == pb.POD_STATE_STOPPED
    finally:
        serve.cleanup_pods()
        serve.stop()
        CgroupDriver(serve.cgroup_parent).cgroup("").remove()


# --- TLS and roles -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_daemon(tmp_path_factory: pytest.TempPathFactory, busybox_aci: Path):
    serve = ServeProcess(
        tmp_path_factory.mktemp("tls") / "state", "--listen", "127.0.0.1:0"
    ).start()
    bundles = {role: serve.issue_bundle(f"{role}-user", role, serve.state.parent / f"bundle-{role}")
               for role in ("reader", "operator", "admin")}  # fmt: skip
    serve.import_image(busybox_aci)
    yield serve, bundles
    serve.cleanup_pods()
    serve.stop()
    CgroupDriver(serve.cgroup_parent).cgroup("").remove()


def test_roles_are_enforced_on_every_call(tls_daemon) -> None:
    serve, bundles = tls_daemon
    assert serve.tcp is not None
    with Client(serve.tcp, bundles["reader"]) as reader:
        assert reader.info().mode == "serve"
        assert reader.images()
        with pytest.raises(KurmaError) as caught:
            reader.run("example.com/busybox", exec=["/bin/true"])
        assert (
            caught.value.code == "PERMISSION_DENIED"
            and "needs the operator role" in caught.value.message
        )
    with Client(serve.tcp, bundles["operator"]) as operator:
        pod = operator.run("example.com/busybox", exec=["/bin/true"])
        assert operator.wait(pod.uuid, 10).state == pb.POD_STATE_EXITED
        with pytest.raises(KurmaError) as caught:
            operator.reboot()
        assert caught.value.code == "PERMISSION_DENIED"
    with Client(serve.tcp, bundles["admin"]) as admin, pytest.raises(KurmaError) as caught:
        admin.reboot()
    assert caught.value.code == "FAILED_PRECONDITION", (
        "allowed, but kurmad serve does not own the power"
    )


def test_an_operator_cannot_weaken_a_pods_confinement(tls_daemon, tmp_path: Path) -> None:
    serve, bundles = tls_daemon
    with Client(serve.tcp, bundles["operator"]) as operator:
        image_id = operator.image("example.com/busybox").id
        manifest = {"acKind": "PodManifest", "acVersion": "0.8.11",
                    "annotations": [{"name": "kurmad.io/host-network", "value": "true"}],
                    "isolators": [{"name": "os/unix/sysctl", "value": {"net.ipv4.ip_forward": "1"}}],
                    "apps": [{"name": "a", "image": {"id": image_id}}]}  # fmt: skip
        with pytest.raises(KurmaError) as caught:
            operator.create(json.dumps(manifest))
        assert caught.value.code == "PERMISSION_DENIED"
        assert (
            "needs the admin role for: the host's network; sysctl net.ipv4.ip_forward (the host's network)"
            in caught.value.message
        )
        with pytest.raises(KurmaError) as caught:
            operator.run("example.com/busybox", exec=["/bin/true"], volumes=[("/", "/host", True)])
        assert (
            caught.value.code == "PERMISSION_DENIED"
            and "kurmad keeps from every pod" in caught.value.message
        )
        assert not [p for p in operator.pods() if p.name.startswith("a-")], "nothing was kept"
    with Client(serve.tcp, bundles["admin"]) as admin, pytest.raises(KurmaError) as caught:
        admin.run(
            "example.com/busybox",
            exec=["/bin/true"],
            volumes=[(str(serve.state / "tls"), "/tls", True)],
        )
    assert caught.value.code == "PERMISSION_DENIED", "not even the admin mounts the CA key"


def test_tcp_without_a_client_certificate_is_refused(tls_daemon, tmp_path: Path) -> None:
    serve, _ = tls_daemon
    with Client(serve.tcp, insecure=True, timeout=5) as plain, pytest.raises(KurmaError) as caught:
        plain.info()
    assert caught.value.code == "UNAVAILABLE"
    foreign = ServeProcess(tmp_path / "other")
    subprocess.run([sys.executable, "-m", "kurmad", "certs", "client", "x", "--role", "admin", "-o", str(tmp_path / "foreign"),
                    "--state-dir", str(foreign.state)], check=True, capture_output=True)  # fmt: skip
    with (
        Client(serve.tcp, tmp_path / "foreign", timeout=5) as stranger,
        pytest.raises(KurmaError) as caught,
    ):
        stranger.info()
    assert caught.value.code == "UNAVAILABLE", "a certificate from another CA does not get in"


def test_kurmactl_over_tcp_with_a_bundle(tls_daemon) -> None:
    serve, bundles = tls_daemon
    result = kurmactl(
        None,
        "--host",
        serve.tcp,
        "--tls-dir",
        str(bundles["operator"]),
        "run",
        "--rm",
        "example.com/busybox",
        "--",
        "/bin/echo",
        "over tls",
    )
    assert (result.returncode, result.stdout) == (0, "over tls\n")
    refused = kurmactl(None, "--host", serve.tcp, "ps")
    assert_one_line_error(refused, "--tls-dir")
