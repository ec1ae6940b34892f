"""The spec's recurring ``[{"name": ..., "value": ...}]`` list, as an ordered read-only map.

Labels, annotations and environments all share this shape: names are unique and each kind
has its own rule for names (and sometimes values).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Self

from ._json import (
    MISSING,
    expect_object,
    expect_str,
    field,
    parse_list,
    reject_duplicates,
    required,
)
from .errors import join


class NamedValues(Mapping[str, str]):
    __slots__ = ("_items",)
    KIND: ClassVar[str] = "entry"

    def __init__(self, items: Mapping[str, str] | None = None) -> None:
        self._items: dict[str, str] = dict(items or {})

    def __getitem__(self, key: str) -> str:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self._items == dict(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self._items.items()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._items!r})"

    @classmethod
    def check_name(cls, name: object, path: str) -> str:
        """Validate one name; subclasses apply their rule."""
        return expect_str(name, path)

    @classmethod
    def check_value(cls, name: str, value: str, path: str) -> None:
        """Validate one value given its name; most kinds accept any string."""

    @classmethod
    def check_whole(cls, items: Self, order: list[str], path: str) -> None:
        """Rules across entries (os/arch); ``order`` gives each name's index for error paths."""

    @classmethod
    def from_json(cls, value: object, path: str) -> Self:
        pairs = parse_list(value, path, cls._parse_entry)
        names = [name for name, _ in pairs]
        reject_duplicates(names, path)
        items = cls(dict(pairs))
        cls.check_whole(items, names, path)
        return items

    @classmethod
    def _parse_entry(cls, entry: object, path: str) -> tuple[str, str]:
        obj = expect_object(entry, path)
        name = cls.check_name(required(obj, "name", path), join(path, "name"))
        raw: Any = field(obj, "value")
        value = "" if raw is MISSING else expect_str(raw, join(path, "value"))
        cls.check_value(name, value, join(path, "value"))
        return name, value

    def to_json(self) -> list[dict[str, str]]:
        return [{"name": k, "value": v} for k, v in self._items.items()]

    def merged(self, overrides: Mapping[str, str]) -> Self:
        """These entries with ``overrides`` applied: replaced in place, new ones appended."""
        return type(self)({**self._items, **overrides})
