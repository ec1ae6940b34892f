"""The state directory's schema version: which layout of STATE this kurmad reads, and the
migrations that bring an older layout up to it.

    STATE/schema.json    {"version": N, "kurmad": "0.1.0"}: the layout's version and the kurmad
                         that stamped it; written atomically, and a migration's version only
                         once that migration is done and on disk

Version 1 is the layout every kurmad wrote before versions existed, and carries no stamp:
``images/`` (images/store.py), ``pods/`` (pods/manager.py), ``networks/`` (net/pods.py,
net/bridge.py), ``network/`` (net/host.py: the boot's DHCP leases), ``tls/`` (api/auth.py) and
the socket ``kurmad.sock``. A directory without a stamp is taken for version 1 only when it
holds nothing but those (and a filesystem's ``lost+found``), each directory a directory; one
holding anything else is not kurmad's and is refused, left as it was. An empty one is new: it
is stamped with the current version.

A daemon calls prepare_state() before any room opens its part of STATE. An older layout is
migrated in place, one version at a time: migration N reads version N and leaves N + 1, and
the stamp N + 1 is written only after it has finished and the filesystem is synced. A migration
killed half-way therefore runs again, whole, at the next start, so each must be idempotent:
made of steps that each leave the directory whole (a temporary file, then a rename) and that a
second run recognises as done. A stamp newer than this kurmad knows, or older than its
migrations reach, is refused with one line naming both versions; the state is never misread.

A change to the layout registers its migration here, ``@MIGRATIONS.add(N, "what changes")``,
and extends tests/test_state_schema.py (README.md, "State versions").
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kurmad import __version__
from kurmad.linux.files import read_json, write_json_atomic
from kurmad.linux.syscalls import syncfs

SCHEMA_FILE = "schema.json"
# What version 1 writes at the top of STATE: the directories, and the API socket.
V1_DIRECTORIES = frozenset({"images", "pods", "networks", "network", "tls"})
V1_FILES = frozenset({"kurmad.sock"})
# Not kurmad's, but found at the top of a filesystem made for the state (the VM's data disk).
FILESYSTEM_ENTRIES = frozenset({"lost+found"})
# Held (flock) by every kurmad since version 1 while it runs: an older daemon still using STATE.
STORE_LOCK = Path("images") / "store.lock"

log = logging.getLogger("kurmad")
# A migration's work, given STATE: idempotent, each step atomic (see above).
Step = Callable[[Path], None]


class StateError(ValueError):
    """This kurmad cannot use the state directory. ``str()`` is one line naming it and why."""


@dataclass(frozen=True)
class SchemaStamp:
    """The content of STATE/schema.json."""

    version: int
    kurmad: str = ""  # the kurmad that wrote it; "" when not known

    @classmethod
    def from_json(cls, value: object, path: str) -> SchemaStamp:
        if not isinstance(value, dict):
            raise StateError(f"{path}: must be a JSON object")
        version = value.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise StateError(f"{path}: version: must be a whole number from 1 up, not {version!r}")
        kurmad = value.get("kurmad", "")
        if not isinstance(kurmad, str):
            raise StateError(f"{path}: kurmad: must be a string, not {kurmad!r}")
        return cls(version, kurmad)

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "kurmad": self.kurmad}


@dataclass(frozen=True)
class Migration:
    source: int  # the version it reads; it leaves source + 1
    summary: str  # what changes, for the log
    run: Step


class Migrations:
    """The migrations this kurmad knows, by the version each reads. The current version is one
    past the last: with none, 1."""

    def __init__(self) -> None:
        self._by_source: dict[int, Migration] = {}

    def add(self, source: int, summary: str) -> Callable[[Step], Step]:
        """Register the decorated function as the migration from version ``source``."""

        def register(run: Step) -> Step:
            if source < 1 or source in self._by_source:
                raise ValueError(f"a migration from state version {source} cannot be added")
            self._by_source[source] = Migration(source, summary, run)
            return run

        return register

    @property
    def current(self) -> int:
        return max(self._by_source, default=0) + 1

    def route(self, found: int, state_dir: Path) -> list[Migration]:
        """The migrations from version ``found`` to the current one, in order."""
        missing = [v for v in range(found, self.current) if v not in self._by_source]
        if missing:
            reach = missing[-1] + 1
            raise StateError(
                f"{state_dir}: state version {found} is too old for this kurmad ({__version__}, "
                f"state version {self.current}), which migrates from version {reach} on; let a "
                f"kurmad that reads version {reach} upgrade it first"
            )
        return [self._by_source[v] for v in range(found, self.current)]


MIGRATIONS = Migrations()  # none yet: today's layout is version 1


def prepare_state(state_dir: Path, migrations: Migrations = MIGRATIONS) -> None:
    """Make the existing directory ``state_dir`` hold the current layout: stamp a new one,
    migrate an older one in place, or raise StateError (leaving it as it was) for one that is
    newer, out of the migrations' reach, in use by another kurmad, or not kurmad's."""
    current = migrations.current
    if _read_stamp(state_dir, current) == current:
        return  # every start but the first after an upgrade: nothing to do, nothing locked
    with _exclusive(state_dir):
        stamped = _read_stamp(state_dir, current)  # again: another kurmad may have done it
        found = stamped if stamped is not None else _unstamped_version(state_dir)
        if found is None:
            _stamp(state_dir, current)
            log.info("state: %s is new; stamped state version %d", state_dir, current)
            return
        steps = migrations.route(found, state_dir)
        if stamped is None:
            _stamp(state_dir, found)
        for step in steps:
            log.info("state: migrating %s from version %d to %d: %s",
                     state_dir, step.source, step.source + 1, step.summary)  # fmt: skip
            step.run(state_dir)
            syncfs(state_dir)  # what it wrote is on disk before the stamp says it is done
            _stamp(state_dir, step.source + 1)


def _read_stamp(state_dir: Path, current: int) -> int | None:
    """The stamped version (None: no stamp); StateError for one that is unreadable or newer."""
    path = state_dir / SCHEMA_FILE
    try:
        value = read_json(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise StateError(f"{path}: unreadable ({err})") from None
    stamp = SchemaStamp.from_json(value, str(path))
    if stamp.version > current:
        by = f"kurmad {stamp.kurmad}" if stamp.kurmad else "an unknown kurmad"
        raise StateError(
            f"{state_dir}: state version {stamp.version} (written by {by}) is newer than this "
            f"kurmad ({__version__}) reads, version {current}; run a kurmad that knows it"
        )
    return stamp.version


def _unstamped_version(state_dir: Path) -> int | None:
    """1 for version 1's layout, None for an empty directory; StateError for anything else."""
    cut_short = f".{SCHEMA_FILE}."  # the temporary file of a stamp that a crash interrupted
    names = {
        p.name for p in state_dir.iterdir()
        if p.name not in FILESYSTEM_ENTRIES and not p.name.startswith(cut_short)
    }  # fmt: skip
    foreign = sorted(
        n for n in names
        if not (n in V1_FILES or (n in V1_DIRECTORIES and (state_dir / n).is_dir()))
    )  # fmt: skip
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise StateError(
            f"{state_dir}: not a kurmad state directory: it has no {SCHEMA_FILE} and holds "
            f"{', '.join(foreign[:3])}{more}, which kurmad never writes; give an empty "
            "directory or one kurmad made"
        )
    return 1 if names else None


def _stamp(state_dir: Path, version: int) -> None:
    write_json_atomic(state_dir / SCHEMA_FILE, SchemaStamp(version, __version__).to_json())


@contextmanager
def _exclusive(state_dir: Path) -> Iterator[None]:
    """Hold STATE against every other kurmad while it changes: the directory's own flock (any
    kurmad from this one on) and the image store's lock (an older kurmad still running)."""
    paths = [state_dir] + ([state_dir / STORE_LOCK] if (state_dir / STORE_LOCK).exists() else [])
    held: list[int] = []
    try:
        for path in paths:
            held.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
            try:
                fcntl.flock(held[-1], fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StateError(f"{state_dir}: in use by another kurmad; stop it first") from None
        yield
    finally:
        for fd in held:
            os.close(fd)
