"""From appc isolators to what the executor enforces, and an account of each one: enforced,
or ignored and why (ace.md: an executor MAY ignore an isolator but MUST say so)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kurmad.appc import DEFAULT_CAPABILITIES, Isolator
from kurmad.appc import isolators as iso
from kurmad.linux import capabilities, seccomp
from kurmad.linux.cgroups import millicores_to_shares

from .spec import Limits, SeccompSpec

# Sysctls that belong to the pod's own namespaces; any other key would change the host.
_NAMESPACED_SYSCTL_PREFIXES = ("net.", "fs.mqueue.", "kernel.msg", "kernel.shm", "kernel.sem")


class IsolatorError(ValueError):
    """An isolator cannot be honoured and must not be ignored (the pod is refused)."""


@dataclass
class Report:
    enforced: list[str] = field(default_factory=list)
    ignored: list[dict[str, str]] = field(default_factory=list)

    def ignore(self, name: str, reason: str) -> None:
        self.ignored.append({"name": name, "reason": reason})

    def to_json(self) -> dict[str, object]:
        return {"enforced": self.enforced, "ignored": self.ignored}


@dataclass
class AppPolicy:
    capabilities: list[str]
    no_new_privileges: bool = False
    seccomp: SeccompSpec | None = None
    oom_score_adj: int | None = None
    apparmor_profile: str | None = None
    selinux_context: str | None = None
    limits: Limits = field(default_factory=Limits)
    sysctls: dict[str, str] = field(default_factory=dict)
    report: Report = field(default_factory=Report)


def limits_of(isolators: Sequence[Isolator], report: Report) -> Limits:
    memory = iso.find_isolator(isolators, iso.ResourceMemory)
    cpu = iso.find_isolator(isolators, iso.ResourceCPU)
    shares = iso.find_isolator(isolators, iso.CPUShares)
    bandwidth = iso.find_isolator(isolators, iso.ResourceBlockBandwidth)
    iops = iso.find_isolator(isolators, iso.ResourceBlockIOPS)
    for found, name in ((memory, "resource/memory"), (cpu, "resource/cpu"), (shares, "os/linux/cpu-shares"),
                        (bandwidth, "resource/block-bandwidth"), (iops, "resource/block-iops")):  # fmt: skip
        if found is not None:
            report.enforced.append(name)
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


def sysctls_of(isolators: Sequence[Isolator], report: Report) -> dict[str, str]:
    found = iso.find_isolator(isolators, iso.Sysctl)
    if found is None:
        return {}
    values = dict(found.values)
    for key in values:
        if not key.startswith(_NAMESPACED_SYSCTL_PREFIXES):
            raise IsolatorError(
                f"os/unix/sysctl: {key} is not namespaced and would change the host; refused"
            )
    report.enforced.append("os/unix/sysctl")
    return values


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
    for isolator in isolators:
        if not isolator.known:
            report.ignore(isolator.name, "unknown isolator")
    return policy


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
