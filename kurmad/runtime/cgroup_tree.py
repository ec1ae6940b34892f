"""The cgroups of pods: below kurmad's parent one per pod (its limits, its device list, its
process limit), a leaf for its pod init and one per app (the app's own limits and devices).

    <parent>/<pod uuid>/init       the pod init
    <parent>/<pod uuid>/<app>      each app, and what is entered into it

A pod's device list holds every app's devices and is set before its leaves exist: a v1 child
starts from its parent's list, and a v2 pod's program bounds every leaf. A leaf whose own list
is narrower (an app given fewer devices than another) narrows it."""

from __future__ import annotations

import contextlib
from pathlib import Path

from kurmad.linux.cgroups import DEFAULT_DEVICES, Cgroup, CgroupDriver, CgroupError, DeviceRule

from .spec import AppSpec, Limits

INIT_LEAF = "init"


class PodCgroups:
    def __init__(self, parent: str, pids_limit: int | None) -> None:
        self.driver = CgroupDriver(parent)
        self.pids_limit = pids_limit

    def make(self, pod_uuid: str, limits: Limits, apps: list[AppSpec]) -> dict[str, list[str]]:
        """Create the pod's cgroups; the cgroup.procs files each leaf is joined through, by
        leaf ("init", or an app's name)."""
        pod = self.driver.create(pod_uuid)
        apply_limits(pod, limits)
        if self.pids_limit is not None:
            pod.set_pids_limit(self.pids_limit)
        union = frozenset([*DEFAULT_DEVICES, *(r for app in apps for r in device_rules(app))])
        pod.set_devices(_ordered(union))
        procs = {INIT_LEAF: self._leaf(pod, INIT_LEAF, Limits(), union, [])}
        for app in apps:
            procs[app.name] = self._leaf(pod, app.name, app.limits, union, device_rules(app))
        return procs

    def _leaf(self, pod: Cgroup, name: str, limits: Limits, pods_devices: frozenset[DeviceRule],
              devices: list[DeviceRule]) -> list[str]:  # fmt: skip
        leaf = self.driver.create(f"{pod.relative}/{name}")
        apply_limits(leaf, limits)
        own = frozenset([*DEFAULT_DEVICES, *devices])
        if own != pods_devices:
            leaf.set_devices(_ordered(own))
        return [str(d / "cgroup.procs") for d in leaf.all_dirs]

    def cgroup(self, pod_uuid: str, leaf: str | None = None) -> Cgroup:
        return self.driver.cgroup(pod_uuid if leaf is None else f"{pod_uuid}/{leaf}")

    def remove(self, pod_uuid: str) -> None:
        """The pod's cgroups, with whatever still runs in them (errors left: a later start of
        kurmad tries again). Only ever a pod of this kurmad's own state: another may share the
        cgroup parent."""
        if not pod_uuid:
            return  # never the parent itself
        with contextlib.suppress(CgroupError, OSError):
            self.driver.cgroup(pod_uuid).remove()


def device_rules(app: AppSpec) -> list[DeviceRule]:
    return [DeviceRule(d.kind, d.major, d.minor, d.access) for d in app.devices]


def _ordered(rules: frozenset[DeviceRule]) -> list[DeviceRule]:
    return sorted(rules, key=DeviceRule.to_text)


def apply_limits(group: Cgroup, limits: Limits) -> None:
    if limits.memory is not None:
        group.set_memory_limit(limits.memory)
    if limits.cpu_millicores is not None or limits.cpu_shares is not None:
        group.set_cpu(limits.cpu_millicores, limits.cpu_shares)
    if limits.io_bps is not None or limits.io_iops is not None:
        group.set_io_limits(whole_block_devices(), limits.io_bps, limits.io_iops)


def whole_block_devices(sys_block: Path = Path("/sys/block")) -> list[str]:
    """MAJ:MIN of every whole block device (resource/block-* isolators apply to all); loop and
    RAM disks are not disks."""
    devices = []
    for entry in sys_block.iterdir():
        if entry.name.startswith(("loop", "ram", "zram")):
            continue
        with contextlib.suppress(OSError):
            devices.append((entry / "dev").read_text().strip())
    return devices
