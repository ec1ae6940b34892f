"""The comma-separated string forms the appc tools accept on command lines:

- volumes ``NAME,kind=host,source=/x,readOnly=true`` and mount points ``NAME,path=/p``;
- app strings ``example.com/app:1.0,os=linux`` (discovery's ``name[:version][,label=value]``);
- query strings ``a=b,c=d`` turned into ``a=b&c=d`` for discovery URLs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote_plus

from .errors import ValidationError, quote
from .labels import Labels
from .names import ACIdentifier


def parse_options(text: str, allowed: Iterable[str]) -> tuple[str, dict[str, str]]:
    """Split ``NAME,key=value,...`` into the name and the options, refusing unknown or repeated
    keys."""
    allowed = tuple(allowed)
    name, *pairs = text.split(",")
    if not name or "=" in name:
        raise ValidationError("", f"{quote(text)} must start with a name")
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValidationError("", f"{quote(pair)} in {quote(text)} is not key=value")
        if key not in allowed:
            raise ValidationError(
                "", f"unknown option {quote(key)} in {quote(text)}; allowed: {', '.join(allowed)}"
            )
        if key in options:
            raise ValidationError("", f"option {quote(key)} is given twice in {quote(text)}")
        options[key] = value
    return name, options


def parse_bool_option(options: Mapping[str, str], key: str, text: str) -> bool | None:
    if key not in options:
        return None
    value = options[key]
    if value not in ("true", "false"):
        raise ValidationError(key, f"{quote(value)} in {quote(text)} must be true or false")
    return value == "true"


def parse_int_option(options: Mapping[str, str], key: str, text: str) -> int | None:
    if key not in options:
        return None
    value = options[key]
    if not value.isdigit():
        raise ValidationError(
            key, f"{quote(value)} in {quote(text)} must be a non-negative integer"
        )
    return int(value)


def make_query_string(text: str) -> str:
    """``a=b,c=d`` -> ``a=b&c=d`` with each value form-encoded."""
    parts = []
    for pair in text.split(","):
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValidationError("", f"{quote(pair)} in {quote(text)} is a label without a value")
        parts.append(f"{key}={quote_plus(value, safe='')}")
    return "&".join(parts)


@dataclass(frozen=True)
class AppString:
    """An image named for discovery or lookup: a name and labels (version, os, arch, ...)."""

    name: ACIdentifier
    labels: Labels = field(default_factory=Labels)

    @classmethod
    def parse(cls, text: str) -> AppString:
        """``name[:version][,label=value...]``: at most one colon, right after the name."""
        name_part, _, rest = text.partition(",")
        if ":" in rest:
            raise ValidationError(
                "", f"{quote(text)}: a colon may only follow the name (name:version)"
            )
        if text.count(":") > 1:
            raise ValidationError("", f"{quote(text)}: a colon may appear at most once")
        name, colon, version = name_part.partition(":")
        pairs = [("version", version)] if colon else []
        for pair in rest.split(",") if rest else []:
            key, sep, value = pair.partition("=")
            if not sep:
                raise ValidationError(
                    "", f"{quote(pair)} in {quote(text)} is a label without a value"
                )
            pairs.append((key, value))
        return cls.of(name, pairs, text)

    @classmethod
    def of(cls, name: str, pairs: Iterable[tuple[str, str]], text: str = "") -> AppString:
        labels: dict[str, str] = {}
        for key, value in pairs:
            if key in labels or key == "name":
                raise ValidationError(
                    "", f"label {quote(key)} is given twice in {quote(text or name)}"
                )
            labels[ACIdentifier(key, f"label {quote(key)}")] = value
        return cls(ACIdentifier(name, "name"), Labels(labels))

    def __str__(self) -> str:
        return ",".join([self.name, *(f"{k}={v}" for k, v in self.labels.items())])
