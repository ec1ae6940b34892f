"""OCI image pulls from a local TLS registry, against skopeo and podman, in the same run.

    make bench-pull   (root; or: .venv/bin/python -m bench.pull_bench [--rounds N];
                       KURMAD_BENCH_ROUNDS=N sets the default)

Docker's registry (tests/registry.py) serves, over TLS from a CA made for the run, an image of
five layers built with umoci: busybox and four 25 MiB layers, a third random data and two
thirds word text (gzip does real work on those; they pack to ~16 MiB each).

- pull: ``kurmactl pull`` (fetch, verify, extract into the store) against ``skopeo copy`` to an
  OCI layout (fetch and verify only) and ``podman pull`` (fetch and extract), each on a fresh
  kurmad state directory and fresh destinations: nothing is cached;
- shared layers: a second image with the first four layers and a small new top one is pulled
  after the first into the same kurmad store, through a TCP relay that counts the bytes the
  registry sends; only the new layer and the documents should cross it;
- run: ``kurmactl run --rm REF -- /bin/echo hi`` of the pulled image until its first line of
  output, against ``podman run --rm`` of the same image from podman's store.

A peer that is missing or fails is reported as such; the other figures are still measured.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import io
import json
import os
import random
import shutil
import socket
import string
import subprocess
import sys
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path

import yaml

import kurmad
from kurmad.linux.cgroups import CgroupDriver
from tests.busybox import GROUP, PASSWD, busybox_path
from tests.daemon import ServeProcess
from tests.registry import Registry, running_registry

from .api_bench import CONTAINERS_CONF
from .common import PYTHON, Series, alternate, fresh_dir, report, scratch, timed

KURMACTL = [PYTHON, "-m", "kurmad.cli.kurmactl"]
CGROUP_PARENT = "/kurmad-bench"
REPO = "bench/pull"
DATA_LAYERS, LAYER_BYTES, FILE_BYTES, CHUNK = 4, 25 * 2**20, 2**20, 2**16
PULL_GOALS = {"skopeo copy": 1.0, "podman pull": 0.5}


# --- the images ---------------------------------------------------------------------------------


def busybox_layer(path: Path) -> Path:
    """The base layer: busybox with the applets the runs use, and users for podman."""
    busybox = busybox_path()
    if busybox is None:
        sys.exit("busybox is missing: apt-get install busybox-static")
    with tarfile.open(path, "w") as tar:
        for name in ("bin", "etc", "tmp"):
            tar.addfile(_entry(name, tarfile.DIRTYPE, 0o1777 if name == "tmp" else 0o755))
        tar.add(busybox, "bin/busybox")
        for applet in ("sh", "echo", "true", "cat"):
            tar.addfile(_entry(f"bin/{applet}", tarfile.SYMTYPE, 0o777, linkname="busybox"))
        for name, text in (("etc/passwd", PASSWD), ("etc/group", GROUP)):
            info = _entry(name, tarfile.REGTYPE, 0o644, size=len(text))
            tar.addfile(info, io.BytesIO(text.encode()))
    return path


def _entry(name: str, kind: bytes, mode: int, size: int = 0, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname = kind, mode, size, linkname
    info.mtime = 1_700_000_000
    return info


def data_layer(path: Path, seed: int, total: int) -> Path:
    """``total`` bytes in files of random chunks and, twice as many, chunks of word text:
    distinct per seed, so every layer is a blob of its own."""
    rng = random.Random(seed)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(5000)]
    zipf = [1 / (rank + 1) for rank in range(len(words))]
    corpus = " ".join(rng.choices(words, zipf, k=300_000)).encode()
    with tarfile.open(path, "w") as tar:
        tar.addfile(_entry(f"data{seed}", tarfile.DIRTYPE, 0o755))
        for index in range(max(1, total // FILE_BYTES)):
            chunks = []
            for part in range(FILE_BYTES // CHUNK):
                start = rng.randrange(len(corpus) - CHUNK)
                chunks.append(
                    rng.randbytes(CHUNK) if part % 3 == 0 else corpus[start : start + CHUNK]
                )
            body = b"".join(chunks)
            info = _entry(f"data{seed}/f{index}", tarfile.REGTYPE, 0o644, size=len(body))
            tar.addfile(info, io.BytesIO(body))
    return path


def build_layout(work: Path, small_bytes: int = 2**20) -> Path:
    """An OCI layout with tag ``a`` (busybox + 4 data layers) and tag ``b`` (the same first
    four layers, then a small new one instead of the fourth data layer)."""
    layout = work / "layout"
    umoci("init", "--layout", str(layout))
    umoci("new", "--image", f"{layout}:base")
    umoci("raw", "add-layer", "--image", f"{layout}:base", str(busybox_layer(work / "bb.tar")))
    umoci("config", "--image", f"{layout}:base", "--config.cmd", "/bin/sh")
    for index in range(1, DATA_LAYERS + 1):
        tar = data_layer(work / f"data{index}.tar", index, LAYER_BYTES)
        tag = ["--tag", "a"] if index == DATA_LAYERS else []
        umoci("raw", "add-layer", *tag, "--image", f"{layout}:base", str(tar))
        tar.unlink()
    small = data_layer(work / "small.tar", 99, small_bytes)
    umoci("raw", "add-layer", "--tag", "b", "--image", f"{layout}:base", str(small))
    return layout


def umoci(*args: str) -> None:
    subprocess.run(["umoci", *args], check=True, capture_output=True, timeout=300)


def layout_blobs(layout: Path, tag: str) -> tuple[dict[str, int], int]:
    """The compressed size of each of tag's layers by digest, bottom first; the size of its
    manifest plus its config."""
    index = json.loads((layout / "index.json").read_text())
    descriptor = next(
        m
        for m in index["manifests"]
        if m["annotations"]["org.opencontainers.image.ref.name"] == tag
    )
    manifest = json.loads(_blob(layout, descriptor["digest"]).read_text())
    documents = descriptor["size"] + manifest["config"]["size"]
    return {layer["digest"]: layer["size"] for layer in manifest["layers"]}, documents


def _blob(layout: Path, digest: str) -> Path:
    algorithm, hexa = digest.split(":")
    return layout / "blobs" / algorithm / hexa


# --- the measuring tools --------------------------------------------------------------------------


class CountingRelay:
    """127.0.0.1:PORT relayed to the registry, counting the bytes the registry sends back. TLS
    passes through (the registry's certificate names 127.0.0.1), so the count includes TLS
    records and HTTP headers: an upper bound of what a client fetched."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.fetched = 0
        self.lock = threading.Lock()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> CountingRelay:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept loop
        self.listener.close()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        with client, socket.create_connection(("127.0.0.1", self.target)) as upstream:
            sending = threading.Thread(target=self._pipe, args=(client, upstream, False))
            sending.start()
            self._pipe(upstream, client, True)
            sending.join()

    def _pipe(self, source: socket.socket, sink: socket.socket, count: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(1 << 18):
                sink.sendall(data)
                if count:
                    with self.lock:
                        self.fetched += len(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)  # the other side sees the end; its pipe ends too


class Kurmad:
    """A ``kurmad serve`` that ``restart`` gives a fresh state directory, so nothing is cached."""

    def __init__(self, state: Path, registry_config: Path) -> None:
        self.state, self.config = state, registry_config
        self.daemon: ServeProcess | None = None

    @property
    def socket(self) -> str:
        assert self.daemon is not None
        return self.daemon.socket

    def restart(self) -> None:
        self.stop()
        fresh_dir(self.state)
        extra = ("--registry-config", str(self.config))
        self.daemon = ServeProcess(self.state, *extra, cgroup_parent=CGROUP_PARENT).start()

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.cleanup_pods()
            self.daemon.stop()
            self.daemon = None

    def pull(self, ref: str) -> None:
        run([*KURMACTL, "--host", self.socket, "pull", "-q", ref])


def run(argv: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> str:
    """argv's output; a failure raises RuntimeError with the command and the end of its stderr."""
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    if result.returncode != 0:
        command = " ".join(Path(argv[0]).name if i == 0 else a for i, a in enumerate(argv[:6]))
        raise RuntimeError(
            f"{command} ... exited {result.returncode}: {result.stderr.strip()[-600:]}"
        )
    return result.stdout


class Podman:
    """podman on its own store and run directories below ``root``: runc (crun refuses hybrid
    cgroup hosts), cgroupfs (no systemd here), no events journal, ulimits below ours."""

    def __init__(self, root: Path, cert_dir: Path) -> None:
        self.root, self.cert_dir = root, cert_dir
        conf = root.parent / f"{root.name}-containers.conf"
        conf.write_text(CONTAINERS_CONF)
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}

    def argv(self, *args: str) -> list[str]:
        return ["podman", "--root", str(self.root / "store"), "--runroot", str(self.root / "run"),
                "--tmpdir", str(self.root / "tmp"), "--storage-driver", "overlay", "--runtime", "runc",
                "--cgroup-manager", "cgroupfs", "--events-backend", "none", *args]  # fmt: skip

    def pull(self, ref: str) -> None:
        run(self.argv("pull", "-q", "--cert-dir", str(self.cert_dir), ref), self.env)

    def reset(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)


def peer_missing(*tools: str) -> str | None:
    """Why a peer cannot be measured (a tool it needs is not installed), or None."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if not missing:
        return None
    return f"{', '.join(missing)} not installed (apt-get install {' '.join(missing)})"


def working(contenders: dict[str, Callable[[], object]], prepare: Callable[[], None],
            check: Callable[[], None] = lambda: None) -> dict[str, Callable[[], object]]:  # fmt: skip
    """The contenders whose first run (a warm-up, not counted) succeeds; each other is printed
    with why it failed. kurmad failing ends the benchmark."""
    kept = {}
    for name, action in contenders.items():
        prepare()
        try:
            action()
            check()
        except (OSError, RuntimeError, subprocess.SubprocessError) as err:
            if name.startswith("kurmactl"):
                sys.exit(f"{name} failed: {err}")
            print(f"  {name}: NOT measured, its trial run failed: {err}")
            continue
        kept[name] = action
    return kept


def report_peers(
    title: str, series: dict[str, Series], kurmad: str, goals: dict[str, float]
) -> None:
    """report() against the first peer measured; the ratio to each other peer after it."""
    peers = [name for name in series if name != kurmad]
    if not peers:
        print(f"\n== {title}\n  {series[kurmad].line()}\n  no peer measured: no ratio")
        return
    report(title, series, kurmad, peers[0], goals.get(peers[0]))
    for peer in peers[1:]:
        ratio = series[kurmad].median / series[peer].median
        goal = goals.get(peer)
        verdict = (
            ""
            if goal is None
            else f"  (goal <= {goal:.2f}: {'met' if ratio <= goal else 'NOT met'})"
        )
        print(f"  ratio {kurmad} / {peer} = {ratio:.2f}{verdict}")


def add_peer(contenders: dict[str, Callable[[], object]], name: str, tools: tuple[str, ...],
             action: Callable[[], object]) -> None:  # fmt: skip
    reason = peer_missing(*tools)
    if reason:
        print(f"  {name}: NOT measured, {reason}")
    else:
        contenders[name] = action


class FirstLine:
    """A command timed to its first line of output: a call returns when the line arrives;
    ``settle`` waits for the process to end and checks that it printed ``hi`` and succeeded."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.argv, self.env = argv, env
        self.process: subprocess.Popen[bytes] | None = None
        self.line = b""

    def __call__(self) -> None:
        self.process = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        env=self.env)  # fmt: skip
        assert self.process.stdout is not None
        self.line = self.process.stdout.readline()

    def settle(self) -> None:
        if self.process is None:
            return
        process, self.process = self.process, None
        _, err = process.communicate(timeout=60)
        if process.returncode != 0 or self.line != b"hi\n":
            raise RuntimeError(f"{self.argv[0]} printed {self.line!r} and exited {process.returncode}: "
                               f"{err.decode(errors='replace').strip()[-600:]}")  # fmt: skip


# --- the benchmarks -----------------------------------------------------------------------------


def bench_pull(work: Path, registry: Registry, kurmad: Kurmad, podman: Podman, rounds: int) -> None:
    ref = f"{registry.host}/{REPO}:a"
    copy = work / "skopeo"
    skopeo = ["skopeo", "copy", "-q", "--src-cert-dir", str(registry.certs_dir / registry.host),
              f"docker://{ref}", f"oci:{copy}:a"]  # fmt: skip
    print(
        "\npull: kurmad fetches, verifies and extracts; skopeo fetches and verifies; podman all three"
    )
    contenders: dict[str, Callable[[], object]] = {"kurmactl pull": lambda: kurmad.pull(ref)}
    add_peer(contenders, "skopeo copy", ("skopeo",), lambda: run(skopeo))
    add_peer(contenders, "podman pull", ("podman", "runc"), lambda: podman.pull(ref))

    def prepare() -> None:  # nothing cached anywhere: new state, new destinations
        kurmad.restart()
        shutil.rmtree(copy, ignore_errors=True)
        podman.reset()

    series = alternate(rounds, working(contenders, prepare), prepare)
    report_peers(
        f"pull of a 5-layer image, nothing cached ({ref})", series, "kurmactl pull", PULL_GOALS
    )


def bench_shared_layers(relay: CountingRelay, kurmad: Kurmad, layout: Path) -> None:
    """The second image after the first, through the counting relay, into the same store."""
    first, _ = layout_blobs(layout, "a")
    second, documents = layout_blobs(layout, "b")
    new = sum(size for digest, size in second.items() if digest not in first)
    kurmad.restart()
    relay.fetched = 0
    kurmad.pull(f"{relay.host}/{REPO}:a")
    fetched_first, relay.fetched = relay.fetched, 0
    seconds = timed(lambda: kurmad.pull(f"{relay.host}/{REPO}:b"))
    fetched = relay.fetched
    expected = new + documents
    print("\n== pull of an image sharing 4 of its 5 layers with one pulled before (same store)")
    print(
        f"  first image:  {fetched_first:>11,} bytes from the registry (its blobs: {sum(first.values()):,})"
    )
    print(f"  second image: {fetched:>11,} bytes from the registry in {seconds:.3f} s")
    print(f"  its new layer {new:,} bytes + manifest and config {documents:,} = {expected:,}")
    slack = 64 * 1024  # TLS handshakes and records, HTTP headers
    verdict = "met" if fetched <= expected + slack else "NOT met"
    print(f"  fetched / (new layer + documents) = {fetched / expected:.2f}  "
          f"(goal: only those, + {slack // 1024} KiB of TLS and HTTP: {verdict})")  # fmt: skip


def bench_run(registry: Registry, kurmad: Kurmad, podman: Podman, rounds: int) -> None:
    ref = f"{registry.host}/{REPO}:a"
    kurmad.restart()
    kurmad.pull(ref)
    contenders = {"kurmactl run --rm": FirstLine(
        [*KURMACTL, "--host", kurmad.socket, "run", "--rm", "--net", "none", ref, "--", "/bin/echo", "hi"])}  # fmt: skip
    print("\nrun: the image already pulled; time to the first line of output; one warm-up each")
    reason = peer_missing("podman", "runc")
    if reason:
        print(f"  podman run --rm: NOT measured, {reason}")
    else:
        try:
            podman.reset()
            podman.pull(ref)
            argv = podman.argv("run", "--rm", "--network", "none", ref, "/bin/echo", "hi")
            contenders["podman run --rm"] = FirstLine(argv, podman.env)
        except (OSError, RuntimeError, subprocess.SubprocessError) as err:
            print(f"  podman run --rm: NOT measured, its pull failed: {err}")

    def settle() -> None:  # the previous run's process ends, its output checked, before a new one
        for command in contenders.values():
            command.settle()

    kept = working(dict(contenders), settle, settle)
    series = alternate(rounds, kept, settle)
    settle()
    report_peers("/bin/echo hi in the pulled image, to its first output line", series,
                 "kurmactl run --rm", {})  # fmt: skip


def describe(layout: Path) -> None:
    sizes, _ = layout_blobs(layout, "a")
    mib = ", ".join(f"{size / 2**20:.1f}" for size in sizes.values())
    print(f"image a: {len(sizes)} gzip layers of {mib} MiB ({sum(sizes.values()) / 2**20:.1f} MiB; "
          f"{(DATA_LAYERS * LAYER_BYTES) / 2**20:.0f} MiB of data unpacked); image b: its first 4 + 1 new")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("KURMAD_BENCH_ROUNDS", 5)))
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("the pull benchmark runs kurmad serve, pods and podman: run it as root")
    missing = peer_missing("docker-registry", "umoci", "skopeo")
    if missing:
        sys.exit(f"the registry and the images need them: {missing}")
    # kurmactl starts once a measurement: from .pyc, even where PYTHONDONTWRITEBYTECODE is set
    compileall.compile_dir(Path(kurmad.__file__).parent, quiet=1)
    with (
        scratch() as work,
        running_registry(work / "registry") as registry,
        CountingRelay(registry.port) as relay,
    ):
        layout = build_layout(work)
        for tag in ("a", "b"):
            registry.push(layout, tag, f"{REPO}:{tag}")
        describe(layout)
        (registry.certs_dir / relay.host).mkdir()  # certs.d is keyed by HOST:PORT
        shutil.copy(registry.tls.ca_cert, registry.certs_dir / relay.host / "ca.crt")
        config = work / "registries.yml"
        config.write_text(yaml.safe_dump({"certs_dirs": [str(registry.certs_dir)]}))
        daemon = Kurmad(work / "kurmad", config)
        podman = Podman(work / "podman", registry.certs_dir / registry.host)
        try:
            bench_pull(work, registry, daemon, podman, args.rounds)
            bench_shared_layers(relay, daemon, layout)
            bench_run(registry, daemon, podman, args.rounds)
        finally:
            daemon.stop()
            podman.reset()
            CgroupDriver(CGROUP_PARENT).cgroup("").remove()


if __name__ == "__main__":
    main()
