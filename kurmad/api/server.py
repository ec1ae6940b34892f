"""Wiring the daemon: the image store, the pod manager and the host behind one gRPC server,
on a local Unix socket and, when asked, on TCP with mutual TLS."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
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

from . import auth
from .services import HostService, ImagesService, PodsService
from .v1 import kurma_pb2 as pb
from .v1 import kurma_pb2_grpc as rpc

log = logging.getLogger("kurmad")
SOCKET_NAME = "kurmad.sock"
# Streams (logs -f, events, exec) each hold a worker thread for as long as they run.
WORKERS = 64
_MESSAGE_LIMIT = 64 * 2**20
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
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="rpc"),
            interceptors=[auth.AuthInterceptor(self.tls_files, insecure_tcp=config.insecure)],
            options=[
                ("grpc.max_receive_message_length", _MESSAGE_LIMIT),
                ("grpc.max_send_message_length", _MESSAGE_LIMIT),
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
                 lambda: self.server.stop(grace).wait(grace + 1), self.manager.close, self.store.close)  # fmt: skip
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
