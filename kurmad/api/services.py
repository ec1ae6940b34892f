"""The gRPC servicers: Pods, Images and Host. Each call goes through the same pod manager,
image store and host that everything else uses (the API is the only door)."""

from __future__ import annotations

import contextlib
import io
import itertools
import math
import os
import queue
import select
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc

from kurmad.appc import PodManifest, loads
from kurmad.core import Core
from kurmad.host.control import Host
from kurmad.images.oci.pull import LayerProgress
from kurmad.images.oci.registry import Credentials
from kurmad.images.streams import ChunkReader
from kurmad.linux import tty
from kurmad.pods.builder import RunRequest
from kurmad.pods.manager import PodManager
from kurmad.pods.model import Pod, PodState

from . import auth, convert, limits
from .errors import BadRequest, handled, handled_stream
from .v1 import kurma_pb2 as pb
from .v1 import kurma_pb2_grpc as rpc

_READ = 65536
_IMPORT_BUFFER = 1 << 20  # as large as the chunks a client sends (client.CHUNK)
# The longest grace or timeout a request may ask for (a day), and GC's age (ten years).
MAX_SECONDS = 86400.0
MAX_GC_GRACE = 10 * 365 * 86400.0
# How often a call that waits looks whether its client is still there: the most a call outlives
# a client that went away.
_POLL = 0.25
_WAIT_POLL = 0.5  # for calls that also read the pod's status at every look


class PodsService(rpc.PodsServicer):
    def __init__(self, core: Core) -> None:
        self.core = core
        self.manager = core.manager

    @handled
    def Create(self, request: pb.CreatePodRequest, context: grpc.ServicerContext) -> pb.Pod:
        limits.check_create_size(request)
        spec: PodManifest | RunRequest
        if request.HasField("run"):
            spec = _run_request(request.run)
        elif request.manifest_json:
            spec = PodManifest.from_json(loads(request.manifest_json))
        else:
            raise BadRequest("give a manifest (manifest_json) or a run spec (run)")
        admin = auth.current_caller().role == auth.ADMIN
        pod = self.core.create_pod(spec, request.name or None, admin=admin, start=request.start,
                                   wait=not request.no_wait)  # fmt: skip
        return convert.pod(pod)

    @handled
    def Start(self, request: pb.PodRef, context: grpc.ServicerContext) -> pb.Pod:
        return convert.pod(self.manager.start(request.ref))

    @handled
    def Get(self, request: pb.PodRef, context: grpc.ServicerContext) -> pb.Pod:
        return convert.pod(self.manager.get(request.ref))

    @handled
    def List(
        self, request: pb.ListPodsRequest, context: grpc.ServicerContext
    ) -> pb.ListPodsResponse:
        pods, token = limits.page(
            self.manager.pod_order(), key=_order_key, message=self._pod_message,
            kind="pods", page_size=request.page_size, page_token=request.page_token,
        )  # fmt: skip
        return pb.ListPodsResponse(pods=pods, next_page_token=token)

    def _pod_message(self, order: tuple[float, str]) -> pb.Pod | None:
        pod = self.manager.find(order[1])
        return None if pod is None else convert.pod(pod)  # None: removed since the listing began

    @handled
    def Stop(self, request: pb.StopPodRequest, context: grpc.ServicerContext) -> pb.Pod:
        grace = (
            _seconds(request.grace_seconds, "grace_seconds")
            if request.HasField("grace_seconds")
            else 10.0
        )
        return convert.pod(self.manager.stop(request.ref, grace))

    @handled
    def Remove(
        self, request: pb.RemovePodRequest, context: grpc.ServicerContext
    ) -> pb.RemovePodResponse:
        self.manager.remove(request.ref, request.force)
        return pb.RemovePodResponse()

    @handled
    def Wait(self, request: pb.WaitPodRequest, context: grpc.ServicerContext) -> pb.Pod:
        timeout = (
            _seconds(request.timeout_seconds, "timeout_seconds")
            if request.HasField("timeout_seconds")
            else None
        )
        return convert.pod(_wait_while_wanted(self.manager, request.ref, timeout, context))

    @handled_stream
    def Logs(self, request: pb.LogsRequest, context: grpc.ServicerContext) -> Iterator[pb.LogEntry]:
        records = self.manager.logs(
            request.ref, request.app or None, request.follow, still_wanted=context.is_active
        )
        for record in records:
            yield pb.LogEntry(timestamp=record.timestamp, stream=record.stream, line=record.line,
                              partial=record.partial)  # fmt: skip

    @handled_stream
    def Exec(
        self, requests: Iterator[pb.ExecRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.ExecResponse]:
        first = next(requests, None)
        if first is None or not first.HasField("start"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first Exec message must be start")
        assert first is not None
        start = first.start
        if not start.argv:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "start.argv: give a command to run")
        limits.check_exec_size(start)
        window = (start.size.rows or 24, start.size.columns or 80) if start.tty else None
        if start.tty:
            entered = self.manager.enter(start.ref, start.app or None, list(start.argv), stdio=None,
                                         env=dict(start.env), window=window)  # fmt: skip
            assert entered.terminal is not None
            session = _Session(
                stdin=entered.terminal, stdout=entered.terminal, stderr=None, terminal=True
            )
        else:
            in_r, in_w = os.pipe2(os.O_CLOEXEC)
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            try:
                entered = self.manager.enter(start.ref, start.app or None, list(start.argv),
                                             stdio=[in_r, out_w, err_w], env=dict(start.env))  # fmt: skip
            finally:
                for fd in (in_r, out_w, err_w):
                    os.close(fd)
            session = _Session(stdin=in_w, stdout=out_r, stderr=err_r, terminal=False)
        yield from session.run(requests, context)
        code = _exit_code_while_wanted(self.manager, entered.pid, 30, context)
        if code is None:
            self.manager.forget_enter(entered.pid)  # nobody will ask for it again
        if not context.is_active():
            return  # the client has gone: nobody to tell the exit code to
        yield pb.ExecResponse(exit_code=code if code is not None else 255)

    @handled_stream
    def Attach(
        self, requests: Iterator[pb.AttachRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.ExecResponse]:
        first = next(requests, None)
        if first is None or not first.HasField("start"):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the first Attach message must be start"
            )
        assert first is not None
        start = first.start
        master = self.manager.attach(start.ref, start.app or None)
        if start.size.rows:
            _resize(master, start.size)
        session = _Session(stdin=master, stdout=master, stderr=None, terminal=True)
        yield from session.run(_as_exec_requests(requests), context)
        if not context.is_active():
            return
        pod = _wait_while_wanted(self.manager, start.ref, 30, context)
        app = pod.app(start.app) if start.app else pod.apps[0]
        code = app.exit_code if app is not None and app.exit_code is not None else 255
        yield pb.ExecResponse(exit_code=code)


def _order_key(order: tuple[float, str]) -> list[str | float]:
    return list(order)


def _seconds(value: float, field: str, maximum: float = MAX_SECONDS) -> float:
    """A duration from a request: a number from 0 up to ``maximum`` (NaN and infinity are
    not durations, and a negative one means nothing)."""
    if not math.isfinite(value) or not 0 <= value <= maximum:
        raise BadRequest(f"{field}: {value} must be a number of seconds from 0 to {maximum:g}")
    return value


def _run_request(run: pb.RunSpec) -> RunRequest:
    return RunRequest(
        image=run.image, exec=list(run.exec), env=dict(run.env),
        volumes=[(v.host_path, v.path, v.read_only) for v in run.volumes],
        working_directory=run.working_directory, user=run.user, group=run.group, tty=run.tty,
        app_name=run.app_name, host_network=run.host_network, networks=run.networks,
        ports=[(p.host_port, p.port, p.protocol or "tcp") for p in run.ports],
        devices=list(run.devices),
    )  # fmt: skip


def _as_exec_requests(requests: Iterator[pb.AttachRequest]) -> Iterator[pb.ExecRequest]:
    for request in requests:
        if request.HasField("stdin"):
            yield pb.ExecRequest(stdin=request.stdin)
        elif request.HasField("resize"):
            yield pb.ExecRequest(resize=request.resize)


def _resize(fd: int, size: pb.TerminalSize) -> None:
    tty.set_window_size(fd, size.rows, size.columns)


def _ready(fds: list[int], events: int, timeout: float) -> list[int]:
    """Which of ``fds`` are ready (or hung up), waiting ``timeout`` at most (poll, as select
    cannot watch descriptors past 1024: a daemon with many pods and streams has those)."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, events)
    return [fd for fd, _ in poller.poll(timeout * 1000)]


def _wait_while_wanted(
    manager: PodManager, ref: str, timeout: float | None, context: grpc.ServicerContext
) -> Pod:
    """manager.wait, given up when the client goes away."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        pod = manager.wait(ref, _WAIT_POLL if left is None else min(left, _WAIT_POLL))
        if pod.state.terminal or pod.state == PodState.NEW or not context.is_active():
            return pod
        if left is not None and left <= _WAIT_POLL:
            return pod  # the timeout has passed


def _exit_code_while_wanted(
    manager: PodManager, pid: int, timeout: float, context: grpc.ServicerContext
) -> int | None:
    """manager.wait_enter, given up when the client goes away."""
    deadline = time.monotonic() + timeout
    while context.is_active() and time.monotonic() < deadline:
        code = manager.wait_enter(pid, _POLL)
        if code is not None:
            return code
    return None


class _Session:
    """Relays a process's stdio (pipes, or a terminal's master) to and from a gRPC stream.

    The stream's worker drains the output; a feeder thread writes what the client sends. Each
    owns the descriptors it uses and closes them when it ends (a terminal's is duplicated for
    the feeder), so neither can write to a number the other closed and the daemon reused. The
    feeder writes without blocking, so a process that never reads its input cannot keep it
    past the session. The session ends when the output does or the client goes away (looked
    at every _POLL); the feeder then at its next request or write, or when the call ends."""

    def __init__(self, stdin: int, stdout: int, stderr: int | None, terminal: bool) -> None:
        self.stdout, self.stderr, self.terminal = stdout, stderr, terminal
        self.stdin = os.dup(stdin) if stdin == stdout else stdin
        os.set_blocking(self.stdin, False)  # the master's too: _drain reads only when ready
        self._ended = threading.Event()

    def run(
        self, requests: Iterator[pb.ExecRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.ExecResponse]:
        feeder = threading.Thread(target=self._feed, args=(requests,), daemon=True, name="feed")
        feeder.start()
        try:
            yield from self._drain(context)
        finally:
            self._ended.set()
            for fd in {self.stdout, *([self.stderr] if self.stderr is not None else [])}:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _feed(self, requests: Iterator[pb.ExecRequest]) -> None:
        try:
            for request in requests:
                if self._ended.is_set():
                    return
                if request.HasField("stdin"):
                    self._write(request.stdin)
                elif request.HasField("resize") and self.terminal:
                    _resize(self.stdin, request.resize)
                elif request.HasField("close_stdin") and request.close_stdin:
                    if not self.terminal:
                        return  # closing stdin is the end of input
                    self._write(b"\x04")
        except (OSError, grpc.RpcError, ValueError):
            return
        finally:
            os.close(self.stdin)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view and not self._ended.is_set():
            try:
                view = view[os.write(self.stdin, view) :]
            except BlockingIOError:
                _ready([self.stdin], select.POLLOUT, _POLL)

    def _drain(self, context: grpc.ServicerContext) -> Iterator[pb.ExecResponse]:
        open_fds = {self.stdout: "stdout"}
        if self.stderr is not None:
            open_fds[self.stderr] = "stderr"
        while open_fds and context.is_active():
            for fd in _ready(list(open_fds), select.POLLIN, _POLL):
                try:
                    data = os.read(fd, _READ)
                except BlockingIOError:  # another reader of the terminal was first
                    continue
                except OSError:  # EIO: the terminal's other side is closed
                    data = b""
                if not data:
                    del open_fds[fd]
                elif open_fds[fd] == "stdout":
                    yield pb.ExecResponse(stdout=data)
                else:
                    yield pb.ExecResponse(stderr=data)


class ImagesService(rpc.ImagesServicer):
    def __init__(self, core: Core) -> None:
        self.core = core
        self.store = core.store
        self.events = core.events

    def _image(self, record: Any) -> pb.Image:
        return convert.image(record, self.store.holders(record.id), self.store.total_size(record))

    @handled
    def Import(
        self, requests: Iterator[pb.ImportChunk], context: grpc.ServicerContext
    ) -> pb.ImportResponse:
        first = next(requests, pb.ImportChunk())
        data = itertools.chain([first.data], (chunk.data for chunk in requests))
        reader = io.BufferedReader(ChunkReader(data), buffer_size=_IMPORT_BUFFER)
        result = self.core.import_image(reader, first.name)
        return pb.ImportResponse(image=self._image(result.record), created=result.created)

    @handled_stream
    def Pull(
        self, request: pb.PullRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.PullProgress]:
        """The pull runs in a thread of its own; its progress is sent as it comes."""
        updates: queue.SimpleQueue[pb.PullProgress | BaseException] = queue.SimpleQueue()

        def progress(layer: LayerProgress) -> None:
            updates.put(pb.PullProgress(layer=pb.PullProgress.Layer(
                digest=layer.digest, size=layer.size, done=layer.done, state=layer.state)))  # fmt: skip

        def pull() -> None:
            try:
                result = self.core.pull(request.ref, request.platform, progress)
                updates.put(
                    pb.PullProgress(image=self._image(result.record), created=result.created)
                )
            except BaseException as err:
                updates.put(err)

        threading.Thread(target=pull, name="pull", daemon=True).start()
        while True:
            update = updates.get()
            if isinstance(update, BaseException):
                raise update
            yield update
            if update.HasField("image"):
                return

    @handled
    def Login(self, request: pb.LoginRequest, context: grpc.ServicerContext) -> pb.LoginResponse:
        if not request.registry or not request.username:
            raise BadRequest("login needs a registry and a username")
        self.core.registries.login(
            request.registry, Credentials(request.username, request.password)
        )
        return pb.LoginResponse()

    @handled
    def Logout(self, request: pb.LogoutRequest, context: grpc.ServicerContext) -> pb.LogoutResponse:
        return pb.LogoutResponse(removed=self.core.registries.logout(request.registry))

    @handled
    def List(
        self, request: pb.ListImagesRequest, context: grpc.ServicerContext
    ) -> pb.ListImagesResponse:
        images, token = limits.page(
            self.store.images(), key=lambda r: (str(r.name), r.imported_at, str(r.id)),
            message=self._image, kind="images", page_size=request.page_size,
            page_token=request.page_token,
        )  # fmt: skip
        return pb.ListImagesResponse(images=images, next_page_token=token)

    @handled
    def Get(self, request: pb.ImageRef, context: grpc.ServicerContext) -> pb.Image:
        return self._image(self.core.find_image(request.ref))

    @handled
    def Remove(self, request: pb.ImageRef, context: grpc.ServicerContext) -> pb.RemoveImageResponse:
        record = self.store.delete(self.core.find_image(request.ref).id)
        self.events.emit("image", "removed", record.id, record.name)
        return pb.RemoveImageResponse()

    @handled
    def GC(self, request: pb.GCRequest, context: grpc.ServicerContext) -> pb.GCResponse:
        removed = self.store.gc(_seconds(request.grace_seconds, "grace_seconds", MAX_GC_GRACE))
        for record in removed:
            self.events.emit("image", "removed", record.id, record.name)
        return pb.GCResponse(removed=[convert.image(r, []) for r in removed])


class HostService(rpc.HostServicer):
    def __init__(self, core: Core, host: Host) -> None:
        self.host = host
        self.manager, self.store, self.events = core.manager, core.store, core.events

    @handled
    def Info(self, request: pb.HostInfoRequest, context: grpc.ServicerContext) -> pb.HostInfo:
        return convert.host_info(
            self.host.info(), len(self.manager.pods()), len(self.store.images()),
            self.manager.quarantined,
        )  # fmt: skip

    @handled_stream
    def Events(
        self, request: pb.EventsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Event]:
        subscription = self.events.subscribe(still_wanted=context.is_active)
        if not context.add_callback(subscription.close):  # the call has ended already
            subscription.close()
        for event in subscription:
            yield convert.event(event)

    @handled
    def Reboot(self, request: pb.PowerRequest, context: grpc.ServicerContext) -> pb.PowerResponse:
        self.host.reboot()
        return pb.PowerResponse()

    @handled
    def Poweroff(self, request: pb.PowerRequest, context: grpc.ServicerContext) -> pb.PowerResponse:
        self.host.poweroff()
        return pb.PowerResponse()
