"""The base system images of a kurmad host, built offline from Debian packages as appc ACIs.

    python -m initrd.images --out build/images --cache build/debs

writes ``busybox.aci`` (kurma.io/busybox), ``console.aci`` (kurma.io/console: a login on the
serial console, and SSH with dropbear when keys are given) and ``ntp.aci`` (kurma.io/ntp:
OpenNTPD keeping the clock). Packages come from apt (``apt-get download`` into the cache, the
candidate version apt knows) and are unpacked with ``dpkg -x``; nothing is installed.

The same .deb files always give the same bytes: files are copied, never taken from the host,
the archive writer sorts entries, zeroes owners and gives every entry one mtime
(SOURCE_DATE_EPOCH, else 0), and nothing else that varies (paths, times, umask) reaches it.

Dynamically linked programs get exactly the shared libraries their ELF headers name (DT_NEEDED
and the PT_INTERP loader, followed transitively), looked up in the Debian packages they depend
on, so the host's own libraries never leak into an image.
"""

from __future__ import annotations

import argparse
import os
import posixpath
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote

from kurmad.appc import ImageManifest
from kurmad.images.aci import BuildOptions, build
from kurmad.images.streams import Compression
from kurmad.linux.files import atomic_writer

HERE = Path(__file__).resolve().parent
CONSOLE_SCRIPT = HERE / "console" / "kurma-console"
NTP_SCRIPT = HERE / "ntp" / "kurma-ntp"

DEFAULT_OUT = Path("build/images")
DEFAULT_CACHE = Path("build/debs")
# zstd rather than gzip: smaller, and faster to unpack at boot.
COMPRESSION = Compression.ZSTD

# Debian architecture -> appc arch label (labels.py VALID_OS_ARCH spelling).
APPC_ARCH = {"amd64": "amd64", "arm64": "aarch64", "i386": "i386", "armhf": "armv7l",
             "armel": "armv6l", "ppc64el": "ppc64le", "ppc64": "ppc64", "s390x": "s390x"}  # fmt: skip

# The packages each image is made of; libraries are found from these packages' Depends.
BUSYBOX_PACKAGE = "busybox-static"
DROPBEAR_PACKAGE = "dropbear-bin"
OPENNTPD_PACKAGE = "openntpd"
NETBASE_PACKAGE = "netbase"  # /etc/services: OpenNTPD looks the ntp port up by name
# Applets busybox lists outside any directory (linuxrc) belong to an initrd, not an image.
_TOP_LEVEL_APPLETS = frozenset({"linuxrc"})

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
)
GROUP = "root:x:0:\nnogroup:x:65534:\n"
# Locked until kurma-console writes the real one at start: no password logs in. (Aging fields
# as Debian writes them: busybox cannot read an entry whose aging fields are all empty.)
SHADOW = "root:!::0:99999:7:::\nnobody:*::0:99999:7:::\n"
SHELLS = "/bin/sh\n/bin/ash\n"
# dropbear's glibc reads this; busybox ignores it.
NSSWITCH = "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nservices: files\n"
MOTD = (
    "\nThis is the console of a kurmad host. The host is managed through the kurmad API\n"
    "(kurmactl); changes made here to the host's files may not survive a reboot.\n\n"
)
# OpenNTPD's unprivileged engine runs as this user, chrooted into its home directory.
NTPD_USER_PASSWD = "ntpd:x:100:101:OpenNTPD:/var/lib/openntpd/run:/usr/sbin/nologin\n"
NTPD_USER_GROUP = "ntpd:x:101:\n"

CONSOLE_CAPABILITIES = (
    "CAP_AUDIT_WRITE",  # login and dropbear log sessions
    "CAP_CHOWN",  # getty, login and dropbear take ownership of the terminal
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_KILL",  # dropbear signals its session children
    "CAP_NET_BIND_SERVICE",  # dropbear on port 22
    "CAP_SETGID",
    "CAP_SETUID",  # login and dropbear become the user
    "CAP_SYS_CHROOT",
    "CAP_SYS_TTY_CONFIG",  # getty hangs up the line (vhangup)
)
NTP_CAPABILITIES = (
    "CAP_SETGID",  # the engine drops to the ntpd user ...
    "CAP_SETUID",
    "CAP_SYS_CHROOT",  # ... and chroots into /var/lib/openntpd/run
    "CAP_SYS_NICE",  # the time-keeping parent raises its priority
    "CAP_SYS_TIME",  # adjtime, settimeofday
)


class BuildError(Exception):
    """An image cannot be built; the message says what is missing."""


# --- Debian packages ------------------------------------------------------------------------


@dataclass(frozen=True)
class Deb:
    package: str
    version: str
    path: Path


class DebSource:
    """Debian packages from a download cache: the version apt would install, downloaded once;
    unpacked (``dpkg -x``) on demand into ``work``."""

    def __init__(self, cache: Path, work: Path) -> None:
        self.cache = cache
        self.work = work
        self.arch = debian_architecture()
        self._debs: dict[str, Deb] = {}
        self._unpacked: dict[str, Path] = {}
        self._candidates: dict[str, str | None] = {}
        self._controls: dict[str, dict[str, str]] = {}
        cache.mkdir(parents=True, exist_ok=True)

    def plan(self, packages: Sequence[str]) -> None:
        """Learn the candidate versions of ``packages`` and everything they depend on at once:
        each apt-cache run costs a good fraction of a second, whatever it is asked."""
        names = apt_dependency_closure(packages)
        self._candidates.update(apt_candidates(names))

    def deb(self, package: str) -> Deb:
        if package not in self._debs:
            self._debs[package] = self._find_or_download(package)
        return self._debs[package]

    def unpacked(self, package: str) -> Path:
        if package not in self._unpacked:
            target = self.work / "debs" / package
            target.mkdir(parents=True)
            run(["dpkg", "-x", str(self.deb(package).path), str(target)])
            self._unpacked[package] = target
        return self._unpacked[package]

    def control(self, package: str, name: str) -> str:
        """A field of the package's control file, "" if it has none."""
        if package not in self._controls:
            text = run(["dpkg-deb", "-f", str(self.deb(package).path)])
            self._controls[package] = parse_control(text)
        return self._controls[package].get(name, "")

    def depends(self, package: str) -> list[str]:
        """The packages ``package`` depends on, in order; of alternatives the first."""
        fields = ", ".join(
            text for name in ("Pre-Depends", "Depends") if (text := self.control(package, name))
        )
        return [_package_name(item) for item in fields.split(",") if item.strip()]

    def _find_or_download(self, package: str) -> Deb:
        cached = self._cached_versions(package)
        if package not in self._candidates:
            self._candidates.update(apt_candidates([package]))
        wanted = self._candidates.get(package)
        if wanted is None:
            # apt knows nothing (no apt-get update): build from the newest .deb at hand.
            if not cached:
                raise BuildError(
                    f"{package}: apt has no candidate version and {self.cache} holds no .deb "
                    "of it (run apt-get update)"
                )
            return max(cached, key=_VersionKey)
        for deb in cached:
            if deb.version == wanted:
                return deb
        return self._download(package, wanted)

    def _cached_versions(self, package: str) -> list[Deb]:
        debs = []
        for path in sorted(self.cache.glob(f"{package}_*.deb")):
            # apt names them PACKAGE_VERSION_ARCH.deb, the epoch's colon escaped as %3a
            parts = path.stem.split("_")
            if len(parts) == 3 and parts[0] == package and parts[2] in (self.arch, "all"):
                debs.append(Deb(package, unquote(parts[1]), path))
        return debs

    def _download(self, package: str, version: str) -> Deb:
        # The sandbox user _apt may not write to the cache; root downloads there directly.
        run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", f"{package}={version}"],
            cwd=self.cache)  # fmt: skip
        for deb in self._cached_versions(package):
            if deb.version == version:
                return deb
        raise BuildError(f"apt-get download {package}={version} left no .deb in {self.cache}")


def _package_name(relation: str) -> str:
    """``libc6 (>= 2.34) | libc6.1`` -> ``libc6``; arch qualifiers (``:any``) dropped."""
    first = relation.split("|", 1)[0].strip()
    return re.split(r"[\s(:]", first, maxsplit=1)[0]


class _VersionKey:
    """Orders Debian versions as dpkg does, by asking dpkg."""

    def __init__(self, deb: Deb) -> None:
        self.version = deb.version

    def __lt__(self, other: _VersionKey) -> bool:
        return (
            subprocess.run(
                ["dpkg", "--compare-versions", self.version, "lt", other.version], check=False
            ).returncode
            == 0
        )


_APT_DEPENDS = ["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
                "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances"]  # fmt: skip


def apt_dependency_closure(packages: Sequence[str]) -> list[str]:
    """``packages`` and all they depend on, recursively, as apt knows them (virtual packages
    left out); just ``packages`` if apt cannot tell."""
    try:
        out = run([*_APT_DEPENDS, *packages])
    except BuildError:
        return list(packages)
    names = {line.strip() for line in out.splitlines() if line and not line[0].isspace()}
    return sorted({name for name in names if not name.startswith("<")} | set(packages))


def apt_candidates(packages: Sequence[str]) -> dict[str, str | None]:
    """The version ``apt-get install`` would choose of each package; None where apt knows
    none (an unknown name, or no apt-get update yet)."""
    candidates: dict[str, str | None] = dict.fromkeys(packages)
    try:
        out = run(["apt-cache", "policy", *packages])
    except BuildError:
        return candidates
    package = None
    for line in out.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            package = line[:-1].split(":", 1)[0]  # libc6:i386: -> libc6
        elif package in candidates and (match := re.match(r"\s+Candidate:\s*(\S+)", line)):
            candidates[package] = None if match[1] == "(none)" else match[1]
    return candidates


def parse_control(text: str) -> dict[str, str]:
    """A deb822 stanza as a dict; continuation lines are joined to their field."""
    fields: dict[str, str] = {}
    name = ""
    for line in text.splitlines():
        if line[:1].isspace() and name:
            fields[name] += "\n" + line.strip()
        elif ":" in line:
            name, _, value = line.partition(":")
            fields[name] = value.strip()
    return fields


def debian_architecture() -> str:
    return run(["dpkg", "--print-architecture"]).strip()


def run(argv: Sequence[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise BuildError(f"{argv[0]} is not installed (it comes with dpkg and apt)") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise BuildError(f"{' '.join(argv)} failed: {detail[-1] if detail else done.returncode}")
    return done.stdout


def label_version(debian_version: str) -> str:
    """A Debian version as an image version label: no epoch, and ``+ ~ :`` (which discovery
    URLs and semver-minded tools choke on) turned into ``-``. 1:1.35.0-4+deb12u1+b1 ->
    1.35.0-4-deb12u1-b1."""
    without_epoch = debian_version.split(":", 1)[1] if ":" in debian_version else debian_version
    return re.sub(r"[+~:]", "-", without_epoch)


# --- ELF: which shared objects a program loads ------------------------------------------------

_PT_LOAD, _PT_DYNAMIC, _PT_INTERP = 1, 2, 3
_DT_NULL, _DT_NEEDED, _DT_STRTAB = 0, 1, 5


@dataclass(frozen=True)
class ElfDeps:
    interpreter: str | None  # PT_INTERP: the dynamic loader's absolute path
    needed: tuple[str, ...]  # DT_NEEDED sonames, in order


def elf_dependencies(path: Path) -> ElfDeps | None:
    """The loader and libraries an ELF file names, or None if it is no ELF file (a script).
    Read from the headers rather than with ldd, which would run the host's loader on it."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF":
        return None
    if data[4] != 2:  # ELFCLASS64: every architecture kurmad runs on
        raise BuildError(f"{path.name} is a 32-bit ELF file, which this reader does not parse")
    order = "<" if data[5] == 1 else ">"
    phoff, phentsize, phnum = (
        struct.unpack_from(order + "Q", data, 32)[0],
        *struct.unpack_from(order + "HH", data, 54),
    )
    segments = [
        struct.unpack_from(order + "IIQQQQQQ", data, phoff + i * phentsize) for i in range(phnum)
    ]
    interpreter = None
    dynamic: list[tuple[int, int]] = []
    for p_type, _flags, offset, _vaddr, _paddr, filesz, _memsz, _align in segments:
        if p_type == _PT_INTERP:
            interpreter = data[offset : offset + filesz].split(b"\0", 1)[0].decode()
        elif p_type == _PT_DYNAMIC:
            dynamic = [
                struct.unpack_from(order + "qQ", data, offset + i) for i in range(0, filesz, 16)
            ]
    loads = [(s[3], s[2], s[5]) for s in segments if s[0] == _PT_LOAD]  # vaddr, offset, size
    return ElfDeps(interpreter, _needed_names(data, dynamic, loads))


def _needed_names(data: bytes, dynamic: list[tuple[int, int]], loads: list[tuple[int, int, int]]) -> tuple[str, ...]:  # fmt: skip
    entries = []
    for tag, value in dynamic:
        if tag == _DT_NULL:
            break
        entries.append((tag, value))
    strtab = next((value for tag, value in entries if tag == _DT_STRTAB), None)
    if strtab is None:
        return ()
    # DT_STRTAB is an address in memory; find where that lies in the file.
    base = next((off + strtab - va for va, off, size in loads if va <= strtab < va + size), None)
    if base is None:
        raise BuildError("an ELF string table lies outside every loaded segment")
    names = []
    for tag, value in entries:
        if tag == _DT_NEEDED:
            end = data.index(b"\0", base + value)
            names.append(data[base + value : end].decode())
    return tuple(names)


# --- image trees ------------------------------------------------------------------------------


class Rootfs:
    """An image's rootfs being assembled: every entry is created with an explicit mode, so
    neither the umask nor the source tree's metadata reaches the archive."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True)
        path.chmod(0o755)

    def _target(self, image_path: str) -> Path:
        relative = PurePosixPath(image_path.lstrip("/"))
        if ".." in relative.parts or not relative.parts:
            raise BuildError(f"{image_path}: not a path inside the image")
        return self.path / relative

    def directory(self, image_path: str, mode: int = 0o755) -> None:
        target = self._target(image_path)
        self._parents(target)
        target.mkdir(exist_ok=True)
        target.chmod(mode)

    def file(self, image_path: str, content: str | bytes, mode: int = 0o644) -> None:
        target = self._target(image_path)
        self._parents(target)
        target.write_bytes(content.encode() if isinstance(content, str) else content)
        target.chmod(mode)

    def copy(self, source: Path, image_path: str) -> None:
        """A regular file, with its permission bits (no setuid: the extractor refuses it)."""
        target = self._target(image_path)
        self._parents(target)
        shutil.copyfile(source, target)  # a copy, never a hard link into the unpacked .deb
        target.chmod(source.stat().st_mode & 0o777)

    def symlink(self, image_path: str, link_target: str) -> None:
        target = self._target(image_path)
        self._parents(target)
        if target.is_symlink():
            target.unlink()
        target.symlink_to(link_target)

    def exists(self, image_path: str) -> bool:
        return os.path.lexists(self._target(image_path))

    def _parents(self, target: Path) -> None:
        missing = []
        parent = target.parent
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        for directory in reversed(missing):
            directory.mkdir()
            directory.chmod(0o755)


def copy_from_package(rootfs: Rootfs, package_root: Path, image_path: str) -> Path:
    """Copy ``image_path`` from an unpacked package to the same path in the image and return
    the file its content came from. A symlink is copied as a symlink, and then its target
    (absolute targets are resolved inside the package, as they will be inside the image)."""
    for _ in range(40):
        source = package_root / image_path.lstrip("/")
        if not source.is_symlink():
            if not source.is_file():
                raise BuildError(f"{image_path} is not a file in {package_root.name}")
            if not rootfs.exists(image_path):
                rootfs.copy(source, image_path)
            return source
        link = os.readlink(source)
        rootfs.symlink(image_path, link)
        parent = PurePosixPath(image_path).parent
        image_path = os.path.normpath(link if link.startswith("/") else str(parent / link))
    raise BuildError(f"{image_path}: too many symbolic links in {package_root.name}")


_LIBRARY_DIRS = ("lib", "usr/lib", "lib64", "usr/lib64")


def _find_library(package_root: Path, soname: str) -> str | None:
    """The image path of ``soname`` in an unpacked package: in a library directory or its
    multiarch subdirectory (lib/x86_64-linux-gnu)."""
    for base in _LIBRARY_DIRS:
        directory = package_root / base
        if not directory.is_dir() or directory.is_symlink():
            continue
        # the multiarch directory first, as Debian's loader searches it first
        multiarch = sorted(d for d in directory.iterdir() if d.is_dir() and "-linux-" in d.name)
        candidates = [*multiarch, directory]
        for candidate in candidates:
            if os.path.lexists(candidate / soname):
                return "/" + str((candidate / soname).relative_to(package_root))
    return None


class LibraryCollector:
    """Copies programs from a package with the shared objects they load, looking each soname
    up in the package's dependencies, breadth first and only as far as needed."""

    def __init__(self, debs: DebSource, rootfs: Rootfs) -> None:
        self.debs = debs
        self.rootfs = rootfs
        self.used_packages: set[str] = set()

    def add_programs(self, package: str, programs: Iterable[str]) -> None:
        root = self.debs.unpacked(package)
        self.used_packages.add(package)
        search = _LibrarySearch(self.debs, package)
        pending = deque(copy_from_package(self.rootfs, root, program) for program in programs)
        copied: set[str] = set()
        while pending:
            deps = elf_dependencies(pending.popleft())
            if deps is None:
                continue
            wanted = [(deps.interpreter, True)] if deps.interpreter else []
            wanted += [(soname, False) for soname in deps.needed]
            for name, is_path in wanted:
                if name in copied:
                    continue
                copied.add(name)
                found_package, found_root, found_path = search.find(name, is_path)
                self.used_packages.add(found_package)
                pending.append(copy_from_package(self.rootfs, found_root, found_path))


class _LibrarySearch:
    """Unpacks the dependencies of a package breadth first until a soname is found."""

    def __init__(self, debs: DebSource, package: str) -> None:
        self.debs = debs
        self.searched: list[tuple[str, Path]] = []
        self.queue: deque[str] = deque(debs.depends(package))
        self.seen = {package}

    def find(self, name: str, is_path: bool) -> tuple[str, Path, str]:
        """The package, its unpacked root and the path in it of a loader or soname."""
        while True:
            for package, root in self.searched:
                found = self._lookup(root, name, is_path)
                if found is not None:
                    return package, root, found
            if not self._search_next():
                kind = "loader" if is_path else "library"
                raise BuildError(f"the {kind} {name} is in none of the packages depended on")

    @staticmethod
    def _lookup(root: Path, name: str, is_path: bool) -> str | None:
        if is_path:
            return name if os.path.lexists(root / name.lstrip("/")) else None
        return _find_library(root, name)

    def _search_next(self) -> bool:
        while self.queue:
            package = self.queue.popleft()
            if package in self.seen:
                continue
            self.seen.add(package)
            # Only library packages can hold what a program loads; the rest (adduser,
            # netbase) are not unpacked, nor are their own dependencies followed.
            if self.debs.control(package, "Section") != "libs":
                continue
            self.searched.append((package, self.debs.unpacked(package)))
            self.queue.extend(self.debs.depends(package))
            return True
        return False


# --- the images -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageSpec:
    file_name: str
    manifest: ImageManifest


def add_busybox_base(rootfs: Rootfs, debs: DebSource, extra_users: str = "", extra_groups: str = "") -> None:  # fmt: skip
    """/bin/busybox with a link per applet where busybox would install it, and the files every
    image shares: users, groups, the usual empty directories."""
    for directory, mode in (("bin", 0o755), ("sbin", 0o755), ("usr/bin", 0o755),
                            ("usr/sbin", 0o755), ("etc", 0o755), ("root", 0o700),
                            ("tmp", 0o1777), ("var/tmp", 0o1777), ("run", 0o755),
                            ("dev", 0o755), ("proc", 0o555), ("sys", 0o555)):  # fmt: skip
        rootfs.directory(directory, mode)
    busybox = debs.unpacked(BUSYBOX_PACKAGE) / "bin" / "busybox"
    rootfs.copy(busybox, "/bin/busybox")
    for applet_path in busybox_applets(busybox):
        if applet_path != "bin/busybox":
            link = posixpath.relpath("bin/busybox", posixpath.dirname(applet_path))
            rootfs.symlink(applet_path, link)  # relative: right inside the image and outside
    rootfs.file("/etc/passwd", PASSWD + extra_users)
    rootfs.file("/etc/group", GROUP + extra_groups)
    rootfs.file("/etc/shells", SHELLS)
    rootfs.file("/etc/nsswitch.conf", NSSWITCH)


def busybox_applets(busybox: Path) -> list[str]:
    """Where each applet goes (bin/sh, sbin/getty, usr/bin/env ...), from the binary itself."""
    try:
        listing = run([str(busybox), "--list-full"])
    except (BuildError, OSError) as err:
        raise BuildError(f"cannot run {busybox} to list its applets: {err}") from None
    return sorted(
        line for line in listing.split() if "/" in line and line not in _TOP_LEVEL_APPLETS
    )


def image_manifest(name: str, version: str, arch: str, app: dict[str, Any],
                   annotations: dict[str, str]) -> ImageManifest:  # fmt: skip
    """Built as JSON and parsed, so every image is checked by the same rules as any other."""
    document = {
        "acKind": "ImageManifest",
        "acVersion": "0.8.11",
        "name": name,
        "labels": [
            {"name": "version", "value": version},
            {"name": "os", "value": "linux"},
            {"name": "arch", "value": arch},
        ],
        "app": app,
        "annotations": [{"name": k, "value": v} for k, v in annotations.items()],
    }
    return ImageManifest.from_json(document)


def _capabilities(names: Sequence[str]) -> dict[str, Any]:
    return {"name": "os/linux/capabilities-retain-set", "value": {"set": list(names)}}


def _provenance(debs: DebSource, packages: Iterable[str]) -> dict[str, str]:
    """What the image was made of, for whoever wonders which Debian update it carries."""
    listed = " ".join(f"{p}={debs.deb(p).version}" for p in sorted(packages))
    return {"kurmad.io/debian-packages": listed}


def busybox_image(rootfs: Rootfs, debs: DebSource, arch: str) -> ImageSpec:
    add_busybox_base(rootfs, debs)
    app = {"exec": ["/bin/sh"], "user": "0", "group": "0"}
    version = label_version(debs.deb(BUSYBOX_PACKAGE).version)
    annotations = _provenance(debs, [BUSYBOX_PACKAGE])
    return ImageSpec(
        "busybox.aci", image_manifest("kurma.io/busybox", version, arch, app, annotations)
    )


def console_image(rootfs: Rootfs, debs: DebSource, arch: str) -> ImageSpec:
    add_busybox_base(rootfs, debs)
    rootfs.file("/etc/shadow", SHADOW, 0o600)
    rootfs.file("/etc/motd", MOTD)
    rootfs.directory("/var/lib/dropbear", 0o700)
    rootfs.copy(CONSOLE_SCRIPT, "/usr/sbin/kurma-console")
    rootfs.path.joinpath("usr/sbin/kurma-console").chmod(0o755)
    libraries = LibraryCollector(debs, rootfs)
    libraries.add_programs(DROPBEAR_PACKAGE, ["/usr/sbin/dropbear", "/usr/bin/dropbearkey"])
    app = {
        "exec": ["/usr/sbin/kurma-console"],
        "user": "0",
        "group": "0",
        "isolators": [_capabilities(CONSOLE_CAPABILITIES)],
        "mountPoints": [{"name": "dropbear-keys", "path": "/var/lib/dropbear"}],
        "ports": [{"name": "ssh", "protocol": "tcp", "port": 22}],
    }
    version = label_version(debs.deb(DROPBEAR_PACKAGE).version)
    annotations = _provenance(debs, {BUSYBOX_PACKAGE} | libraries.used_packages)
    return ImageSpec(
        "console.aci", image_manifest("kurma.io/console", version, arch, app, annotations)
    )


def ntp_image(rootfs: Rootfs, debs: DebSource, arch: str) -> ImageSpec:
    add_busybox_base(rootfs, debs, NTPD_USER_PASSWD, NTPD_USER_GROUP)
    libraries = LibraryCollector(debs, rootfs)
    libraries.add_programs(OPENNTPD_PACKAGE, ["/usr/sbin/ntpd"])
    rootfs.symlink("/usr/sbin/ntpctl", "ntpd")  # the same program, named for status queries
    copy_from_package(rootfs, debs.unpacked(NETBASE_PACKAGE), "/etc/services")
    rootfs.directory("/etc/openntpd")
    rootfs.directory("/var/lib/openntpd/db")
    rootfs.directory("/var/lib/openntpd/run")  # the engine's chroot: root's, not writable
    rootfs.copy(NTP_SCRIPT, "/usr/sbin/kurma-ntp")
    rootfs.path.joinpath("usr/sbin/kurma-ntp").chmod(0o755)
    app = {
        "exec": ["/usr/sbin/kurma-ntp"],
        "user": "0",
        "group": "0",
        "isolators": [_capabilities(NTP_CAPABILITIES)],
    }
    version = label_version(debs.deb(OPENNTPD_PACKAGE).version)
    annotations = _provenance(debs, {BUSYBOX_PACKAGE, NETBASE_PACKAGE} | libraries.used_packages)
    return ImageSpec("ntp.aci", image_manifest("kurma.io/ntp", version, arch, app, annotations))


IMAGES = (busybox_image, console_image, ntp_image)


def source_date_epoch() -> int:
    return int(os.environ.get("SOURCE_DATE_EPOCH", "0"))


def write_aci(rootfs: Rootfs, spec: ImageSpec, out_dir: Path) -> Path:
    out = out_dir / spec.file_name
    options = BuildOptions(compression=COMPRESSION, mtime=source_date_epoch())
    with atomic_writer(out) as f:
        build(rootfs.path, spec.manifest, f, options)
    return out


def build_all(out_dir: Path, cache_dir: Path) -> list[Path]:
    """Build every base image into ``out_dir`` from the .deb files in ``cache_dir`` (fetching
    what is missing); return the ACI paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kurmad-images-") as tmp:
        work = Path(tmp)
        debs = DebSource(cache_dir, work)
        debs.plan([BUSYBOX_PACKAGE, DROPBEAR_PACKAGE, OPENNTPD_PACKAGE])
        arch = _appc_arch(debs.arch)
        written = []
        for make_image in IMAGES:
            rootfs = Rootfs(work / "rootfs" / make_image.__name__)
            written.append(write_aci(rootfs, make_image(rootfs, debs, arch), out_dir))
        return written


def _appc_arch(debian_arch: str) -> str:
    try:
        return APPC_ARCH[debian_arch]
    except KeyError:
        raise BuildError(f"Debian architecture {debian_arch} has no appc name") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m initrd.images", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="where the ACIs go (%(default)s)"
    )
    parser.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help=".deb cache (%(default)s)"
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        written = build_all(args.out, args.cache)
    except BuildError as err:
        print(f"initrd.images: {err}", file=sys.stderr)
        return 1
    for path in written:
        print(f"{path}: {path.stat().st_size} bytes")
    print(f"built in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
