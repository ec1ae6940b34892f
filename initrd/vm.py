"""A QEMU virtual machine booted into kurmad: what ``make vm`` runs, and what vm-tests and the
boot benchmark drive.

    python -m initrd.vm [--port 7777] [--no-data] [--append "kurma.debug"]

Around the initramfs it prepares, in build/: TLS material (a CA, the VM's server certificate,
and an admin client bundle in build/admin), an OEM disk (LABEL=KURMA_OEM) that hands the VM
its certificates and console password, and a data disk (LABEL=KURMA_DATA) that keeps the VM's
images and pods across restarts. The initramfs stays the same for every VM; what is particular
to one goes on the OEM disk, the way Kurma and Talos provision machines."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kurmad.api.auth import TLSFiles, ensure_server_material, issue_client, usable_bundle

from .kernel import Kernel, fetch

API_PORT = 7777  # inside the VM
OEM_TLS_DIR = "/run/kurma/oem/tls"  # where the OEM disk is mounted, see kurmad/host/tasks.py
DATA_SIZE = 2 * 2**30
QEMU = "qemu-system-x86_64"
# KVM is not there on CI machines: TCG, with RDRAND so Python finds entropy at once. One host
# thread for both vCPUs: with a thread each (MTTCG), QEMU 7.2 now and then lets a vCPU run a stale
# translation of kernel text that another vCPU just patched (a static key flipped with int3, as at
# the first memory cgroup), and both loop on that int3 for good: soft lockups, no API. 1 boot in 12
# hung so, none in 30 with one thread; booting takes ~1.4x as long.
ACCEL = ["-accel", "tcg,thread=single", "-cpu", "qemu64,+rdrand"]
BASE_APPEND = "console=ttyS0 panic=-1 quiet"


@dataclass(frozen=True)
class Artifacts:
    kernel: Kernel
    initramfs: Path
    oem: Path
    data: Path
    admin: Path  # the client bundle: ca.crt, client.crt, client.key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_tls(build: Path) -> tuple[TLSFiles, Path]:
    """The CA and the VM's server certificate (kept across runs), and an admin bundle (made
    again when it is missing, revoked or about to expire: client certificates last 90 days)."""
    tls = TLSFiles(build / "tls")
    ensure_server_material(tls, ["kurma", "localhost"])
    admin = build / "admin"
    if not usable_bundle(tls, admin):
        issue_client(tls, "admin", "admin", admin)
    return tls, admin


def oem_config(console_password: str) -> dict[str, object]:
    """The VM's own settings, on top of the initramfs's /etc/kurma.yml."""
    default = yaml.safe_load((Path(__file__).parent / "kurma.yml").read_text())
    pods = default["initial_pods"]
    for pod in pods:
        if pod["name"] == "console":
            pod["env"] = {**pod.get("env", {}), "CONSOLE_PASSWORD": console_password}
    return {"api": {"tls_dir": OEM_TLS_DIR}, "initial_pods": pods}


def make_oem_disk(build: Path, tls: TLSFiles, console_password: str,
                  extra: dict[str, object] | None = None) -> Path:  # fmt: skip
    """An ext4 image labelled KURMA_OEM with kurma.yml (the VM's settings, and ``extra``
    sections: the registries' credentials, say) and the server's TLS files (with the
    revocation list, if any); made without mounting anything (mkfs.ext4 -d)."""
    image = build / "oem.img"
    with tempfile.TemporaryDirectory() as scratch:
        content = Path(scratch)
        (content / "kurma.yml").write_text(
            yaml.safe_dump({**oem_config(console_password), **(extra or {})}, sort_keys=False)
        )
        (content / "tls").mkdir(mode=0o700)
        for source in (tls.ca_cert, tls.server_cert, tls.server_key):
            shutil.copy(source, content / "tls" / source.name)
        if tls.revoked.exists():  # the VM's daemon checks every call against it
            shutil.copy(tls.revoked, content / "tls" / tls.revoked.name)
        (content / "tls" / "server.key").chmod(0o600)
        image.unlink(missing_ok=True)
        with open(image, "wb") as f:
            f.truncate(16 * 2**20)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "KURMA_OEM", "-d", str(content), str(image)],
                       check=True)  # fmt: skip
    return image


def make_data_disk(path: Path, size: int = DATA_SIZE) -> Path:
    """A sparse ext4 image labelled KURMA_DATA, made once and then kept: the VM's state."""
    if not path.exists():
        with open(path, "wb") as f:
            f.truncate(size)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "KURMA_DATA", str(path)], check=True)
    return path


def provision(directory: Path, console_password: str = "kurma",
              extra: dict[str, object] | None = None) -> tuple[Path, Path]:  # fmt: skip
    """What one VM is given, in ``directory``: its OEM disk (with its TLS files and the
    ``extra`` config sections) and the admin bundle that reaches it."""
    tls, admin = make_tls(directory)
    return make_oem_disk(directory, tls, console_password, extra), admin


def prepare(build: Path, console_password: str = "kurma") -> Artifacts:
    initramfs = build / "initramfs.cpio.zst"
    if not initramfs.exists():
        raise SystemExit(f"{initramfs} is missing: run make initramfs (or make vm)")
    oem, admin = provision(build, console_password)
    return Artifacts(fetch(build), initramfs, oem, make_data_disk(build / "data.img"), admin)


# --- running QEMU ------------------------------------------------------------------------------------


@dataclass
class Vm:
    """One QEMU process. ``console`` is a file that receives the serial console unless
    ``interactive``; ``monitor`` is the HMP monitor's Unix socket (drive_add, device_add)."""

    kernel: Path
    initramfs: Path
    port: int
    console: Path | None = None
    oem: Path | None = None  # on NVMe, which the kernel has built in: found before any module loads
    disks: list[Path] = field(default_factory=list)  # virtio-blk
    append: str = ""
    memory_mib: int = 1024
    cpus: int = 2
    monitor: Path | None = None
    forwards: dict[int, int] = field(default_factory=dict)  # more host ports → guest ports
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0

    def argv(self) -> list[str]:
        argv = [QEMU, *ACCEL, "-m", str(self.memory_mib), "-smp", str(self.cpus), "-nodefaults",
                "-no-user-config", "-display", "none",
                "-serial", f"file:{self.console}" if self.console else "mon:stdio",
                "-kernel", str(self.kernel), "-initrd", str(self.initramfs),
                "-append", f"{BASE_APPEND} {self.append}".strip(),
                "-netdev", "user,id=net0" + "".join(f",hostfwd=tcp:127.0.0.1:{h}-:{g}" for h, g in
                                                    {self.port: API_PORT, **self.forwards}.items()),
                "-device", "virtio-net-pci,netdev=net0,romfile="]  # fmt: skip
        if self.oem is not None:
            argv += ["-drive", f"if=none,id=oem,file={self.oem},format=raw,readonly=on",
                     "-device", "nvme,drive=oem,serial=kurma-oem"]  # fmt: skip
        for i, disk in enumerate(self.disks):
            argv += ["-drive", f"if=none,id=disk{i},file={disk},format=raw",
                     "-device", f"virtio-blk-pci,drive=disk{i}"]  # fmt: skip
        if self.monitor is not None:
            argv += ["-monitor", f"unix:{self.monitor},server,nowait"]
        return argv

    def start(self) -> Vm:
        if self.console is not None:
            self.console.write_bytes(b"")
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL)
        return self

    def console_text(self) -> str:
        return (
            self.console.read_text(errors="replace")
            if self.console and self.console.exists()
            else ""
        )

    def wait_for(self, check: Callable[[], object], timeout: float, what: str) -> object:
        """Poll ``check`` until it returns something true; fail early if QEMU exits."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"QEMU exited ({self.process.returncode}) waiting for {what}:\n{self.console_text()[-3000:]}"
                )
            try:
                result = check()
                if result:
                    return result
            except Exception as err:  # the API is not up yet, and so on
                last_error = err
            time.sleep(0.05)
        raise TimeoutError(
            f"no {what} after {timeout:g}s ({last_error}):\n{self.console_text()[-3000:]}"
        )

    def hmp(self, command: str) -> str:
        """One human-monitor command, its reply."""
        assert self.monitor is not None
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(self.monitor))
            _read_until(s, b"(qemu) ")
            s.sendall(command.encode() + b"\n")
            return _read_until(s, b"(qemu) ").decode(errors="replace")

    def wait_exit(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while not data.endswith(marker):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description="boot a QEMU VM into kurmad")
    parser.add_argument("--build", type=Path, default=Path("build"))
    parser.add_argument("--port", type=int, default=API_PORT, help="the API port on 127.0.0.1")
    parser.add_argument("--no-data", action="store_true", help="no data disk: state in memory")
    parser.add_argument("--append", default="", help="more kernel command line (kurma.* options)")
    parser.add_argument("--console-password", default=os.environ.get("CONSOLE_PASSWORD", "kurma"))
    args = parser.parse_args()
    made = prepare(args.build, args.console_password)
    disks = [] if args.no_data else [made.data]
    vm = Vm(
        made.kernel.vmlinuz,
        made.initramfs,
        args.port,
        oem=made.oem,
        disks=disks,
        append=args.append,
    )
    kurmactl = Path(sys.executable).with_name("kurmactl")
    print(f"""kurmad VM: serial console below (root / {args.console_password}); quit with ctrl-a x.
From another terminal:
  {kurmactl} --host 127.0.0.1:{args.port} --tls-dir {made.admin.resolve()} host info
""", flush=True)  # fmt: skip
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(vm.start().wait_exit(timeout=None))  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
