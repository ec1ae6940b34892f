"""Annotations (aci.md, pods.md): unique AC Identifier names; a few well-known names carry
typed values."""

from __future__ import annotations

from .namedvalues import NamedValues
from .names import ACIdentifier
from .scalars import parse_date, parse_http_url

# Well-known annotations whose values the spec constrains.
_VALUE_RULES = {
    "created": parse_date,
    "homepage": parse_http_url,
    "documentation": parse_http_url,
}


class Annotations(NamedValues):
    KIND = "annotation"

    @classmethod
    def check_name(cls, name: object, path: str) -> str:
        return ACIdentifier.from_json(name, path)

    @classmethod
    def check_value(cls, name: str, value: str, path: str) -> None:
        rule = _VALUE_RULES.get(name)
        if rule is not None:
            rule(value, path)
