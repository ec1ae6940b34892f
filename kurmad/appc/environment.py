"""An app's environment (aci.md): unique variable names, any string values."""

from __future__ import annotations

import re

from ._json import expect_str
from .errors import ValidationError, quote
from .namedvalues import NamedValues

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
# ace.md §Execution Environment: the PATH of an app that sets none (the executor's helpers,
# CNI plugins among them, get the same)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def check_env_name(name: str, path: str) -> str:
    if not name:
        raise ValidationError(path, "must not be empty")
    if name[0].isdigit() or not (name[0].isalpha() or name[0] == "_") or not name[0].isascii():
        raise ValidationError(path, f"{quote(name)} must start with a letter or _")
    if not _ENV_NAME.fullmatch(name):
        raise ValidationError(
            path, f"{quote(name)} may only contain letters, digits, '_', '.' and '-'"
        )
    return name


class Environment(NamedValues):
    KIND = "variable"

    @classmethod
    def check_name(cls, name: object, path: str) -> str:
        return check_env_name(expect_str(name, path), path)
