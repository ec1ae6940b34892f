"""The core of kurmad, built once from one ``Settings`` for ``kurmad serve`` and ``kurmad boot``
alike: the image store, the pod manager, the events, the pod networks and the host policy.

Its faces (the gRPC API, api/server.py) and the boot's own work (host/tasks.py: the images the
boot config lists, the system pods it keeps) go in through the same doors, ``import_image`` and
``create_pod``: nothing skips a check or an event (DESIGN.md: the API is the only door).

It sits below host/ and api/, either of which builds it, and above pods/, images/ and net/; it
knows neither host/ nor api/. ``kurmad serve`` builds it from its flags (__main__.py), ``kurmad
boot`` from the typed boot config (host/tasks.py)."""

from __future__ import annotations

import io
import os
import tarfile
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from kurmad.appc import PodManifest
from kurmad.images.extract import DEFAULT_POLICY, STRICT_POLICY
from kurmad.images.oci.archives import ArchiveError, detect, open_archive
from kurmad.images.oci.documents import Platform, host
from kurmad.images.oci.pull import (
    ArchiveSource,
    Progress,
    PullError,
    RegistrySource,
    find_by_reference,
    store_image,
)
from kurmad.images.oci.reference import (
    Reference,
    ReferenceError,
    Transport,
    parse_image_ref,
    parse_reference,
)
from kurmad.images.oci.registry import (
    Credentials,
    RegistryClient,
    RegistryConfig,
    RegistryError,
    RegistryNotFound,
    load_docker_auths,
)
from kurmad.images.oci.settings import RegistrySettings
from kurmad.images.store import TMP, ImageRecord, ImageStore, ImportResult
from kurmad.images.streams import Compression, FormatError, detect_compression
from kurmad.linux.files import read_json, write_json_atomic
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
    registries: RegistrySettings = field(default_factory=lambda: RegistrySettings())

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
        self.registries = Registries(settings.state_dir, settings.registries)

    def import_image(self, source: BinaryIO, name: str = "") -> ImportResult:
        """Import an ACI, an OCI layout (as a tar) or a docker-archive, told apart by content;
        ``name`` is what an OCI archive's image is stored as (or which of its images to take).
        A new image is announced (``imported``)."""
        reader: Any = source if hasattr(source, "peek") else io.BufferedReader(source)
        head = reader.peek(tarfile.BLOCKSIZE)[: tarfile.BLOCKSIZE]
        if _looks_like_aci(head):
            result = self.store.import_stream(reader)
        else:
            result = self._import_spooled(reader, name)
        if result.created:
            self.events.emit("image", "imported", result.record.id, result.record.name)
        return result

    def _import_spooled(self, source: BinaryIO, name: str) -> ImportResult:
        spool = self.store.root / TMP / f"upload-{uuid.uuid4().hex}"
        try:
            with open(spool, "wb") as sink:
                while chunk := source.read(1 << 20):
                    sink.write(chunk)
            if detect(spool) is None:
                return self.store.import_file(spool)  # an ACI after all, or its error
            with open_archive(spool) as archive:
                chosen, reference = _choose_in_archive(archive.names(), name)
                return store_image(self.store, ArchiveSource(archive, host(), chosen), reference)
        except ArchiveError as err:  # said of the spool: say it of what the caller sent
            raise ArchiveError(str(err).replace(str(spool), "the archive")) from None
        finally:
            spool.unlink(missing_ok=True)

    def find_image(self, text: str) -> ImageRecord:
        """A stored image by OCI reference, ID (or unique prefix) or appc name[:version]."""
        if text.startswith("appc://"):
            return self.store.lookup(text.removeprefix("appc://"))
        found = find_by_reference(self.store, text)
        return found or self.store.lookup(text.removeprefix("docker://"))

    def pull(
        self, text: str, platform: str = "", progress: Progress = lambda p: None
    ) -> ImportResult:
        """Pull an OCI image by reference (a short name through the search registries) into
        the store; a new image is announced (``pulled``)."""
        wanted = Platform.parse(platform) if platform else host()
        errors: list[RegistryError] = []
        for reference in self.registries.candidates(text):
            try:
                source = RegistrySource(
                    self.registries.client(), reference.with_default_tag(), wanted
                )
                result = store_image(self.store, source, reference.with_default_tag(), progress)
            except RegistryError as err:
                errors.append(err)
                continue
            if result.created:
                self.events.emit("image", "pulled", result.record.id, str(reference))
            return result
        if len(errors) == 1:
            raise errors[0]
        kind = (
            RegistryNotFound
            if all(isinstance(e, RegistryNotFound) for e in errors)
            else RegistryError
        )
        raise kind("; ".join(map(str, errors)))

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


def _looks_like_aci(head: bytes) -> bool:
    """An ACI is often compressed and begins with its manifest or rootfs; an OCI or Docker
    archive is a plain tar that begins otherwise. What this cannot tell is spooled and told
    by its whole content."""
    try:
        if detect_compression(head) is not Compression.NONE:
            return True
    except FormatError:
        return True  # no archive of any kind: the ACI reader says what is wrong with it
    first = head[:100].split(b"\0", 1)[0].decode(errors="replace").removeprefix("./")
    return first in ("manifest", "rootfs", "rootfs/")


def _choose_in_archive(names: list[str], name: str) -> tuple[str | None, Reference | None]:
    """Which of an archive's images ``name`` means (one of its names, or a reference whose
    tag is one), and the reference to store it as (None: the archive's own name)."""
    if not name or (name in names and "/" not in name):
        return (name or None), None
    try:
        reference = parse_reference(name)
    except ReferenceError as err:
        raise PullError(f"--name: {err}") from None
    if name in names:
        return name, reference
    return (reference.tag if reference.tag in names else None), reference


# The daemon's own registry credentials, kept in the state as a Docker config.json (0600).
LOGINS = "registries/auth.json"


class Registries:
    """The registry client built from the settings and the logins kurmad keeps; rebuilt when
    a login changes them."""

    def __init__(self, state_dir: Path, settings: RegistrySettings) -> None:
        self.settings = settings
        self.path = state_dir / LOGINS
        self.path.parent.mkdir(mode=0o700, exist_ok=True)
        self.certs_dir = state_dir / "certs.d"
        self._lock = threading.Lock()
        self._client = self._new_client()

    def client(self) -> RegistryClient:
        with self._lock:
            return self._client

    def candidates(self, text: str) -> list[Reference]:
        """The references to try for ``text``: itself, or a short name in each search registry."""
        ref = parse_image_ref(text)
        if ref.transport is Transport.APPC:
            raise PullError(
                f"{text}: appc images are fetched by discovery, not pulled from a registry"
            )
        if ref.oci is None:
            parse_reference(ref.text)  # raises the grammar's own error
            raise ReferenceError(f"{text!r} is not an image reference")
        if not ref.oci.is_short:
            return [ref.oci]
        if not self.settings.search:
            raise PullError(f"{text} is a short name and no search registry is configured; "
                            f"name the registry (docker.io/{ref.oci.path}, say)")  # fmt: skip
        return [ref.oci.in_registry(registry) for registry in self.settings.search]

    def login(self, registry: str, credentials: Credentials) -> None:
        """Check ``credentials`` against ``registry``, then keep them."""
        registry = parse_reference(f"{registry}/x").registry or registry
        trial = self._new_client({registry: credentials})
        trial.check_login(registry)
        with self._lock:
            auths = self._stored()
            auths[registry] = {"username": credentials.username, "password": credentials.password}
            write_json_atomic(self.path, {"auths": auths}, mode=0o600)
            self._client = self._new_client()

    def logout(self, registry: str) -> bool:
        with self._lock:
            auths = self._stored()
            removed = auths.pop(registry, None) is not None
            write_json_atomic(self.path, {"auths": auths}, mode=0o600)
            self._client = self._new_client()
        return removed

    def _stored(self) -> dict[str, dict[str, str]]:
        try:
            return dict(read_json(self.path).get("auths", {}))
        except FileNotFoundError:
            return {}

    def _new_client(self, extra: Mapping[str, Credentials] | None = None) -> RegistryClient:
        settings = self.settings
        credentials: dict[str, Credentials] = {}
        if settings.docker_config is not None and settings.docker_config.exists():
            credentials.update(load_docker_auths(settings.docker_config))
        credentials.update(settings.credentials)
        if self.path.exists():
            credentials.update(load_docker_auths(self.path))
        credentials.update(extra or {})
        config = RegistryConfig(credentials=credentials, mirrors=settings.mirrors,
                                insecure=settings.insecure,
                                certs_dirs=(*settings.certs_dirs, self.certs_dir))  # fmt: skip
        return RegistryClient(config)
