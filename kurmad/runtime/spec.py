"""What the executor runs: a pod and its apps with everything resolved (images rendered,
environment merged, isolators translated). The pod manager writes it as ``runtime.json`` in
the pod's directory; the pod init reads it. Plain data, JSON both ways."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# The OOM killer's bias (-1000..1000) for what runs in pods: above kurmad's and PID 1's (0, or
# lower where kurmad may lower it), so a pod is taken first; its apps before its pod init,
# whose end would take every app with it. Raising a score needs no privilege.
POD_INIT_OOM_SCORE_ADJ = 400
APP_OOM_SCORE_ADJ = 500
# Processes a pod may have at once unless told otherwise: a fork bomb stays in its pod.
DEFAULT_PIDS_LIMIT = 4096


@dataclass(frozen=True)
class MountSpec:
    source: str  # a host path
    target: str  # a path inside the app
    read_only: bool = False
    recursive: bool = True


@dataclass(frozen=True)
class DeviceSpec:
    """A host device node an app may use: bind-mounted at ``path`` in the app, allowed by the
    cgroup's device rules with ``access`` (a subset of rwm)."""

    path: str  # in the app, and on the host
    kind: str  # "c" or "b"
    major: int
    minor: int
    access: str = "rwm"


@dataclass(frozen=True)
class SeccompSpec:
    syscalls: list[str]
    retain: bool
    errno: str = ""
    arguments: list[str] = field(default_factory=list)  # seccomp.ARGUMENT_RULES that apply


@dataclass(frozen=True)
class SocketSpec:
    """A socket-activated port: the executor listens and hands the app the fd (sd_listen_fds)."""

    name: str
    protocol: str
    port: int
    count: int = 1


@dataclass(frozen=True)
class Limits:
    """Resource limits for a cgroup; None means unlimited."""

    memory: int | None = None
    cpu_millicores: int | None = None
    cpu_shares: int | None = None
    io_bps: int | None = None
    io_iops: int | None = None

    @property
    def any(self) -> bool:
        return any(
            v is not None
            for v in (self.memory, self.cpu_millicores, self.cpu_shares, self.io_bps, self.io_iops)
        )


@dataclass(frozen=True)
class AppSpec:
    name: str
    image_id: str
    # The read-only trees to lay the app's writable layer over, uppermost first: an ACI's
    # rendered tree, or an OCI image's layers (rootfs.py stacks them with overlayfs).
    lowers: list[str]
    exec: list[str]
    env: dict[str, str]
    user: str
    group: str
    supplementary_gids: list[int] = field(default_factory=list)
    # The user's own group from the image's /etc/passwd, ``group`` if it has no entry: what
    # Docker does with ``-u USER`` (kurmad.io/group-from-user).
    group_from_user: bool = False
    working_directory: str = "/"
    pre_start: list[str] | None = None
    post_stop: list[str] | None = None
    mounts: list[MountSpec] = field(default_factory=list)
    read_only_rootfs: bool = False
    capabilities: list[str] = field(default_factory=list)  # the bounding set
    no_new_privileges: bool = False
    seccomp: SeccompSpec | None = None
    oom_score_adj: int = APP_OOM_SCORE_ADJ
    apparmor_profile: str | None = None
    selinux_context: str | None = None
    sockets: list[SocketSpec] = field(default_factory=list)
    limits: Limits = field(default_factory=Limits)  # the app's own cgroup, inside the pod's
    tty: bool = False  # a terminal instead of log pipes; attach through apps/<name>/tty.sock
    devices: list[DeviceSpec] = field(default_factory=list)  # beyond the default ones
    stop_signal: int = 15  # what asks the app to stop (an OCI image's StopSignal); SIGTERM

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AppSpec:
        data = dict(data)
        data["limits"] = Limits(**data.get("limits", {}))
        data["mounts"] = [MountSpec(**m) for m in data.get("mounts", [])]
        data["sockets"] = [SocketSpec(**s) for s in data.get("sockets", [])]
        data["devices"] = [DeviceSpec(**d) for d in data.get("devices", [])]
        if data.get("seccomp") is not None:
            data["seccomp"] = SeccompSpec(**data["seccomp"])
        return cls(**data)


@dataclass(frozen=True)
class PodSpec:
    uuid: str
    name: str
    hostname: str
    apps: list[AppSpec]
    hosts: str  # /etc/hosts for apps whose image has none
    sysctls: dict[str, str] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    # cgroup.procs files to join: "init" for the pod init, an app's name for that app
    cgroup_procs: dict[str, list[str]] = field(default_factory=dict)
    log_max_bytes: int = 10 * 2**20
    log_keep: int = 3
    stop_grace: float = 10.0
    host_network: bool = False  # no network namespace of its own
    oom_score_adj: int = POD_INIT_OOM_SCORE_ADJ  # the pod init's

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PodSpec:
        data = dict(data)
        data["apps"] = [AppSpec.from_json(a) for a in data["apps"]]
        data["limits"] = Limits(**data.get("limits", {}))
        return cls(**data)

    @classmethod
    def load(cls, path: Path) -> PodSpec:
        return cls.from_json(json.loads(path.read_bytes()))
