"""What PID 1 and the daemon it forks agree on: the options of a boot, and the exit statuses by
which the daemon asks, after its own orderly shutdown, for a poweroff or a reboot.

PID 1 imports only this, mounts.py, stages.py and the raw syscalls: it must come up before
/proc is mounted and stay small, and the daemon's heavy imports (gRPC, pyroute2) happen in the
daemon child alone."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

EXIT_POWEROFF = 10
EXIT_REBOOT = 11
EXIT_CODES = {"poweroff": EXIT_POWEROFF, "reboot": EXIT_REBOOT}
ACTIONS = {code: action for action, code in EXIT_CODES.items()}
DEFAULT_CONFIG_FILE = Path("/etc/kurma.yml")


@dataclass(frozen=True)
class BootOptions:
    config_file: Path = DEFAULT_CONFIG_FILE
    cmdline: str | None = None  # None: the kernel's, from /proc/cmdline
    resolv_conf: Path = Path("/etc/resolv.conf")
