"""Pods as the manager and its callers see them: states, app statuses, errors."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from kurmad.appc import PodManifest
from kurmad.net.plan import NetworkPlan
from kurmad.runtime.isolators import Report
from kurmad.runtime.status import AppReport, AppState


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


@dataclass(frozen=True)
class AppStatus:
    """An app of a pod as the manager keeps it (in the pod's record) and shows it: what the
    pod init last reported of it, and how its isolators were honoured."""

    name: str
    image_id: str
    state: AppState = AppState.WAITING
    exit_code: int | None = None
    signal: str | None = None
    reason: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    pid: int | None = None  # in the pod's PID namespace
    warnings: tuple[str, ...] = ()
    isolators: Report = field(default_factory=Report)

    def reported(self, report: AppReport) -> AppStatus:
        """This app as the pod init's report says it is now."""
        return replace(
            self, state=report.state, exit_code=report.exit_code, signal=report.signal,
            reason=report.reason, started_at=report.started_at, finished_at=report.finished_at,
            pid=report.pid, warnings=report.warnings,
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "image_id": self.image_id, "state": self.state.value,
            "exit_code": self.exit_code, "signal": self.signal, "reason": self.reason,
            "started_at": self.started_at, "finished_at": self.finished_at, "pid": self.pid,
            "warnings": list(self.warnings), "isolators": self.isolators.to_json(),
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: Any) -> AppStatus:
        """An app of a record; ValueError names what is wrong."""
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            raise ValueError("apps: an app without a name")
        report = AppReport.from_json(data, f"apps.{data['name']}")
        return cls(str(data["name"]), str(data.get("image_id", "")),
                   isolators=Report.from_json(data.get("isolators", {}))).reported(report)  # fmt: skip


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
    network: NetworkPlan | None = None  # networks, addresses, published ports

    def app(self, name: str) -> AppStatus | None:
        return next((a for a in self.apps if a.name == name), None)
