"""Pods as the manager and its callers see them: states, app statuses, errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from kurmad.appc import PodManifest


class PodState(StrEnum):
    NEW = "NEW"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    EXITED = "EXITED"
    STOPPED = "STOPPED"
    FAILED = "FAILED"

    @property
    def active(self) -> bool:
        return self in (PodState.STARTING, PodState.RUNNING)

    @property
    def terminal(self) -> bool:
        return self in (PodState.EXITED, PodState.STOPPED, PodState.FAILED)


class PodError(Exception):
    """A pod operation failed; ``str()`` is one line for a person."""


class PodNotFound(PodError):
    pass


class InvalidPod(PodError):
    """The request is wrong (a bad manifest, a missing image or volume, ...)."""


class PodConflict(PodError):
    """The pod is not in a state that allows the operation."""


class PodExists(PodConflict):
    """A pod of that name exists already."""


class PodStorageError(PodError):
    """The state disk refused to keep a pod (full, read-only): nothing of it was kept."""


@dataclass
class AppStatus:
    name: str
    image_id: str
    state: str = "waiting"
    exit_code: int | None = None
    signal: str | None = None
    reason: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    pid: int | None = None  # in the pod's PID namespace
    warnings: list[str] = field(default_factory=list)
    isolators: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Pod:
    uuid: str
    name: str
    state: PodState
    manifest: PodManifest
    created_at: float
    apps: list[AppStatus]
    reason: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    stopping: bool = False
    manifest_json: str = ""  # the manifest as JSON text, cached for the API
    network: dict[str, Any] | None = None  # networks, addresses, published ports (net/pods.py)

    def app(self, name: str) -> AppStatus | None:
        return next((a for a in self.apps if a.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid, "name": self.name, "state": self.state.value, "reason": self.reason,
            "created_at": self.created_at, "started_at": self.started_at,
            "finished_at": self.finished_at, "stopping": self.stopping,
            "apps": [a.to_json() for a in self.apps], "manifest": self.manifest.to_json(),
        }  # fmt: skip
