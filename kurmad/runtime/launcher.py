"""The launcher: the one process that creates pod and enter processes.

gRPC runs threads, and forking a threaded process is unsafe (a lock held by another thread at
the moment of fork stays held forever in the child). So the daemon never forks: at start-up it
execs this small program, which stays single-threaded, imports everything a pod init needs
once, freezes those objects out of the garbage collector (so forked children keep sharing the
pages), and then forks on request. Pod inits are created with clone(2) straight into their new
PID, mount, UTS, IPC and network namespaces.

Wire: a SOCK_SEQPACKET socketpair; each message one JSON object, file descriptors (an enter's
stdio) alongside. Requests carry an ``id`` answered by a reply with the same id; the launcher
also announces every child it reaps as ``{"event": "exit", "pid": .., "status": ..}``. When the
daemon's end closes, the launcher exits; running pods keep running (they were never its
threads) and a new daemon re-adopts them.

What a pod can see of it. A pod init stays PID 1 of its pod's PID namespace and an enter forks
into that namespace, so processes of kurmad's are visible from inside every pod, and
/proc/<pid>/{exe,root,cwd,fd} of a visible process are doors: runc's CVE-2019-5736 was a
container opening the runtime's binary through /proc/<pid>/exe while ``exec`` entered it, and
overwriting it. The defences, in layers, each for what the one before leaves open:

1. A sealed copy of the interpreter. The daemon copies its Python binary into a memfd, seals it
   (no write, shrink or grow, no more seals) and execs the launcher from it, as runc re-execs
   itself: every process the launcher forks has that copy as /proc/<pid>/exe, never the host's
   file, and the copy cannot be written either (ETXTBSY while it runs, EPERM by the seal).
   runc 1.2 traded its copy for a read-only overlayfs view of its binary, which saves memory
   but is only as strong as a read-only barrier (page-cache write bugs have pierced those:
   runc#5272) and takes a mount per start; the memfd is not the host's file at all and costs one
   copy, made once per daemon (~7 MB of memory, shared by every pod init). The copy lives
   nowhere, so it cannot find the standard library or kurmad from its own path: PYTHONHOME and
   PYTHONPATH hand it the daemon's (a venv, a checkout, the initramfs's zips), and ``-S -P``
   skip the site and cwd scans that this makes redundant.
2. Non-dumpable. The launcher sets PR_SET_DUMPABLE 0, which every child inherits from fork until
   it execs (the exec makes an app dumpable again). Then only CAP_SYS_PTRACE opens a pod init's
   or an entering process's /proc/<pid>/{exe,root,cwd,fd,environ,mem}: a pod with the default
   capabilities sees the numbers and nothing behind them, even in the window after an entering
   process has dropped to the app's credentials (where the kernel's same-credentials rule would
   let the app in) and before its exec.
3. No fd of kurmad's reaches a pod. A forked child closes every fd it was not sent and points
   its stdio at /dev/null first; the fds an enter is sent arrive close-on-exec
   (MSG_CMSG_CLOEXEC), and the namespace fds are closed before the fork into the pod, so the
   command holds exactly its stdio at exec. The launcher runs in / (no pod init inherits a host
   directory as its cwd) with /dev/null as stdin, and gets none of the daemon's environment but
   its locale and Python paths (the environment a process started with stays readable).
4. The pod init's own root. CAP_SYS_PTRACE (an admin may grant it) gets a pod past layer 2, to
   /proc/1/root and /proc/1/cwd. So once the apps' filesystems are set up, the pod init
   pivot_roots into its pod directory (podinit.py): what it still needs from outside is opened
   before (cgroup.procs, /dev/null), all else is inside (status, logs, the apps' root filesystems
   for later handler spawns), and a procfs of the pod's own PID namespace with nothing but its
   processes (``subset=pid``: no /proc/sys) serves its children's /proc/self. An entering
   process forks into the pod only after joining the app's mount namespace, so its root and cwd
   are the app's from its first instruction.

What remains, for a pod granted CAP_SYS_PTRACE: ptrace(2) itself (no seccomp rule blocks it for
a pod holding that capability). Such a pod can attach to its pod init, which holds every
capability, and run code there (mount, open_by_handle_at, ...): layer 4 takes away every *path*
to the host, not that power. Closing it needs the pod init out of the apps' sight (the apps in a
PID namespace nested below it) or stripped of its capabilities once the apps run; until then
CAP_SYS_PTRACE is as good as a host grant and must stay an admin's to give."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import gc
import itertools
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from kurmad.appc import DEFAULT_CAPABILITIES
from kurmad.linux import capabilities, seccomp, tty
from kurmad.linux import syscalls as sc
from kurmad.linux.fds import receive_with_fds, send_with_fds
from kurmad.linux.proc import reap_all

from . import messages, podinit
from .isolators import default_seccomp, filter_of
from .process import drop_privileges, exec_app
from .spec import AppSpec
from .users import UserError, resolve

POD_NAMESPACES = (
    sc.CLONE_NEWPID | sc.CLONE_NEWNS | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC | sc.CLONE_NEWNET
)
_MAX_MESSAGE = 1 << 20
_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
_LOCALE = ("LANG", "LC_ALL", "LC_CTYPE")  # the daemon's, so that file names decode the same
_ENTER_NAMESPACES = ("ipc", "uts", "net", "pid", "mnt")  # mnt last: it changes what /proc is


log = logging.getLogger("kurmad")


class LauncherError(Exception):
    pass


@dataclass(frozen=True)
class Entered:
    """A command started in a running app: its launcher-side PID, and the master side of its
    terminal when it has one."""

    pid: int
    terminal: int | None


def _send(sock: socket.socket, message: messages.Message, fds: list[int] | None = None) -> None:
    send_with_fds(sock, messages.encode(message), fds)


def _receive(sock: socket.socket) -> tuple[messages.Message | None, list[int]]:
    """The next message (None: the other end is gone) and its descriptors, close-on-exec (an
    enter's stdio must reach its command only as 0, 1 and 2). MessageError for bytes that are
    not a message (its descriptors are closed)."""
    data, fds = receive_with_fds(sock, _MAX_MESSAGE)
    if not data:
        return None, fds
    try:
        return messages.decode(data), fds
    except messages.MessageError:
        for fd in fds:
            os.close(fd)
        raise


# --- the launcher process -----------------------------------------------------------------------


def serve(sock: socket.socket) -> None:
    sc.prctl(sc.PR_SET_DUMPABLE, 0)  # and so is every child, from fork to exec
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _warm_caches()
    gc.collect()
    gc.freeze()  # what is imported now stays shared with every pod init
    try:
        _send(sock, messages.Ready(os.getpid()))
        while True:
            readable, _, _ = select.select([sock.fileno(), wake_r], [], [])
            if wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
                _reap_and_report(sock)
            if sock.fileno() in readable:
                message, fds = _receive(sock)
                if message is None:
                    return  # the daemon is gone
                if isinstance(message, messages.StartPod | messages.Enter):
                    _handle(sock, message, fds)
    except (BrokenPipeError, ConnectionResetError):
        return  # the daemon went before it heard from us: its pods do not need us


def _warm_caches() -> None:
    """Compute once, here, what every app would otherwise compute after its fork: the default
    seccomp filter of the default capabilities, and the kernel's last capability."""
    capabilities.last_cap()
    default = default_seccomp(DEFAULT_CAPABILITIES)
    if default is not None:
        seccomp.compile_filter(filter_of(default))


def _reap_and_report(sock: socket.socket) -> None:
    for pid, status in reap_all():
        with contextlib.suppress(OSError):
            _send(sock, messages.Exited(pid, status))


def _handle(sock: socket.socket, request: messages.Request, fds: list[int]) -> None:
    try:
        if isinstance(request, messages.StartPod):
            pid = _fork_pod(sock, request)
        else:
            pid = _fork_enter(sock, request, fds)
        _send(sock, messages.Started(request.id, pid))
    except Exception as err:
        _send(sock, messages.Refused(request.id, f"{type(err).__name__}: {err}"))
    finally:
        for fd in fds:
            os.close(fd)


def _in_child(sock: socket.socket, keep: list[int]) -> None:
    """What every forked child does first: forget the launcher's socket, signals and every
    other fd but ``keep``, and give up the daemon's stdio for /dev/null."""
    sock.close()
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGCHLD, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)
    _close_all_but([0, 1, 2, *keep])
    null = os.open("/dev/null", os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(null, target)
    os.close(null)


def _close_all_but(keep: list[int]) -> None:
    low = 0
    for fd in sorted(set(keep)):
        if low < fd:  # closerange(n, n) would close everything from n up
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


def _fork_pod(sock: socket.socket, request: messages.StartPod) -> int:
    """The pod init, in new namespaces; the network one is new, or the host's, or the
    namespace file the daemon has wired already."""
    shared = request.host_network or request.netns is not None
    pid = sc.fork_into_namespaces(POD_NAMESPACES & ~sc.CLONE_NEWNET if shared else POD_NAMESPACES)
    if pid == 0:
        code = 1
        try:
            _in_child(sock, keep=[])
            if request.netns is not None:
                _join_network(request.netns)
            code = podinit.main(Path(request.pod_dir))
        finally:
            os._exit(code)
    return pid


def _join_network(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        sc.setns(fd, sc.CLONE_NEWNET)
    finally:
        os.close(fd)


def _fork_enter(sock: socket.socket, request: messages.Enter, fds: list[int]) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            _in_child(sock, keep=fds)
            _enter(request, fds)
        finally:
            os._exit(126)
    return pid


def _enter(request: messages.Enter, fds: list[int]) -> NoReturn:
    """Join a running app: its namespaces and root, its cgroup, its user and restrictions."""
    namespaces = {
        name: os.open(f"/proc/{request.target_pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)
        for name in _ENTER_NAMESPACES
    }
    for procs in request.cgroup_procs:
        Path(procs).write_text(str(os.getpid()))
    for name in _ENTER_NAMESPACES:
        sc.setns(namespaces[name])
        os.close(namespaces[name])
    child = os.fork()  # only a child is born into the pod's PID namespace
    if child == 0:
        try:
            _become_entered(request, fds)
        except (OSError, UserError, Exception) as err:
            os.write(2, f"kurmad enter: {err}\n".encode())
        os._exit(126)
    for fd in fds:
        os.close(fd)
    _, status = os.waitpid(child, 0)
    os._exit(
        os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
    )


def _become_entered(request: messages.Enter, fds: list[int]) -> NoReturn:
    if request.tty:
        # A terminal of the pod's own devpts (the app's mount namespace is ours now), so that
        # the command sees a /dev/pts/N of its world; the master goes back to the daemon.
        master, slave = tty.open_pty(Path("/dev/pts"))
        tty.set_window_size(slave, *(request.window or tty.DEFAULT_SIZE))
        _send(socket.socket(fileno=fds[0]), messages.Terminal(), [master])
        os.close(master)
        tty.become_controlled_by(slave)
    else:
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
        os.setsid()
    app = request.app
    credentials = resolve(app.user, app.group, group_from_user=app.group_from_user)
    os.chdir(app.working_directory or "/")
    drop_privileges(app, credentials)
    exec_app(list(request.argv), {**app.env, **request.env})


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    os.close(int(sys.argv[2]))  # the sealed interpreter: /proc/self/exe holds it from now on
    serve(sock)


# --- the daemon's side ----------------------------------------------------------------------------


@functools.cache
def sealed_interpreter() -> int:
    """A memfd holding a copy of this interpreter's binary, sealed against any change: what the
    launcher runs from (the module docstring says why). Made once per daemon; close-on-exec, so
    only the launcher, which is handed it, ever holds it."""
    copy = os.memfd_create("kurmad-python", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    with open(sys.executable, "rb") as binary:
        size = os.fstat(binary.fileno()).st_size
        copied = 0
        while copied < size:
            sent = os.sendfile(copy, binary.fileno(), copied, size - copied)
            if sent == 0:
                raise LauncherError(f"{sys.executable} shrank while it was being copied")
            copied += sent
    fcntl.fcntl(copy, fcntl.F_ADD_SEALS, _SEALS)
    return copy


def _interpreter_environment() -> dict[str, str]:
    """The launcher's whole environment: where the interpreter copy finds what this interpreter
    found from its own path (the standard library under its prefix, and this sys.path), and the
    daemon's locale. Nothing else of the daemon's: a pod granted CAP_SYS_PTRACE can read its pod
    init's /proc/1/environ, and no app needs it (each gets its own environment)."""
    paths = [os.path.abspath(path) for path in sys.path]
    for path in paths:
        if os.pathsep in path:
            raise LauncherError(f"the Python path entry {path!r} has a {os.pathsep!r} in it")
    return {
        **{name: os.environ[name] for name in _LOCALE if name in os.environ},
        "PYTHONHOME": f"{sys.base_prefix}{os.pathsep}{sys.base_exec_prefix}",
        "PYTHONPATH": os.pathsep.join(paths),
    }


class Launcher:
    """The daemon's handle on its launcher process (thread-safe)."""

    def __init__(self) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock = mine
        interpreter = sealed_interpreter()
        self._process = subprocess.Popen(
            [sys.executable, "-S", "-P", "-m", "kurmad.runtime.launcher", str(theirs.fileno()),
             str(interpreter)],
            executable=f"/proc/self/fd/{interpreter}",
            pass_fds=[theirs.fileno(), interpreter],
            env=_interpreter_environment(),
            cwd="/",
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a ctrl-C at the daemon's terminal is not the pods' business
        )  # fmt: skip
        theirs.close()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._replies: dict[int, tuple[threading.Event, list[messages.Reply]]] = {}
        self._exits: dict[int, tuple[threading.Event, list[int]]] = {}
        # The new interpreter's start and imports run alongside the daemon's own start: only a
        # first request waits for its "ready" (a boot's API comes up that much sooner).
        self._ready = threading.Event()
        self.pid = self._process.pid
        self._reader = threading.Thread(target=self._read_loop, name="launcher-events", daemon=True)
        self._reader.start()

    def _read_loop(self) -> None:
        while True:
            try:
                message, fds = _receive(self._sock)
            except OSError:
                message, fds = None, []
            except messages.MessageError as err:  # one that cannot be acted on, not the end
                log.error("the launcher sent %s", err)
                continue
            for fd in fds:
                os.close(fd)
            if message is None:
                self._fail_pending()
                self._ready.set()  # a request then learns that the launcher is gone
                return
            self._take(message)

    def _take(self, message: messages.Message) -> None:
        if isinstance(message, messages.Ready):
            self._ready.set()
        elif isinstance(message, messages.Exited):
            self._record_exit(message.pid, message.status)
        elif isinstance(message, messages.Started | messages.Refused):
            with self._lock:
                waiter = self._replies.get(message.id)
            if waiter is not None:
                waiter[1].append(message)
                waiter[0].set()

    def _record_exit(self, pid: int, status: int) -> None:
        with self._lock:
            event, box = self._exits.setdefault(pid, (threading.Event(), []))
            box.append(status)
        event.set()

    def _fail_pending(self) -> None:
        with self._lock:
            for request_id, (event, replies) in self._replies.items():
                replies.append(messages.Refused(request_id, "the launcher exited"))
                event.set()

    def _request(
        self, make: Callable[[int], messages.Request], fds: list[int] | None = None
    ) -> int:
        """Send the request ``make(id)`` makes; the PID of the child it started."""
        if not self._ready.wait(60) or self._process.poll() is not None:
            raise LauncherError("the launcher did not start")
        request_id = next(self._ids)
        event: threading.Event = threading.Event()
        replies: list[messages.Reply] = []
        with self._lock:
            self._replies[request_id] = (event, replies)
        try:
            _send(self._sock, make(request_id), fds)
            if not event.wait(30):
                raise LauncherError("the launcher did not answer")
        finally:
            with self._lock:
                self._replies.pop(request_id, None)
        reply = replies[0]
        if isinstance(reply, messages.Refused):
            raise LauncherError(reply.error)
        with self._lock:
            self._exits.setdefault(reply.pid, (threading.Event(), []))
        return reply.pid

    def start_pod(self, pod_dir: Path, host_network: bool = False, netns: str | None = None) -> int:
        return self._request(lambda i: messages.StartPod(i, str(pod_dir), host_network, netns))

    def enter(
        self, target_pid: int, app: AppSpec, argv: list[str], *, env: dict[str, str],
        stdio: list[int] | None, cgroup_procs: list[str], window: tuple[int, int] | None = None,
    ) -> Entered:  # fmt: skip
        """Run ``argv`` in the app whose main process is ``target_pid``: with ``stdio`` (three
        fds), or with ``stdio=None`` on a new terminal whose master comes back in the result."""

        def make(request_id: int) -> messages.Enter:
            return messages.Enter(request_id, target_pid, app, argv, env, stdio is None,
                                  cgroup_procs, window)  # fmt: skip

        if stdio is not None:
            return Entered(self._request(make, stdio), None)
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with mine:
            try:
                pid = self._request(make, [theirs.fileno()])
            finally:
                theirs.close()
            mine.settimeout(10)
            _, fds = _receive(mine)
        if not fds:
            raise LauncherError("the entered command did not get a terminal")
        return Entered(pid, fds[0])

    def wait(self, pid: int, timeout: float | None = None) -> int | None:
        """The wait status of launcher child ``pid`` once it exits (None on timeout)."""
        with self._lock:
            event, box = self._exits.setdefault(pid, (threading.Event(), []))
        if not event.wait(timeout):
            return None
        with self._lock:
            self._exits.pop(pid, None)
        return box[0]

    def forget(self, pid: int) -> None:
        with self._lock:
            self._exits.pop(pid, None)

    @property
    def alive(self) -> bool:
        return self._process.poll() is None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        try:
            self._process.wait(5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


if __name__ == "__main__":
    main()
