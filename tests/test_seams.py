"""The typed seams between rooms: each type reads what it writes, reads the shape records have
always had on disk, and names the field of what it cannot read."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from kurmad.net.plan import Attachment, NetworkPlan, PlanError, PublishedPort
from kurmad.pods.model import AppStatus, PodState
from kurmad.pods.records import PodRecord
from kurmad.runtime import messages
from kurmad.runtime.isolators import Ignored, Report
from kurmad.runtime.layout import PodsDir
from kurmad.runtime.spec import AppSpec
from kurmad.runtime.status import (
    AppReport,
    AppState,
    InitState,
    InitStatus,
    StatusError,
    read_status,
)

# A record as issue 11's kurmad wrote it (keys and shapes), with a wired bridge network.
OLD_RECORD = {
    "uuid": "6c3a4c1e-3f0e-4d8f-9a0b-0e7c1f0a2b3c", "name": "web", "created_at": 1.5,
    "manifest": {"acKind": "PodManifest", "acVersion": "0.8.11", "apps": [
        {"name": "main", "image": {"id": "sha512-" + "a" * 128, "name": "example.com/x"}}]},
    "state": "RUNNING", "reason": None, "started_at": 2.0, "finished_at": None, "pid": 42,
    "pid_start": 7, "stop_requested": False, "rollback": False,
    "apps": [{"name": "main", "image_id": "sha512-" + "a" * 128, "state": "running",
              "exit_code": None, "signal": None, "reason": None, "started_at": 2.0,
              "finished_at": None, "pid": 3, "warnings": ["w"],
              "isolators": {"enforced": ["resource/memory"], "ignored": [{"name": "x.io/y", "reason": "unknown isolator"}]}}],
    "isolators": {"enforced": [], "ignored": []},
    "network": {"networks": [{"name": "kurma0", "ifname": "eth0", "index": 0, "address": "10.222.0.2/16",
                              "gateway": "10.222.0.1"}],
                "ports": [{"pod": "6c3a4c1e-3f0e-4d8f-9a0b-0e7c1f0a2b3c", "protocol": "tcp", "host_port": 8080, "port": 80}]},
}  # fmt: skip


def test_a_record_reads_the_old_shape_and_writes_it_back_the_same() -> None:
    record = PodRecord.from_json(json.loads(json.dumps(OLD_RECORD)))
    assert record.state == PodState.RUNNING and record.apps[0].state == AppState.RUNNING
    assert record.apps[0].isolators.ignored == [Ignored("x.io/y", "unknown isolator")]
    assert record.network is not None and record.network.first_address() == "10.222.0.2"
    assert record.network.ports == (PublishedPort(OLD_RECORD["uuid"], "tcp", 8080, 80),)  # type: ignore[arg-type]
    assert record.to_json() == OLD_RECORD


@pytest.mark.parametrize(
    "change,why",
    [
        ({"state": "SLEEPING"}, "SLEEPING"),
        ({"apps": [{"image_id": "x"}]}, "an app without a name"),
        ({"apps": [{"name": "a", "state": "dancing"}]}, "apps.a.state"),
        ({"apps": [{"name": "a", "pid": "three"}]}, "apps.a.pid"),
        ({"network": {"networks": [{"name": "n"}]}}, "network.networks\\[0\\]"),
        ({"network": {"ports": [{"pod": "p", "protocol": "tcp", "host_port": "x", "port": 1}]}}, "network.ports\\[0\\]"),
        ({"surprise": 1}, "unknown fields"),
    ],
)  # fmt: skip
def test_a_record_that_cannot_be_read_names_the_field(change: dict, why: str) -> None:
    with pytest.raises((ValueError, KeyError, TypeError), match=why):
        PodRecord.from_json({**OLD_RECORD, **change})


def test_a_plan_is_unwired_and_filled_without_changing_what_it_was() -> None:
    plan = NetworkPlan((Attachment("cni0", "eth0", 0, cni='{"ips": []}', attempted=True),))
    assert plan.unwired().networks[0].cni is None and not plan.unwired().networks[0].attempted
    filled = plan.with_attachment(Attachment("cni0", "eth0", 0, address="10.0.0.2/24"))
    assert filled.first_address() == "10.0.0.2" and plan.first_address() == ""
    with pytest.raises(PlanError, match="network: networks and ports must be lists"):
        NetworkPlan.from_json({"networks": {}})


def test_the_pod_inits_status_round_trips_and_is_written_atomically(tmp_path: Path) -> None:
    status = InitStatus(InitState.STOPPING, "asked", False,
                        {"a": AppReport(AppState.EXITED, 5, 3, "SIGTERM", None, 1.0, 2.0, ("w",))}, 9.0)  # fmt: skip
    status.write(tmp_path / "status.json")
    assert read_status(tmp_path / "status.json") == status
    assert list(tmp_path.iterdir()) == [tmp_path / "status.json"], "no temporary file left"
    (tmp_path / "status.json").write_text('{"state": "HAPPY"}')
    assert read_status(tmp_path / "status.json") is None
    with pytest.raises(StatusError, match="apps.a.exit_code"):
        InitStatus.from_json({"state": "RUNNING", "apps": {"a": {"exit_code": "x"}}})


def test_a_status_the_disk_refuses_leaves_the_last_one_and_no_temporary(tmp_path: Path) -> None:
    status = InitStatus(InitState.RUNNING, None, False, {}, 1.0)
    status.write(tmp_path / "status.json")
    (tmp_path / "blocked").mkdir()
    (tmp_path / "blocked" / "inside").touch()
    with pytest.raises(OSError):
        status.write(tmp_path / "blocked")  # a full directory where the file should go
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocked", "status.json"]
    assert read_status(tmp_path / "status.json") == status


def test_an_interrupted_wiring_is_undone_whole() -> None:
    plan = NetworkPlan((Attachment("kurma0", "eth0", 0), Attachment("cni0", "eth1", 1)))
    assert [n.attempted for n in plan.all_attempted().networks] == [True, True]
    assert [n.attempted for n in plan.networks] == [False, False]


def test_an_app_status_takes_in_what_the_pod_init_reports() -> None:
    app = AppStatus("main", "sha512-x", isolators=Report(["resource/cpu"]))
    seen = app.reported(AppReport(AppState.EXITED, 4, 0, None, None, 1.0, 2.0))
    assert (seen.state, seen.exit_code, seen.isolators.enforced) == (
        AppState.EXITED,
        0,
        ["resource/cpu"],
    )
    assert AppStatus.from_json(seen.to_json()) == seen


def test_launcher_messages_are_one_closed_set() -> None:
    app = AppSpec(
        name="a", image_id="i", lowers=["/l"], exec=["/bin/true"], env={}, user="0", group="0"
    )
    for message in (messages.StartPod(1, "/pods/x", True, None), messages.Enter(2, 9, app, ["sh"], window=(3, 4)),
                    messages.Ready(7), messages.Exited(8, 256), messages.Started(1, 8),
                    messages.Refused(2, "no"), messages.Terminal()):  # fmt: skip
        assert messages.decode(messages.encode(message)) == message
    for bad in (b"not json", b'{"type": "Nonsense"}', b'{"type": "Exited", "pid": 1}', b"[]"):
        with pytest.raises(messages.MessageError):
            messages.decode(bad)


def test_the_layout_has_one_owner(tmp_path: Path) -> None:
    pods = PodsDir(tmp_path)
    pod = pods.pod("u")
    assert (
        pod.record == tmp_path / "u" / "pod.json"
        and pod.app("a").tty_socket == tmp_path / "u/apps/a/tty.sock"
    )
    assert pod.inside(pod.app("a").scratch) == Path("/apps/a/fs")
    assert pods.removing("u").name == ".removing-u" and pods.quarantine.name == ".quarantine"


def test_descriptors_travel_close_on_exec() -> None:
    import os

    from kurmad.linux.fds import receive_with_fds, send_with_fds

    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    read_end, write_end = os.pipe()
    with left, right:
        send_with_fds(left, b"x", [write_end])
        data, fds = receive_with_fds(right, 16)
    assert data == b"x" and len(fds) == 1 and not os.get_inheritable(fds[0])
    for fd in (read_end, write_end, *fds):
        os.close(fd)
