"""The bootable initramfs: build/initramfs.cpio.zst.

    python -m initrd.build [--build DIR]

What goes in: the Python interpreter this project runs on (its binary, the shared libraries it
and its extensions link, a pruned standard library compiled to .pyc), kurmad and its
dependencies, the kernel modules a virtual machine needs with their dependencies (indexed again
by depmod so that coldplug only ever matches what is here), mkfs.ext4/e2fsck/resize2fs/blkid,
nft, a default /etc/kurma.yml, the device nodes the kernel and Python need before devtmpfs,
and the base system images. The same inputs give the same bytes: files are compiled without
timestamps, archived sorted with one mtime, and compressed single-threaded.
"""

from __future__ import annotations

import argparse
import io
import os
import py_compile
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import time
import zipfile
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

import zstandard
from packaging.requirements import Requirement

from . import cpio
from .kernel import Kernel, fetch

HERE = Path(__file__).parent
REPO = HERE.parent
# On Debian's site path, so every helper process finds kurmad; the pure-Python packages
# (kurmad too) are in one zip beside it, named by a .pth file there.
DIST_PACKAGES = "usr/lib/python3/dist-packages"
PACKAGES_ZIP = "usr/lib/python3/kurmad-packages.zip"
# The drivers and filesystems a QEMU/KVM guest and the pods need (nftables for their networks);
# coldplug picks the drivers among them.
MODULES = ["virtio_pci", "virtio_net", "virtio_blk", "virtio_console", "virtio_rng", "overlay",
           "veth", "bridge", "ext4", "nf_tables", "nft_chain_nat", "nft_nat", "nft_masq", "nft_fib_inet"]  # fmt: skip
# (Certificates are made with the cryptography package, so no openssl program.)
PROGRAMS = ["/usr/sbin/mke2fs", "/usr/sbin/e2fsck", "/usr/sbin/resize2fs", "/usr/sbin/blkid",
            "/usr/sbin/ldconfig", "/usr/sbin/nft"]  # fmt: skip
PROGRAM_LINKS = {"usr/sbin/mkfs.ext4": "mke2fs"}
ETC_FILES = ["/etc/mke2fs.conf", "/etc/ld.so.conf", "/etc/ld.so.conf.d/x86_64-linux-gnu.conf"]
# Loaded with ctypes, so no ELF file names them: pyudev's libudev.
CTYPES_LIBRARIES = ["/lib/x86_64-linux-gnu/libudev.so.1"]
# What no kurmad host runs: GUIs, tests, packaging, the interactive help, old formats.
# (sqlite3 and unittest stay: pyroute2 imports them.)
STDLIB_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data",
               "distutils", "venv", "curses", "dbm", "turtle.py", "pydoc.py",
               "site-packages", "dist-packages"}  # fmt: skip
# Extension modules left out as well: the tests', the GUIs', the CJK codecs, the interactive
# line editor, and _decimal (the decimal module falls back to its pure-Python version).
DYNLOAD_SKIP = re.compile(
    r"^(_tkinter|_curses|_dbm|_gdbm|_test|xxlimited|_xxtest|_ctypes_test|audioop|nis|ossaudiodev|"
    r"_codecs_(jp|hk|cn|kr|tw|iso2022)|_multibytecodec|_decimal|_xxsubinterpreters|readline)"
)
PACKAGE_SKIP = re.compile(
    r"(/__pycache__/|/tests?/|\.pyi$|/py\.typed$|zstandard/_cffi\.|zstandard/backend_cffi\.py$)"
)
INIT = """#!/usr/bin/python3.11 -I
\"\"\"The kernel runs this as PID 1: kurmad boot. Should kurmad itself fail to load, say why on
the console and stay: PID 1 exiting is a kernel panic.\"\"\"
import os
import sys
import time
import zipfile
import traceback

try:
    from kurmad.__main__ import main

    main(["boot"])
except BaseException:
    traceback.print_exc()
print("kurmad: cannot go on; the system is halted", flush=True)
while True:
    try:
        os.waitpid(-1, 0)
    except ChildProcessError:
        time.sleep(3600)
    except BaseException:
        time.sleep(1)
"""
PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
)
GROUP = "root:x:0:\nnogroup:x:65534:\n"
DEVICES = [("dev/console", 5, 1, 0o600), ("dev/null", 1, 3, 0o666), ("dev/urandom", 1, 9, 0o666)]


def source_date_epoch() -> int:
    return int(os.environ.get("SOURCE_DATE_EPOCH", "0"))


# --- the tree ----------------------------------------------------------------------------------------


def in_root(root: Path, path: str | Path) -> Path:
    """Where a system path goes in the merged-/usr tree (/lib → usr/lib, and so on); a path
    already inside ``root`` stays."""
    if Path(path).is_relative_to(root):
        return Path(path)
    text = str(path).lstrip("/")
    for top in ("bin", "sbin", "lib", "lib64"):
        if text == top or text.startswith(top + "/"):
            text = "usr/" + text
    return root / text


def put_file(root: Path, target: str | Path, source: Path, mode: int | None = None) -> Path:
    destination = in_root(root, target)
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, destination)  # follows symlinks: the content, under the name asked for
    destination.chmod(mode if mode is not None else stat.S_IMODE(source.stat().st_mode))
    return destination


def put_text(root: Path, target: str, text: str, mode: int = 0o644) -> None:
    destination = in_root(root, target)
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_text(text)
    destination.chmod(mode)


def lay_out(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
    for directory in ("usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "etc", "proc", "sys", "dev",
                      "run", "var/lib", "root", "mnt"):  # fmt: skip
        (root / directory).mkdir(parents=True, exist_ok=True)
    (root / "tmp").mkdir(mode=0o1777)
    (root / "tmp").chmod(0o1777)
    for top in ("bin", "sbin", "lib", "lib64"):
        (root / top).symlink_to(f"usr/{top}")


# --- Python ------------------------------------------------------------------------------------------


def compile_to(source: Path, target: Path, shown_as: str) -> None:
    """A sourceless .pyc (no timestamp inside) where the .py would be."""
    target.parent.mkdir(parents=True, exist_ok=True)
    py_compile.compile(str(source), cfile=str(target), dfile=shown_as, doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)  # fmt: skip


def copy_python_tree(
    root: Path, source: Path, target: Path, skip: re.Pattern[str] | None = None
) -> None:
    """Every module under ``source`` as .pyc, its extensions stripped, its data files as is;
    tracebacks name the files where they are in the image."""
    for current, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            path = Path(current, name)
            relative = path.relative_to(source)
            if skip is not None and skip.search("/" + str(path.relative_to(source.parent))):
                continue
            if name.endswith(".py"):
                compile_to(
                    path,
                    target / relative.with_suffix(".pyc"),
                    f"/{(target / relative).relative_to(root)}",
                )
            elif name.endswith(".pyc"):
                continue
            else:
                copied = target / relative
                copied.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, copied)
                copied.chmod(stat.S_IMODE(path.stat().st_mode))
                if ".so" in name:
                    strip(copied)


def zip_tree(directory: Path, archive: Path, members: list[Path]) -> None:
    """Move ``members`` (files and trees under ``directory``) into a zip that Python imports
    from: stored uncompressed (the initramfs is compressed as a whole), sorted, one date. One
    file instead of thousands: cheaper to copy onto the tmpfs root, and fewer lookups at
    every import."""
    files = sorted(
        f for m in members for f in ([m] if m.is_file() else m.rglob("*")) if f.is_file()
    )
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as out:
        for path in files:
            info = zipfile.ZipInfo(
                str(path.relative_to(directory)), date_time=(1980, 1, 1, 0, 0, 0)
            )
            info.external_attr = 0o644 << 16
            out.writestr(info, path.read_bytes())
    for member in members:
        if member.is_dir():
            shutil.rmtree(member)
        else:
            member.unlink()


def has_extensions(path: Path) -> bool:
    """Whether ``path`` (a package, or a module such as cffi's _cffi_backend.so) holds compiled
    code, which Python cannot import from inside a zip."""
    return path.suffix == ".so" or (path.is_dir() and any(path.rglob("*.so")))


def strip(path: Path) -> None:
    subprocess.run(["strip", "--strip-unneeded", str(path)], check=True)


def add_python(root: Path) -> None:
    interpreter = Path(os.path.realpath(sys.executable))
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    put_file(root, f"/usr/bin/{version}", interpreter)
    (root / "usr/bin/python3").symlink_to(version)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    target = root / "usr/lib" / version
    for entry in sorted(stdlib.iterdir()):
        if (
            entry.name in STDLIB_SKIP
            or entry.name.startswith("config-")
            or entry.name == "__pycache__"
        ):
            continue
        if entry.name == "lib-dynload":
            for module in sorted(entry.iterdir()):
                if not DYNLOAD_SKIP.match(module.name):
                    put_file(root, target / "lib-dynload" / module.name, module)
        elif entry.is_dir():
            copy_python_tree(root, entry, target / entry.name)
        elif entry.suffix == ".py":
            compile_to(
                entry, target / entry.with_suffix(".pyc").name, f"/usr/lib/{version}/{entry.name}"
            )
    # python3XY.zip is on the interpreter's default path, ahead of the directory; os.pyc stays
    # a file too: the landmark by which Python finds its prefix.
    archive = root / "usr/lib" / f"python{sys.version_info.major}{sys.version_info.minor}.zip"
    zip_tree(target, archive, [m for m in sorted(target.iterdir()) if m.name != "lib-dynload"])
    compile_to(stdlib / "os.py", target / "os.pyc", f"/usr/lib/{version}/os.py")


def runtime_distributions(name: str = "kurmad") -> dict[str, metadata.Distribution]:
    """``name`` and every distribution it needs at run time (extras and other platforms'
    requirements left out), by normalised name."""
    found: dict[str, metadata.Distribution] = {}

    def visit(requirement: str) -> None:
        dist = metadata.distribution(requirement)
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in found:
            return
        found[key] = dist
        for text in dist.requires or []:
            needed = Requirement(text)
            if needed.marker is None or needed.marker.evaluate({"extra": ""}):
                visit(needed.name)

    visit(name)
    return found


def top_level_entries(dist: metadata.Distribution) -> list[Path]:
    """The packages and modules a distribution installed, as paths on this machine."""
    names = {str(f).split("/")[0] for f in dist.files or []}
    keep = sorted(n for n in names if not n.endswith((".dist-info", ".egg-info", ".pth"))
                  and n not in ("..", "__pycache__", "bin"))  # fmt: skip
    return [Path(str(dist.locate_file(n))) for n in keep]


def add_packages(root: Path) -> list[str]:
    """kurmad from this checkout, its dependencies from where this interpreter finds them."""
    target = root / DIST_PACKAGES
    copy_python_tree(root, REPO / "kurmad", target / "kurmad", PACKAGE_SKIP)
    added = []
    for key, dist in sorted(runtime_distributions().items()):
        if key == "kurmad":
            continue
        for entry in top_level_entries(dist):
            if entry.is_dir():
                copy_python_tree(root, entry, target / entry.name, PACKAGE_SKIP)
            elif entry.suffix == ".py":
                compile_to(
                    entry, target / entry.with_suffix(".pyc").name, f"/{DIST_PACKAGES}/{entry.name}"
                )
            else:
                strip(put_file(root, target / entry.name, entry))
        added.append(f"{key} {dist.version}")
    pure = [m for m in sorted(target.iterdir()) if not has_extensions(m)]
    zip_tree(target, root / PACKAGES_ZIP, pure)
    put_text(
        root, f"{DIST_PACKAGES}/kurmad-packages.pth", f"/{PACKAGES_ZIP}\n"
    )  # site adds it to the path
    put_text(root, "init", INIT, 0o755)
    return added


# --- programs and their libraries ----------------------------------------------------------------------


def is_elf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def needed_libraries(elf: Path) -> set[str]:
    """The shared libraries (and the loader) ``elf`` needs, as the paths ldd resolves them to."""
    out = subprocess.run(["ldd", str(elf)], capture_output=True, text=True).stdout
    found = set()
    for line in out.splitlines():
        match = re.search(r"=> (/\S+)", line) or re.match(r"\s*(/\S+) \(", line)
        if match:
            found.add(match.group(1))
    return found


def add_programs(root: Path) -> None:
    for program in PROGRAMS:
        put_file(root, program, Path(program))
    for library in CTYPES_LIBRARIES:
        put_file(root, library, Path(library))
    for link, target in PROGRAM_LINKS.items():
        (root / link).parent.mkdir(parents=True, exist_ok=True)
        (root / link).symlink_to(target)
    for path in ETC_FILES:
        if Path(path).exists():
            put_file(root, path, Path(path))


def add_libraries(root: Path) -> list[str]:
    """Every library any ELF file in the tree needs, under the name it is asked for."""
    wanted: set[str] = set()
    for current, _, files in os.walk(root):
        for name in files:
            path = Path(current, name)
            if not path.is_symlink() and is_elf(path):
                wanted |= needed_libraries(path)
    for library in sorted(wanted):
        if not in_root(root, library).exists():
            put_file(root, library, Path(library))
    subprocess.run(
        ["ldconfig", "-r", str(root)], check=True
    )  # ld.so.cache: ctypes.util.find_library reads it
    return sorted(wanted)


# --- kernel modules -------------------------------------------------------------------------------------


def module_closure(kernel: Kernel, names: Iterable[str]) -> list[str]:
    """modules.dep paths of ``names`` and everything they depend on (built-in ones need none)."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (kernel.modules / "modules.dep").read_text().splitlines():
        target, _, rest = line.partition(":")
        name = Path(target).name.split(".ko")[0].replace("-", "_")
        by_name[name] = target
        deps[target] = rest.split()
    builtin = {
        Path(p).name.split(".ko")[0].replace("-", "_")
        for p in (kernel.modules / "modules.builtin").read_text().split()
    }
    wanted: list[str] = []

    def visit(path: str) -> None:
        if path not in wanted:
            wanted.append(path)
            for dep in deps.get(path, []):
                visit(dep)

    for name in names:
        if name in by_name:
            visit(by_name[name])
        elif name not in builtin:
            raise RuntimeError(f"kernel {kernel.release} has no module {name}")
    return sorted(wanted)


def add_modules(root: Path, kernel: Kernel) -> list[str]:
    target = root / "usr/lib/modules" / kernel.release
    paths = module_closure(kernel, MODULES)
    for relative in paths:
        put_file(root, target / relative, kernel.modules / relative, 0o644)
    for index in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        put_file(root, target / index, kernel.modules / index, 0o644)
    subprocess.run(["depmod", "-b", str(root), kernel.release], check=True)
    for binary_index in target.glob("*.bin"):
        binary_index.unlink()  # kurmad reads the text indexes
    return paths


# --- the rest ----------------------------------------------------------------------------------------


def add_config_and_images(root: Path, build: Path) -> list[Path]:
    from .images import build_all

    put_text(root, "etc/kurma.yml", (HERE / "kurma.yml").read_text())
    put_text(root, "etc/passwd", PASSWD)
    put_text(root, "etc/group", GROUP)
    put_text(root, "etc/hostname", "kurma\n")
    put_text(
        root, "etc/os-release", 'NAME="kurmad"\nID=kurmad\nPRETTY_NAME="kurmad container host"\n'
    )
    images = build_all(build / "images", build / "debs")
    for image in images:
        put_file(root, f"usr/share/kurma/images/{image.name}", image, 0o644)
    return images


def pack(root: Path, out: Path, level: int = 19) -> int:
    entries = cpio.entries_of(root)
    entries += [cpio.Entry(path, stat.S_IFCHR | mode, rdev=(major, minor))
                for path, major, minor, mode in DEVICES]  # fmt: skip
    archive = io.BytesIO()
    cpio.write(entries, archive, source_date_epoch())
    data = zstandard.ZstdCompressor(level=level, threads=0).compress(archive.getvalue())
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    return len(archive.getvalue())


def build_initramfs(build: Path) -> Path:
    build.mkdir(parents=True, exist_ok=True)
    kernel = fetch(build)
    root = build / "initramfs-root"
    out = build / "initramfs.cpio.zst"
    began = time.monotonic()
    lay_out(root)
    add_python(root)
    add_packages(root)
    add_programs(root)
    add_modules(root, kernel)
    add_config_and_images(root, build)
    libraries = add_libraries(root)
    unpacked = pack(root, out)
    print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB ({unpacked / 2**20:.1f} MiB unpacked, "
          f"{len(libraries)} libraries) in {time.monotonic() - began:.0f}s")  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="build the kurmad initramfs")
    parser.add_argument("--build", type=Path, default=Path("build"))
    build_initramfs(parser.parse_args().build)


if __name__ == "__main__":
    main()
