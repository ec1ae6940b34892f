"""Timestamps and URLs as the spec constrains them in annotations (types.md)."""

from __future__ import annotations

import re
from datetime import datetime
from urllib.parse import urlsplit

from ._json import expect_str
from .errors import ValidationError, quote

_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})")


def parse_date(text: str, path: str = "") -> datetime:
    """An RFC 3339 timestamp with a ``T`` between date and time and an explicit offset."""
    if not isinstance(text, str) or not _RFC3339.fullmatch(text):
        raise ValidationError(
            path, f"{quote(text)} is not an RFC 3339 timestamp (like 2014-10-27T19:32:27Z)"
        )
    normalised = text.upper().replace("Z", "+00:00")
    date, _, rest = normalised.partition("T")
    clock, frac, offset = _split_fraction(rest)
    try:
        return datetime.fromisoformat(f"{date}T{clock}{frac[:7]}{offset}")
    except ValueError as err:
        raise ValidationError(path, f"{quote(text)} is not a valid date: {err}") from None


def _split_fraction(rest: str) -> tuple[str, str, str]:
    """Split ``hh:mm:ss[.frac]offset``; fromisoformat takes at most 6 fraction digits."""
    clock, offset = rest[:8], rest[8:]
    frac = ""
    if offset.startswith("."):
        digits = re.match(r"\.\d+", offset)
        assert digits is not None
        frac, offset = digits.group(0)[:7], offset[digits.end() :]
    return clock, frac, offset


def date_from_json(value: object, path: str) -> str:
    text = expect_str(value, path)
    parse_date(text, path)
    return text


def parse_http_url(text: str, path: str = "") -> str:
    """An absolute http or https URL with a host."""
    if not isinstance(text, str):
        raise ValidationError(path, f"{quote(text)} is not a URL")
    try:
        parts = urlsplit(text)
    except ValueError:
        raise ValidationError(path, f"{quote(text)} is not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.netloc or " " in text:
        raise ValidationError(path, f"{quote(text)} is not an http or https URL")
    return text


def url_from_json(value: object, path: str) -> str:
    return parse_http_url(expect_str(value, path), path)
