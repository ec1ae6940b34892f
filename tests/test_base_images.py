"""The base system images (initrd/images.py), built from Debian packages: what they hold, that
they are reproducible, and that their programs and start scripts work."""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from initrd.images import (
    APPC_ARCH,
    BUSYBOX_PACKAGE,
    DROPBEAR_PACKAGE,
    OPENNTPD_PACKAGE,
    BuildError,
    apt_candidates,
    build_all,
    debian_architecture,
    elf_dependencies,
)
from kurmad.appc import App, ImageManifest
from kurmad.appc.isolators import CapabilitiesRetainSet, find_isolator
from kurmad.images.aci import AciInfo, scan
from kurmad.images.extract import SafeExtractor

IMAGES = ("busybox.aci", "console.aci", "ntp.aci")
PACKAGES = (BUSYBOX_PACKAGE, DROPBEAR_PACKAGE, OPENNTPD_PACKAGE)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chroot, mount namespaces)")


@dataclass(frozen=True)
class Built:
    first: Path
    second: Path
    cache: Path
    infos: dict[str, AciInfo]
    rootfs: dict[str, Path]

    def manifest(self, name: str) -> ImageManifest:
        return self.infos[name].manifest


def _require_tools() -> None:
    for tool, package in (("apt-get", "apt"), ("dpkg-deb", "dpkg"), ("unshare", "util-linux")):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is missing: install the Debian package {package}")
    missing = [p for p, version in apt_candidates(PACKAGES).items() if version is None]
    if missing:
        pytest.skip(f"apt knows no {', '.join(missing)}: run apt-get update (make deps)")


def _extract(aci: Path, into: Path) -> AciInfo:
    into.mkdir(parents=True)
    with SafeExtractor(into) as extractor, open(aci, "rb") as source:
        info = scan(source, extractor)
        extractor.finish()
    return info


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    _require_tools()
    base = tmp_path_factory.mktemp("base-images")
    cache = base / "debs"
    try:
        first = build_all(base / "first", cache)
        second = build_all(base / "second", cache)
    except BuildError as err:
        pytest.fail(f"the images did not build: {err}")
    assert [p.name for p in first] == [p.name for p in second] == list(IMAGES)
    infos, rootfs = {}, {}
    for path in first:
        infos[path.name] = _extract(path, base / "rootfs" / path.stem)
        rootfs[path.name] = base / "rootfs" / path.stem
    return Built(base / "first", base / "second", cache, infos, rootfs)


def _run_in(rootfs: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a program of the image, chrooted into it."""
    return subprocess.run(["chroot", str(rootfs), *argv], capture_output=True, text=True,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env}, timeout=20)  # fmt: skip


# --- the archives -----------------------------------------------------------------------------


def test_three_images_are_valid_acis(built: Built) -> None:
    for name in IMAGES:
        path = built.first / name
        assert path.is_file()
        with open(path, "rb") as f:
            assert f.read(4) == b"\x28\xb5\x2f\xfd", "zstd compressed"
        checked = subprocess.run([sys.executable, "-m", "kurmad.cli.kurmactl", "image", "validate", str(path)],
                                 capture_output=True, text=True, check=False)  # fmt: skip
        assert checked.returncode == 0, checked.stdout + checked.stderr
        # the manifest as stored parses by itself, not only inside the archive reader
        ImageManifest.loads(built.infos[name].manifest_bytes)


def test_two_builds_give_the_same_bytes(built: Built) -> None:
    for name in IMAGES:
        assert (built.first / name).read_bytes() == (built.second / name).read_bytes(), name


def test_names_and_labels(built: Built) -> None:
    names = {name: built.manifest(name).name for name in IMAGES}
    assert names == {"busybox.aci": "kurma.io/busybox", "console.aci": "kurma.io/console",
                     "ntp.aci": "kurma.io/ntp"}  # fmt: skip
    for name in IMAGES:
        labels = built.manifest(name).labels
        assert labels["os"] == "linux"
        assert labels["arch"] == APPC_ARCH[debian_architecture()]  # amd64 on amd64
        # Debian's epoch, '+' and '~' are gone: 1:1.35.0-4+deb12u1+b1 -> 1.35.0-4-deb12u1-b1
        assert re.fullmatch(r"[0-9][0-9A-Za-z.-]*", labels["version"]), labels["version"]
    debian_version = apt_candidates([BUSYBOX_PACKAGE])[BUSYBOX_PACKAGE]
    assert debian_version is not None
    expected = re.sub(r"[+~]", "-", debian_version.split(":", 1)[-1])
    assert built.manifest("busybox.aci").labels["version"] == expected


def test_apps(built: Built) -> None:
    busybox = built.manifest("busybox.aci").app
    assert busybox is not None
    assert (busybox.exec, busybox.user, busybox.group) == (("/bin/sh",), "0", "0")
    console = built.manifest("console.aci").app
    assert console is not None
    assert console.exec == ("/usr/sbin/kurma-console",)
    # the serial line comes as a device (the boot config's devices:), not a volume
    assert {(m.name, m.path) for m in console.mount_points} == {
        ("dropbear-keys", "/var/lib/dropbear")}  # fmt: skip
    retained = _retained(console)
    for cap in ("CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_SYS_TTY_CONFIG",
                "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"):  # fmt: skip
        assert cap in retained
    ntp = built.manifest("ntp.aci").app
    assert ntp is not None
    assert ntp.exec == ("/usr/sbin/kurma-ntp",)
    assert {"CAP_SYS_TIME", "CAP_SETUID", "CAP_SETGID", "CAP_SYS_CHROOT"} <= _retained(ntp)


def _retained(app: App) -> set[str]:
    retain = find_isolator(app.isolators, CapabilitiesRetainSet)
    assert retain is not None
    return set(retain.set)


# --- what the images hold ---------------------------------------------------------------------


def test_busybox_runs_from_the_image(built: Built) -> None:
    busybox = built.rootfs["busybox.aci"] / "bin" / "busybox"
    first_line = subprocess.run([str(busybox), "--help"], capture_output=True, text=True,
                                check=False).stdout.splitlines()[0]  # fmt: skip
    upstream = built.manifest("busybox.aci").labels["version"].split("-")[0]
    assert first_line.startswith(f"BusyBox v{upstream} ")
    for applet in ("bin/sh", "sbin/getty", "bin/login", "usr/bin/mkpasswd"):
        link = built.rootfs["busybox.aci"] / applet
        assert link.is_symlink() and link.resolve() == busybox.resolve(), applet
    passwd = (built.rootfs["busybox.aci"] / "etc" / "passwd").read_text()
    assert passwd.startswith("root:x:0:0:") and "\nnobody:x:65534:" in passwd


def test_console_holds_dropbear_and_exactly_its_libraries(built: Built) -> None:
    rootfs = built.rootfs["console.aci"]
    assert os.access(rootfs / "usr/sbin/kurma-console", os.X_OK)
    for program in ("usr/sbin/dropbear", "usr/bin/dropbearkey"):
        deps = elf_dependencies(rootfs / program)
        assert deps is not None and deps.interpreter is not None
        assert os.path.lexists(rootfs / deps.interpreter.lstrip("/"))
        for soname in deps.needed:
            assert list(rootfs.glob(f"**/{soname}")), f"{program} needs {soname}"
    libraries = {p.name for p in rootfs.glob("**/*.so*")}
    assert {"libc.so.6", "libtomcrypt.so.1", "libtommath.so.1", "libz.so.1", "libcrypt.so.1",
            "libgmp.so.10"} <= libraries  # fmt: skip
    assert not any(name.startswith(("libssl", "libsystemd", "libpam")) for name in libraries)


@needs_root
def test_console_programs_run_with_only_the_image_libraries(built: Built, tmp_path: Path) -> None:
    rootfs = built.rootfs["console.aci"]
    made = _run_in(rootfs, "/usr/bin/dropbearkey", "-t", "ed25519", "-f", "/tmp/test-key")
    assert made.returncode == 0, made.stderr
    assert "ssh-ed25519 " in made.stdout
    (rootfs / "tmp" / "test-key").unlink()


@needs_root
def test_ntp_script_writes_a_configuration_ntpd_accepts(built: Built) -> None:
    rootfs = built.rootfs["ntp.aci"]
    checked = _run_in(rootfs, "/usr/sbin/kurma-ntp", KURMA_NTP_CHECK="1",
                      NTP_SERVERS="0.pool.ntp.org  time.example.com")  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    assert "configuration OK" in checked.stderr
    conf = (rootfs / "etc/openntpd/ntpd.conf").read_text()
    assert "servers 0.pool.ntp.org\nservers time.example.com\n" in conf
    # OpenNTPD looks its port up by name, and its engine chroots into the ntpd user's home
    assert re.search(r"^ntp\s+123/udp", (rootfs / "etc/services").read_text(), re.MULTILINE)
    assert "ntpd:x:100:101:OpenNTPD:/var/lib/openntpd/run:" in (rootfs / "etc/passwd").read_text()


# --- the console start script -----------------------------------------------------------------


def _console_script(built: Built, root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The start script on the image's own busybox, writing below ``root``."""
    image = built.rootfs["console.aci"]
    return subprocess.run(
        [str(image / "bin/busybox"), "sh", str(image / "usr/sbin/kurma-console")],
        env={"PATH": f"{image}/bin:{image}/usr/bin", "KURMA_CONSOLE_ROOT": str(root),
             "KURMA_CONSOLE_NO_GETTY": "1", **env},
        capture_output=True, text=True, check=False, timeout=20,
    )  # fmt: skip


def _root_shadow(root: Path) -> str:
    shadow = root / "etc/shadow"
    assert shadow.stat().st_mode & 0o777 == 0o600
    return next(line for line in shadow.read_text().splitlines() if line.startswith("root:"))


def test_console_hashes_the_password(built: Built, tmp_path: Path) -> None:
    done = _console_script(built, tmp_path, CONSOLE_PASSWORD="secret")
    assert done.returncode == 0, done.stderr
    line = _root_shadow(tmp_path)
    assert line.startswith("root:$6$")
    hashed = line.split(":")[1]
    salt = hashed.split("$")[2]
    busybox = built.rootfs["console.aci"] / "bin/busybox"
    again = subprocess.run([str(busybox), "mkpasswd", "-m", "sha512", "-S", salt, "secret"],
                           capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    assert again == hashed
    assert "secret" not in (tmp_path / "etc/shadow").read_text()


def test_console_takes_a_hash_and_otherwise_locks_root(built: Built, tmp_path: Path) -> None:
    given = "$6$abcdefgh$ltjgWl6579NluT/Vi1nwEvcil.G5Nbc4NiXZaNGStk8PSwGfQv72N2CKPPrVACtLtip/cZ/1GM/O6IND4WQhG."
    assert (
        _console_script(
            built, tmp_path, CONSOLE_PASSWORD_HASH=given, CONSOLE_PASSWORD="x"
        ).returncode
        == 0
    )
    assert _root_shadow(tmp_path).split(":")[1] == given
    assert _console_script(built, tmp_path).returncode == 0
    assert _root_shadow(tmp_path).split(":")[1] == "!"
    bad = _console_script(built, tmp_path, CONSOLE_PASSWORD_HASH="x:0:0")
    assert bad.returncode != 0 and "CONSOLE_PASSWORD_HASH" in bad.stderr


def test_console_writes_and_removes_authorized_keys(built: Built, tmp_path: Path) -> None:
    keys = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIChDBo21zivBxK6eE5qvi/0rYwJOrzKcr2yEolqEg8RC a@b"
    assert _console_script(built, tmp_path, CONSOLE_AUTHORIZED_KEYS=keys).returncode == 0
    written = tmp_path / "root/.ssh/authorized_keys"
    assert written.read_text() == keys + "\n"
    assert written.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "root/.ssh").stat().st_mode & 0o777 == 0o700
    assert _console_script(built, tmp_path).returncode == 0
    assert not written.exists()


# --- the console for real: getty and login on a terminal, SSH with dropbear -------------------

# A private mount namespace and network namespace give the chroot the /dev the executor would
# (a few devices, and the terminal where the device isolator puts the serial line) and a
# loopback of its own. The last line, run in that world, is the caller's.
_CONSOLE_HARNESS = """
set -e
r="$1"; tty="$2"
"$r/bin/busybox" ip link set lo up
mount -t tmpfs tmpfs "$r/dev"
for d in null zero urandom random tty; do touch "$r/dev/$d"; mount --bind "/dev/$d" "$r/dev/$d"; done
mkdir "$r/dev/pts"; mount --bind /dev/pts "$r/dev/pts"; ln -s pts/ptmx "$r/dev/ptmx"
touch "$r/dev/ttyS0"; mount --bind "$tty" "$r/dev/ttyS0"
mount -t proc proc "$r/proc"
"""


def _in_console_world(rootfs: Path, tty: str, then: str) -> list[str]:
    return ["unshare", "--mount", "--net", "sh", "-c", _CONSOLE_HARNESS + then, "harness",
            str(rootfs), tty]  # fmt: skip


def _start_console(rootfs: Path, tty: str, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        _in_console_world(rootfs, tty, 'exec chroot "$r" /usr/sbin/kurma-console'),
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


def _read_until(fd: int, token: bytes, timeout: float = 10) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while token not in seen and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.1)[0]:
            try:
                seen += os.read(fd, 4096)
            except OSError:
                break
    return seen


@needs_root
def test_console_login_on_the_terminal(built: Built) -> None:
    master, slave = os.openpty()
    console = _start_console(
        built.rootfs["console.aci"], os.ttyname(slave), CONSOLE_PASSWORD="secret"
    )
    try:
        assert b"login: " in _read_until(master, b"login: ")
        os.write(master, b"root\n")
        assert b"Password: " in _read_until(master, b"Password: ")
        os.write(master, b"secret\n")
        assert b"console of a kurmad host" in _read_until(master, b"# ")  # the motd
        os.write(master, b"echo sum=$((20+22)); exit\n")
        assert b"sum=42" in _read_until(master, b"sum=42")
        assert b"login: " in _read_until(master, b"login: "), "a new prompt after logout"
    finally:
        console.terminate()
        assert console.wait(10) == 0
        os.close(master)
        os.close(slave)


@needs_root
def test_console_ssh_with_dropbear(built: Built, tmp_path: Path) -> None:
    if shutil.which("dbclient") is None or shutil.which("dropbearkey") is None:
        pytest.skip("dbclient and dropbearkey are missing: install the Debian package dropbear-bin")
    client_key = tmp_path / "client-key"
    public = subprocess.run(["dropbearkey", "-t", "ed25519", "-f", str(client_key)],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    authorized = next(line for line in public.splitlines() if line.startswith("ssh-ed25519 "))
    # -y -y: no host key checks, so nothing is written to the known hosts of whoever runs this
    then = f"""
chroot "$r" /usr/sbin/kurma-console &
console=$!
for _ in $(seq 50); do
    dbclient -y -y -i {client_key} -p 2222 root@127.0.0.1 'echo ssh-as-$(id -u)' && break
    sleep 0.2
done
kill "$console"
"""
    done = subprocess.run(
        _in_console_world(built.rootfs["console.aci"], "/dev/null", then),
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path),
             "CONSOLE_AUTHORIZED_KEYS": authorized, "CONSOLE_SSH_PORT": "2222"},
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert "ssh-as-0" in done.stdout, done.stdout + done.stderr
    host_key = built.rootfs["console.aci"] / "var/lib/dropbear/dropbear_ed25519_host_key"
    assert host_key.stat().st_size > 0 and host_key.stat().st_mode & 0o777 == 0o600
