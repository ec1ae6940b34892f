"""kurmad.net.cni against Debian's CNI plugins (bridge, ptp, host-local, loopback) in network
namespaces made here, and against fake plugins (shell scripts) for the protocol's edges: the
exact environment and stdin, errors, garbage, hangs and crashes."""

from __future__ import annotations

import ipaddress
import json
import os
import random
import subprocess
import textwrap
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute, NetNS, netns

from kurmad.net.cni import CniError, CniNetwork, CniResult, normalise_config

from .netns import NETNS_DIR, link_info, run_in

PLUGIN_DIR = Path("/usr/lib/cni")
HAVE_PLUGINS = (PLUGIN_DIR / "bridge").exists()

needs_plugins = pytest.mark.skipif(
    not HAVE_PLUGINS,
    reason="needs containernetworking-plugins (/usr/lib/cni/bridge missing)",
)
needs_root_and_plugins = pytest.mark.skipif(
    os.geteuid() != 0 or not HAVE_PLUGINS,
    reason="needs root (network namespaces) and containernetworking-plugins (/usr/lib/cni/bridge)",
)


# ---------------------------------------------------------------------------------------------
# Helpers


@contextmanager
def namespaces(*names: str) -> Iterator[dict[str, str]]:
    """Fresh network namespaces by short name → real name; removed afterwards, even those a
    test removed itself already."""
    real = {name: f"ktcni-{name}-{uuid.uuid4().hex[:6]}" for name in names}
    try:
        for ns in real.values():
            netns.create(ns)
        yield real
    finally:
        for ns in real.values():
            if (NETNS_DIR / ns).exists():
                netns.remove(ns)


def path_of(ns: str) -> str:
    return str(NETNS_DIR / ns)


def step(op: str, container: str, ns: str, prev: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"op": op, "id": container, "netns": path_of(ns), "prev": prev}


def cni_in(host_ns: str, config: dict[str, Any], steps: list[dict[str, Any]]) -> list[Any]:
    """Run CNI steps from inside ``host_ns``, so that what the plugins make on the 'host' side
    (bridge, host veths, sysctls) stays in that namespace. One entry per step: the ADD result,
    None for CHECK and DEL, or {"error": str}. CHECK and DEL use the step's "prev", else the
    result of this run's ADD for that container."""
    code = f"""
        import json
        from kurmad.net.cni import CniError, CniNetwork
        network = CniNetwork(json.loads({json.dumps(config)!r}))
        results, out = {{}}, []
        for step in json.loads({json.dumps(steps)!r}):
            cid, ns = step["id"], step["netns"]
            prev = step["prev"] or results.get(cid)
            try:
                if step["op"] == "add":
                    results[cid] = network.add(cid, ns, "eth0").raw
                    out.append(results[cid])
                elif step["op"] == "check":
                    out.append(network.check(cid, ns, "eth0", prev))
                else:
                    out.append(network.delete(cid, ns, "eth0", prev))
            except CniError as err:
                out.append({{"error": str(err)}})
        print(json.dumps({{"steps": out}}))
    """
    return list(run_in(host_ns, textwrap.dedent(code))["steps"])


def random_subnet() -> ipaddress.IPv4Network:
    return ipaddress.ip_network(f"10.{random.randint(100, 199)}.{random.randint(0, 255)}.0/24")


def host_local(subnet: ipaddress.IPv4Network, data_dir: Path) -> dict[str, Any]:
    """host-local IPAM keeping its leases in the test's tmp dir, not /var/lib/cni."""
    return {
        "type": "host-local",
        "subnet": str(subnet),
        "dataDir": str(data_dir),
        "routes": [{"dst": "0.0.0.0/0"}],
    }


def leases(data_dir: Path, network: str) -> dict[str, str]:
    """host-local's leases: a file per address, holding the container ID (and ifname)."""
    directory = data_dir / network
    if not directory.is_dir():
        return {}
    return {
        p.name: p.read_text().split()[0]
        for p in directory.iterdir()
        if p.name[0].isdigit()  # not "lock" or "last_reserved_ip.0"
    }


def links(ns: str) -> list[str]:
    with NetNS(ns) as ipr:
        return [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]


def ping(from_ns: str, address: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", f"--net={path_of(from_ns)}", "busybox", "ping", "-c1", "-W2", address],
        capture_output=True,
        text=True,
        timeout=10,
    )


def ip_of(result: dict[str, Any], ifname: str = "eth0") -> str:
    addresses = CniResult.from_dict(result).addresses_on(ifname)
    assert len(addresses) == 1, result
    return addresses[0]


# ---------------------------------------------------------------------------------------------
# Real plugins in namespaces


@needs_root_and_plugins
@pytest.mark.root
def test_bridge_host_local_two_pods_talk_check_and_delete(tmp_path: Path) -> None:
    bridge = f"ktcni{uuid.uuid4().hex[:8]}"
    subnet = random_subnet()
    ipam_dir = tmp_path / "ipam"
    config = {
        "cniVersion": "1.0.0",
        "name": "ktbridge",
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": False,
                "ipam": host_local(subnet, ipam_dir),
            },
        ],
    }
    with namespaces("host", "a", "b") as ns:
        added = cni_in(
            ns["host"], config, [step("add", "ctr-a", ns["a"]), step("add", "ctr-b", ns["b"])]
        )
        assert not any("error" in r for r in added), added
        ip_a, ip_b = ip_of(added[0]), ip_of(added[1])
        assert ip_a != ip_b
        gateway = str(next(subnet.hosts()))
        for ip, result in ((ip_a, added[0]), (ip_b, added[1])):
            assert ipaddress.ip_interface(ip).network == subnet
            assert CniResult.from_dict(result).ips[0].gateway == gateway
        assert link_info(ns["a"], "eth0")["addresses"] == [ip_a]
        assert link_info(ns["b"], "eth0")["gateways"] == [gateway]
        # the bridge exists in the test's host namespace, and only there
        assert bridge in links(ns["host"])
        with IPRoute() as ipr:
            assert ipr.link_lookup(ifname=bridge) == []
        assert leases(ipam_dir, "ktbridge") == {
            ip_a.split("/")[0]: "ctr-a",
            ip_b.split("/")[0]: "ctr-b",
        }

        pinged = ping(ns["a"], ip_b.split("/")[0])
        assert pinged.returncode == 0, pinged.stdout + pinged.stderr

        after = cni_in(
            ns["host"],
            config,
            [
                step("check", "ctr-a", ns["a"], added[0]),
                step("check", "ctr-b", ns["b"], added[1]),
                step("delete", "ctr-a", ns["a"], added[0]),
                step("delete", "ctr-a", ns["a"], added[0]),  # a second DEL is fine
                step("check", "ctr-a", ns["a"], added[0]),  # and CHECK now sees it is gone
                step("delete", "ctr-b", ns["b"], added[1]),
            ],
        )
        assert after[:4] == [None, None, None, None]
        assert "error" in after[4] and "'bridge' CHECK failed" in after[4]["error"]
        assert after[5] is None
        assert "eth0" not in links(ns["a"]) and "eth0" not in links(ns["b"])
        assert leases(ipam_dir, "ktbridge") == {}


@needs_root_and_plugins
@pytest.mark.root
def test_ptp_host_local_address_route_and_cleanup_0_4_0(tmp_path: Path) -> None:
    subnet = random_subnet()
    ipam_dir = tmp_path / "ipam"
    config = {
        "cniVersion": "0.4.0",
        "name": "ktptp",
        "plugins": [{"type": "ptp", "ipMasq": False, "ipam": host_local(subnet, ipam_dir)}],
    }
    with namespaces("host", "pod") as ns:
        host_links_before = set(links(ns["host"]))
        [result] = cni_in(ns["host"], config, [step("add", "ctr-p", ns["pod"])])
        assert "error" not in result, result
        parsed = CniResult.from_dict(result)
        assert parsed.cni_version == "0.4.0"
        assert parsed.ips[0].version == 4 and parsed.raw["ips"][0]["version"] == "4"
        address = parsed.addresses_on("eth0")[0]
        assert ipaddress.ip_interface(address).network == subnet
        assert [(r.dst, r.gw) for r in parsed.routes] == [("0.0.0.0/0", None)]
        info = link_info(ns["pod"], "eth0")
        assert info["addresses"] == [address]
        assert info["gateways"] == [parsed.ips[0].gateway]
        host_veths = set(links(ns["host"])) - host_links_before
        assert len(host_veths) == 1  # ptp's host end, in the test host namespace
        pinged = ping(ns["pod"], str(parsed.ips[0].gateway))  # the host end answers for it
        assert pinged.returncode == 0, pinged.stdout + pinged.stderr

        done = cni_in(
            ns["host"],
            config,
            [step("check", "ctr-p", ns["pod"], result), step("delete", "ctr-p", ns["pod"], result)],
        )
        assert done == [None, None]
        assert "eth0" not in links(ns["pod"])
        assert set(links(ns["host"])) == host_links_before
        assert leases(ipam_dir, "ktptp") == {}


@needs_root_and_plugins
@pytest.mark.root
def test_delete_after_the_namespace_is_gone_still_releases_the_lease(tmp_path: Path) -> None:
    ipam_dir = tmp_path / "ipam"
    config = {
        "cniVersion": "1.0.0",
        "name": "ktgone",
        "plugins": [{"type": "ptp", "ipam": host_local(random_subnet(), ipam_dir)}],
    }
    with namespaces("host", "pod") as ns:
        [result] = cni_in(ns["host"], config, [step("add", "ctr-g", ns["pod"])])
        assert "error" not in result, result
        assert list(leases(ipam_dir, "ktgone").values()) == ["ctr-g"]
        netns.remove(ns["pod"])
        # the path is gone: kurmad passes an empty CNI_NETNS, as the spec allows for DEL
        done = cni_in(ns["host"], config, [step("delete", "ctr-g", ns["pod"], result)] * 2)
        assert done == [None, None]
        assert leases(ipam_dir, "ktgone") == {}


@needs_root_and_plugins
@pytest.mark.root
def test_loopback_brings_lo_up() -> None:
    network = CniNetwork({"cniVersion": "1.0.0", "name": "ktlo", "type": "loopback"})
    with namespaces("pod") as ns:
        assert link_info(ns["pod"], "lo")["state"] == "DOWN"
        result = network.add("ctr-lo", path_of(ns["pod"]), "lo")
        assert result.interfaces[0].name == "lo"
        assert result.interfaces[0].sandbox == path_of(ns["pod"])
        assert result.addresses_on("lo") == ["127.0.0.1/8", "::1/128"]
        with NetNS(ns["pod"]) as ipr:
            lo = ipr.get_links(ipr.link_lookup(ifname="lo")[0])[0]
            assert lo["flags"] & 1  # IFF_UP
        network.check("ctr-lo", path_of(ns["pod"]), "lo", result)
        network.delete("ctr-lo", path_of(ns["pod"]), "lo", result)
        with NetNS(ns["pod"]) as ipr:
            lo = ipr.get_links(ipr.link_lookup(ifname="lo")[0])[0]
            assert not lo["flags"] & 1


@needs_plugins
def test_a_real_plugin_error_object_is_reported(tmp_path: Path) -> None:
    network = CniNetwork(
        {
            "cniVersion": "1.0.0",
            "name": "ktbad",
            "type": "host-local",
            "ipam": {"type": "host-local", "subnet": "not-a-subnet", "dataDir": str(tmp_path)},
        }
    )
    with pytest.raises(CniError) as caught:
        network.add("ctr-x", "/run/netns/unused", "eth0")
    assert caught.value.code == 999  # libcni's ErrInternal, the reference plugins' usual code
    assert str(caught.value) == (
        "CNI plugin 'host-local' ADD failed: error 999: invalid CIDR address: not-a-subnet"
    )


# ---------------------------------------------------------------------------------------------
# Fake plugins: the protocol's edges


def fake_plugin(directory: Path, name: str, body: str) -> Path:
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def fake_network(kind: str, directory: Path, timeout: float = 10) -> CniNetwork:
    config = {"cniVersion": "1.0.0", "name": "ktfake", "type": kind}
    return CniNetwork(config, plugin_dirs=[directory], timeout=timeout)


def processes_with_env(entry: str) -> list[int]:
    """Processes whose environment holds ``entry``: a plugin and everything it started."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with suppress(OSError):
                if entry.encode() in (proc / "environ").read_bytes().split(b"\0"):
                    found.append(int(proc.name))
    return found


def zombie_children() -> list[int]:
    zombies = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with suppress(OSError):
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                if fields[0] == "Z" and int(fields[1]) == os.getpid():
                    zombies.append(int(proc.name))
    return zombies


def test_a_missing_plugin_is_named_with_the_directories(tmp_path: Path) -> None:
    network = fake_network("no-such-plugin", tmp_path)
    with pytest.raises(CniError, match=f"'no-such-plugin' not found in {tmp_path}"):
        network.add("ctr", "/run/netns/x", "eth0")


def test_garbage_output_is_not_json(tmp_path: Path) -> None:
    fake_plugin(tmp_path / "bin", "ktgarbage", "echo 'hello, this is <not> json'\n")
    with pytest.raises(CniError) as caught:
        fake_network("ktgarbage", tmp_path / "bin").add("ctr", "/run/netns/x", "eth0")
    assert str(caught.value) == (
        "CNI plugin 'ktgarbage' ADD: output is not JSON: 'hello, this is <not> json'"
    )


def test_an_error_object_gives_code_msg_and_details(tmp_path: Path) -> None:
    fake_plugin(
        tmp_path / "bin",
        "kterror",
        """\
        echo 'some log line' >&2
        echo '{"cniVersion": "1.0.0", "code": 7, "msg": "bad subnet", "details": "/31 is too small"}'
        exit 1
    """,
    )
    with pytest.raises(CniError) as caught:
        fake_network("kterror", tmp_path / "bin").add("ctr", "/run/netns/x", "eth0")
    err = caught.value
    assert str(err) == (
        "CNI plugin 'kterror' ADD failed: error 7 (invalid network configuration): "
        "bad subnet (/31 is too small)"
    )
    assert (err.plugin, err.command, err.code, err.msg, err.details) == (
        "kterror",
        "ADD",
        7,
        "bad subnet",
        "/31 is too small",
    )
    assert err.stderr == "some log line\n"


def test_a_failure_without_an_error_object_quotes_stderr(tmp_path: Path) -> None:
    fake_plugin(tmp_path / "bin", "ktsilent", "echo 'panic: oops' >&2\nexit 2\n")
    with pytest.raises(CniError) as caught:
        fake_network("ktsilent", tmp_path / "bin").delete("ctr", "/run/netns/x", "eth0", None)
    assert str(caught.value) == (
        "CNI plugin 'ktsilent' DEL failed (exit 2) without an error object; stderr: 'panic: oops'"
    )


def test_check_and_delete_ignore_stray_output_and_code_less_errors_read_well(
    tmp_path: Path,
) -> None:
    fake_plugin(
        tmp_path / "bin",
        "ktchatty",
        """\
        [ "$CNI_COMMAND" = ADD ] && { echo '{"msg": "no code here"}'; exit 1; }
        echo 'not a result'
    """,
    )
    network = fake_network("ktchatty", tmp_path / "bin")
    network.check("ctr", "/run/netns/x", "eth0", {"cniVersion": "1.0.0"})
    network.delete("ctr", "/run/netns/x", "eth0", {"cniVersion": "1.0.0"})
    with pytest.raises(CniError) as caught:
        network.add("ctr", "/run/netns/x", "eth0")
    assert str(caught.value) == "CNI plugin 'ktchatty' ADD failed: no code here"
    assert caught.value.code is None


def test_a_hung_plugin_is_killed_with_its_children(tmp_path: Path) -> None:
    # the shell waits on a child: killing only the plugin would leave the sleep running
    fake_plugin(tmp_path / "bin", "kthang", "sleep 1000\necho '{}'\n")
    container = f"ctr-{uuid.uuid4().hex}"
    began = time.monotonic()
    with pytest.raises(CniError, match="'kthang' ADD did not answer within 1s; killed"):
        fake_network("kthang", tmp_path / "bin", timeout=1).add(container, "/run/netns/x", "eth0")
    assert 1 <= time.monotonic() - began < 4
    assert processes_with_env(f"CNI_CONTAINERID={container}") == []
    assert zombie_children() == []


def test_a_crashed_plugin_names_the_signal(tmp_path: Path) -> None:
    fake_plugin(tmp_path / "bin", "ktcrash", "ulimit -c 0\nkill -SEGV $$\n")
    with pytest.raises(CniError) as caught:
        fake_network("ktcrash", tmp_path / "bin").add("ctr", "/run/netns/x", "eth0")
    assert str(caught.value) == "CNI plugin 'ktcrash' ADD was killed by signal SIGSEGV"
    assert zombie_children() == []


RECORDER = """\
    record={record}
    n=$(( $(ls "$record" | wc -l) / 2 ))
    name=$(basename "$0")
    tr '\\0' '\\n' < /proc/$$/environ > "$record/$n-$name.env"
    cat > "$record/$n-$name.json"
    if [ "$CNI_COMMAND" = ADD ]; then
        printf '{{"cniVersion": "1.0.0", "interfaces": [{{"name": "%s"}}], "ips": [{{"address": "10.0.0.%s/24", "interface": 0}}]}}' "$name" "$n"
    fi
"""


def recorded(record: Path) -> list[tuple[str, dict[str, str], dict[str, Any]]]:
    """(plugin, environment, stdin) of each call, in order."""
    calls = []
    for env_file in sorted(record.glob("*.env"), key=lambda p: int(p.name.split("-")[0])):
        env = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
        stdin = json.loads(env_file.with_suffix(".json").read_text())
        calls.append((env_file.stem.split("-", 1)[1], env, stdin))
    return calls


def chained_calls(tmp_path: Path) -> tuple[list[Any], CniResult, Path, list[dict[str, Any]]]:
    """ADD, CHECK and DEL through a list of two recording plugins: what each was given, the
    result, the plugins' directory and the port mappings passed as a capability."""
    record = tmp_path / "record"
    record.mkdir()
    bin_dir = tmp_path / "bin"
    for name in ("ktrec1", "ktrec2"):
        fake_plugin(bin_dir, name, RECORDER.format(record=record))
    config = {
        "cniVersion": "1.0.0",
        "name": "ktchain",
        "plugins": [
            {"type": "ktrec1", "capabilities": {"portMappings": True}, "keyA": [1, 2]},
            {"type": "ktrec2", "cniVersion": "0.3.1", "name": "overridden"},
        ],
    }
    network = CniNetwork(config, plugin_dirs=[str(bin_dir), "/nonexistent/cni"])
    ports = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]
    result = network.add(
        "ctr-1",
        "/run/netns/fake",
        "eth1",
        args={"K8S_POD_NAME": "web", "A": "1"},
        capability_args={"portMappings": ports, "mac": "02:00:00:00:00:01"},
    )
    network.check("ctr-1", "/run/netns/fake", "eth1", result)
    network.delete("ctr-1", "/run/netns/fake", "eth1", result)
    return recorded(record), result, bin_dir, ports


def test_environment_stdin_and_result_chaining(tmp_path: Path) -> None:
    calls, result, bin_dir, ports = chained_calls(tmp_path)
    assert [(plugin, env["CNI_COMMAND"]) for plugin, env, _ in calls] == [
        ("ktrec1", "ADD"),
        ("ktrec2", "ADD"),
        ("ktrec1", "CHECK"),
        ("ktrec2", "CHECK"),
        ("ktrec2", "DEL"),
        ("ktrec1", "DEL"),
    ]
    _, env, first = calls[0]
    assert env == {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "ctr-1",
        "CNI_NETNS": "/run/netns/fake",
        "CNI_IFNAME": "eth1",
        "CNI_ARGS": "K8S_POD_NAME=web;A=1",
        "CNI_PATH": f"{bin_dir}:/nonexistent/cni",
        "PATH": os.environ["PATH"],
    }
    # the list's version and name in every plugin's config; capabilities become runtimeConfig
    assert first == {
        "cniVersion": "1.0.0",
        "name": "ktchain",
        "type": "ktrec1",
        "keyA": [1, 2],
        "runtimeConfig": {"portMappings": ports},
    }
    first_result = {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "ktrec1"}],
        "ips": [{"address": "10.0.0.0/24", "interface": 0}],
    }
    second = calls[1][2]
    assert second == {
        "cniVersion": "1.0.0",
        "name": "ktchain",
        "type": "ktrec2",
        "prevResult": first_result,
    }
    assert result.raw["interfaces"] == [{"name": "ktrec2"}]  # the last plugin's is the result
    assert result.addresses_on("ktrec2") == ["10.0.0.1/24"]
    # CHECK and DEL: every plugin gets the final ADD result
    for _, _, stdin in calls[2:]:
        assert stdin["prevResult"] == result.raw
    # DEL of a path that is no network namespace: an empty CNI_NETNS, which plugins accept
    assert calls[4][1]["CNI_NETNS"] == "" and calls[2][1]["CNI_NETNS"] == "/run/netns/fake"


def test_delete_without_a_result_and_disable_check(tmp_path: Path) -> None:
    record = tmp_path / "record"
    record.mkdir()
    fake_plugin(tmp_path / "bin", "ktrec", RECORDER.format(record=record))
    config = {
        "cniVersion": "0.4.0",
        "name": "ktnocheck",
        "disableCheck": True,
        "plugins": [{"type": "ktrec"}],
    }
    network = CniNetwork(config, plugin_dirs=[tmp_path / "bin"])
    network.check("ctr", "/run/netns/x", "eth0", {"cniVersion": "0.4.0"})  # runs nothing
    network.delete("ctr", "/run/netns/x", "eth0", None)  # after a failed ADD: no prevResult
    [(_, env, stdin)] = recorded(record)
    assert env["CNI_COMMAND"] == "DEL" and "prevResult" not in stdin
    assert stdin["cniVersion"] == "0.4.0"


# ---------------------------------------------------------------------------------------------
# Configurations and results (no root)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"cniVersion": "1.1.0", "name": "n", "type": "bridge"},
            "cniVersion '1.1.0' is not supported",
        ),
        ({"cniVersion": "1.0.0", "type": "bridge"}, "has no 'name'"),
        ({"cniVersion": "1.0.0", "name": "n", "plugins": []}, "'plugins' must be a non-empty list"),
        ({"cniVersion": "1.0.0", "name": "n", "type": "../../bin/sh"}, "no valid 'type'"),
        (
            {"cniVersion": "1.0.0", "name": "n", "plugins": [{"ipam": {}}]},
            "plugin 0 has no valid 'type'",
        ),
    ],
)
def test_bad_configurations_are_refused(config: dict[str, Any], message: str) -> None:
    with pytest.raises(CniError, match=message):
        CniNetwork(config)


def test_a_single_plugin_config_is_a_list_of_one() -> None:
    config = normalise_config({"cniVersion": "0.4.0", "name": "n", "type": "loopback"})
    assert (config.name, config.cni_version, config.disable_check) == ("n", "0.4.0", False)
    assert config.plugins == [{"cniVersion": "0.4.0", "name": "n", "type": "loopback"}]


def test_bad_attachment_parameters_are_refused(tmp_path: Path) -> None:
    network = fake_network("ktnone", tmp_path)
    with pytest.raises(CniError, match="container ID '-bad'"):
        network.add("-bad", "/run/netns/x", "eth0")
    with pytest.raises(CniError, match="must not be empty or hold"):
        network.add("ctr", "/run/netns/x", "eth0", args={"A": "1;B=2"})


RESULT_0_4_0 = {
    "cniVersion": "0.4.0",
    "interfaces": [
        {"name": "cni0", "mac": "00:11:22:33:44:55"},
        {"name": "veth3243", "mac": "55:44:33:22:11:11"},
        {"name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": "/run/netns/pod"},
    ],
    "ips": [
        {"version": "4", "address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 2},
        {"version": "6", "address": "fd00::5/64", "gateway": "fd00::1", "interface": 2},
    ],
    "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.9.0.0/16", "gw": "10.1.0.254"}],
    "dns": {"nameservers": ["10.1.0.1"]},
}

RESULT_1_0_0 = {
    "cniVersion": "1.0.0",
    "interfaces": [
        {"name": "eth0", "mac": "99:88:77:66:55:44", "mtu": 1400, "sandbox": "/run/netns/pod"},
        {"name": "eth0", "mac": "aa:bb:cc:dd:ee:ff"},  # a host-side interface of the same name
    ],
    "ips": [
        {"address": "192.168.7.2/24", "gateway": "192.168.7.1", "interface": 0},
        {"address": "192.168.8.2/24", "interface": 1},
        {"address": "172.16.0.9/32"},
    ],
    "routes": [{"dst": "0.0.0.0/0", "gw": "192.168.7.1"}],
    "dns": {
        "nameservers": ["1.1.1.1", "9.9.9.9"],
        "domain": "pod.test",
        "search": ["pod.test", "test"],
        "options": ["ndots:2"],
    },
}


def test_parse_a_0_4_0_result() -> None:
    result = CniResult.from_dict(RESULT_0_4_0)
    assert result.cni_version == "0.4.0"
    assert [i.name for i in result.interfaces] == ["cni0", "veth3243", "eth0"]
    assert result.interfaces[2].sandbox == "/run/netns/pod" and result.interfaces[0].sandbox == ""
    assert [(ip.address, ip.gateway, ip.interface, ip.version) for ip in result.ips] == [
        ("10.1.0.5/16", "10.1.0.1", 2, 4),
        ("fd00::5/64", "fd00::1", 2, 6),
    ]
    assert [(r.dst, r.gw) for r in result.routes] == [
        ("0.0.0.0/0", None),
        ("10.9.0.0/16", "10.1.0.254"),
    ]
    assert result.dns.nameservers == ["10.1.0.1"] and result.dns.search == []
    assert result.addresses_on("eth0") == ["10.1.0.5/16", "fd00::5/64"]
    assert result.addresses_on("cni0") == []


def test_parse_a_1_0_0_result_and_round_trip_it() -> None:
    result = CniResult.from_dict(RESULT_1_0_0)
    assert result.interfaces[0].mtu == 1400 and result.interfaces[1].mtu is None
    assert [ip.interface for ip in result.ips] == [0, 1, None]  # IPAM-style: no interface
    assert result.routes[0].gw == "192.168.7.1"
    assert result.dns.domain == "pod.test" and result.dns.options == ["ndots:2"]
    assert result.dns.search == ["pod.test", "test"]
    assert result.addresses_on("eth0") == ["192.168.7.2/24"]  # the sandboxed one wins
    again = CniResult.from_json(result.to_json())
    assert again == result and again.raw == RESULT_1_0_0
    empty = CniResult.from_dict({"cniVersion": "1.0.0"})
    assert (empty.interfaces, empty.ips, empty.routes, empty.dns.nameservers) == ([], [], [], [])


@pytest.mark.parametrize(
    "text",
    ['{"ips": [{"address": "not-an-ip"}]}', '{"interfaces": [{"mac": "x"}]}', "[1]", "garbage"],
)
def test_malformed_results_are_refused(text: str) -> None:
    with pytest.raises(CniError, match="CNI result|malformed"):
        CniResult.from_json(text)
