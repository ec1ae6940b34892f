"""The bodies of the boot and shutdown stages; host/boot.py declares their order. Each takes
the boot's state, does one thing and returns what it did, a line for the console and Host.Info
(StageFailed: what went wrong, and what it did all the same).

The config a stage reads is never changed once loaded: what the stages decide at run time (the
disk that holds the state, the fallback API) is kept in BootState beside it."""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import socket
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from kurmad.linux import syscalls as sc

from . import config as boot_config
from . import disks, modules, mounts
from .control import Host
from .power import BootOptions
from .sections import DiskConfig, DiskMatch, InitialPod
from .stages import StageFailed

if TYPE_CHECKING:  # heavy (pyroute2, the pod manager, gRPC's face): imported where they are used
    from kurmad.core import Core, Face, Settings
    from kurmad.net.host import HostNetwork
    from kurmad.pods.supervisor import SupervisedPod, Supervisor

SHUTDOWN_GRACE = 10.0
OEM_MOUNT = Path("/run/kurma/oem")
OEM_WAIT = 0.0  # drivers probe during init_module: after coldplug the disks are there
FALLBACK_STATE_DIR = Path("/run/kurmad")

# The face the entry point builds over the core: the gRPC API, which sits above host/ (api →
# host), so __main__.py hands the boot this instead of host/ importing api/.
Serve = Callable[["Core", Host], "Face"]


@dataclass
class BootState:
    """One boot: what it was asked (its options, the merged config) and what its stages found
    and made."""

    options: BootOptions
    serve: Serve
    console: Callable[[str], None]
    host: Host
    loaded: boot_config.LoadedConfig = field(default_factory=boot_config.LoadedConfig)
    state_disk: Path | None = None  # where the disk marked ``state: true`` is mounted
    fallback_api: bool = False  # the configured API could not start: the fallback serves
    mounted_disks: list[str] = field(default_factory=list)
    module_index: modules.ModuleIndex | None = None
    hotplug: modules.Hotplug | None = None
    network: HostNetwork | None = None
    core: Core | None = None
    server: Face | None = None
    supervisor: Supervisor | None = None

    @property
    def config(self) -> boot_config.BootConfig:
        return self.loaded.config

    @property
    def state_dir(self) -> Path:
        """The fallback's, else the state disk's, else the configured one."""
        if self.fallback_api:
            return FALLBACK_STATE_DIR
        return self.state_disk or self.config.state_dir


# -- config and modules ---------------------------------------------------------------------------


def load_config(state: BootState, oem_file: Path | None = None) -> str:
    """Merge the layers; report the errors this stage has not reported already (the OEM
    stage merges everything again, the command line's mistakes included)."""
    reported = set(state.loaded.errors)
    state.loaded = boot_config.load(state.options.config_file, _cmdline(state.options), oem_file)
    sources = f"from {', '.join(state.loaded.sources)}"
    new = [e for e in state.loaded.errors if e not in reported]
    if new:
        raise StageFailed("; ".join(new), sources)
    return sources


def _cmdline(options: BootOptions) -> str:
    if options.cmdline is not None:
        return options.cmdline
    try:
        return Path("/proc/cmdline").read_text()
    except OSError:
        return ""


def load_modules(state: BootState) -> str:
    wanted, hardware = list(state.config.modules), state.config.hardware
    if not wanted and not hardware.coldplug and not hardware.hotplug:
        return "none asked for"
    try:
        state.module_index = modules.ModuleIndex.for_running_kernel()
    except modules.ModuleError as err:
        names = [*wanted, *(["coldplug"] if hardware.coldplug else [])]
        raise StageFailed("; ".join(f"{n}: {err}" for n in names) or str(err)) from None
    report = state.module_index.load_all(wanted)
    if hardware.coldplug:
        found = modules.coldplug(state.module_index)
        report.loaded += found.loaded
        report.failed.update(found.failed)
    if hardware.hotplug and state.hotplug is None:
        state.hotplug = modules.Hotplug(state.module_index, functools.partial(_hotplug, state))
        state.hotplug.start()
    detail = f"loaded {len(report.loaded)}: {' '.join(report.loaded) or '-'}" + (
        "; hotplug on" if state.hotplug else ""
    )
    if report.failed:
        raise StageFailed(_failures(report.failed), detail)
    return detail


def _failures(failed: dict[str, str]) -> str:
    return "; ".join(f"{module}: {why}" for module, why in failed.items())


def _hotplug(state: BootState, line: str) -> None:
    """A device that came after boot: on the console, and to whoever follows the events."""
    state.console(line)
    if state.core is not None:
        state.core.events.emit("host", "hotplug", "", socket.gethostname(), message=line)


def load_oem_config(state: BootState) -> str:
    try:
        disk = disks.find(DiskMatch("label", boot_config.OEM_LABEL), wait=OEM_WAIT)
    except disks.DiskError:
        return f"no OEM disk (LABEL={boot_config.OEM_LABEL})"
    OEM_MOUNT.mkdir(parents=True, exist_ok=True)
    if not mounts.mounted(str(OEM_MOUNT)):
        sc.mount(
            disk.device, str(OEM_MOUNT), disk.fstype, sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV
        )
    oem_file = OEM_MOUNT / boot_config.OEM_FILE
    if not oem_file.exists():
        return f"{disk.device} has no {boot_config.OEM_FILE}"
    modules_before = state.config.modules
    detail = load_config(state, oem_file)
    added = [m for m in state.config.modules if m not in modules_before]
    if added and state.module_index is not None:
        report = state.module_index.load_all(added)
        if report.failed:
            raise StageFailed(_failures(report.failed), detail)
    return detail


# -- the machine ----------------------------------------------------------------------------------


def mount_cgroups(state: BootState) -> str:
    return mounts.mount_cgroups(state.config.cgroups)


def prepare_disks(state: BootState) -> str:
    lines, problems = [], []
    for i, disk in enumerate(state.config.disks):
        if disk.state and not disk.mount:
            disk = replace(disk, mount=str(state.state_dir))
        try:
            lines.append(_prepare_disk(state, disk))
        except disks.DiskAbsent as err:
            if disk.optional:
                lines.append(f"{err} (optional)")
            else:
                problems.append(f"disks[{i}]: {err}")
        except (disks.DiskError, OSError) as err:
            problems.append(f"disks[{i}]: {err}")
    detail = "; ".join(lines) or "no disks configured"
    if problems:
        raise StageFailed("; ".join(problems), f"{detail}; state in {state.state_dir}")
    return detail


def _prepare_disk(state: BootState, disk: DiskConfig) -> str:
    _, line = disks.prepare(disk)
    if disk.mount:
        state.mounted_disks.append(disk.mount)
        if disk.state:
            state.state_disk = Path(disk.mount)
    return line


def set_hostname(state: BootState) -> str:
    socket.sethostname(state.config.hostname)
    return state.config.hostname


def configure_network(state: BootState) -> str:
    state.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if state.network is None:
        from kurmad.net.host import HostNetwork

        state.network = HostNetwork(state.state_dir, state.options.resolv_conf)
    return state.network.configure(state.config.network, state.config.hostname)


# -- the core and its API -------------------------------------------------------------------------


def api_settings(state: BootState) -> Settings:
    """The core's settings from the boot config, in the state directory the boot chose."""
    from kurmad.core import Settings

    api = state.config.api
    return Settings(
        state_dir=state.state_dir,
        listen=None if state.fallback_api else api.listen or None,
        insecure=api.insecure,
        tls_dir=Path(api.tls_dir) if api.tls_dir else None,
        cgroup_parent=state.config.cgroup_parent,
        networks=state.config.pod_networks,
        host_volumes=tuple(Path(p) for p in api.allow_host_volumes),
        strict_images=state.config.strict_images,
        registries=state.config.registries,
    )


def start_api(state: BootState) -> str:
    """Build the core and serve it; a core whose API cannot start is let go again."""
    from kurmad.core import Core

    core = Core(api_settings(state))
    try:
        server = state.serve(core, state.host)
        server.start()
    except BaseException:
        core.close()
        raise
    state.core, state.server = core, server
    return "serving on " + ", ".join(server.endpoints)


def start_fallback_api(state: BootState) -> str:
    """The configured API could not start (a bad state disk, a port in use, no TLS): serve
    the local socket from memory, so the console and the host's own pods still reach it."""
    state.fallback_api = True
    return start_api(state)


def import_images(state: BootState) -> str:
    """The images the config lists (globs allowed), through the core's door, as an API
    import comes in."""
    assert state.core is not None
    paths = [p for pattern in state.config.images for p in sorted(glob.glob(pattern)) or [pattern]]
    imported, problems = [], []
    for path in paths:
        try:
            with open(path, "rb") as source:
                result = state.core.import_image(source)
        except OSError as err:
            problems.append(f"{path}: {err.strerror or err}")
            continue
        except Exception as err:  # a bad image is reported; the others still come in
            problems.append(f"{path}: {err}")
            continue
        imported.append(result.record.name + ("" if result.created else " (already there)"))
    detail = f"{len(imported)} image(s): {', '.join(imported) or '-'}"
    if problems:
        raise StageFailed("; ".join(problems), detail)
    return detail


def start_system_pods(state: BootState) -> str:
    assert state.core is not None
    if not state.config.initial_pods:
        return "none configured"
    from kurmad.pods.supervisor import Supervisor

    core = state.core
    pods = [_supervised(pod) for pod in state.config.initial_pods]
    state.supervisor = Supervisor(core.manager, core.create_pod, pods, core.events, state.console)
    state.supervisor.start()
    status = state.supervisor.wait_first_start(timeout=60)
    detail = "; ".join(f"{name}: {what}" for name, what in status.items())
    if any(what != "running" for what in status.values()):
        raise StageFailed("not every system pod is running (kurmad keeps trying)", detail)
    return detail


def _supervised(pod: InitialPod) -> SupervisedPod:
    """A config entry as the supervisor keeps it: a manifest, or a run request as kurmactl
    run would send for the image."""
    from kurmad.pods.builder import RunRequest
    from kurmad.pods.supervisor import SupervisedPod

    if pod.manifest is not None:
        return SupervisedPod(pod.name, pod.restart, pod.manifest)
    run = RunRequest(
        image=pod.image or "", exec=list(pod.exec), env=dict(pod.env), volumes=list(pod.volumes),
        host_network=pod.host_network, devices=list(pod.devices),
    )  # fmt: skip
    return SupervisedPod(pod.name, pod.restart, run)


# -- the end --------------------------------------------------------------------------------------


def supervising(state: BootState) -> bool:
    return state.supervisor is not None


def serving(state: BootState) -> bool:
    return state.server is not None


def hotplugging(state: BootState) -> bool:
    return state.hotplug is not None


def networking(state: BootState) -> bool:
    return state.network is not None


def stop_supervision(state: BootState) -> None:
    assert state.supervisor is not None
    state.supervisor.stop()


def stop_pods(state: BootState) -> str:
    assert state.core is not None
    manager = state.core.manager
    active = [p for p in manager.pods() if p.state.active]
    with futures.ThreadPoolExecutor(max_workers=max(len(active), 1)) as pool:
        stopped = list(pool.map(lambda p: manager.stop(p.uuid, grace=SHUTDOWN_GRACE), active))
    return f"{len(stopped)} pod(s) stopped"


def stop_api(state: BootState) -> None:
    """Stop serving; the server closes the core (pods keep running, stopped already)."""
    assert state.server is not None
    state.server.stop(grace=2)


def stop_hotplug(state: BootState) -> None:
    assert state.hotplug is not None
    state.hotplug.stop()


def release_leases(state: BootState) -> None:
    assert state.network is not None
    state.network.release()


def sync(state: BootState) -> None:
    os.sync()


def unmount_disks(state: BootState) -> str:
    problems = []
    for target in reversed(state.mounted_disks):
        try:
            sc.umount(target)
        except OSError as err:
            with contextlib.suppress(OSError):
                sc.umount(target, sc.MNT_DETACH)
            problems.append(f"{target}: {err.strerror} (detached)")
    if problems:
        raise StageFailed("; ".join(problems))
    return f"{len(state.mounted_disks)} unmounted"
