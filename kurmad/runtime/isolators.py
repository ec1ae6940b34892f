"""From appc isolators to what the executor enforces, and an account of each one: enforced,
or ignored and why (ace.md: an executor MAY ignore an isolator but MUST say so)."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from kurmad.appc import DEFAULT_CAPABILITIES, Isolator, IsolatorValue
from kurmad.appc import isolators as iso
from kurmad.appc.quantity import Quantity
from kurmad.linux import capabilities, seccomp
from kurmad.linux.cgroups import millicores_to_shares

from .spec import APP_OOM_SCORE_ADJ, DeviceSpec, Limits, SeccompSpec

# Sysctls that belong to the pod's own namespaces; any other key would change the host.
NAMESPACED_SYSCTL_PREFIXES = ("net.", "fs.mqueue.", "kernel.msg", "kernel.shm", "kernel.sem")
_SYSCTL_KEY = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+")
# Isolators of kurmad's own (an AC Identifier outside the spec's names, which aci.md allows):
# host devices for an app, and the API's socket for a system pod that drives kurmad. Both only
# for the admin role (pods/privileges.py).
DEVICES_ISOLATOR = "kurmad.io/devices"
API_SOCKET_ISOLATOR = "kurmad.io/api-socket"
OWN_ISOLATORS = (DEVICES_ISOLATOR, API_SOCKET_ISOLATOR)
# The least memory a pod can be held to (Docker's floor): below it even a shell cannot start.
MIN_MEMORY = 6 * 2**20
# The largest limit a cgroup file takes (a signed 64-bit number); bigger quantities are typos.
_MAX_LIMIT = Decimal(2**63 - 1)


class IsolatorError(ValueError):
    """An isolator cannot be honoured and must not be ignored (the pod is refused)."""


@dataclass(frozen=True)
class Ignored:
    """An isolator the executor does not enforce, and why (ace.md: it must say so)."""

    name: str
    reason: str


@dataclass
class Report:
    """Which isolators an app's run enforces and which it ignores; filled while they are
    translated, kept in the pod's record afterwards."""

    enforced: list[str] = field(default_factory=list)
    ignored: list[Ignored] = field(default_factory=list)

    def ignore(self, name: str, reason: str) -> None:
        self.ignored.append(Ignored(name, reason))

    def to_json(self) -> dict[str, Any]:
        return {"enforced": list(self.enforced),
                "ignored": [{"name": i.name, "reason": i.reason} for i in self.ignored]}  # fmt: skip

    @classmethod
    def from_json(cls, data: Any) -> Report:
        if not isinstance(data, dict):
            raise ValueError("isolators: not an object")
        return cls([str(e) for e in data.get("enforced", [])],
                   [Ignored(str(i["name"]), str(i["reason"])) for i in data.get("ignored", [])])  # fmt: skip


T = TypeVar("T", bound=IsolatorValue)


class Found:
    """The isolators of an app or a pod, indexed in one walk: by kind (the last of a kind wins,
    as appc says), kurmad's own by name, and the names this executor does not know."""

    def __init__(self, isolators: Iterable[Isolator] = ()) -> None:
        self._by_kind: dict[type[IsolatorValue], IsolatorValue] = {}
        self._own: dict[str, Any] = {}
        self.unknown: list[str] = []
        for isolator in isolators:
            if isolator.known:
                self._by_kind[type(isolator.value)] = isolator.value
            elif isolator.name in OWN_ISOLATORS:
                self._own[isolator.name] = isolator.value.to_json()
            else:
                self.unknown.append(isolator.name)

    def get(self, kind: type[T]) -> T | None:
        value = self._by_kind.get(kind)
        return value if isinstance(value, kind) else None

    def own(self, name: str) -> Any:
        """The JSON value of one of kurmad's own isolators, or None."""
        return self._own.get(name)


@dataclass
class AppPolicy:
    capabilities: list[str]
    no_new_privileges: bool = False
    seccomp: SeccompSpec | None = None
    oom_score_adj: int = APP_OOM_SCORE_ADJ
    apparmor_profile: str | None = None
    selinux_context: str | None = None
    limits: Limits = field(default_factory=Limits)
    sysctls: dict[str, str] = field(default_factory=dict)
    devices: list[DeviceSpec] = field(default_factory=list)
    api_socket: str | None = None  # where the app sees kurmad's API socket, if it asked
    report: Report = field(default_factory=Report)


def limits_of(found: Found, report: Report) -> Limits:
    """The cgroup limits the isolators ask for; a limit the kernel cannot honour (no memory
    to run in, no CPU time, a number no cgroup file takes) is refused."""
    memory = found.get(iso.ResourceMemory)
    cpu = found.get(iso.ResourceCPU)
    shares = found.get(iso.CPUShares)
    bandwidth = found.get(iso.ResourceBlockBandwidth)
    iops = found.get(iso.ResourceBlockIOPS)
    for value, name in ((memory, "resource/memory"), (cpu, "resource/cpu"), (shares, "os/linux/cpu-shares"),
                        (bandwidth, "resource/block-bandwidth"), (iops, "resource/block-iops")):  # fmt: skip
        if value is not None:
            report.enforced.append(name)
    _check_limits(memory, cpu, bandwidth, iops)
    if found.get(iso.ResourceNetworkBandwidth) is not None:
        report.ignore(
            "resource/network-bandwidth", "not enforced: pod networks have no traffic shaper yet"
        )
    cpu_shares = (
        shares.value
        if shares
        else (millicores_to_shares(cpu.effective_request.milli_value) if cpu else None)
    )
    return Limits(
        memory=memory.limit.value if memory else None,
        cpu_millicores=cpu.limit.milli_value if cpu else None,
        cpu_shares=cpu_shares,
        io_bps=bandwidth.limit.value if bandwidth else None,
        io_iops=iops.limit.value if iops else None,
    )


def _check_limits(
    memory: iso.ResourceMemory | None,
    cpu: iso.ResourceCPU | None,
    bandwidth: iso.ResourceBlockBandwidth | None,
    iops: iso.ResourceBlockIOPS | None,
) -> None:
    if memory is not None:
        for quantity in (memory.limit, memory.effective_request):
            _check_quantity("resource/memory", quantity, Decimal(MIN_MEMORY), "6Mi")
    if cpu is not None:
        for quantity in (cpu.limit, cpu.effective_request):
            _check_quantity("resource/cpu", quantity, Decimal("0.001"), "1m")
    for found, name in ((bandwidth, "resource/block-bandwidth"), (iops, "resource/block-iops")):
        if found is not None:
            _check_quantity(name, found.limit, Decimal(1), "1")


def _check_quantity(name: str, quantity: Quantity, least: Decimal, least_text: str) -> None:
    if quantity.amount < least:
        raise IsolatorError(f"{name}: {quantity} is below {least_text}, the least it can be")
    if quantity.amount > _MAX_LIMIT:
        raise IsolatorError(f"{name}: {quantity} is larger than any limit the kernel takes")


def sysctls_of(found: Found, report: Report) -> dict[str, str]:
    """The sysctls to set in the pod. Keys outside the pod's namespaces are kept here: they
    need the admin role (pods/privileges.py), which decides."""
    sysctl = found.get(iso.Sysctl)
    if sysctl is None:
        return {}
    values = dict(sysctl.values)
    for key, value in values.items():
        if not _SYSCTL_KEY.fullmatch(key):
            raise IsolatorError(
                f"os/unix/sysctl: {key!r} is not a sysctl name like net.ipv4.ip_forward"
            )
        if any(c in value for c in "\n\0"):
            raise IsolatorError(f"os/unix/sysctl: the value of {key} holds a newline or NUL")
    report.enforced.append("os/unix/sysctl")
    return values


def namespaced_sysctl(key: str) -> bool:
    return key.startswith(NAMESPACED_SYSCTL_PREFIXES)


def app_policy(isolators: Sequence[Isolator], pod: Found | None = None) -> AppPolicy:
    """What the executor does for an app with ``isolators`` in a pod with ``pod``'s (which
    name the AppArmor profile and SELinux context of apps that give none)."""
    found, pod = Found(isolators), pod or Found()
    report = Report()
    caps = _capabilities(found, report)
    policy = AppPolicy(capabilities=sorted(caps), report=report)
    nnp = found.get(iso.NoNewPrivileges)
    if nnp is not None:
        policy.no_new_privileges = nnp.enabled
        report.enforced.append(iso.NoNewPrivileges.NAME)
    policy.seccomp = _seccomp(found, caps, report)
    oom = found.get(iso.OOMScoreAdj)
    if oom is not None:
        policy.oom_score_adj = oom.value
        report.enforced.append(iso.OOMScoreAdj.NAME)
    policy.apparmor_profile = _apparmor(
        found.get(iso.AppArmorProfile) or pod.get(iso.AppArmorProfile), report
    )
    policy.selinux_context = _selinux(
        found.get(iso.SELinuxContext) or pod.get(iso.SELinuxContext), report
    )
    policy.limits = limits_of(found, report)
    policy.sysctls = sysctls_of(found, report)
    policy.devices = devices_of(found.own(DEVICES_ISOLATOR), report)
    policy.api_socket = api_socket_of(found.own(API_SOCKET_ISOLATOR), report)
    for name in found.unknown:
        report.ignore(name, "unknown isolator")
    return policy


def devices_of(value: Any, report: Report) -> list[DeviceSpec]:
    """``kurmad.io/devices``: ``{"devices": [{"path": "/dev/ttyS0", "access": "rw"}, ...]}``.
    Each path must be a device node on this host now; its type and numbers are taken from
    it, so the cgroup allows exactly that node."""
    if value is None:
        return []
    name = DEVICES_ISOLATOR
    entries = value.get("devices") if isinstance(value, dict) else None
    if not isinstance(entries, list) or not entries:
        raise IsolatorError(f'{name}: expected {{"devices": [{{"path": "/dev/..."}}, ...]}}')
    devices = [_device(entry, f"{name}: devices[{i}]") for i, entry in enumerate(entries)]
    report.enforced.append(name)
    return devices


def _device(entry: Any, where: str) -> DeviceSpec:
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
        raise IsolatorError(f"{where}: expected an object with a path")
    path, access = entry["path"], entry.get("access", "rw")
    if not path.startswith("/dev/") or "\0" in path or ".." in path.split("/"):
        raise IsolatorError(f"{where}: {path!r} is not a path under /dev")
    if (
        not isinstance(access, str)
        or not access
        or set(access) - set("rwm")
        or len(set(access)) != len(access)
    ):
        raise IsolatorError(f"{where}: access {access!r} must be letters of rwm, each once")
    try:
        info = os.stat(path)
    except OSError as err:
        raise IsolatorError(f"{where}: {path}: {err.strerror}") from None
    if not (stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)):
        raise IsolatorError(f"{where}: {path} is not a device node")
    kind = "c" if stat.S_ISCHR(info.st_mode) else "b"
    return DeviceSpec(path, kind, os.major(info.st_rdev), os.minor(info.st_rdev), access)


def api_socket_of(value: Any, report: Report) -> str | None:
    """``kurmad.io/api-socket``: ``{"path": "/run/kurmad.sock"}``, where the app finds the API."""
    if value is None:
        return None
    path = value.get("path") if isinstance(value, dict) else None
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path or path == "/":
        raise IsolatorError(f'{API_SOCKET_ISOLATOR}: expected {{"path": "/absolute/path"}}')
    report.enforced.append(API_SOCKET_ISOLATOR)
    return os.path.normpath(path)


def _capabilities(found: Found, report: Report) -> set[str]:
    retain = found.get(iso.CapabilitiesRetainSet)
    remove = found.get(iso.CapabilitiesRemoveSet)
    try:
        if retain is not None:
            capabilities.numbers(retain.set)
            report.enforced.append(iso.CapabilitiesRetainSet.NAME)
            return set(retain.set)
        if remove is not None:
            capabilities.numbers(remove.set)
            report.enforced.append(iso.CapabilitiesRemoveSet.NAME)
            return set(DEFAULT_CAPABILITIES) - set(remove.set)
    except capabilities.UnknownCapability as err:
        raise IsolatorError(str(err)) from None
    return set(DEFAULT_CAPABILITIES)


def _seccomp(found: Found, caps: set[str], report: Report) -> SeccompSpec | None:
    remove = found.get(iso.SeccompRemoveSet)
    retain = found.get(iso.SeccompRetainSet)
    chosen = remove or retain
    if not seccomp.supported():
        if chosen is not None:
            raise IsolatorError(f"{chosen.NAME}: seccomp filters are only built for x86_64")
        return None
    default = sorted(seccomp.default_blocked(caps))
    if chosen is None:
        return default_seccomp(caps)
    try:
        seccomp.check_names(chosen.set)
        seccomp.Filter(frozenset(), retain=False, errno=chosen.errno).action()
    except seccomp.SeccompError as err:
        raise IsolatorError(f"{chosen.NAME}: {err}") from None
    report.enforced.append(chosen.NAME)
    arguments = sorted(seccomp.argument_rules(caps))
    if retain is not None:
        return SeccompSpec(list(retain.set), retain=True, errno=retain.errno, arguments=arguments)
    assert remove is not None
    syscalls = sorted(set(remove.set) | set(default))
    return SeccompSpec(syscalls, retain=False, errno=remove.errno, arguments=arguments)


def default_seccomp(capabilities: Iterable[str]) -> SeccompSpec | None:
    """The filter of an app that asks for none: the default blocked calls, errno EPERM, and
    the argument rules its capabilities do not lift."""
    if not seccomp.supported():
        return None
    caps = set(capabilities)
    return SeccompSpec(
        sorted(seccomp.default_blocked(caps)),
        retain=False,
        errno="EPERM",
        arguments=sorted(seccomp.argument_rules(caps)),
    )


def filter_of(spec: SeccompSpec) -> seccomp.Filter:
    return seccomp.Filter(
        frozenset(spec.syscalls), spec.retain, spec.errno, frozenset(spec.arguments)
    )


def _apparmor(found: iso.AppArmorProfile | None, report: Report) -> str | None:
    if found is None:
        return None
    if not Path("/sys/kernel/security/apparmor").exists():
        report.ignore(iso.AppArmorProfile.NAME, "this host has no AppArmor")
        return None
    loaded = Path("/sys/kernel/security/apparmor/profiles").read_text()
    if not any(line.split(" (")[0] == found.profile for line in loaded.splitlines()):
        raise IsolatorError(f"AppArmor profile {found.profile!r} is not loaded on this host")
    report.enforced.append(iso.AppArmorProfile.NAME)
    return found.profile


def _selinux(found: iso.SELinuxContext | None, report: Report) -> str | None:
    if found is None:
        return None
    if not Path("/sys/fs/selinux/enforce").exists():
        report.ignore(iso.SELinuxContext.NAME, "this host has no SELinux")
        return None
    report.enforced.append(iso.SELinuxContext.NAME)
    return str(found)
