"""The host network stage in network namespaces made here: veth pairs, static addresses,
matching by name and MAC, bounded link waits, and DHCP against a real server (dnsmasq)."""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .netns import Dnsmasq, address, dnsmasq_path, link_info, namespaces, run_in, veth

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or dnsmasq_path() is None,
    reason="needs root (network namespaces) and dnsmasq (apt-get install dnsmasq-base)",
)


@pytest.fixture
def pair() -> Iterator[dict[str, str]]:
    """A 'host' namespace whose eth0 is wired to 'peer' (10.77.0.1/24 on srv0, up)."""
    with namespaces("host", "peer") as ns:
        veth(ns["host"], "eth0", ns["peer"], "srv0")
        address(ns["peer"], "srv0", "10.77.0.1", 24)
        yield ns


def configure_in(
    ns: str, tmp_path: Path, settings: dict[str, Any], after: str = ""
) -> dict[str, Any]:
    """Run HostNetwork.configure in ``ns``; return its report or error, then run ``after``
    (with ``network`` in scope) and release the leases."""
    code = f"""
        import json, time
        from pathlib import Path
        from kurmad.host.sections import network_config
        from kurmad.net.host import HostNetwork, NetworkError
        network = HostNetwork(Path({str(tmp_path / "state")!r}), Path({str(tmp_path / "resolv.conf")!r}))
        out = {{}}
        began = time.monotonic()
        try:
            config = network_config(json.loads({json.dumps(settings)!r}))
            out["report"] = network.configure(config, "kurma-test")
        except NetworkError as err:
            out["error"] = str(err)
        out["seconds"] = time.monotonic() - began
        {after}
        network.release()
        print(json.dumps(out))
    """
    return run_in(ns, textwrap.dedent(code))


def test_static_address_gateway_mtu_and_dns(pair: dict[str, str], tmp_path: Path) -> None:
    settings = {
        "interfaces": [{"match": {"name": "eth*"}, "address": "10.77.0.5/24",
                        "gateway": "10.77.0.1", "mtu": 1400}],
        "dns": ["10.77.0.53", "10.77.0.54"],
    }  # fmt: skip
    out = configure_in(pair["host"], tmp_path, settings)
    assert out["report"] == "eth0: 10.77.0.5/24 via 10.77.0.1 (static)"
    info = link_info(pair["host"], "eth0")
    assert info["addresses"] == ["10.77.0.5/24"]
    assert info["mtu"] == 1400
    assert info["gateways"] == ["10.77.0.1"]
    resolv = (tmp_path / "resolv.conf").read_text()
    assert "nameserver 10.77.0.53\nnameserver 10.77.0.54\n" in resolv


def test_interfaces_match_by_mac_and_unmatched_entries_are_reported(tmp_path: Path) -> None:
    with namespaces("host", "peer") as ns:
        veth(ns["host"], "eth0", ns["peer"], "p0")
        veth(ns["peer"], "p1", ns["host"], "eth1", b_mac="02:00:00:aa:bb:cc")
        address(ns["peer"], "p0", "10.1.0.1", 24)
        address(ns["peer"], "p1", "10.2.0.1", 24)
        settings = {"interfaces": [
            {"match": {"mac": "02:00:00:AA:BB:CC"}, "address": "10.2.0.7/24"},
            {"match": {"name": "wlan*"}, "address": "10.3.0.7/24"},
        ]}  # fmt: skip
        out = configure_in(ns["host"], tmp_path, settings)
        assert "network.interfaces[1]: no interface matches name=wlan*" in out["error"]
        assert "configured: eth1: 10.2.0.7/24 (static)" in out["error"]
        assert link_info(ns["host"], "eth1")["addresses"] == ["10.2.0.7/24"]
        assert link_info(ns["host"], "eth0")["addresses"] == []  # matched nothing: untouched
    assert not (tmp_path / "resolv.conf").exists()  # no name servers: left alone


def test_the_wait_for_link_is_bounded(tmp_path: Path) -> None:
    with namespaces("host", "peer") as ns:
        veth(ns["host"], "eth0", ns["peer"], "p0")  # the peer end stays down: no carrier
        settings = {"interfaces": [{"match": {"name": "eth0"}, "address": "10.4.0.2/24"}],
                    "link_timeout": 0.5}  # fmt: skip
        out = configure_in(ns["host"], tmp_path, settings)
    assert out["error"].startswith("eth0: no link (carrier) after 0.5s")
    assert 0.5 <= out["seconds"] < 5


def test_dhcp_lease_renewal_and_release(pair: dict[str, str], tmp_path: Path) -> None:
    server = Dnsmasq(pair["peer"], "srv0", tmp_path)
    try:
        after = """
        import subprocess
        out["resolv"] = Path(network.resolv_conf).read_text()
        out["lease_file"] = sorted(p.name for p in network.lease_dir.iterdir())
        out["routes"] = subprocess.run(["cat", "/proc/net/route"], capture_output=True, text=True).stdout
        network.dhcp.renew("eth0")
        deadline = time.monotonic() + 10
        while network.dhcp.state("eth0") != "BOUND" and time.monotonic() < deadline:
            time.sleep(0.05)
        out["after_renew"] = network.dhcp.state("eth0")
        """
        out = configure_in(pair["host"], tmp_path, {"interfaces": [{"match": {"name": "eth0"}, "dhcp": True}]},
                           textwrap.indent(textwrap.dedent(after), " " * 8))  # fmt: skip
        log = server.wait_for("DHCPRELEASE(srv0)")
    finally:
        server.stop()
    assert "error" not in out, out
    lease_ip = out["report"].split()[1].split("/")[0]
    assert out["report"] == f"eth0: {lease_ip}/24 via 10.77.0.1 (dhcp from 10.77.0.1)"
    assert lease_ip.startswith("10.77.0.") and 50 <= int(lease_ip.rsplit(".", 1)[1]) <= 60
    assert "nameserver 10.77.0.53" in out["resolv"] and "search kurma.test" in out["resolv"]
    assert out["lease_file"] == ["eth0.lease.json"]  # kept in our state dir, for the next boot
    assert "01004D0A" in out["routes"]  # the gateway 10.77.0.1, little-endian in /proc/net/route
    assert out["after_renew"] == "BOUND"
    assert log.count(f"DHCPACK(srv0) {lease_ip}") == 2  # the first lease, then its renewal
    assert f"DHCPRELEASE(srv0) {lease_ip}" in log
    assert link_info(pair["host"], "eth0")["addresses"] == []  # released: the address is gone
    assert not (tmp_path / "state" / "network" / "eth0.lease.json").exists()


def test_a_dhcp_server_that_never_answers_is_reported_in_time(
    pair: dict[str, str], tmp_path: Path
) -> None:
    settings = {"interfaces": [{"match": {"name": "eth0"}, "dhcp": True}], "dhcp_timeout": 1.5}
    out = configure_in(pair["host"], tmp_path, settings)
    assert out["error"].startswith(
        "eth0: no DHCP lease within 1.5s (still asking in the background)"
    )
    assert 1.5 <= out["seconds"] < 6
