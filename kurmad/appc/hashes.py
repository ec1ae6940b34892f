"""Image ID (types.md §Image ID Type): ``sha512-`` followed by the hex SHA-512 digest."""

from __future__ import annotations

import re

from ._json import expect_str
from .errors import ValidationError, quote

_FULL_DIGEST = re.compile(r"[0-9a-f]{128}")


class ImageID(str):
    """``sha512-<value>``. Only sha512 is allowed and the value must not be empty.

    The reference library does not check that the value is 128 hex digits, and manifests in the
    wild carry shortened IDs, so parsing accepts any value; ``is_full`` tells whether it is the
    whole digest (as the image store requires for lookups by exact ID).
    """

    __slots__ = ()
    ALGORITHM = "sha512"

    def __new__(cls, value: str, path: str = "") -> ImageID:
        algorithm, sep, digest = value.partition("-") if isinstance(value, str) else ("", "", "")
        if not sep or algorithm != cls.ALGORITHM or not digest:
            raise ValidationError(
                path, f"{quote(value)} is not an image ID: must be sha512-<hex digest>"
            )
        return super().__new__(cls, value)

    @classmethod
    def from_json(cls, value: object, path: str) -> ImageID:
        return cls(expect_str(value, path), path)

    @classmethod
    def from_digest(cls, hexdigest: str) -> ImageID:
        return cls(f"{cls.ALGORITHM}-{hexdigest}")

    @property
    def digest(self) -> str:
        return self.partition("-")[2]

    @property
    def is_full(self) -> bool:
        return _FULL_DIGEST.fullmatch(self.digest) is not None
