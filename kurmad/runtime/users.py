"""User and group resolution inside an app's root filesystem (aci.md §user, group): the image's
own /etc/passwd and /etc/group first, then a number, then the owner of a file in the rootfs."""

from __future__ import annotations

import os
from dataclasses import dataclass


class UserError(LookupError):
    pass


@dataclass(frozen=True)
class Credentials:
    uid: int
    gid: int
    home: str | None = None


def _lookup(database: str, name: str, field_index: int) -> tuple[int, list[str]] | None:
    """The numeric id and the fields of ``name`` in /etc/passwd or /etc/group of the current
    root, or None."""
    fields = _fields(database, name, 0)
    if fields is None or len(fields) <= field_index or not fields[field_index].isdigit():
        return None
    return int(fields[field_index]), fields


def _fields(database: str, wanted: str, column: int) -> list[str] | None:
    """The fields of the first line of ``database`` whose ``column`` is ``wanted``."""
    try:
        with open(database, encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if len(fields) > column and fields[column] == wanted:
                    return fields
    except FileNotFoundError:
        return None
    return None


def resolve(user: str, group: str, root: str = "/", group_from_user: bool = False) -> Credentials:
    """Resolve an app's user and group against the root filesystem at ``root``; with
    ``group_from_user``, the group is the user's own from /etc/passwd when it has an entry."""
    passwd = os.path.join(root, "etc/passwd")
    entry = _fields(passwd, user, 0)  # read once for the user and, if asked, its own group
    uid, home = _resolve_user(user, root, entry)
    own = None
    if group_from_user:  # a uid without a named entry: the line that has that uid
        own = _own_group(entry or (_fields(passwd, user, 2) if user.isdigit() else None))
    return Credentials(uid, own if own is not None else _resolve_group(group, root), home)


def _own_group(fields: list[str] | None) -> int | None:
    return int(fields[3]) if fields and len(fields) > 3 and fields[3].isdigit() else None


def _resolve_user(user: str, root: str, entry: list[str] | None) -> tuple[int, str | None]:
    if entry is not None and len(entry) > 2 and entry[2].isdigit():
        return int(entry[2]), entry[5] if len(entry) > 5 else None
    if user.isdigit():
        return int(user), None
    if user.startswith("/"):
        return _owner(root, user, "user").st_uid, None
    raise UserError(
        f"user {user!r} is not in the image's /etc/passwd (give a number or a name the image knows)"
    )


def _resolve_group(group: str, root: str) -> int:
    found = _lookup(os.path.join(root, "etc/group"), group, 2)
    if found is not None:
        return found[0]
    if group.isdigit():
        return int(group)
    if group.startswith("/"):
        return _owner(root, group, "group").st_gid
    raise UserError(
        f"group {group!r} is not in the image's /etc/group (give a number or a name the image knows)"
    )


def _owner(root: str, path: str, what: str) -> os.stat_result:
    try:
        return os.stat(os.path.join(root, path.lstrip("/")))
    except OSError as err:
        raise UserError(
            f"{what} {path!r}: the file does not exist in the image ({err.strerror})"
        ) from None
