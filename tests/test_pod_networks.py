"""Pod networks end to end, every packet inside namespaces made here: kurmad serve runs in a
'host' namespace wired to an 'outside' one; pods join bridge networks and a CNI one, talk to
each other, the host and the outside; published ports are reached from outside and from the
host; addresses are never shared; nothing is left behind after removal or a SIGKILL. Two
instances side by side (two state dirs) never touch each other's bridges, veths or tables."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from pyroute2 import NetNS

from kurmad.client import Client, KurmaError
from kurmad.linux.cgroups import CgroupDriver
from kurmad.net import netns
from kurmad.net.bridge import parse_veth, veth_name
from kurmad.net.instance import Instance

from .busybox import busybox_entries, busybox_path
from .daemon import ServeProcess
from .netns import NETNS_DIR, address, namespaces, veth
from .tarcraft import aci, image_manifest

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or busybox_path() is None or shutil.which("nft") is None
    or not Path("/usr/lib/cni/bridge").exists(),
    reason="needs root, busybox, nftables and containernetworking-plugins",
)  # fmt: skip
IMAGE = "example.com/netbox"


def networks(tmp: Path) -> dict[str, Any]:
    cni = {"cniVersion": "1.0.0", "name": "cni0", "plugins": [
        {"type": "bridge", "bridge": "kcni0", "isGateway": True, "ipMasq": False,
         "ipam": {"type": "host-local", "subnet": "10.224.0.0/24", "dataDir": str(tmp / "cni-ipam"),
                  "routes": [{"dst": "0.0.0.0/0"}]}}]}  # fmt: skip
    return {"default": "kurma0", "networks": [
        {"name": "kurma0", "type": "bridge", "subnet": "10.222.0.0/24"},
        {"name": "second", "type": "bridge", "bridge": "kurma1", "subnet": "10.223.0.0/24"},
        {"name": "tiny", "type": "bridge", "bridge": "kurma2", "subnet": "10.225.0.0/29"},
        {"name": "cni0", "type": "cni", "config": cni},
        {"name": "broken", "type": "cni", "plugin_dirs": [str(tmp / "plugins")], "timeout": 2,
         "config": {"cniVersion": "1.0.0", "name": "broken", "type": "garbage"}},
    ]}  # fmt: skip


class Host:
    """A kurmad serve in the test's 'host' namespace, with the 'outside' wired to it."""

    def __init__(self, tmp: Path, ns: dict[str, str], config: dict[str, Any],
                 state: str = "state") -> None:  # fmt: skip
        self.tmp, self.ns = tmp, ns
        self.state = tmp / state
        path = tmp / f"{state}-networks.yml"
        path.write_text(yaml.safe_dump(config))
        self.serve = ServeProcess(self.state, "--network-config", str(path),
                                  prefix=("nsenter", f"--net={NETNS_DIR / ns['host']}"))  # fmt: skip
        self.serve.cgroup_parent = f"/kurmad-test-{os.getpid()}-net-{state}"

    def run(
        self, *argv: str, namespace: str = "host", timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nsenter", f"--net={NETNS_DIR / self.ns[namespace]}", *argv],
                              capture_output=True, text=True, timeout=timeout)  # fmt: skip

    def kurmactl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "kurmad.cli.kurmactl", "--host", self.serve.socket, *args],
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    def links(self) -> list[str]:
        with NetNS(self.ns["host"]) as ipr:
            return sorted(link.get("ifname") for link in ipr.get_links())

    def wait(self, check: Any, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    @property
    def table(self) -> str:
        return Instance.of(self.state).table

    def nft(self) -> str:
        return self.run("nft", "list", "table", "inet", self.table).stdout

    def kurmad_tables(self) -> list[str]:
        listed = self.run("nft", "list", "tables").stdout.splitlines()
        return sorted(line for line in listed if "kurmad" in line)

    def leases(self, network: str) -> dict[str, str]:
        path = self.state / "networks" / network / "leases.json"
        return dict(json.loads(path.read_text())["leases"]) if path.exists() else {}

    def fetch(self, url: str, namespace: str = "host") -> str:
        code = f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=5).read().decode(), end='')"
        result = self.run(sys.executable, "-c", code, namespace=namespace)
        assert result.returncode == 0, result.stderr
        return result.stdout


@contextmanager
def host_and_outside() -> Iterator[dict[str, str]]:
    """The 'host' namespace (lo up, 10.99.0.1 on uplink) and the 'outside' (10.99.0.2)."""
    with namespaces("host", "outside") as ns:
        with NetNS(ns["host"]) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        veth(ns["host"], "uplink", ns["outside"], "eth0")
        address(ns["host"], "uplink", "10.99.0.1", 24)
        address(ns["outside"], "eth0", "10.99.0.2", 24)
        yield ns


@contextmanager
def serving(*boxes: Host) -> Iterator[None]:
    """The daemons started, each with the image; afterwards their pods removed, stopped."""
    started = []
    try:
        for box in boxes:
            box.serve.start()
            started.append(box)
            image = box.tmp / "netbox.aci"
            if not image.exists():
                manifest = image_manifest(IMAGE, "1.0.0")
                manifest["app"] = {"exec": ["/bin/sh"], "user": "0", "group": "0",
                                   "ports": [{"name": "web", "protocol": "tcp", "port": 80}]}  # fmt: skip
                image.write_bytes(aci(manifest, busybox_entries(), "gzip"))
            assert box.kurmactl("image", "import", str(image)).returncode == 0
        yield
    finally:
        for box in started:
            box.serve.cleanup_pods()
            box.serve.stop()
            CgroupDriver(box.serve.cgroup_parent).cgroup("").remove()


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    tmp = tmp_path_factory.mktemp("podnet")
    (tmp / "plugins").mkdir()
    garbage = tmp / "plugins" / "garbage"
    garbage.write_text("#!/bin/sh\necho this is not JSON\n")
    garbage.chmod(0o755)
    with host_and_outside() as ns:
        box = Host(tmp, ns, networks(tmp))
        with serving(box):
            yield box


WEB = [
    "/bin/sh",
    "-c",
    "mkdir -p /www && echo served by $(hostname) > /www/index.html && exec httpd -f -p 80 -h /www",
]


def test_two_pods_on_the_bridge_talk_to_each_other(host: Host) -> None:
    assert host.kurmactl("run", "-d", "--name", "web1", IMAGE, "--", *WEB).returncode == 0
    with host.serve.client() as client:
        web = client.get("web1")
    (net,) = web.networks
    assert (net.name, net.interface) == ("kurma0", "eth0") and net.address.startswith("10.222.0.")
    ip = net.address.split("/")[0]
    result = host.kurmactl("run", "--rm", IMAGE, "--", "/bin/sh", "-c",
                           f"wget -qO- http://{ip}/index.html; grep -c $(hostname) /etc/hosts; ip -4 route")  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "served by web1" and lines[1] == "1"
    assert "default via 10.222.0.1 dev eth0" in result.stdout


def test_a_pod_reaches_the_host_and_the_outside_through_masquerading(host: Host) -> None:
    result = host.kurmactl("run", "--rm", IMAGE, "--", "/bin/sh", "-c",
                           "ping -c1 -W2 10.222.0.1 >/dev/null && echo host ok; ping -c1 -W2 10.99.0.2 >/dev/null && echo outside ok")  # fmt: skip
    assert result.stdout.splitlines() == ["host ok", "outside ok"], result.stderr
    assert 'masquerade comment "network kurma0"' in host.nft()


def test_a_published_port_reaches_the_pod_from_outside_and_from_the_host(host: Host) -> None:
    assert (
        host.kurmactl("run", "-d", "--name", "pub", "-p", "18080:80", IMAGE, "--", *WEB).returncode
        == 0
    )
    assert host.fetch("http://10.99.0.1:18080/index.html", "outside") == "served by pub\n"
    assert host.fetch("http://10.222.0.1:18080/index.html") == "served by pub\n"
    assert host.fetch("http://127.0.0.1:18080/index.html") == "served by pub\n"
    with host.serve.client() as client:
        (port,) = client.get("pub").ports
    assert (port.host_port, port.port, port.protocol) == (18080, 80, "tcp")


def test_taken_host_ports_are_refused_at_create_with_nothing_held(host: Host) -> None:
    before = (host.leases("kurma0"), host.links())
    taken = host.kurmactl("run", "-d", "-p", "18080:80", IMAGE, "--", *WEB)
    assert taken.returncode != 0 and "host port tcp/18080 is published by pod" in taken.stderr
    listener = subprocess.Popen(["nsenter", f"--net={NETNS_DIR / host.ns['host']}", sys.executable, "-c",
                                 "import socket,time; s=socket.socket(); s.bind(('0.0.0.0', 18081)); s.listen(); print('up', flush=True); time.sleep(60)"],
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert listener.stdout is not None and listener.stdout.readline().strip() == "up"
        busy = host.kurmactl("run", "-d", "-p", "18081:80", IMAGE, "--", *WEB)
    finally:
        listener.kill()
        listener.wait()
    assert busy.returncode != 0 and "host port tcp/18081 is in use on this host" in busy.stderr
    assert (host.leases("kurma0"), host.links()) == before


def test_none_host_and_several_networks(host: Host) -> None:
    none = host.kurmactl(
        "run", "--rm", "--net", "none", IMAGE, "--", "/bin/sh", "-c", "ls /sys/class/net"
    )
    assert none.stdout.split() == ["lo"], none.stderr
    shared = host.kurmactl(
        "run", "--rm", "--net", "host", IMAGE, "--", "/bin/sh", "-c", "ls /sys/class/net"
    )
    assert "uplink" in shared.stdout.split() and "kurma0" in shared.stdout.split()
    both = host.kurmactl("run", "--rm", "--net", "kurma0,second", IMAGE, "--", "/bin/sh", "-c",
                         "ip -4 -o addr show eth0; ip -4 -o addr show eth1")  # fmt: skip
    assert "10.222.0." in both.stdout.splitlines()[0] and "10.223.0." in both.stdout.splitlines()[1]
    unknown = host.kurmactl("run", "--rm", "--net", "nosuch", IMAGE, "--", "/bin/true")
    assert unknown.returncode != 0 and "no network named nosuch" in unknown.stderr


def test_a_cni_network(host: Host) -> None:
    result = host.kurmactl("run", "--rm", "--net", "cni0", IMAGE, "--", "/bin/sh", "-c",
                           "ip -4 -o addr show eth0; ping -c1 -W2 10.224.0.1 >/dev/null && echo gateway ok")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "10.224.0." in result.stdout and "gateway ok" in result.stdout
    leases = host.tmp / "cni-ipam" / "cni0"
    assert not [p for p in leases.iterdir() if p.name[0].isdigit()]  # CNI DEL gave it back
    assert not [link for link in host.links() if link.startswith("veth")]


def test_a_cni_plugin_that_prints_garbage_fails_the_start_with_nothing_left(host: Host) -> None:
    def namespaces_held() -> set[Path]:
        return set((host.state / "pods").glob("*/netns"))

    before = (host.links(), namespaces_held())
    result = host.kurmactl("run", "--rm", "--net", "broken", IMAGE, "--", "/bin/true")
    assert result.returncode != 0
    assert "garbage" in result.stderr and "not JSON" in result.stderr
    assert (host.links(), namespaces_held()) == before


def test_concurrent_creates_never_share_an_address(host: Host) -> None:
    created: list[str] = []
    errors: list[str] = []

    def create(i: int) -> None:
        try:
            with Client(host.serve.socket, timeout=60) as client:
                created.append(
                    client.run(IMAGE, exec=["/bin/true"], name=f"many-{i}", start=False).uuid
                )
        except KurmaError as err:
            errors.append(str(err))

    threads = [threading.Thread(target=create, args=(i,)) for i in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(created) == 100
    addresses = [a for a, pod in host.leases("kurma0").items() if pod in created]
    assert len(addresses) == 100 and len(set(addresses)) == 100
    with Client(host.serve.socket, timeout=60) as client:
        for uuid in created:
            client.remove(uuid)
    assert not set(created) & set(host.leases("kurma0").values())


def test_an_exhausted_pool_is_refused_with_nothing_held(host: Host) -> None:
    names = []
    for i in range(5):  # a /29: six hosts, one of them the gateway
        result = host.kurmactl(
            "run", "-d", "--net", "tiny", "--name", f"tiny-{i}", IMAGE, "--", "sleep", "60"
        )
        assert result.returncode == 0, result.stderr
        names.append(f"tiny-{i}")
    full = host.kurmactl("run", "-d", "--net", "tiny", IMAGE, "--", "sleep", "60")
    assert full.returncode != 0 and "no free address left in 10.225.0.0/29" in full.stderr
    assert len(host.leases("tiny")) == 5
    for name in names:
        host.kurmactl("rm", "-f", name)
    assert host.leases("tiny") == {}


def test_nothing_is_left_after_a_sigkill_restart_and_removal(host: Host) -> None:
    assert (
        host.kurmactl(
            "run", "-d", "--name", "survivor", "-p", "18082:80", IMAGE, "--", *WEB
        ).returncode
        == 0
    )
    host.serve.kill()
    host.serve.start()
    assert (
        host.fetch("http://10.99.0.1:18082/index.html", "outside") == "served by survivor\n"
    )  # still wired
    for name in ("survivor", "pub", "web1"):
        assert host.kurmactl("rm", "-f", name).returncode == 0
    # The pods' namespaces are let go and the kernel removes their veths right after.
    assert host.wait(
        lambda: not [link for link in host.links() if parse_veth(link) or link.startswith("veth")]
    )
    assert all(
        leases == {}
        for leases in (host.leases("kurma0"), host.leases("second"), host.leases("tiny"))
    )
    assert "comment" not in host.nft().split("map udp_ports")[0]  # no published port is left
    assert json.loads((host.state / "networks" / "ports.json").read_text()) == {}
    mounts = Path("/proc/self/mountinfo").read_text()  # no pod's namespace file is mounted
    assert f"{host.state}/pods" not in mounts


def test_a_start_a_sigkill_cut_short_is_undone_at_the_restart(host: Host) -> None:
    """What a start killed mid-wiring leaves (the namespace file, a host veth; the record still
    NEW) is gone when the daemon is back, at once; the pod keeps its lease and starts again."""
    with Client(host.serve.socket) as kurma:
        pod = kurma.run(IMAGE, exec=WEB, name="cut", ports=[(18083, 80, "tcp")], start=False)
    host.serve.kill()
    namespace = netns.create(host.state / "pods" / pod.uuid / "netns")
    left = veth_name(Instance.of(host.state).tag, pod.uuid, 0)
    with NetNS(host.ns["host"]) as ipr:
        ipr.link("add", ifname=left, kind="veth", peer="kcutpeer")
        ipr.link("set", index=ipr.link_lookup(ifname=left)[0],
                 master=ipr.link_lookup(ifname="kurma0")[0])  # fmt: skip
    host.serve.start()
    assert left not in host.links() and "kcutpeer" not in host.links()
    assert f"removed veth {parse_veth(left)}" in host.serve.log.read_text()
    assert str(namespace) not in Path("/proc/self/mountinfo").read_text()
    assert pod.uuid in host.leases("kurma0").values()
    assert "18083" not in host.nft(), "a NEW pod has no forward in the table"
    assert host.kurmactl("start", "cut").returncode == 0
    assert host.fetch("http://10.99.0.1:18083/index.html", "outside") == "served by cut\n"
    assert host.kurmactl("rm", "-f", "cut").returncode == 0


def test_overlapping_subnets_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(
        yaml.safe_dump(
            [{"name": "a", "subnet": "10.50.0.0/16"}, {"name": "b", "subnet": "10.50.3.0/24"}]
        )
    )
    result = subprocess.run([sys.executable, "-m", "kurmad", "serve", "--state-dir", str(tmp_path / "s"),
                             "--network-config", str(bad)], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode != 0
    assert "network b: subnet 10.50.3.0/24 overlaps 10.50.0.0/16 of network a" in result.stderr


def test_a_manifest_publishes_an_apps_port_by_name(host: Host, tmp_path: Path) -> None:
    with host.serve.client() as client:
        image_id = client.image(IMAGE).id

    def manifest(port_name: str, host_port: int) -> Path:
        path = tmp_path / f"{port_name}.json"
        path.write_text(json.dumps({"acKind": "PodManifest", "acVersion": "0.8.11",
                                    "apps": [{"name": "web", "image": {"id": image_id},
                                              "app": {"exec": WEB, "user": "0", "group": "0",
                                                      "ports": [{"name": "web", "protocol": "tcp", "port": 80}]}}],
                                    "ports": [{"name": port_name, "hostPort": host_port}]}))  # fmt: skip
        return path

    wrong = host.kurmactl("create", "-f", str(manifest("nosuch", 19000)))
    assert wrong.returncode != 0 and "ports[0]: no app has a port named nosuch" in wrong.stderr
    assert (
        host.kurmactl("create", "-f", str(manifest("web", 19001)), "--name", "byname").returncode
        == 0
    )
    assert host.fetch("http://10.99.0.1:19001/index.html", "outside") == "served by byname\n"
    assert host.kurmactl("rm", "-f", "byname").returncode == 0


# -- two instances on one host ------------------------------------------------------------------


def one_bridge(bridge: str, subnet: str) -> dict[str, Any]:
    return {"networks": [{"name": "kurma0", "type": "bridge", "bridge": bridge, "subnet": subnet}]}


class Side:
    """One instance of a pair, and what of the host's network is its own."""

    def __init__(self, box: Host, bridge: str, port: int) -> None:
        self.box, self.bridge, self.port = box, bridge, port
        self.pod = ""

    def run_web(self, name: str) -> None:
        result = self.box.kurmactl("run", "-d", "--name", name, "-p", f"{self.port}:80", IMAGE,
                                   "--", *WEB)  # fmt: skip
        assert result.returncode == 0, result.stderr
        with self.box.serve.client() as client:
            self.pod = client.get(name).uuid

    def answers(self) -> str:
        return self.box.fetch(f"http://10.99.0.1:{self.port}/index.html", "outside")

    def own(self) -> dict[str, Any]:
        """Its bridge (index, alias, addresses), its veths on it, and its table."""
        tag = Instance.of(self.box.state).tag
        with NetNS(self.box.ns["host"]) as ipr:
            (bridge,) = ipr.get_links(ifname=self.bridge)
            addresses = sorted(f"{a.get('address')}/{a['prefixlen']}"
                               for a in ipr.get_addr(index=bridge["index"], family=2))  # fmt: skip
            veths = sorted(link.get("ifname") for link in ipr.get_links()
                           if link.get("master") == bridge["index"])  # fmt: skip
        names = [parse_veth(v) for v in veths]
        assert all(n is not None and n.instance == tag for n in names), veths
        return {"bridge": (bridge["index"], bridge.get("ifalias"), addresses), "veths": veths,
                "table": self.box.nft()}  # fmt: skip


def test_two_instances_side_by_side_never_touch_each_other(tmp_path: Path) -> None:
    with host_and_outside() as ns:
        a = Side(Host(tmp_path, ns, one_bridge("kia0", "10.241.0.0/24"), "a"), "kia0", 18100)
        b = Side(Host(tmp_path, ns, one_bridge("kib0", "10.242.0.0/24"), "b"), "kib0", 18200)
        with serving(a.box, b.box):
            a.run_web("web-a")
            b.run_web("web-b")
            tables = sorted(f"table inet {side.box.table}" for side in (a, b))
            assert a.box.kurmad_tables() == tables
            for side in (a, b):
                (veth_,) = side.own()["veths"]  # the pod's veth on the instance's own bridge
                assert parse_veth(veth_).pod == side.pod.replace("-", "")[:9]  # type: ignore[union-attr]
                assert f'{side.port} comment "pod {side.pod}"' in side.own()["table"]
            taken = b.box.kurmactl("run", "-d", "-p", f"{a.port}:80", IMAGE, "--", *WEB)
            assert taken.returncode != 0
            assert (f"host port tcp/{a.port} is published by another kurmad instance already "
                    f"(table inet {a.box.table})") in taken.stderr  # fmt: skip
            before = {"a": a.own(), "b": b.own()}

            for side in (a, b):  # SIGKILL and restart each in turn
                side.box.serve.kill()
                side.box.serve.start()
                assert (a.answers(), b.answers()) == ("served by web-a\n", "served by web-b\n")
                assert a.box.kurmad_tables() == tables
                assert {"a": a.own(), "b": b.own()} == before  # the bridge reused, not remade

            # A third instance configured with a's bridge is refused, and a is as it was.
            c = Host(tmp_path, ns, one_bridge("kia0", "10.243.0.0/24"), "c")
            owner = f"kurmad instance {Instance.of(a.box.state).id} (state dir {a.box.state})"
            with pytest.raises(RuntimeError) as refused:
                c.serve.start()
            assert f"network kurma0: bridge kia0 belongs to {owner}, which is running" in str(
                refused.value
            )
            # Its daemon killed, a still has a pod on the bridge: still a's.
            a.box.serve.kill()
            with pytest.raises(RuntimeError) as refused:
                c.serve.start()
            assert f"bridge kia0 belongs to {owner}, which has pods on it ({before['a']['veths'][0]})" in str(
                refused.value
            )  # fmt: skip
            a.box.serve.start()
            assert a.answers() == "served by web-a\n"
            assert {"a": a.own(), "b": b.own()} == before
            assert a.box.kurmad_tables() == tables

            # Removing a's pod leaves b's untouched.
            assert a.box.kurmactl("rm", "-f", "web-a").returncode == 0
            assert a.box.wait(lambda: a.own()["veths"] == [])
            assert f"{a.port} comment" not in a.own()["table"]
            assert b.own() == before["b"] and b.answers() == "served by web-b\n"


def test_a_bridge_that_is_not_kurmads_or_is_a_gone_instances(tmp_path: Path) -> None:
    """Bridges kurmad did not make, or that a gone instance did; and the veths that an
    instance's start removes: its own whose pod is gone, never another's."""
    bare_tag = Instance.of(tmp_path / "kbare0").tag  # the state dir of the kbare0 instance
    ours, lost, imposter = (f"k{bare_tag}{digit * 9}0" for digit in "012")
    others = f"k{'ffff' if bare_tag != 'ffff' else 'eeee'}{'3' * 9}0"
    with host_and_outside() as ns:
        with NetNS(ns["host"]) as ipr:
            for name, alias in [("kforeign0", "my own bridge"),
                                ("kgone0", "kurmad 0123456789abcdef /nowhere"), ("kbare0", None)]:  # fmt: skip
                ipr.link("add", ifname=name, kind="bridge")
                if alias:
                    ipr.link("set", index=ipr.link_lookup(ifname=name)[0], ifalias=alias)
            # A stray of kbare0's instance on its bridge and one on no bridge; one with its tag
            # on a bridge not its own (another instance's, with the same tag); another's.
            for i, (name, master) in enumerate([(ours, "kbare0"), (lost, None),
                                                (imposter, "kforeign0"), (others, None)]):  # fmt: skip
                ipr.link("add", ifname=name, kind="veth", peer=f"kpeer{i}")
                if master:
                    ipr.link("set", index=ipr.link_lookup(ifname=name)[0],
                             master=ipr.link_lookup(ifname=master)[0])  # fmt: skip

        def start(bridge: str, subnet: str) -> Host:
            box = Host(tmp_path, ns, one_bridge(bridge, subnet), bridge)
            box.serve.start()
            return box

        with pytest.raises(RuntimeError) as refused:
            start("kforeign0", "10.244.0.0/24")
        assert ("network kurma0: bridge kforeign0 is not kurmad's (its alias is 'my own bridge'): "
                "it is left alone") in str(refused.value)  # fmt: skip
        with pytest.raises(RuntimeError) as refused:
            start("uplink", "10.245.0.0/24")
        assert "bridge uplink exists and is a veth, not a bridge" in str(refused.value)
        started = [start("kgone0", "10.246.0.0/24"), start("kbare0", "10.247.0.0/24")]
        try:
            gone, bare = started
            assert "took bridge kgone0 over from kurmad instance 0123456789abcdef (state dir /nowhere), gone" in gone.serve.log.read_text()  # fmt: skip
            assert "took bridge kbare0, which had no owner" in bare.serve.log.read_text()
            assert f"removed veth {ours}" in bare.serve.log.read_text()
            with NetNS(ns["host"]) as ipr:
                links = {link.get("ifname"): link for link in ipr.get_links()}
                assert links["kforeign0"].get("ifalias") == "my own bridge"
                assert not ipr.get_addr(index=links["kforeign0"]["index"], family=2)
                assert not ipr.get_addr(index=links["uplink"]["index"], address="10.245.0.1")
                for box, bridge in ((gone, "kgone0"), (bare, "kbare0")):
                    assert links[bridge].get("ifalias") == Instance.of(box.state).alias
                assert {ours, lost, imposter, others} & set(links) == {imposter, others}
        finally:
            for box in started:
                box.serve.stop()
