"""The gRPC server over the core (kurmad/core.py) and the host, on a local Unix socket and,
when asked, on TCP with mutual TLS."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections import deque
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kurmad.core import Core
from kurmad.host.control import Host

from . import auth, limits
from .services import HostService, ImagesService, PodsService
from .v1 import kurma_pb2 as pb
from .v1 import kurma_pb2_grpc as rpc

log = logging.getLogger("kurmad")

# Every call holds one worker thread of the pool for as long as it runs, and a call that finds
# every worker busy waits. Long calls (streams, Wait, Stop: limits.py) are admitted only up to
# REMOTE_TOTAL (96) from TCP clients together plus the local socket's own 32, so at most 128
# workers are ever held by them; a pool of those 128 plus UNARY_RESERVE always has 32 workers
# for the unary calls, and for refusing long calls past their bounds (an instant each).
UNARY_RESERVE = 32
WORKERS = limits.REMOTE_TOTAL + limits.LOCAL_CALLS + UNARY_RESERVE
# A worker that has had nothing to do for this long ends: a burst of streams leaves no idle
# threads behind (concurrent.futures' pool keeps every thread it ever made).
WORKER_IDLE_SECONDS = 5.0
# The largest request that passes limits.py is a Create at 1 MiB (manifest or run spec) or an
# Import chunk (kurmactl sends 1 MiB); 4 MiB leaves room for other clients' chunks, and lets a
# request somewhat over the bounds hear the field it breaks (grpcio refuses a larger one with
# RESOURCE_EXHAUSTED before it reaches kurmad). Replies can be large: a page of a listing is
# limits.PAGE_BYTES at most, plus one item.
_RECEIVE_LIMIT = 4 * 2**20
_SEND_LIMIT = 64 * 2**20
# A client that vanished without closing its connection (a host switched off, a cut cable)
# is found out by pings and its calls cancelled, as if it had gone away properly.
_KEEPALIVE = [("grpc.keepalive_time_ms", 60_000), ("grpc.keepalive_timeout_ms", 20_000)]
# How long a stop may take beyond its grace before the daemon leaves regardless.
STOP_MARGIN = 10.0


class Daemon:
    """The gRPC server over a core: on a local Unix socket and, when its settings say so, on
    TCP. Stopping it closes the core."""

    def __init__(self, core: Core, host: Host | None = None) -> None:
        self.core = core
        self.settings = core.settings
        self.host = host or Host()
        self.long_calls = limits.LongCalls()
        self.workers = WorkerPool(WORKERS, WORKER_IDLE_SECONDS, name="rpc")
        self.server = grpc.server(
            self.workers,
            # auth first: a caller without a role never takes a slot of the long calls
            interceptors=[
                auth.AuthInterceptor(self.tls_files, insecure_tcp=self.settings.insecure),
                limits.LimitInterceptor(self.long_calls),
            ],
            options=[
                ("grpc.max_receive_message_length", _RECEIVE_LIMIT),
                ("grpc.max_send_message_length", _SEND_LIMIT),
                *_KEEPALIVE,
            ],
        )
        self._register()
        self.endpoints = self._bind()
        self._stopped = threading.Event()

    @property
    def tls_files(self) -> auth.TLSFiles:
        return auth.TLSFiles(self.settings.tls_path)

    def _register(self) -> None:
        core = self.core
        rpc.add_PodsServicer_to_server(PodsService(core), self.server)
        rpc.add_ImagesServicer_to_server(ImagesService(core), self.server)
        rpc.add_HostServicer_to_server(HostService(core, self.host), self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [pb.DESCRIPTOR.services_by_name[s].full_name for s in ("Pods", "Images", "Host")]
        reflection.enable_server_reflection(
            [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )

    def _bind(self) -> list[str]:
        endpoints = []
        path = self.settings.socket_path
        path.unlink(missing_ok=True)
        old_umask = os.umask(0o077)  # the socket is born owner-only: no window for others
        try:
            self.server.add_insecure_port(f"unix://{path}")
        finally:
            os.umask(old_umask)
        endpoints.append(f"unix://{path}")
        if self.settings.listen:
            endpoints.append(self._bind_tcp(self.settings.listen))
        return endpoints

    def _bind_tcp(self, address: str) -> str:
        if self.settings.insecure:
            log.warning("TCP %s without TLS: every client is admin (--insecure)", address)
            port = self.server.add_insecure_port(address)
        else:
            tls = self.tls_files
            auth.ensure_server_material(tls, [socket.gethostname()])
            port = self.server.add_secure_port(address, auth.server_credentials(tls))
        if port == 0:
            raise OSError(f"cannot listen on {address}")
        return f"{address.rsplit(':', 1)[0]}:{port}"

    def start(self) -> None:
        self.server.start()
        for service in ("", "kurma.v1.Pods", "kurma.v1.Images", "kurma.v1.Host"):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self.core.events.emit(
            "host", "api-ready", "", socket.gethostname(), endpoints=" ".join(self.endpoints)
        )
        log.info("serving on %s", ", ".join(self.endpoints))

    def stop(self, grace: float = 5.0) -> None:
        """Stop serving. Pods keep running; a new daemon re-adopts them. Each step runs
        whatever the one before it raised: a stop always ends."""
        steps = (self.health.enter_graceful_shutdown, self.core.events.close,  # streams end first
                 lambda: self.server.stop(grace).wait(grace + 1), lambda: self.workers.shutdown(wait=False),
                 self.core.close)  # fmt: skip
        try:
            for step in steps:
                try:
                    step()
                except Exception:
                    log.exception("while stopping")
        finally:
            self._stopped.set()

    def run_until_signalled(self, grace: float = 5.0) -> None:
        """Serve until SIGTERM or SIGINT; then stop, and end even if stopping hangs (a full
        disk, a stuck thread): pods live on without us."""
        signalled = threading.Event()

        def on_signal(*_: Any) -> None:
            signalled.set()
            threading.Thread(target=self.stop, args=(grace,), daemon=True).start()

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, on_signal)
        self.start()
        signalled.wait()
        if not self._stopped.wait(grace + STOP_MARGIN):
            log.error("stopping took longer than %.0fs; leaving now", grace + STOP_MARGIN)
            logging.shutdown()
            os._exit(1)  # a thread that hangs must not keep the process alive


_Work = tuple[futures.Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class WorkerPool(futures.Executor):
    """The server's worker threads: up to ``max_workers``, made when work comes and none is
    free, each ending once it has had no work for ``idle`` seconds."""

    def __init__(self, max_workers: int, idle: float, name: str = "worker") -> None:
        self.max_workers = max_workers
        self._idle = idle
        self._name = name
        self._lock = threading.Condition()
        self._work: deque[_Work] = deque()
        self._threads: set[threading.Thread] = set()
        self._waiting = 0  # threads waiting for work; each takes one item when it wakes
        self._made = 0
        self._shut = False

    @property
    def threads(self) -> int:
        with self._lock:
            return len(self._threads)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> futures.Future[Any]:
        future: futures.Future[Any] = futures.Future()
        with self._lock:
            if self._shut:
                raise RuntimeError("the worker pool is shut down")
            self._work.append((future, fn, args, kwargs))
            if len(self._work) > self._waiting and len(self._threads) < self.max_workers:
                self._made += 1
                thread = threading.Thread(
                    target=self._run, name=f"{self._name}-{self._made}", daemon=True
                )
                self._threads.add(thread)
                thread.start()
            else:
                self._lock.notify()
        return future

    def _run(self) -> None:
        while (work := self._next()) is not None:
            future, fn, args, kwargs = work
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as err:  # the future carries it
                    future.set_exception(err)
            del work, future, fn, args, kwargs  # the call's objects go now, not at the next one

    def _next(self) -> _Work | None:
        """The next work, or None when this thread is to end (idle too long, or shut down)."""
        with self._lock:
            while not self._work and not self._shut:
                self._waiting += 1
                woken = self._lock.wait(self._idle)
                self._waiting -= 1
                if not woken and not self._work:
                    break
            if self._work:
                return self._work.popleft()
            self._threads.discard(threading.current_thread())
            return None

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shut = True
            if cancel_futures:
                while self._work:
                    self._work.popleft()[0].cancel()
            self._lock.notify_all()
            threads = list(self._threads)
        if wait:
            for thread in threads:
                thread.join()
