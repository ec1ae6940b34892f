"""The Image Manifest (aci.md §Image Manifest Schema)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import _json
from ._json import (
    add_non_empty,
    expect_int,
    expect_object,
    optional,
    parse_list,
    required,
    str_list,
    str_map,
)
from .annotations import Annotations
from .app import App
from .errors import ValidationError, join
from .hashes import ImageID
from .labels import Labels
from .names import ACIdentifier, ACKind
from .semver import SemVer

# The spec version this implementation writes into the manifests it creates.
AC_VERSION = SemVer.parse("0.8.11")


@dataclass(frozen=True)
class Dependency:
    image_name: ACIdentifier
    image_id: ImageID | None = None
    labels: Labels = field(default_factory=Labels)
    size: int | None = None

    @classmethod
    def from_json(cls, value: object, path: str) -> Dependency:
        obj = expect_object(value, path)
        dep = cls(
            image_name=ACIdentifier.from_json(
                required(obj, "imageName", path), join(path, "imageName")
            ),
            image_id=optional(obj, "imageID", path, ImageID.from_json, None),
            labels=optional(obj, "labels", path, Labels.from_json, Labels()),
            size=optional(obj, "size", path, expect_int, None),
        )
        if dep.size is not None and dep.size < 0:
            raise ValidationError(join(path, "size"), f"{dep.size} must not be negative")
        return dep

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"imageName": self.image_name}
        if self.image_id is not None:
            out["imageID"] = self.image_id
        if self.labels:
            out["labels"] = self.labels.to_json()
        if self.size is not None:
            out["size"] = self.size
        return out


@dataclass(frozen=True)
class ImageManifest:
    name: ACIdentifier
    ac_version: SemVer = AC_VERSION
    labels: Labels = field(default_factory=Labels)
    app: App | None = None
    annotations: Annotations = field(default_factory=Annotations)
    dependencies: tuple[Dependency, ...] = ()
    path_whitelist: tuple[str, ...] = ()
    user_annotations: dict[str, str] = field(default_factory=dict)
    user_labels: dict[str, str] = field(default_factory=dict)

    ac_kind = ACKind.IMAGE_MANIFEST

    @classmethod
    def from_json(cls, value: object, path: str = "") -> ImageManifest:
        obj = expect_object(value, path or "manifest")
        ACKind.expect(required(obj, "acKind", path), join(path, "acKind"), ACKind.IMAGE_MANIFEST)
        return cls(
            ac_version=SemVer.from_json(required(obj, "acVersion", path), join(path, "acVersion")),
            name=ACIdentifier.from_json(required(obj, "name", path), join(path, "name")),
            labels=optional(obj, "labels", path, Labels.from_json, Labels()),
            app=optional(obj, "app", path, App.from_json, None),
            annotations=optional(obj, "annotations", path, Annotations.from_json, Annotations()),
            dependencies=optional(obj, "dependencies", path, _dependencies, ()),
            path_whitelist=optional(obj, "pathWhitelist", path, str_list, ()),
            user_annotations=optional(obj, "userAnnotations", path, str_map, {}),
            user_labels=optional(obj, "userLabels", path, str_map, {}),
        )

    @classmethod
    def loads(cls, text: str | bytes) -> ImageManifest:
        return cls.from_json(_json.loads(text))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "acKind": self.ac_kind.value,
            "acVersion": str(self.ac_version),
            "name": self.name,
        }
        optional_parts: dict[str, Any] = {
            "labels": self.labels.to_json(),
            "app": self.app.to_json() if self.app else None,
            "annotations": self.annotations.to_json(),
            "dependencies": [d.to_json() for d in self.dependencies],
            "pathWhitelist": list(self.path_whitelist),
            "userAnnotations": dict(self.user_annotations),
            "userLabels": dict(self.user_labels),
        }
        return add_non_empty(out, optional_parts)

    def dumps(self) -> str:
        return _json.dumps(self.to_json())

    @property
    def version(self) -> str | None:
        return self.labels.get("version")


def _dependencies(value: object, path: str) -> tuple[Dependency, ...]:
    return parse_list(value, path, Dependency.from_json)
