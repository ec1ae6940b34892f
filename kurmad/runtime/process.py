"""Turning a forked child of the pod init into an app process (ace.md §Execution Environment):
its cgroup, its root, its user and groups, its capabilities, seccomp filter, and exec.

Runs in a freshly forked child and ends in exec or in _exit; any failure is written, as one
line a person can act on, to ``error_fd`` (close-on-exec, so a successful exec closes it
silently)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import NoReturn

from kurmad.linux import capabilities, seccomp
from kurmad.linux import syscalls as sc

from . import users
from .fs import enter_root
from .isolators import filter_of
from .spec import AppSpec, SocketSpec

EXIT_SETUP_FAILED = 127


class AppStartError(Exception):
    pass


def become_app(
    app: AppSpec,
    rootfs: str,
    argv: list[str],
    *,
    error_fd: int,
    cgroup_procs: list[str],
    pre_start: list[str] | None = None,
) -> NoReturn:
    """Set this process up as ``app`` in ``rootfs`` and exec ``argv`` (after ``pre_start``)."""
    try:
        _join_cgroup(cgroup_procs)
        _apply_process_attributes(app)  # through the pod init's /proc: the app's is read-only
        enter_root(rootfs)
        credentials = users.resolve(app.user, app.group, group_from_user=app.group_from_user)
        _enter_working_directory(app.working_directory)
        env = dict(app.env)
        if credentials.home and "HOME" not in env:
            env["HOME"] = credentials.home
        if pre_start:
            _run_pre_start(app, credentials, pre_start, env)
        env.update(_activate_sockets(app.sockets))
        drop_privileges(app, credentials)
        exec_app(argv, env)
    except AppStartError as err:
        _fail(error_fd, str(err))
    except users.UserError as err:
        _fail(error_fd, str(err))
    except OSError as err:
        _fail(error_fd, f"{err.strerror or err}" + (f": {err.filename}" if err.filename else ""))
    except BaseException as err:  # anything else must still end this child, never return
        _fail(error_fd, f"{type(err).__name__}: {err}")


def _fail(error_fd: int, message: str) -> NoReturn:
    try:
        os.write(error_fd, message.encode(errors="replace")[:4000])
    finally:
        os._exit(EXIT_SETUP_FAILED)


def _join_cgroup(cgroup_procs: list[str]) -> None:
    for procs in cgroup_procs:
        Path(procs).write_text(str(os.getpid()))


def _enter_working_directory(directory: str) -> None:
    directory = directory or "/"
    try:
        os.chdir(directory)
    except OSError:
        raise AppStartError(f"working directory {directory} does not exist in the image") from None


def _apply_process_attributes(app: AppSpec) -> None:
    try:
        Path("/proc/self/oom_score_adj").write_text(str(app.oom_score_adj))
    except OSError as err:
        raise AppStartError(f"os/linux/oom-score-adj {app.oom_score_adj}: {err.strerror}") from None
    if app.apparmor_profile:
        Path("/proc/self/attr/exec").write_text(f"exec {app.apparmor_profile}")
    if app.selinux_context:
        Path("/proc/self/attr/exec").write_text(app.selinux_context)


def _run_pre_start(
    app: AppSpec, credentials: users.Credentials, argv: list[str], env: dict[str, str]
) -> None:
    pid = os.fork()
    if pid == 0:
        try:
            drop_privileges(app, credentials)
            exec_app(argv, env)
        except BaseException as err:
            sys.stderr.write(f"pre-start: {err}\n")
        os._exit(EXIT_SETUP_FAILED)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise AppStartError(f"the pre-start handler {argv[0]} {_describe_status(status)}")


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by signal {os.WTERMSIG(status)}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def _activate_sockets(sockets: list[SocketSpec]) -> dict[str, str]:
    """sd_listen_fds: listening sockets from fd 3 up, and the variables that announce them."""
    if not sockets:
        return {}
    opened = []
    for spec in sockets:
        kind = socket.SOCK_DGRAM if spec.protocol == "udp" else socket.SOCK_STREAM
        for port in range(spec.port, spec.port + spec.count):
            sock = socket.socket(socket.AF_INET, kind)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("0.0.0.0", port))
            if kind == socket.SOCK_STREAM:
                sock.listen(128)
            opened.append((spec.name, sock))
    for index, (_, sock) in enumerate(opened):
        os.dup2(sock.fileno(), 3 + index, inheritable=True)
    return {
        "LISTEN_FDS": str(len(opened)),
        "LISTEN_PID": str(os.getpid()),
        "LISTEN_FDNAMES": ":".join(name for name, _ in opened),
    }


def drop_privileges(app: AppSpec, credentials: users.Credentials) -> None:
    keep = capabilities.numbers(app.capabilities)
    capabilities.limit_bounding_set(keep)
    sc.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_CLEAR_ALL)
    if app.no_new_privileges:
        sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
    if app.seccomp is not None:
        # installed while CAP_SYS_ADMIN is still effective, so no_new_privs stays the app's
        # choice; the filter lets the calls below and exec through.
        program = seccomp.compile_filter(filter_of(app.seccomp))
        if program is not None:
            sc.seccomp_filter(program)
    for gid in app.supplementary_gids:
        if gid < 0:
            raise AppStartError(f"supplementary GID {gid} is negative")
    os.setgroups(app.supplementary_gids)
    os.setgid(credentials.gid)
    os.setuid(credentials.uid)
    if credentials.uid == 0:
        capabilities.restrict_to(keep)


def exec_app(argv: list[str], env: dict[str, str]) -> NoReturn:
    """execvp semantics (aci.md §exec): a name without '/' is looked up in the app's PATH."""
    if not argv:
        raise AppStartError("the app has nothing to run: its exec is empty")
    try:
        os.execvpe(argv[0], argv, env)
    except FileNotFoundError:
        where = "" if "/" in argv[0] else f" in PATH={env.get('PATH', os.defpath)}"
        raise AppStartError(f"{argv[0]}: no such file in the image{where}") from None
    except PermissionError:
        raise AppStartError(f"{argv[0]}: permission denied (not executable?)") from None
    except OSError as err:
        raise AppStartError(f"{argv[0]}: {err.strerror}") from None
