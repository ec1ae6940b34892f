"""gRPC's fork handlers stay off in every kurmad process: with them on, a fork() while gRPC's
threads are busy waits for them, and a test process once waited forever (pyroute2's NetNS forks)."""

from __future__ import annotations

import subprocess
import sys

# A server and a client busy on their own threads while the main thread forks: with the
# handlers on, each fork goes through gRPC's prefork (it logs from fork_posix.cc when the
# threads will not pause); with them off, gRPC is never asked.
BUSY_FORKS = """
import {first}
import os, threading
from concurrent import futures
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
server = grpc.server(futures.ThreadPoolExecutor(4))
health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
port = server.add_insecure_port("127.0.0.1:0")
server.start()
stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{{port}}"))
def busy():
    while True:
        stub.Check(health_pb2.HealthCheckRequest())
for _ in range(2):
    threading.Thread(target=busy, daemon=True).start()
stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
for _ in range(300):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
print("forked", flush=True)
os._exit(0)
"""


def _fork_while_busy(first: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin"}  # no GRPC_* from the caller
    return subprocess.run([sys.executable, "-c", BUSY_FORKS.format(first=first)], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_a_kurmad_process_forks_without_grpc_fork_handlers() -> None:
    done = _fork_while_busy("kurmad.client")
    assert done.returncode == 0 and "forked" in done.stdout, done.stderr[-2000:]
    assert "fork_posix" not in done.stderr, done.stderr[-2000:]


def test_without_kurmad_first_grpc_runs_its_fork_handlers() -> None:
    """The check above can fail: grpc alone does go through its handlers."""
    done = _fork_while_busy("sys")
    assert done.returncode == 0 and "forked" in done.stdout, done.stderr[-2000:]
    assert "fork_posix" in done.stderr
