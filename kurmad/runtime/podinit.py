"""The pod init: PID 1 of a pod's PID namespace, in the pod's mount, UTS, IPC and network
namespaces. It sets up each app's filesystem, starts the apps, pumps their output into the
logs, reaps every process of the pod, runs the event handlers, honours a stop request with a
grace period, and writes the pod's status (``status.json``) at every change.

It is forked from the launcher (runtime/launcher.py) and so starts with every module it needs
already imported; it never returns to the launcher's code. Once the apps' filesystems are set
up it lives in its pod directory as its root, so that nothing of the host can be reached
through it (the launcher's docstring, layer 4, says why)."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from kurmad.linux import syscalls as sc
from kurmad.linux import tty
from kurmad.linux.fds import send_with_fds
from kurmad.linux.proc import reap_all

from .fs import SetupError, enter_root, setup_app_filesystem
from .layout import AppDir, PodDir
from .logs import LogWriter
from .process import become_app
from .rootfs import AppRootfs, mount_app_rootfs
from .spec import AppSpec, PodSpec
from .status import AppReport, AppState, InitState, InitStatus

POST_STOP_TIMEOUT = 30.0
STATUS_RETRY = 0.5  # seconds between tries of a status the disk refused
FINAL_STATUS_PATIENCE = 10.0  # how long the last status may wait for a full disk
_READ = 65536


@dataclass
class _App:
    spec: AppSpec
    directory: AppDir
    rootfs: AppRootfs | None = None
    pid: int | None = None
    state: AppState = AppState.WAITING
    exit_code: int | None = None
    signal: str | None = None
    reason: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    warnings: list[str] = field(default_factory=list)
    log: LogWriter | None = None
    terminal: int | None = None  # the master side, for apps that asked for a terminal
    post_stop_pid: int | None = None
    post_stop_deadline: float | None = None
    pending: bool = False  # exec not yet confirmed through the error pipe

    def report(self) -> AppReport:
        return AppReport(self.state, self.pid, self.exit_code, self.signal, self.reason,
                         self.started_at, self.finished_at, tuple(self.warnings))  # fmt: skip

    @property
    def done(self) -> bool:
        return self.state in (AppState.EXITED, AppState.FAILED) and self.post_stop_pid is None


class PodInit:
    def __init__(self, pod_dir: Path, spec: PodSpec) -> None:
        self.pod_dir = PodDir(pod_dir)
        self.spec = spec
        self.apps = [_App(app, self.pod_dir.app(app.name)) for app in spec.apps]
        self.state = InitState.STARTING
        self.reason: str | None = None
        self.stop_requested = False
        self.kill_deadline: float | None = None
        self.streams: dict[int, tuple[_App, str]] = {}  # fd -> (app, stdout|stderr|error)
        self.error_text: dict[int, bytes] = {}
        self.listeners: dict[int, tuple[socket.socket, _App]] = {}  # tty.sock of terminal apps
        self._wakeup_r, self._wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._status_unsaved = False
        self.cgroup_procs = dict(spec.cgroup_procs)  # by leaf; /proc/self/fd/N once in the pod dir
        self._null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)  # the apps' stdin

    # -- life ---------------------------------------------------------------------------------

    def run(self) -> int:
        self._catch_signals()
        try:
            self._prepare_pod()
            for app in self.apps:
                self._prepare_app(app)
            self._leave_the_host()
            for app in self.apps:
                self._start_app(app)
        except (SetupError, OSError) as err:
            self._fail(
                str(err) if isinstance(err, SetupError) else f"pod setup: {err.strerror or err}"
            )
        self._write_status()
        self._loop()
        self._finish()
        return 0

    def _catch_signals(self) -> None:
        signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, lambda *_: None)  # handled in the loop via the wakeup fd

    def _prepare_pod(self) -> None:
        self._join_cgroup("init")
        Path("/proc/self/oom_score_adj").write_text(str(self.spec.oom_score_adj))
        socket.sethostname(self.spec.hostname)
        sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)  # nothing of ours reaches the host
        sc.set_link_up("lo")
        for key, value in self.spec.sysctls.items():
            Path("/proc/sys", *key.split(".")).write_text(value)

    def _join_cgroup(self, leaf: str) -> None:
        for procs in self.spec_cgroup_procs(leaf):
            Path(procs).write_text(str(os.getpid()))

    def spec_cgroup_procs(self, leaf: str) -> list[str]:
        return list(self.cgroup_procs.get(leaf, []))

    def _prepare_app(self, app: _App) -> None:
        app.directory.path.mkdir(parents=True, exist_ok=True)
        app.rootfs = mount_app_rootfs([Path(p) for p in app.spec.lowers], app.directory.scratch)
        app.warnings.extend(setup_app_filesystem(
            str(app.rootfs.path), app.spec, self.pod_dir.resolv_conf, self.spec.hosts))  # fmt: skip

    def _leave_the_host(self) -> None:
        """Make the pod directory this process's root. What is still needed from outside is
        opened first: the cgroup.procs files (the apps' processes join through /proc/self/fd/N)
        and /dev/null. A procfs of the pod's PID namespace, with its processes only (no
        /proc/sys), serves the /proc/self an app's process writes to before it execs."""
        self.cgroup_procs = {
            leaf: [f"/proc/self/fd/{os.open(path, os.O_WRONLY | os.O_CLOEXEC)}" for path in paths]
            for leaf, paths in self.spec.cgroup_procs.items()
        }
        outside = self.pod_dir
        sc.mount(str(outside.path), outside.path, None, sc.MS_BIND | sc.MS_REC)  # for pivot_root
        outside.proc.mkdir(exist_ok=True)
        sc.mount("proc", outside.proc, "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC,
                 "subset=pid")  # fmt: skip
        enter_root(str(outside.path))
        self.pod_dir = PodDir(Path("/"))
        for app in self.apps:
            app.directory = AppDir(outside.inside(app.directory.path))
            if app.rootfs is not None:
                app.rootfs = AppRootfs(outside.inside(app.rootfs.path), app.rootfs.mounted)

    # -- apps -----------------------------------------------------------------------------------

    def _spawn(self, app: _App, argv: list[str], pre_start: list[str] | None, capture: bool) -> int:
        """Fork a process that becomes ``app`` running ``argv``; its output goes to the log,
        or to the app's terminal when it has one."""
        terminal = app.spec.tty and capture
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        fail_r, fail_w = os.pipe2(os.O_CLOEXEC)
        slave = self._open_terminal(app) if terminal else None
        pid = os.fork()
        if pid == 0:
            if slave is not None:
                tty.become_controlled_by(slave)
            else:
                _child_stdio(self._null, out_w, err_w)
            os.close(fail_r)
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(signum, signal.SIG_DFL)
            assert app.rootfs is not None
            become_app(app.spec, str(app.rootfs.path), argv, error_fd=fail_w,
                       cgroup_procs=self.spec_cgroup_procs(app.spec.name), pre_start=pre_start)  # fmt: skip
        for fd in (out_w, err_w, fail_w, *([slave] if slave is not None else [])):
            os.close(fd)
        for fd, stream in ((out_r, "stdout"), (err_r, "stderr")):
            os.set_blocking(fd, False)
            self.streams[fd] = (app, stream)
        if capture:
            os.set_blocking(fail_r, False)
            self.streams[fail_r] = (app, "error")
            self.error_text[fail_r] = b""
        else:
            os.close(fail_r)
        return pid

    def _open_terminal(self, app: _App) -> int:
        """A terminal from the app's own devpts (so the app sees a /dev/pts/N of its world).
        The pod init keeps the master and hands it to whoever connects to tty.sock."""
        assert app.rootfs is not None
        app.terminal, slave = tty.open_pty(app.rootfs.path / "dev" / "pts")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(app.directory.tty_socket))
        listener.listen(4)
        self.listeners[listener.fileno()] = (listener, app)
        return slave

    def _hand_over_terminal(self, fd: int) -> None:
        listener, app = self.listeners[fd]
        connection, _ = listener.accept()
        with connection:
            if app.terminal is not None:
                send_with_fds(connection, b"t", [app.terminal])

    def _start_app(self, app: _App) -> None:
        app.log = LogWriter(app.directory.path, self.spec.log_max_bytes, self.spec.log_keep)
        app.pid = self._spawn(app, app.spec.exec, app.spec.pre_start, capture=True)
        app.pending = True
        app.state = AppState.RUNNING
        app.started_at = time.time()

    def _app_confirmed(self, app: _App, error: bytes) -> None:
        """The app's error pipe closed: exec happened, or it says why not."""
        app.pending = False
        if error:
            app.state = AppState.FAILED
            app.reason = error.decode(errors="replace")
            self._fail(f"app {app.spec.name} failed to start: {app.reason}")
        elif self.state == InitState.STARTING and not any(a.pending for a in self.apps):
            self.state = InitState.RUNNING
        self._write_status()

    def _fail(self, reason: str) -> None:
        if self.state in (InitState.FAILED, InitState.STOPPING):
            return
        self.state = InitState.FAILED
        self.reason = reason
        self._stop_apps(grace=self.spec.stop_grace)

    def _stop_apps(self, grace: float) -> None:
        """Each app's main process gets its stop signal (an image's StopSignal, SIGTERM by
        default); when every app stops on SIGTERM, all the pod's processes get it at once."""
        custom = [a for a in self.apps if a.spec.stop_signal != signal.SIGTERM]
        for app in custom:
            if app.pid is not None and not app.done:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(app.pid, app.spec.stop_signal)
        if not custom:
            with contextlib.suppress(ProcessLookupError):
                os.kill(-1, signal.SIGTERM)  # from PID 1: every other process of the pod
        else:
            for app in self.apps:
                if app not in custom and app.pid is not None and not app.done:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(app.pid, signal.SIGTERM)
        self.kill_deadline = time.monotonic() + grace

    # -- the loop ---------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._all_done():
            timeout = self._next_timeout()
            readable, _, _ = select.select(
                [self._wakeup_r, *self.streams, *self.listeners], [], [], timeout
            )
            for fd in readable:
                if fd == self._wakeup_r:
                    self._on_signals()
                elif fd in self.listeners:
                    self._hand_over_terminal(fd)
                else:
                    self._pump(fd)
            self._reap()
            self._check_deadlines()
            if self._status_unsaved:
                self._write_status()

    def _all_done(self) -> bool:
        return (
            all(
                app.done or (app.state == AppState.WAITING and self.state == InitState.FAILED)
                for app in self.apps
            )
            and not self.streams
        )

    def _next_timeout(self) -> float | None:
        deadlines = [
            d
            for d in [self.kill_deadline, *(a.post_stop_deadline for a in self.apps)]
            if d is not None
        ]
        if self._status_unsaved:
            deadlines.append(time.monotonic() + STATUS_RETRY)
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def _on_signals(self) -> None:
        try:
            received = os.read(self._wakeup_r, 4096)
        except BlockingIOError:
            return
        if (
            any(s in received for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
            and not self.stop_requested
        ):
            self.stop_requested = True
            if self.state in (InitState.STARTING, InitState.RUNNING):
                self.state = InitState.STOPPING
                self._write_status()
            self._stop_apps(grace=self._requested_grace())

    def _requested_grace(self) -> float:
        try:
            return float(json.loads(self.pod_dir.stop.read_text())["grace"])
        except (OSError, ValueError, KeyError, TypeError):
            return self.spec.stop_grace

    def _pump(self, fd: int) -> None:
        app, stream = self.streams[fd]
        try:
            data = os.read(fd, _READ)
        except BlockingIOError:
            return
        if stream == "error":
            if data:
                self.error_text[fd] += data
                return
            del self.streams[fd]
            os.close(fd)
            self._app_confirmed(app, self.error_text.pop(fd))
            return
        if data:
            assert app.log is not None
            app.log.write(stream, data)
            return
        del self.streams[fd]
        os.close(fd)

    def _reap(self) -> None:
        for pid, status in reap_all():
            self._on_exit(pid, status)

    def _on_exit(self, pid: int, status: int) -> None:
        for app in self.apps:
            if pid == app.pid:
                self._main_exited(app, status)
            elif pid == app.post_stop_pid:
                app.post_stop_pid = app.post_stop_deadline = None
                self._write_status()

    def _main_exited(self, app: _App, status: int) -> None:
        app.finished_at = time.time()
        if os.WIFSIGNALED(status):
            app.signal = signal.Signals(os.WTERMSIG(status)).name
            app.exit_code = 128 + os.WTERMSIG(status)
        else:
            app.exit_code = os.waitstatus_to_exitcode(status)
        if app.state != AppState.FAILED:
            app.state = AppState.EXITED
        if app.spec.post_stop and app.reason is None:
            app.post_stop_pid = self._spawn(app, app.spec.post_stop, None, capture=False)
            app.post_stop_deadline = time.monotonic() + POST_STOP_TIMEOUT
        self._write_status()

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        if self.kill_deadline is not None and now >= self.kill_deadline:
            self.kill_deadline = None
            with contextlib.suppress(ProcessLookupError):
                os.kill(-1, signal.SIGKILL)
        for app in self.apps:
            if (
                app.post_stop_deadline is not None
                and now >= app.post_stop_deadline
                and app.post_stop_pid
            ):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(app.post_stop_pid, signal.SIGKILL)
                app.warnings.append(f"post-stop handler killed after {POST_STOP_TIMEOUT:.0f}s")
                app.post_stop_deadline = None

    # -- the end ------------------------------------------------------------------------------------

    def _finish(self) -> None:
        if self.state != InitState.FAILED:
            self.state = InitState.STOPPED if self.stop_requested else InitState.EXITED
        for app in self.apps:
            if app.log is not None:
                app.log.close()
        # The daemon learns the apps' ends from this file alone: a full disk gets some time to
        # take it (then the pod is reported as ended without its status).
        deadline = time.monotonic() + FINAL_STATUS_PATIENCE
        while not self._write_status(final=True) and time.monotonic() < deadline:
            time.sleep(STATUS_RETRY)

    def _write_status(self, final: bool = False) -> bool:
        """Replace status.json; a write the disk refuses is retried at the next turn of the
        loop (and said False), never the end of the pod init and its apps."""
        status = InitStatus(self.state, self.reason, final,
                            {app.spec.name: app.report() for app in self.apps}, time.time())  # fmt: skip
        try:
            status.write(self.pod_dir.status)
        except OSError:
            self._status_unsaved = True
            return False
        self._status_unsaved = False
        return True


def _child_stdio(null: int, out_w: int, err_w: int) -> None:
    os.dup2(null, 0)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    for fd in (out_w, err_w):
        if fd > 2:
            os.close(fd)


def main(pod_dir: Path) -> int:
    """Entry point in the freshly cloned pod init."""
    try:
        spec = PodSpec.load(PodDir(pod_dir).spec)
    except (OSError, ValueError, KeyError, TypeError) as err:
        failed = InitStatus(InitState.FAILED, f"cannot read the pod spec: {err}", final=True,
                            updated_at=time.time())  # fmt: skip
        with contextlib.suppress(OSError):
            failed.write(PodDir(pod_dir).status)
        return 1
    return PodInit(pod_dir, spec).run()
