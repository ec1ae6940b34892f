"""How an OCI image appears in appc: its layers as appc images of their own, and the image as
an appc image that depends on them (docker2aci's layered mode, made content-addressed).

- A layer is the appc image ``layers.kurma.io/sha256-<diff ID hex>``. Its image ID is the
  SHA-512 of its canonical ACI (``CanonicalAci``): the manifest, the ``rootfs`` directory,
  then every entry of the layer's tar (its root aside) under ``rootfs/``, as PAX tar, hashed
  while the layer is extracted. Its tree holds overlayfs's whiteouts (layers.py).
- The image is the appc image named by ``Reference.appc_name()``, labelled version = tag, os
  and arch; its app comes from the config; its rootfs is empty and its dependencies are its
  layers by image ID, bottom first (appc applies later dependencies over earlier ones). Its
  image ID is the SHA-512 of that small ACI, which ``image_aci`` writes. The config digest
  (what podman and the CRI call the image's ID), the manifest digest and the reference are
  its annotations.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from typing import Literal

from kurmad.appc import (
    AC_VERSION,
    ACIdentifier,
    ACName,
    Annotations,
    App,
    Dependency,
    Environment,
    ImageID,
    ImageManifest,
    Labels,
    MountPoint,
    Port,
    ValidationError,
    sanitize_ac_identifier,
    sanitize_ac_name,
)

from .documents import ImageConfig, Platform, ResolvedImage
from .reference import Reference

LAYER_NAMESPACE = "layers.kurma.io/"
CONFIG_DIGEST = "kurmad.io/oci-config-digest"
MANIFEST_DIGEST = "kurmad.io/oci-manifest-digest"
REFERENCE = "kurmad.io/oci-reference"
DIFF_ID = "kurmad.io/oci-diff-id"
# The image's User named no group: the user's own group from /etc/passwd, as Docker gives it.
GROUP_FROM_USER = "kurmad.io/group-from-user"
STOP_SIGNAL = "kurmad.io/stop-signal"

# OCI architecture (and variant) -> appc arch
_APPC_ARCH = {"amd64": "amd64", "386": "i386", "arm64": "aarch64", "ppc64le": "ppc64le",
              "ppc64": "ppc64", "s390x": "s390x", "arm/v6": "armv6l", "arm/v7": "armv7l",
              "arm": "armv7l"}  # fmt: skip
_PAX: Literal[2] = 2  # tarfile.PAX_FORMAT, spelled so the type checker knows it


def layer_name(diff_id: str) -> ACIdentifier:
    algorithm, _, hexa = diff_id.partition(":")
    return ACIdentifier(f"{LAYER_NAMESPACE}{algorithm}-{hexa}")


def is_layer_name(name: str) -> bool:
    return name.startswith(LAYER_NAMESPACE)


def layer_manifest(diff_id: str) -> bytes:
    manifest = ImageManifest(name=layer_name(diff_id), annotations=Annotations({DIFF_ID: diff_id}))
    return manifest.dumps().encode()


def appc_arch(platform: Platform) -> str:
    key = (
        f"{platform.architecture}/{platform.variant}" if platform.variant else platform.architecture
    )
    return _APPC_ARCH.get(key) or _APPC_ARCH.get(platform.architecture) or platform.architecture


# --- the image's manifest ----------------------------------------------------------------------


def image_manifest(image: ResolvedImage, reference: Reference,
                   layers: list[tuple[ACIdentifier, ImageID]]) -> ImageManifest:  # fmt: skip
    """The appc manifest of ``image`` stored as ``reference``; ``layers`` bottom first."""
    config = image.config
    labels = {"os": config.platform.os, "arch": appc_arch(config.platform)}
    if reference.tag:
        labels = {"version": reference.tag, **labels}
    annotations = {
        **_label_annotations(config.labels),
        CONFIG_DIGEST: _digest(image.config_bytes),
        MANIFEST_DIGEST: image.manifest_digest,
        REFERENCE: str(reference),
    }
    app, app_annotations = _app(config)
    return ImageManifest(
        name=ACIdentifier(reference.appc_name()),
        ac_version=AC_VERSION,
        labels=Labels(labels),
        app=app,
        annotations=Annotations({**annotations, **app_annotations}),
        dependencies=tuple(Dependency(name, image_id) for name, image_id in layers),
    )


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _label_annotations(labels: dict[str, str]) -> dict[str, str]:
    """Labels whose keys make AC Identifiers (lowercased); others cannot be named in appc."""
    out: dict[str, str] = {}
    for key, value in labels.items():
        name = sanitize_ac_identifier(key)
        if name:
            out[name] = value
    return out


def _app(config: ImageConfig) -> tuple[App, dict[str, str]]:
    user, group, own_group = _user_group(config.user)
    annotations = {GROUP_FROM_USER: "true"} if own_group else {}
    if config.stop_signal:
        annotations[STOP_SIGNAL] = config.stop_signal
    app = App(
        user=user,
        group=group,
        exec=config.entrypoint + config.cmd,
        working_directory=config.working_dir,
        environment=_environment(config.env),
        mount_points=tuple(
            MountPoint(ACName(sanitize_ac_name(f"volume{path}")), path) for path in config.volumes
        ),
        ports=tuple(_port(text) for text in config.exposed_ports),
    )
    return app, annotations


def _user_group(user: str) -> tuple[str, str, bool]:
    """``name``, ``uid``, ``name:group``, ``uid:gid`` or nothing (root); the last is True
    when no group was given and the user's own is meant."""
    if not user:
        return "0", "0", False
    name, colon, group = user.partition(":")
    if colon and group:
        return name or "0", group, False
    return name or "0", "0", True


def _environment(env: tuple[str, ...]) -> Environment:
    values = {}
    for entry in env:
        name, equals, value = entry.partition("=")
        if not equals:
            raise ValidationError("config.Env", f"{entry!r} is not NAME=VALUE")
        values[name] = value
    return Environment(values)


def _port(text: str) -> Port:
    number, _, protocol = text.partition("/")
    protocol = protocol or "tcp"
    if not number.isdigit():
        raise ValidationError("config.ExposedPorts", f"{text!r} is not PORT[/PROTOCOL]")
    return Port(ACName(f"{protocol}-{number}"), protocol, int(number))


def image_aci(manifest: ImageManifest) -> bytes:
    """The image's own ACI: its manifest and an empty rootfs (the layers hold the files)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=_PAX) as tar:
        data = manifest.dumps().encode()
        tar.addfile(_file_header("manifest", len(data)), io.BytesIO(data))
        tar.addfile(_dir_header("rootfs"))
    return out.getvalue()


def _file_header(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    return info


def _dir_header(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
    return info


# --- a layer's canonical ACI, hashed as the layer is extracted ------------------------------------


class CanonicalAci:
    """The SHA-512 of the ACI a layer is: fed each entry's header (``entry``), then its data
    (``data``, as the extractor reads it), then ``end``; ``image_id`` once all are in."""

    def __init__(self, manifest: bytes) -> None:
        self._hash = hashlib.sha512()
        self.size = 0
        self._feed(_file_header("manifest", len(manifest)).tobuf(_PAX, "utf-8", "surrogateescape"))
        self._feed(manifest)
        self._pad(len(manifest))
        self._feed(_dir_header("rootfs").tobuf(_PAX, "utf-8", "surrogateescape"))

    def entry(self, member: tarfile.TarInfo, name: str, linkname: str = "") -> None:
        """The header of ``member`` as ``rootfs/name`` (a hard link's target as ``linkname``)."""
        header = tarfile.TarInfo(f"rootfs/{name}")
        for attribute in ("size", "mode", "uid", "gid", "mtime", "type", "uname", "gname",
                          "devmajor", "devminor", "pax_headers"):  # fmt: skip
            setattr(header, attribute, getattr(member, attribute))
        header.linkname = linkname or member.linkname
        if not member.isreg():
            header.size = 0
        self._feed(header.tobuf(_PAX, "utf-8", "surrogateescape"))

    def data(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self.size += len(chunk)

    def end(self, size: int) -> None:
        self._pad(size)

    def image_id(self) -> ImageID:
        self._feed(b"\0" * (2 * tarfile.BLOCKSIZE))
        remainder = self.size % tarfile.RECORDSIZE
        if remainder:
            self._feed(b"\0" * (tarfile.RECORDSIZE - remainder))
        return ImageID.from_digest(self._hash.hexdigest())

    def _feed(self, data: bytes) -> None:
        self._hash.update(data)
        self.size += len(data)

    def _pad(self, size: int) -> None:
        remainder = size % tarfile.BLOCKSIZE
        if remainder:
            self._feed(b"\0" * (tarfile.BLOCKSIZE - remainder))
