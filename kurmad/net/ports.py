"""A published port: what a pod asks of the host, checked when the pod is created."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PortRequest:
    protocol: str  # tcp or udp
    host_port: int
    port: int  # in the pod

    @property
    def key(self) -> str:
        return f"{self.protocol}/{self.host_port}"
