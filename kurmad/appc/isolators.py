"""Isolators (types.md §Isolator Type, ace.md §Isolators).

An isolator is an AC Identifier name and a JSON value. The spec defines the value formats of the
well-known names below; any other name is kept with its raw value, because the spec lets an
executor ignore isolators it does not understand (it must then say so when it runs the pod).
The reference library rejects unknown names inside an app; the spec text does not, and neither
do we.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self, TypeVar

from ._json import (
    MISSING,
    expect_bool,
    expect_int,
    expect_object,
    expect_str,
    field,
    optional,
    parse_list,
    required,
    str_list,
    str_map,
)
from .errors import ValidationError, join, quote
from .names import ACIdentifier
from .quantity import Quantity

# ace.md: the bounding set when an app has no capability isolator.
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_AUDIT_WRITE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_KILL",
    "CAP_MKNOD", "CAP_NET_RAW", "CAP_NET_BIND_SERVICE", "CAP_SETUID", "CAP_SETGID",
    "CAP_SETPCAP", "CAP_SETFCAP", "CAP_SYS_CHROOT",
)  # fmt: skip

_ERRNO = re.compile(r"E[A-Z0-9]*")
T = TypeVar("T", bound="IsolatorValue")


class IsolatorValue(ABC):
    """The parsed value of a well-known isolator."""

    NAME: ClassVar[str]

    @classmethod
    @abstractmethod
    def from_json(cls, value: object, path: str) -> Self: ...

    @abstractmethod
    def to_json(self) -> Any: ...


# --- resource/* ---------------------------------------------------------------------------


def _quantity(value: object, path: str) -> Quantity:
    return Quantity.from_json(value, path)


@dataclass(frozen=True)
class _RequestLimit(IsolatorValue):
    """``{request, limit}``: request defaults to limit; ``default`` must not be true."""

    limit: Quantity
    request: Quantity | None = None

    @classmethod
    def from_json(cls, value: object, path: str) -> Self:
        obj = expect_object(value, path)
        if optional(obj, "default", path, expect_bool, False):
            raise ValidationError(join(path, "default"), f"{cls.NAME} does not take default: true")
        return cls(
            limit=_quantity(required(obj, "limit", path), join(path, "limit")),
            request=optional(obj, "request", path, _quantity, None),
        )

    def to_json(self) -> Any:
        out: dict[str, str] = {}
        if self.request is not None:
            out["request"] = self.request.text
        out["limit"] = self.limit.text
        return out

    @property
    def effective_request(self) -> Quantity:
        return self.request if self.request is not None else self.limit


@dataclass(frozen=True)
class ResourceCPU(_RequestLimit):
    NAME = "resource/cpu"


@dataclass(frozen=True)
class ResourceMemory(_RequestLimit):
    NAME = "resource/memory"


@dataclass(frozen=True)
class _DefaultLimit(IsolatorValue):
    """``{default: true, limit}``: applies to every device; takes no request."""

    limit: Quantity

    @classmethod
    def from_json(cls, value: object, path: str) -> Self:
        obj = expect_object(value, path)
        if not optional(obj, "default", path, expect_bool, False):
            raise ValidationError(join(path, "default"), f"{cls.NAME} requires default: true")
        if field(obj, "request") is not MISSING:
            raise ValidationError(join(path, "request"), f"{cls.NAME} does not take a request")
        return cls(limit=_quantity(required(obj, "limit", path), join(path, "limit")))

    def to_json(self) -> Any:
        return {"default": True, "limit": self.limit.text}


@dataclass(frozen=True)
class ResourceBlockBandwidth(_DefaultLimit):
    NAME = "resource/block-bandwidth"


@dataclass(frozen=True)
class ResourceBlockIOPS(_DefaultLimit):
    NAME = "resource/block-iops"


@dataclass(frozen=True)
class ResourceNetworkBandwidth(_DefaultLimit):
    NAME = "resource/network-bandwidth"


# --- os/linux/* ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _NameSet(IsolatorValue):
    """``{set: [...]}`` with at least one entry."""

    set: tuple[str, ...]

    @classmethod
    def _parse_set(cls, obj: Any, path: str) -> tuple[str, ...]:
        names = str_list(required(obj, "set", path), join(path, "set"))
        if not names:
            raise ValidationError(join(path, "set"), "must not be empty")
        return names

    @classmethod
    def from_json(cls, value: object, path: str) -> Self:
        return cls(set=cls._parse_set(expect_object(value, path), path))

    def to_json(self) -> Any:
        return {"set": list(self.set)}


@dataclass(frozen=True)
class CapabilitiesRetainSet(_NameSet):
    NAME = "os/linux/capabilities-retain-set"


@dataclass(frozen=True)
class CapabilitiesRemoveSet(_NameSet):
    NAME = "os/linux/capabilities-remove-set"


@dataclass(frozen=True)
class _SeccompSet(_NameSet):
    """``{set, errno}``: an empty errno means blocked calls kill the app with SIGSYS."""

    errno: str = ""

    @classmethod
    def from_json(cls, value: object, path: str) -> Self:
        obj = expect_object(value, path)
        errno = optional(obj, "errno", path, expect_str, "")
        if errno and not _ERRNO.fullmatch(errno):
            raise ValidationError(
                join(path, "errno"), f"{quote(errno)} is not an errno name like EPERM"
            )
        return cls(set=cls._parse_set(obj, path), errno=errno)

    def to_json(self) -> Any:
        out: dict[str, Any] = {"set": list(self.set)}
        if self.errno:
            out["errno"] = self.errno
        return out


@dataclass(frozen=True)
class SeccompRemoveSet(_SeccompSet):
    NAME = "os/linux/seccomp-remove-set"


@dataclass(frozen=True)
class SeccompRetainSet(_SeccompSet):
    NAME = "os/linux/seccomp-retain-set"


@dataclass(frozen=True)
class NoNewPrivileges(IsolatorValue):
    NAME = "os/linux/no-new-privileges"
    enabled: bool

    @classmethod
    def from_json(cls, value: object, path: str) -> Self:
        return cls(expect_bool(value, path))

    def to_json(self) -> Any:
        return self.enabled


@dataclass(frozen=True)
class SELinuxContext(IsolatorValue):
    NAME = "os/linux/selinux-context"
    user: str
    role: str
    type: str
    level: str

    @classmethod
    def from_json(cls, value: object, path: str) -> Self:
        obj = expect_object(value, path)
        parts = {key: _selinux_part(obj, key, path) for key in ("user", "role", "type", "level")}
        return cls(**parts)

    def to_json(self) -> Any:
        return {"user": self.user, "role": self.role, "type": self.type, "level": self.level}

    def __str__(self) -> str:
        return f"{self.user}:{self.role}:{self.type}:{self.level}"


def _selinux_part(obj: Any, key: str, path: str) -> str:
    text = expect_str(required(obj, key, path), join(path, key))
    if not text:
        raise ValidationError(join(path, key), "must not be empty")
    if key != "level" and ":" in text:
        raise ValidationError(join(path, key), f"{quote(text)} must not contain ':'")
    return text


@dataclass(frozen=True)
class AppArmorProfile(IsolatorValue):
    NAME = "os/linux/apparmor-profile"
    profile: str

    @classmethod
    def from_json(cls, value: object, path: str) -> Self:
        obj = expect_object(value, path)
        profile = expect_str(required(obj, "profile", path), join(path, "profile"))
        if not profile:
            raise ValidationError(join(path, "profile"), "must not be empty")
        return cls(profile)

    def to_json(self) -> Any:
        return {"profile": self.profile}


@dataclass(frozen=True)
class _BoundedInt(IsolatorValue):
    """A bare JSON integer within [LOW, HIGH] (reference-library isolators)."""

    LOW: ClassVar[int]
    HIGH: ClassVar[int]
    value: int

    @classmethod
    def from_json(cls, value: object, path: str) -> Self:
        number = expect_int(value, path)
        if not cls.LOW <= number <= cls.HIGH:
            raise ValidationError(path, f"{number} is out of range: must be {cls.LOW}..{cls.HIGH}")
        return cls(number)

    def to_json(self) -> Any:
        return self.value


@dataclass(frozen=True)
class CPUShares(_BoundedInt):
    NAME = "os/linux/cpu-shares"
    LOW, HIGH = 2, 262144


@dataclass(frozen=True)
class OOMScoreAdj(_BoundedInt):
    NAME = "os/linux/oom-score-adj"
    LOW, HIGH = -1000, 1000


# --- os/unix/* ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sysctl(IsolatorValue):
    NAME = "os/unix/sysctl"
    values: tuple[tuple[str, str], ...]

    @classmethod
    def from_json(cls, value: object, path: str) -> Self:
        return cls(tuple(str_map(value, path).items()))

    def to_json(self) -> Any:
        return dict(self.values)


# --- unknown names ------------------------------------------------------------------------


@dataclass(frozen=True)
class UnknownIsolatorValue(IsolatorValue):
    """The raw value of an isolator this executor does not know."""

    NAME = ""
    raw: Any

    @classmethod
    def from_json(cls, value: object, path: str) -> Self:
        return cls(value)

    def to_json(self) -> Any:
        return self.raw


KNOWN_ISOLATORS: dict[str, type[IsolatorValue]] = {
    t.NAME: t
    for t in (
        ResourceCPU, ResourceMemory, ResourceBlockBandwidth, ResourceBlockIOPS,
        ResourceNetworkBandwidth, CapabilitiesRetainSet, CapabilitiesRemoveSet,
        SeccompRemoveSet, SeccompRetainSet, NoNewPrivileges, SELinuxContext, AppArmorProfile,
        CPUShares, OOMScoreAdj, Sysctl,
    )
}  # fmt: skip

# Names of which an app (or a pod) may carry at most one, and pairs that exclude each other.
_SINGLETONS = (SELinuxContext.NAME, AppArmorProfile.NAME)
_EXCLUSIVE_GROUPS = (
    (CapabilitiesRetainSet.NAME, CapabilitiesRemoveSet.NAME),
    (SeccompRetainSet.NAME, SeccompRemoveSet.NAME),
)


@dataclass(frozen=True)
class Isolator:
    name: ACIdentifier
    value: IsolatorValue

    @property
    def known(self) -> bool:
        return not isinstance(self.value, UnknownIsolatorValue)

    @classmethod
    def from_json(cls, value: object, path: str) -> Isolator:
        obj = expect_object(value, path)
        name = ACIdentifier.from_json(required(obj, "name", path), join(path, "name"))
        kind = KNOWN_ISOLATORS.get(name)
        if kind is None:
            raw = field(obj, "value")
            return cls(name, UnknownIsolatorValue(None if raw is MISSING else raw))
        return cls(name, kind.from_json(required(obj, "value", path), join(path, "value")))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value.to_json()}

    @classmethod
    def of(cls, value: IsolatorValue) -> Isolator:
        return cls(ACIdentifier(value.NAME), value)


def parse_isolators(value: object, path: str) -> tuple[Isolator, ...]:
    isolators = parse_list(value, path, Isolator.from_json)
    check_isolator_set(isolators, path)
    return isolators


def check_isolator_set(isolators: Sequence[Isolator], path: str) -> None:
    """Cross-entry rules of ace.md: singletons appear once; exclusive pairs never together."""
    names = [i.name for i in isolators]
    for name in _SINGLETONS:
        _at_most_once(names, [name], path, f"only one {name} isolator is allowed")
    for group in _EXCLUSIVE_GROUPS:
        _at_most_once(
            names, list(group), path, f"{' and '.join(group)} cannot be combined, nor repeated"
        )


def _at_most_once(names: Sequence[str], group: Sequence[str], path: str, rule: str) -> None:
    hits = [i for i, name in enumerate(names) if name in group]
    if len(hits) > 1:
        raise ValidationError(join(path, hits[1]), rule)


def find_isolator(isolators: Iterable[Isolator], kind: type[T]) -> T | None:
    """The last isolator of ``kind`` (the one that wins when several are listed)."""
    found: T | None = None
    for isolator in isolators:
        if isinstance(isolator.value, kind):
            found = isolator.value
    return found
