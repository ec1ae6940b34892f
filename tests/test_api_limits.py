"""The API cannot be frozen or broken by one client (issue 11, item 4): long calls are bounded
per client and in total and end when their client goes away, listings come in pages, and
requests are bounded in size. Units first, then a real kurmad serve (root)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kurmad.api import limits
from kurmad.api.server import WorkerPool
from kurmad.api.v1 import kurma_pb2 as pb
from kurmad.client import Client, KurmaError, Stream
from kurmad.linux.cgroups import CgroupDriver
from kurmad.pods.events import EventBus
from kurmad.runtime.logs import LogWriter, read_logs

from .busybox import busybox_entries, busybox_path, write_busybox_aci
from .daemon import ServeProcess
from .tarcraft import aci, image_manifest

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or busybox_path() is None,
    reason="needs root and busybox (apt-get install busybox-static)",
)


def eventually(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {within} s")
        time.sleep(0.1)


# --- units: admission -------------------------------------------------------------------------------


def test_long_calls_are_bounded_per_client_and_for_remote_clients_together() -> None:
    calls = limits.LongCalls(per_client=2, remote_total=3, local=2)
    alice, bob = ("x509", b"CN=alice,OU=reader"), ("x509", b"CN=bob,OU=reader")
    assert calls.admit(alice) is None and calls.admit(alice) is None
    refusal = calls.admit(alice)
    assert refusal is not None and "limit per client" in refusal and "2" in refusal
    assert calls.admit(bob) is None
    refusal = calls.admit(bob)
    assert refusal is not None and "3 streams and waits open to remote clients" in refusal
    # the local socket has its own share: remote clients cannot lock the host's root out
    assert calls.admit(limits.LOCAL) is None and calls.admit(limits.LOCAL) is None
    assert "the local socket" in (calls.admit(limits.LOCAL) or "")
    calls.release(alice)
    assert calls.admit(bob) is None, "a released slot is free again"
    assert calls.open_calls(alice) == 1 and calls.open_calls() == 5


def test_every_stream_and_the_client_chosen_unary_calls_are_long() -> None:
    class Handler:
        def __init__(self, request_streaming: bool, response_streaming: bool) -> None:
            self.request_streaming, self.response_streaming = request_streaming, response_streaming

    assert limits._is_long(Handler(False, True), "/kurma.v1.Pods/Logs")
    assert limits._is_long(Handler(True, True), "/kurma.v1.Pods/Exec")
    assert limits._is_long(Handler(True, False), "/kurma.v1.Images/Import")
    assert limits._is_long(Handler(False, False), "/kurma.v1.Pods/Wait")
    assert not limits._is_long(Handler(False, False), "/kurma.v1.Pods/List")


# --- units: the worker pool ---------------------------------------------------------------------------


def test_the_worker_pool_gives_each_call_a_thread_and_retires_idle_ones() -> None:
    pool = WorkerPool(max_workers=8, idle=0.3, name="test-pool")
    release = threading.Event()
    started = threading.Semaphore(0)

    def blocked() -> str:
        started.release()
        release.wait(30)
        return "done"

    held = [pool.submit(blocked) for _ in range(6)]
    for _ in held:  # none of them waits behind another
        assert started.acquire(timeout=10)
    assert pool.submit(lambda: 42).result(timeout=10) == 42
    release.set()
    assert [f.result(timeout=10) for f in held] == ["done"] * 6
    eventually(lambda: pool.threads == 0, 10, "idle workers end")
    assert pool.submit(lambda: "again").result(timeout=10) == "again"
    pool.shutdown()


def test_the_worker_pool_queues_beyond_its_size_and_carries_exceptions() -> None:
    pool = WorkerPool(max_workers=2, idle=5, name="test-pool")
    gate = threading.Event()
    first = [pool.submit(gate.wait, 30) for _ in range(2)]
    queued = pool.submit(lambda: "ran later")
    assert pool.threads == 2 and not queued.done()
    gate.set()
    assert queued.result(timeout=10) == "ran later" and all(f.result(10) for f in first)
    failing = pool.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failing.result(timeout=10)
    pool.shutdown(wait=True)
    assert pool.threads == 0
    with pytest.raises(RuntimeError):
        pool.submit(lambda: None)


# --- units: waking followers ----------------------------------------------------------------------------


def test_closing_a_subscription_wakes_its_reader_at_once() -> None:
    bus = EventBus()
    subscription = bus.subscribe(poll=60)  # no polling to rescue it: only the close
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(e.action for e in subscription))
    reader.start()
    bus.emit("pod", "created", "u1")
    eventually(lambda: seen == ["created"], 5, "the event arrives")
    subscription.close()
    reader.join(2)
    assert not reader.is_alive(), "the reader ended within 2 s of the close"
    bus.emit("pod", "removed", "u1")
    assert seen == ["created"] and bus._subscribers == []


def test_a_subscription_whose_inbox_is_full_still_ends_on_close() -> None:
    bus = EventBus(backlog=2)
    subscription = bus.subscribe(poll=60)
    for action in ("a", "b", "c"):
        bus.emit("pod", action, "u1")
    subscription.close()  # the wake-up cannot be queued: the reader looks at the flag
    assert list(subscription) == []


def test_a_log_follower_of_a_silent_app_ends_when_its_reader_goes(tmp_path: Path) -> None:
    writer = LogWriter(tmp_path, max_bytes=1 << 20, keep=2)
    writer.write("stdout", b"ready\n")
    wanted = threading.Event()
    wanted.set()
    lines: list[bytes] = []
    follower = threading.Thread(
        target=lambda: lines.extend(
            r.line
            for r in read_logs(
                tmp_path, follow=True, still_running=lambda: True, still_wanted=wanted.is_set
            )
        )
    )
    follower.start()
    eventually(lambda: lines == [b"ready"], 5, "the first line")
    wanted.clear()
    follower.join(2)
    assert not follower.is_alive(), "the follower ended within 2 s of its reader going"
    writer.close()


# --- units: pages and sizes -------------------------------------------------------------------------


def _images(count: int, size: int) -> list[pb.Image]:
    return [pb.Image(id=f"sha512-{i:04d}", name=f"example.com/i{i:04d}", manifest_json="m" * size)
            for i in range(count)]  # fmt: skip


def _all_pages(items: list[pb.Image], page_size: int = 0) -> list[list[pb.Image]]:
    pages, token = [], ""
    while True:
        page, token = limits.page(items, key=lambda i: (i.name, i.id), message=lambda i: i,
                                  kind="images", page_size=page_size, page_token=token)  # fmt: skip
        pages.append(page)
        if not token:
            return pages


def test_pages_stop_before_the_byte_budget_and_give_every_item_once() -> None:
    items = _images(30, 400 * 1024)  # 12 MB together
    pages = _all_pages(items)
    assert len(pages) >= 3
    assert all(sum(i.ByteSize() for i in page) <= limits.PAGE_BYTES for page in pages)
    assert [i.id for page in pages for i in page] == [i.id for i in items]


def test_pages_honour_page_size_within_the_cap() -> None:
    items = _images(7, 10)
    assert [len(p) for p in _all_pages(items, page_size=3)] == [3, 3, 1]
    many = _images(limits.MAX_PAGE_SIZE + 5, 1)
    assert len(_all_pages(many, page_size=10**6)[0]) == limits.MAX_PAGE_SIZE


def test_an_item_larger_than_a_page_has_a_page_of_its_own() -> None:
    items = _images(3, limits.PAGE_BYTES + 10)
    assert [len(p) for p in _all_pages(items)] == [1, 1, 1]


def test_items_coming_and_going_between_pages_do_not_repeat_or_hide_others() -> None:
    items = _images(10, 10)
    first, token = limits.page(items, key=lambda i: (i.name, i.id), message=lambda i: i,
                               kind="images", page_size=4, page_token="")  # fmt: skip
    changed = [i for i in items if i.id != "sha512-0001"] + _images(12, 10)[10:]
    rest, token = limits.page(changed, key=lambda i: (i.name, i.id), message=lambda i: i,
                              kind="images", page_size=100, page_token=token)  # fmt: skip
    assert token == ""
    assert [i.id for i in first] == [f"sha512-{n:04d}" for n in range(4)]
    assert [i.id for i in rest] == [f"sha512-{n:04d}" for n in range(4, 12)]


@pytest.mark.parametrize("token", ["garbage", "bm90IGpzb24=", "WyJwb2RzIiwgMS4wLCAieCJd"])
def test_a_foreign_page_token_is_refused_by_name(token: str) -> None:
    # the last is a token of the pod listing ("pods", 1.0, "x") given to the image listing
    with pytest.raises(limits.BadPageToken) as caught:
        limits.page(_images(2, 1), key=lambda i: (i.name, i.id), message=lambda i: i,
                    kind="images", page_size=0, page_token=token)  # fmt: skip
    assert str(caught.value).startswith("page_token: not a token from an earlier page")


def _manifest(**fields: Any) -> str:
    app: dict[str, Any] = {"name": "a", "image": {"id": "sha512-" + "a" * 128}}
    app.update(fields.pop("app_fields", {}))
    return json.dumps({"acKind": "PodManifest", "acVersion": "0.8.11", "apps": [app], **fields})


def _annotations(total: int, count: int = 4) -> list[dict[str, str]]:
    return [{"name": f"example.com/n{i}", "value": "v" * (total // count)} for i in range(count)]


@pytest.mark.parametrize(
    "request_,field,bound",
    [
        (pb.CreatePodRequest(manifest_json=_manifest(annotations=_annotations(1100 * 1024))), "manifest_json", "1.0 MiB"),
        (pb.CreatePodRequest(manifest_json=_manifest(annotations=_annotations(200 * 1024),
                                                     app_fields={"annotations": _annotations(100 * 1024)})),
         "annotations", "256 KiB"),
        (pb.CreatePodRequest(manifest_json=_manifest(app_fields={"app": {"exec": ["/bin/true"], "user": "0", "group": "0",
                                                                         "environment": [{"name": "BIG", "value": "x" * 300_000}]}})),
         "apps[].app.environment", "256 KiB"),
        (pb.CreatePodRequest(manifest_json=_manifest(app_fields={"app": {"exec": ["/bin/echo", *["y" * 1000] * 300],
                                                                         "user": "0", "group": "0"}})),
         "apps[].app.exec", "256 KiB"),
        (pb.CreatePodRequest(run=pb.RunSpec(image="x", env={"BIG": "x" * 300_000})), "run.env", "256 KiB"),
        (pb.CreatePodRequest(run=pb.RunSpec(image="x", exec=["z" * 1000] * 300)), "run.exec", "256 KiB"),
        (pb.CreatePodRequest(run=pb.RunSpec(image="x", volumes=[pb.VolumeMount(host_path="/" + "h" * 4000, path="/m")] * 300)),
         "run", "1.0 MiB"),
    ],
)  # fmt: skip
def test_oversized_create_requests_name_the_field_and_the_bound(
    request_: pb.CreatePodRequest, field: str, bound: str
) -> None:
    with pytest.raises(limits.RequestTooLarge) as caught:
        limits.check_create_size(request_)
    assert caught.value.path == field and bound in caught.value.rule, str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_create_requests_within_the_bounds_pass() -> None:
    at_bounds = _manifest(annotations=_annotations(250 * 1024))
    limits.check_create_size(pb.CreatePodRequest(manifest_json=at_bounds))
    limits.check_create_size(
        pb.CreatePodRequest(run=pb.RunSpec(image="x", env={"A": "b" * 200_000}))
    )
    for broken in ("{not json", "[1, 2]", '{"apps": 3, "annotations": "x"}', "[" * 100_000):
        limits.check_create_size(pb.CreatePodRequest(manifest_json=broken))  # Create says why


def test_exec_requests_are_bounded_like_runs() -> None:
    with pytest.raises(limits.RequestTooLarge) as caught:
        limits.check_exec_size(pb.ExecStart(argv=["a" * 300_000]))
    assert caught.value.path == "start.argv"
    limits.check_exec_size(pb.ExecStart(argv=["/bin/sh"], env={"A": "b"}))


# --- a real daemon ------------------------------------------------------------------------------------

READERS = ("reader-a", "reader-b", "reader-c", "reader-d")


@pytest.fixture(scope="module")
def serve(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServeProcess, dict[str, Path]]]:
    if os.geteuid() != 0 or busybox_path() is None:
        pytest.skip("needs root and busybox (apt-get install busybox-static)")
    state = tmp_path_factory.mktemp("limits") / "state"
    daemon = ServeProcess(
        state, "--listen", "127.0.0.1:0", cgroup_parent=f"/kurmad-test-{os.getpid()}-limits"
    ).start()
    bundles = {name: daemon.issue_bundle(name, name.split("-")[0], state.parent / f"bundle-{name}")
               for name in (*READERS, "operator-x")}  # fmt: skip
    daemon.import_image(
        write_busybox_aci(state.parent / "busybox.aci", ["/bin/sh", "-c", "echo default app"])
    )
    with daemon.client() as kurma:
        kurma.run(
            "example.com/busybox",
            exec=["/bin/sh", "-c", "echo ready; exec sleep 3600"],
            name="silent",
        )
    yield daemon, bundles
    daemon.cleanup_pods()
    daemon.stop()
    CgroupDriver(daemon.cgroup_parent).cgroup("").remove()


def daemon_threads(daemon: ServeProcess) -> int:
    assert daemon.process is not None
    status = Path(f"/proc/{daemon.process.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))


def follow(kurma: Client) -> Stream[pb.LogEntry]:
    """A follower of the silent pod, admitted and past its one line."""
    stream = kurma.logs("silent", follow=True)
    assert stream.admitted(), "the daemon took the follower on"
    assert next(stream).line == b"ready"
    return stream


def refused(kurma: Client) -> KurmaError:
    stream = kurma.logs("silent", follow=True)
    assert not stream.admitted()
    with pytest.raises(KurmaError) as caught:
        next(stream)
    return caught.value


def answers_within(seconds: float, call: Callable[[], object]) -> None:
    started = time.monotonic()
    call()
    assert time.monotonic() - started < seconds, f"{call} took over {seconds} s"


@needs_root
def test_idle_followers_from_many_clients_leave_the_api_answering(serve) -> None:
    daemon, bundles = serve
    assert daemon.tcp is not None
    before = daemon_threads(daemon)
    clients = {name: Client(daemon.tcp, bundles[name]) for name in READERS[:3]}
    local = daemon.client()
    streams: dict[str, list[Stream[pb.LogEntry]]] = {name: [] for name in [*clients, "local"]}
    try:
        for name, kurma in clients.items():
            streams[name] = [follow(kurma) for _ in range(22)]
        streams["local"] = [follow(local) for _ in range(10)]
        during = daemon_threads(daemon)
        assert during >= 76, "each follower holds a worker"
        # 76 idle followers: listings and Info answer at once, from everyone
        for kurma in [*clients.values(), local]:
            answers_within(1.0, kurma.pods)
            answers_within(1.0, kurma.info)
            answers_within(1.0, kurma.images)
        ps = subprocess.run([sys.executable, "-m", "kurmad.cli.kurmactl", "ps"], capture_output=True, text=True,
                            env={**os.environ, "KURMA_HOST": daemon.socket}, timeout=30)  # fmt: skip
        assert ps.returncode == 0 and "silent" in ps.stdout, ps.stderr

        # the 33rd stream of one certificate is refused, its unary calls go on
        full = clients[READERS[0]]
        streams[READERS[0]] += [follow(full) for _ in range(10)]
        error = refused(full)
        assert error.code == "RESOURCE_EXHAUSTED" and "32" in error.message, error.message
        assert full.info().mode == "serve" and any(p.name == "silent" for p in full.pods())
        # a second bundle of the same subject is the same client
        with Client(daemon.tcp, bundles[READERS[0]]) as again:
            assert refused(again).code == "RESOURCE_EXHAUSTED"
        # and the fourth remote client meets the remote total (3 x 32 would; here 32+22+22 = 76)
        with Client(daemon.tcp, bundles[READERS[3]]) as fourth:
            streams["fourth"] = [follow(fourth) for _ in range(20)]
            assert refused(fourth).message.endswith("open to remote clients, its limit")
            assert fourth.info().mode == "serve"
            for stream in streams.pop("fourth"):
                stream.cancel()

        # the readers leave: cancelled streams, closed channels
        for stream in streams[READERS[0]] + streams["local"]:
            stream.cancel()
        for name in READERS[1:3]:
            clients[name].close()
        eventually(lambda: _admits(full), 5, "the slots of the cancelled streams are free")
        eventually(
            lambda: daemon_threads(daemon) <= min(before + 8, during - 60), 30,
            "the threads of the followers end",
        )  # fmt: skip
    finally:
        for kurma in [*clients.values(), local]:
            kurma.close()


def _admits(kurma: Client) -> bool:
    with kurma.logs("silent", follow=True) as stream:
        return stream.admitted()


@needs_root
def test_cancelled_and_killed_streams_free_their_slots(serve) -> None:
    daemon, _ = serve
    marker = f"marker-{uuid.uuid4().hex[:8]}"
    kurma = daemon.client()
    followers = [follow(kurma) for _ in range(28)]
    env = {**os.environ, "KURMA_HOST": daemon.socket}
    outside = [subprocess.Popen([sys.executable, "-m", "kurmad.cli.kurmactl", "logs", "-f", "silent"],
                                stdout=subprocess.PIPE, env=env) for _ in range(2)]  # fmt: skip
    hold = threading.Event()
    try:
        for process in outside:
            assert process.stdout is not None and process.stdout.readline() == b"ready\n"
        events = kurma.events()
        assert events.admitted()

        def exec_requests() -> Iterator[pb.ExecRequest]:
            yield pb.ExecRequest(
                start=pb.ExecStart(
                    ref="silent", argv=["/bin/sh", "-c", f"echo started; cat; echo {marker}"]
                )
            )
            hold.wait(60)  # the client never ends its input: only the cancel ends the call

        session = kurma.exec(exec_requests())
        assert session.admitted() and next(session).stdout == b"started\n"
        assert _processes_with(marker), "the exec'd shell runs"
        assert refused(kurma).code == "RESOURCE_EXHAUSTED", "the local socket has its 32"

        events.cancel()
        followers.append(_admitted_within(kurma, 3, "after the Events follower was cancelled"))
        session.cancel()
        followers.append(_admitted_within(kurma, 3, "after the Exec session was cancelled"))
        eventually(lambda: not _processes_with(marker), 5, "the exec'd command's input closed")
        for process in outside:  # readers that die without a word
            process.send_signal(signal.SIGKILL)
            process.wait()
        followers.append(_admitted_within(kurma, 3, "after a reader was killed"))
        followers.append(_admitted_within(kurma, 3, "after another reader was killed"))
        assert refused(kurma).code == "RESOURCE_EXHAUSTED"
    finally:
        hold.set()
        for process in outside:
            process.kill()
            process.wait()
        kurma.close()


def _admitted_within(kurma: Client, seconds: float, what: str) -> Stream[pb.LogEntry]:
    deadline = time.monotonic() + seconds
    while True:
        stream = kurma.logs("silent", follow=True)
        if stream.admitted():
            return stream
        if time.monotonic() > deadline:
            pytest.fail(f"no slot came free within {seconds} s {what}")
        time.sleep(0.1)


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return [pid for pid in found if pid != os.getpid()]


@needs_root
def test_a_wait_whose_client_gives_up_frees_its_slot(serve) -> None:
    daemon, bundles = serve
    with Client(daemon.tcp, bundles["operator-x"]) as kurma:
        followers = [follow(kurma) for _ in range(31)]
        with pytest.raises(KurmaError) as caught:
            kurma._call(kurma._pods.Wait, pb.WaitPodRequest(ref="silent"), timeout=1)
        assert caught.value.code == "DEADLINE_EXCEEDED"
        followers.append(_admitted_within(kurma, 3, "after the Wait's deadline passed"))
        for stream in followers:
            stream.cancel()


@needs_root
def test_listings_page_through_pods_larger_than_a_page(serve) -> None:
    daemon, _ = serve
    with daemon.client() as kurma:
        image_id = kurma.image("example.com/busybox").id
        made = set()
        for i in range(24):  # 240 KiB of annotations each: about 6 MB together
            manifest = {"acKind": "PodManifest", "acVersion": "0.8.11", "annotations": _annotations(240 * 1024),
                        "apps": [{"name": "a", "image": {"id": image_id}}]}  # fmt: skip
            made.add(kurma.create(json.dumps(manifest), f"heavy-{i}", start=False).uuid)
        try:
            first = kurma._call(kurma._pods.List, pb.ListPodsRequest())
            assert first.next_page_token and 0 < len(first.pods) < 25
            assert first.ByteSize() < limits.PAGE_BYTES + 1024
            listed = [p.uuid for p in kurma.pods()]
            assert len(listed) == len(set(listed)) and made <= set(listed), "each pod exactly once"
            assert listed == [p.uuid for p in sorted(kurma.pods(), key=lambda p: p.created_at)]
            small = _pages(
                lambda token: kurma._call(
                    kurma._pods.List, pb.ListPodsRequest(page_size=5, page_token=token)
                ),
                "pods",
            )
            assert [len(page) for page in small][:-1] == [5] * (len(small) - 1)
            assert [p.uuid for page in small for p in page] == listed
            with pytest.raises(KurmaError) as caught:
                kurma._call(kurma._pods.List, pb.ListPodsRequest(page_token="forged"))
            assert caught.value.code == "INVALID_ARGUMENT" and "page_token" in caught.value.message
            ps = subprocess.run([sys.executable, "-m", "kurmad.cli.kurmactl", "ps", "-a"], capture_output=True, text=True,
                                env={**os.environ, "KURMA_HOST": daemon.socket}, timeout=60)  # fmt: skip
            assert ps.returncode == 0 and all(f"heavy-{i} " in ps.stdout for i in range(24)), (
                ps.stderr
            )
        finally:
            for pod in made:
                kurma.remove(pod)


def _pages(ask: Callable[[str], Any], field: str) -> list[list[Any]]:
    pages, token = [], ""
    while True:
        response = ask(token)
        pages.append(list(getattr(response, field)))
        token = response.next_page_token
        if not token:
            return pages


@needs_root
def test_images_list_in_pages(serve, tmp_path: Path) -> None:
    daemon, _ = serve
    with daemon.client() as kurma:
        for name in ("example.com/page-a", "example.com/page-b"):
            (tmp_path / "x.aci").write_bytes(
                aci(image_manifest(name, "1.0.0"), busybox_entries()[:2])
            )
            with open(tmp_path / "x.aci", "rb") as f:
                kurma.import_image(f)
        pages = _pages(lambda token: kurma._call(kurma._images.List, pb.ListImagesRequest(page_size=1, page_token=token)),
                       "images")  # fmt: skip
        names = [i.name for page in pages for i in page]
        assert [len(p) for p in pages] == [1] * len(names)
        assert names == [i.name for i in kurma.images()] == sorted(names)
        assert {"example.com/page-a", "example.com/page-b", "example.com/busybox"} <= set(names)
        for name in ("example.com/page-a", "example.com/page-b"):
            kurma.remove_image(name)


@needs_root
def test_oversized_creates_are_invalid_argument_and_break_nothing(serve) -> None:
    daemon, _ = serve
    with daemon.client() as kurma:
        image_id = kurma.image("example.com/busybox").id
        before = {p.uuid for p in kurma.pods()}

        def create(annotations: list[dict[str, str]]) -> KurmaError:
            manifest = {"acKind": "PodManifest", "acVersion": "0.8.11", "annotations": annotations,
                        "apps": [{"name": "a", "image": {"id": image_id}}]}  # fmt: skip
            with pytest.raises(KurmaError) as caught:
                kurma.create(json.dumps(manifest), "too-big", start=False)
            return caught.value

        error = create(_annotations(300 * 1024))
        assert error.code == "INVALID_ARGUMENT" and error.message.startswith("annotations: ")
        assert "256 KiB" in error.message
        error = create(_annotations(1536 * 1024))
        assert error.code == "INVALID_ARGUMENT" and error.message.startswith("manifest_json: ")
        with pytest.raises(KurmaError) as caught:
            kurma.run("example.com/busybox", env={"BIG": "x" * 300_000}, name="too-big")
        assert caught.value.code == "INVALID_ARGUMENT" and caught.value.message.startswith(
            "run.env: "
        )
        # 10 MB is grpcio's to refuse, before kurmad reads it
        assert create(_annotations(10 * 2**20)).code == "RESOURCE_EXHAUSTED"
        assert {p.uuid for p in kurma.pods()} == before, "nothing was created"
        assert kurma.info().mode == "serve"


@needs_root
def test_exec_input_larger_than_a_pipe_arrives_whole(serve) -> None:
    """The feeder writes without blocking: under back-pressure it waits, and loses nothing."""
    daemon, _ = serve
    data = os.urandom(3 * 2**20)

    def requests() -> Iterator[pb.ExecRequest]:
        yield pb.ExecRequest(start=pb.ExecStart(ref="silent", argv=["/bin/sha256sum"]))
        for offset in range(0, len(data), 2**20):
            yield pb.ExecRequest(stdin=data[offset : offset + 2**20])
        yield pb.ExecRequest(close_stdin=True)

    with daemon.client() as kurma:
        responses = list(kurma.exec(requests()))
    out = b"".join(r.stdout for r in responses if r.WhichOneof("response") == "stdout")
    assert out.split()[0].decode() == hashlib.sha256(data).hexdigest()
    assert responses[-1].WhichOneof("response") == "exit_code" and responses[-1].exit_code == 0
