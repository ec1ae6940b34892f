"""The content-addressed image store.

Layout under the store root::

    store.lock              held (flock) by the one process using the store
    images/<hex digest>/    one committed image: manifest, info.json, rootfs/
    renders/<key>/          rendered root filesystems of images with dependencies: render.py's
    tmp/                    imports in progress and deletions under way; swept at start-up

An import extracts into ``tmp/`` while it hashes, and only a complete, synced image is renamed
into ``images/``: an import that fails or is killed leaves nothing visible. A deletion renames
the image (and the renders built on it) into ``tmp/`` under the store's lock, so readers never
see half an image, and removes the files after releasing it: listing and lookups never wait
for a big tree to be unlinked.

Imports are charged as they write against two limits: an optional byte quota and a floor of free
space on the store's filesystem (10 % by default), so an archive that expands enormously (a
"gzip bomb") is refused before the disk is full.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from kurmad.appc import AppString, ImageID, ImageManifest, SemVer, ValidationError, host_os_arch
from kurmad.linux.files import fsync_dir, read_json, remove_tree, write_atomic, write_json_atomic
from kurmad.linux.syscalls import syncfs

from .aci import AciError, scan
from .extract import DEFAULT_POLICY, ExtractPolicy, SafeExtractor

IMAGES = "images"
TMP = "tmp"
# Short names of the layers' trees, so an overlayfs option can name many of them (rootfs.py).
LINKS = "links"
_LINK_LENGTH = 20
INFO = "info.json"
MANIFEST = "manifest"
ROOTFS = "rootfs"
LATEST = "latest"
# The shortest ID prefix accepted for a lookup, so a typo does not match by luck.
MIN_PREFIX = 6
# The share of the store's filesystem imports leave free unless told otherwise.
MIN_FREE_FRACTION = 0.10
# How long a measurement of free space is trusted while imports estimate their own use from it:
# long enough to spare a statvfs per entry, short enough to notice other writers (pod logs).
FREE_SPACE_TTL = 1.0

log = logging.getLogger("kurmad.images")


class Derived(Protocol):
    """What is built from images and must go when one of them does."""

    def drop(self, keep: Callable[[list[str]], bool]) -> list[Path]:
        """Move out of sight (into the store's tmp/, with ``doomed_path``) what was built
        from layers that ``keep`` rejects; return where it went, to be removed."""
        ...


class StoreError(Exception):
    """An image store operation failed. ``str()`` is one line saying why."""


class ImageNotFound(StoreError):
    pass


class AmbiguousImage(StoreError):
    pass


class ImageInUse(StoreError):
    pass


class QuotaExceeded(StoreError):
    pass


class ImportFailed(StoreError):
    pass


@dataclass(frozen=True)
class ImageRecord:
    id: ImageID
    manifest: ImageManifest
    imported_at: float
    size: int  # bytes charged against the quota: file data plus a per-entry overhead
    tar_size: int
    source_size: int  # bytes of the archive as given (compressed)
    implied_dirs: frozenset[str] = frozenset()
    warnings: tuple[str, ...] = ()
    layer: bool = False  # an OCI layer (oci/convert.py): a part of images, not listed alone

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def labels(self) -> Mapping[str, str]:
        return self.manifest.labels

    @property
    def version(self) -> str | None:
        return self.manifest.labels.get("version")

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "imported_at": self.imported_at,
            "size": self.size,
            "tar_size": self.tar_size,
            "source_size": self.source_size,
            "implied_dirs": sorted(self.implied_dirs),
            "warnings": list(self.warnings),
            "layer": self.layer,
        }

    @classmethod
    def from_json(cls, info: Mapping[str, Any], manifest: ImageManifest) -> ImageRecord:
        return cls(
            id=ImageID(info["id"]),
            manifest=manifest,
            imported_at=float(info["imported_at"]),
            size=int(info["size"]),
            tar_size=int(info["tar_size"]),
            source_size=int(info["source_size"]),
            implied_dirs=frozenset(info.get("implied_dirs", ())),
            warnings=tuple(info.get("warnings", ())),
            layer=bool(info.get("layer", False)),
        )


@dataclass(frozen=True)
class BuiltTree:
    """What a builder of a tree (``ImageStore.import_tree``) says about what it wrote."""

    image_id: ImageID
    manifest_bytes: bytes
    tar_size: int
    source_size: int
    implied_dirs: frozenset[str] = frozenset()
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImportResult:
    record: ImageRecord
    created: bool  # False when the image was already in the store


class _FreeSpaceFloor:
    """Keeps a fraction of a filesystem free. Measures it with statvfs now and then and, in
    between, subtracts what was charged since (in whole blocks, so the estimate never exceeds
    the truth); it measures again before refusing, and when the measurement is old."""

    def __init__(self, path: Path, fraction: float) -> None:
        self.path = path
        self.fraction = fraction
        self.free = 0  # bytes available to writers, as last measured minus charges since
        self.floor = 0
        self._block = 4096
        self._measured_at = -math.inf

    def charge(self, amount: int) -> None:
        """Called under the quota's lock."""
        cost = -(-amount // self._block) * self._block
        stale = time.monotonic() - self._measured_at > FREE_SPACE_TTL
        if stale or self.free - cost < self.floor:
            self._measure()
        if self.free - cost < self.floor:
            raise QuotaExceeded(
                f"importing would leave less than {self.fraction * 100:g} % of the filesystem of "
                f"{self.path} free: {self.free} bytes free, the floor is {self.floor} bytes"
            )
        self.free -= cost

    def _measure(self) -> None:
        # f_bavail, not f_bfree: the space left after the filesystem's reserve for root.
        info = os.statvfs(self.path)
        self._block = info.f_frsize or 4096
        self.free = info.f_bavail * info.f_frsize
        self.floor = math.ceil(info.f_blocks * info.f_frsize * self.fraction)
        self._measured_at = time.monotonic()


@dataclass
class _Quota:
    """Bytes committed plus bytes being written by imports in flight, against a limit, and
    the free space of the store's filesystem against its floor."""

    limit: int | None
    floor: _FreeSpaceFloor | None = None
    used: int = 0
    in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def charge(self, amount: int) -> None:
        with self.lock:
            if self.limit is not None and self.used + self.in_flight + amount > self.limit:
                raise QuotaExceeded(
                    f"the image store quota of {self.limit} bytes would be exceeded "
                    f"({self.used} used, {self.in_flight} being imported)"
                )
            if self.floor is not None:
                self.floor.charge(amount)
            self.in_flight += amount

    def settle(self, amount: int, committed: bool) -> None:
        with self.lock:
            self.in_flight -= amount
            if committed:
                self.used += amount

    def release(self, amount: int) -> None:
        """Give back the bytes of a deleted image."""
        with self.lock:
            self.used -= amount


class _Charge:
    """Charges one import's bytes to the quota as they are written, and remembers the sum."""

    def __init__(self, quota: _Quota) -> None:
        self._quota = quota
        self.total = 0

    def __call__(self, amount: int) -> None:
        self._quota.charge(amount)
        self.total += amount


class _CountingReader:
    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self.size += len(data)
        return data


class ImageStore:
    def __init__(
        self,
        root: Path,
        *,
        quota_bytes: int | None = None,
        min_free_fraction: float = MIN_FREE_FRACTION,
        policy: ExtractPolicy = DEFAULT_POLICY,
        durable: bool = True,
    ) -> None:
        """``quota_bytes`` limits what the images may take (None: no limit);
        ``min_free_fraction`` is the share of the store's filesystem imports leave free
        (0 turns the floor off)."""
        if not 0 <= min_free_fraction < 1:
            raise ValueError(f"min_free_fraction must be in [0, 1), not {min_free_fraction}")
        self.root = root
        self.policy = policy
        # durable: sync the filesystem before an image becomes visible, so a power cut never
        # leaves a committed image with missing data. Only tests and benchmarks turn it off.
        self.durable = durable
        for sub in (IMAGES, TMP, LINKS):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self._lock_file = _lock_store(root)
        self._lock = threading.RLock()
        self._holds: dict[str, set[ImageID]] = {}
        self._derived: list[Derived] = []
        self._sweep_tmp()
        self._index = self._load_index()
        floor = _FreeSpaceFloor(root, min_free_fraction) if min_free_fraction else None
        self._quota = _Quota(quota_bytes, floor, used=sum(r.size for r in self._index.values()))

    def close(self) -> None:
        self._lock_file.close()

    # -- start-up -----------------------------------------------------------------------------

    def _sweep_tmp(self) -> None:
        """Remove what imports and deletions interrupted by a crash left behind."""
        for leftover in (self.root / TMP).iterdir():
            remove_tree(leftover)

    def _load_index(self) -> dict[ImageID, ImageRecord]:
        index: dict[ImageID, ImageRecord] = {}
        for entry in (self.root / IMAGES).iterdir():
            record = self._read_record(entry)
            if record is None or record.id.digest != entry.name:
                remove_tree(entry)  # not a committed image: cannot happen with atomic renames
                continue
            index[record.id] = record
        for link in (self.root / LINKS).iterdir():
            if not link.exists():  # its layer went while the link stayed (a crash between)
                link.unlink()
        return index

    @staticmethod
    def _read_record(directory: Path) -> ImageRecord | None:
        try:
            manifest = ImageManifest.loads((directory / MANIFEST).read_bytes())
            return ImageRecord.from_json(read_json(directory / INFO), manifest)
        except (OSError, ValueError, KeyError, ValidationError):
            return None

    # -- import ---------------------------------------------------------------------------------

    def import_file(self, path: Path) -> ImportResult:
        try:
            with open(path, "rb") as source:
                return self.import_stream(source)
        except OSError as err:
            raise ImportFailed(f"{path}: {err.strerror}") from None

    def import_stream(self, source: BinaryIO) -> ImportResult:
        """Import an ACI: decompress, hash and extract in one pass, then commit atomically.
        Importing an image already in the store changes nothing and returns the same ID."""
        return self._import(lambda staging, charge: self._extract(source, staging, charge))

    def import_tree(self, build: Callable[[Path, Callable[[int], None]], BuiltTree],
                    *, layer: bool = False) -> ImportResult:  # fmt: skip
        """Import an image whose tree ``build`` writes into the rootfs directory it is given
        (an OCI layer, extracted and hashed in one pass), charging what it writes; committed
        as atomically as an ACI. ``build`` raises AciError (or OSError) to refuse it."""

        def stage(staging: Path, charge: _Charge) -> ImageRecord:
            built = build(staging / ROOTFS, charge)
            record = ImageRecord(
                id=built.image_id, manifest=ImageManifest.loads(built.manifest_bytes),
                imported_at=time.time(), size=charge.total, tar_size=built.tar_size,
                source_size=built.source_size, implied_dirs=built.implied_dirs,
                warnings=built.warnings, layer=layer,
            )  # fmt: skip
            write_atomic(staging / MANIFEST, built.manifest_bytes)
            write_json_atomic(staging / INFO, record.to_json())
            return record

        return self._import(stage)

    def _import(self, stage: Callable[[Path, _Charge], ImageRecord]) -> ImportResult:
        """``stage`` fills a directory in tmp/ (charging what it writes) and says what it
        holds; a complete one is committed, anything else leaves nothing behind."""
        staging = self.root / TMP / f"import-{uuid.uuid4().hex}"
        charge = _Charge(self._quota)
        committed = False
        try:
            (staging / ROOTFS).mkdir(parents=True)
            result = self._commit(staging, stage(staging, charge))
            committed = result.created
            return result
        except AciError as err:
            raise ImportFailed(f"not imported: {err}") from None
        except OSError as err:
            raise ImportFailed(f"not imported: {err.strerror or err}") from None
        finally:
            self._quota.settle(charge.total, committed)
            if staging.exists():
                remove_tree(staging)

    def _extract(self, source: BinaryIO, staging: Path, charge: _Charge) -> ImageRecord:
        counting = _CountingReader(source)
        with SafeExtractor(staging / ROOTFS, self.policy, charge) as extractor:
            info = scan(counting, extractor)  # type: ignore[arg-type]
            result = extractor.finish()
        record = ImageRecord(
            id=info.image_id,
            manifest=info.manifest,
            imported_at=time.time(),
            size=charge.total,
            tar_size=info.tar_size,
            source_size=counting.size,
            implied_dirs=frozenset(result.implied_dirs),
            warnings=tuple(result.warnings),
        )
        write_atomic(staging / MANIFEST, info.manifest_bytes)
        write_json_atomic(staging / INFO, record.to_json())
        return record

    def _commit(self, staging: Path, record: ImageRecord) -> ImportResult:
        with self._lock:
            existing = self._index.get(record.id)
            if existing is not None:
                return ImportResult(existing, created=False)
            if self.durable:
                syncfs(staging)
            os.rename(staging, self._image_dir(record.id))
            fsync_dir(self.root / IMAGES)
            if record.layer:
                self._make_link(record.id)
            self._index[record.id] = record
            return ImportResult(record, created=True)

    def _link_path(self, image_id: ImageID) -> Path:
        return self.root / LINKS / image_id.digest[:_LINK_LENGTH]

    def _make_link(self, image_id: ImageID) -> None:
        link = self._link_path(image_id)
        target = f"../{IMAGES}/{image_id.digest}/{ROOTFS}"
        try:
            os.symlink(target, link)
        except FileExistsError:
            if os.readlink(link) != target:  # 80 bits that collide: refuse, never mix layers up
                raise StoreError(f"layer {image_id}: its short name {link.name} is taken") from None

    def layer_path(self, image_id: ImageID) -> Path:
        """A layer's tree by its short name (LINKS): what an overlayfs stack names."""
        record = self.get(image_id)
        return self._link_path(record.id) if record.layer else self.rootfs(record.id)

    # -- lookup -----------------------------------------------------------------------------

    def _image_dir(self, image_id: ImageID) -> Path:
        return self.root / IMAGES / image_id.digest

    def rootfs(self, image_id: ImageID) -> Path:
        return self._image_dir(self.get(image_id).id) / ROOTFS

    def manifest_bytes(self, image_id: ImageID) -> bytes:
        return (self._image_dir(self.get(image_id).id) / MANIFEST).read_bytes()

    def images(self, *, layers: bool = False) -> list[ImageRecord]:
        """The images, by name and age; OCI layers only when asked for."""
        with self._lock:
            records = [r for r in self._index.values() if layers or not r.layer]
        return sorted(records, key=lambda r: (r.name, r.imported_at))

    def dependents(self, image_id: ImageID) -> list[ImageRecord]:
        """The images that name ``image_id`` as a dependency by ID."""
        with self._lock:
            return [r for r in self._index.values()
                    if any(d.image_id == image_id for d in r.manifest.dependencies)]  # fmt: skip

    def total_size(self, record: ImageRecord) -> int:
        """What the image takes with the layers it depends on (each counted once)."""
        with self._lock:
            ids = {d.image_id for d in record.manifest.dependencies if d.image_id}
            layers = [self._index[i] for i in ids if i in self._index and self._index[i].layer]
        return record.size + sum(layer.size for layer in layers)

    def get(self, image_id: str) -> ImageRecord:
        """The image of exactly this ID, or of a unique ID prefix (with or without sha512-)."""
        digest = image_id.removeprefix(ImageID.ALGORITHM + "-").lower()
        with self._lock:
            exact = self._index.get(ImageID.from_digest(digest)) if digest else None
            if exact is not None:
                return exact
            if len(digest) < MIN_PREFIX or any(c not in "0123456789abcdef" for c in digest):
                raise ImageNotFound(f"no image with ID {image_id}")
            matches = [r for r in self._index.values() if r.id.digest.startswith(digest)]
        if not matches:
            raise ImageNotFound(f"no image with ID {image_id}")
        if len(matches) > 1:
            raise AmbiguousImage(
                f"image ID prefix {image_id} matches {len(matches)} images; give more digits"
            )
        return matches[0]

    def find(self, name: str, labels: Mapping[str, str] | None = None, *,
             layers: bool = False) -> ImageRecord:  # fmt: skip
        """The image named ``name`` whose labels match. Without a version (or with version
        ``latest``) the latest version wins: an image labelled ``latest``, then the highest
        SemVer, then the most recent import. Without os/arch, images built for another
        platform are left out."""
        wanted = dict(labels or {})
        candidates = [
            r for r in self.images(layers=layers) if r.name == name and _labels_match(r, wanted)
        ]
        if not candidates:
            shown = ",".join([name, *(f"{k}={v}" for k, v in wanted.items())])
            raise ImageNotFound(f"no image {shown} in the store")
        return max(candidates, key=_latest_key)

    def lookup(self, reference: str) -> ImageRecord:
        """An image by ID, unique ID prefix, or app string (``name[:version][,label=value]``)."""
        if reference.startswith(ImageID.ALGORITHM + "-"):
            return self.get(reference)
        try:
            app = AppString.parse(reference)
        except ValidationError:
            return self.get(reference)
        try:
            return self.find(app.name, app.labels)
        except ImageNotFound:
            if "/" not in reference and ":" not in reference and "," not in reference:
                try:
                    return self.get(reference)
                except ImageNotFound:
                    pass
            raise

    # -- references from pods -------------------------------------------------------------

    def hold(self, holder: str, image_ids: Iterable[ImageID]) -> None:
        """Record that ``holder`` (a pod) uses these images: they cannot be deleted until it
        lets go. Holds are in memory; the pod manager re-establishes them after a restart."""
        ids = set(image_ids)
        with self._lock:
            for image_id in ids:
                self.get(image_id)
            self._holds.setdefault(holder, set()).update(ids)

    def release(self, holder: str) -> None:
        with self._lock:
            self._holds.pop(holder, None)

    def holders(self, image_id: ImageID) -> list[str]:
        with self._lock:
            return sorted(h for h, ids in self._holds.items() if image_id in ids)

    # -- removal ------------------------------------------------------------------------------

    # Under the lock an image (or render) only disappears: a rename into tmp/. Its files are
    # removed after the lock is released, by the caller's thread, so a 200k-file image never
    # stalls a listing. A crash in between leaves them in tmp/, which the next start sweeps.

    def delete(self, image_id: str) -> ImageRecord:
        """Delete the image, and the layers it leaves no other image using."""
        with self._lock:
            record = self.get(image_id)
            users = self.holders(record.id)
            if users:
                raise ImageInUse(f"image {record.id} ({record.name}) is used by {', '.join(users)}")
            if record.layer and (parents := self.dependents(record.id)):
                raise ImageInUse(
                    f"layer {record.id} is part of {', '.join(sorted({p.name for p in parents}))}"
                )
            doomed = self._unlink(record)
            doomed += self._unlink_orphaned_layers(record)
        self._remove(doomed)
        return record

    def _unlink_orphaned_layers(self, record: ImageRecord) -> list[Path]:
        doomed: list[Path] = []
        for dependency in record.manifest.dependencies:
            layer = self._index.get(dependency.image_id) if dependency.image_id else None
            if (
                layer is not None
                and layer.layer
                and not self.holders(layer.id)
                and not self.dependents(layer.id)
            ):
                doomed += self._unlink(layer)
        return doomed

    def gc(self, grace_seconds: float = 0.0) -> list[ImageRecord]:
        """Delete every image no pod holds that was imported more than ``grace_seconds`` ago."""
        cutoff = time.time() - grace_seconds
        removed = []
        doomed: list[Path] = []
        with self._lock:
            for record in [r for r in self._index.values() if not r.layer]:
                if record.imported_at <= cutoff and not self.holders(record.id):
                    doomed += self._unlink(record)
                    removed.append(record)
            for record in [r for r in self._index.values() if r.layer]:
                if (
                    record.imported_at <= cutoff
                    and not self.holders(record.id)
                    and not self.dependents(record.id)
                ):
                    doomed += self._unlink(record)
            doomed += self._drop_derived(lambda layers: all(i in self._index for i in layers))
        self._remove(doomed)
        return removed

    def _unlink(self, record: ImageRecord) -> list[Path]:
        """Make the image and what was built from it disappear atomically and give back its quota; the
        trees to remove once the lock is released."""
        doomed = self.doomed_path("delete", record.id.digest[:16])
        os.rename(self._image_dir(record.id), doomed)
        if record.layer:
            self._link_path(record.id).unlink(missing_ok=True)
        del self._index[record.id]
        self._quota.release(record.size)
        return [doomed, *self._on_delete(record.id)]

    def _on_delete(self, image_id: ImageID) -> list[Path]:
        return self._drop_derived(lambda layers: image_id not in layers)

    def attach(self, derived: Derived) -> None:
        """Keep ``derived`` (what is built from images, such as render.py's renders) in step
        with deletions: it drops what an image that goes was part of."""
        with self._lock:
            self._derived.append(derived)

    def sweep_derived(self, derived: Derived) -> None:
        """Drop what ``derived`` built from images that are gone (deleted while it was not
        attached, by an earlier run, say)."""
        with self._lock:
            doomed = derived.drop(lambda layers: all(i in self._index for i in layers))
        self._remove(doomed)

    def _drop_derived(self, keep: Callable[[list[str]], bool]) -> list[Path]:
        return [path for derived in self._derived for path in derived.drop(keep)]

    def doomed_path(self, kind: str, name: str) -> Path:
        """Where something leaving the store goes (under its lock) to be removed later."""
        return self.root / TMP / f"{kind}-{name}-{uuid.uuid4().hex[:8]}"

    @staticmethod
    def _remove(doomed: Iterable[Path]) -> None:
        """Remove trees already out of sight. A failure is only logged: the image is gone
        either way, and the start-up sweep of tmp/ tries again."""
        for path in doomed:
            try:
                remove_tree(path)
            except OSError as err:
                log.warning("cannot remove %s (left for the next start): %s", path, err)

    @property
    def used_bytes(self) -> int:
        return self._quota.used


def _labels_match(record: ImageRecord, wanted: Mapping[str, str]) -> bool:
    for key, value in wanted.items():
        if key == "version" and value == LATEST:
            continue
        if record.labels.get(key) != value:
            return False
    host_os, host_arch = host_os_arch()
    for key, host_value in (("os", host_os), ("arch", host_arch)):
        if key not in wanted and record.labels.get(key, host_value) != host_value:
            return False
    return True


def _latest_key(record: ImageRecord) -> tuple[int, Any, float]:
    version = record.version
    if version == LATEST:
        return (2, None, record.imported_at)
    semver = SemVer.try_parse(version) if version else None
    if semver is not None:
        return (1, _SemVerKey(semver), record.imported_at)
    return (0, None, record.imported_at)


class _SemVerKey:
    """Orders SemVers by precedence inside a tuple key (None-safe)."""

    def __init__(self, version: SemVer) -> None:
        self.version = version

    def __lt__(self, other: _SemVerKey) -> bool:
        return self.version < other.version

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _SemVerKey) and self.version == other.version


def _lock_store(root: Path) -> Any:
    lock = open(root / "store.lock", "a+")  # noqa: SIM115 - held for the store's lifetime
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise StoreError(f"the image store {root} is in use by another process") from None
    return lock
