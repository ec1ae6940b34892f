"""Boot to API ready in QEMU, against the floor, in the same run; and the initramfs size.

    make bench-vm        (needs make initramfs; or: .venv/bin/python -m bench.vm_boot_bench)

- kurmad: from QEMU's start to the first successful Host.Info from outside (mutual TLS through
  the forwarded port), with the VM ``make vm`` boots (OEM disk and data disk).
- the floor: the same kernel and QEMU flags booting a minimal initramfs whose /init (busybox)
  only powers off, from QEMU's start to QEMU's exit.
Goals: API ready within 1.5 s of the floor; the initramfs at most 25 MB. Then where the time
goes: every boot stage's start (seconds since the kernel started) and duration, from Host.Info.
"""

from __future__ import annotations

import argparse
import io
import shutil
import stat
import time
from pathlib import Path

import zstandard

from initrd import cpio
from initrd.kernel import fetch
from initrd.vm import Vm, free_port, make_data_disk, provision
from kurmad.api.v1 import kurma_pb2 as pb
from kurmad.client import Client

from .common import Series

BUILD = Path("build")
FLOOR_INIT = "#!/bin/busybox sh\n/bin/busybox poweroff -f\n"
GOAL_SECONDS = 1.5
GOAL_BYTES = 25 * 10**6


def floor_initramfs(out: Path) -> Path:
    """/init that powers off at once, with busybox and the console node."""
    busybox = shutil.which("busybox")
    if busybox is None:
        raise SystemExit("busybox is not installed (apt-get install busybox-static)")
    entries = [
        cpio.Entry("bin", stat.S_IFDIR | 0o755),
        cpio.Entry("bin/busybox", stat.S_IFREG | 0o755, Path(busybox).read_bytes()),
        cpio.Entry("dev", stat.S_IFDIR | 0o755),
        cpio.Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        cpio.Entry("init", stat.S_IFREG | 0o755, FLOOR_INIT.encode()),
    ]
    archive = io.BytesIO()
    cpio.write(entries, archive)
    out.write_bytes(zstandard.ZstdCompressor(level=19).compress(archive.getvalue()))
    return out


def boot_floor(vmlinuz: Path, initramfs: Path, workdir: Path) -> float:
    vm = Vm(vmlinuz, initramfs, free_port(), console=workdir / "floor.log").start()
    code = vm.wait_exit(120)
    if code != 0:
        raise RuntimeError(f"the floor VM exited {code}: {vm.console_text()[-2000:]}")
    return time.monotonic() - vm.started_at


def boot_kurmad(vmlinuz: Path, workdir: Path, oem: Path, admin: Path) -> tuple[float, pb.HostInfo]:
    data = workdir / "data.img"
    data.unlink(missing_ok=True)
    vm = Vm(vmlinuz, BUILD / "initramfs.cpio.zst", free_port(), console=workdir / "kurmad.log",
            oem=oem, disks=[make_data_disk(data, 512 * 2**20)])  # fmt: skip
    vm.start()

    def answered() -> pb.HostInfo:
        with Client(f"127.0.0.1:{vm.port}", admin, timeout=2) as client:
            return client.info()

    try:
        vm.wait_for(answered, 180, "the API")
        ready = time.monotonic() - vm.started_at

        def finished() -> pb.HostInfo | None:
            info = answered()
            return info if any(s.name == "system-pods" for s in info.boot_stages) else None

        info = vm.wait_for(finished, 180, "the end of the boot")
        return ready, info  # type: ignore[return-value]
    finally:
        vm.kill()


def stage_table(info: pb.HostInfo) -> str:
    booted_at = info.time - info.uptime_seconds
    lines = [f"  {'STAGE':<18}{'STARTS (s)':>11}{'TAKES (ms)':>12}"]
    for s in info.boot_stages:
        lines.append(
            f"  {s.name:<18}{s.started_at - booted_at:>11.2f}{s.duration_seconds * 1000:>12.0f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    initramfs = BUILD / "initramfs.cpio.zst"
    if not initramfs.exists():
        raise SystemExit(f"{initramfs} is missing: make initramfs")
    kernel = fetch(BUILD)
    workdir = BUILD / "bench-vm"
    workdir.mkdir(parents=True, exist_ok=True)
    floor = floor_initramfs(workdir / "floor.cpio.zst")
    oem, admin = provision(workdir)
    kurmad, peer = Series("kurmad: API ready"), Series("floor: /init powers off")
    last: pb.HostInfo | None = None
    for round_ in range(args.rounds):
        runs = ["kurmad", "floor"] if round_ % 2 == 0 else ["floor", "kurmad"]
        for which in runs:
            if which == "floor":
                peer.seconds.append(boot_floor(kernel.vmlinuz, floor, workdir))
            else:
                seconds, last = boot_kurmad(kernel.vmlinuz, workdir, oem, admin)
                kurmad.seconds.append(seconds)
    gap = kurmad.median - peer.median
    size = initramfs.stat().st_size
    print("\n== boot to API ready, against the floor (same kernel, same QEMU flags)")
    print("  " + kurmad.line())
    print("  " + peer.line())
    print(f"  kurmad - floor = {gap:.2f} s (goal <= {GOAL_SECONDS}: {'met' if gap <= GOAL_SECONDS else 'NOT met'}); "
          f"ratio {kurmad.median / peer.median:.2f}")  # fmt: skip
    print(
        f"\n== initramfs: {size / 10**6:.1f} MB (goal <= 25 MB: {'met' if size <= GOAL_BYTES else 'NOT met'})"
    )
    if last is not None:
        print("\n== where the time goes (the last kurmad boot, from Host.Info)")
        print(stage_table(last))


if __name__ == "__main__":
    main()
