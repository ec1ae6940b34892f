"""The ``app`` object (aci.md §Image Manifest Schema), shared by image and pod manifests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._json import (
    add_non_empty,
    expect_bool,
    expect_int,
    expect_object,
    expect_str,
    optional,
    parse_list,
    required,
    str_list,
    str_map,
    unique_list,
)
from .environment import Environment
from .errors import ValidationError, join, quote
from .isolators import Isolator, parse_isolators
from .names import ACName

EVENT_PRE_START = "pre-start"
EVENT_POST_STOP = "post-stop"
_EVENT_NAMES = (EVENT_PRE_START, EVENT_POST_STOP)


def parse_exec(value: object, path: str) -> tuple[str, ...]:
    """A command line as a list of strings; arguments are passed as they are, unexpanded."""
    argv = str_list(value, path)
    if argv and not argv[0]:
        raise ValidationError(join(path, 0), "the program to run must not be empty")
    return argv


@dataclass(frozen=True)
class EventHandler:
    name: str
    exec: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, value: object, path: str) -> EventHandler:
        obj = expect_object(value, path)
        name = expect_str(required(obj, "name", path), join(path, "name"))
        if name not in _EVENT_NAMES:
            raise ValidationError(
                join(path, "name"), f'{quote(name)} must be "pre-start" or "post-stop"'
            )
        return cls(name, optional(obj, "exec", path, parse_exec, ()))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "exec": list(self.exec)}


@dataclass(frozen=True)
class MountPoint:
    name: ACName
    path: str
    read_only: bool = False

    @classmethod
    def from_json(cls, value: object, path: str) -> MountPoint:
        obj = expect_object(value, path)
        return cls(
            name=ACName.from_json(required(obj, "name", path), join(path, "name")),
            path=optional(obj, "path", path, expect_str, ""),
            read_only=optional(obj, "readOnly", path, expect_bool, False),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "path": self.path}
        if self.read_only:
            out["readOnly"] = True
        return out

    @classmethod
    def from_string(cls, text: str) -> MountPoint:
        """The CLI form ``NAME,path=/p[,readOnly=true]``."""
        from .strings import parse_bool_option, parse_options

        name, options = parse_options(text, allowed=("path", "readOnly"))
        mount_path = options.get("path", "")
        if not mount_path:
            raise ValidationError("path", f"{quote(text)} needs path=/some/path")
        read_only = parse_bool_option(options, "readOnly", text)
        return cls(ACName(name, "name"), mount_path, bool(read_only))


@dataclass(frozen=True)
class Port:
    name: ACName
    protocol: str
    port: int
    count: int = 1
    socket_activated: bool = False

    @classmethod
    def from_json(cls, value: object, path: str) -> Port:
        obj = expect_object(value, path)
        port = cls(
            name=ACName.from_json(required(obj, "name", path), join(path, "name")),
            protocol=expect_str(required(obj, "protocol", path), join(path, "protocol")),
            port=expect_int(required(obj, "port", path), join(path, "port")),
            count=optional(obj, "count", path, expect_int, 1),
            socket_activated=optional(obj, "socketActivated", path, expect_bool, False),
        )
        port._check(path)
        return port

    def _check(self, path: str) -> None:
        if not self.protocol:
            raise ValidationError(join(path, "protocol"), "must not be empty")
        if not 1 <= self.port <= 65535:
            raise ValidationError(
                join(path, "port"), f"{self.port} is out of range: must be 1..65535"
            )
        if self.count < 1:
            raise ValidationError(join(path, "count"), f"{self.count} must be at least 1")
        if self.port + self.count - 1 > 65535:
            raise ValidationError(
                join(path, "count"),
                f"the range {self.port}..{self.port + self.count - 1} ends beyond port 65535",
            )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "protocol": self.protocol, "port": self.port}
        if self.count != 1:
            out["count"] = self.count
        if self.socket_activated:
            out["socketActivated"] = True
        return out


def _parse_gids(value: object, path: str) -> tuple[int, ...]:
    # The spec says unsigned; the reference library takes negatives and so do the vectors.
    # The executor refuses a negative GID when it runs the app.
    return parse_list(value, path, expect_int)


def _working_directory(value: object, path: str) -> str:
    text = expect_str(value, path)
    if text and not text.startswith("/"):
        raise ValidationError(path, f"{quote(text)} must be an absolute path")
    return text


@dataclass(frozen=True)
class App:
    user: str
    group: str
    exec: tuple[str, ...] = ()
    supplementary_gids: tuple[int, ...] = ()
    event_handlers: tuple[EventHandler, ...] = ()
    working_directory: str = ""
    environment: Environment = field(default_factory=Environment)
    isolators: tuple[Isolator, ...] = ()
    mount_points: tuple[MountPoint, ...] = ()
    ports: tuple[Port, ...] = ()
    user_annotations: dict[str, str] = field(default_factory=dict)
    user_labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, value: object, path: str) -> App:
        obj = expect_object(value, path)
        return cls(
            user=_non_empty(required(obj, "user", path), join(path, "user")),
            group=_non_empty(required(obj, "group", path), join(path, "group")),
            exec=optional(obj, "exec", path, parse_exec, ()),
            supplementary_gids=optional(obj, "supplementaryGIDs", path, _parse_gids, ()),
            event_handlers=optional(
                obj, "eventHandlers", path, unique_list(EventHandler.from_json), ()
            ),
            working_directory=optional(obj, "workingDirectory", path, _working_directory, ""),
            environment=optional(obj, "environment", path, Environment.from_json, Environment()),
            isolators=optional(obj, "isolators", path, parse_isolators, ()),
            mount_points=optional(obj, "mountPoints", path, _mount_points, ()),
            ports=optional(obj, "ports", path, unique_list(Port.from_json), ()),
            user_annotations=optional(obj, "userAnnotations", path, str_map, {}),
            user_labels=optional(obj, "userLabels", path, str_map, {}),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.exec:
            out["exec"] = list(self.exec)
        out["user"] = self.user
        out["group"] = self.group
        optional_parts: dict[str, Any] = {
            "supplementaryGIDs": list(self.supplementary_gids),
            "eventHandlers": [h.to_json() for h in self.event_handlers],
            "workingDirectory": self.working_directory,
            "environment": self.environment.to_json(),
            "isolators": [i.to_json() for i in self.isolators],
            "mountPoints": [m.to_json() for m in self.mount_points],
            "ports": [p.to_json() for p in self.ports],
            "userAnnotations": dict(self.user_annotations),
            "userLabels": dict(self.user_labels),
        }
        return add_non_empty(out, optional_parts)


def _non_empty(value: object, path: str) -> str:
    text = expect_str(value, path)
    if not text:
        raise ValidationError(path, "must not be empty")
    return text


def _mount_points(value: object, path: str) -> tuple[MountPoint, ...]:
    return parse_list(value, path, MountPoint.from_json)
