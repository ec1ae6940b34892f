"""A real Debian 12 root filesystem as an OCI image, as podman would run it: debootstrap builds
it (setuid binaries, hard links, device nodes, thousands of files), umoci packs it, skopeo pushes
it to a TLS registry, ``kurmactl pull`` fetches it and ``kurmactl run`` runs its programs."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from kurmad.linux.cgroups import CgroupDriver

from .daemon import ServeProcess
from .registry import Registry, missing_tools, running_registry

SUITE = "bookworm"
TAG = "12"
APT_INSTALL = ["apt-get", "install", "-y", "-q", "-o", "DPkg::Lock::Timeout=600"]

pytestmark = pytest.mark.root


@pytest.fixture(scope="module", autouse=True)
def _requirements() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: debootstrap, device nodes and kurmad's pods")
    missing = missing_tools()
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (make deps)")


# --- the root filesystem -------------------------------------------------------------------------


def apt_mirror(suite: str = SUITE) -> str:
    """The Debian mirror this machine's apt uses for ``suite``: debootstrap must reach the same
    one (CI may have no other), so it is read, not assumed."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for stanza in re.split(r"\n\s*\n", sources.read_text()):
            fields = _deb822_fields(stanza)
            if (
                "deb" in fields.get("types", "").split()
                and suite in fields.get("suites", "").split()
            ):
                return fields["uris"].split()[0]
    listing = Path("/etc/apt/sources.list")
    if listing.exists():
        for line in listing.read_text().splitlines():
            words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                return words[1]
    pytest.skip(f"apt has no mirror for {suite} in {sources} or {listing}")


def _deb822_fields(stanza: str) -> dict[str, str]:
    """A deb822 stanza's fields, keys lowercased, continuation lines joined."""
    fields: dict[str, str] = {}
    key = ""
    for line in stanza.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line[0].isspace() and key:
            fields[key] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
    return fields


def ensure_debootstrap() -> None:
    if shutil.which("debootstrap") is None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run([*APT_INSTALL, "debootstrap"], check=True, env=env, timeout=900)


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ensure_debootstrap()
    target = tmp_path_factory.mktemp("debian") / "rootfs"
    argv = ["debootstrap", "--variant=minbase", "--include=python3-minimal", SUITE, str(target),
            apt_mirror()]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # debootstrap only warns when it cannot verify; the image must come from a signed Release
    assert "Valid Release signature" in result.stdout, result.stdout[-3000:]
    return target


def hard_link_pair(root: Path) -> tuple[str, str]:
    """Two paths of one regular file in the tree (e.g. perl and perl5.36.0), as the pod sees them."""
    seen: dict[tuple[int, int], str] = {}
    for directory, _, files in sorted(os.walk(root / "usr")):
        for name in sorted(files):
            path = Path(directory) / name
            info = path.lstat()
            if info.st_nlink > 1 and stat.S_ISREG(info.st_mode):
                inside = "/" + str(path.relative_to(root))
                first = seen.setdefault((info.st_dev, info.st_ino), inside)
                if first != inside:
                    return first, inside
    pytest.fail(f"no hard links under {root}/usr")


# --- the image, the registry and the daemon ------------------------------------------------------


@pytest.fixture(scope="module")
def layout(rootfs: Path) -> Path:
    """One layer with the whole tree, the config a Debian image has (root, bash)."""
    layout = rootfs.parent / "layout"
    image = f"{layout}:{TAG}"
    umoci("init", "--layout", str(layout))
    umoci("new", "--image", image)
    umoci("insert", "--image", image, str(rootfs), "/")
    umoci("config", "--image", image, "--config.user", "root", "--config.cmd", "/bin/bash")
    return layout


def umoci(*args: str) -> None:
    result = subprocess.run(["umoci", *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"umoci {args[0]}: {result.stderr}"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, layout: Path) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("registry")) as registry:
        registry.push(layout, TAG, f"debian:{TAG}")
        yield registry


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, registry: Registry) -> Iterator[ServeProcess]:
    base = tmp_path_factory.mktemp("serve")
    config = base / "registries.yaml"
    config.write_text(yaml.safe_dump({"certs_dirs": [str(registry.certs_dir)]}))
    serve = ServeProcess(base / "state", "--registry-config", str(config),
                         cgroup_parent=f"/kurmad-test-{os.getpid()}-debian")  # fmt: skip
    serve.start()
    try:
        yield serve
    finally:
        serve.cleanup_pods()
        serve.stop()
        CgroupDriver(serve.cgroup_parent).cgroup("").remove()


def kurmactl(
    daemon: ServeProcess, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "kurmad.cli.kurmactl", "--host", daemon.socket, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def debian(daemon: ServeProcess, registry: Registry) -> str:
    """The image's reference, once kurmad has pulled it."""
    reference = f"{registry.host}/debian:{TAG}"
    pulled = kurmactl(daemon, "pull", reference, timeout=600)
    assert pulled.returncode == 0, pulled.stderr
    return reference


def run(daemon: ServeProcess, image: str, *argv: str) -> str:
    """``kurmactl run --rm IMAGE -- ARGV``'s output, once it exited 0."""
    result = kurmactl(daemon, "run", "--rm", image, "--", *argv)
    assert result.returncode == 0, f"{argv}: exit {result.returncode}: {result.stderr}"
    return result.stdout


# --- the programs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "first_line"),
    [
        # root's su asks no password (pam_rootok): PAM and the image's passwd must work
        (("su", "-s", "/bin/sh", "-c", "id -u", "nobody"), r"65534"),
        (("apt-get", "--version"), r"apt 2\.\d+\.\d+ \(\w+\)"),
        (("python3", "-c", "print(6*7)"), r"42"),
    ],
    ids=["su-to-nobody", "apt", "python3"],
)
def test_debians_programs_run(daemon: ServeProcess, debian: str, argv: tuple[str, ...],
                              first_line: str) -> None:  # fmt: skip
    output = run(daemon, debian, *argv)
    assert re.fullmatch(first_line, output.splitlines()[0]), output


def test_setuid_bits_are_kept(daemon: ServeProcess, debian: str) -> None:
    assert run(daemon, debian, "stat", "-c", "%a", "/bin/su").strip() == "4755"


def test_hard_links_stay_one_inode(daemon: ServeProcess, debian: str, rootfs: Path) -> None:
    first, second = hard_link_pair(rootfs)
    inodes = run(daemon, debian, "stat", "-c", "%i", first, second).split()
    assert len(inodes) == 2 and inodes[0] == inodes[1], (first, second, inodes)
