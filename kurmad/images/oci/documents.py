"""OCI and Docker image documents, parsed from untrusted bytes: descriptors, image indexes
(Docker manifest lists), image manifests (OCI, Docker schema 2) and image configs.

Only what kurmad acts on is kept, each value checked where it is read, and every error names its
field (``manifest.layers[2].digest: ...``), as the appc model's do. Bytes are checked against
their digest by the caller before they are parsed (``verify_digest``); a document over
``MAX_MANIFEST_BYTES`` is refused before it is read whole, as containerd refuses one over 4 MiB.
"""

from __future__ import annotations

import hashlib
import platform as host_platform
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from kurmad.appc._json import (
    JSONObject,
    expect_int,
    expect_object,
    expect_str,
    loads,
    parse_list,
    str_list,
    str_map,
)
from kurmad.appc.errors import ValidationError
from kurmad.images.streams import Compression

from .reference import DIGEST_RULE, Reference, is_digest

MAX_MANIFEST_BYTES = 4 * 2**20


class MediaType(StrEnum):
    OCI_INDEX = "application/vnd.oci.image.index.v1+json"
    OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
    OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
    OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
    OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
    OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
    DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
    DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
    DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
    DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"  # docker save's, uncompressed
    DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"


INDEX_TYPES = frozenset({MediaType.OCI_INDEX, MediaType.DOCKER_LIST})
MANIFEST_TYPES = frozenset({MediaType.OCI_MANIFEST, MediaType.DOCKER_MANIFEST})
CONFIG_TYPES = frozenset({MediaType.OCI_CONFIG, MediaType.DOCKER_CONFIG})


LAYER_COMPRESSION = {
    MediaType.OCI_LAYER: Compression.NONE,
    MediaType.OCI_LAYER_GZIP: Compression.GZIP,
    MediaType.OCI_LAYER_ZSTD: Compression.ZSTD,
    MediaType.DOCKER_LAYER: Compression.NONE,
    MediaType.DOCKER_LAYER_GZIP: Compression.GZIP,
}
# What a registry is asked for: every manifest kind kurmad reads, an index first.
ACCEPT = ", ".join(str(t) for t in (*sorted(INDEX_TYPES), *sorted(MANIFEST_TYPES)))


def verify_digest(data: bytes, digest: str, what: str) -> None:
    """Refuse ``data`` unless it hashes to ``digest`` (sha256 or sha512)."""
    algorithm, _, expected = check_digest(digest, what).partition(":")
    actual = hashlib.new(algorithm, data).hexdigest()
    if actual != expected:
        raise ValidationError(what, f"content is {algorithm}:{actual}, not {digest}")


def check_digest(value: object, path: str) -> str:
    text = expect_str(value, path)
    if not is_digest(text):
        raise ValidationError(path, f"{text!r} is not a digest: {DIGEST_RULE}")
    return text


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def from_json(cls, value: object, path: str) -> Platform:
        obj = expect_object(value, path)
        return cls(
            expect_str(obj.get("os", ""), f"{path}.os"),
            expect_str(obj.get("architecture", ""), f"{path}.architecture"),
            expect_str(obj.get("variant", ""), f"{path}.variant"),
        )

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``os/arch[/variant]``, as ``--platform`` takes it."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValidationError("platform", f"{text!r} is not os/arch[/variant]")
        return cls(*parts)

    def matches(self, wanted: Platform) -> bool:
        """This image's platform runs where ``wanted`` is asked for. A variant asked for must
        be the image's, or the image must name none for an architecture whose default it is."""
        if (self.os, self.architecture) != (wanted.os, wanted.architecture):
            return False
        if not wanted.variant:
            return True
        return self.variant == wanted.variant or (
            not self.variant and _DEFAULT_VARIANT.get(self.architecture) == wanted.variant
        )

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


# Go's GOARCH spelling of what uname says, and the variant an unmarked image has by default.
_ARCHITECTURES = {"x86_64": ("amd64", ""), "aarch64": ("arm64", "v8"), "armv7l": ("arm", "v7"),
                  "armv6l": ("arm", "v6"), "i686": ("386", ""), "i386": ("386", ""),
                  "ppc64le": ("ppc64le", ""), "s390x": ("s390x", ""), "riscv64": ("riscv64", "")}  # fmt: skip
_DEFAULT_VARIANT = {"arm64": "v8"}


def host() -> Platform:
    machine = host_platform.machine()
    architecture, variant = _ARCHITECTURES.get(machine, (machine, ""))
    return Platform(host_platform.system().lower(), architecture, variant)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, value: object, path: str) -> Descriptor:
        obj = expect_object(value, path)
        size = expect_int(obj.get("size"), f"{path}.size")
        if size < 0:
            raise ValidationError(f"{path}.size", f"{size} is negative")
        return cls(
            expect_str(obj.get("mediaType"), f"{path}.mediaType"),
            check_digest(obj.get("digest"), f"{path}.digest"),
            size,
            Platform.from_json(obj["platform"], f"{path}.platform") if "platform" in obj else None,
            str_map(obj.get("annotations") or {}, f"{path}.annotations"),
        )


@dataclass(frozen=True)
class Index:
    """An OCI image index or a Docker manifest list: one manifest per platform."""

    media_type: str
    manifests: tuple[Descriptor, ...]

    def select(self, wanted: Platform) -> Descriptor:
        """The first manifest for ``wanted`` (registries list the preferred one first)."""
        for descriptor in self.manifests:
            if descriptor.media_type in MANIFEST_TYPES and descriptor.platform is not None \
                    and descriptor.platform.matches(wanted):  # fmt: skip
                return descriptor
        offered = sorted({str(d.platform) for d in self.manifests if d.platform}) or ["none"]
        raise ValidationError(
            "index", f"no manifest for {wanted} (offered: {', '.join(offered)}); see --platform"
        )


@dataclass(frozen=True)
class Manifest:
    """An OCI image manifest or a Docker schema 2 manifest."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: dict[str, str] = field(default_factory=dict)


def parse_document(data: bytes, media_type: str, what: str = "manifest") -> Index | Manifest:
    """An index or a manifest from ``data``; ``media_type`` is the one the server (or the
    referring descriptor) gave, and the document's own ``mediaType`` must agree with it."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ValidationError(what, f"{len(data)} bytes is over the {MAX_MANIFEST_BYTES} limit")
    obj = expect_object(loads(data, what), what)
    declared = obj.get("mediaType")
    kind = media_type.split(";")[0].strip() or (declared if isinstance(declared, str) else "")
    if declared is not None and declared != kind:
        raise ValidationError(f"{what}.mediaType", f"{declared!r} but it was served as {kind!r}")
    if kind in INDEX_TYPES:
        manifests = parse_list(obj.get("manifests"), f"{what}.manifests", Descriptor.from_json)
        return Index(kind, manifests)
    if kind in MANIFEST_TYPES:
        return _manifest(obj, kind, what)
    raise ValidationError(what, f"unknown media type {kind!r}: expected one of {ACCEPT}")


def _manifest(obj: JSONObject, kind: str, what: str) -> Manifest:
    if obj.get("schemaVersion") != 2:
        raise ValidationError(f"{what}.schemaVersion", f"{obj.get('schemaVersion')!r} is not 2")
    config = Descriptor.from_json(obj.get("config"), f"{what}.config")
    if config.media_type not in CONFIG_TYPES:
        raise ValidationError(f"{what}.config.mediaType", f"unknown config {config.media_type!r}")
    layers = parse_list(obj.get("layers"), f"{what}.layers", Descriptor.from_json)
    for i, layer in enumerate(layers):
        if layer.media_type not in LAYER_COMPRESSION:
            raise ValidationError(f"{what}.layers[{i}].mediaType",
                                  f"unknown layer type {layer.media_type!r}")  # fmt: skip
    return Manifest(
        kind, config, layers, str_map(obj.get("annotations") or {}, f"{what}.annotations")
    )


@dataclass(frozen=True)
class ImageConfig:
    """What an image config says about running the image (its ``config`` object), its platform
    and the uncompressed digests of its layers, bottom first."""

    platform: Platform
    diff_ids: tuple[str, ...]
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    exposed_ports: tuple[str, ...] = ()  # "80/tcp"
    volumes: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    stop_signal: str = ""

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "config") -> ImageConfig:
        if len(data) > MAX_MANIFEST_BYTES:
            raise ValidationError(what, f"{len(data)} bytes is over the {MAX_MANIFEST_BYTES} limit")
        obj = expect_object(loads(data, what), what)
        rootfs = expect_object(obj.get("rootfs"), f"{what}.rootfs")
        if rootfs.get("type") != "layers":
            raise ValidationError(f"{what}.rootfs.type", f"{rootfs.get('type')!r} is not 'layers'")
        diff_ids = parse_list(rootfs.get("diff_ids"), f"{what}.rootfs.diff_ids", check_digest)
        run = expect_object(obj.get("config") or {}, f"{what}.config")
        return cls(
            Platform.from_json(obj, what),
            diff_ids,
            **_run_settings(run, f"{what}.config"),
        )


def _run_settings(run: JSONObject, path: str) -> dict[str, Any]:
    def strings(key: str) -> tuple[str, ...]:
        return str_list(run.get(key) or [], f"{path}.{key}")

    def keys(key: str) -> tuple[str, ...]:
        return tuple(sorted(expect_object(run.get(key) or {}, f"{path}.{key}")))

    return {
        "entrypoint": strings("Entrypoint"),
        "cmd": strings("Cmd"),
        "env": strings("Env"),
        "working_dir": expect_str(run.get("WorkingDir") or "", f"{path}.WorkingDir"),
        "user": expect_str(run.get("User") or "", f"{path}.User"),
        "exposed_ports": keys("ExposedPorts"),
        "volumes": keys("Volumes"),
        "labels": str_map(run.get("Labels") or {}, f"{path}.Labels"),
        "stop_signal": expect_str(run.get("StopSignal") or "", f"{path}.StopSignal"),
    }


def layer_count_matches(manifest: Manifest, config: ImageConfig) -> None:
    """A manifest and its config must agree on how many layers there are."""
    if len(manifest.layers) != len(config.diff_ids):
        raise ValidationError(
            "config.rootfs.diff_ids",
            f"{len(config.diff_ids)} layers, but the manifest lists {len(manifest.layers)}",
        )


@dataclass(frozen=True)
class ResolvedImage:
    """One image for one platform, from a registry or an archive: its manifest (with that
    manifest's digest) and its config, each checked against its digest. ``reference`` is what
    it was asked for by, or what an archive names it (``None`` if the archive does not)."""

    reference: Reference | None
    manifest: Manifest
    manifest_digest: str
    manifest_bytes: bytes
    config: ImageConfig
    config_bytes: bytes


def resolve_image(top: Index | Manifest, top_bytes: bytes, top_digest: str, platform: Platform,
                  manifest_of: Callable[[Descriptor], tuple[Index | Manifest, bytes]],
                  blob_of: Callable[[Descriptor], bytes],
                  reference: Reference | None) -> ResolvedImage:  # fmt: skip
    """The image ``top`` names for ``platform``: through an index to its manifest, then its
    config. A registry and an archive differ only in how they fetch (``manifest_of``,
    ``blob_of``, which raise their own errors and check digests); what the documents say wrong
    is a ValidationError."""
    document, data, digest = top, top_bytes, top_digest
    if isinstance(document, Index):
        chosen = document.select(platform)
        document, data = manifest_of(chosen)
        digest = chosen.digest
    if not isinstance(document, Manifest):
        raise ValidationError("index", "an index points at another index")
    config_bytes = blob_of(document.config)
    config = ImageConfig.from_bytes(config_bytes)
    if not config.platform.matches(platform):  # a lone manifest names no platform: its config does
        raise ValidationError("config", f"the image is for {config.platform}, not {platform}")
    layer_count_matches(document, config)
    return ResolvedImage(reference, document, digest, data, config, config_bytes)
