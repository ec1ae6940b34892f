"""Restart policies, as pure rules: whether a pod that ended comes back, after how long, and how
a volume is written in the boot config. The supervisor (supervisor.py) applies them."""

from __future__ import annotations

from enum import StrEnum

from .model import Pod, PodState

FIRST_BACKOFF = 1.0
MAX_BACKOFF = 60.0
HEALTHY_RUN = 60.0


class RestartPolicy(StrEnum):
    """As in Docker and Kubernetes; the value is how the boot config spells it."""

    ALWAYS = "always"
    ON_FAILURE = "on-failure"
    NEVER = "never"


def should_restart(policy: RestartPolicy, pod: Pod) -> bool:
    """Whether a pod that has ended comes back under ``policy``."""
    if pod.state == PodState.STOPPED or policy == RestartPolicy.NEVER:
        return False  # stopped on purpose, by an operator or by shutdown
    if policy == RestartPolicy.ALWAYS:
        return True
    return pod.state == PodState.FAILED or any(
        (app.exit_code is not None and app.exit_code != 0) or app.signal for app in pod.apps
    )


def restart_delay(previous: float | None, ran_for: float) -> float:
    """1 s, doubling with each quick end up to 60 s; 1 s again once a pod ran a minute."""
    if previous is None or ran_for >= HEALTHY_RUN:
        return FIRST_BACKOFF
    return min(previous * 2, MAX_BACKOFF)
