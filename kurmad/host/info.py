"""What the host is: name, kernel, CPUs, memory, uptime; and the boot stages when kurmad booted
it."""

from __future__ import annotations

import os
import platform
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from kurmad import __version__


@dataclass(frozen=True)
class BootStage:
    name: str
    started_at: float
    duration: float
    ok: bool
    error: str = ""
    critical: bool = False
    detail: str = ""


@dataclass(frozen=True)
class HostInfo:
    hostname: str
    kernel: str
    cpus: int
    memory_total: int
    memory_available: int
    uptime: float
    kurmad_version: str
    python_version: str
    mode: str
    os: str
    arch: str
    boot_stages: list[BootStage] = field(default_factory=list)
    time: float = 0.0  # the host's clock when this was taken


def meminfo() -> dict[str, int]:
    values = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                values[key] = int(parts[0]) * (1024 if parts[-1] == "kB" else 1)
    except OSError:
        pass
    return values


def uptime() -> float:
    try:
        return float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return time.monotonic()


def describe(mode: str, boot_stages: list[BootStage] | None = None) -> HostInfo:
    from kurmad.appc import host_os_arch  # here: PID 1 imports this module and must stay light

    memory = meminfo()
    os_name, arch = host_os_arch()
    return HostInfo(
        hostname=socket.gethostname(),
        kernel=platform.release(),
        cpus=os.cpu_count() or 1,
        memory_total=memory.get("MemTotal", 0),
        memory_available=memory.get("MemAvailable", 0),
        uptime=uptime(),
        kurmad_version=__version__,
        python_version=sys.version.split()[0],
        mode=mode,
        os=os_name,
        arch=arch,
        boot_stages=list(boot_stages or []),
        time=time.time(),
    )
