"""Restart policies: pods that come back when they end. The boot config's ``initial_pods`` are
kept this way; they are made and started through the core's ``create_pod``, the door the API's
Create uses (the same ``manifest_for_run`` for an image, the same checks), so they get no second
path.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from kurmad.appc import PodManifest

from .builder import RunRequest
from .events import EventBus
from .manager import PodManager
from .model import Pod, PodError, PodNotFound, PodState
from .restart import RestartPolicy, restart_delay, should_restart

log = logging.getLogger("kurmad")


class CreatePod(Protocol):
    """How a pod is made: the core's ``create_pod``, the door of the API's Create."""

    def __call__(
        self, spec: PodManifest | RunRequest, name: str | None, *, admin: bool, start: bool
    ) -> Pod: ...


@dataclass
class SupervisedPod:
    """One pod the supervisor keeps: its name, its restart policy, and what it is made from: a
    run request (an image, with exec, env, volumes) or a pod manifest's JSON, read at each
    attempt (a bad one fails that pod only, as an API request would)."""

    name: str
    policy: RestartPolicy
    spec: RunRequest | Mapping[str, Any]
    restarts: int = 0
    status: str = "not started"
    first_attempt: threading.Event = field(default_factory=threading.Event)


class Supervisor:
    def __init__(
        self,
        manager: PodManager,
        create: CreatePod,
        pods: list[SupervisedPod],
        events: EventBus,
        console: Callable[[str], None],
    ) -> None:
        self.manager = manager
        self.create = create
        self.pods = pods
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
        return self.create(_request(pod.spec), pod.name, admin=True, start=True)

    def _announce_restart(self, pod: SupervisedPod, ended: Pod | None, delay: float) -> None:
        why = _describe_end(ended) if ended is not None else pod.status
        self.console(f"system pod {pod.name}: {why}; restart {pod.restarts + 1} in {delay:g}s")
        self.events.emit("pod", "restarting", ended.uuid if ended else "", pod.name,
                         restarts=str(pod.restarts + 1), delay=f"{delay:g}", reason=why)  # fmt: skip


def _request(spec: RunRequest | Mapping[str, Any]) -> PodManifest | RunRequest:
    if not isinstance(spec, RunRequest):
        return PodManifest.from_json(spec)
    for host_path, _, _ in spec.volumes:
        # The config is the machine owner's: a host directory it names may be made for it.
        if not os.path.lexists(host_path):
            os.makedirs(host_path, mode=0o700)
    return spec


def _not_restarted(policy: RestartPolicy, pod: Pod) -> str:
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
