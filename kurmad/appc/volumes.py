"""Pod volumes (pods.md): ``empty`` directories that live as long as the pod, and ``host``
directories bind-mounted from the host. Also the JSON and the CLI string forms."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ._json import expect_bool, expect_int, expect_object, expect_str, optional, required
from .errors import ValidationError, join, quote
from .names import ACName
from .strings import parse_bool_option, parse_int_option, parse_options

KIND_EMPTY = "empty"
KIND_HOST = "host"
DEFAULT_EMPTY_MODE = "0755"
_MODE = re.compile(r"0?[0-7]{1,4}")
_STRING_KEYS = ("kind", "source", "readOnly", "recursive", "mode", "uid", "gid")


@dataclass(frozen=True)
class Volume:
    """Optional fields are None when not given, so the string form round-trips exactly."""

    name: ACName
    kind: str
    source: str | None = None
    read_only: bool | None = None
    recursive: bool | None = None
    mode: str | None = None
    uid: int | None = None
    gid: int | None = None

    def __post_init__(self) -> None:
        self.check("")

    def check(self, path: str) -> None:
        if self.kind not in (KIND_EMPTY, KIND_HOST):
            raise ValidationError(
                join(path, "kind"), f'{quote(self.kind)} must be "empty" or "host"'
            )
        if self.kind == KIND_HOST:
            self._check_host(path)
        else:
            self._check_empty(path)

    def _check_host(self, path: str) -> None:
        if not self.source:
            raise ValidationError(join(path, "source"), "is required for a host volume")
        if not self.source.startswith("/"):
            raise ValidationError(
                join(path, "source"), f"{quote(self.source)} must be an absolute path"
            )
        for key, value in (("mode", self.mode), ("uid", self.uid), ("gid", self.gid)):
            if value is not None:
                raise ValidationError(join(path, key), "only applies to empty volumes")

    def _check_empty(self, path: str) -> None:
        if self.source is not None:
            raise ValidationError(join(path, "source"), "only applies to host volumes")
        if self.mode is not None and not _MODE.fullmatch(self.mode):
            raise ValidationError(
                join(path, "mode"), f"{quote(self.mode)} is not an octal mode like 0755"
            )
        for key, value in (("uid", self.uid), ("gid", self.gid)):
            if value is not None and value < 0:
                raise ValidationError(join(path, key), f"{value} must not be negative")

    @property
    def effective_mode(self) -> int:
        return int(self.mode or DEFAULT_EMPTY_MODE, 8)

    @property
    def effective_recursive(self) -> bool:
        return True if self.recursive is None else self.recursive

    @classmethod
    def from_json(cls, value: object, path: str) -> Volume:
        obj = expect_object(value, path)
        fields = dict(
            name=ACName.from_json(required(obj, "name", path), join(path, "name")),
            kind=expect_str(required(obj, "kind", path), join(path, "kind")),
            source=optional(obj, "source", path, expect_str, None),
            read_only=optional(obj, "readOnly", path, expect_bool, None),
            recursive=optional(obj, "recursive", path, expect_bool, None),
            mode=optional(obj, "mode", path, expect_str, None),
            uid=optional(obj, "uid", path, expect_int, None),
            gid=optional(obj, "gid", path, expect_int, None),
        )
        return _checked(fields, path)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        for key, value in self._optional_fields():
            if value is not None:
                out[key] = value
        return out

    def _optional_fields(self) -> list[tuple[str, Any]]:
        return [
            ("source", self.source), ("readOnly", self.read_only), ("recursive", self.recursive),
            ("mode", self.mode), ("uid", self.uid), ("gid", self.gid),
        ]  # fmt: skip

    @classmethod
    def from_string(cls, text: str) -> Volume:
        """``NAME,kind=host|empty[,source=/x][,readOnly=true][,recursive=false][,mode=0755]
        [,uid=N][,gid=N]``."""
        name, options = parse_options(text, _STRING_KEYS)
        fields = dict(
            name=ACName(name, "name"),
            kind=options.get("kind", ""),
            source=options.get("source"),
            read_only=parse_bool_option(options, "readOnly", text),
            recursive=parse_bool_option(options, "recursive", text),
            mode=options.get("mode"),
            uid=parse_int_option(options, "uid", text),
            gid=parse_int_option(options, "gid", text),
        )
        return _checked(fields, "")

    def __str__(self) -> str:
        parts = [self.name, f"kind={self.kind}"]
        for key, value in self._optional_fields():
            if value is not None:
                parts.append(f"{key}={str(value).lower() if isinstance(value, bool) else value}")
        return ",".join(parts)


def _checked(fields: dict[str, Any], path: str) -> Volume:
    """Build a Volume, re-rooting any rule it breaks at ``path``."""
    try:
        return Volume(**fields)
    except ValidationError as err:
        raise err.within(path) from None
