"""An OCI image into the one store, from a registry or an archive, as convert.py describes it:
each layer once (a layer the store has is not fetched again), bounded parallel downloads, and
the image last, so a pull that fails leaves only whole layers (reused by the next try, freed by
GC) and never an image that lacks one.

A blob is spooled into the store's ``tmp/`` and verified against its digest before a byte of
it is extracted; the extraction checks the diff ID and hashes the layer's ACI in the same pass.
"""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO, Protocol

from kurmad.appc import ACIdentifier, ImageID, ValidationError
from kurmad.images.store import TMP, BuiltTree, ImageNotFound, ImageRecord, ImageStore, ImportResult

from .archives import ImageArchive
from .convert import (
    MANIFEST_DIGEST,
    CanonicalAci,
    image_aci,
    image_manifest,
    layer_manifest,
    layer_name,
)
from .documents import LAYER_COMPRESSION, Descriptor, MediaType, Platform, ResolvedImage
from .layers import extract_layer
from .reference import Reference, ReferenceError, Transport, parse_image_ref
from .registry import RegistryClient

# As many layers at once as Docker and containerd fetch by default.
PARALLEL_LAYERS = 3

log = logging.getLogger("kurmad.images")


class PullError(Exception):
    """A pull or an archive import that failed; ``str()`` is one line."""


class LayerState(StrEnum):
    WAITING = "waiting"
    PRESENT = "present"  # the store had it: nothing fetched
    DOWNLOADING = "downloading"
    EXTRACTING = "extracting"
    DONE = "done"


@dataclass(frozen=True)
class LayerProgress:
    digest: str  # the blob's (compressed) digest
    size: int
    done: int  # bytes fetched
    state: LayerState


Progress = Callable[[LayerProgress], None]


class ImageSource(Protocol):
    """Where an image's documents and blobs come from."""

    def resolve(self) -> ResolvedImage: ...

    def fetch(
        self, descriptor: Descriptor, sink: BinaryIO, progress: Callable[[int], None]
    ) -> None: ...


@dataclass
class RegistrySource:
    client: RegistryClient
    reference: Reference
    platform: Platform
    parallel: int = PARALLEL_LAYERS

    def resolve(self) -> ResolvedImage:
        return self.client.resolve(self.reference, self.platform)

    def fetch(
        self, descriptor: Descriptor, sink: BinaryIO, progress: Callable[[int], None]
    ) -> None:
        self.client.blob(self.reference, descriptor, sink, progress)


@dataclass
class ArchiveSource:
    archive: ImageArchive
    platform: Platform
    name: str | None = None
    parallel: int = 1  # one tar file, read by one thread

    def resolve(self) -> ResolvedImage:
        return self.archive.resolve(self.platform, self.name)

    def fetch(
        self, descriptor: Descriptor, sink: BinaryIO, progress: Callable[[int], None]
    ) -> None:
        self.archive.blob(descriptor, sink, progress)


def store_image(store: ImageStore, source: ImageSource, reference: Reference | None,
                progress: Progress = lambda p: None) -> ImportResult:  # fmt: skip
    """Put the image ``source`` gives into ``store`` as ``reference`` (or the name the source
    gives it); raise PullError naming what failed."""
    resolved = source.resolve()
    reference = reference or resolved.reference
    if reference is None or reference.is_short:
        raise PullError("the archive names no image with a registry; give one with --name")
    holder = f"pull {uuid.uuid4().hex[:8]}"
    try:
        layers = _store_layers(store, source, resolved, holder, progress)
        manifest = image_manifest(resolved, reference, layers)
        return store.import_stream(io.BytesIO(image_aci(manifest)))
    except ValidationError as err:
        raise PullError(f"{reference}: {err}") from None
    finally:
        store.release(holder)


def _store_layers(store: ImageStore, source: ImageSource, resolved: ResolvedImage, holder: str,
                  progress: Progress) -> list[tuple[ACIdentifier, ImageID]]:  # fmt: skip
    """Every layer in the store (held for ``holder``), bottom first, as (name, image ID)."""
    pairs = list(zip(resolved.manifest.layers, resolved.config.diff_ids, strict=True))
    unique = dict((diff_id, descriptor) for descriptor, diff_id in pairs)
    for descriptor in unique.values():
        progress(LayerProgress(descriptor.digest, descriptor.size, 0, LayerState.WAITING))
    workers = max(1, getattr(source, "parallel", 1))
    with ThreadPoolExecutor(workers, thread_name_prefix="pull") as pool:
        futures = {
            diff_id: pool.submit(_one_layer, store, source, descriptor, diff_id, holder, progress)
            for diff_id, descriptor in unique.items()
        }
        wait(futures.values(), return_when=FIRST_EXCEPTION)
        for future in futures.values():
            future.cancel()  # after a failure, those not yet begun never begin
        ids = {diff_id: _result(future) for diff_id, future in futures.items()}
    return [(layer_name(diff_id), ids[diff_id]) for _, diff_id in pairs]


def _result(future: Future[ImageRecord]) -> ImageID:
    if future.cancelled():
        raise PullError("cancelled")  # only after another layer failed, which is raised first
    return future.result().id


def _one_layer(store: ImageStore, source: ImageSource, descriptor: Descriptor, diff_id: str,
               holder: str, progress: Progress) -> ImageRecord:  # fmt: skip
    record = _stored_layer(store, diff_id)
    if record is not None:
        store.hold(holder, {record.id})
        progress(LayerProgress(descriptor.digest, descriptor.size, 0, LayerState.PRESENT))
        return record
    spool = store.root / TMP / f"blob-{uuid.uuid4().hex}"
    try:
        _download(source, descriptor, spool, progress)
        progress(LayerProgress(descriptor.digest, descriptor.size, descriptor.size,
                               LayerState.EXTRACTING))  # fmt: skip
        record = _extract(store, spool, descriptor, diff_id)
        store.hold(holder, {record.id})
    finally:
        spool.unlink(missing_ok=True)
    progress(LayerProgress(descriptor.digest, descriptor.size, descriptor.size, LayerState.DONE))
    return record


def _stored_layer(store: ImageStore, diff_id: str) -> ImageRecord | None:
    try:
        return store.find(layer_name(diff_id), layers=True)
    except ImageNotFound:
        return None


class _Meter:
    """Progress of one download, reported at most every 256 KiB."""

    STEP = 1 << 18

    def __init__(self, descriptor: Descriptor, progress: Progress) -> None:
        self.descriptor, self.progress = descriptor, progress
        self.done = self.reported = 0

    def __call__(self, amount: int) -> None:
        self.done += amount
        if self.done - self.reported >= self.STEP or self.done == self.descriptor.size:
            self.reported = self.done
            self.progress(LayerProgress(self.descriptor.digest, self.descriptor.size, self.done,
                                        LayerState.DOWNLOADING))  # fmt: skip


def _download(source: ImageSource, descriptor: Descriptor, spool: Path, progress: Progress) -> None:
    with open(spool, "w+b") as sink:
        source.fetch(descriptor, sink, _Meter(descriptor, progress))


def _extract(store: ImageStore, spool: Path, descriptor: Descriptor, diff_id: str) -> ImageRecord:
    manifest = layer_manifest(diff_id)

    def build(rootfs: Path, charge: Callable[[int], None]) -> BuiltTree:
        canonical = CanonicalAci(manifest)
        with open(spool, "rb") as blob:
            result = extract_layer(blob, LAYER_COMPRESSION[MediaType(descriptor.media_type)], diff_id,
                                   rootfs, store.policy, charge, canonical)  # fmt: skip
        image_id = canonical.image_id()
        return BuiltTree(image_id, manifest, canonical.size, descriptor.size,
                         frozenset(result.implied_dirs), tuple(result.warnings))  # fmt: skip

    return store.import_tree(build, layer=True).record


# --- finding an image the store has by an OCI reference ---------------------------------------------


def find_by_reference(store: ImageStore, text: str) -> ImageRecord | None:
    """The stored image ``text`` names as an OCI reference with a registry (its appc name and
    tag as version, a digest as the manifest digest), or None if it is no such reference or
    the store lacks it."""
    try:
        ref = parse_image_ref(text)
    except ReferenceError:
        return None
    if ref.oci is None or ref.oci.is_short or ref.transport is Transport.APPC:
        return None
    oci = ref.oci if ref.oci.digest else ref.oci.with_default_tag()
    if oci.digest:
        named = [r for r in store.images() if r.name == oci.appc_name()
                 and r.manifest.annotations.get(MANIFEST_DIGEST) == oci.digest]  # fmt: skip
        return max(named, key=lambda r: r.imported_at, default=None)
    try:
        return store.find(oci.appc_name(), {"version": oci.tag or "latest"})
    except ImageNotFound:
        return None
