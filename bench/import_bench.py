"""Image import against GNU tools, and rendering of an image with three dependencies.

    make bench-import        (or: .venv/bin/python -m bench.import_bench [--rounds N])

Import: a ~100 MB gzip ACI is imported by kurmad's store (decompress, hash, safe extraction,
commit) and, in the same run, handled by ``gzip -dc | tee >(sha512sum) | tar -x``. Rendering:
the first render of an image with three dependencies (a tree of hard links), against
``cp -al`` of the same four trees; and the overlay mount an app gets on top of it.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

from kurmad.appc import ImageManifest
from kurmad.images.aci import BuildOptions, build
from kurmad.images.render import render
from kurmad.images.store import ImageStore
from kurmad.images.streams import Compression
from kurmad.runtime.rootfs import mount_app_rootfs

from .common import alternate, fresh_dir, report, scratch, timed
from .dataset import make_rootfs, write_image_dir

IMPORT_GOAL = 1.2


def build_aci(image_dir: Path, out: Path, compression: Compression = Compression.GZIP) -> str:
    manifest = ImageManifest.loads((image_dir / "manifest").read_bytes())
    with open(out, "wb") as f:
        return build(image_dir / "rootfs", manifest, f, BuildOptions(compression=compression))


def bench_import(work: Path, rounds: int) -> float:
    source = write_image_dir(work / "big", "example.com/big")
    make_rootfs(source / "rootfs", total_bytes=290 * 2**20, files=8000)
    aci = work / "big.aci"
    build_aci(source, aci)
    print(f"import: {aci.stat().st_size / 2**20:.1f} MiB gzip ACI, 8000 files, 290 MiB of data")
    store_root, gnu_root = work / "store", work / "gnu"

    def kurmad_import() -> None:
        store = ImageStore(store_root)  # durable: syncfs before commit, as in production
        try:
            store.import_file(aci)
        finally:
            store.close()

    def gnu_pipeline() -> None:
        script = f"gzip -dc {aci} | tee >(sha512sum >/dev/null) | tar -x -C {gnu_root}"
        subprocess.run(["bash", "-c", script], check=True)

    def prepare() -> None:
        fresh_dir(store_root)
        fresh_dir(gnu_root)

    series = alternate(
        rounds, {"kurmad import": kurmad_import, "gzip|tee sha512sum|tar": gnu_pipeline}, prepare
    )
    return report(
        "import of a gzip ACI", series, "kurmad import", "gzip|tee sha512sum|tar", IMPORT_GOAL
    )


def bench_render(work: Path, rounds: int) -> None:
    store_root = work / "render-store"
    fresh_dir(store_root)
    store = ImageStore(store_root)
    deps = []
    for index, name in enumerate(["base", "libs", "tools"]):
        image = write_image_dir(work / name, f"example.com/{name}")
        make_rootfs(image / "rootfs", total_bytes=20 * 2**20, files=1500, seed=index + 10)
        aci = work / f"{name}.aci"
        image_id = build_aci(image, aci, Compression.NONE)
        store.import_file(aci)
        deps.append({"imageName": f"example.com/{name}", "imageID": image_id})
    app = write_image_dir(work / "app", "example.com/app", deps)
    make_rootfs(app / "rootfs", total_bytes=5 * 2**20, files=300, seed=99)
    build_aci(app, work / "app.aci", Compression.NONE)
    record = store.import_file(work / "app.aci").record
    trees = [work / name / "rootfs" for name in ("base", "libs", "tools", "app")]
    copy_root = work / "cp-al"

    def kurmad_render() -> None:
        fresh_dir(store_root / "renders")
        render(store, record)

    def cp_al() -> None:
        fresh_dir(copy_root)
        for tree in trees:
            subprocess.run(["cp", "-alf", f"{tree}/.", str(copy_root)], check=True)

    series = alternate(
        rounds, {"kurmad render (3 deps)": kurmad_render, "cp -al of the 4 trees": cp_al}
    )
    report(
        "first render of an image with 3 dependencies (4900 files)",
        series,
        "kurmad render (3 deps)",
        "cp -al of the 4 trees",
    )
    lower = render(store, record)
    mounts = []
    seconds = []
    for index in range(rounds):
        scratch_dir = work / f"app-{index}"
        seconds.append(timed(lambda: mounts.append(mount_app_rootfs([lower], scratch_dir))))  # noqa: B023
    for mount in mounts:
        mount.release()
    kind = "overlayfs" if mounts and mounts[0].mounted else "copy"
    seconds.sort()
    print(
        f"  per-app root filesystem ({kind}) on the cached render: median {seconds[len(seconds) // 2] * 1000:.1f} ms"
    )
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with scratch() as work:
        bench_import(work, args.rounds)
        bench_render(work, args.rounds)


if __name__ == "__main__":
    main()
