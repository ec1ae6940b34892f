"""Images in files: an OCI image layout (a directory, or a tar of one: ``oci-archive``) and a
``docker save`` tar (``docker-archive``), recognised by what they hold, not by their names.

Either gives the same ``ResolvedImage`` a registry gives, and its blobs checked against their
digests the same way (transfer.py), so an import does not care where an image came from. Only
named members are ever read (``index.json``, ``blobs/sha256/<hex>``, what ``manifest.json``
lists): nothing in an archive is extracted by its own path here.

A docker-archive has no manifest of its own: one is made from its ``manifest.json`` entry
(schema 2, uncompressed layers, digests computed from the files), so its manifest digest is
kurmad's, while its config digest (the image ID Docker and podman show) is the archive's.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import IO, Any, BinaryIO

from kurmad.appc.errors import ValidationError

from .documents import (
    MAX_MANIFEST_BYTES,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    MediaType,
    Platform,
    ResolvedImage,
    parse_document,
    resolve_image,
    verify_digest,
)
from .reference import Reference, ReferenceError, parse_reference
from .transfer import BlobTransfer

REF_NAME = "org.opencontainers.image.ref.name"


class ArchiveError(Exception):
    """An archive that cannot be read as an image; ``str()`` is one line naming the file."""


class ArchiveKind(StrEnum):
    OCI_LAYOUT = "oci-layout"
    OCI_ARCHIVE = "oci-archive"
    DOCKER_ARCHIVE = "docker-archive"


def detect(path: Path) -> ArchiveKind | None:
    """What ``path`` holds, or None if it is none of these (an ACI, for example)."""
    if path.is_dir():
        return ArchiveKind.OCI_LAYOUT if (path / "oci-layout").is_file() else None
    try:
        with tarfile.open(path) as tar:
            names = {_clean(m.name) for m in _first_members(tar, 64)}
    except (OSError, tarfile.TarError):
        return None
    if "oci-layout" in names:
        return ArchiveKind.OCI_ARCHIVE
    if "manifest.json" in names:
        return ArchiveKind.DOCKER_ARCHIVE
    return None


def open_archive(path: Path) -> ImageArchive:
    kind = detect(path)
    if kind is None:
        raise ArchiveError(f"{path}: neither an OCI image layout nor a docker-archive")
    files: _Files = _Directory(path) if kind is ArchiveKind.OCI_LAYOUT else _Tar(path)
    if kind is ArchiveKind.DOCKER_ARCHIVE:
        return DockerArchive(path, files)
    return OciLayout(path, files)


class ImageArchive:
    """The images of one archive file; ``close`` when done."""

    def __init__(self, path: Path, files: _Files) -> None:
        self.path = path
        self.files = files

    def close(self) -> None:
        self.files.close()

    def __enter__(self) -> ImageArchive:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def names(self) -> list[str]:
        """The names the archive gives its images (tags, or full references)."""
        raise NotImplementedError

    def resolve(self, platform: Platform, name: str | None = None) -> ResolvedImage:
        raise NotImplementedError

    def blob(self, descriptor: Descriptor, sink: BinaryIO,
             progress: Callable[[int], None] | None = None) -> None:  # fmt: skip
        transfer = BlobTransfer(descriptor, sink, progress)
        with self.files.open(self._blob_member(descriptor)) as source:
            try:
                transfer.copy_from(source)
            except ValueError as err:
                raise ArchiveError(f"{self.path}: {err}") from None
        problem = transfer.problem()
        if problem:
            raise ArchiveError(f"{self.path}: {problem}")

    def _blob_member(self, descriptor: Descriptor) -> str:
        algorithm, _, hexa = descriptor.digest.partition(":")
        return f"blobs/{algorithm}/{hexa}"

    def _choose(self, names: list[str], name: str | None) -> int:
        if name is None:
            if len(names) != 1:
                raise ArchiveError(f"{self.path}: holds {len(names)} images "
                                   f"({', '.join(names) or 'unnamed'}); name one")  # fmt: skip
            return 0
        if name not in names:
            raise ArchiveError(f"{self.path}: no image {name!r} (it holds {', '.join(names)})")
        return names.index(name)

    def _checked(self, check: Callable[[], Any]) -> Any:
        try:
            return check()
        except ValidationError as err:
            raise ArchiveError(f"{self.path}: {err}") from None


class OciLayout(ImageArchive):
    def _entries(self) -> list[Descriptor]:
        index = self._checked(
            lambda: parse_document(self.files.read("index.json"), MediaType.OCI_INDEX, "index.json")
        )
        return list(index.manifests)

    def names(self) -> list[str]:
        return [d.annotations.get(REF_NAME, "") for d in self._entries()]

    def resolve(self, platform: Platform, name: str | None = None) -> ResolvedImage:
        entries = self._entries()
        chosen = entries[self._choose([d.annotations.get(REF_NAME, "") for d in entries], name)]
        document, data = self._document(chosen)
        reference = _reference(chosen.annotations.get(REF_NAME, ""))
        return self._checked(partial(resolve_image, document, data, chosen.digest, platform,
                                     self._document, self._small_blob, reference))  # fmt: skip

    def _document(self, descriptor: Descriptor) -> tuple[Index | Manifest, bytes]:
        data = self._small_blob(descriptor)
        return self._checked(lambda: parse_document(data, descriptor.media_type)), data

    def _small_blob(self, descriptor: Descriptor) -> bytes:
        if descriptor.size > MAX_MANIFEST_BYTES:
            raise ArchiveError(
                f"{self.path}: {descriptor.digest} is over the {MAX_MANIFEST_BYTES} limit"
            )
        data = self.files.read(self._blob_member(descriptor))
        self._checked(lambda: verify_digest(data, descriptor.digest, descriptor.digest))
        return data


@dataclass(frozen=True)
class _DockerEntry:
    config: str
    tags: tuple[str, ...]
    layers: tuple[str, ...]


class DockerArchive(ImageArchive):
    def __init__(self, path: Path, files: _Files) -> None:
        super().__init__(path, files)
        self._layer_files: dict[str, str] = {}  # digest → member, for blob()

    def _entries(self) -> list[_DockerEntry]:
        try:
            document = json.loads(self.files.read("manifest.json"))
            return [
                _DockerEntry(e["Config"], tuple(e.get("RepoTags") or ()), tuple(e["Layers"]))
                for e in document
            ]
        except (ValueError, KeyError, TypeError) as err:
            raise ArchiveError(
                f"{self.path}: manifest.json is not a docker-archive manifest ({err})"
            ) from None

    def names(self) -> list[str]:
        return [tag for entry in self._entries() for tag in entry.tags]

    def resolve(self, platform: Platform, name: str | None = None) -> ResolvedImage:
        entries = self._entries()
        tagged = [(tag, entry) for entry in entries for tag in entry.tags] or [
            ("", e) for e in entries
        ]
        tag, entry = tagged[self._choose([t for t, _ in tagged], name)]
        config_bytes = self.files.read(entry.config)
        config = self._checked(lambda: ImageConfig.from_bytes(config_bytes))
        if not config.platform.matches(platform):
            raise ArchiveError(f"{self.path}: the image is for {config.platform}, not {platform}")
        if len(entry.layers) != len(config.diff_ids):
            raise ArchiveError(f"{self.path}: config.rootfs.diff_ids: {len(config.diff_ids)} "
                               f"layers, but manifest.json lists {len(entry.layers)}")  # fmt: skip
        layers = tuple(map(self._layer, entry.layers, config.diff_ids))
        config_descriptor = Descriptor(
            MediaType.DOCKER_CONFIG, _sha256(config_bytes), len(config_bytes)
        )
        manifest = Manifest(MediaType.DOCKER_MANIFEST, config_descriptor, layers)
        data = _manifest_bytes(manifest)
        return ResolvedImage(_reference(tag), manifest, _sha256(data), data, config, config_bytes)

    def _layer(self, member: str, diff_id: str) -> Descriptor:
        """A docker-archive layer is uncompressed: its digest is its diff ID, checked when
        its blob is read (the layer is not read twice)."""
        self._layer_files[diff_id] = member
        return Descriptor(MediaType.DOCKER_LAYER, diff_id, self.files.size(member))

    def _blob_member(self, descriptor: Descriptor) -> str:
        member = self._layer_files.get(descriptor.digest)
        if member is None:
            raise ArchiveError(
                f"{self.path}: no layer {descriptor.digest} (resolve the image first)"
            )
        return member


# --- the files of an archive: a directory or a tar -------------------------------------------


class _Files:
    def open(self, name: str) -> IO[bytes]:
        raise NotImplementedError

    def size(self, name: str) -> int:
        with self.open(name) as source:
            return source.seek(0, io.SEEK_END)

    def read(self, name: str, limit: int = MAX_MANIFEST_BYTES) -> bytes:
        with self.open(name) as source:
            data = source.read(limit + 1)
        if len(data) > limit:
            raise ArchiveError(f"{self._where()}: {name} is over the {limit} limit")
        return data

    def close(self) -> None:
        pass

    def _where(self) -> str:
        raise NotImplementedError


class _Directory(_Files):
    def __init__(self, root: Path) -> None:
        self.root = root

    def open(self, name: str) -> IO[bytes]:
        path = self.root / name
        # Only names this module builds arrive here; still, never leave the layout.
        if ".." in Path(name).parts or not path.is_file():
            raise ArchiveError(f"{self.root}: no {name}")
        return path.open("rb")

    def _where(self) -> str:
        return str(self.root)


class _Tar(_Files):
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.tar = tarfile.open(path)  # noqa: SIM115 (open for the archive's life)
            self.members = {_clean(m.name): m for m in self.tar.getmembers()}
        except (OSError, tarfile.TarError) as err:
            raise ArchiveError(f"{path}: not a readable tar ({err})") from None

    def open(self, name: str) -> IO[bytes]:
        member = self.members.get(_clean(name))
        source = self.tar.extractfile(member) if member is not None else None
        if source is None:
            raise ArchiveError(f"{self.path}: no {name}")
        return source

    def close(self) -> None:
        self.tar.close()

    def _where(self) -> str:
        return str(self.path)


def _first_members(tar: tarfile.TarFile, count: int) -> list[tarfile.TarInfo]:
    members = []
    for member in tar:
        members.append(member)
        if len(members) == count:
            break
    return members


def _clean(name: str) -> str:
    return name.removeprefix("./").strip("/")


def _reference(name: str) -> Reference | None:
    if not name or "/" not in name:
        return None  # an OCI layout's ref.name is often a bare tag
    try:
        return parse_reference(name)
    except ReferenceError:
        return None


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _manifest_bytes(manifest: Manifest) -> bytes:
    def descriptor(d: Descriptor) -> dict[str, object]:
        return {"mediaType": d.media_type, "digest": d.digest, "size": d.size}

    return json.dumps({"schemaVersion": 2, "mediaType": manifest.media_type,
                       "config": descriptor(manifest.config),
                       "layers": [descriptor(layer) for layer in manifest.layers]},
                      separators=(",", ":")).encode()  # fmt: skip
