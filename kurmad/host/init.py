"""PID 1. It mounts what everything needs, leaves the initramfs for a tmpfs root, then forks
the daemon (host/boot.py) and from there on does only what an init must: reap every zombie,
turn SIGTERM (poweroff) and SIGINT (reboot, where ctrl-alt-del is routed) into the daemon's
orderly shutdown, restart the daemon if it crashes, and finally kill what is left, sync,
unmount and call reboot(2).

The daemon is a child, not PID 1 itself, because a PID 1 must wait() for any child at all,
and that would steal the exit statuses gRPC's threads, subprocess and the pod launcher wait
for. This process stays single-threaded and never imports grpc: every fork here is safe.

Nothing here returns. PID 1 exiting is a kernel panic; when all else fails it prints why and
sleeps, reaping, forever."""

from __future__ import annotations

import errno
import os
import signal
import sys
import time
import traceback
from typing import TYPE_CHECKING, NoReturn

from kurmad.linux import syscalls as sc
from kurmad.linux.proc import reap_all

from . import mounts
from .info import BootStage
from .power import ACTIONS, BootOptions
from .stages import BootSequence, CriticalStageFailed, Stage

if TYPE_CHECKING:
    from .tasks import Serve

SHUTDOWN_TIMEOUT = 90.0  # for the daemon's orderly shutdown; then PID 1 goes on alone
KILL_GRACE = 5.0  # between SIGTERM and SIGKILL to whatever is left at the very end
MAX_RESTART_BACKOFF = 30.0
_WATCHED = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def console(line: str) -> None:
    try:
        sys.stdout.write(f"kurmad: {line}\n")
        sys.stdout.flush()
    except (OSError, ValueError):
        pass  # no console: PID 1 goes on without one


def main(options: BootOptions, serve: Serve) -> NoReturn:
    # The kernel gives init no PATH; mkfs.ext4, blkid and the rest live in the sbin directories.
    os.environ.setdefault("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    sequence = BootSequence(console)
    try:
        sequence.run_stages(EARLY, None)
    except CriticalStageFailed as err:
        halt_forever(f"cannot go on: {err}")
    Init(options, serve, sequence.records).run()


def _mount_system(_: None) -> str:
    done = mounts.mount_system()
    return f"mounted {' '.join(done)}" if done else "all present"


def _in_initramfs(_: None) -> bool:
    return mounts.root_is_initramfs()


def _leave_initramfs(_: None) -> str:
    carried = mounts.move_root_to_tmpfs()
    return f"pods need pivot_root, which the initramfs refuses: a tmpfs root with its {carried} entries bound on"


def _route_ctrl_alt_del(_: None) -> str:
    try:
        sc.reboot(sc.RB_DISABLE_CAD)
    except OSError as err:
        if err.errno != errno.EINVAL:
            raise
        return "not the initial PID namespace: the kernel keeps ctrl-alt-del"
    return "ctrl-alt-del sends SIGINT: an orderly reboot"


# What PID 1 does itself before it forks the daemon, which runs the rest (host/boot.py).
EARLY: tuple[Stage[None], ...] = (
    Stage("system mounts", _mount_system, critical=True),
    Stage("leave initramfs", _leave_initramfs, when=_in_initramfs),
    Stage("ctrl-alt-del", _route_ctrl_alt_del),
)


class Init:
    def __init__(self, options: BootOptions, serve: Serve, early: list[BootStage]) -> None:
        self.options = options
        self.serve = serve
        self.early = early
        self.daemon_pid: int | None = None
        self.action = ""
        self.shutdown_deadline: float | None = None
        self.restart_at: float | None = None
        self.restarts = 0
        self.backoff = 1.0

    def run(self) -> NoReturn:
        signal.pthread_sigmask(signal.SIG_BLOCK, _WATCHED)
        self.spawn_daemon()
        while True:
            try:
                received = signal.sigtimedwait(_WATCHED, 1.0)
                if received is not None:
                    self.on_signal(received.si_signo)
                self.reap()
                self.check_timers()
            except Exception:  # PID 1 survives its own bugs
                console("PID 1 error (going on):\n" + traceback.format_exc())
                time.sleep(1)

    def spawn_daemon(self) -> None:
        self.restart_at = None
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            _daemon_child(self.options, self.serve, self.early)
        self.daemon_pid = pid

    def on_signal(self, signum: int) -> None:
        if signum == signal.SIGTERM:
            self.request("poweroff")
        elif signum == signal.SIGINT:
            self.request("reboot")

    def request(self, action: str) -> None:
        if self.action:
            return
        self.action = action
        console(f"{action} requested")
        if self.daemon_pid is None:
            self.finalize()
        self.shutdown_deadline = time.monotonic() + SHUTDOWN_TIMEOUT
        os.kill(self.daemon_pid, signal.SIGTERM if action == "poweroff" else signal.SIGINT)

    def reap(self) -> None:
        """Wait for every child that has ended: the daemon, and every orphan the kernel has
        handed to PID 1."""
        for pid, status in reap_all():
            if pid == self.daemon_pid:
                self.on_daemon_exit(status)

    def on_daemon_exit(self, status: int) -> None:
        self.daemon_pid = None
        code = os.waitstatus_to_exitcode(status)
        if code in ACTIONS:
            self.action = self.action or ACTIONS[code]
            self.finalize()
        if self.action:
            console(
                f"the daemon ended ({_status(code)}) during the {self.action}: going on without it"
            )
            self.finalize()
        self.restarts += 1
        why = f"the daemon ended ({_status(code)}); restart {self.restarts} in {self.backoff:g}s"
        console(why)
        self.early.append(BootStage("daemon", time.time(), 0.0, False, why))
        self.restart_at = time.monotonic() + self.backoff
        self.backoff = min(self.backoff * 2, MAX_RESTART_BACKOFF)

    def check_timers(self) -> None:
        now = time.monotonic()
        if self.shutdown_deadline is not None and now >= self.shutdown_deadline:
            console(
                f"the daemon's shutdown took more than {SHUTDOWN_TIMEOUT:g}s: going on without it"
            )
            self.finalize()
        if self.restart_at is not None and now >= self.restart_at and not self.action:
            self.spawn_daemon()

    def finalize(self) -> NoReturn:
        """The very end: kill what is left, sync, unmount, reboot(2)."""
        action = self.action or "poweroff"
        console(f"{action}: ending every remaining process")
        _signal_all_and_reap(signal.SIGTERM, KILL_GRACE)
        _signal_all_and_reap(signal.SIGKILL, KILL_GRACE)
        os.sync()
        failures = mounts.unmount_all()
        if failures:
            console("could not unmount: " + "; ".join(failures))
        os.sync()
        console(f"{action} now")
        try:
            sc.reboot(sc.RB_POWER_OFF if action == "poweroff" else sc.RB_AUTOBOOT)
        except OSError as err:
            halt_forever(f"reboot(2) failed: {err.strerror}; the system is halted")
        halt_forever("reboot(2) returned; the system is halted")


def _daemon_child(options: BootOptions, serve: Serve, early: list[BootStage]) -> NoReturn:
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    for signum in _WATCHED:
        signal.signal(signum, signal.SIG_DFL)
    code = 1
    try:
        from .boot import Boot  # here, not in PID 1: gRPC and pyroute2 load in the daemon only

        code = Boot(options, serve, console, early).run()
    except BaseException:
        console("the daemon failed:\n" + traceback.format_exc())
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _signal_all_and_reap(signum: int, grace: float) -> None:
    """Signal every process but PID 1 and reap until none is left or ``grace`` passes."""
    try:
        os.kill(-1, signum)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.05)


def _status(code: int) -> str:
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"


def halt_forever(message: str) -> NoReturn:
    """Say why on the console and stay, reaping, for as long as the machine runs."""
    console(message)
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            time.sleep(60)
        except Exception:
            time.sleep(1)
