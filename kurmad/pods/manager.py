"""The pod manager: create, start, stop, remove, wait, logs, attach and enter; every state change
written to disk (the pod's record, pods/records.py) and recovered after a restart.

Lifecycle: NEW -create-> STARTING -start-> RUNNING -> EXITED (the apps ended by themselves),
STOPPED (stopped on request) or FAILED (an app could not start, or setup failed). The pod init
(runtime/podinit.py) reports the apps' states in its status file (runtime/status.py); the
manager watches the pod init with a pidfd and settles the pod's final state when it ends. Where
each pod's files are is runtime/layout.py's to say."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
import uuid as uuid_module
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from kurmad.appc import ACName, PodManifest, ValidationError
from kurmad.appc.volumes import KIND_EMPTY
from kurmad.images.store import ImageNotFound, ImageStore
from kurmad.linux.cgroups import Cgroup, CgroupError
from kurmad.linux.fds import receive_with_fds
from kurmad.linux.files import remove_tree, write_json_atomic
from kurmad.linux.proc import child_with_namespace_pid, start_time
from kurmad.net import netns
from kurmad.net.plan import NetworkPlan
from kurmad.net.pods import NetworkError, PodNetworks
from kurmad.runtime import etc
from kurmad.runtime.cgroup_tree import PodCgroups
from kurmad.runtime.launcher import Entered, Launcher, LauncherError
from kurmad.runtime.layout import QUARANTINE, REMOVING, PodDir, PodsDir
from kurmad.runtime.logs import LogRecord, read_logs
from kurmad.runtime.spec import DEFAULT_PIDS_LIMIT, PodSpec
from kurmad.runtime.status import AppState, InitState, InitStatus, read_status

from .builder import ResolvedPod, app_spec, held_images, resolve_pod
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
from .records import PodRecord, RecordWriter, check_loadable, load_record, write_record
from .watcher import PidWatcher

DEFAULT_GRACE = 10.0
# how long start() waits for the apps to be running (pre-start handlers can take a while)
START_TIMEOUT = 30.0
log = logging.getLogger("kurmad")


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
        self.layout = PodsDir(self.root)
        self.events = events or EventBus()
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)  # pod records and logs hold secrets (environments)
        self.store = store
        policy = host_policy or HostPolicy()
        self.host_policy = replace(policy, protected=(str(state_dir.resolve()), *policy.protected))
        self.quarantined: list[str] = []  # pod directories that could not be loaded, and why
        self._cgroups = PodCgroups(cgroup_parent, pids_limit)
        self._resolv_conf = resolv_conf
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._records: dict[str, PodRecord] = {}
        self._resolved: dict[str, ResolvedPod] = {}  # from create, so start need not resolve again
        self._writer = RecordWriter(self.layout.pod, self._report_unsaved, self._lock)
        self._launcher = launcher or Launcher()
        self._watcher = PidWatcher(self._on_pod_init_exit)
        self.networks = networks
        self._recover()
        for line in self.reconcile_networks():
            log.info("networks: %s", line)

    def close(self) -> None:
        """Let go of the pods (they keep running) and of the launcher."""
        self._watcher.close()
        self._launcher.close()
        self._writer.close()

    # -- lookup ---------------------------------------------------------------------------------

    def _dir(self, pod_uuid: str) -> PodDir:
        return self.layout.pod(pod_uuid)

    def _find(self, ref: str) -> PodRecord:
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

    def _refresh(self, record: PodRecord) -> InitStatus | None:
        """Take in what the pod init reports of a running pod: STARTING becomes RUNNING once
        every app has exec'd."""
        if not record.state.active:
            return None
        live = read_status(self._dir(record.uuid).status)
        with self._lock:
            became_running = (
                record.state == PodState.STARTING
                and live is not None
                and live.state in (InitState.RUNNING, InitState.STOPPING)
            )
            if became_running:
                record.state = PodState.RUNNING
        if became_running:
            self.events.emit("pod", "running", record.uuid, record.name)
        return live

    def _view(self, record: PodRecord) -> Pod:
        live = self._refresh(record)
        apps = list(record.apps)
        if live is not None:
            apps = [a.reported(live.apps[a.name]) if a.name in live.apps else a for a in apps]
        return Pod(
            uuid=record.uuid, name=record.name, state=record.state,
            manifest=record.parsed_manifest, manifest_json=record.manifest_json,
            created_at=record.created_at, apps=apps,
            reason=record.reason, started_at=record.started_at, finished_at=record.finished_at,
            stopping=record.stop_requested and record.state.active, network=record.network,
        )  # fmt: skip

    def cgroup(self, ref: str, app: str | None = None) -> Cgroup:
        """The pod's cgroup (with ``app``: that app's leaf), for accounting and inspection."""
        record = self._find(ref)
        return self._cgroups.cgroup(
            record.uuid, None if app is None else self._app_name(record, app)
        )

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
        record = PodRecord(
            uuid=pod_uuid, name=name, created_at=time.time(), manifest=resolved.manifest.to_json(),
            apps=[AppStatus(a.runtime.name, a.image.id, isolators=a.policy.report) for a in resolved.apps],
            isolators=resolved.report, rollback=start_next,
        )  # fmt: skip
        try:
            check_loadable(record)
        except (ValueError, KeyError, TypeError) as err:
            raise InvalidPod(f"the pod cannot be kept: {err}") from None
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

    def _record_new(self, record: PodRecord) -> None:
        """The pod's directory and first record, or nothing at all (and its holds given back)
        when the disk refuses them."""
        where = self._dir(record.uuid)
        try:
            where.path.mkdir(mode=0o700)
            write_record(where, record)
        except OSError as err:
            self.store.release(self._holder(record))
            self._release_network(record)
            with contextlib.suppress(OSError):
                remove_tree(where.path)
            raise PodStorageError(f"the pod could not be saved: {err.strerror or err}") from None
        self._records[record.uuid] = record

    def _plan_network(self, pod_uuid: str, resolved: ResolvedPod) -> NetworkPlan | None:
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

    def _release_network(self, record: PodRecord) -> None:
        if self.networks is not None and record.network is not None:
            self._unwire(record)
            self.networks.release(record.uuid)

    def reconcile_networks(self) -> list[str]:
        """Leases, veths and rules of pods that are gone go too (after a crash, say)."""
        if self.networks is None:
            return []
        with self._lock:
            live = {r.uuid: r.network or NetworkPlan() for r in self._records.values()}
            started = {r.uuid for r in self._records.values() if r.state != PodState.NEW}
        return self.networks.reconcile(live, started)

    def _check_name(self, name: str) -> str:
        try:
            ACName(name)
        except ValidationError as err:
            raise InvalidPod(f"pod name: {err.rule}") from None
        if len(name) > 63:
            raise InvalidPod(f"pod name {name!r} is longer than 63 characters (it is the hostname)")
        return name

    @staticmethod
    def _holder(record: PodRecord) -> str:
        return f"pod {record.name} ({record.uuid[:8]})"

    def _persist(self, record: PodRecord) -> None:
        """Save the record (pods/records.py: a failed write is retried, never raised here)."""
        self._writer.save(record)

    def _report_unsaved(self, record: PodRecord, why: str) -> None:
        log.error("cannot save pod %s: %s (retrying)", record.name, why)
        self.events.emit("host", "save-failed", record.uuid, record.name, reason=why)

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
                self._dir(record.uuid).path, spec.host_network, namespace
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
        if wait:
            self._await_started(record, timeout=START_TIMEOUT)
        return self._view(record)

    def _wire(self, record: PodRecord) -> str | None:
        """The pod's network namespace, wired to its networks (None: the launcher makes a
        bare one, or the pod shares the host's)."""
        if self.networks is None or record.network is None or not record.network.wired:
            return None
        namespace = self._dir(record.uuid).netns
        try:
            wired = self.networks.wire(record.uuid, namespace, record.network)
        except NetworkError as err:
            self._settle(record, PodState.FAILED, str(err))
            raise InvalidPod(f"pod {record.name} failed to start: {err}") from None
        with self._lock:
            record.network = wired
            self._persist(record)
        return str(namespace)

    def _unwire(self, record: PodRecord) -> None:
        """Undo the wiring; what it leaves in the plan (CNI's answers) goes."""
        if self.networks is None or record.network is None:
            return
        self.networks.unwire(record.uuid, self._dir(record.uuid).netns, record.network)
        with self._lock:
            record.network = record.network.unwired()

    def _live_launcher(self) -> Launcher:
        """The launcher, started again if it died (its pods live on regardless)."""
        with self._lock:
            if not self._launcher.alive:
                self._launcher.close()
                self._launcher = Launcher()
            return self._launcher

    def _await_started(self, record: PodRecord, timeout: float) -> None:
        """Wait until the pod init says every app runs, or the pod has ended."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while record.state == PodState.STARTING and time.monotonic() < deadline:
                self._changed.wait(0.002)  # the pod init reports through a file; poll it briefly
                self._refresh(record)

    def _prepare(self, record: PodRecord) -> PodSpec:
        """Everything the pod init needs, on disk: runtime.json, cgroups, volumes, resolv.conf."""
        where = self._dir(record.uuid)
        resolved = self._resolved.pop(record.uuid, None) or resolve_pod(
            PodManifest.from_json(record.manifest), self.store
        )
        socket_path = self.host_policy.api_socket
        apps = [app_spec(app, self.store, where, socket_path) for app in resolved.apps]
        _make_empty_volumes(resolved, where)
        where.resolv_conf.write_bytes(etc.resolv_conf(self._resolv_conf, resolved.host_network))
        address = record.network.first_address() if record.network else ""
        spec = PodSpec(
            uuid=record.uuid, name=record.name, hostname=record.name, apps=apps,
            hosts=etc.hosts_file(record.name, address), sysctls=resolved.sysctls,
            limits=resolved.limits, cgroup_procs=self._cgroups.make(record.uuid, resolved.limits, apps),
            host_network=resolved.host_network,
        )  # fmt: skip
        write_json_atomic(where.spec, spec.to_json())
        return spec

    # -- the end of a pod -----------------------------------------------------------------------------

    def _on_pod_init_exit(self, pod_uuid: str) -> None:
        with self._lock:
            record = self._records.get(pod_uuid)
            if record is None or record.state.terminal:
                return
        if record.pid is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(record.pid, os.WNOHANG)  # ours only if it was reparented to us
        status = read_status(self._dir(pod_uuid).status)
        if status is not None and status.final:
            state, reason = PodState(status.state.value), status.reason
        elif record.stop_requested:
            state, reason = PodState.STOPPED, "killed after the stop grace period"
        else:
            reason = status.reason if status is not None else None
            state, reason = PodState.FAILED, reason or "the pod init ended unexpectedly"
        self._settle(record, state, reason, status)

    def _settle(
        self, record: PodRecord, state: PodState, reason: str | None,
        status: InitStatus | None = None,
    ) -> None:  # fmt: skip
        """Record the final state, wake whoever waits, then free the cgroups. Waiters may hear
        of the end before the record says it: the pod init's final status already does, and
        recovery reads it."""
        with self._lock:
            record.apps = [_ended(app, status) for app in record.apps]
            record.state, record.reason = state, reason
            record.finished_at = time.time()
            record.rollback = False
            self._changed.notify_all()
            self._persist(record)
        codes = {a.name: str(a.exit_code) for a in record.apps}
        self.events.emit(
            "pod", state.value.lower(), record.uuid, record.name, reason=reason or "", **codes
        )
        self._cgroups.remove(record.uuid)

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

    def _tell_grace(self, record: PodRecord, grace: float) -> None:
        """The pod init reads the grace period of a stop from stop.json; when the disk will not
        take it, the pod's own grace applies, and the SIGKILL after ``grace`` still comes."""
        try:
            write_json_atomic(self._dir(record.uuid).stop, {"grace": grace})
        except OSError as err:
            log.warning("pod %s: stop grace not passed on: %s", record.name, err.strerror or err)

    def _signal_pod_init(self, record: PodRecord, signum: int) -> None:
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
            self._writer.forget(record.uuid)
            self.store.release(self._holder(record))
        self._release_network(record)
        self._cgroups.remove(record.uuid)
        self._delete_dir(record.uuid)
        self.events.emit("pod", "removed", record.uuid, record.name)

    def _delete_dir(self, pod_uuid: str) -> None:
        """Out of sight at once (renamed), then deleted: a crash in between is finished at
        the next start."""
        doomed = self.layout.removing(pod_uuid)
        os.rename(self._dir(pod_uuid).path, doomed)
        remove_tree(doomed)

    # -- logs, attach and enter -----------------------------------------------------------------------

    def logs(
        self, ref: str, app: str | None = None, follow: bool = False,
        still_wanted: Callable[[], bool] | None = None,
    ) -> Iterator[LogRecord]:  # fmt: skip
        """An app's log records; with ``follow``, until the pod ends or ``still_wanted()``
        says the reader has gone."""
        record = self._find(ref)
        directory = self._dir(record.uuid).app(self._app_name(record, app)).path

        def pause(seconds: float) -> None:
            with self._changed:
                if record.state.active:
                    self._changed.wait(seconds)  # woken at once when the pod ends

        return read_logs(directory, follow, still_running=lambda: record.state.active,
                         pause=pause, still_wanted=still_wanted)  # fmt: skip

    def _app_name(self, record: PodRecord, app: str | None) -> str:
        names = record.app_names()
        if app is None:
            if len(names) > 1:
                raise InvalidPod(f"pod {record.name} has apps {', '.join(names)}; name one")
            return names[0]
        if app not in names:
            raise PodNotFound(f"pod {record.name} has no app {app!r} (it has {', '.join(names)})")
        return app

    def attach(self, ref: str, app: str | None = None) -> int:
        """The master side of a terminal app's pty (kurmactl run -it), handed over by its pod
        init (without ``app``: the pod's first app's); the caller owns (and closes) it."""
        record = self._find(ref)
        name = self._app_name(record, app) if app else record.app_names()[0]
        path = self._dir(record.uuid).app(name).tty_socket
        if not path.exists():
            raise PodConflict(f"app {name} of pod {record.name} has no terminal (run it with -t)")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(5)
            try:
                connection.connect(str(path))
                _, fds = receive_with_fds(connection, 1, max_fds=1)
            except OSError as err:
                raise PodConflict(f"app {name} of pod {record.name}: its terminal: {err}") from None
        if not fds:
            raise PodConflict(f"app {name} of pod {record.name}: its terminal could not be had")
        return fds[0]

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
        live = self._refresh(record)
        report = live.apps.get(name) if live is not None else None
        if report is None or report.state != AppState.RUNNING or report.pid is None:
            raise PodConflict(f"app {name} of pod {record.name} is not running")
        target = None if record.pid is None else child_with_namespace_pid(record.pid, report.pid)
        if target is None:
            raise PodConflict(f"app {name} of pod {record.name} is not running")
        spec = PodSpec.load(self._dir(record.uuid).spec)
        app_spec_ = next(a for a in spec.apps if a.name == name)
        return self._live_launcher().enter(target, app_spec_, argv, env=env or {}, stdio=stdio,
                                           cgroup_procs=spec.cgroup_procs.get(name, []), window=window)  # fmt: skip

    def wait_enter(self, handle: int, timeout: float | None = None) -> int | None:
        """The exit code of an entered command (None if it has not ended within ``timeout``)."""
        status = self._launcher.wait(handle, timeout)
        return None if status is None else os.waitstatus_to_exitcode(status)

    def forget_enter(self, handle: int) -> None:
        """Nobody will ask for this entered command's exit code (its client went away)."""
        self._launcher.forget(handle)

    # -- recovery --------------------------------------------------------------------------------------

    def _recover(self) -> None:
        """Load every pod from disk; re-adopt running ones, settle those that ended while no
        daemon watched, finish or roll back what a crash left half-made, and hold their
        images again. A record that cannot be read is quarantined, never lost or fatal."""
        for directory in sorted(self.root.iterdir()):
            if directory.name == QUARANTINE:
                self.quarantined += [f"{d.name}: quarantined earlier" for d in directory.iterdir()]
            elif directory.name.startswith(REMOVING) or not PodDir(directory).record.exists():
                self._discard_leftovers(directory)  # a removal or a create that never finished
            else:
                self._recover_one(PodDir(directory))

    def _recover_one(self, where: PodDir) -> None:
        try:
            record = load_record(where)
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as err:
            self._quarantine(where, err)
            return
        self._records[record.uuid] = record
        if record.pid is None and record.state in (PodState.NEW, PodState.STARTING):
            self._clean_runtime(record)  # a start a crash cut short: as before it
            if record.rollback:
                self._roll_back(record)
                return
            if record.state != PodState.NEW:
                record.state, record.started_at = PodState.NEW, None
                self._persist(record)
        self._rehold(record)
        if record.state.active:
            self._readopt(record)
        elif record.state.terminal:
            self._cgroups.remove(record.uuid)  # a removal that timed out before a crash

    def _discard_leftovers(self, directory: Path) -> None:
        netns.remove(PodDir(directory).netns)
        self._cgroups.remove(directory.name.removeprefix(REMOVING))
        remove_tree(directory)

    def _quarantine(self, where: PodDir, err: BaseException) -> None:
        """Move an unreadable pod aside (STATE/pods/.quarantine/), keep it for a person to look
        at, and report it: a listing never breaks on it."""
        why = f"{where.path.name}: unreadable pod.json ({type(err).__name__}: {err})"
        log.error("pods: quarantined %s", why)
        self.layout.quarantine.mkdir(mode=0o700, exist_ok=True)
        netns.remove(where.netns)
        os.rename(where.path, self.layout.quarantine / f"{where.path.name}-{int(time.time())}")
        self.quarantined.append(why)

    def _clean_runtime(self, record: PodRecord) -> None:
        """A NEW pod has no processes, cgroups or network namespace; a start that a crash cut
        short may have left some (its wiring's progress was never saved: all of it is undone)."""
        self._cgroups.remove(record.uuid)
        if record.network is not None:
            record.network = record.network.all_attempted()
        self._unwire(record)
        netns.remove(self._dir(record.uuid).netns)

    def _roll_back(self, record: PodRecord) -> None:
        """A pod made by a create-and-start that never started: as if never made."""
        log.info("pods: rolled back %s, which kurmad stopped before it started", record.name)
        self._records.pop(record.uuid, None)
        self._release_network(record)
        self._delete_dir(record.uuid)

    def _rehold(self, record: PodRecord) -> None:
        try:
            resolved = resolve_pod(record.parsed_manifest, self.store)
            self.store.hold(self._holder(record), held_images(resolved, self.store))
        except (PodError, ImageNotFound, ValidationError) as err:
            record.reason = record.reason or f"images: {err}"

    def _readopt(self, record: PodRecord) -> None:
        alive = record.pid is not None and start_time(record.pid) == record.pid_start
        if alive and record.pid is not None and self._watcher.watch(record.pid, record.uuid):
            return
        self._on_pod_init_exit(record.uuid)


def _ended(app: AppStatus, status: InitStatus | None) -> AppStatus:
    """An app once its pod has ended: as the pod init's last report says, and ended with the
    pod if it was still running then."""
    if status is not None and app.name in status.apps:
        app = app.reported(status.apps[app.name])
    if app.state == AppState.RUNNING:
        app = replace(app, state=AppState.EXITED, reason=app.reason or "ended with the pod")
    return app


def _make_empty_volumes(resolved: ResolvedPod, where: PodDir) -> None:
    for volume in {m.volume for app in resolved.apps for m in app.mounts}:
        if volume.kind != KIND_EMPTY:
            continue
        directory = where.volume(volume.name)
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, volume.effective_mode)
        os.chown(directory, volume.uid or 0, volume.gid or 0)
