"""Reading untrusted JSON values with paths in every error.

The appc reference library decodes with Go's encoding/json, so documents in the wild rely on
its two leniencies: object keys match case-insensitively (the spec's own example spells
``supplementaryGids``), and ``null`` means "absent". Both are reproduced here and nowhere else.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from .errors import ValidationError, join

T = TypeVar("T")
JSONObject = Mapping[str, Any]


def loads(text: str | bytes, path: str = "") -> Any:
    """Parse a JSON document, rejecting NaN/Infinity and trailing garbage."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as err:
        raise ValidationError(path, f"not valid JSON: {_json_reason(err)}") from None
    except RecursionError:
        raise ValidationError(path, "not accepted: the JSON is nested too deeply") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_reason(err: Exception) -> str:
    if isinstance(err, json.JSONDecodeError):
        return f"{err.msg} at line {err.lineno} column {err.colno}"
    return str(err)


def type_name(value: object) -> str:
    """The JSON name of a Python value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def expect_object(value: object, path: str) -> JSONObject:
    if not isinstance(value, dict):
        raise ValidationError(path, f"must be an object, not {type_name(value)}")
    return value


def expect_list(value: object, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValidationError(path, f"must be a list, not {type_name(value)}")
    return value


def expect_str(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise ValidationError(path, f"must be a string, not {type_name(value)}")
    return value


def expect_bool(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise ValidationError(path, f"must be true or false, not {type_name(value)}")
    return value


def expect_int(value: object, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(path, f"must be an integer, not {type_name(value)}")
    return value


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def field(obj: JSONObject, key: str) -> Any:
    """The value of ``key`` in ``obj``, matched as Go does; ``MISSING`` if absent or null."""
    if key in obj:
        value = obj[key]
    else:
        folded = key.casefold()
        value = next((v for k, v in obj.items() if k.casefold() == folded), MISSING)
    return MISSING if value is None else value


def required(obj: JSONObject, key: str, path: str) -> Any:
    value = field(obj, key)
    if value is MISSING:
        raise ValidationError(join(path, key), "is required")
    return value


def optional(obj: JSONObject, key: str, path: str, parse: Callable[[Any, str], T], default: T) -> T:
    """Parse ``obj[key]`` with ``parse`` when present, else return ``default``."""
    value = field(obj, key)
    return default if value is MISSING else parse(value, join(path, key))


def parse_list(value: object, path: str, parse_item: Callable[[Any, str], T]) -> tuple[T, ...]:
    items = expect_list(value, path)
    return tuple(parse_item(item, join(path, i)) for i, item in enumerate(items))


def str_list(value: object, path: str) -> tuple[str, ...]:
    return parse_list(value, path, expect_str)


def str_map(value: object, path: str) -> dict[str, str]:
    """An object whose values are strings and whose keys are free-form."""
    obj = expect_object(value, path)
    return {k: expect_str(v, join(path, k)) for k, v in obj.items()}


def unique_list(
    parse_item: Callable[[Any, str], T],
    key: Callable[[T], str] = lambda item: item.name,  # type: ignore[attr-defined]
) -> Callable[[object, str], tuple[T, ...]]:
    """A parser of a list whose items must have distinct names."""

    def parse(value: object, path: str) -> tuple[T, ...]:
        items = parse_list(value, path, parse_item)
        reject_duplicates([key(item) for item in items], path)
        return items

    return parse


def add_non_empty(out: dict[str, Any], parts: dict[str, Any]) -> dict[str, Any]:
    """Add the optional ``parts`` that have a value; the spec's documents omit empty fields."""
    out.update({k: v for k, v in parts.items() if v})
    return out


def reject_duplicates(names: list[str], path: str, what: str = "name") -> None:
    """Raise on the first repeated name; ``path`` is the list the names come from."""
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise ValidationError(join(join(path, i), what), f'duplicate {what} "{name}"')
        seen.add(name)


def dumps(obj: Any) -> str:
    """The text form the project writes manifests in: indented, UTF-8, newline-terminated."""
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
