"""Booting the built initramfs in QEMU for the vm-tests, and reaching it as a user would:
through the forwarded API port with the admin bundle."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from initrd.kernel import fetch
from initrd.vm import Vm, free_port, make_data_disk, provision
from kurmad.api.v1 import kurma_pb2 as pb
from kurmad.client import Client, KurmaError

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "build"
INITRAMFS = BUILD / "initramfs.cpio.zst"
KURMACTL = [sys.executable, "-m", "kurmad.cli.kurmactl"]
WEB_PORT = 8080  # forwarded from a free host port, for a pod to publish
BOOT_TIMEOUT = 240.0  # TCG on a shared machine: generous, a hang still fails


@dataclass
class Booted:
    vm: Vm
    admin: Path
    workdir: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.vm.port}"

    def client(self, timeout: float = 60) -> Client:
        return Client(self.address, self.admin, timeout=timeout)

    def kurmactl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*KURMACTL, "--host", self.address, "--tls-dir", str(self.admin), *args],
                              capture_output=True, text=True, timeout=timeout)  # fmt: skip

    def info(self) -> pb.HostInfo:
        with self.client(timeout=5) as client:
            return client.info()

    def wait_booted(self, after: pb.HostInfo | None = None) -> pb.HostInfo:
        """Host.Info once every boot stage has run (and, given the Host.Info of an earlier
        boot, from a later boot: its first stage started later. Uptimes cannot tell: a slow
        second boot can be older than the first was when it was asked)."""

        def finished() -> pb.HostInfo | None:
            info = self.info()
            done = any(s.name == "system-pods" for s in info.boot_stages)
            fresh = after is None or _booted_at(info) > _booted_at(after)
            return info if done and fresh else None

        return self.vm.wait_for(finished, BOOT_TIMEOUT, "a booted kurmad")  # type: ignore[return-value]

    def wait_down(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.info()
            except KurmaError:
                return
            time.sleep(0.2)
        raise TimeoutError("the API never went away")


def boot(workdir: Path, *, data: bool, append: str = "",
         oem: dict[str, object] | None = None) -> Booted:  # fmt: skip
    """A VM booted from the built initramfs; ``oem``: more sections for its OEM kurma.yml."""
    workdir.mkdir(parents=True, exist_ok=True)
    kernel = fetch(BUILD)
    oem_disk, admin = provision(workdir, extra=oem)
    disks = [make_data_disk(workdir / "data.img", 512 * 2**20)] if data else []
    vm = Vm(kernel.vmlinuz, INITRAMFS, free_port(), console=workdir / "console.log", oem=oem_disk,
            disks=disks, append=append, monitor=workdir / "monitor.sock",
            forwards={free_port(): WEB_PORT})  # fmt: skip
    return Booted(vm.start(), admin, workdir)


def _booted_at(info: pb.HostInfo) -> float:
    return min((s.started_at for s in info.boot_stages), default=0.0)
