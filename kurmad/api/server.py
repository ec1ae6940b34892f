"""Wiring the daemon: the image store, the pod manager and the host behind one gRPC server,
on a local Unix socket and, when asked, on TCP with mutual TLS."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections import deque
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kurmad.host.control import Host
from kurmad.images.store import ImageStore
from kurmad.net.pods import PodNetworks
from kurmad.pods.events import EventBus
from kurmad.pods.manager import PodManager
from kurmad.pods.privileges import HostPolicy
from kurmad.runtime.spec import DEFAULT_PIDS_LIMIT
from kurmad.state import prepare_state

from . import auth, limits
from .services import HostService, ImagesService, PodsService
from .v1 import kurma_pb2 as pb
from .v1 import kurma_pb2_grpc as rpc

log = logging.getLogger("kurmad")
SOCKET_NAME = "kurmad.sock"

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


@dataclass(frozen=True)
class ServeConfig:
    state_dir: Path
    listen: str | None = None  # host:port for TCP
    insecure: bool = False  # TCP without TLS (development only)
    socket: Path | None = None  # default: <state-dir>/kurmad.sock
    cgroup_parent: str = "kurmad"
    image_quota: int | None = None
    tls_dir: Path | None = None  # default: <state-dir>/tls (made on first use)
    networks: tuple[dict[str, Any], ...] = ()  # pod networks (net/pods.py); none: pods get lo only
    default_network: str | None = None  # default: the first
    host_volumes: tuple[Path, ...] = ()  # host paths below which any operator may mount volumes
    pids_limit: int | None = DEFAULT_PIDS_LIMIT  # processes per pod

    @property
    def socket_path(self) -> Path:
        return self.socket or self.state_dir / SOCKET_NAME

    @property
    def tls_path(self) -> Path:
        return self.tls_dir or self.state_dir / "tls"

    def host_policy(self) -> HostPolicy:
        """What pods may not reach: the state, the TLS files and the API socket."""
        return HostPolicy(
            protected=(str(self.state_dir), str(self.tls_path), str(self.socket_path)),
            host_volumes=tuple(str(p) for p in self.host_volumes),
            api_socket=str(self.socket_path),
        )


class Daemon:
    def __init__(self, config: ServeConfig, host: Host | None = None) -> None:
        self.config = config
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        prepare_state(config.state_dir)  # stamped or migrated before any room opens its part
        os.chmod(config.state_dir, 0o700)  # one made earlier, by hand or by an older kurmad
        self.events = EventBus()
        self.host = host or Host()
        self.store = ImageStore(config.state_dir / "images", quota_bytes=config.image_quota)
        # The pod manager starts the launcher (a fresh exec) before any gRPC thread exists.
        networks = (
            PodNetworks(config.state_dir, list(config.networks), config.default_network)
            if config.networks else None
        )  # fmt: skip
        self.manager = PodManager(
            config.state_dir, self.store, cgroup_parent=config.cgroup_parent, events=self.events,
            networks=networks, host_policy=config.host_policy(), pids_limit=config.pids_limit,
        )  # fmt: skip
        self.long_calls = limits.LongCalls()
        self.workers = WorkerPool(WORKERS, WORKER_IDLE_SECONDS, name="rpc")
        self.server = grpc.server(
            self.workers,
            # auth first: a caller without a role never takes a slot of the long calls
            interceptors=[
                auth.AuthInterceptor(self.tls_files, insecure_tcp=config.insecure),
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
        return auth.TLSFiles(self.config.tls_dir or self.config.state_dir / "tls")

    def _register(self) -> None:
        rpc.add_PodsServicer_to_server(PodsService(self.manager), self.server)
        rpc.add_ImagesServicer_to_server(ImagesService(self.store, self.events), self.server)
        rpc.add_HostServicer_to_server(
            HostService(self.host, self.manager, self.store, self.events), self.server
        )
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [pb.DESCRIPTOR.services_by_name[s].full_name for s in ("Pods", "Images", "Host")]
        reflection.enable_server_reflection(
            [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )

    def _bind(self) -> list[str]:
        endpoints = []
        path = self.config.socket_path
        path.unlink(missing_ok=True)
        old_umask = os.umask(0o077)  # the socket is born owner-only: no window for others
        try:
            self.server.add_insecure_port(f"unix://{path}")
        finally:
            os.umask(old_umask)
        endpoints.append(f"unix://{path}")
        if self.config.listen:
            endpoints.append(self._bind_tcp(self.config.listen))
        return endpoints

    def _bind_tcp(self, address: str) -> str:
        if self.config.insecure:
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
        self.events.emit(
            "host", "api-ready", "", socket.gethostname(), endpoints=" ".join(self.endpoints)
        )
        log.info("serving on %s", ", ".join(self.endpoints))

    def stop(self, grace: float = 5.0) -> None:
        """Stop serving. Pods keep running; a new daemon re-adopts them. Each step runs
        whatever the one before it raised: a stop always ends."""
        steps = (self.health.enter_graceful_shutdown, self.events.close,
                 lambda: self.server.stop(grace).wait(grace + 1), lambda: self.workers.shutdown(wait=False),
                 self.manager.close, self.store.close)  # fmt: skip
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
