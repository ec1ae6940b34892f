"""The host as the API sees it: what it is, and whether kurmad may reboot or power it off."""

from __future__ import annotations

from .info import BootStage, HostInfo, describe


class PowerNotAllowed(Exception):
    """This kurmad does not own the machine's power."""


class Host:
    """``kurmad serve``: a daemon on someone else's machine. It reports the host but leaves
    its power alone. ``kurmad boot`` (host/boot.py) is a Host that owns the machine."""

    mode = "serve"

    def info(self) -> HostInfo:
        return describe(self.mode, self.boot_stages())

    def boot_stages(self) -> list[BootStage]:
        return []

    def reboot(self) -> None:
        raise PowerNotAllowed(
            "kurmad serve does not reboot the machine it runs on (only kurmad boot, as PID 1, does)"
        )

    def poweroff(self) -> None:
        raise PowerNotAllowed(
            "kurmad serve does not power off the machine it runs on (only kurmad boot, as PID 1, does)"
        )
