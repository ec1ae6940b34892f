"""The kernel: Debian's cloud kernel, the package ``linux-image-cloud-amd64`` depends on, fetched
with ``apt-get download`` and unpacked (not installed) under build/.

    python -m initrd.kernel [--build DIR]     prints the vmlinuz path and the release
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

META_PACKAGE = "linux-image-cloud-amd64"


@dataclass(frozen=True)
class Kernel:
    release: str  # e.g. 6.1.0-56-cloud-amd64
    vmlinuz: Path
    modules: Path  # lib/modules/<release> of the unpacked package, with modules.dep


def kernel_package(meta: str = META_PACKAGE) -> str:
    """The versioned package the meta-package depends on right now."""
    out = subprocess.run(["apt-cache", "depends", meta], capture_output=True, text=True, check=True)
    found = re.findall(r"Depends: (linux-image-[\w.+-]+)", out.stdout)
    if not found:
        raise RuntimeError(f"{meta} depends on no linux-image package (run apt-get update?)")
    return found[0]


def download(package: str, debs: Path) -> Path:
    """The package's .deb in ``debs``, downloaded unless already there."""
    debs.mkdir(parents=True, exist_ok=True)
    existing = sorted(debs.glob(f"{package}_*.deb"))
    if existing:
        return existing[-1]
    # As root, apt drops to the _apt user for downloads, who cannot write here: stay root.
    subprocess.run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", package],
                   cwd=debs, check=True)  # fmt: skip
    return sorted(debs.glob(f"{package}_*.deb"))[-1]


def fetch(build: Path) -> Kernel:
    """Download, unpack and index the kernel once; later calls reuse build/kernel."""
    package = kernel_package()
    release = package.removeprefix("linux-image-")
    root = build / "kernel"
    vmlinuz = root / "boot" / f"vmlinuz-{release}"
    modules = root / "lib" / "modules" / release
    if not (vmlinuz.exists() and (modules / "modules.dep").exists()):
        deb = download(package, build / "debs")
        shutil.rmtree(root, ignore_errors=True)
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
        subprocess.run(["depmod", "-b", str(root), release], check=True)
    return Kernel(release, vmlinuz, modules)


def main() -> None:
    parser = argparse.ArgumentParser(description="fetch Debian's cloud kernel into build/")
    parser.add_argument("--build", type=Path, default=Path("build"))
    kernel = fetch(parser.parse_args().build)
    print(kernel.vmlinuz, kernel.release)


if __name__ == "__main__":
    main()
