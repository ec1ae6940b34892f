"""API latency, and `kurmactl run` end to end against podman, in the same run.

    make bench-api        (or: .venv/bin/python -m bench.api_bench)

- Get of one pod, and List with 0, 100 and 1000 pods: p50 and p99 over a local `kurmad serve`;
- Get while 32 idle `logs -f` streams are open, against Get with none (the streams must not
  take the workers unary calls need);
- `kurmactl run --rm busybox -- /bin/true`, process start included, against
  `podman run --rm --rootfs` of the same busybox root filesystem.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from kurmad.appc import ImageManifest
from kurmad.client import Client
from kurmad.images.aci import BuildOptions, build
from kurmad.linux.cgroups import CgroupDriver

from .common import PYTHON, alternate, leave_hybrid_cgroups, percentile, report, scratch
from .executor_bench import busybox_rootfs

KURMACTL = str(Path(PYTHON).with_name("kurmactl"))
# podman as root would raise RLIMIT_NOFILE/NPROC past what this sandbox allows (no
# CAP_SYS_RESOURCE): ask it for limits below the current ones instead.
CONTAINERS_CONF = '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\n'


def start_daemon(state: Path) -> subprocess.Popen[bytes]:
    log = open(state.with_suffix(".log"), "wb")  # noqa: SIM115 - the daemon keeps it
    process = subprocess.Popen([PYTHON, "-m", "kurmad", "serve", "--state-dir", str(state), "--cgroup-parent", "/kurmad-bench"],
                               stdout=log, stderr=log)  # fmt: skip
    deadline = time.monotonic() + 30
    while not (state / "kurmad.sock").exists():
        if time.monotonic() > deadline or process.poll() is not None:
            sys.exit(f"kurmad serve did not start: {state.with_suffix('.log').read_text()}")
        time.sleep(0.05)
    time.sleep(0.3)
    return process


def latency(kurma: Client, calls: int) -> None:
    print("\n== API latency (local socket)")
    pod = kurma.run("example.com/busybox", exec=["/bin/true"], name="probe", start=False)
    samples = [_timed(lambda: kurma.get(pod.uuid)) for _ in range(calls)]
    print(
        f"  Get                p50 {percentile(samples, 0.5):6.2f} ms   p99 {percentile(samples, 0.99):6.2f} ms"
    )
    kurma.remove(pod.uuid)
    created = 0
    for count in (0, 100, 1000):
        while created < count:
            kurma.run("example.com/busybox", exec=["/bin/true"], start=False)
            created += 1
        samples = [_timed(kurma.pods) for _ in range(max(20, calls // (1 + count // 100)))]
        verdict = (
            f"  (goal p50 < 20 ms: {'met' if percentile(samples, 0.5) < 20 else 'NOT met'})"
            if count == 1000
            else ""
        )
        print(
            f"  List {count:5d} pods    p50 {percentile(samples, 0.5):6.2f} ms   p99 {percentile(samples, 0.99):6.2f} ms{verdict}"
        )
    for pod in kurma.pods():
        kurma.remove(pod.uuid)


def latency_under_followers(kurma: Client, calls: int, followers: int = 32) -> None:
    """Unary calls while as many idle streams as one client may hold are open (Logs follow of
    a silent pod): they must answer as fast as with none."""
    print(f"\n== Get while {followers} idle log followers are open, against none")
    pod = kurma.run("example.com/busybox", exec=["/bin/sleep", "3600"], name="silent")
    idle = [_timed(lambda: kurma.get(pod.uuid)) for _ in range(calls)]
    streams = [kurma.logs(pod.uuid, follow=True) for _ in range(followers)]
    readers = [threading.Thread(target=lambda s=s: list(s), daemon=True) for s in streams]
    for reader in readers:
        reader.start()
    time.sleep(1)  # every follower admitted and waiting
    busy = [_timed(lambda: kurma.get(pod.uuid)) for _ in range(calls)]
    for stream in streams:
        stream.cancel()
    kurma.remove(pod.uuid, force=True)
    ratio = percentile(busy, 0.5) / percentile(idle, 0.5)
    print(
        f"  no followers       p50 {percentile(idle, 0.5):6.2f} ms   p99 {percentile(idle, 0.99):6.2f} ms"
    )
    print(
        f"  {followers} followers       p50 {percentile(busy, 0.5):6.2f} ms   p99 {percentile(busy, 0.99):6.2f} ms"
    )
    print(
        f"  ratio p50 followers / none = {ratio:.2f}  (goal <= 1.5: {'met' if ratio <= 1.5 else 'NOT met'})"
    )


def _timed(call) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run the API benchmark as root (it runs pods)")
    leave_hybrid_cgroups("bench.api_bench")
    with scratch() as work:
        rootfs = busybox_rootfs(work / "rootfs")
        manifest = ImageManifest.from_json({"acKind": "ImageManifest", "acVersion": "0.8.11", "name": "example.com/busybox",
                                            "app": {"exec": ["/bin/true"], "user": "0", "group": "0"}})  # fmt: skip
        data = io.BytesIO()
        build(rootfs, manifest, data, BuildOptions())
        daemon = start_daemon(work / "state")
        try:
            socket = f"unix://{work / 'state' / 'kurmad.sock'}"
            with Client(socket) as kurma:
                data.seek(0)
                kurma.import_image(data)
                latency(kurma, args.calls)
                latency_under_followers(kurma, args.calls)
            env = {**os.environ, "KURMA_HOST": socket}
            conf = work / "containers.conf"
            conf.write_text(CONTAINERS_CONF)
            podman_env = {**os.environ, "CONTAINERS_CONF": str(conf)}
            series = alternate(args.rounds, {
                "kurmactl run --rm": lambda: subprocess.run([KURMACTL, "run", "--rm", "example.com/busybox", "--", "/bin/true"],
                                                           env=env, check=True),
                "podman run --rm --rootfs": lambda: subprocess.run(["podman", "--cgroup-manager=cgroupfs", "run", "--rm",
                                                                   "--rootfs", str(rootfs), "/bin/true"], env=podman_env, check=True),
            })  # fmt: skip
            report(
                "run a /bin/true pod end to end",
                series,
                "kurmactl run --rm",
                "podman run --rm --rootfs",
                goal=0.5,
            )
        finally:
            daemon.terminate()
            daemon.wait(30)
            shutil.rmtree(work / "state", ignore_errors=True)
            CgroupDriver("/kurmad-bench").cgroup("").remove()


if __name__ == "__main__":
    main()
