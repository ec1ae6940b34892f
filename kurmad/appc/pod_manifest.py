"""The Pod Manifest (pods.md §Pod Manifest Schema)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from . import _json
from ._json import (
    add_non_empty,
    expect_bool,
    expect_int,
    expect_object,
    expect_str,
    optional,
    parse_list,
    required,
    str_map,
    unique_list,
)
from .annotations import Annotations
from .app import App, Port
from .errors import ValidationError, join, quote
from .hashes import ImageID
from .image_manifest import AC_VERSION
from .isolators import Isolator, parse_isolators
from .labels import Labels
from .names import ACIdentifier, ACKind, ACName
from .semver import SemVer
from .volumes import Volume

# Pod manifests serve as templates too (pods.md): an app may name its image by name and labels
# and leave the ID for a tool to fill in. The spec requires the ID, and a manifest that claims
# a current acVersion is held to that; manifests older than this version were written against
# the reference library, which never required it (its shipped pod_template.json, acVersion
# 0.3.0, has none), and are read as templates. A template must be reified before it runs.
TEMPLATE_AC_VERSIONS_BELOW = SemVer.parse("0.8.0")


@dataclass(frozen=True)
class RuntimeImage:
    id: ImageID | None
    name: ACIdentifier | None = None
    labels: Labels = field(default_factory=Labels)

    @classmethod
    def from_json(cls, value: object, path: str, *, require_id: bool = True) -> RuntimeImage:
        obj = expect_object(value, path)
        image_id = (
            ImageID.from_json(required(obj, "id", path), join(path, "id"))
            if require_id
            else optional(obj, "id", path, ImageID.from_json, None)
        )
        return cls(
            id=image_id,
            name=optional(obj, "name", path, ACIdentifier.from_json, None),
            labels=optional(obj, "labels", path, Labels.from_json, Labels()),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.name is not None:
            out["name"] = self.name
        if self.id is not None:
            out["id"] = self.id
        if self.labels:
            out["labels"] = self.labels.to_json()
        return out


@dataclass(frozen=True)
class Mount:
    """Maps an app path to a pod volume, by name or by an inline ``appVolume``.

    The spec calls ``volume`` required, but the reference library and the vectors accept a
    mount without it; the executor refuses such a mount when it has no ``appVolume`` either.
    """

    path: str
    volume: ACName | None = None
    app_volume: Volume | None = None

    @classmethod
    def from_json(cls, value: object, path: str) -> Mount:
        obj = expect_object(value, path)
        return cls(
            path=expect_str(required(obj, "path", path), join(path, "path")),
            volume=optional(obj, "volume", path, ACName.from_json, None),
            app_volume=optional(obj, "appVolume", path, Volume.from_json, None),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.volume is not None:
            out["volume"] = self.volume
        out["path"] = self.path
        if self.app_volume is not None:
            out["appVolume"] = self.app_volume.to_json()
        return out


@dataclass(frozen=True)
class RuntimeApp:
    name: ACName
    image: RuntimeImage
    app: App | None = None
    read_only_root_fs: bool = False
    mounts: tuple[Mount, ...] = ()
    annotations: Annotations = field(default_factory=Annotations)

    @classmethod
    def from_json(cls, value: object, path: str, *, require_id: bool = True) -> RuntimeApp:
        obj = expect_object(value, path)
        image = required(obj, "image", path)
        return cls(
            name=ACName.from_json(required(obj, "name", path), join(path, "name")),
            image=RuntimeImage.from_json(image, join(path, "image"), require_id=require_id),
            app=optional(obj, "app", path, App.from_json, None),
            read_only_root_fs=optional(obj, "readOnlyRootFS", path, expect_bool, False),
            mounts=optional(obj, "mounts", path, _mounts, ()),
            annotations=optional(obj, "annotations", path, Annotations.from_json, Annotations()),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "image": self.image.to_json()}
        if self.app is not None:
            out["app"] = self.app.to_json()
        if self.read_only_root_fs:
            out["readOnlyRootFS"] = True
        if self.mounts:
            out["mounts"] = [m.to_json() for m in self.mounts]
        if self.annotations:
            out["annotations"] = self.annotations.to_json()
        return out


@dataclass(frozen=True)
class ExposedPort:
    """A port of an app published on the host (``hostIP`` defaults to every address)."""

    name: ACName
    host_port: int
    host_ip: str | None = None
    pod_port: Port | None = None

    @classmethod
    def from_json(cls, value: object, path: str) -> ExposedPort:
        obj = expect_object(value, path)
        port = cls(
            name=ACName.from_json(required(obj, "name", path), join(path, "name")),
            host_port=expect_int(required(obj, "hostPort", path), join(path, "hostPort")),
            host_ip=optional(obj, "hostIP", path, _ipv4, None),
            pod_port=optional(obj, "podPort", path, Port.from_json, None),
        )
        if not 1 <= port.host_port <= 65535:
            raise ValidationError(
                join(path, "hostPort"), f"{port.host_port} is out of range: must be 1..65535"
            )
        return port

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "hostPort": self.host_port}
        if self.host_ip is not None:
            out["hostIP"] = self.host_ip
        if self.pod_port is not None:
            out["podPort"] = self.pod_port.to_json()
        return out


def _ipv4(value: object, path: str) -> str:
    text = expect_str(value, path)
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        raise ValidationError(path, f"{quote(text)} is not an IPv4 address (dotted quad)") from None
    return text


def _mounts(value: object, path: str) -> tuple[Mount, ...]:
    return parse_list(value, path, Mount.from_json)


@dataclass(frozen=True)
class PodManifest:
    apps: tuple[RuntimeApp, ...] = ()
    ac_version: SemVer = AC_VERSION
    volumes: tuple[Volume, ...] = ()
    isolators: tuple[Isolator, ...] = ()
    annotations: Annotations = field(default_factory=Annotations)
    ports: tuple[ExposedPort, ...] = ()
    user_annotations: dict[str, str] = field(default_factory=dict)
    user_labels: dict[str, str] = field(default_factory=dict)

    ac_kind = ACKind.POD_MANIFEST

    @classmethod
    def from_json(cls, value: object, path: str = "") -> PodManifest:
        obj = expect_object(value, path or "manifest")
        ACKind.expect(required(obj, "acKind", path), join(path, "acKind"), ACKind.POD_MANIFEST)
        version = SemVer.from_json(required(obj, "acVersion", path), join(path, "acVersion"))
        apps = unique_list(
            partial(RuntimeApp.from_json, require_id=version >= TEMPLATE_AC_VERSIONS_BELOW)
        )
        return cls(
            ac_version=version,
            apps=optional(obj, "apps", path, apps, ()),
            volumes=optional(obj, "volumes", path, unique_list(Volume.from_json), ()),
            isolators=optional(obj, "isolators", path, parse_isolators, ()),
            annotations=optional(obj, "annotations", path, Annotations.from_json, Annotations()),
            ports=optional(obj, "ports", path, unique_list(ExposedPort.from_json), ()),
            user_annotations=optional(obj, "userAnnotations", path, str_map, {}),
            user_labels=optional(obj, "userLabels", path, str_map, {}),
        )

    @classmethod
    def loads(cls, text: str | bytes) -> PodManifest:
        return cls.from_json(_json.loads(text))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "acVersion": str(self.ac_version),
            "acKind": self.ac_kind.value,
            "apps": [a.to_json() for a in self.apps],
        }
        optional_parts: dict[str, Any] = {
            "volumes": [v.to_json() for v in self.volumes],
            "isolators": [i.to_json() for i in self.isolators],
            "annotations": self.annotations.to_json(),
            "ports": [p.to_json() for p in self.ports],
            "userAnnotations": dict(self.user_annotations),
            "userLabels": dict(self.user_labels),
        }
        return add_non_empty(out, optional_parts)

    def dumps(self) -> str:
        return _json.dumps(self.to_json())

    @property
    def is_reified(self) -> bool:
        """Every app references its image by ID (pods.md: required before execution)."""
        return all(a.image.id is not None for a in self.apps)

    def app(self, name: str) -> RuntimeApp | None:
        return next((a for a in self.apps if a.name == name), None)

    def volume(self, name: str) -> Volume | None:
        return next((v for v in self.volumes if v.name == name), None)
