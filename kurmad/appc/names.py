"""AC Name, AC Identifier and AC Kind (spec/types.md), with their sanitisers."""

from __future__ import annotations

import re
from enum import StrEnum

from ._json import expect_str
from .errors import ValidationError, quote

# types.md prints the stricter regex ^[a-z0-9]+([-._~/][a-z0-9]+)*$, but the reference
# library only checks the character set and the edges, and its own tests (and so the vectors)
# accept names such as example.com/~bob/database. The library's rule is the one followed.
_AC_IDENTIFIER = re.compile(r"[a-z0-9](?:[a-z0-9._~/-]*[a-z0-9])?")
_AC_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")

_IDENTIFIER_RULE = (
    "only lowercase letters, digits and '-._~/' are allowed, "
    "and it must start and end with a letter or digit"
)
_NAME_RULE = (
    "only lowercase letters, digits and '-' are allowed, "
    "and it must start and end with a letter or digit"
)


class ACIdentifier(str):
    """``^[a-z0-9]+([-._~/][a-z0-9]+)*$``: image names, label and annotation names."""

    __slots__ = ()

    def __new__(cls, value: str, path: str = "") -> ACIdentifier:
        if not isinstance(value, str) or not _AC_IDENTIFIER.fullmatch(value):
            raise ValidationError(
                path, f"{quote(value)} is not an AC Identifier: {_IDENTIFIER_RULE}"
            )
        return super().__new__(cls, value)

    @classmethod
    def from_json(cls, value: object, path: str) -> ACIdentifier:
        return cls(expect_str(value, path), path)


class ACName(str):
    """``^[a-z0-9]+(-[a-z0-9]+)*$``: app, volume, mount point and port names."""

    __slots__ = ()

    def __new__(cls, value: str, path: str = "") -> ACName:
        if not isinstance(value, str) or not _AC_NAME.fullmatch(value):
            raise ValidationError(path, f"{quote(value)} is not an AC Name: {_NAME_RULE}")
        return super().__new__(cls, value)

    @classmethod
    def from_json(cls, value: object, path: str) -> ACName:
        return cls(expect_str(value, path), path)


class ACKind(StrEnum):
    IMAGE_MANIFEST = "ImageManifest"
    POD_MANIFEST = "PodManifest"

    @classmethod
    def from_json(cls, value: object, path: str) -> ACKind:
        text = expect_str(value, path)
        try:
            return cls(text)
        except ValueError:
            raise ValidationError(
                path, f'{quote(text)} is not an AC Kind: must be "ImageManifest" or "PodManifest"'
            ) from None

    @classmethod
    def expect(cls, value: object, path: str, kind: ACKind) -> ACKind:
        """Parse an AC Kind that must be exactly ``kind`` (case-sensitive)."""
        text = expect_str(value, path)
        if text != kind.value:
            raise ValidationError(path, f'{quote(text)} must be "{kind.value}"')
        return kind


def sanitize_ac_identifier(value: str) -> ACIdentifier:
    """Turn free text into an AC Identifier: lowercase, drop invalid characters, trim
    separators off the ends. Raises if nothing valid is left."""
    text = re.sub(r"[^a-z0-9._~/-]", "", value.lower()).strip("-._~/")
    if not text:
        raise ValidationError("", f"{quote(value)} has no characters valid in an AC Identifier")
    return ACIdentifier(text)


def sanitize_ac_name(value: str) -> ACName:
    """Turn free text into an AC Name: lowercase, every invalid character becomes '-', and
    the ends are trimmed. Raises if nothing valid is left."""
    text = re.sub(r"[^a-z0-9-]", "-", value.lower()).strip("-")
    if not text:
        raise ValidationError("", f"{quote(value)} has no characters valid in an AC Name")
    return ACName(text)
