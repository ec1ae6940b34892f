"""The core of kurmad, built once from one ``Settings`` for ``kurmad serve`` and ``kurmad boot``
alike: the image store, the pod manager, the events, the pod networks and the host policy.

Its faces (the gRPC API, api/server.py) and the boot's own work (host/tasks.py: the images the
boot config lists, the system pods it keeps) go in through the same doors, ``import_image`` and
``create_pod``: nothing skips a check or an event (DESIGN.md: the API is the only door).

It sits below host/ and api/, either of which builds it, and above pods/, images/ and net/; it
knows neither host/ nor api/. ``kurmad serve`` builds it from its flags (__main__.py), ``kurmad
boot`` from the typed boot config (host/tasks.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from kurmad.appc import PodManifest
from kurmad.images.extract import DEFAULT_POLICY, STRICT_POLICY
from kurmad.images.store import ImageStore, ImportResult
from kurmad.net.config import NetworkSpec
from kurmad.net.pods import PodNetworks
from kurmad.pods.builder import RunRequest, manifest_for_run
from kurmad.pods.events import EventBus
from kurmad.pods.manager import PodManager
from kurmad.pods.model import Pod
from kurmad.pods.privileges import HostPolicy
from kurmad.runtime.spec import DEFAULT_PIDS_LIMIT
from kurmad.state import prepare_state

SOCKET_NAME = "kurmad.sock"


@dataclass(frozen=True)
class Settings:
    """Everything the core and its faces are built from. New settings go here, and into both
    places that make one: ``kurmad serve``'s flags and the boot config."""

    state_dir: Path
    listen: str | None = None  # host:port for TCP
    insecure: bool = False  # TCP without TLS (development only)
    socket: Path | None = None  # default: <state-dir>/kurmad.sock
    cgroup_parent: str = "kurmad"
    image_quota: int | None = None
    tls_dir: Path | None = None  # default: <state-dir>/tls (made on first use)
    networks: tuple[NetworkSpec, ...] = ()  # pod networks (net/config.py); none: pods get lo only
    default_network: str | None = None  # default: the first
    host_volumes: tuple[Path, ...] = ()  # host paths below which any operator may mount volumes
    pids_limit: int | None = DEFAULT_PIDS_LIMIT  # processes per pod
    strict_images: bool = False  # refuse setuid files and device nodes in images (extract.py)

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


class Face(Protocol):
    """A way in to the core from outside (the gRPC API): started once the core is built; its
    stop closes the core."""

    endpoints: list[str]

    def start(self) -> None: ...

    def stop(self, grace: float = 5.0) -> None: ...


class Core:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        prepare_state(settings.state_dir)  # stamped or migrated before any room opens its part
        os.chmod(settings.state_dir, 0o700)  # one made earlier, by hand or by an older kurmad
        self.events = EventBus()
        self.store = ImageStore(settings.state_dir / "images", quota_bytes=settings.image_quota,
                                policy=STRICT_POLICY if settings.strict_images else DEFAULT_POLICY)  # fmt: skip
        networks = (
            PodNetworks(settings.state_dir, settings.networks, settings.default_network)
            if settings.networks else None
        )  # fmt: skip
        # The pod manager starts the launcher (a fresh exec) before any gRPC thread exists. It
        # holds the pod networks and the host policy (manager.host_policy, with the state in it).
        self.manager = PodManager(
            settings.state_dir, self.store, cgroup_parent=settings.cgroup_parent,
            events=self.events, networks=networks, host_policy=settings.host_policy(),
            pids_limit=settings.pids_limit,
        )  # fmt: skip

    def import_image(self, source: BinaryIO) -> ImportResult:
        """Import an ACI into the store; a new image is announced (``imported``)."""
        result = self.store.import_stream(source)
        if result.created:
            self.events.emit("image", "imported", result.record.id, result.record.name)
        return result

    def create_pod(
        self, spec: PodManifest | RunRequest, name: str | None, *, admin: bool, start: bool,
        wait: bool = True,
    ) -> Pod:  # fmt: skip
        """A pod from a manifest or from a run request (an image and what ``kurmactl run``
        adds), checked against the store and the host policy: what weakens confinement needs
        ``admin``. ``start``: started at once (``wait``: until its apps run)."""
        manifest = spec if isinstance(spec, PodManifest) else manifest_for_run(self.store, spec)
        pod = self.manager.create(manifest, name, allow_privileged=admin, start_next=start)
        return self.manager.start(pod.uuid, wait=wait) if start else pod

    def close(self) -> None:
        """Let go of the pods (they keep running), the launcher and the store."""
        try:
            self.manager.close()
        finally:
            self.store.close()
