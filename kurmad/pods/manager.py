"""The pod manager: create, start, stop, remove, wait, logs and enter; every state change
written to disk atomically (``pods/<uuid>/pod.json``) and recovered after a restart.

Lifecycle: NEW -create-> STARTING -start-> RUNNING -> EXITED (the apps ended by themselves),
STOPPED (stopped on request) or FAILED (an app could not start, or setup failed). The pod init
(runtime/podinit.py) reports the apps' states in ``status.json``; the manager watches the pod
init with a pidfd and settles the pod's final state when it ends."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import threading
import time
import uuid as uuid_module
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kurmad.appc import ACName, PodManifest, ValidationError
from kurmad.appc.volumes import KIND_EMPTY
from kurmad.images.store import ImageNotFound, ImageStore
from kurmad.linux.cgroups import DEFAULT_DEVICES, Cgroup, CgroupDriver, CgroupError, DeviceRule
from kurmad.linux.files import read_json, remove_tree, write_json_atomic
from kurmad.linux.proc import child_with_namespace_pid, start_time
from kurmad.net import netns
from kurmad.net.pods import NetworkError, PodNetworks, first_address
from kurmad.runtime.launcher import Entered, Launcher, LauncherError
from kurmad.runtime.logs import LogRecord, read_logs
from kurmad.runtime.spec import (
    DEFAULT_PIDS_LIMIT,
    SPEC_FILE,
    STATUS_FILE,
    STOP_FILE,
    AppSpec,
    Limits,
    PodSpec,
)

from .builder import ResolvedPod, app_spec, empty_volume_dir, held_images, resolve_pod
from .events import EventBus
from .model import (
    AppStatus,
    InvalidPod,
    Pod,
    PodConflict,
    PodError,
    PodExists,
    PodNotFound,
    PodState,
    PodStorageError,
)
from .privileges import HostPolicy, check_pod
from .watcher import PidWatcher

POD_FILE = "pod.json"
QUARANTINE = ".quarantine"  # pods whose record could not be read, kept aside for a person
DEFAULT_GRACE = 10.0
SAVE_RETRY_SECONDS = 1.0
# how long start() waits for the apps to be running (pre-start handlers can take a while)
START_TIMEOUT = 30.0
log = logging.getLogger("kurmad")
NETNS_FILE = "netns"  # the pod's network namespace, bind-mounted, while it is wired
_HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"


@dataclass
class _Record:
    """A pod as kept on disk (pod.json)."""

    uuid: str
    name: str
    created_at: float
    manifest: dict[str, Any]
    state: PodState = PodState.NEW
    reason: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    pid: int | None = None  # the pod init, in the host's PID namespace
    pid_start: int | None = None  # its start time, to tell it from a reused PID
    stop_requested: bool = False
    apps: list[dict[str, Any]] = field(default_factory=list)
    isolators: dict[str, Any] = field(default_factory=dict)
    network: dict[str, Any] | None = None  # its networks, addresses and ports (net/pods.py)
    # Made by a request that also starts it: if kurmad stops before the pod init runs, the
    # pod is rolled back at the next start (the caller never heard it was made).
    rollback: bool = False

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")} | {
            "state": self.state.value
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _Record:
        """A record from pod.json, every part checked (ValueError, KeyError or TypeError for
        one that is not), so that a record in memory can always be shown."""
        record = cls(**{**data, "state": PodState(data["state"])})
        for app in record.apps:
            AppStatus(**app)
        _ = record._parsed_manifest
        return record

    @functools.cached_property
    def _parsed_manifest(self) -> PodManifest:
        return PodManifest.from_json(self.manifest)

    @functools.cached_property
    def _manifest_json(self) -> str:
        return json.dumps(self.manifest)


class PodManager:
    def __init__(
        self,
        state_dir: Path,
        store: ImageStore,
        *,
        cgroup_parent: str = "kurmad",
        resolv_conf: Path = Path("/etc/resolv.conf"),
        launcher: Launcher | None = None,
        events: EventBus | None = None,
        networks: PodNetworks | None = None,
        host_policy: HostPolicy | None = None,
        pids_limit: int | None = DEFAULT_PIDS_LIMIT,
    ) -> None:
        self.root = state_dir / "pods"
        self.events = events or EventBus()
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)  # pod records and logs hold secrets (environments)
        self.store = store
        policy = host_policy or HostPolicy()
        self.host_policy = replace(policy, protected=(str(state_dir.resolve()), *policy.protected))
        self._pids_limit = pids_limit
        self.quarantined: list[str] = []  # pod directories that could not be loaded, and why
        self._unsaved: set[str] = set()  # pods whose last change is not on disk yet
        self._cgroups = CgroupDriver(cgroup_parent)
        self._cgroup_parent = cgroup_parent
        self._resolv_conf = resolv_conf
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._records: dict[str, _Record] = {}
        self._resolved: dict[str, ResolvedPod] = {}  # from create, so start need not resolve again
        self._launcher = launcher or Launcher()
        self._watcher = PidWatcher(self._on_pod_init_exit)
        self.networks = networks
        self._recover()
        for line in self.reconcile_networks():
            log.info("networks: %s", line)
        self._closing = threading.Event()
        self._saver = threading.Thread(
            target=self._save_until_closed, name="pod-saver", daemon=True
        )
        self._saver.start()

    def close(self) -> None:
        """Let go of the pods (they keep running) and of the launcher."""
        self._closing.set()
        self._watcher.close()
        self._launcher.close()
        self._save_unsaved()

    # -- lookup ---------------------------------------------------------------------------------

    def _dir(self, pod_uuid: str) -> Path:
        return self.root / pod_uuid

    def _find(self, ref: str) -> _Record:
        with self._lock:
            if ref in self._records:
                return self._records[ref]
            by_name = [r for r in self._records.values() if r.name == ref]
            if by_name:
                return by_name[0]
            by_prefix = [
                r for r in self._records.values() if ref and r.uuid.startswith(ref.lower())
            ]
        if len(by_prefix) == 1:
            return by_prefix[0]
        if len(by_prefix) > 1:
            raise PodNotFound(f"{ref!r} matches {len(by_prefix)} pods; give more of the UUID")
        raise PodNotFound(f"no pod {ref!r}")

    def get(self, ref: str) -> Pod:
        return self._view(self._find(ref))

    def pods(self) -> list[Pod]:
        with self._lock:
            records = sorted(self._records.values(), key=lambda r: r.created_at)
        return [self._view(r) for r in records]

    def pod_order(self) -> list[tuple[float, str]]:
        """(created_at, uuid) of every pod, oldest first: what a listing pages by, without
        building a view of pods that are not on the page."""
        with self._lock:
            return sorted((r.created_at, r.uuid) for r in self._records.values())

    def find(self, pod_uuid: str) -> Pod | None:
        """The pod of exactly this UUID, if it still exists."""
        with self._lock:
            record = self._records.get(pod_uuid)
        return None if record is None else self._view(record)

    def _refresh(self, record: _Record) -> dict[str, Any]:
        """Take in what the pod init reports of a running pod: STARTING becomes RUNNING once
        every app has exec'd."""
        if not record.state.active:
            return {}
        live = self._read_status(record.uuid)
        with self._lock:
            became_running = record.state == PodState.STARTING and live.get("state") in (
                "RUNNING",
                "STOPPING",
            )
            if became_running:
                record.state = PodState.RUNNING
        if became_running:
            self.events.emit("pod", "running", record.uuid, record.name)
        return live

    def _view(self, record: _Record) -> Pod:
        apps = [AppStatus(**a) for a in record.apps]
        live = self._refresh(record)
        if live:
            for app in apps:
                app.__dict__.update(
                    {
                        k: v
                        for k, v in live.get("apps", {}).get(app.name, {}).items()
                        if k in app.__dict__
                    }
                )
        return Pod(
            uuid=record.uuid, name=record.name, state=record.state,
            manifest=record._parsed_manifest, manifest_json=record._manifest_json,
            created_at=record.created_at, apps=apps,
            reason=record.reason, started_at=record.started_at, finished_at=record.finished_at,
            stopping=record.stop_requested and record.state.active, network=record.network,
        )  # fmt: skip

    def cgroup(self, ref: str, app: str | None = None) -> Cgroup:
        """The pod's cgroup (with ``app``: that app's leaf), for accounting and inspection."""
        record = self._find(ref)
        relative = record.uuid if app is None else f"{record.uuid}/{self._app_name(record, app)}"
        return self._cgroups.cgroup(relative)

    def _read_status(self, pod_uuid: str) -> dict[str, Any]:
        try:
            return json.loads((self._dir(pod_uuid) / STATUS_FILE).read_bytes())
        except (OSError, ValueError):
            return {}

    # -- create ---------------------------------------------------------------------------------

    def create(
        self, manifest: PodManifest, name: str | None = None, *, allow_privileged: bool = False,
        start_next: bool = False,
    ) -> Pod:  # fmt: skip
        """Validate ``manifest`` against the store (a template is reified) and record a NEW pod.
        Its images are held until the pod is removed. What weakens confinement needs
        ``allow_privileged`` (the admin role; pods/privileges.py). ``start_next``: the caller
        starts the pod at once, and a pod kurmad did not get to start is rolled back."""
        resolved = resolve_pod(manifest, self.store)
        check_pod(resolved, self.host_policy, admin=allow_privileged)
        pod_uuid = str(uuid_module.uuid4())
        name = self._check_name(name or f"{resolved.apps[0].runtime.name}-{pod_uuid[:8]}")
        held = held_images(resolved, self.store)
        record = _Record(
            uuid=pod_uuid, name=name, created_at=time.time(), manifest=resolved.manifest.to_json(),
            apps=[AppStatus(a.runtime.name, a.image.id, isolators=a.policy.report.to_json()).to_json() for a in resolved.apps],
            isolators=resolved.report.to_json(), rollback=start_next,
        )  # fmt: skip
        _check_loadable(record)
        with self._lock:
            if any(r.name == name for r in self._records.values()):
                raise PodExists(f"a pod named {name} exists already")
            record.network = self._plan_network(pod_uuid, resolved)
            try:
                self.store.hold(self._holder(record), held)
            except ImageNotFound as err:
                self._release_network(record)
                raise InvalidPod(f"an image was deleted while the pod was created: {err}") from None
            self._record_new(record)
            self._resolved[pod_uuid] = resolved
        self.events.emit("pod", "created", pod_uuid, name)
        return self._view(record)

    def _record_new(self, record: _Record) -> None:
        """The pod's directory and first pod.json, or nothing at all (and its holds given
        back) when the disk refuses them."""
        try:
            self._dir(record.uuid).mkdir(mode=0o700)
            self._write_record(record)
        except OSError as err:
            self.store.release(self._holder(record))
            self._release_network(record)
            with contextlib.suppress(OSError):
                remove_tree(self._dir(record.uuid))
            raise PodStorageError(f"the pod could not be saved: {err.strerror or err}") from None
        self._records[record.uuid] = record

    def _plan_network(self, pod_uuid: str, resolved: ResolvedPod) -> dict[str, Any] | None:
        """Lease the pod's addresses and reserve its host ports now, so that a full pool or a
        taken port is refused at create time."""
        if resolved.host_network:
            if resolved.ports:
                raise InvalidPod("ports: a pod on the host's network cannot publish ports")
            return None
        if self.networks is None:
            if resolved.ports or resolved.networks not in (None, "none"):
                raise InvalidPod(
                    "networks: this kurmad has no pod networks configured (--network-config)"
                )
            return None
        try:
            names = self.networks.selection(resolved.networks)
            return self.networks.plan(pod_uuid, names, resolved.ports)
        except NetworkError as err:
            raise InvalidPod(str(err)) from None

    def _release_network(self, record: _Record) -> None:
        if self.networks is not None and record.network is not None:
            self.networks.unwire(record.uuid, self._dir(record.uuid) / NETNS_FILE, record.network)
            self.networks.release(record.uuid)

    def reconcile_networks(self) -> list[str]:
        """Leases, veths and rules of pods that are gone go too (after a crash, say)."""
        if self.networks is None:
            return []
        with self._lock:
            live = {r.uuid: r.network or {} for r in self._records.values()}
        return self.networks.reconcile(live)

    def _check_name(self, name: str) -> str:
        try:
            ACName(name)
        except ValidationError as err:
            raise InvalidPod(f"pod name: {err.rule}") from None
        if len(name) > 63:
            raise InvalidPod(f"pod name {name!r} is longer than 63 characters (it is the hostname)")
        return name

    @staticmethod
    def _holder(record: _Record) -> str:
        return f"pod {record.name} ({record.uuid[:8]})"

    def _write_record(self, record: _Record) -> None:
        write_json_atomic(self._dir(record.uuid) / POD_FILE, record.to_json(), mode=0o600)

    def _persist(self, record: _Record) -> None:
        """Write the pod's record; a write the disk refuses (full, read-only) is reported once
        and retried in the background, never raised: the pod's state in memory is the truth
        meanwhile, and the thread that noticed the change (the exit watcher, say) goes on."""
        try:
            self._write_record(record)
        except OSError as err:
            with self._lock:
                first = not self._unsaved
                self._unsaved.add(record.uuid)
            if first:
                log.error("cannot save pod %s: %s (retrying)", record.name, err.strerror or err)
                self.events.emit("host", "save-failed", record.uuid, record.name,
                                 reason=str(err.strerror or err))  # fmt: skip
            return
        with self._lock:
            self._unsaved.discard(record.uuid)

    def _save_until_closed(self) -> None:
        while not self._closing.wait(SAVE_RETRY_SECONDS):
            try:
                self._save_unsaved()
            except Exception:  # this thread must outlive anything one pod can throw
                log.exception("saving pods")

    def _save_unsaved(self) -> None:
        with self._lock:
            pending = [self._records[u] for u in self._unsaved if u in self._records]
            self._unsaved &= set(self._records)
        for record in pending:
            with self._lock:
                self._persist(record)
        if pending and not self._unsaved:
            log.info("pods saved again after a failed write")

    # -- start ----------------------------------------------------------------------------------

    def start(self, ref: str, wait: bool = True) -> Pod:
        record = self._find(ref)
        with self._lock:
            if record.state != PodState.NEW:
                raise PodConflict(
                    f"pod {record.name} is {record.state.value}; only a NEW pod can start"
                )
            record.state = PodState.STARTING
            record.started_at = time.time()
        namespace = self._wire(record)
        try:
            spec = self._prepare(record)
            pid = self._live_launcher().start_pod(
                self._dir(record.uuid), spec.host_network, namespace
            )
        except (PodError, LauncherError, CgroupError, OSError) as err:
            self._unwire(record)
            self._settle(record, PodState.FAILED, f"{err}")
            raise InvalidPod(f"pod {record.name} failed to start: {err}") from None
        with self._lock:
            record.pid, record.pid_start = pid, start_time(pid)
            record.rollback = False
            self._persist(record)
        self.events.emit("pod", "started", record.uuid, record.name)
        if not self._watcher.watch(pid, record.uuid):
            self._on_pod_init_exit(record.uuid)
        del spec
        if wait:
            self._await_started(record, timeout=START_TIMEOUT)
        return self._view(record)

    def _wire(self, record: _Record) -> str | None:
        """The pod's network namespace, wired to its networks (None: the launcher makes a
        bare one, or the pod shares the host's)."""
        plan = record.network
        if self.networks is None or not plan or not plan.get("networks"):
            return None
        namespace = self._dir(record.uuid) / NETNS_FILE
        try:
            self.networks.wire(record.uuid, namespace, plan)
        except NetworkError as err:
            self._settle(record, PodState.FAILED, str(err))
            raise InvalidPod(f"pod {record.name} failed to start: {err}") from None
        with self._lock:
            self._persist(record)
        return str(namespace)

    def _unwire(self, record: _Record) -> None:
        if self.networks is not None and record.network:
            self.networks.unwire(record.uuid, self._dir(record.uuid) / NETNS_FILE, record.network)

    def _live_launcher(self) -> Launcher:
        """The launcher, started again if it died (its pods live on regardless)."""
        with self._lock:
            if not self._launcher.alive:
                self._launcher.close()
                self._launcher = Launcher()
            return self._launcher

    def _await_started(self, record: _Record, timeout: float) -> None:
        """Wait until the pod init says every app runs, or the pod has ended."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while record.state == PodState.STARTING and time.monotonic() < deadline:
                self._changed.wait(0.002)  # the pod init reports through a file; poll it briefly
                self._refresh(record)

    def _prepare(self, record: _Record) -> PodSpec:
        """Everything the pod init needs, on disk: runtime.json, cgroups, volumes, resolv.conf."""
        pod_dir = self._dir(record.uuid)
        resolved = self._resolved.pop(record.uuid, None) or resolve_pod(
            PodManifest.from_json(record.manifest), self.store
        )
        socket = self.host_policy.api_socket
        apps = [app_spec(app, self.store, pod_dir, socket) for app in resolved.apps]
        self._make_empty_volumes(resolved, pod_dir)
        resolv = _read_or_empty(self._resolv_conf)
        (pod_dir / "resolv.conf").write_bytes(
            resolv if resolved.host_network else _without_loopback(resolv)
        )
        spec = PodSpec(
            uuid=record.uuid, name=record.name, hostname=record.name, apps=apps,
            hosts=_hosts(record), resolv_conf="", sysctls=resolved.sysctls,
            limits=resolved.limits, cgroup_procs=self._make_cgroups(record.uuid, resolved.limits, apps),
            host_network=resolved.host_network,
        )  # fmt: skip
        write_json_atomic(pod_dir / SPEC_FILE, spec.to_json())
        return spec

    def _make_cgroups(
        self, pod_uuid: str, limits: Limits, apps: list[AppSpec]
    ) -> dict[str, list[str]]:
        pod = self._cgroups.create(pod_uuid)
        _apply_limits(pod, limits)
        if self._pids_limit is not None:
            pod.set_pids_limit(self._pids_limit)
        # The pod's list holds every app's devices, and is set before its leaves exist: a v1
        # child starts from its parent's list, and a v2 pod's program bounds every leaf. A leaf
        # whose own list is narrower (an app given fewer devices than another) narrows it.
        union = frozenset([*DEFAULT_DEVICES, *(r for app in apps for r in _device_rules(app))])
        pod.set_devices(sorted(union, key=DeviceRule.to_text))
        procs = {"init": self._leaf(pod, "init", Limits(), union, [])}
        for app in apps:
            procs[app.name] = self._leaf(pod, app.name, app.limits, union, _device_rules(app))
        return procs

    def _leaf(self, pod: Cgroup, name: str, limits: Limits, pods_devices: frozenset[DeviceRule],
              devices: list[DeviceRule]) -> list[str]:  # fmt: skip
        leaf = self._cgroups.create(f"{pod.relative}/{name}")
        _apply_limits(leaf, limits)
        own = frozenset([*DEFAULT_DEVICES, *devices])
        if own != pods_devices:
            leaf.set_devices(sorted(own, key=DeviceRule.to_text))
        return [str(d / "cgroup.procs") for d in leaf.all_dirs]

    @staticmethod
    def _make_empty_volumes(resolved: ResolvedPod, pod_dir: Path) -> None:
        for volume in {m.volume for app in resolved.apps for m in app.mounts}:
            if volume.kind != KIND_EMPTY:
                continue
            directory = empty_volume_dir(pod_dir, volume.name)
            directory.mkdir(parents=True, exist_ok=True)
            os.chmod(directory, volume.effective_mode)
            os.chown(directory, volume.uid or 0, volume.gid or 0)

    # -- the end of a pod -----------------------------------------------------------------------------

    def _on_pod_init_exit(self, pod_uuid: str) -> None:
        with self._lock:
            record = self._records.get(pod_uuid)
            if record is None or record.state.terminal:
                return
        if record.pid is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(record.pid, os.WNOHANG)  # ours only if it was reparented to us
        status = self._read_status(pod_uuid)
        if status.get("final"):
            state, reason = PodState(status["state"]), status.get("reason")
        elif record.stop_requested:
            state, reason = PodState.STOPPED, "killed after the stop grace period"
        else:
            state, reason = (
                PodState.FAILED,
                status.get("reason") or "the pod init ended unexpectedly",
            )
        self._settle(record, state, reason, status.get("apps", {}))

    def _settle(
        self,
        record: _Record,
        state: PodState,
        reason: str | None,
        apps: dict[str, Any] | None = None,
    ) -> None:
        """Record the final state, wake whoever waits, then free the cgroups. Waiters may hear
        of the end before pod.json says it: the pod init's final status.json already does, and
        recovery reads it."""
        with self._lock:
            for app in record.apps:
                app.update({k: v for k, v in (apps or {}).get(app["name"], {}).items() if k in app})
                if app["state"] == "running":
                    app["state"] = "exited"
                    app["reason"] = app["reason"] or "ended with the pod"
            record.state, record.reason = state, reason
            record.finished_at = time.time()
            record.rollback = False
            self._changed.notify_all()
            self._persist(record)
        codes = {a["name"]: str(a.get("exit_code")) for a in record.apps}
        self.events.emit(
            "pod", state.value.lower(), record.uuid, record.name, reason=reason or "", **codes
        )
        self._remove_cgroup(record.uuid)

    def wait(self, ref: str, timeout: float | None = None) -> Pod:
        """Block until the pod is EXITED, STOPPED or FAILED (or ``timeout`` passes)."""
        record = self._find(ref)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while not record.state.terminal and record.state != PodState.NEW:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._changed.wait(remaining)
        return self._view(record)

    # -- stop and remove -----------------------------------------------------------------------------

    def stop(self, ref: str, grace: float = DEFAULT_GRACE) -> Pod:
        """SIGTERM the apps, SIGKILL what is left after ``grace`` seconds, run post-stop
        handlers. Stopping a pod that has ended changes nothing."""
        record = self._find(ref)
        with self._lock:
            if record.state == PodState.NEW:
                self._settle(record, PodState.STOPPED, "stopped before it started")
                return self._view(record)
            if record.state.terminal:
                return self._view(record)
            record.stop_requested = True
            self._persist(record)
            self._tell_grace(record, grace)
            pid = record.pid
        if pid is not None:
            self._signal_pod_init(record, signal.SIGTERM)
        if not self.wait(record.uuid, timeout=grace + 5).state.terminal:
            self._signal_pod_init(record, signal.SIGKILL)  # the whole PID namespace goes with it
            self.wait(record.uuid, timeout=5)
        return self._view(record)

    def _tell_grace(self, record: _Record, grace: float) -> None:
        """The pod init reads the grace period of a stop from stop.json; when the disk will not
        take it, the pod's own grace applies, and the SIGKILL after ``grace`` still comes."""
        try:
            write_json_atomic(self._dir(record.uuid) / STOP_FILE, {"grace": grace})
        except OSError as err:
            log.warning("pod %s: stop grace not passed on: %s", record.name, err.strerror or err)

    def _signal_pod_init(self, record: _Record, signum: int) -> None:
        if record.pid is not None and start_time(record.pid) == record.pid_start:
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.pid, signum)

    def remove(self, ref: str, force: bool = False) -> None:
        """Forget a pod that has ended: its files, logs and volumes go, its images are free."""
        record = self._find(ref)
        if record.state.active:
            if not force:
                raise PodConflict(
                    f"pod {record.name} is {record.state.value}; stop it first, or force"
                )
            self.stop(record.uuid, grace=0)
        with self._lock:
            self._records.pop(record.uuid, None)
            self._resolved.pop(record.uuid, None)
            self.store.release(self._holder(record))
        self._release_network(record)
        self._remove_cgroup(record.uuid)
        doomed = self.root / f".removing-{record.uuid}"
        os.rename(self._dir(record.uuid), doomed)
        remove_tree(doomed)
        self.events.emit("pod", "removed", record.uuid, record.name)

    # -- logs and enter -----------------------------------------------------------------------------

    def logs(
        self, ref: str, app: str | None = None, follow: bool = False,
        still_wanted: Callable[[], bool] | None = None,
    ) -> Iterator[LogRecord]:  # fmt: skip
        """An app's log records; with ``follow``, until the pod ends or ``still_wanted()``
        says the reader has gone."""
        record = self._find(ref)
        name = self._app_name(record, app)
        directory = self._dir(record.uuid) / "apps" / name

        def pause(seconds: float) -> None:
            with self._changed:
                if record.state.active:
                    self._changed.wait(seconds)  # woken at once when the pod ends

        return read_logs(directory, follow, still_running=lambda: record.state.active,
                         pause=pause, still_wanted=still_wanted)  # fmt: skip

    def _app_name(self, record: _Record, app: str | None) -> str:
        names = [a["name"] for a in record.apps]
        if app is None:
            if len(names) > 1:
                raise InvalidPod(f"pod {record.name} has apps {', '.join(names)}; name one")
            return names[0]
        if app not in names:
            raise PodNotFound(f"pod {record.name} has no app {app!r} (it has {', '.join(names)})")
        return app

    def enter(
        self, ref: str, app: str | None, argv: list[str], *, stdio: list[int] | None,
        env: dict[str, str] | None = None, window: tuple[int, int] | None = None,
    ) -> Entered:  # fmt: skip
        """Start ``argv`` inside a running app, on ``stdio`` or (None) on a new terminal of
        the pod; ``wait_enter(result.pid)`` gives its exit code."""
        record = self._find(ref)
        name = self._app_name(record, app)
        if record.state != PodState.RUNNING:
            raise PodConflict(
                f"pod {record.name} is {record.state.value}; only a RUNNING pod can be entered"
            )
        live = self._refresh(record).get("apps", {}).get(name, {})
        if live.get("state") != "running" or record.pid is None:
            raise PodConflict(f"app {name} of pod {record.name} is not running")
        target = child_with_namespace_pid(record.pid, int(live["pid"]))
        if target is None:
            raise PodConflict(f"app {name} of pod {record.name} is not running")
        spec = PodSpec.load(self._dir(record.uuid))
        app_spec_ = next(a for a in spec.apps if a.name == name)
        return self._live_launcher().enter(target, app_spec_, argv, env=env or {}, stdio=stdio,
                                    cgroup_procs=spec.cgroup_procs.get(name, []), window=window)  # fmt: skip

    def wait_enter(self, handle: int, timeout: float | None = None) -> int | None:
        """The exit code of an entered command (None if it has not ended within ``timeout``)."""
        status = self._launcher.wait(handle, timeout)
        return None if status is None else os.waitstatus_to_exitcode(status)

    # -- recovery --------------------------------------------------------------------------------------

    def _recover(self) -> None:
        """Load every pod from disk; re-adopt running ones, settle those that ended while no
        daemon watched, finish or roll back what a crash left half-made, and hold their
        images again. A record that cannot be read is quarantined, never lost or fatal."""
        for directory in sorted(self.root.iterdir()):
            if directory.name == QUARANTINE:
                self.quarantined += [f"{d.name}: quarantined earlier" for d in directory.iterdir()]
                continue
            if directory.name.startswith(".removing-") or not (directory / POD_FILE).exists():
                self._discard_leftovers(directory)  # a removal or a create that never finished
                continue
            try:
                record = _Record.from_json(read_json(directory / POD_FILE))
            except (OSError, ValueError, KeyError, TypeError, RecursionError) as err:
                self._quarantine(directory, err)
                continue
            self._records[record.uuid] = record
            if record.pid is None and record.state in (PodState.NEW, PodState.STARTING):
                self._clean_runtime(record)  # a start a crash cut short: as before it
                if record.rollback:
                    self._roll_back(record)
                    continue
                if record.state != PodState.NEW:
                    record.state, record.started_at = PodState.NEW, None
                    self._persist(record)
            self._rehold(record)
            if record.state.active:
                self._readopt(record)
            elif record.state.terminal:
                self._remove_cgroup(record.uuid)  # a removal that timed out before a crash

    def _discard_leftovers(self, directory: Path) -> None:
        netns.remove(directory / NETNS_FILE)
        pod_uuid = directory.name.removeprefix(".removing-")
        if pod_uuid:
            self._remove_cgroup(pod_uuid)
        remove_tree(directory)

    def _quarantine(self, directory: Path, err: BaseException) -> None:
        """Move an unreadable pod aside (STATE/pods/.quarantine/), keep it for a person to look
        at, and report it: a listing never breaks on it."""
        why = f"{directory.name}: unreadable pod.json ({type(err).__name__}: {err})"
        log.error("pods: quarantined %s", why)
        place = self.root / QUARANTINE
        place.mkdir(mode=0o700, exist_ok=True)
        netns.remove(directory / NETNS_FILE)
        os.rename(directory, place / f"{directory.name}-{int(time.time())}")
        self.quarantined.append(why)

    def _clean_runtime(self, record: _Record) -> None:
        """A NEW pod has no processes, cgroups or network namespace; a start that a crash cut
        short may have left some."""
        self._remove_cgroup(record.uuid)
        if self.networks is not None and record.network:
            self.networks.unwire(record.uuid, self._dir(record.uuid) / NETNS_FILE, record.network)
        netns.remove(self._dir(record.uuid) / NETNS_FILE)

    def _roll_back(self, record: _Record) -> None:
        """A pod made by a create-and-start that never started: as if never made."""
        log.info("pods: rolled back %s, which kurmad stopped before it started", record.name)
        self._records.pop(record.uuid, None)
        self._release_network(record)
        doomed = self.root / f".removing-{record.uuid}"
        os.rename(self._dir(record.uuid), doomed)
        remove_tree(doomed)

    def _remove_cgroup(self, pod_uuid: str) -> None:
        """The pod's cgroups, with whatever still runs in them. Only ever a pod of this
        kurmad's own state: another kurmad may share the cgroup parent."""
        with contextlib.suppress(CgroupError, OSError):
            self._cgroups.cgroup(pod_uuid).remove()

    def _rehold(self, record: _Record) -> None:
        try:
            resolved = resolve_pod(PodManifest.from_json(record.manifest), self.store)
            self.store.hold(self._holder(record), held_images(resolved, self.store))
        except (PodError, ImageNotFound, ValidationError) as err:
            record.reason = record.reason or f"images: {err}"

    def _readopt(self, record: _Record) -> None:
        alive = record.pid is not None and start_time(record.pid) == record.pid_start
        if alive and record.pid is not None and self._watcher.watch(record.pid, record.uuid):
            return
        self._on_pod_init_exit(record.uuid)


def _check_loadable(record: _Record) -> None:
    """What is saved must load again: the record goes through the reader it will meet after
    a restart, so a request that would poison the store is refused before anything is kept."""
    try:
        _Record.from_json(json.loads(json.dumps(record.to_json())))
    except (ValueError, KeyError, TypeError) as err:
        raise InvalidPod(f"the pod cannot be kept: {err}") from None


def _without_loopback(resolv_conf: bytes) -> bytes:
    """A pod with a network of its own cannot reach the host's loopback resolver (a local
    stub such as systemd-resolved's 127.0.0.53): those name servers are left out."""

    def loopback_server(line: str) -> bool:
        words = line.split()
        return len(words) >= 2 and words[0] == "nameserver" and words[1].startswith(("127.", "::1"))

    lines = resolv_conf.decode(errors="replace").splitlines(keepends=True)
    return "".join(line for line in lines if not loopback_server(line)).encode()


def _hosts(record: _Record) -> str:
    """/etc/hosts: the pod's name on its address (on the loopback's when it has none)."""
    address = first_address(record.network) if record.network else ""
    text = _HOSTS.format(hostname=record.name)
    return (
        text.replace(f"127.0.1.1\t{record.name}", f"{address}\t{record.name}") if address else text
    )


def _device_rules(app: AppSpec) -> list[DeviceRule]:
    return [DeviceRule(d.kind, d.major, d.minor, d.access) for d in app.devices]


def _apply_limits(group: Cgroup, limits: Limits) -> None:
    if limits.memory is not None:
        group.set_memory_limit(limits.memory)
    if limits.cpu_millicores is not None or limits.cpu_shares is not None:
        group.set_cpu(limits.cpu_millicores, limits.cpu_shares)
    if limits.io_bps is not None or limits.io_iops is not None:
        group.set_io_limits(_block_devices(), limits.io_bps, limits.io_iops)


def _block_devices() -> list[str]:
    """MAJ:MIN of every whole block device (resource/block-* isolators apply to all)."""
    devices = []
    for entry in Path("/sys/block").iterdir():
        if entry.name.startswith(("loop", "ram", "zram")):
            continue
        with contextlib.suppress(OSError):
            devices.append((entry / "dev").read_text().strip())
    return devices


def _read_or_empty(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""
