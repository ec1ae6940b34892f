"""What the daemon and its launcher (runtime/launcher.py) say to each other: one closed set of
messages, each a frozen type, as JSON with a ``type`` on a SOCK_SEQPACKET socket (descriptors,
an enter's stdio, alongside).

Requests (daemon → launcher) carry an ``id``; the launcher answers each with Started or
Refused of the same id, and announces Ready once, and every child it reaps as Exited. An entered
command with a terminal sends its master back over its own socket as Terminal."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .spec import AppSpec


class MessageError(ValueError):
    """Bytes that are not one of the messages."""


@dataclass(frozen=True)
class StartPod:
    id: int
    pod_dir: str
    host_network: bool = False
    netns: str | None = None  # a namespace file the daemon has wired already


@dataclass(frozen=True)
class Enter:
    id: int
    target_pid: int  # the app's main process, in the launcher's PID namespace
    app: AppSpec
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    tty: bool = False  # a new terminal (its master comes back as Terminal) instead of stdio
    cgroup_procs: list[str] = field(default_factory=list)
    window: tuple[int, int] | None = None  # rows, columns


@dataclass(frozen=True)
class Ready:
    pid: int


@dataclass(frozen=True)
class Exited:
    pid: int
    status: int  # a wait status


@dataclass(frozen=True)
class Started:
    id: int
    pid: int


@dataclass(frozen=True)
class Refused:
    id: int
    error: str


@dataclass(frozen=True)
class Terminal:
    """An entered command's terminal master, which travels alongside."""


Request = StartPod | Enter
Reply = Started | Refused
Message = StartPod | Enter | Ready | Exited | Started | Refused | Terminal
_TYPES: dict[str, type] = {
    t.__name__: t for t in (StartPod, Enter, Ready, Exited, Started, Refused, Terminal)
}


def encode(message: Message) -> bytes:
    return json.dumps({"type": type(message).__name__, **asdict(message)}).encode()


def decode(data: bytes) -> Message:
    try:
        fields: dict[str, Any] = json.loads(data)
        kind = _TYPES[fields.pop("type")]
    except (ValueError, KeyError, TypeError) as err:
        raise MessageError(f"not a launcher message: {err!r}") from None
    try:
        if kind is Enter:
            fields["app"] = AppSpec.from_json(fields["app"])
            window = fields.get("window")
            fields["window"] = None if window is None else (int(window[0]), int(window[1]))
        return kind(**fields)
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise MessageError(f"a malformed {kind.__name__}: {err!r}") from None
