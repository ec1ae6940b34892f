"""Pod network setup plus teardown, against the CNI bridge plugin, in the same run.

    make bench-net        (root; or: .venv/bin/python -m bench.net_bench)

The same topology both ways, in a private network namespace made for the run: a bridge with
the subnet's gateway, per pod a network namespace, a veth pair with one end on the bridge and
the other in the pod with an address from a persistent pool and the default route. kurmad:
PodNetworks plan + wire, then unwire + release. CNI: Debian's bridge plugin with host-local
IPAM, ADD then DEL (masquerading off on both sides: kurmad's is one rule per network, made once,
not per pod). Both make and remove the namespace file the same way. Goal: kurmad at most CNI's
time.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from kurmad.net import netns
from kurmad.net.cni import CniNetwork
from kurmad.net.config import BridgeSpec
from kurmad.net.pods import PodNetworks

from .common import PYTHON, Series, report

ESCAPE = "KURMAD_BENCH_IN_NETNS"


def enter_private_network() -> None:
    """Run this module again in new network and mount namespaces: nothing touches the host."""
    if os.environ.get(ESCAPE):
        return
    os.execvpe("unshare", ["unshare", "--net", "--mount", "--propagation", "private", PYTHON, "-m",
                           "bench.net_bench", *sys.argv[1:]], {**os.environ, ESCAPE: "1"})  # fmt: skip


def kurmad_round(networks: PodNetworks, scratch: Path) -> float:
    pod = str(uuid.uuid4())
    namespace = scratch / f"{pod}.ns"
    began = time.perf_counter()
    plan = networks.plan(pod, ["bench0"], [])
    networks.wire(pod, namespace, plan)
    networks.unwire(pod, namespace, plan)
    networks.release(pod)
    return time.perf_counter() - began


def cni_round(network: CniNetwork, scratch: Path) -> float:
    pod = uuid.uuid4().hex
    namespace = scratch / f"{pod}.ns"
    began = time.perf_counter()
    netns.create(namespace)
    result = network.add(pod, str(namespace), "eth0")
    network.delete(pod, str(namespace), "eth0", result)
    netns.remove(namespace)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench.net_bench needs root (network namespaces)")
    enter_private_network()
    netns.write_sysctl(None, "net.ipv4.ip_forward", "1")
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        bench0 = BridgeSpec("bench0", "kbench0", "10.231.0.0/16", masquerade=False)
        networks = PodNetworks(scratch / "state", [bench0])
        cni = CniNetwork({"cniVersion": "1.0.0", "name": "cnibench", "plugins": [
            {"type": "bridge", "bridge": "kcnibench0", "isGateway": True, "ipMasq": False,
             "ipam": {"type": "host-local", "subnet": "10.232.0.0/16", "dataDir": str(scratch / "cni"),
                      "routes": [{"dst": "0.0.0.0/0"}]}}]})  # fmt: skip
        kurmad_round(networks, scratch), cni_round(cni, scratch)  # warm both: bridges exist
        series = {"kurmad bridge network": Series("kurmad bridge network"),
                  "CNI bridge + host-local": Series("CNI bridge + host-local")}  # fmt: skip
        for round_ in range(args.rounds):
            pair = [("kurmad bridge network", lambda: kurmad_round(networks, scratch)),
                    ("CNI bridge + host-local", lambda: cni_round(cni, scratch))]  # fmt: skip
            for name, run in pair if round_ % 2 == 0 else reversed(pair):
                series[name].seconds.append(run())
    report(
        "pod network setup + teardown",
        series,
        "kurmad bridge network",
        "CNI bridge + host-local",
        goal=1.0,
    )


if __name__ == "__main__":
    main()
