"""``kurmad boot`` after PID 1 has forked it: the boot sequence, the API, the system pods, and
at the end an orderly shutdown. PID 1 (host/init.py) learns what to do next from the exit
status: EXIT_POWEROFF or EXIT_REBOOT after a clean shutdown, anything else is a crash it
restarts us after.

The API server sits above host/ (api → host), so the entry point hands us a factory for it
(``Serve``) instead of this module importing it."""

from __future__ import annotations

import contextlib
import copy
import glob
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from kurmad.linux import syscalls as sc

from . import config as boot_config
from . import disks, modules, mounts
from .control import Host
from .info import BootStage
from .power import EXIT_CODES, BootOptions
from .stages import BootSequence, StageFailed

if TYPE_CHECKING:  # heavy (pyroute2, the pod manager): imported where they are used
    from kurmad.images.store import ImageStore
    from kurmad.net.host import HostNetwork
    from kurmad.pods.events import EventBus
    from kurmad.pods.manager import PodManager
    from kurmad.pods.supervisor import Supervisor

SHUTDOWN_GRACE = 10.0
OEM_MOUNT = Path("/run/kurma/oem")
OEM_WAIT = 0.0  # drivers probe during init_module: after coldplug the disks are there
FALLBACK_STATE_DIR = Path("/run/kurmad")


@dataclass(frozen=True)
class ApiSettings:
    state_dir: Path
    listen: str | None
    insecure: bool
    tls_dir: Path | None
    cgroup_parent: str
    networks: tuple[dict[str, Any], ...] = ()  # pod networks; the first is the default
    host_volumes: tuple[Path, ...] = ()  # where any operator may mount host paths from


class Services(Protocol):
    """The API server with the store and the pod manager behind it (api.server.Daemon)."""

    endpoints: list[str]
    store: ImageStore
    manager: PodManager
    events: EventBus

    def start(self) -> None: ...

    def stop(self, grace: float = 5.0) -> None: ...


Serve = Callable[[ApiSettings, Host], Services]


class BootHost(Host):
    """The host as kurmad boot owns it: its boot stages, and the power of the machine."""

    mode = "boot"

    def __init__(self, sequence: BootSequence) -> None:
        super().__init__()
        self.sequence = sequence
        self.action = ""
        self._requested = threading.Event()

    def boot_stages(self) -> list[BootStage]:
        return self.sequence.stages()

    def reboot(self) -> None:
        self.request("reboot")

    def poweroff(self) -> None:
        self.request("poweroff")

    def request(self, action: str) -> None:
        """The first request wins: a poweroff during a reboot's shutdown stays a reboot."""
        if not self.action:
            self.action = action
        self._requested.set()

    def wait_for_power_request(self) -> str:
        self._requested.wait()
        return self.action


class Boot:
    def __init__(
        self,
        options: BootOptions,
        serve: Serve,
        console: Callable[[str], None],
        early: list[BootStage] | None = None,
    ) -> None:
        self.options = options
        self.serve = serve
        self.console = console
        self.sequence = BootSequence(console, list(early or []))
        self.host = BootHost(self.sequence)
        self.loaded = boot_config.LoadedConfig(copy.deepcopy(boot_config.DEFAULTS))
        self.module_index: modules.ModuleIndex | None = None
        self.hotplug: modules.Hotplug | None = None
        self.network: HostNetwork | None = None
        self.daemon: Services | None = None
        self.supervisor: Supervisor | None = None
        self.mounted_disks: list[str] = []

    @property
    def config(self) -> dict[str, Any]:
        return self.loaded.values

    @property
    def state_dir(self) -> Path:
        return Path(self.config["state_dir"])

    # -- the whole life ---------------------------------------------------------------------------

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: self.host.request("poweroff"))
        signal.signal(signal.SIGINT, lambda *_: self.host.request("reboot"))
        began = time.monotonic()
        self.bring_up()
        self.console(f"boot finished in {time.monotonic() - began:.2f}s: "
                     f"{sum(not r.ok for r in self.sequence.records)} stage(s) failed")  # fmt: skip
        action = self.host.wait_for_power_request()
        self.shut_down(action)
        return EXIT_CODES[action]

    def bring_up(self) -> None:
        stage = self._stage
        stage("config", self.load_config)
        stage("modules", self.load_modules)
        stage("oem-config", self.load_oem_config)
        stage("cgroups", lambda: mounts.mount_cgroups(self.config["cgroups"]))
        stage("disks", self.prepare_disks)
        stage("hostname", self.set_hostname)
        stage("network", self.configure_network)
        if stage("api", self.start_api) is None:
            self.sequence.run("api (fallback)", self.start_fallback_api, critical=True)
        stage("images", self.import_images)
        stage("system-pods", self.start_system_pods)

    def _stage(self, name: str, action: Callable[[], Any]) -> Any:
        return self.sequence.run(name, action, debug=bool(self.config.get("debug")))

    # -- the stages -------------------------------------------------------------------------------

    def _cmdline(self) -> str:
        if self.options.cmdline is not None:
            return self.options.cmdline
        try:
            return Path("/proc/cmdline").read_text()
        except OSError:
            return ""

    def load_config(self, oem_file: Path | None = None) -> str:
        """Merge the layers; report the errors this stage has not reported already (the OEM
        stage merges everything again, the command line's mistakes included)."""
        reported = set(self.loaded.errors)
        self.loaded = boot_config.load(self.options.config_file, self._cmdline(), oem_file)
        sources = f"from {', '.join(self.loaded.sources)}"
        new = [e for e in self.loaded.errors if e not in reported]
        if new:
            raise StageFailed("; ".join(new), sources)
        return sources

    def load_modules(self) -> str:
        wanted, hardware = self.config["modules"], self.config["hardware"]
        if not wanted and not hardware["coldplug"] and not hardware["hotplug"]:
            return "none asked for"
        try:
            self.module_index = modules.ModuleIndex.for_running_kernel()
        except modules.ModuleError as err:
            names = [*wanted, *(["coldplug"] if hardware["coldplug"] else [])]
            raise StageFailed("; ".join(f"{n}: {err}" for n in names) or str(err)) from None
        report = self.module_index.load_all(wanted)
        if hardware["coldplug"]:
            found = modules.coldplug(self.module_index)
            report.loaded += found.loaded
            report.failed.update(found.failed)
        if hardware["hotplug"] and self.hotplug is None:
            self.hotplug = modules.Hotplug(self.module_index, self._hotplug_report)
            self.hotplug.start()
        detail = f"loaded {len(report.loaded)}: {' '.join(report.loaded) or '-'}" + (
            "; hotplug on" if self.hotplug else ""
        )
        if report.failed:
            raise StageFailed("; ".join(f"{m}: {why}" for m, why in report.failed.items()), detail)
        return detail

    def _hotplug_report(self, line: str) -> None:
        """A device that came after boot: on the console, and to whoever follows the events."""
        self.console(line)
        if self.daemon is not None:
            self.daemon.events.emit("host", "hotplug", "", socket.gethostname(), message=line)

    def load_oem_config(self) -> str:
        try:
            disk = disks.find({"label": boot_config.OEM_LABEL}, wait=OEM_WAIT)
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
        modules_before = list(self.config["modules"])
        detail = self.load_config(oem_file)
        added = [m for m in self.config["modules"] if m not in modules_before]
        if added and self.module_index is not None:
            report = self.module_index.load_all(added)
            if report.failed:
                raise StageFailed(
                    "; ".join(f"{m}: {why}" for m, why in report.failed.items()), detail
                )
        return detail

    def prepare_disks(self) -> str:
        lines, problems = [], []
        for i, entry in enumerate(self.config["disks"]):
            entry = dict(entry)
            if entry.get("state") and not entry.get("mount"):
                entry["mount"] = str(self.state_dir)
            try:
                _, line = disks.prepare(entry)
            except disks.DiskAbsent as err:
                if entry.get("optional"):
                    lines.append(f"{err} (optional)")
                else:
                    problems.append(f"disks[{i}]: {err}")
                continue
            except (disks.DiskError, OSError) as err:
                problems.append(f"disks[{i}]: {err}")
                continue
            lines.append(line)
            if entry.get("mount"):
                self.mounted_disks.append(entry["mount"])
            if entry.get("state"):
                self.config["state_dir"] = entry["mount"]
        detail = "; ".join(lines) or "no disks configured"
        if problems:
            raise StageFailed("; ".join(problems), f"{detail}; state in {self.state_dir}")
        return detail

    def set_hostname(self) -> str:
        socket.sethostname(self.config["hostname"])
        return self.config["hostname"]

    def configure_network(self) -> str:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.network is None:
            from kurmad.net.host import HostNetwork

            self.network = HostNetwork(self.state_dir, self.options.resolv_conf)
        return self.network.configure(self.config["network"], self.config["hostname"])

    def start_api(self, state_dir: Path | None = None) -> str:
        api = self.config["api"]
        settings = ApiSettings(
            state_dir=state_dir or self.state_dir,
            listen=api.get("listen") or None,
            insecure=bool(api.get("insecure")),
            tls_dir=Path(api["tls_dir"]) if api.get("tls_dir") else None,
            cgroup_parent=self.config["cgroup_parent"],
            networks=tuple(self.config["pod_networks"]),
            host_volumes=tuple(Path(p) for p in api.get("allow_host_volumes", [])),
        )
        self.daemon = self.serve(settings, self.host)
        self.daemon.start()
        return "serving on " + ", ".join(self.daemon.endpoints)

    def start_fallback_api(self) -> str:
        """The configured API could not start (a bad state disk, a port in use, no TLS): serve
        the local socket from memory, so the console and the host's own pods still reach it."""
        self.config["state_dir"] = str(FALLBACK_STATE_DIR)
        self.config["api"] = {**self.config["api"], "listen": ""}
        return self.start_api(FALLBACK_STATE_DIR)

    def import_images(self) -> str:
        """The images the config lists (globs allowed), through the store the API uses."""
        assert self.daemon is not None
        paths = [
            p for pattern in self.config["images"] for p in sorted(glob.glob(pattern)) or [pattern]
        ]
        imported, problems = [], []
        for path in paths:
            try:
                with open(path, "rb") as source:
                    result = self.daemon.store.import_stream(source)
            except OSError as err:
                problems.append(f"{path}: {err.strerror or err}")
                continue
            except Exception as err:  # a bad image is reported; the others still come in
                problems.append(f"{path}: {err}")
                continue
            record = result.record
            if result.created:
                self.daemon.events.emit("image", "imported", record.id, record.name)
            imported.append(record.name + ("" if result.created else " (already there)"))
        detail = f"{len(imported)} image(s): {', '.join(imported) or '-'}"
        if problems:
            raise StageFailed("; ".join(problems), detail)
        return detail

    def start_system_pods(self) -> str:
        assert self.daemon is not None
        entries = self.config["initial_pods"]
        if not entries:
            return "none configured"
        from kurmad.pods.supervisor import Supervisor

        self.supervisor = Supervisor(self.daemon.manager, entries, self.daemon.events, self.console)
        self.supervisor.start()
        status = self.supervisor.wait_first_start(timeout=60)
        detail = "; ".join(f"{name}: {what}" for name, what in status.items())
        if any(what != "running" for what in status.values()):
            raise StageFailed("not every system pod is running (kurmad keeps trying)", detail)
        return detail

    # -- the end ----------------------------------------------------------------------------------

    def shut_down(self, action: str) -> None:
        """Stop the system pods' supervisor, stop every pod with a grace period, stop the API,
        give the DHCP leases back, and unmount the disks. Each step is logged and none stops
        the others."""
        self.console(f"{action} requested: shutting down")
        steps = BootSequence(self.console)
        if self.supervisor is not None:
            steps.run("stop system pod supervision", self.supervisor.stop)
        if self.daemon is not None:
            steps.run("stop pods", self.stop_pods)
            steps.run("stop api", lambda: self.daemon.stop(grace=2) if self.daemon else None)
        if self.hotplug is not None:
            steps.run("stop hotplug", self.hotplug.stop)
        if self.network is not None:
            steps.run("release dhcp leases", self.network.release)
        steps.run("sync", os.sync)
        steps.run("unmount disks", self.unmount_disks)

    def stop_pods(self) -> str:
        assert self.daemon is not None
        manager = self.daemon.manager
        active = [p for p in manager.pods() if p.state.active]
        with futures.ThreadPoolExecutor(max_workers=max(len(active), 1)) as pool:
            stopped = list(pool.map(lambda p: manager.stop(p.uuid, grace=SHUTDOWN_GRACE), active))
        return f"{len(stopped)} pod(s) stopped"

    def unmount_disks(self) -> str:
        problems = []
        for target in reversed(self.mounted_disks):
            try:
                sc.umount(target)
            except OSError as err:
                with contextlib.suppress(OSError):
                    sc.umount(target, sc.MNT_DETACH)
                problems.append(f"{target}: {err.strerror} (detached)")
        if problems:
            raise StageFailed("; ".join(problems))
        return f"{len(self.mounted_disks)} unmounted"
