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
from typing import Any

from kurmad.appc import DEFAULT_CAPABILITIES, Isolator
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


def limits_of(isolators: Sequence[Isolator], report: Report) -> Limits:
    """The cgroup limits the isolators ask for; a limit the kernel cannot honour (no memory
    to run in, no CPU time, a number no cgroup file takes) is refused."""
    memory = iso.find_isolator(isolators, iso.ResourceMemory)
    cpu = iso.find_isolator(isolators, iso.ResourceCPU)
    shares = iso.find_isolator(isolators, iso.CPUShares)
    bandwidth = iso.find_isolator(isolators, iso.ResourceBlockBandwidth)
    iops = iso.find_isolator(isolators, iso.ResourceBlockIOPS)
    for found, name in ((memory, "resource/memory"), (cpu, "resource/cpu"), (shares, "os/linux/cpu-shares"),
                        (bandwidth, "resource/block-bandwidth"), (iops, "resource/block-iops")):  # fmt: skip
        if found is not None:
            report.enforced.append(name)
    _check_limits(memory, cpu, bandwidth, iops)
    if iso.find_isolator(isolators, iso.ResourceNetworkBandwidth) is not None:
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


def sysctls_of(isolators: Sequence[Isolator], report: Report) -> dict[str, str]:
    """The sysctls to set in the pod. Keys outside the pod's namespaces are kept here: they
    need the admin role (pods/privileges.py), which decides."""
    found = iso.find_isolator(isolators, iso.Sysctl)
    if found is None:
        return {}
    values = dict(found.values)
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


def app_policy(isolators: Sequence[Isolator], pod_isolators: Sequence[Isolator]) -> AppPolicy:
    report = Report()
    caps = _capabilities(isolators, report)
    policy = AppPolicy(capabilities=sorted(caps), report=report)
    nnp = iso.find_isolator(isolators, iso.NoNewPrivileges)
    if nnp is not None:
        policy.no_new_privileges = nnp.enabled
        report.enforced.append(iso.NoNewPrivileges.NAME)
    policy.seccomp = _seccomp(isolators, caps, report)
    oom = iso.find_isolator(isolators, iso.OOMScoreAdj)
    if oom is not None:
        policy.oom_score_adj = oom.value
        report.enforced.append(iso.OOMScoreAdj.NAME)
    policy.apparmor_profile = _apparmor(isolators, pod_isolators, report)
    policy.selinux_context = _selinux(isolators, pod_isolators, report)
    policy.limits = limits_of(isolators, report)
    policy.sysctls = sysctls_of(isolators, report)
    policy.devices = devices_of(_raw(isolators, DEVICES_ISOLATOR), report)
    policy.api_socket = api_socket_of(_raw(isolators, API_SOCKET_ISOLATOR), report)
    for isolator in isolators:
        if not isolator.known and isolator.name not in (DEVICES_ISOLATOR, API_SOCKET_ISOLATOR):
            report.ignore(isolator.name, "unknown isolator")
    return policy


def _raw(isolators: Sequence[Isolator], name: str) -> Any:
    """The value of the last isolator named ``name`` (kurmad's own, which appc keeps raw)."""
    values = [i.value.to_json() for i in isolators if i.name == name]
    return values[-1] if values else None


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


def _capabilities(isolators: Sequence[Isolator], report: Report) -> set[str]:
    retain = iso.find_isolator(isolators, iso.CapabilitiesRetainSet)
    remove = iso.find_isolator(isolators, iso.CapabilitiesRemoveSet)
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


def _seccomp(isolators: Sequence[Isolator], caps: set[str], report: Report) -> SeccompSpec | None:
    remove = iso.find_isolator(isolators, iso.SeccompRemoveSet)
    retain = iso.find_isolator(isolators, iso.SeccompRetainSet)
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


def _apparmor(isolators: Sequence[Isolator], pod: Sequence[Isolator], report: Report) -> str | None:
    found = iso.find_isolator(isolators, iso.AppArmorProfile) or iso.find_isolator(
        pod, iso.AppArmorProfile
    )
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


def _selinux(isolators: Sequence[Isolator], pod: Sequence[Isolator], report: Report) -> str | None:
    found = iso.find_isolator(isolators, iso.SELinuxContext) or iso.find_isolator(
        pod, iso.SELinuxContext
    )
    if found is None:
        return None
    if not Path("/sys/fs/selinux/enforce").exists():
        report.ignore(iso.SELinuxContext.NAME, "this host has no SELinux")
        return None
    report.enforced.append(iso.SELinuxContext.NAME)
    return str(found)
