"""Extract an ACI's rootfs so that no entry can land outside it.

Every path is resolved one component at a time from an open directory descriptor with
O_NOFOLLOW, so a symlink planted by an earlier entry can never be written through (the
"symlink-then-write" trick). Entries are created with O_EXCL and never replace anything.
Hard links may only point at earlier entries of the same rootfs. Setuid/setgid files are kept,
as podman and Docker keep them: the pod's capability bounding set is what limits them, and
real distribution images (passwd, su, mount) need them. Device nodes (debootstrap leaves some in /dev) are left out with one warning: a pod's
/dev is its own and every image mount is nodev. The strict policy, an opt-in, refuses both. What the spec says to keep is kept: modes,
owners (when running as root), mtimes and extended attributes, except ``trusted.*`` ones: the
store's trees are overlayfs lower layers, where ``trusted.overlay.*`` changes what overlayfs
shows (an opaque directory, a redirect, a whiteout), so an entry carrying any is refused. File
capabilities (``security.capability``) are kept or refused by policy, never dropped.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from .aci import ROOTFS, AciError, normalise_member_name

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_COPY_CHUNK = 1 << 20
_XATTR_PREFIX = "SCHILY.xattr."
_TRUSTED_PREFIX = "trusted."
_CAPABILITY = "security.capability"
# What a filesystem that cannot hold an extended attribute answers: today's warning, not an error.
_XATTR_UNSUPPORTED = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP)
# Charged against the quota for every entry besides its data: inodes are not free.
ENTRY_OVERHEAD = 512


class UnsafeEntryError(AciError):
    """An entry would escape the rootfs or is of a kind the policy refuses."""


class Devices(StrEnum):
    SKIP = "skip"  # left out, named in one warning
    KEEP = "keep"
    REFUSE = "refuse"


@dataclass(frozen=True)
class ExtractPolicy:
    devices: Devices = Devices.SKIP
    allow_setuid: bool = True
    # Keep security.capability; False refuses every image with file capabilities.
    file_capabilities: bool = True


DEFAULT_POLICY = ExtractPolicy()
# The opt-in strict store (``kurmad serve --strict-images``, the boot config's strict_images).
STRICT_POLICY = ExtractPolicy(devices=Devices.REFUSE, allow_setuid=False)
# What overlayfs reads as "this directory hides the lower layers' contents".
OPAQUE_XATTR = "trusted.overlay.opaque"
# How many skipped device nodes the warning names before it only counts.
_NAMED_DEVICES = 5


@dataclass
class ExtractResult:
    # Directories that exist only because a deeper entry needed them (no entry of their own);
    # rendering must not let them override a lower layer's real directory.
    implied_dirs: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)


@dataclass
class _DirMeta:
    mode: int
    uid: int
    gid: int
    mtime: float
    xattrs: dict[str, bytes]


class SafeExtractor:
    """Writes rootfs entries below ``root`` (an empty directory). Use as a context manager;
    ``finish()`` applies directory metadata once every entry is in place."""

    _CACHE_SIZE = 64

    def __init__(
        self,
        root: Path,
        policy: ExtractPolicy = DEFAULT_POLICY,
        charge: Callable[[int], None] = lambda n: None,
        observe: Callable[[bytes], None] | None = None,
    ) -> None:
        """``observe`` sees every file's data as it is written (a layer's canonical ACI hash)."""
        self._observe = observe
        self._root_fd = os.open(root, _DIR_FLAGS)
        self._policy = policy
        self._charge = charge
        self._dirs: OrderedDict[str, int] = OrderedDict()
        self._dir_meta: dict[str, _DirMeta] = {}
        self._as_root = os.geteuid() == 0
        self._skipped_devices: list[str] = []
        self._opaque: set[str] = set()
        self.result = ExtractResult()

    def __enter__(self) -> SafeExtractor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1

    # -- the visitor aci.scan calls ---------------------------------------------------------

    def __call__(self, path: str, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        relative = _inside_rootfs(path)
        self._trim_cache()
        try:
            self._check_xattrs(relative, member)
            self._charge(ENTRY_OVERHEAD)
            if relative == "":
                self._remember_dir("", member)
            else:
                self._extract(relative, member, tar)
        except OSError as err:
            raise _os_error(path, err) from None

    def _extract(self, relative: str, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        parent_path, _, name = relative.rpartition("/")
        if member.islnk():
            self._make_hardlink(parent_path, name, relative, member)
            return
        parent = self._open_dir(parent_path, relative)
        if member.isdir():
            self._make_dir(parent, name, relative, member)
        elif member.isreg():
            self._write_file(parent, name, relative, member, tar)
        elif member.issym():
            os.symlink(member.linkname, name, dir_fd=parent)
            self._set_owner_and_times(parent, name, member)
        elif member.isfifo():
            os.mkfifo(name, stat.S_IMODE(member.mode), dir_fd=parent)
            self._set_owner_and_times(parent, name, member)
        elif member.ischr() or member.isblk():
            self._make_device(parent, name, relative, member)
        else:
            raise UnsafeEntryError(
                f"entry {_entry(relative)} has an unsupported tar type {member.type!r}"
            )

    # -- OCI whiteouts, in overlayfs's own form (written by kurmad, never taken from an image) --

    def whiteout(self, relative: str) -> None:
        """Hide ``relative`` of the layers below: a 0:0 character device, as overlayfs reads one."""
        parent_path, _, name = relative.rpartition("/")
        self._trim_cache()
        self._charge(ENTRY_OVERHEAD)
        try:
            os.mknod(
                name, stat.S_IFCHR, os.makedev(0, 0), dir_fd=self._open_dir(parent_path, relative)
            )
        except OSError as err:
            raise _os_error(f"{ROOTFS}/{relative}", err) from None

    def make_opaque(self, relative: str) -> None:
        """Hide everything the layers below hold in directory ``relative`` (set at ``finish``,
        once the directory's own entry, wherever it comes in the layer, has made it)."""
        self._opaque.add(relative)

    # -- directories ------------------------------------------------------------------------

    def _open_dir(self, relative: str, entry: str) -> int:
        """An fd of directory ``relative`` (creating implied ones), never through a symlink."""
        if relative == "":
            return self._root_fd
        fd = self._dirs.get(relative)
        if fd is not None:
            self._dirs.move_to_end(relative)
            return fd
        parent_path, _, name = relative.rpartition("/")
        parent = self._open_dir(parent_path, entry)
        fd = self._open_child_dir(parent, name, relative, entry)
        self._dirs[relative] = fd
        return fd

    def _trim_cache(self) -> None:
        """Close the least recently used directory fds. Called between entries only, so no fd
        an entry is using can be closed under it."""
        while len(self._dirs) > self._CACHE_SIZE:
            os.close(self._dirs.popitem(last=False)[1])

    def _open_child_dir(self, parent: int, name: str, relative: str, entry: str) -> int:
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            os.mkdir(name, 0o755, dir_fd=parent)
            self.result.implied_dirs.add(relative)
            return os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafeEntryError(
                    f"entry {_entry(entry)} would be written through {_entry(relative)}, "
                    "which is a symlink or not a directory"
                ) from None
            raise

    def _make_dir(self, parent: int, name: str, relative: str, member: tarfile.TarInfo) -> None:
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
        except FileExistsError:
            # Fine only if an earlier entry implied this directory (and it is one).
            if relative not in self.result.implied_dirs:
                raise UnsafeEntryError(
                    f"entry {_entry(relative)} clashes with an earlier entry"
                ) from None
            self._open_dir(relative, relative)
        self.result.implied_dirs.discard(relative)
        self._remember_dir(relative, member)

    def _remember_dir(self, relative: str, member: tarfile.TarInfo) -> None:
        self._check_mode(relative, member)
        self._dir_meta[relative] = _DirMeta(
            stat.S_IMODE(member.mode), member.uid, member.gid, member.mtime, _xattrs(member)
        )

    def finish(self) -> ExtractResult:
        """Apply directory modes, owners and times deepest first, after all their content."""
        if "" not in self._dir_meta:
            self.result.implied_dirs.add("")  # the archive had no explicit rootfs/ entry
        for relative in sorted(
            self._dir_meta, key=lambda p: p.count("/") + (p != ""), reverse=True
        ):
            meta = self._dir_meta[relative]
            fd = self._root_fd if relative == "" else self._open_dir(relative, relative)
            self._apply_xattrs(fd, relative, meta.xattrs)
            if self._as_root:
                os.fchown(fd, meta.uid, meta.gid)
            os.fchmod(fd, meta.mode)
            os.utime(fd, ns=(_ns(meta.mtime), _ns(meta.mtime)))
        for relative in sorted(self._opaque):
            fd = self._root_fd if relative == "" else self._open_dir(relative, relative)
            os.setxattr(fd, OPAQUE_XATTR, b"y")
        if self._skipped_devices:
            self.result.warnings.append(_skipped_devices_warning(self._skipped_devices))
        return self.result

    # -- files, links, devices --------------------------------------------------------------

    def _write_file(
        self, parent: int, name: str, relative: str, member: tarfile.TarInfo, tar: tarfile.TarFile
    ) -> None:
        self._check_mode(relative, member)
        try:
            fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=parent)
        except FileExistsError:
            raise UnsafeEntryError(
                f"entry {_entry(relative)} clashes with an earlier entry"
            ) from None
        try:
            source = tar.extractfile(member)
            assert source is not None
            _copy_to_fd(
                source, fd, member.size, self._charge, self._observe
            )  # writing clears capabilities
            if self._as_root:
                os.fchown(fd, member.uid, member.gid)  # clears capabilities too: xattrs after
            self._apply_xattrs(fd, relative, _xattrs(member))
            os.fchmod(fd, stat.S_IMODE(member.mode))
            os.utime(fd, ns=(_ns(member.mtime), _ns(member.mtime)))
        finally:
            os.close(fd)

    def _make_hardlink(
        self, parent_path: str, name: str, relative: str, member: tarfile.TarInfo
    ) -> None:
        target = _inside_rootfs(normalise_member_name(member.linkname))
        if target == "":
            raise UnsafeEntryError(f"hard link {_entry(relative)} points at the rootfs directory")
        target_parent_path, _, target_name = target.rpartition("/")
        target_parent = self._open_dir(target_parent_path, relative)
        parent = self._open_dir(parent_path, relative)
        target_stat = os.stat(target_name, dir_fd=target_parent, follow_symlinks=False)
        if stat.S_ISDIR(target_stat.st_mode):
            raise UnsafeEntryError(f"hard link {_entry(relative)} points at a directory")
        os.link(
            target_name, name, src_dir_fd=target_parent, dst_dir_fd=parent, follow_symlinks=False
        )
        xattrs = _xattrs(member)
        if not xattrs:
            return
        if not stat.S_ISREG(target_stat.st_mode):
            if _CAPABILITY in xattrs:
                raise UnsafeEntryError(
                    f"hard link {_entry(relative)} has file capabilities ({_CAPABILITY}) "
                    "but does not point at a regular file"
                )
            return  # like symlinks and fifos, whose xattrs are not kept
        # The link's own records (tar writers repeat the target's) go to the shared inode.
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            self._apply_xattrs(fd, relative, xattrs)
        finally:
            os.close(fd)

    def _make_device(self, parent: int, name: str, relative: str, member: tarfile.TarInfo) -> None:
        if self._policy.devices is Devices.REFUSE:
            raise UnsafeEntryError(
                f"entry {_entry(relative)} is a device node; the strict store refuses them"
            )
        if self._policy.devices is Devices.SKIP:
            self._skipped_devices.append(relative)
            return
        kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
        device = os.makedev(member.devmajor, member.devminor)
        os.mknod(name, kind | stat.S_IMODE(member.mode), device, dir_fd=parent)
        self._set_owner_and_times(parent, name, member)

    def _set_owner_and_times(self, parent: int, name: str, member: tarfile.TarInfo) -> None:
        if self._as_root:
            os.chown(name, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
        os.utime(
            name, ns=(_ns(member.mtime), _ns(member.mtime)), dir_fd=parent, follow_symlinks=False
        )

    def _check_mode(self, relative: str, member: tarfile.TarInfo) -> None:
        privileged = member.mode & (stat.S_ISUID | stat.S_ISGID)
        if privileged and member.isreg() and not self._policy.allow_setuid:
            raise UnsafeEntryError(
                f"entry {_entry(relative)} is setuid or setgid; the strict store refuses that"
            )

    def _check_xattrs(self, relative: str, member: tarfile.TarInfo) -> None:
        """Refuse, before anything of the entry is written, the attributes the store must not
        hold: every ``trusted.*`` one, and file capabilities the policy refuses or that could
        not mean anything (capabilities act only when a regular file is executed)."""
        for key in _xattrs(member):
            if key.startswith(_TRUSTED_PREFIX):
                raise UnsafeEntryError(
                    f"entry {_entry(relative)} has the extended attribute {key}; the store "
                    "refuses trusted.* attributes (overlayfs obeys trusted.overlay.* in its layers)"
                )
            if key != _CAPABILITY:
                continue
            if not self._policy.file_capabilities:
                raise UnsafeEntryError(
                    f"entry {_entry(relative)} has file capabilities ({_CAPABILITY}); "
                    "the store refuses them by policy"
                )
            if not (member.isreg() or member.islnk()):
                raise UnsafeEntryError(
                    f"entry {_entry(relative)} has file capabilities ({_CAPABILITY}) "
                    "but is not a regular file"
                )

    def _apply_xattrs(self, fd: int, relative: str, xattrs: dict[str, bytes]) -> None:
        for key, value in xattrs.items():
            try:
                os.setxattr(fd, key, value)
            except OSError as err:
                if key == _CAPABILITY:  # dropping it would change what the program may do
                    raise UnsafeEntryError(
                        f"entry {_entry(relative)}: its file capabilities ({_CAPABILITY}) "
                        f"cannot be set: {err.strerror}"
                    ) from None
                if err.errno not in _XATTR_UNSUPPORTED:
                    raise
                self.result.warnings.append(
                    f"{ROOTFS}/{relative}: extended attribute {key} not kept ({err.strerror})"
                )


def _skipped_devices_warning(skipped: list[str]) -> str:
    named = ", ".join(skipped[:_NAMED_DEVICES]) + (", ..." if len(skipped) > _NAMED_DEVICES else "")
    return f"left out {len(skipped)} device node(s) ({named}): a pod's /dev is its own"


def _entry(relative: str) -> str:
    """How an error names an entry: its path in the archive, quoted."""
    return repr(f"{ROOTFS}/{relative}" if relative else ROOTFS)


def _inside_rootfs(path: str) -> str:
    """``rootfs/a/b`` -> ``a/b``; ``rootfs`` -> ``""``. Paths were normalised by aci.scan."""
    if path == ROOTFS:
        return ""
    if not path.startswith(ROOTFS + "/"):
        raise UnsafeEntryError(f"entry {path!r} is not inside {ROOTFS}/")
    return path[len(ROOTFS) + 1 :]


def _xattrs(member: tarfile.TarInfo) -> dict[str, bytes]:
    return {
        key[len(_XATTR_PREFIX) :]: value.encode("utf-8", "surrogateescape")
        for key, value in member.pax_headers.items()
        if key.startswith(_XATTR_PREFIX)
    }


def _copy_to_fd(source: object, fd: int, size: int, charge: Callable[[int], None],
                observe: Callable[[bytes], None] | None) -> None:  # fmt: skip
    """Copy ``size`` bytes, charging each chunk before it is written (a bomb stops early)."""
    read = source.read  # type: ignore[attr-defined]
    remaining = size
    while remaining:
        chunk = read(min(remaining, _COPY_CHUNK))
        if not chunk:
            raise AciError("the archive is truncated")
        charge(len(chunk))
        if observe is not None:
            observe(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]
        remaining -= len(chunk)


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


def _os_error(path: str, err: OSError) -> AciError:
    if err.errno == errno.ENOSPC:
        return AciError(f"no space left on device while writing {path!r}")
    return AciError(f"cannot write {path!r}: {err.strerror}")
