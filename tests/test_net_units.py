"""Pod network pieces that need no root: the address pool, the firewall's script, and the
checks of network definitions."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from kurmad.net import firewall
from kurmad.net.config import NetworkError, check_network_configs
from kurmad.net.ipam import Ipam, IpamError, PoolExhausted


def test_addresses_are_unique_and_go_round_the_pool(tmp_path: Path) -> None:
    pool = Ipam(tmp_path / "leases.json", "10.7.0.0/29")  # .1 gateway, .2-.6 for pods
    first = [pool.allocate(f"pod{i}") for i in range(3)]
    assert first == ["10.7.0.2/29", "10.7.0.3/29", "10.7.0.4/29"]
    assert pool.allocate("pod1") == "10.7.0.3/29"  # a pod asking again keeps its address
    pool.release("pod0")
    assert pool.allocate("pod3") == "10.7.0.5/29"  # not the one just given back
    assert pool.allocate("pod4") == "10.7.0.6/29"
    assert pool.allocate("pod5") == "10.7.0.2/29"  # round the pool, past the gateway
    with pytest.raises(PoolExhausted, match="no free address left in 10.7.0.0/29 \\(5 in use\\)"):
        pool.allocate("pod6")


def test_leases_survive_a_restart_and_strangers_are_released(tmp_path: Path) -> None:
    Ipam(tmp_path / "leases.json", "10.8.0.0/24").allocate("kept")
    Ipam(tmp_path / "leases.json", "10.8.0.0/24").allocate("gone")
    again = Ipam(tmp_path / "leases.json", "10.8.0.0/24")
    assert again.leases() == {"10.8.0.2": "kept", "10.8.0.3": "gone"}
    assert again.release_unless({"kept"}) == ["10.8.0.3"]
    assert Ipam(tmp_path / "leases.json", "10.8.0.0/24").leases() == {"10.8.0.2": "kept"}
    with pytest.raises(IpamError, match="holds leases of 10.8.0.0/24, not 10.9.0.0/24"):
        Ipam(tmp_path / "leases.json", "10.9.0.0/24")
    with pytest.raises(IpamError, match="gateway 10.1.0.1 is not in 10.2.0.0/24"):
        Ipam(tmp_path / "other.json", "10.2.0.0/24", "10.1.0.1")


def test_concurrent_allocations_never_collide(tmp_path: Path) -> None:
    pool = Ipam(tmp_path / "leases.json", "10.9.0.0/24")
    got: list[str] = []
    threads = [
        threading.Thread(target=lambda i=i: got.append(pool.allocate(f"p{i}"))) for i in range(200)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == len(set(got)) == 200


def test_the_firewall_script_replaces_the_whole_table() -> None:
    script = firewall.render([firewall.Masquerade("kurma0", "10.222.0.0/16")],
                             [firewall.Forward("tcp", 8080, "10.222.0.5", 80, "pod-a")])  # fmt: skip
    lines = script.splitlines()
    assert lines[:3] == ["table inet kurmad {}", "delete table inet kurmad", "table inet kurmad {"]
    assert (
        '    ip saddr 10.222.0.0/16 ip daddr != 10.222.0.0/16 masquerade comment "network kurma0"'
        in lines
    )
    assert (
        lines[-1]
        == 'add element inet kurmad tcp_ports { 8080 comment "pod pod-a" : 10.222.0.5 . 80 }'
    )
    assert script.count("fib daddr type local dnat ip addr . port to tcp dport map @tcp_ports") == 2


@pytest.mark.parametrize(
    ("configs", "message"),
    [
        ([{"name": "a", "subnet": "10.0.0.0/8"}, {"name": "b", "subnet": "10.1.0.0/16"}],
         "network b: subnet 10.1.0.0/16 overlaps 10.0.0.0/8 of network a"),
        ([{"name": "a", "subnet": "10.0.0.0/8"}, {"name": "a", "subnet": "11.0.0.0/8"}], "the name a is given twice"),
        ([{"name": "host", "subnet": "10.0.0.0/8"}], "not host or none"),
        ([{"name": "a", "subnet": "10.0.0.300/8"}], "is not a network like 10.88.0.0/16"),
        ([{"name": "a", "type": "macvlan"}], "type 'macvlan' is not bridge or cni"),
        ([{"name": "a", "type": "cni"}], "a cni network needs its plugin configuration in config"),
    ],
)  # fmt: skip
def test_bad_network_definitions_are_named(configs: list[dict[str, object]], message: str) -> None:
    with pytest.raises(NetworkError, match=message.replace("(", "\\(").replace(")", "\\)")):
        check_network_configs(configs)


def test_a_pods_resolv_conf_leaves_out_loopback_resolvers() -> None:
    from kurmad.pods.manager import _without_loopback

    host = b"# from the host\nnameserver 127.0.0.53\nnameserver 10.0.2.3\nnameserver ::1\nnameserver\nsearch lan\n"
    assert (
        _without_loopback(host) == b"# from the host\nnameserver 10.0.2.3\nnameserver\nsearch lan\n"
    )
