"""Pod start against crun and runc, on the same busybox root filesystem, in the same run.

    make bench-executor     (or: .venv/bin/python -m bench.executor_bench [--rounds N])

- one pod: create-to-exit of ``/bin/true`` (kurmad: create + start + wait through the pod
  manager, in process; crun/runc: ``crun run`` of an OCI bundle, process start included);
- 100 at once: 100 such pods started together, until the last has exited;
- memory: the PSS of the processes kurmad adds per pod (its pod init), over 50 running pods.

crun refuses hybrid cgroup hosts (v1 controllers plus a cgroup2 mount); there the benchmark
runs itself in a private mount namespace without the cgroup2 mount, kurmad included.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from kurmad.appc import ImageManifest, PodManifest
from kurmad.images.aci import BuildOptions, build
from kurmad.images.store import ImageStore
from kurmad.linux.cgroups import CgroupDriver
from kurmad.linux.proc import pss_kib
from kurmad.pods.manager import PodManager

from .common import alternate, leave_hybrid_cgroups, report, scratch


def busybox_rootfs(root: Path) -> Path:
    busybox = shutil.which("busybox")
    if busybox is None:
        sys.exit("busybox is missing: apt-get install busybox-static")
    (root / "bin").mkdir(parents=True)
    shutil.copy(busybox, root / "bin" / "busybox")
    for applet in ("sh", "true", "sleep"):
        (root / "bin" / applet).symlink_to("busybox")
    return root


def oci_bundle(work: Path, rootfs: Path, argv: list[str]) -> Path:
    bundle = work / "bundle"
    bundle.mkdir()
    (bundle / "rootfs").symlink_to(rootfs)
    subprocess.run(["crun", "spec"], cwd=bundle, check=True)
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["args"] = argv
    config["process"]["terminal"] = False
    config["root"]["path"] = str(rootfs)
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def kurmad_setup(work: Path, rootfs: Path) -> tuple[PodManager, ImageStore, str]:
    store = ImageStore(work / "store", durable=False)
    manifest = ImageManifest.from_json({"acKind": "ImageManifest", "acVersion": "0.8.11", "name": "example.com/busybox",
                                        "app": {"exec": ["/bin/true"], "user": "0", "group": "0"}})  # fmt: skip
    data = io.BytesIO()
    build(rootfs, manifest, data, BuildOptions())
    data.seek(0)
    image = store.import_stream(data).record
    manager = PodManager(work / "state", store, cgroup_parent="/kurmad-bench")
    return manager, store, image.id


def pod_manifest(image_id: str, argv: list[str]) -> PodManifest:
    return PodManifest.from_json({"acKind": "PodManifest", "acVersion": "0.8.11", "apps": [
        {"name": "main", "image": {"id": image_id}, "app": {"exec": argv, "user": "0", "group": "0"}}]})  # fmt: skip


def kurmad_run(manager: PodManager, image_id: str, argv: list[str]) -> None:
    pod = manager.create(pod_manifest(image_id, argv))
    manager.start(pod.uuid)
    done = manager.wait(pod.uuid, 30)
    assert done.apps[0].exit_code == 0, done
    manager.remove(pod.uuid)


def oci_run(runtime: str, bundle: Path, name: str) -> None:
    subprocess.run(
        [runtime, "run", "--bundle", str(bundle), name], check=True, stdout=subprocess.DEVNULL
    )


def many(count: int, start_one) -> None:  # type: ignore[no-untyped-def]
    threads = [threading.Thread(target=start_one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def measure_memory(manager: PodManager, image_id: str, pods: int) -> float:
    started = [manager.create(pod_manifest(image_id, ["/bin/sleep", "60"])) for _ in range(pods)]
    for pod in started:
        manager.start(pod.uuid)
    time.sleep(0.5)
    records = [manager._find(pod.uuid) for pod in started]
    total = sum(pss_kib(r.pid) for r in records if r.pid)
    for pod in started:
        manager.remove(pod.uuid, force=True)
    return total / pods


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--concurrent", type=int, default=100)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("the executor benchmark runs pods: run it as root")
    leave_hybrid_cgroups("bench.executor_bench")
    with scratch() as work:
        rootfs = busybox_rootfs(work / "rootfs")
        bundle = oci_bundle(work, rootfs, ["/bin/true"])
        manager, store, image_id = kurmad_setup(work, rootfs)
        counter = iter(range(10**9))
        try:
            kurmad_run(manager, image_id, ["/bin/true"])  # warm: the launcher's first fork
            series = alternate(args.rounds, {
                "kurmad pod": lambda: kurmad_run(manager, image_id, ["/bin/true"]),
                "crun run": lambda: oci_run("crun", bundle, f"c{next(counter)}"),
                "runc run": lambda: oci_run("runc", bundle, f"r{next(counter)}"),
            })  # fmt: skip
            report("one /bin/true pod, create to exit", series, "kurmad pod", "crun run", goal=1.0)
            print(
                f"  ratio kurmad pod / runc run = {series['kurmad pod'].median / series['runc run'].median:.2f}"
            )
            n = args.concurrent
            burst = alternate(3, {
                f"kurmad {n} pods": lambda: many(n, lambda i: kurmad_run(manager, image_id, ["/bin/true"])),
                f"crun {n} runs": lambda: many(n, lambda i: oci_run("crun", bundle, f"c{next(counter)}")),
                f"runc {n} runs": lambda: many(n, lambda i: oci_run("runc", bundle, f"r{next(counter)}")),
            })  # fmt: skip
            report(
                f"{n} pods started at once, until all exited",
                burst,
                f"kurmad {n} pods",
                f"crun {n} runs",
            )
            print(
                f"  ratio kurmad / runc = {burst[f'kurmad {n} pods'].median / burst[f'runc {n} runs'].median:.2f}"
            )
            per_pod = measure_memory(manager, image_id, 50)
            verdict = "met" if per_pod <= 1024 else "NOT met"
            print(
                f"\n== memory: PSS of kurmad's pod init per pod, 50 pods running: {per_pod:.0f} KiB (goal <= 1024 KiB: {verdict})"
            )
        finally:
            manager.close()
            store.close()
            CgroupDriver("/kurmad-bench").cgroup("").remove()


if __name__ == "__main__":
    main()
