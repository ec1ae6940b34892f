"""The state directory's schema version (kurmad/state.py): new directories are stamped, v1's
unstamped layout is recognised and anything else refused, newer state is refused, migrations
run once and survive being killed, and a daemon started on the state that kurmad's first
layout left (tests/data/state-v1/) finds every pod and image as it was.

Every change to the state layout adds its migration to kurmad/state.py and a test here that
starts from restore_v1() and checks what the migration changed (README.md, "State versions")."""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from kurmad import __version__
from kurmad.api.v1 import kurma_pb2 as pb
from kurmad.linux.cgroups import CgroupDriver
from kurmad.linux.files import read_json, write_json_atomic
from kurmad.state import MIGRATIONS, SCHEMA_FILE, Migrations, StateError, prepare_state

from .daemon import ServeProcess
from .netns import NETNS_DIR, namespaces
from .state_fixture import STATE_V1, api_view, pod_init_stand_in, restore_v1, tree

CURRENT = MIGRATIONS.current


def stamp_of(state: Path) -> dict[str, object]:
    return dict(json.loads((state / SCHEMA_FILE).read_text()))


def refusal(state: Path, migrations: Migrations = MIGRATIONS) -> str:
    """The one line prepare_state refuses ``state`` with; the state must be left as it was."""
    before = tree(state)
    with pytest.raises(StateError) as raised:
        prepare_state(state, migrations)
    assert tree(state) == before, "a refused state is left as it was"
    message = str(raised.value)
    assert "\n" not in message
    return message


# -- stamps and what is not kurmad's ---------------------------------------------------------------


def test_todays_layout_is_version_1() -> None:
    assert CURRENT == 1, "a layout change adds its migration and a test of it here"


@pytest.mark.parametrize("entries", [(), ("lost+found",)])
def test_a_new_state_directory_is_stamped_with_the_current_version(tmp_path: Path, entries: tuple[str, ...]) -> None:  # fmt: skip
    for name in entries:
        (tmp_path / name).mkdir()
    prepare_state(tmp_path)
    assert stamp_of(tmp_path) == {"version": CURRENT, "kurmad": __version__}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*entries, SCHEMA_FILE])


def test_v1s_unstamped_layout_is_stamped_version_1_and_nothing_else_changes(tmp_path: Path) -> None:  # fmt: skip
    state = restore_v1(tmp_path / "state")
    before = tree(state)
    prepare_state(state)
    assert stamp_of(state) == {"version": 1, "kurmad": __version__}
    assert {k: v for k, v in tree(state).items() if k != SCHEMA_FILE} == before


def test_a_stamp_cut_short_by_a_crash_is_no_foreign_file(tmp_path: Path) -> None:
    (tmp_path / "pods").mkdir()
    (tmp_path / f".{SCHEMA_FILE}.k2x9a1").write_text('{"vers')
    prepare_state(tmp_path)
    assert stamp_of(tmp_path)["version"] == 1


@pytest.mark.parametrize("foreign", ["notes.txt", "pods", "home"])
def test_a_directory_kurmad_never_wrote_is_refused_and_left_as_it_was(tmp_path: Path, foreign: str) -> None:  # fmt: skip
    (tmp_path / "images").mkdir()
    if foreign == "home":
        (tmp_path / foreign).mkdir()
    else:
        (tmp_path / foreign).write_text("not a directory of kurmad's")
    message = refusal(tmp_path)
    assert message.startswith(f"{tmp_path}: not a kurmad state directory: it has no {SCHEMA_FILE} and holds {foreign},")  # fmt: skip


def test_a_newer_state_is_refused_naming_both_versions(tmp_path: Path) -> None:
    state = restore_v1(tmp_path / "state")
    write_json_atomic(state / SCHEMA_FILE, {"version": CURRENT + 1, "kurmad": "9.9.9"})
    assert refusal(state) == (
        f"{state}: state version {CURRENT + 1} (written by kurmad 9.9.9) is newer than this "
        f"kurmad ({__version__}) reads, version {CURRENT}; run a kurmad that knows it"
    )


@pytest.mark.parametrize(
    "content, says",
    [
        ("{", "unreadable (Expecting property name"),
        ("[1]", "must be a JSON object"),
        ('{"version": "1"}', "version: must be a whole number from 1 up, not '1'"),
        ('{"version": 0}', "version: must be a whole number from 1 up, not 0"),
        ('{"version": true}', "version: must be a whole number from 1 up, not True"),
        ('{"kurmad": "0.1.0"}', "version: must be a whole number from 1 up, not None"),
        ('{"version": 1, "kurmad": 7}', "kurmad: must be a string, not 7"),
    ],
)
def test_an_unreadable_stamp_is_refused_naming_the_field(tmp_path: Path, content: str, says: str) -> None:  # fmt: skip
    (tmp_path / SCHEMA_FILE).write_text(content)
    assert refusal(tmp_path).startswith(f"{tmp_path / SCHEMA_FILE}: {says}")


# -- migrations ---------------------------------------------------------------------------------------


def split_network(after_each_step: Callable[[], None] = lambda: None) -> tuple[Migrations, list[Path]]:  # fmt: skip
    """A test-only version 2, written as a real migration must be: each pod's network plan moves
    from pod.json to a network.json beside it, every step atomic, and a pod already moved (its
    record without "network") recognised as done. Also the list of the migration's runs."""
    migrations, runs = Migrations(), []

    @migrations.add(1, "each pod's network plan moves to network.json")
    def move_networks(state: Path) -> None:
        runs.append(state)
        for record_file in sorted((state / "pods").glob("*/pod.json")):
            record = read_json(record_file)
            if "network" not in record:
                continue
            write_json_atomic(record_file.parent / "network.json", record["network"], mode=0o600)
            after_each_step()
            del record["network"]
            write_json_atomic(record_file, record, mode=0o600)
            after_each_step()

    return migrations, runs


def test_a_migration_runs_once_and_a_second_start_does_nothing(tmp_path: Path) -> None:
    state = restore_v1(tmp_path / "state")
    plans = {p.parent.name: read_json(p)["network"] for p in (state / "pods").glob("*/pod.json")}
    migrations, runs = split_network()
    assert migrations.current == 2
    prepare_state(state, migrations)
    assert runs == [state]
    assert stamp_of(state) == {"version": 2, "kurmad": __version__}
    assert plans and all("network" not in read_json(state / "pods" / u / "pod.json") for u in plans)
    assert {u: read_json(state / "pods" / u / "network.json") for u in plans} == plans
    after, stamped = tree(state), os.stat(state / SCHEMA_FILE)
    prepare_state(state, migrations)
    assert runs == [state], "the second start migrates nothing"
    assert tree(state) == after
    assert os.stat(state / SCHEMA_FILE).st_ino == stamped.st_ino, "nor stamps again"


@pytest.mark.parametrize("killed_at", [1, 2, 5])
def test_a_migration_killed_half_way_ends_where_an_unbroken_one_does(tmp_path: Path, killed_at: int) -> None:  # fmt: skip
    unbroken = restore_v1(tmp_path / "unbroken")
    prepare_state(unbroken, split_network()[0])
    state = restore_v1(tmp_path / "killed")
    steps = itertools.count(1)

    def die_at_the_chosen_step() -> None:
        if next(steps) == killed_at:
            os.kill(os.getpid(), signal.SIGKILL)

    pid = os.fork()
    if pid == 0:
        try:
            prepare_state(state, split_network(die_at_the_chosen_step)[0])
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert stamp_of(state)["version"] == 1, "the stamp waits for the migration's end"
    migrations, runs = split_network()
    prepare_state(state, migrations)
    assert runs == [state]
    assert tree(state) == tree(unbroken)


def test_a_state_older_than_the_migrations_reach_is_refused(tmp_path: Path) -> None:
    migrations = Migrations()
    for source in (2, 3):
        migrations.add(source, f"to version {source + 1}")(lambda state: None)
    state = restore_v1(tmp_path / "state")
    assert refusal(state, migrations) == (
        f"{state}: state version 1 is too old for this kurmad ({__version__}, state version 4), "
        "which migrates from version 2 on; let a kurmad that reads version 2 upgrade it first"
    )


def test_a_version_has_one_migration() -> None:
    migrations, _ = split_network()
    for source in (1, 0):
        with pytest.raises(ValueError, match=f"from state version {source} cannot be added"):
            migrations.add(source, "again")(lambda state: None)


def test_state_that_a_running_older_kurmad_holds_is_not_migrated(tmp_path: Path) -> None:
    state = restore_v1(tmp_path / "state")
    migrations, runs = split_network()
    with open(state / "images" / "store.lock", "a+") as store_lock:
        fcntl.flock(store_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a v1 kurmad's image store
        assert refusal(state, migrations) == f"{state}: in use by another kurmad; stop it first"
    assert runs == []
    prepare_state(state, migrations)
    assert runs == [state]


# -- a daemon on v1's state -----------------------------------------------------------------------------


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nft") is None or shutil.which("nsenter") is None,
    reason="needs root (pods, cgroups, a network namespace), nftables and nsenter",
)
def test_a_daemon_on_v1s_state_finds_every_pod_and_image_as_v1_left_them(tmp_path: Path) -> None:
    expected = json.loads((STATE_V1 / "expected.json").read_text())
    state = restore_v1(tmp_path / "state")
    with namespaces("v1") as ns, pod_init_stand_in(state, "up") as pod_init:
        serve = ServeProcess(state, "--network-config", str(STATE_V1 / "networks.yml"),
                             cgroup_parent=f"/kurmad-test-{os.getpid()}-state",
                             prefix=("nsenter", f"--net={NETNS_DIR / ns['v1']}"))  # fmt: skip
        try:
            serve.start()
            assert stamp_of(state) == {"version": CURRENT, "kurmad": __version__}
            with serve.client() as kurma:
                found = api_view(kurma)
                assert found["images"] == expected["images"]
                assert found["pods"] == expected["pods"]
                assert found["logs"] == expected["logs"]
                assert [p["state"] for p in found["pods"]] == ["POD_STATE_NEW", "POD_STATE_EXITED", "POD_STATE_STOPPED", "POD_STATE_RUNNING"]  # fmt: skip
                assert [a.exit_code for a in kurma.get("done").apps] == [3, 3]
                # and they still work: the NEW pod runs, and the RUNNING one's pod init is adopted
                kurma.start("fresh")
                fresh = kurma.wait("fresh", timeout=30)
                assert fresh.state == pb.POD_STATE_EXITED and fresh.apps[0].exit_code == 3
                assert [e.line for e in kurma.logs("fresh")] == [b"hello from v1", b"to stderr v1"]
                assert kurma.stop("up", grace=5).state == pb.POD_STATE_STOPPED
                assert pod_init.wait(5) == -signal.SIGTERM, "the stop reached the adopted pod init"
        finally:
            serve.cleanup_pods()
            serve.stop()
            CgroupDriver(serve.cgroup_parent).cgroup("").remove()
