"""make chaos: SIGKILL ``kurmad serve`` at random moments under mixed load, N times, and check
after every restart that the store, the pods and what they hold on the host are consistent.

    python -m tests.chaos --rounds 30 [--seed S] [--workers 4]      (as root)

The daemon runs in a network namespace of its own with a bridge network, so veths, leases and
the nftables table are part of what is checked. Each round: workers run, create, stop,
remove, exec into and follow pods, import and remove images, for a random time; then SIGKILL;
then a restart and the checks:

- the daemon comes back, and every listing answers; no record was quarantined;
- every pod directory on disk is a pod the API lists (nothing half-made survives);
- a RUNNING pod's cgroup holds its processes; every other pod has no cgroup, and no cgroup
  is left of a pod that is gone;
- every address lease, host veth and published port belongs to a pod that exists (a veth
  and a forward only to one that was started: it keeps them until it is removed);
- the image store lists exactly the images on disk, and nothing is left in its tmp/.

Exit status 1 if any check failed in any round; the summary gives the counts."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pyroute2 import NetNS

from kurmad.api.v1 import kurma_pb2 as pb
from kurmad.client import Client, KurmaError
from kurmad.linux.cgroups import CgroupDriver
from kurmad.net.bridge import parse_veth
from kurmad.net.instance import Instance

from .busybox import busybox_entries
from .daemon import ServeProcess
from .netns import NETNS_DIR, namespaces
from .tarcraft import aci, file, image_manifest

NETWORK = {"name": "chaos0", "type": "bridge", "subnet": "10.231.0.0/24"}
ACTIVE = (pb.POD_STATE_STARTING, pb.POD_STATE_RUNNING)


@dataclass
class Round:
    index: int
    seconds: float
    operations: Counter[str] = field(default_factory=Counter)
    pods: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)


class Load:
    """Workers driving the daemon until told to stop; failures are expected (the daemon dies
    under them) and only counted."""

    def __init__(
        self, serve: ServeProcess, workers: int, rng: random.Random, images: list[Path]
    ) -> None:
        self.serve, self.rng, self.images = serve, rng, images
        self.stopping = threading.Event()
        self.done: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._work, args=(rng.random(),), daemon=True)
                        for _ in range(workers)]  # fmt: skip

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)

    def _work(self, seed: float) -> None:
        rng = random.Random(seed)
        operations: list[Callable[[Client, random.Random], None]] = [
            self._run_detached, self._run_detached, self._create_only, self._stop_one,
            self._remove_one, self._exec_one, self._logs_one, self._import_one, self._remove_image,
            self._run_to_end,
        ]  # fmt: skip
        while not self.stopping.is_set():
            operation = rng.choice(operations)
            try:
                with Client(self.serve.socket, timeout=20) as client:
                    operation(client, rng)
                outcome = "ok"
            except KurmaError as err:
                outcome = err.code
            with self.lock:
                self.done[f"{operation.__name__.strip('_')}:{outcome}"] += 1

    def _pods(self, client: Client) -> list[pb.Pod]:
        return client.pods()

    def _run_detached(self, client: Client, rng: random.Random) -> None:
        ports = [(rng.randint(20000, 20050), 80, "tcp")] if rng.random() < 0.3 else []
        client.run("example.com/busybox", exec=["/bin/sh", "-c", f"echo hi; sleep {rng.randint(1, 30)}"],
                   ports=ports, wait_running=rng.random() < 0.5)  # fmt: skip

    def _run_to_end(self, client: Client, rng: random.Random) -> None:
        pod = client.run("example.com/busybox", exec=["/bin/sh", "-c", "echo done"])
        client.wait(pod.uuid, 10)
        client.remove(pod.uuid, force=True)

    def _create_only(self, client: Client, rng: random.Random) -> None:
        client.run("example.com/busybox", exec=["/bin/true"], start=False, networks="none")

    def _stop_one(self, client: Client, rng: random.Random) -> None:
        running = [p for p in self._pods(client) if p.state in ACTIVE]
        if running:
            client.stop(rng.choice(running).uuid, rng.choice([0, 0.5, 2]))

    def _remove_one(self, client: Client, rng: random.Random) -> None:
        pods = self._pods(client)
        if pods:
            client.remove(rng.choice(pods).uuid, force=True)

    def _exec_one(self, client: Client, rng: random.Random) -> None:
        running = [p for p in self._pods(client) if p.state == pb.POD_STATE_RUNNING]
        if running:
            start = pb.ExecStart(
                ref=rng.choice(running).uuid, argv=["/bin/sh", "-c", "echo in; sleep 0.2"]
            )
            list(client.exec(iter([pb.ExecRequest(start=start)])))

    def _logs_one(self, client: Client, rng: random.Random) -> None:
        pods = self._pods(client)
        if pods:
            list(client.logs(rng.choice(pods).uuid))

    def _import_one(self, client: Client, rng: random.Random) -> None:
        with open(rng.choice(self.images), "rb") as f:
            client.import_image(f)

    def _remove_image(self, client: Client, rng: random.Random) -> None:
        extras = [i for i in client.images() if i.name.startswith("example.com/extra")]
        if extras:
            client.remove_image(rng.choice(extras).id)


def check(serve: ServeProcess, namespace: str) -> tuple[list[str], Counter[str]]:
    """Everything the module docstring lists; the problems found, and the pods by state."""
    problems: list[str] = []
    with Client(serve.socket, timeout=30) as client:
        _settle_starting(client)
        pods = client.pods()
        info = client.info()
        images = client.images()
    states = Counter(pb.PodState.Name(p.state).removeprefix("POD_STATE_") for p in pods)
    if info.quarantined:
        problems.append(f"quarantined: {list(info.quarantined)}")
    uuids = {p.uuid for p in pods}
    on_disk = {d.name for d in (serve.state / "pods").iterdir() if d.name != ".quarantine"}
    if on_disk != uuids:
        problems.append(
            f"pod directories without a pod: {sorted(on_disk - uuids)}; pods without one: {sorted(uuids - on_disk)}"
        )
    problems += _cgroup_problems(serve, pods)
    problems += _network_problems(serve, namespace, pods)
    problems += _store_problems(serve, images)
    return problems, states


def _settle_starting(client: Client, timeout: float = 40) -> None:
    """Pods re-adopted while starting report RUNNING once their apps run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(
        p.state == pb.POD_STATE_STARTING for p in client.pods()
    ):
        time.sleep(0.2)


def _cgroup_problems(serve: ServeProcess, pods: list[pb.Pod]) -> list[str]:
    problems = []
    driver = CgroupDriver(serve.cgroup_parent)
    running = {p.uuid for p in pods if p.state == pb.POD_STATE_RUNNING}
    for directory in driver.cgroup("").all_dirs:
        present = (
            {d.name for d in directory.iterdir() if d.is_dir()} if directory.exists() else set()
        )
        if present - running:
            problems.append(
                f"cgroups of no running pod in {directory}: {sorted(present - running)}"
            )
    for uuid in running:
        if not driver.cgroup(uuid).pids():
            problems.append(f"running pod {uuid} has no processes in its cgroup")
    return problems


def _network_problems(serve: ServeProcess, namespace: str, pods: list[pb.Pod]) -> list[str]:
    problems = []
    uuids = {p.uuid for p in pods}
    # A pod keeps its network namespace (veths, forwards) from its start until its removal.
    wired = {p.uuid for p in pods if p.state != pb.POD_STATE_NEW and p.networks}
    leases_file = serve.state / "networks" / NETWORK["name"] / "leases.json"
    leases = json.loads(leases_file.read_text())["leases"] if leases_file.exists() else {}
    holders = set(leases.values()) if isinstance(leases, dict) else set()
    if holders - uuids:
        problems.append(f"leases of no pod: {sorted(holders - uuids)}")
    stray = _stray_veths(namespace, Instance.of(serve.state).tag, wired)
    if stray:
        problems.append(f"veths of no wired pod: {stray}")
    table = Instance.of(serve.state).table
    listing = subprocess.run(["nsenter", f"--net={NETNS_DIR / namespace}", "nft", "-j", "list", "table", "inet", table],
                             capture_output=True, text=True).stdout  # fmt: skip
    published = {(p.uuid, m.host_port) for p in pods if p.uuid in wired for m in p.ports}
    for element in _map_elements(listing):
        if not any(port == element for _, port in published):
            problems.append(f"published port {element} of no wired pod")
    return problems


def _stray_veths(namespace: str, tag: str, wired: set[str], patience: float = 5.0) -> list[str]:
    """This instance's host veths of no wired pod, once the kernel had ``patience`` to finish
    destroying those of namespaces let go (it does so after the removal has answered)."""
    prefixes = {u.replace("-", "")[:9] for u in wired}
    deadline = time.monotonic() + patience
    with NetNS(namespace) as ns:  # one helper process for the whole wait (NetNS forks one)
        while True:
            veths = [parse_veth(link.get("ifname") or "") for link in ns.get_links()]
            stray = [str(v) for v in veths if v and v.instance == tag and v.pod not in prefixes]
            if not stray or time.monotonic() > deadline:
                return stray
            time.sleep(0.1)


def _map_elements(listing: str) -> Iterator[int]:
    try:
        objects = json.loads(listing)["nftables"] if listing else []
    except (ValueError, KeyError):
        return
    for entry in objects:
        for pair in entry.get("map", {}).get("elem", []):
            key = pair[0] if isinstance(pair, list) else None
            if isinstance(key, dict):
                key = key.get("elem", {}).get("val")
            if isinstance(key, int):
                yield key


def _store_problems(serve: ServeProcess, images: list[pb.Image]) -> list[str]:
    problems = []
    root = serve.state / "images"
    on_disk = {d.name for d in (root / "images").iterdir()}
    listed = {i.id.removeprefix("sha512-") for i in images}
    if on_disk != listed:
        problems.append(f"images on disk {len(on_disk)} but listed {len(listed)}")
    left = list((root / "tmp").iterdir())
    if left:
        problems.append(f"left in the store's tmp/: {[p.name for p in left]}")
    return problems


def _images(directory: Path) -> list[Path]:
    made = []
    for index, extra in enumerate(("", "a", "b")):
        name = "example.com/busybox" if not extra else f"example.com/extra-{extra}"
        manifest = image_manifest(name, "1.0.0")
        manifest["app"] = {"exec": ["/bin/true"], "user": "0", "group": "0"}
        path = directory / f"image-{index}.aci"
        path.write_bytes(
            aci(manifest, [*busybox_entries(), file(f"extra-{extra}", extra * 1000)], "gzip")
        )
        made.append(path)
    return made


def run(rounds: int, seed: int, workers: int, max_load: float) -> int:
    rng = random.Random(seed)
    results: list[Round] = []
    with tempfile.TemporaryDirectory(prefix="kurmad-chaos-") as scratch, namespaces("host") as ns:
        root = Path(scratch)
        config = root / "networks.yml"
        config.write_text(yaml.safe_dump({"networks": [NETWORK]}))
        serve = ServeProcess(root / "state", "--network-config", str(config),
                             prefix=("nsenter", f"--net={NETNS_DIR / ns['host']}"))  # fmt: skip
        serve.cgroup_parent = f"/kurmad-chaos-{os.getpid()}"
        images = _images(root)
        serve.start()
        with Client(serve.socket) as client, open(images[0], "rb") as f:
            client.import_image(f)
        try:
            for index in range(rounds):
                results.append(_one_round(index, serve, ns["host"], rng, workers, max_load, images))
            results.append(_final(serve, ns["host"]))
        finally:
            with contextlib.suppress(Exception):
                serve.cleanup_pods()
            serve.stop()
            with contextlib.suppress(Exception):
                CgroupDriver(serve.cgroup_parent).cgroup("").remove()
    return _summary(results, seed)


def _one_round(index: int, serve: ServeProcess, namespace: str, rng: random.Random, workers: int,
               max_load: float, images: list[Path]) -> Round:  # fmt: skip
    seconds = rng.uniform(0.02, max_load)
    result = Round(index, seconds)
    with Load(serve, workers, rng, images) as load:
        time.sleep(seconds)
        serve.kill()
    result.operations = load.done
    try:
        serve.start()
    except RuntimeError as err:
        result.problems.append(f"the daemon did not come back: {err}")
        return result
    result.problems, result.pods = check(serve, namespace)
    print(f"round {index + 1}: killed after {seconds:.2f}s, {sum(load.done.values())} calls, "
          f"pods {dict(result.pods)}, {len(result.problems)} problem(s)", flush=True)  # fmt: skip
    for problem in result.problems:
        print(f"  PROBLEM: {problem}", flush=True)
    return result


def _final(serve: ServeProcess, namespace: str) -> Round:
    """At the end every pod goes, and with them everything they held."""
    result = Round(-1, 0.0)
    serve.cleanup_pods()
    result.problems, result.pods = check(serve, namespace)
    leases = serve.state / "networks" / NETWORK["name"] / "leases.json"
    if leases.exists() and json.loads(leases.read_text())["leases"]:
        result.problems.append("leases left after every pod was removed")
    print(f"final: every pod removed, {len(result.problems)} problem(s)")
    for problem in result.problems:
        print(f"  PROBLEM: {problem}", flush=True)
    return result


def _summary(results: list[Round], seed: int) -> int:
    calls: Counter[str] = Counter()
    for result in results:
        calls.update(result.operations)
    failed = [r for r in results if r.problems]
    kills = len([r for r in results if r.index >= 0])
    print(f"\nchaos (seed {seed}): {kills} SIGKILLs, {sum(calls.values())} calls, "
          f"{len(failed)} round(s) with problems")  # fmt: skip
    for name, count in sorted(calls.items()):
        print(f"  {name}: {count}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument(
        "--max-load", type=float, default=1.5, help="longest load before a kill (s)"
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.stderr.write("chaos: needs root (namespaces, cgroups)\n")
        return 2
    return run(args.rounds, args.seed, args.workers, args.max_load)


if __name__ == "__main__":
    sys.exit(main())
