"""The image store: import, lookup, holds, deletion, quota, crash safety and concurrency."""

from __future__ import annotations

import io
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from kurmad.images import store as store_module
from kurmad.images.extract import ExtractPolicy
from kurmad.images.store import (
    AmbiguousImage,
    ImageInUse,
    ImageNotFound,
    ImageStore,
    ImportFailed,
    QuotaExceeded,
    StoreError,
)

from .tarcraft import aci, directory, file, hardlink, image_manifest, symlink

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, mknod, mounts)")


@pytest.fixture
def store(tmp_path: Path):
    s = ImageStore(tmp_path / "store", durable=False)
    yield s
    s.close()


def simple(
    name: str = "example.com/app", version: str | None = "1.0.0", body: str = "hello\n", **kw
) -> bytes:
    return aci(
        image_manifest(name, version, **kw),
        [directory("bin"), file("bin/app", body, 0o755)],
        "gzip",
    )


def do_import(s: ImageStore, data: bytes):
    return s.import_stream(io.BytesIO(data))


def snapshot(s: ImageStore) -> tuple[list[str], list[str], list[str]]:
    """What the store holds: its index, its image directories, its tmp area."""
    root = s.root
    return (
        sorted(r.id for r in s.images()),
        sorted(p.name for p in (root / "images").iterdir()),
        sorted(p.name for p in (root / "tmp").iterdir()),
    )


# --- import -------------------------------------------------------------------------------------


def test_import_extracts_and_records_the_image(store: ImageStore) -> None:
    result = do_import(store, simple())
    assert result.created
    record = result.record
    assert record.name == "example.com/app" and record.version == "1.0.0"
    app = store.rootfs(record.id) / "bin" / "app"
    assert app.read_text() == "hello\n"
    assert stat.S_IMODE(app.stat().st_mode) == 0o755
    assert store.manifest_bytes(record.id).startswith(b"{")
    assert record.size > len("hello\n") and record.source_size > 0 and record.tar_size % 512 == 0


def test_importing_twice_is_a_no_op_with_the_same_id(store: ImageStore) -> None:
    first = do_import(store, simple())
    second = do_import(store, simple())
    assert not second.created and second.record.id == first.record.id
    assert len(store.images()) == 1
    assert store.used_bytes == first.record.size


def test_import_from_a_file(store: ImageStore, tmp_path: Path) -> None:
    path = tmp_path / "x.aci"
    path.write_bytes(simple())
    assert store.import_file(path).created
    with pytest.raises(ImportFailed, match="No such file"):
        store.import_file(tmp_path / "missing.aci")


def test_the_index_survives_reopening(tmp_path: Path) -> None:
    first = ImageStore(tmp_path / "s", durable=False)
    record = do_import(first, simple()).record
    first.close()
    again = ImageStore(tmp_path / "s", durable=False)
    assert [r.id for r in again.images()] == [record.id]
    assert again.get(record.id).imported_at == pytest.approx(record.imported_at)
    assert again.used_bytes == record.size
    again.close()


def test_one_process_at_a_time(store: ImageStore) -> None:
    with pytest.raises(StoreError, match="in use by another process"):
        ImageStore(store.root)


@needs_root
def test_metadata_is_kept(store: ImageStore) -> None:
    entries = [directory("etc", 0o750), file("etc/conf", "x", 0o640), symlink("etc/link", "conf"),
               hardlink("etc/hard", "rootfs/etc/conf")]  # fmt: skip
    data = aci(image_manifest("example.com/meta"), entries)
    record = do_import(store, data).record
    root = store.rootfs(record.id)
    assert stat.S_IMODE((root / "etc").stat().st_mode) == 0o750
    assert stat.S_IMODE((root / "etc/conf").stat().st_mode) == 0o640
    assert os.readlink(root / "etc/link") == "conf"
    assert (root / "etc/hard").stat().st_ino == (root / "etc/conf").stat().st_ino
    assert (root / "etc/conf").stat().st_mtime == 0


# --- lookup -------------------------------------------------------------------------------------


def test_lookup_by_id_and_unique_prefix(store: ImageStore) -> None:
    record = do_import(store, simple()).record
    assert store.get(record.id) == record
    assert store.get(record.id[:20]) == record
    assert store.get(record.id.digest[:12]) == record
    assert store.lookup(record.id[:16]) == record
    with pytest.raises(ImageNotFound):
        store.get(record.id.digest[:3])  # too short to be a prefix
    with pytest.raises(ImageNotFound):
        store.get("sha512-" + "0" * 128)


def test_an_ambiguous_prefix_is_refused(store: ImageStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "MIN_PREFIX", 1)
    ids = [do_import(store, simple(body=str(i))).record.id for i in range(20)]
    shared = next(i.digest[0] for i in ids if sum(j.digest[0] == i.digest[0] for j in ids) > 1)
    with pytest.raises(AmbiguousImage, match="matches"):
        store.get(shared)


def test_find_by_name_takes_the_latest_version(store: ImageStore) -> None:
    for version in ("1.2.0", "1.10.0", "1.9.9", "2.0.0-rc.1"):
        do_import(store, simple(version=version))
    assert store.find("example.com/app").version == "2.0.0-rc.1"
    assert store.find("example.com/app", {"version": "latest"}).version == "2.0.0-rc.1"
    assert store.find("example.com/app", {"version": "1.9.9"}).version == "1.9.9"
    assert store.lookup("example.com/app:1.10.0").version == "1.10.0"
    with pytest.raises(ImageNotFound, match="example.com/app,version=3"):
        store.find("example.com/app", {"version": "3"})


def test_an_image_labelled_latest_wins_then_the_newest_import(store: ImageStore) -> None:
    do_import(store, simple(version="9.9.9"))
    labelled = do_import(store, simple(version="latest")).record
    assert store.find("example.com/app") == labelled
    do_import(store, simple("example.com/nover", None, body="a"))
    newer = do_import(store, simple("example.com/nover", None, body="b")).record
    assert store.find("example.com/nover") == newer


def test_images_for_another_platform_are_not_found_by_default(store: ImageStore) -> None:
    do_import(store, simple(labels={"os": "linux", "arch": "s390x"}))
    with pytest.raises(ImageNotFound):
        store.find("example.com/app")
    assert store.find("example.com/app", {"arch": "s390x"}).labels["arch"] == "s390x"


# --- holds, deletion, gc ------------------------------------------------------------------------------


def test_delete_is_refused_while_a_pod_holds_the_image(store: ImageStore) -> None:
    record = do_import(store, simple()).record
    store.hold("pod web (1234abcd)", [record.id])
    with pytest.raises(ImageInUse, match=r"used by pod web \(1234abcd\)"):
        store.delete(record.id)
    assert store.images() == [record]
    store.release("pod web (1234abcd)")
    store.delete(record.id)
    assert snapshot(store) == ([], [], [])
    assert store.used_bytes == 0


def test_gc_removes_what_nothing_holds_after_the_grace_period(store: ImageStore) -> None:
    held = do_import(store, simple(body="held")).record
    loose = do_import(store, simple(body="loose")).record
    store.hold("pod a", [held.id])
    assert store.gc(grace_seconds=3600) == []
    assert [r.id for r in store.gc()] == [loose.id]
    assert [r.id for r in store.images()] == [held.id]


# --- hostile and broken archives ----------------------------------------------------------------------

OUTSIDE = "/tmp/kurmad-test-outside"

HOSTILE = {
    "symlink then write through it": [symlink("evil", OUTSIDE), file("evil/pwned", "x")],
    "relative symlink escape": [
        directory("a"),
        symlink("a/up", "../../../../../../tmp"),
        file("a/up/pwned", "x"),
    ],
    "symlinked parent directory": [
        symlink("etc", "/etc"),
        directory("etc/cron.d"),
        file("etc/cron.d/job", "x"),
    ],
    "hardlink escaping rootfs": [hardlink("shadow", "rootfs/../../../../etc/shadow")],
    "hardlink to a missing entry": [hardlink("ghost", "rootfs/nothing")],
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_archives_are_refused_and_nothing_changes(store: ImageStore, name: str) -> None:
    kept = do_import(store, simple()).record
    before = snapshot(store)
    os.makedirs(OUTSIDE, exist_ok=True)
    with pytest.raises(ImportFailed) as caught:
        do_import(store, aci(image_manifest("example.com/evil"), HOSTILE[name]))
    assert "not imported" in str(caught.value)
    assert snapshot(store) == before
    assert not os.path.exists(os.path.join(OUTSIDE, "pwned"))
    assert store.rootfs(kept.id).joinpath("bin/app").read_text() == "hello\n"


def _device_entry(kind: bytes):
    from .tarcraft import Entry

    return Entry("dev/null", kind, mode=0o666)


@pytest.mark.parametrize("kind,what", [(b"3", "device node"), (b"4", "device node")])
def test_device_nodes_are_refused_by_default(store: ImageStore, kind: bytes, what: str) -> None:
    with pytest.raises(ImportFailed, match=what):
        do_import(
            store, aci(image_manifest("example.com/dev"), [directory("dev"), _device_entry(kind)])
        )
    assert snapshot(store) == ([], [], [])


@needs_root
def test_device_nodes_are_kept_when_allowed(tmp_path: Path) -> None:
    s = ImageStore(tmp_path / "s", durable=False, policy=ExtractPolicy(allow_devices=True))
    record = do_import(
        s, aci(image_manifest("example.com/dev"), [directory("dev"), _device_entry(b"3")])
    ).record
    assert stat.S_ISCHR(s.rootfs(record.id).joinpath("dev/null").lstat().st_mode)
    s.close()


def test_setuid_files_are_refused_unless_allowed(store: ImageStore, tmp_path: Path) -> None:
    data = aci(image_manifest("example.com/su"), [file("su", "x", 0o4755)])
    with pytest.raises(ImportFailed, match="setuid or setgid"):
        do_import(store, data)
    lenient = ImageStore(
        tmp_path / "lenient", durable=False, policy=ExtractPolicy(allow_setuid=True)
    )
    record = do_import(lenient, data).record
    assert lenient.rootfs(record.id).joinpath("su").stat().st_mode & stat.S_ISUID
    lenient.close()


def test_a_setgid_directory_is_fine(store: ImageStore) -> None:
    record = do_import(
        store, aci(image_manifest("example.com/sg"), [directory("shared", 0o2775)])
    ).record
    assert store.rootfs(record.id).joinpath("shared").stat().st_mode & stat.S_ISGID


def test_fifos_are_kept(store: ImageStore) -> None:
    from .tarcraft import Entry

    record = do_import(
        store, aci(image_manifest("example.com/fifo"), [Entry("pipe", b"6", mode=0o600)])
    ).record
    assert stat.S_ISFIFO(store.rootfs(record.id).joinpath("pipe").lstat().st_mode)


@pytest.mark.parametrize(
    "entries,reason",
    [
        ([file("a"), file("a/b")], "symlink or not a directory"),
        ([directory("a/b"), file("a")], "clashes with an earlier entry"),
    ],
)
def test_entries_that_clash_are_refused(store: ImageStore, entries, reason: str) -> None:
    with pytest.raises(ImportFailed, match=reason):
        do_import(store, aci(image_manifest("example.com/clash"), entries))
    assert snapshot(store) == ([], [], [])


def test_an_oversized_header_is_refused_before_it_is_read(store: ImageStore) -> None:
    import tarfile

    header = tarfile.TarInfo("././@PaxHeader")
    header.type = tarfile.XHDTYPE
    header.size = 8**11 - 1
    data = header.tobuf(format=tarfile.GNU_FORMAT) + b"\0" * 4096
    with pytest.raises(ImportFailed, match="extended header of 8589934591 bytes"):
        do_import(store, data)
    assert snapshot(store) == ([], [], [])


def test_a_truncated_stream_leaves_nothing(store: ImageStore) -> None:
    data = aci(image_manifest("example.com/big"), [file("blob", os.urandom(300_000))], "gzip")
    with pytest.raises(ImportFailed, match="truncated"):
        do_import(store, data[: len(data) // 2])
    assert snapshot(store) == ([], [], [])


def test_a_tar_bomb_over_the_quota_is_refused(tmp_path: Path) -> None:
    s = ImageStore(tmp_path / "s", durable=False, quota_bytes=200_000)
    small = do_import(s, simple()).record
    bomb = aci(
        image_manifest("example.com/bomb"),
        [file(f"zero{i}", b"\0" * 100_000) for i in range(50)],
        "gzip",
    )
    assert len(bomb) < 100_000, "compresses far below what it expands to"
    with pytest.raises(QuotaExceeded, match="quota of 200000 bytes would be exceeded"):
        do_import(s, bomb)
    assert snapshot(s) == ([small.id], [small.id.digest], [])
    assert s.used_bytes == small.size
    s.close()


@needs_root
def test_a_full_disk_gives_a_clean_error_and_an_intact_store(tmp_path: Path) -> None:
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mountpoint)], check=True)
    try:
        s = ImageStore(mountpoint / "store", durable=False)
        small = do_import(s, simple()).record
        big = aci(image_manifest("example.com/big"), [file("blob", os.urandom(4_000_000))], "gzip")
        with pytest.raises(ImportFailed, match="no space left on device"):
            do_import(s, big)
        assert snapshot(s) == ([small.id], [small.id.digest], [])
        assert s.rootfs(small.id).joinpath("bin/app").read_text() == "hello\n"
        assert do_import(s, simple(body="after")).created, "the store still works"
        s.close()
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)


def test_an_import_killed_midway_leaves_nothing_visible(tmp_path: Path) -> None:
    root = tmp_path / "store"
    data = aci(
        image_manifest("example.com/slow"), [file(f"f{i}", os.urandom(50_000)) for i in range(40)]
    )
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from kurmad.images.store import ImageStore
        s = ImageStore(Path({str(root)!r}), durable=False)
        print("ready", flush=True)
        s.import_stream(sys.stdin.buffer)
    """)
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert child.stdout is not None and child.stdin is not None
    assert child.stdout.readline() == b"ready\n"
    child.stdin.write(data[: len(data) // 2])
    child.stdin.flush()
    deadline = time.monotonic() + 10
    while not any((root / "tmp").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert any((root / "tmp").iterdir()), "the import had started writing"
    child.send_signal(signal.SIGKILL)
    child.wait()
    reopened = ImageStore(root, durable=False)
    assert snapshot(reopened) == ([], [], []), "leftovers are swept at start-up"
    reopened.close()


# --- concurrency ----------------------------------------------------------------------------------------


def test_many_threads_importing_deleting_and_looking_up(store: ImageStore) -> None:
    payloads = [simple(body=f"image {i}\n") for i in range(6)]
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            for round_ in range(8):
                data = payloads[(seed + round_) % len(payloads)]
                record = do_import(store, data).record
                try:
                    store.get(record.id)
                    if (seed + round_) % 3 == 0:
                        store.delete(record.id)
                except (ImageNotFound, ImageInUse):
                    pass  # another thread deleted it first
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    ids, dirs, tmp = snapshot(store)
    assert [i.removeprefix("sha512-") for i in ids] == dirs and tmp == []
    for record in store.images():
        assert store.rootfs(record.id).joinpath("bin/app").read_text().startswith("image ")
    assert store.used_bytes == sum(r.size for r in store.images())
