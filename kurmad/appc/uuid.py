"""Pod UUIDs (RFC 4122), in canonical lowercase form."""

from __future__ import annotations

import re
import uuid as _uuid

from .errors import ValidationError, quote

_CANONICAL = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_BARE = re.compile(r"[0-9a-fA-F]{32}")


def parse_uuid(text: str, path: str = "") -> str:
    """Accept the dashed or bare 32-digit hex form; return ``xxxxxxxx-xxxx-...`` lowercase."""
    if not isinstance(text, str) or not (_CANONICAL.fullmatch(text) or _BARE.fullmatch(text)):
        raise ValidationError(
            path, f"{quote(text)} is not a UUID: must be 32 hex digits, dashed 8-4-4-4-12 or bare"
        )
    return str(_uuid.UUID(hex=text))


def new_uuid() -> str:
    return str(_uuid.uuid4())
