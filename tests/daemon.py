"""A real ``kurmad serve`` in a temporary state directory, for end-to-end tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from kurmad.client import Client, KurmaError


class ServeProcess:
    def __init__(self, state: Path, *extra: str, cgroup_parent: str | None = None,
                 prefix: tuple[str, ...] = ()) -> None:  # fmt: skip
        self.state = state
        self.log = state.parent / f"{state.name}.log"
        self.extra = extra
        self.cgroup_parent = cgroup_parent or f"/kurmad-test-{os.getpid()}-api"
        self.prefix = prefix  # e.g. nsenter --net=...: the daemon in a namespace of the test's
        self.process: subprocess.Popen[bytes] | None = None
        self.tcp: str | None = None

    @property
    def socket(self) -> str:
        return f"unix://{self.state}/kurmad.sock"

    def start(self, timeout: float = 30) -> ServeProcess:
        self.state.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log, "ab")  # noqa: SIM115 - the child keeps it
        offset = log.tell()  # a restart reads only what the new process writes
        self.process = subprocess.Popen(
            [
                *self.prefix,
                sys.executable,
                "-m",
                "kurmad",
                "serve",
                "--state-dir",
                str(self.state),
                "--cgroup-parent",
                self.cgroup_parent,
                *self.extra,
            ],
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_bytes()[offset:].decode(errors="replace")
            ready = re.findall(r"serving on (.*)", text)
            if ready and self.process.poll() is None:
                endpoints = ready[-1].split(", ")
                self.tcp = next((e for e in endpoints if not e.startswith("unix:")), None)
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"kurmad serve exited: {text[-2000:]}")
            time.sleep(0.05)
        raise RuntimeError("kurmad serve did not become ready")

    def client(self) -> Client:
        return Client(self.socket)

    def import_image(self, path: Path) -> str:
        """Import an ACI file through the local socket; its image ID."""
        with self.client() as kurma, open(path, "rb") as f:
            return kurma.import_image(f).image.id

    def issue_bundle(self, name: str, role: str, out: Path) -> Path:
        """A client bundle from this daemon's CA (kurmad certs client)."""
        result = subprocess.run([sys.executable, "-m", "kurmad", "certs", "client", name, "--role", role,
                                 "-o", str(out), "--state-dir", str(self.state)], capture_output=True, text=True)  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"kurmad certs client {name}: {result.stderr.strip()}")
        return out

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def cleanup_pods(self) -> None:
        try:
            with self.client() as kurma:
                for pod in kurma.pods():
                    kurma.remove(pod.uuid, force=True)
        except KurmaError:
            pass
