"""Executor pieces that need no root: logs, users, paths inside a root, seccomp programs."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from kurmad.linux import seccomp
from kurmad.linux.syscall_table import SYSCALLS_X86_64
from kurmad.runtime import users
from kurmad.runtime.fs import SetupError, make_dirs_in_root, resolve_in_root
from kurmad.runtime.logs import LogRecord, LogWriter, read_logs

# --- logs ---------------------------------------------------------------------------------------


def test_log_records_split_lines_and_keep_partial_ones(tmp_path: Path) -> None:
    log = LogWriter(tmp_path, max_bytes=1 << 20, keep=2)
    log.write("stdout", b"one\ntw")
    log.write("stderr", b"err\n")
    log.write("stdout", b"o\nthree")
    log.close()
    records = [(r.stream, r.line, r.partial) for r in read_logs(tmp_path)]
    assert records == [
        ("stdout", b"one", False),
        ("stderr", b"err", False),
        ("stdout", b"two", False),
        ("stdout", b"three", True),
    ]


def test_logs_are_capped_and_rotated(tmp_path: Path) -> None:
    log = LogWriter(tmp_path, max_bytes=2000, keep=2)
    for i in range(200):
        log.write("stdout", f"line {i:03d}\n".encode())
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["log", "log.1", "log.2"]
    assert all(p.stat().st_size <= 2000 for p in tmp_path.iterdir())
    lines = [r.line for r in read_logs(tmp_path)]
    assert lines == [f"line {i:03d}".encode() for i in range(200 - len(lines), 200)], (
        "the newest survive, in order"
    )
    assert len(lines) < 200


def test_a_long_line_is_cut_into_partial_records(tmp_path: Path) -> None:
    log = LogWriter(tmp_path, max_bytes=1 << 20, keep=1)
    log.write("stdout", b"x" * 40_000 + b"\n")
    log.close()
    records = list(read_logs(tmp_path))
    assert [r.partial for r in records] == [True, True, False]
    assert b"".join(r.line for r in records) == b"x" * 40_000


def test_follow_reads_across_rotation_until_the_app_ends(tmp_path: Path) -> None:
    log = LogWriter(tmp_path, max_bytes=500, keep=50)
    running = True

    def produce() -> None:
        nonlocal running
        for i in range(100):
            log.write("stdout", f"message {i:03d}\n".encode())
            time.sleep(0.002)
        log.close()
        running = False

    writer = threading.Thread(target=produce)
    writer.start()
    seen = [
        r.line
        for r in read_logs(
            tmp_path, follow=True, still_running=lambda: running, poll_interval=0.005
        )
    ]
    writer.join()
    assert seen == [f"message {i:03d}".encode() for i in range(100)]


def test_a_broken_record_is_skipped() -> None:
    assert LogRecord.parse(b"garbage\n") is None
    record = LogRecord.parse(b"2026-01-01T00:00:00.000000000Z stderr F with spaces here\n")
    assert record is not None and record.line == b"with spaces here"


# --- users --------------------------------------------------------------------------------------


def write_root(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text(
        "root:x:0:0::/root:/bin/sh\n1000:x:42:43::/h:/bin/sh\nweb:x:33:33::/var/www:/bin/sh\n"
    )
    (tmp_path / "etc/group").write_text("root:x:0:\nwww:x:33:\n")
    (tmp_path / "owned").write_text("")
    os.chown(tmp_path / "owned", 7, 8) if os.geteuid() == 0 else None
    return tmp_path


def test_names_come_from_the_images_files_first(tmp_path: Path) -> None:
    root = str(write_root(tmp_path))
    assert users.resolve("web", "www", root) == users.Credentials(33, 33, "/var/www")
    assert users.resolve("1000", "0", root).uid == 42, (
        "a name that looks like a number is still a name first"
    )
    assert users.resolve("5000", "6000", root) == users.Credentials(5000, 6000, None)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_a_path_means_the_owner_of_that_file(tmp_path: Path) -> None:
    root = str(write_root(tmp_path))
    assert users.resolve("/owned", "/owned", root) == users.Credentials(7, 8, None)


def test_unknown_users_and_missing_files_are_explained(tmp_path: Path) -> None:
    root = str(write_root(tmp_path))
    with pytest.raises(users.UserError, match="user 'ghost' is not in the image's /etc/passwd"):
        users.resolve("ghost", "0", root)
    with pytest.raises(users.UserError, match="group '/nope': the file does not exist"):
        users.resolve("0", "/nope", root)


# --- paths inside a root -----------------------------------------------------------------------------


def test_symlinks_resolve_inside_the_root_never_outside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    (root / "abs").symlink_to("/real")
    (root / "up").symlink_to("../../../../etc")
    (root / "loop").symlink_to("loop")
    assert resolve_in_root(str(root), "/abs/file") == str(root / "real/file")
    assert resolve_in_root(str(root), "/up/passwd") == str(root / "etc/passwd")
    assert resolve_in_root(str(root), "/../../x") == str(root / "x")
    with pytest.raises(SetupError, match="too many levels"):
        resolve_in_root(str(root), "/loop/x")


def test_make_dirs_in_root_follows_links_inside_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "data").symlink_to("/etc")
    target = make_dirs_in_root(str(root), "/data/sub")
    assert target == str(root / "etc/sub") and Path(target).is_dir()


# --- seccomp programs ------------------------------------------------------------------------------


def test_seccomp_programs_stay_small_and_jump_safely() -> None:
    everything = frozenset(list(SYSCALLS_X86_64)[:300])
    program = seccomp.compile_filter(seccomp.Filter(everything, retain=True, errno="EPERM"))
    assert program is not None and len(program) % 8 == 0 and len(program) // 8 < 4096
    assert (
        seccomp.compile_filter(seccomp.Filter(frozenset({seccomp.APPC_ALL}), retain=True)) is None
    )
    assert (
        seccomp.compile_filter(seccomp.Filter(frozenset({seccomp.APPC_EMPTY}), retain=False))
        is None
    )
    with pytest.raises(seccomp.SeccompError, match="unknown errno 'EPONY'"):
        seccomp.Filter(frozenset(), retain=False, errno="EPONY").action()
    assert "settimeofday" not in seccomp.default_blocked(["CAP_SYS_TIME"])
    assert "settimeofday" in seccomp.default_blocked([])
