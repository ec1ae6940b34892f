"""Who may ask a pod for what. Everything that weakens a pod's confinement needs the admin role,
checked at create: host volumes outside the configured allow-list, the host's network,
capabilities beyond appc's default set, a seccomp filter that lets through what the default
blocks, host devices, the API socket, sysctls outside the pod's own namespaces, and an OOM
score below the pods' default. What an image's own manifest asks for (its isolators) counts
exactly as if the request had asked for it: the resolved app is what is checked.

Some things no role may have: a volume on kurmad's state directory, its TLS directory or its
API socket, or on any ancestor of them (so not ``/``), however the path is spelled (the check
compares inodes, so a bind mount elsewhere does not get around it); and host volumes that are
device nodes (devices come only through the device isolator, which the cgroup allows)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from kurmad.appc import DEFAULT_CAPABILITIES
from kurmad.appc.volumes import KIND_HOST
from kurmad.linux import seccomp
from kurmad.runtime.isolators import AppPolicy, namespaced_sysctl
from kurmad.runtime.spec import APP_OOM_SCORE_ADJ

from .builder import ResolvedApp, ResolvedPod
from .model import InvalidPod, PodError


class PrivilegeRequired(PodError):
    """The pod asks for something only an admin may grant; ``needs`` lists each thing."""

    def __init__(self, needs: list[str]) -> None:
        super().__init__(f"the pod needs the admin role for: {'; '.join(needs)}")
        self.needs = needs


class Forbidden(PodError):
    """The pod asks for something no role may have."""


@dataclass(frozen=True)
class HostPolicy:
    """What this host keeps from pods. ``protected``: paths no volume may reach (the state
    directory, the TLS directory, the API socket). ``host_volumes``: directories below which
    any role that may create pods may mount host paths; elsewhere host volumes need admin.
    ``api_socket``: the socket the ``kurmad.io/api-socket`` isolator mounts."""

    protected: tuple[str, ...] = ()
    host_volumes: tuple[str, ...] = ()
    api_socket: str | None = None


def check_pod(resolved: ResolvedPod, policy: HostPolicy, admin: bool) -> None:
    """Raise Forbidden, or PrivilegeRequired when ``admin`` is False and the pod needs it."""
    for app in resolved.apps:
        for source in _host_sources(app):
            _check_source_allowed(source, policy, app.runtime.name)
    if not admin:
        needs = list(dict.fromkeys(needs_admin(resolved, policy)))
        if needs:
            raise PrivilegeRequired(needs)


def needs_admin(resolved: ResolvedPod, policy: HostPolicy) -> Iterator[str]:
    """What in the pod weakens confinement, one phrase each."""
    if resolved.host_network:
        yield "the host's network"
    for key in resolved.sysctls:
        if not namespaced_sysctl(key):
            yield f"sysctl {key} (not in the pod's namespaces)"
        elif resolved.host_network and key.startswith("net."):
            yield f"sysctl {key} (the host's network)"
    for app in resolved.apps:
        yield from _app_needs(app, policy)


def _app_needs(app: ResolvedApp, policy: HostPolicy) -> Iterator[str]:
    where = f"app {app.runtime.name}"
    for source in _host_sources(app):
        if not _below_any(source, policy.host_volumes):
            yield f"{where}: host volume {source} (outside the allowed host paths)"
    extra = sorted(set(app.policy.capabilities) - set(DEFAULT_CAPABILITIES))
    if extra:
        yield f"{where}: capabilities {', '.join(extra)} (beyond the default set)"
    relaxed = seccomp_relaxations(app.policy)
    if relaxed:
        yield f"{where}: a seccomp filter that allows {', '.join(relaxed)}"
    if app.policy.devices:
        yield f"{where}: devices {', '.join(d.path for d in app.policy.devices)}"
    if app.policy.api_socket is not None:
        yield f"{where}: kurmad's API socket"
    if app.policy.oom_score_adj < APP_OOM_SCORE_ADJ:
        yield f"{where}: oom-score-adj {app.policy.oom_score_adj} (below the pods' {APP_OOM_SCORE_ADJ})"


def seccomp_relaxations(policy: AppPolicy) -> list[str]:
    """The calls the default filter blocks for the app's capabilities that its own filter lets
    through (a retain set; a remove set only ever adds to the default)."""
    chosen = policy.seccomp
    if chosen is None or not chosen.retain:
        return []
    if seccomp.APPC_ALL in chosen.syscalls:
        return ["every call (@appc.io/all)"]
    blocked = seccomp.default_blocked(policy.capabilities)
    return sorted(blocked & set(chosen.syscalls))


def _host_sources(app: ResolvedApp) -> list[str]:
    return [m.volume.source for m in app.mounts if m.volume.kind == KIND_HOST and m.volume.source]


def _below_any(path: str, roots: tuple[str, ...]) -> bool:
    real = os.path.realpath(path)
    return any(
        real == os.path.realpath(root) or _inside(real, os.path.realpath(root)) for root in roots
    )


def _check_source_allowed(source: str, policy: HostPolicy, app: str) -> None:
    where = f"app {app}: host volume {source}"
    try:
        info = os.stat(source)
    except OSError as err:
        raise InvalidPod(f"{where}: {err.strerror}") from None
    if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode):
        raise Forbidden(
            f"{where} is a device node: devices come through the kurmad.io/devices isolator"
        )
    if policy.api_socket is not None and _same_file(source, policy.api_socket):
        raise Forbidden(
            f"{where} is kurmad's API socket: give it through the kurmad.io/api-socket isolator"
        )
    for protected in policy.protected:
        if _overlaps(source, protected):
            raise Forbidden(f"{where} would reach {protected}, which kurmad keeps from every pod")


def _overlaps(source: str, protected: str) -> bool:
    """Whether ``source`` is ``protected``, holds it, or lies inside it: by path, and by
    inode (a bind mount elsewhere, or a protected directory not made yet)."""
    real, kept = os.path.realpath(source), os.path.realpath(protected)
    if real == kept or _inside(kept, real) or _inside(real, kept):
        return True
    mine = _identity(real)
    return (mine is not None and mine in _identities_along(kept)) or (
        _identity(kept) in _identities_along(real)
    )


def _inside(path: str, directory: str) -> bool:
    return directory == "/" or path.startswith(directory.rstrip("/") + "/")


def _identities_along(path: str) -> set[tuple[int, int]]:
    """(device, inode) of ``path`` and of every directory above it, up to /."""
    found = set()
    current = os.path.abspath(path)
    while True:
        identity = _identity(current)
        if identity is not None:
            found.add(identity)
        parent = os.path.dirname(current)
        if parent == current:
            return found
        current = parent


def _identity(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _same_file(first: str, second: str) -> bool:
    identity = _identity(first)
    return identity is not None and identity == _identity(second)
