"""Host pieces that need no root: the boot sequence's stages, the system pods' restart policy and
backoff, volume strings, and reading the mount table."""

from __future__ import annotations

import errno
import time

import pytest

from kurmad.appc import PodManifest
from kurmad.host.boot import BOOT, FALLBACK_API, SHUTDOWN
from kurmad.host.control import Host
from kurmad.host.info import BootStage
from kurmad.host.init import EARLY
from kurmad.host.mounts import fstype_at
from kurmad.host.power import BootOptions
from kurmad.host.stages import BootSequence, CriticalStageFailed, Stage, StageFailed
from kurmad.host.tasks import BootState
from kurmad.pods.model import AppStatus, Pod, PodState
from kurmad.pods.restart import (
    FIRST_BACKOFF,
    HEALTHY_RUN,
    MAX_BACKOFF,
    RestartPolicy,
    restart_delay,
    should_restart,
)
from kurmad.volumes import parse_volume

# --- the boot sequence ------------------------------------------------------------------------


def sequence() -> tuple[BootSequence, list[str]]:
    lines: list[str] = []
    return BootSequence(lines.append), lines


def test_ok_stage_keeps_a_returned_string_as_its_detail() -> None:
    boot, lines = sequence()
    before = time.time()
    assert boot.run("load modules", lambda: "virtio_net, overlay") == "virtio_net, overlay"
    (record,) = boot.records
    assert record.name == "load modules"
    assert record.ok is True
    assert record.error == ""
    assert record.detail == "virtio_net, overlay"
    assert record.critical is False
    assert before <= record.started_at <= time.time()
    assert record.duration >= 0
    assert len(lines) == 1
    assert lines[0].startswith("[")
    assert lines[0].endswith("ms] load modules: ok: virtio_net, overlay")


def test_ok_stage_with_a_result_that_is_not_a_string() -> None:
    boot, lines = sequence()
    result = {"eth0": "10.0.0.5/24"}
    assert boot.run("network", lambda: result) is result
    assert boot.records[0].detail == ""
    assert lines[0].endswith("ms] network: ok")


def test_failed_stage_records_its_error_and_the_sequence_goes_on() -> None:
    boot, lines = sequence()

    def mount_disks() -> str:
        raise OSError(errno.ENOENT, "No such file or directory", "/dev/vdb")

    assert boot.run("disks", mount_disks) is None
    assert boot.run("hostname", lambda: "node-1") == "node-1"
    failed, ok = boot.records
    assert failed.ok is False
    assert failed.error == "[Errno 2] No such file or directory: '/dev/vdb'"
    assert failed.detail == ""
    assert ok.ok is True
    assert lines[0].endswith("ms] disks: FAILED: [Errno 2] No such file or directory: '/dev/vdb'")
    assert lines[1].endswith("ms] hostname: ok: node-1")


def test_a_bug_in_a_stage_shows_its_type() -> None:
    boot, lines = sequence()

    def broken() -> None:
        raise RuntimeError("boom")

    assert boot.run("broken", broken) is None
    assert boot.records[0].error == "RuntimeError: boom"
    assert "broken: FAILED: RuntimeError: boom" in lines[0]


def test_an_error_without_a_message_is_named() -> None:
    boot, _ = sequence()

    def silent() -> None:
        raise ValueError

    boot.run("silent", silent)
    assert boot.records[0].error == "ValueError"


def test_stage_failed_carries_what_the_stage_did() -> None:
    boot, lines = sequence()

    def disks() -> str:
        raise StageFailed(
            "1 of 2 disks failed: /dev/vdc: no filesystem", detail="/dev/vdb on /data"
        )

    assert boot.run("disks", disks) is None
    (record,) = boot.records
    assert record.ok is False
    assert record.error == "1 of 2 disks failed: /dev/vdc: no filesystem"
    assert record.detail == "/dev/vdb on /data"
    assert len(lines) == 2
    assert "disks: FAILED: 1 of 2 disks failed: /dev/vdc: no filesystem" in lines[0]
    assert lines[1] == " " * 14 + "disks: /dev/vdb on /data"


def test_stage_failed_without_detail_logs_one_line() -> None:
    boot, lines = sequence()

    def half() -> None:
        raise StageFailed("nothing done")

    boot.run("half", half)
    assert boot.records[0].detail == ""
    assert len(lines) == 1


def test_critical_stage_stops_the_sequence() -> None:
    boot, lines = sequence()
    cause = OSError(errno.EPERM, "Operation not permitted")

    def mount_proc() -> None:
        raise cause

    with pytest.raises(CriticalStageFailed) as caught:
        boot.run("mount /proc", mount_proc, critical=True)
    assert str(caught.value) == "mount /proc: [Errno 1] Operation not permitted"
    assert caught.value.__cause__ is cause
    (record,) = boot.records
    assert record.critical is True
    assert record.ok is False
    assert "mount /proc: FAILED: [Errno 1] Operation not permitted" in lines[0]


def test_a_critical_stage_that_succeeds_is_recorded_as_critical() -> None:
    boot, _ = sequence()
    assert boot.run("mount /proc", lambda: None, critical=True) is None
    assert boot.records[0].ok is True
    assert boot.records[0].critical is True


def test_debug_adds_the_traceback() -> None:
    boot, lines = sequence()

    def broken() -> None:
        raise KeyError("eth9")

    boot.run("network", broken, debug=True)
    assert len(lines) == 2
    assert lines[1].startswith("Traceback (most recent call last):")
    assert "KeyError: 'eth9'" in lines[1]


def test_no_traceback_without_debug() -> None:
    boot, lines = sequence()

    def broken() -> None:
        raise KeyError("eth9")

    boot.run("network", broken)
    assert len(lines) == 1
    assert "Traceback" not in lines[0]


def test_records_can_be_shared_with_an_earlier_sequence() -> None:
    records: list[BootStage] = []
    BootSequence(lambda _: None, records).run("first", lambda: "a")
    boot = BootSequence(lambda _: None, records)
    boot.run("second", lambda: "b")
    assert [r.name for r in boot.records] == ["first", "second"]
    assert boot.records is records


def test_stages_are_boot_stages_with_the_same_fields() -> None:
    boot, _ = sequence()
    boot.run("one", lambda: "did one")

    def two() -> None:
        raise StageFailed("two failed", detail="half of two")

    def three() -> None:
        raise StageFailed("fell back")

    boot.run("two", two)
    boot.run("three", three)
    stages = boot.stages()
    assert all(type(stage) is BootStage for stage in stages)
    assert [(s.name, s.ok, s.error, s.detail, s.critical) for s in stages] == [
        ("one", True, "", "did one", False),
        ("two", False, "two failed", "half of two", False),
        ("three", False, "fell back", "", False),
    ]
    for stage, record in zip(stages, boot.records, strict=True):
        assert stage.started_at == record.started_at
        assert stage.duration == record.duration


def test_to_json_has_every_field() -> None:
    boot, _ = sequence()
    boot.run("one", lambda: "did one")
    (entry,) = boot.to_json()
    assert set(entry) == {"name", "started_at", "duration", "ok", "error", "critical", "detail"}
    assert entry["detail"] == "did one"


# --- stage tables -----------------------------------------------------------------------------


def test_a_table_runs_top_to_bottom_and_skips_what_its_condition_rules_out() -> None:
    boot, lines = sequence()
    done: list[str] = []
    table = (
        Stage("one", lambda ran: ran.append("one") or "did one"),
        Stage("skipped", lambda ran: ran.append("skipped"), when=lambda ran: "two" in ran),
        Stage("two", lambda ran: ran.append("two")),
        Stage("three", lambda ran: ran.append("three"), when=lambda ran: "two" in ran),
    )
    boot.run_stages(table, done)
    assert done == ["one", "two", "three"]
    assert [r.name for r in boot.records] == ["one", "two", "three"]
    assert lines[0].endswith("ms] one: ok: did one")


def test_a_fallback_runs_only_when_its_stage_fails() -> None:
    boot, lines = sequence()
    done: list[str] = []

    def failing(ran: list[str]) -> None:
        raise OSError(errno.EADDRINUSE, "Address already in use")

    backup = Stage("api (fallback)", lambda ran: ran.append("fallback") or "from memory")
    table = (Stage("fine", lambda ran: ran.append("fine"), fallback=backup),
             Stage("api", failing, fallback=backup), Stage("after", lambda ran: ran.append("after")))  # fmt: skip
    boot.run_stages(table, done)
    assert done == ["fine", "fallback", "after"]
    assert [(r.name, r.ok) for r in boot.records] == [
        ("fine", True), ("api", False), ("api (fallback)", True), ("after", True),
    ]  # fmt: skip
    assert "api: FAILED: [Errno 98] Address already in use" in lines[1]


def test_a_critical_fallback_that_fails_stops_the_table() -> None:
    boot, _ = sequence()

    def failing(_: None) -> None:
        raise OSError(errno.EACCES, "Permission denied")

    table = (Stage("api", failing, fallback=Stage("api (fallback)", failing, critical=True)),
             Stage("images", lambda _: "never"))  # fmt: skip
    with pytest.raises(CriticalStageFailed, match=r"^api \(fallback\): "):
        boot.run_stages(table, None)
    assert [r.name for r in boot.records] == ["api", "api (fallback)"]


def test_debug_is_asked_before_each_stage() -> None:
    boot, lines = sequence()
    config = {"debug": False}

    def broken(_: dict[str, bool]) -> None:
        raise KeyError("eth9")

    table = (Stage("quiet", broken), Stage("config", lambda c: c.update(debug=True)),
             Stage("loud", broken))  # fmt: skip
    boot.run_stages(table, config, debug=lambda c: c["debug"])
    assert [line.startswith("Traceback") for line in lines] == [False, False, False, True]


def test_the_boot_and_shutdown_tables() -> None:
    assert [s.name for s in BOOT] == ["config", "modules", "oem-config", "cgroups", "disks",
                                     "hostname", "network", "api", "images", "system-pods"]  # fmt: skip
    assert not any(s.critical for s in BOOT)
    (api,) = [s for s in BOOT if s.fallback is not None]
    assert (api.name, api.fallback) == ("api", FALLBACK_API)
    assert (FALLBACK_API.name, FALLBACK_API.critical) == ("api (fallback)", True)
    assert [s.name for s in SHUTDOWN] == ["stop system pod supervision", "stop pods", "stop api",
                                         "stop hotplug", "release dhcp leases", "sync", "unmount disks"]  # fmt: skip
    assert [s.name for s in EARLY] == ["system mounts", "leave initramfs", "ctrl-alt-del"]
    assert [s.critical for s in EARLY] == [True, False, False]


def test_shutdown_skips_what_was_never_started() -> None:
    lines: list[str] = []
    state = BootState(BootOptions(), serve=lambda core, host: None, console=lines.append,
                      host=Host())  # fmt: skip
    steps = BootSequence(lines.append)
    steps.run_stages(SHUTDOWN, state)
    assert [r.name for r in steps.records] == ["sync", "unmount disks"]
    assert steps.records[-1].detail == "0 unmounted"


# --- system pods: restart policy ------------------------------------------------------------------


def pod(state: PodState, *apps: AppStatus, reason: str | None = None) -> Pod:
    return Pod("u", "p", state, PodManifest(), 0.0, list(apps), reason=reason)


def exited(code: int) -> Pod:
    return pod(PodState.EXITED, AppStatus("a", "sha512-x", "exited", exit_code=code))


def killed() -> Pod:
    return pod(PodState.EXITED, AppStatus("a", "sha512-x", "exited", signal="SIGKILL"))


def failed() -> Pod:
    return pod(PodState.FAILED, reason="image not found")


def stopped() -> Pod:
    return pod(PodState.STOPPED, AppStatus("a", "sha512-x", "exited", exit_code=3))


ENDINGS = {"exit 0": exited(0), "exit 3": exited(3), "killed": killed(), "failed": failed()}


@pytest.mark.parametrize(
    ("policy", "ending", "expected"),
    [
        ("always", "exit 0", True),
        ("always", "exit 3", True),
        ("always", "killed", True),
        ("always", "failed", True),
        ("on-failure", "exit 0", False),
        ("on-failure", "exit 3", True),
        ("on-failure", "killed", True),
        ("on-failure", "failed", True),
        ("never", "exit 0", False),
        ("never", "exit 3", False),
        ("never", "killed", False),
        ("never", "failed", False),
    ],
)
def test_should_restart(policy: str, ending: str, expected: bool) -> None:
    assert should_restart(RestartPolicy(policy), ENDINGS[ending]) is expected


@pytest.mark.parametrize("policy", ["always", "on-failure", "never"])
def test_a_stopped_pod_never_restarts(policy: str) -> None:
    assert should_restart(RestartPolicy(policy), stopped()) is False


def test_on_failure_looks_at_every_app() -> None:
    mixed = pod(PodState.EXITED, AppStatus("a", "i", exit_code=0), AppStatus("b", "i", exit_code=1))
    assert should_restart(RestartPolicy.ON_FAILURE, mixed) is True
    clean = pod(PodState.EXITED, AppStatus("a", "i", exit_code=0), AppStatus("b", "i", exit_code=0))
    assert should_restart(RestartPolicy.ON_FAILURE, clean) is False


def test_on_failure_with_apps_that_never_ran() -> None:
    assert (
        should_restart(RestartPolicy.ON_FAILURE, pod(PodState.EXITED, AppStatus("a", "i"))) is False
    )


# --- system pods: restart delay -------------------------------------------------------------------


def test_first_restart_waits_the_first_backoff() -> None:
    assert restart_delay(None, 0.1) == FIRST_BACKOFF
    assert restart_delay(None, HEALTHY_RUN + 10) == FIRST_BACKOFF


def test_restart_delay_doubles() -> None:
    assert restart_delay(FIRST_BACKOFF, 0.5) == 2 * FIRST_BACKOFF
    assert restart_delay(2.0, 10.0) == 4.0
    assert restart_delay(16.0, HEALTHY_RUN - 0.1) == 32.0


def test_restart_delay_is_capped() -> None:
    assert restart_delay(32.0, 1.0) == MAX_BACKOFF
    assert restart_delay(MAX_BACKOFF, 1.0) == MAX_BACKOFF
    delays: list[float] = []
    delay: float | None = None
    for _ in range(10):
        delay = restart_delay(delay, 0.0)
        delays.append(delay)
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0, 60.0]


def test_restart_delay_resets_after_a_healthy_run() -> None:
    assert restart_delay(MAX_BACKOFF, HEALTHY_RUN) == FIRST_BACKOFF
    assert restart_delay(8.0, HEALTHY_RUN + 3600) == FIRST_BACKOFF


def test_backoff_constants() -> None:
    assert (FIRST_BACKOFF, MAX_BACKOFF, HEALTHY_RUN) == (1.0, 60.0, 60.0)


# --- system pods: volumes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/a:/b", ("/a", "/b", False)),
        ("/a:/b:ro", ("/a", "/b", True)),
        ("/a:/b:rw", ("/a", "/b", False)),
        ("/srv/data:/data", ("/srv/data", "/data", False)),
    ],
)
def test_parse_volume(text: str, expected: tuple[str, str, bool]) -> None:
    assert parse_volume(text) == expected


@pytest.mark.parametrize("text", ["/a", "/a:/b:rx", "/a:/b:ro:x", "", "/a:/b:RO"])
def test_parse_volume_refuses_bad_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected HOST:PATH\[:ro\]"):
        parse_volume(text)


# --- mounts ----------------------------------------------------------------------------------------


def test_fstype_at_proc() -> None:
    assert fstype_at("/proc") == "proc"


def test_fstype_at_a_path_with_nothing_mounted() -> None:
    assert fstype_at("/no/such") == ""
    assert fstype_at("/proc/self") == ""
