"""The boot sequence and the network stage, each against a peer in the same run.

    make bench-boot        (root; or: .venv/bin/python -m bench.boot_bench)

- ``kurmad boot`` as PID 1 of fresh PID/mount/UTS/network namespaces (no hardware, no network
  configured), from exec until the API answers Host.Info, against ``kurmad serve`` from exec
  until the same: what the boot sequence costs over the bare daemon.
- A DHCP lease from dnsmasq over a veth pair: kurmad's network stage (link up, DISCOVER to
  ACK, address, default route, resolv.conf), timed inside the daemon as the boot sees it,
  against busybox ``udhcpc -q -n`` with a script that sets the address and the route.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import yaml

from kurmad.client import Client, KurmaError
from tests.netns import NETNS_DIR, Dnsmasq, address, namespaces, run_in, veth

from .common import PYTHON, Series, report, scratch

UDHCPC_SCRIPT = """#!/bin/sh
if [ "$1" = bound ]; then
  busybox ip addr add "$ip/$mask" dev "$interface"
  busybox ip route add default via "$router" dev "$interface"
fi
exit 0
"""


def wait_for_api(socket: Path, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode} before the API answered")
        if socket.exists():
            try:
                with Client(f"unix://{socket}", timeout=2) as client:
                    client.info()
                return
            except KurmaError:
                pass
        time.sleep(0.005)
    raise RuntimeError("the API never answered")


def boot_once(root: Path) -> float:
    state = root / "boot-state"
    config = root / "kurma.yml"
    config.write_text(yaml.safe_dump({
        "state_dir": str(state), "hardware": {"coldplug": False, "hotplug": False},
        "network": {"interfaces": []}, "api": {"listen": ""}, "cgroup_parent": "/kurmad-bench-boot",
    }))  # fmt: skip
    began = time.perf_counter()
    process = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount", "--uts", "--net", "--propagation", "private",
         PYTHON, "-m", "kurmad", "boot", "--config", str(config), "--cmdline", ""],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for_api(state / "kurmad.sock", process)
    seconds = time.perf_counter() - began
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    os.kill(int(children[0]), signal.SIGTERM)
    process.wait(60)
    return seconds


def serve_once(root: Path) -> float:
    state = root / "serve-state"
    began = time.perf_counter()
    process = subprocess.Popen(
        [PYTHON, "-m", "kurmad", "serve", "--state-dir", str(state), "--cgroup-parent", "/kurmad-bench-boot"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for_api(state / "kurmad.sock", process)
    seconds = time.perf_counter() - began
    process.send_signal(signal.SIGTERM)
    process.wait(60)
    return seconds


def bench_boot(root: Path, rounds: int) -> None:
    series = {
        "kurmad boot (PID 1)": Series("kurmad boot (PID 1)"),
        "kurmad serve": Series("kurmad serve"),
    }
    for round_ in range(rounds):
        order = [boot_once, serve_once] if round_ % 2 == 0 else [serve_once, boot_once]
        for run in order:
            name = "kurmad boot (PID 1)" if run is boot_once else "kurmad serve"
            series[name].seconds.append(run(root))
    report("exec to API answering", series, "kurmad boot (PID 1)", "kurmad serve")


KURMAD_DHCP = """
import json, time
from pathlib import Path
from kurmad.net.host import HostNetwork
from kurmad.net.interfaces import InterfaceConfig, NetworkConfig
network = HostNetwork(Path({state!r}), Path({resolv!r}))
began = time.perf_counter()
network.configure(NetworkConfig((InterfaceConfig(match_name="eth0", dhcp=True),)), "bench")
seconds = time.perf_counter() - began
network.release()
print(json.dumps({{"seconds": seconds}}))
"""


def kurmad_dhcp(ns: str, root: Path) -> float:
    code = KURMAD_DHCP.format(state=str(root / "dhcp-state"), resolv=str(root / "resolv.conf"))
    return float(run_in(ns, textwrap.dedent(code))["seconds"])


def udhcpc_dhcp(ns: str, script: Path) -> float:
    enter = ["nsenter", f"--net={NETNS_DIR / ns}"]
    began = time.perf_counter()
    subprocess.run([*enter, "busybox", "udhcpc", "-i", "eth0", "-q", "-n", "-f", "-R", "-t", "5",
                    "-s", str(script)], check=True, capture_output=True)  # fmt: skip
    seconds = time.perf_counter() - began
    subprocess.run([*enter, "busybox", "ip", "addr", "flush", "dev", "eth0"], check=True)
    return seconds


def bench_dhcp(root: Path, rounds: int) -> None:
    script = root / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    series = {
        "kurmad network stage": Series("kurmad network stage"),
        "busybox udhcpc": Series("busybox udhcpc"),
    }
    with namespaces("host", "peer") as ns:
        veth(ns["host"], "eth0", ns["peer"], "srv0")
        address(ns["peer"], "srv0", "10.77.0.1", 24)
        subprocess.run(["nsenter", f"--net={NETNS_DIR / ns['host']}", "busybox", "ip", "link", "set",
                        "eth0", "up"], check=True)  # fmt: skip
        server = Dnsmasq(ns["peer"], "srv0", root)
        try:
            for round_ in range(rounds):
                pair = [("kurmad network stage", lambda: kurmad_dhcp(ns["host"], root)),
                        ("busybox udhcpc", lambda: udhcpc_dhcp(ns["host"], script))]  # fmt: skip
                for name, run in pair if round_ % 2 == 0 else reversed(pair):
                    series[name].seconds.append(run())
        finally:
            server.stop()
    report("DHCP lease to configured address", series, "kurmad network stage", "busybox udhcpc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench.boot_bench needs root (namespaces)")
    with scratch() as root:
        bench_boot(root, args.rounds)
        bench_dhcp(root, args.rounds)


if __name__ == "__main__":
    main()
