"""Restart policies: pods that come back when they end. The boot config's ``initial_pods`` are
kept this way; they are made and started through the same pod manager (and, for an image, the
same ``manifest_for_run`` validation) that the API's Create uses, so they get no second path.

Policies, as in Docker and Kubernetes: ``always`` restarts a pod whatever its exit status,
``on-failure`` only when an app exited non-zero or was killed, or the pod failed; ``never``
leaves it. A pod an operator stopped or removed through the API stays as they left it.
Restarts back off exponentially (1 s doubling to 60 s); the backoff resets once a pod has run
for a minute."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kurmad.appc import PodManifest

from .builder import RunRequest, manifest_for_run
from .events import EventBus
from .manager import PodManager
from .model import Pod, PodError, PodNotFound, PodState
from .restart import parse_volume, restart_delay, should_restart

log = logging.getLogger("kurmad")


@dataclass
class SupervisedPod:
    """One pod the supervisor keeps, from a config entry: name, restart policy, and either an
    image (with exec, env, volumes) or a whole pod manifest."""

    name: str
    policy: str
    settings: dict[str, Any]
    restarts: int = 0
    status: str = "not started"
    first_attempt: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def from_config(cls, entry: dict[str, Any]) -> SupervisedPod:
        return cls(entry["name"], entry.get("restart", "always"), entry)


class Supervisor:
    def __init__(
        self,
        manager: PodManager,
        entries: list[dict[str, Any]],
        events: EventBus,
        console: Callable[[str], None],
    ) -> None:
        self.manager = manager
        self.pods = [SupervisedPod.from_config(e) for e in entries]
        self.events = events
        self.console = console
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for pod in self.pods:
            thread = threading.Thread(target=self._keep, args=(pod,), name=f"supervise-{pod.name}", daemon=True)  # fmt: skip
            thread.start()
            self._threads.append(thread)

    def wait_first_start(self, timeout: float) -> dict[str, str]:
        """Each pod's status after its first attempt (or after ``timeout``)."""
        deadline = time.monotonic() + timeout
        for pod in self.pods:
            pod.first_attempt.wait(max(deadline - time.monotonic(), 0))
        return {pod.name: pod.status for pod in self.pods}

    def stop(self, timeout: float = 5.0) -> None:
        """Stop restarting; stopping the pods themselves is the caller's business."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout)

    # -- one pod's life ----------------------------------------------------------------------------

    def _keep(self, pod: SupervisedPod) -> None:
        delay: float | None = None
        while not self._stopping.is_set():
            started = time.monotonic()
            ended = self._run_once(pod)
            pod.first_attempt.set()
            if ended is None and self._stopping.is_set():
                return
            if ended is not None and not should_restart(pod.policy, ended):
                pod.status = _describe_end(ended) + _not_restarted(pod.policy, ended)
                self.console(f"system pod {pod.name}: {pod.status}")
                return
            delay = restart_delay(delay, time.monotonic() - started)
            self._announce_restart(pod, ended, delay)
            if self._stopping.wait(delay):
                return
            pod.restarts += 1

    def _run_once(self, pod: SupervisedPod) -> Pod | None:
        """Start the pod (or adopt it if it runs already) and wait for its end; None when it
        could not start, was removed, or the supervisor is stopping."""
        try:
            current = self._ensure_running(pod)
        except (PodError, ValueError) as err:
            pod.status = f"failed to start: {err}"
            return None
        except Exception as err:  # a store or disk error: reported, retried; never fatal
            log.exception("system pod %s", pod.name)
            pod.status = f"failed to start: {type(err).__name__}: {err}"
            return None
        pod.status = "running" if current.state == PodState.RUNNING else current.state.value.lower()
        pod.first_attempt.set()
        while not self._stopping.is_set():
            try:
                current = self.manager.wait(pod.name, timeout=1.0)
            except PodNotFound:  # removed through the API: the operator's choice
                pod.status = "removed through the API; not restarted"
                self._stopping.wait()
                return None
            if current.state.terminal:
                return current
        return None

    def _ensure_running(self, pod: SupervisedPod) -> Pod:
        try:
            existing = self.manager.get(pod.name)
        except PodNotFound:
            pass
        else:
            if existing.state.active:
                return existing  # kurmad restarted under a running pod: adopt it
            self.manager.remove(existing.uuid, force=True)
        # The machine owner's config: its pods are made as the admin role would make them.
        created = self.manager.create(
            self._manifest(pod.settings), pod.name, allow_privileged=True, start_next=True
        )
        return self.manager.start(created.uuid)

    def _manifest(self, settings: dict[str, Any]) -> PodManifest:
        if "manifest" in settings:
            return PodManifest.from_json(settings["manifest"])
        volumes = [parse_volume(v) for v in settings.get("volumes", [])]
        for host_path, _, _ in volumes:
            # The config is the machine owner's: a host directory it names may be made for it.
            if not os.path.lexists(host_path):
                os.makedirs(host_path, mode=0o700)
        run = RunRequest(
            image=settings["image"], exec=[str(a) for a in settings.get("exec", [])],
            env={str(k): str(v) for k, v in settings.get("env", {}).items()},
            volumes=volumes,
            host_network=bool(settings.get("host_network", False)),
            devices=[str(d) for d in settings.get("devices", [])],
        )  # fmt: skip
        return manifest_for_run(self.manager.store, run)

    def _announce_restart(self, pod: SupervisedPod, ended: Pod | None, delay: float) -> None:
        why = _describe_end(ended) if ended is not None else pod.status
        self.console(f"system pod {pod.name}: {why}; restart {pod.restarts + 1} in {delay:g}s")
        self.events.emit("pod", "restarting", ended.uuid if ended else "", pod.name,
                         restarts=str(pod.restarts + 1), delay=f"{delay:g}", reason=why)  # fmt: skip


def _not_restarted(policy: str, pod: Pod) -> str:
    if pod.state == PodState.STOPPED:
        return "; stopped on request, so left stopped"
    return f"; not restarted (policy {policy})"


def _describe_end(pod: Pod) -> str:
    codes = ", ".join(f"{a.name}={a.exit_code}" for a in pod.apps if a.exit_code is not None)
    return (
        pod.state.value.lower()
        + (f" ({codes})" if codes else "")
        + (f": {pod.reason}" if pod.reason else "")
    )
