"""Bad input at the API edge: refused with a clear status before anything is kept, never
INTERNAL, never a broken listing (today's holes: a poisoned run broke ps for everyone, and
an empty Create lost its message)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from kurmad.api.v1 import kurma_pb2 as pb
from kurmad.api.v1 import kurma_pb2_grpc as rpc
from kurmad.client import KurmaError
from kurmad.linux.cgroups import CgroupDriver

from .busybox import busybox_path, write_busybox_aci
from .daemon import ServeProcess

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or busybox_path() is None,
    reason="needs root and busybox (apt-get install busybox-static)",
)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("input")
    serve = ServeProcess(root / "state").start()
    serve.import_image(write_busybox_aci(root / "busybox.aci", ["/bin/true"]))
    yield serve
    serve.cleanup_pods()
    serve.stop()
    CgroupDriver(serve.cgroup_parent).cgroup("").remove()


def kurmactl(daemon: ServeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kurmad.cli.kurmactl", *args], capture_output=True,
                          text=True, env={**os.environ, "KURMA_HOST": daemon.socket}, timeout=60)  # fmt: skip


def everything_still_answers(daemon: ServeProcess) -> None:
    for verb in (("ps", "-a"), ("ps", "-a", "-o", "json"), ("host", "info"), ("image", "list")):
        result = kurmactl(daemon, *verb)
        assert result.returncode == 0, (verb, result.stderr)


def pod_dirs(daemon: ServeProcess) -> list[str]:
    return sorted(p.name for p in (daemon.state / "pods").iterdir())


@pytest.mark.parametrize(
    "run,why",
    [
        ({"env": {"A B": "x"}}, "may only contain"),
        ({"env": {"A=B": "x"}}, "may only contain"),
        ({"env": {"": "x"}}, "must not be empty"),
        ({"exec": [""]}, "the program to run must not be empty"),
        ({"working_directory": "../../.."}, "must be an absolute path"),
        ({"exec": ["/bin/echo", "a\0b"]}, "NUL"),
        ({"volumes": [("/tmp\0x", "/x", False)]}, "NUL"),
        ({"volumes": [("/tmp", "/x\0y", False)]}, "NUL"),
    ],
)  # fmt: skip
def test_a_poisoned_run_is_refused_and_breaks_nothing(
    daemon: ServeProcess, run: dict, why: str
) -> None:
    before = pod_dirs(daemon)
    with daemon.client() as kurma, pytest.raises(KurmaError) as caught:
        kurma.run("example.com/busybox", **{"exec": ["/bin/true"], **run})
    assert caught.value.code == "INVALID_ARGUMENT" and why in caught.value.message, caught.value
    assert pod_dirs(daemon) == before
    everything_still_answers(daemon)


def test_the_poisoned_runs_of_kurmactl_too_and_after_a_restart(daemon: ServeProcess) -> None:
    for args in (("-e", "A B=x"), ("-w", "../../..")):
        result = kurmactl(daemon, "run", *args, "example.com/busybox", "--", "/bin/true")
        assert result.returncode != 0 and "INVALID_ARGUMENT" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    daemon.stop()
    daemon.start()
    everything_still_answers(daemon)


def raw_call(daemon: ServeProcess, method: str, request: object) -> grpc.RpcError:
    with grpc.insecure_channel(daemon.socket) as channel:
        stub = rpc.PodsStub(channel)
        try:
            result = getattr(stub, method)(request, timeout=20)
            if method in ("Exec", "Logs"):
                list(result)
        except grpc.RpcError as err:
            return err
    raise AssertionError(f"{method} succeeded")


@pytest.mark.parametrize(
    "method,request_,words",
    [
        ("Create", pb.CreatePodRequest(), "give a manifest"),
        ("Create", pb.CreatePodRequest(manifest_json="[" * 100_000), "nested too deeply"),
        ("Create", pb.CreatePodRequest(manifest_json='{"acKind": "PodManifest"}'), "acVersion"),
        ("Create", pb.CreatePodRequest(manifest_json='{"a": 1e99999}'), ""),
        ("Exec", iter([]), "the first Exec message must be start"),
        ("Exec", iter([pb.ExecRequest(stdin=b"x")]), "the first Exec message must be start"),
        ("Exec", iter([pb.ExecRequest(start=pb.ExecStart(ref="nope"))]), "give a command"),
        ("Logs", pb.LogsRequest(ref="x" * 10_000), "no pod"),
    ],
)  # fmt: skip
def test_bad_input_never_yields_internal(
    daemon: ServeProcess, method: str, request_: object, words: str
) -> None:
    err = raw_call(daemon, method, request_)
    assert err.code() != grpc.StatusCode.INTERNAL and err.code() != grpc.StatusCode.UNKNOWN, err
    assert err.details() and words in err.details(), err.details()
    everything_still_answers(daemon)


def test_a_record_that_cannot_be_read_is_quarantined_and_named(daemon: ServeProcess) -> None:
    with daemon.client() as kurma:
        kept = kurma.run("example.com/busybox", exec=["/bin/true"], name="kept", start=False)
        spoiled = kurma.run("example.com/busybox", exec=["/bin/true"], name="spoiled", start=False)
    daemon.stop()
    (daemon.state / "pods" / spoiled.uuid / "pod.json").write_text(
        json.dumps({"uuid": spoiled.uuid})
    )
    daemon.start()
    everything_still_answers(daemon)
    info = json.loads(kurmactl(daemon, "host", "info", "-o", "json").stdout)
    assert any(q.startswith(spoiled.uuid) for q in info["quarantined"]), info
    assert "quarantined pod: " + spoiled.uuid in kurmactl(daemon, "host", "info").stdout
    with daemon.client() as kurma:
        assert [p.name for p in kurma.pods()] == ["kept"]
        kurma.remove(kept.uuid)
    assert list(Path(daemon.state / "pods" / ".quarantine").iterdir())
