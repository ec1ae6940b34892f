"""Pod records: what the pod manager keeps of a pod on disk (``pod.json``, runtime/layout.py),
and how it keeps it.

A record is written atomically (a temporary file, fsync, rename). A write the disk refuses
(full, read-only) is reported once and retried in the background, never raised where the pod
changed: the record in memory is the truth meanwhile, and the thread that noticed the change
(the exit watcher, say) goes on. Only a new pod's first record must reach the disk, or the pod
is not made at all."""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kurmad.appc import PodManifest
from kurmad.linux.files import read_json, write_json_atomic
from kurmad.net.plan import NetworkPlan
from kurmad.runtime.isolators import Report
from kurmad.runtime.layout import PodDir

from .model import AppStatus, PodState

log = logging.getLogger("kurmad")
RETRY_SECONDS = 1.0


@dataclass
class PodRecord:
    """A pod as kept on disk. Mutable: the manager changes it under its lock and saves it."""

    uuid: str
    name: str
    created_at: float
    manifest: dict[str, Any]  # the reified manifest, as appc JSON
    state: PodState = PodState.NEW
    reason: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    pid: int | None = None  # the pod init, in the host's PID namespace
    pid_start: int | None = None  # its start time, to tell it from a reused PID
    stop_requested: bool = False
    apps: list[AppStatus] = field(default_factory=list)
    isolators: Report = field(default_factory=Report)  # the pod's own (limits, sysctls)
    network: NetworkPlan | None = None  # its networks, addresses and ports
    # Made by a request that also starts it: if kurmad stops before the pod init runs, the
    # pod is rolled back at the next start (the caller never heard it was made).
    rollback: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid, "name": self.name, "created_at": self.created_at,
            "manifest": self.manifest, "state": self.state.value, "reason": self.reason,
            "started_at": self.started_at, "finished_at": self.finished_at, "pid": self.pid,
            "pid_start": self.pid_start, "stop_requested": self.stop_requested,
            "apps": [a.to_json() for a in self.apps], "isolators": self.isolators.to_json(),
            "network": None if self.network is None else self.network.to_json(),
            "rollback": self.rollback,
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: Any) -> PodRecord:
        """A record from pod.json, every part checked (ValueError, KeyError or TypeError for
        one that is not), so that a record in memory can always be shown."""
        known = {k: data[k] for k in ("uuid", "name", "created_at", "manifest", "reason",
                                      "started_at", "finished_at", "pid", "pid_start",
                                      "stop_requested", "rollback") if k in data}  # fmt: skip
        unknown = set(data) - set(known) - {"state", "apps", "isolators", "network"}
        if unknown:
            raise KeyError(f"unknown fields {sorted(unknown)}")
        network = data.get("network")
        record = cls(
            **known, state=PodState(data["state"]),
            apps=[AppStatus.from_json(a) for a in data.get("apps", [])],
            isolators=Report.from_json(data.get("isolators", {})),
            network=None if network is None else NetworkPlan.from_json(network),
        )  # fmt: skip
        _ = record.parsed_manifest
        return record

    @functools.cached_property
    def parsed_manifest(self) -> PodManifest:
        return PodManifest.from_json(self.manifest)

    @functools.cached_property
    def manifest_json(self) -> str:
        return json.dumps(self.manifest)

    def app_names(self) -> list[str]:
        return [a.name for a in self.apps]


def check_loadable(record: PodRecord) -> None:
    """What is saved must load again: the record goes through the reader it will meet after a
    restart, so a request that would poison the store is refused before anything is kept."""
    PodRecord.from_json(json.loads(json.dumps(record.to_json())))


def load_record(pod_dir: PodDir) -> PodRecord:
    return PodRecord.from_json(read_json(pod_dir.record))


def write_record(pod_dir: PodDir, record: PodRecord) -> None:
    write_json_atomic(pod_dir.record, record.to_json(), mode=0o600)


class RecordWriter:
    """Saves records, retrying what the disk refused (see the module's docstring)."""

    def __init__(self, where: Callable[[str], PodDir], report: Callable[[PodRecord, str], None],
                 lock: threading.RLock) -> None:  # fmt: skip
        self._where = where
        self._report = report  # told once when a run of failed writes begins
        self._lock = lock  # the one records are changed under, so that a retry sees whole ones
        self._unsaved: dict[str, PodRecord] = {}
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._retry_until_closed, name="pod-saver", daemon=True)  # fmt: skip
        self._thread.start()

    def save(self, record: PodRecord) -> None:
        try:
            write_record(self._where(record.uuid), record)
        except OSError as err:
            with self._lock:
                first = not self._unsaved
                self._unsaved[record.uuid] = record
            if first:
                self._report(record, str(err.strerror or err))
            return
        with self._lock:
            self._unsaved.pop(record.uuid, None)

    def forget(self, pod_uuid: str) -> None:
        """A removed pod's record is no longer to be saved."""
        with self._lock:
            self._unsaved.pop(pod_uuid, None)

    def retry(self) -> None:
        with self._lock:
            pending = list(self._unsaved.values())
            for record in pending:
                self.save(record)
            if pending and not self._unsaved:
                log.info("pods saved again after a failed write")

    def _retry_until_closed(self) -> None:
        while not self._closing.wait(RETRY_SECONDS):
            try:
                self.retry()
            except Exception:  # this thread must outlive anything one pod can throw
                log.exception("saving pods")

    def close(self) -> None:
        self._closing.set()
        self.retry()
