"""What a pod init reports of its pod: ``status.json`` in the pod's directory, written by the pod
init (atomically, fsynced) at every change and read by the pod manager, which learns from it
when the apps run and how they ended (after a daemon restart too)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from kurmad.linux.files import write_atomic_alone


class InitState(StrEnum):
    """The pod init's view of its pod. Its final states are the pod's (pods/model.PodState)."""

    STARTING = "STARTING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    EXITED = "EXITED"
    STOPPED = "STOPPED"
    FAILED = "FAILED"


class AppState(StrEnum):
    WAITING = "waiting"
    RUNNING = "running"
    EXITED = "exited"
    FAILED = "failed"


class StatusError(ValueError):
    """A status file that cannot be read: ``str()`` names the field."""


@dataclass(frozen=True)
class AppReport:
    """One app as the pod init last saw it."""

    state: AppState = AppState.WAITING
    pid: int | None = None  # in the pod's PID namespace
    exit_code: int | None = None
    signal: str | None = None
    reason: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value, "pid": self.pid, "exit_code": self.exit_code,
            "signal": self.signal, "reason": self.reason, "started_at": self.started_at,
            "finished_at": self.finished_at, "warnings": list(self.warnings),
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: Any, path: str) -> AppReport:
        if not isinstance(data, dict):
            raise StatusError(f"{path}: not an object")
        try:
            return cls(
                state=AppState(data.get("state", AppState.WAITING)),
                pid=_optional(data, "pid", int, path),
                exit_code=_optional(data, "exit_code", int, path),
                signal=_optional(data, "signal", str, path),
                reason=_optional(data, "reason", str, path),
                started_at=_optional(data, "started_at", float, path),
                finished_at=_optional(data, "finished_at", float, path),
                warnings=tuple(str(w) for w in data.get("warnings", [])),
            )
        except ValueError as err:
            raise StatusError(f"{path}.state: {err}") from None


@dataclass(frozen=True)
class InitStatus:
    state: InitState
    reason: str | None = None
    final: bool = False  # written as the pod init ends: the apps' ends are all in it
    apps: dict[str, AppReport] = field(default_factory=dict)
    updated_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value, "reason": self.reason, "final": self.final,
            "apps": {name: app.to_json() for name, app in self.apps.items()},
            "updated_at": self.updated_at,
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: Any) -> InitStatus:
        if not isinstance(data, dict):
            raise StatusError("status: not an object")
        try:
            state = InitState(str(data.get("state")))
        except ValueError as err:
            raise StatusError(f"state: {err}") from None
        apps = data.get("apps", {})
        if not isinstance(apps, dict):
            raise StatusError("apps: not an object")
        return cls(
            state=state, reason=_optional(data, "reason", str, "reason"),
            final=bool(data.get("final", False)),
            apps={name: AppReport.from_json(app, f"apps.{name}") for name, app in apps.items()},
            updated_at=float(data.get("updated_at") or 0.0),
        )  # fmt: skip

    def write(self, path: Path) -> None:
        """Replace the status file atomically, synced (DESIGN.md, principle 4): the daemon
        reads it after a crash, its own or the host's. The pod init is its only writer."""
        temporary = path.with_name(f".{path.name}.tmp")
        write_atomic_alone(path, json.dumps(self.to_json()).encode(), temporary)


def read_status(path: Path) -> InitStatus | None:
    """The pod init's last report, or None before its first (or if it cannot be read: a pod
    init that died mid-write leaves the previous file, never half of one)."""
    try:
        return InitStatus.from_json(json.loads(path.read_bytes()))
    except (OSError, ValueError):
        return None


def _optional(data: dict[str, Any], key: str, kind: type, path: str) -> Any:
    value = data.get(key)
    if value is None:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise StatusError(f"{path}.{key}: {value!r} is not {kind.__name__}")
    return value
