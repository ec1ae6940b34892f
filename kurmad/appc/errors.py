"""The one error type of the appc model: a field path and the rule it broke."""

from __future__ import annotations


class ValidationError(ValueError):
    """A value breaks an appc rule.

    ``path`` names the field (``app.environment[2].name``); ``rule`` says what is wrong with it.
    Parsers raise it with the path of the value they were given, so a nested error reads as
    ``app.environment[2].name: "1FOO" must start with a letter or _``.
    """

    def __init__(self, path: str, rule: str) -> None:
        super().__init__(path, rule)
        self.path = path
        self.rule = rule

    def __str__(self) -> str:
        return f"{self.path}: {self.rule}" if self.path else self.rule

    def within(self, prefix: str) -> ValidationError:
        """The same error seen from a containing value at ``prefix``."""
        if not prefix:
            return self
        path = (
            f"{prefix}.{self.path}"
            if self.path and not self.path.startswith("[")
            else prefix + self.path
        )
        return ValidationError(path, self.rule)


def join(path: str, key: str | int) -> str:
    """Extend a field path by an object key or a list index."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def quote(value: object) -> str:
    """Quote a user value for an error message the way JSON would."""
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    return repr(value)
