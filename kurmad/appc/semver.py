"""AC Version: Semantic Versioning 2.0.0 (types.md), with SemVer precedence."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering

from ._json import expect_str
from .errors import ValidationError, quote

_NUM = r"0|[1-9]\d*"
_IDENT = r"(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)"
_SEMVER = re.compile(
    rf"(?P<major>{_NUM})\.(?P<minor>{_NUM})\.(?P<patch>{_NUM})"
    rf"(?:-(?P<pre>{_IDENT}(?:\.{_IDENT})*))?"
    r"(?:\+(?P<build>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
)


@total_ordering
@dataclass(frozen=True, eq=False)
class SemVer:
    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()
    build: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str, path: str = "") -> SemVer:
        match = _SEMVER.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise ValidationError(
                path, f"{quote(text)} is not a SemVer 2.0.0 version (MAJOR.MINOR.PATCH)"
            )
        version = cls(
            int(match["major"]),
            int(match["minor"]),
            int(match["patch"]),
            tuple(match["pre"].split(".")) if match["pre"] else (),
            tuple(match["build"].split(".")) if match["build"] else (),
        )
        if version.major == version.minor == version.patch == 0:
            raise ValidationError(path, f"{quote(text)} is not a valid version: 0.0.0 is reserved")
        return version

    @classmethod
    def from_json(cls, value: object, path: str) -> SemVer:
        return cls.parse(expect_str(value, path), path)

    @classmethod
    def try_parse(cls, text: str) -> SemVer | None:
        try:
            return cls.parse(text)
        except ValidationError:
            return None

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(self.prerelease)
        if self.build:
            text += "+" + ".".join(self.build)
        return text

    def to_json(self) -> str:
        return str(self)

    def _precedence(self) -> tuple[object, ...]:
        # A release outranks its prereleases; numeric identifiers sort below alphanumeric ones.
        pre = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.prerelease)
        return (self.major, self.minor, self.patch, not self.prerelease, pre)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SemVer):
            return NotImplemented
        return (str(self)) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __lt__(self, other: SemVer) -> bool:
        return self._precedence() < other._precedence()
