"""``kurmad boot`` after PID 1 has forked it: the boot sequence, the API, the system pods, and
at the end an orderly shutdown. PID 1 (host/init.py) learns what to do next from the exit
status: EXIT_POWEROFF or EXIT_REBOOT after a clean shutdown, anything else is a crash it
restarts us after.

Both sequences are tables, read top to bottom (as Talos's v1alpha1_sequencer.go); the stage
bodies are in host/tasks.py."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

from . import tasks
from .control import Host
from .info import BootStage
from .power import EXIT_CODES, BootOptions
from .stages import BootSequence, Stage
from .tasks import BootState, Serve

# If the configured API cannot start, the boot goes on with this one (or not at all).
FALLBACK_API = Stage("api (fallback)", tasks.start_fallback_api, critical=True)

BOOT: tuple[Stage[BootState], ...] = (
    Stage("config", tasks.load_config),
    Stage("modules", tasks.load_modules),
    Stage("oem-config", tasks.load_oem_config),
    Stage("cgroups", tasks.mount_cgroups),
    Stage("disks", tasks.prepare_disks),
    Stage("hostname", tasks.set_hostname),
    Stage("network", tasks.configure_network),
    Stage("api", tasks.start_api, fallback=FALLBACK_API),
    Stage("images", tasks.import_images),
    Stage("system-pods", tasks.start_system_pods),
)

SHUTDOWN: tuple[Stage[BootState], ...] = (
    Stage("stop system pod supervision", tasks.stop_supervision, when=tasks.supervising),
    Stage("stop pods", tasks.stop_pods, when=tasks.serving),
    Stage("stop api", tasks.stop_api, when=tasks.serving),
    Stage("stop hotplug", tasks.stop_hotplug, when=tasks.hotplugging),
    Stage("release dhcp leases", tasks.release_leases, when=tasks.networking),
    Stage("sync", tasks.sync),
    Stage("unmount disks", tasks.unmount_disks),
)


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
        self.console = console
        self.sequence = BootSequence(console, list(early or []))
        self.host = BootHost(self.sequence)
        self.state = BootState(options, serve, console, self.host)

    def run(self) -> int:
        """The whole life: boot, serve until a power request, shut down."""
        signal.signal(signal.SIGTERM, lambda *_: self.host.request("poweroff"))
        signal.signal(signal.SIGINT, lambda *_: self.host.request("reboot"))
        began = time.monotonic()
        self.sequence.run_stages(BOOT, self.state, debug=lambda state: state.config.debug)
        self.console(f"boot finished in {time.monotonic() - began:.2f}s: "
                     f"{sum(not r.ok for r in self.sequence.records)} stage(s) failed")  # fmt: skip
        action = self.host.wait_for_power_request()
        self.shut_down(action)
        return EXIT_CODES[action]

    def shut_down(self, action: str) -> None:
        """Each step is logged and none stops the others."""
        self.console(f"{action} requested: shutting down")
        BootSequence(self.console).run_stages(SHUTDOWN, self.state)
