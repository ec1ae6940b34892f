"""Pod network pieces that need no root: the address pool, the firewall's script, the checks
of network definitions, and the names that keep instances apart (identity, veths, aliases)."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from kurmad.net import firewall, instance
from kurmad.net.bridge import MAX_NETWORKS, VethName, parse_veth, veth_name
from kurmad.net.config import (
    BridgeSpec,
    CniSpec,
    NetworkError,
    check_network_configs,
    parse_networks,
)
from kurmad.net.instance import Instance, InstanceRunning, owner_of
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
    script = firewall.render("kurmad-0123456789abcdef", [firewall.Masquerade("kurma0", "10.222.0.0/16")],
                             [firewall.Forward("tcp", 8080, "10.222.0.5", 80, "pod-a")])  # fmt: skip
    lines = script.splitlines()
    table = "inet kurmad-0123456789abcdef"
    assert lines[:3] == [f"table {table} {{}}", f"delete table {table}", f"table {table} {{"]
    assert (
        '    ip saddr 10.222.0.0/16 ip daddr != 10.222.0.0/16 masquerade comment "network kurma0"'
        in lines
    )
    assert (
        lines[-1]
        == f'add element {table} tcp_ports {{ 8080 comment "pod pod-a" : 10.222.0.5 . 80 }}'
    )
    assert "kurmad " not in script and "kurmad\n" not in script  # no other table is named
    assert script.count("fib daddr type local dnat ip addr . port to tcp dport map @tcp_ports") == 2


def test_the_ports_other_instances_publish_are_read_from_their_tables_only() -> None:
    def ports(table: str, name: str, *elements: object) -> dict[str, object]:
        return {"map": {"family": "inet", "name": name, "table": table, "elem": [
            [e, {"concat": ["10.0.0.2", 80]}] for e in elements]}}  # fmt: skip

    listing = {"nftables": [
        {"metainfo": {"version": "1.0.6"}},
        ports("kurmad-0123456789abcdef", "tcp_ports", 80, {"elem": {"val": 81, "comment": "pod x"}}),
        ports("kurmad-0123456789abcdef", "udp_ports", 53),
        ports("kurmad", "tcp_ports", 82),  # the one table of kurmad before instances
        ports("kurmad-fedcba9876543210", "tcp_ports", 8080),  # our own
        ports("other", "tcp_ports", 83), ports("kurmad-0123456789abcdef", "sets", 84),
    ]}  # fmt: skip
    assert firewall.published_ports(listing, "kurmad-fedcba9876543210") == {
        "tcp/80": "kurmad-0123456789abcdef", "tcp/81": "kurmad-0123456789abcdef",
        "udp/53": "kurmad-0123456789abcdef", "tcp/82": "kurmad",
    }  # fmt: skip
    assert firewall.published_ports({}, "kurmad-x") == {}


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
        ([{"name": "a", "subnet": "10.1.0.0/16"}, {"name": "b", "bridge": "a", "subnet": "10.2.0.0/16"}],
         "network b: bridge a is network a's already"),
        ([{"name": "a", "bridge": "sixteen-bytes-xx", "subnet": "10.1.0.0/16"}],
         "network a: bridge 'sixteen-bytes-xx' is not an interface name (1 to 15 bytes"),
        ([{"name": "a", "bridge": "br:0", "subnet": "10.1.0.0/16"}], "bridge 'br:0' is not an interface name"),
        ([{"name": "a", "bridge": "", "subnet": "10.1.0.0/16"}], "bridge '' is not an interface name"),
    ],
)  # fmt: skip
def test_bad_network_definitions_are_named(configs: list[dict[str, object]], message: str) -> None:
    with pytest.raises(NetworkError, match=message.replace("(", "\\(").replace(")", "\\)")):
        check_network_configs(configs)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"name": "a", "subnet": "10.1.0.0/16", "mtu": 20}, "network a: mtu 20 is not a whole number from 68 to 65535"),
        ({"name": "a", "subnet": "10.1.0.0/16", "mtu": "1500"}, "mtu '1500' is not a whole number"),
        ({"name": "a", "subnet": "10.1.0.0/16", "gateway": "10.2.0.1"}, "gateway '10.2.0.1' is not an address in 10.1.0.0/16"),
        ({"name": "a", "subnet": "10.1.0.0/16", "masquerade": "no"}, "masquerade 'no' is not true or false"),
        ({"name": "a", "type": "cni", "config": {}, "plugin_dirs": "/opt"}, "network a: plugin_dirs must be a list of paths"),
        ({"name": "a", "type": "cni", "config": {}, "timeout": 0}, "timeout 0 is not a number of seconds above 0"),
    ],
)  # fmt: skip
def test_a_networks_fields_are_checked_by_name(config: dict[str, object], message: str) -> None:
    with pytest.raises(NetworkError, match=message):
        parse_networks([config])
    with pytest.raises(NetworkError, match="networks must be a list of objects"):
        parse_networks({"name": "a"})


def test_networks_parse_into_their_types_and_back() -> None:
    text = [
        {"name": "kurma0", "type": "bridge", "subnet": "10.222.0.0/16"},
        {"name": "lan", "type": "bridge", "subnet": "10.5.0.0/24", "bridge": "br-lan",
         "gateway": "10.5.0.254", "mtu": 9000, "masquerade": False},
        {"name": "cni0", "type": "cni", "config": {"cniVersion": "1.0.0", "plugins": []},
         "plugin_dirs": ["/opt/cni/bin"], "timeout": 5},
    ]  # fmt: skip
    specs = parse_networks(text)
    assert specs == (
        BridgeSpec("kurma0", "kurma0", "10.222.0.0/16"),
        BridgeSpec("lan", "br-lan", "10.5.0.0/24", "10.5.0.254", 9000, masquerade=False),
        CniSpec("cni0", '{"cniVersion": "1.0.0", "plugins": []}', ("/opt/cni/bin",), 5.0),
    )
    assert [s.to_json() for s in specs] == text


def test_a_pods_resolv_conf_leaves_out_loopback_resolvers(tmp_path: Path) -> None:
    from kurmad.runtime.etc import resolv_conf

    host = b"# from the host\nnameserver 127.0.0.53\nnameserver 10.0.2.3\nnameserver ::1\nnameserver\nsearch lan\n"
    (tmp_path / "resolv.conf").write_bytes(host)
    assert (
        resolv_conf(tmp_path / "resolv.conf", host_network=False)
        == b"# from the host\nnameserver 10.0.2.3\nnameserver\nsearch lan\n"
    )


def test_an_instance_is_its_state_dir_whatever_path_reaches_it(tmp_path: Path) -> None:
    first = Instance.of(tmp_path / "a")
    assert first == Instance.of(tmp_path / "a")  # a restart
    (tmp_path / "link").symlink_to(tmp_path / "a")
    assert Instance.of(tmp_path / "link").id == first.id
    (tmp_path / "a").rename(tmp_path / "moved")
    assert Instance.of(tmp_path / "moved").id == first.id
    others = {Instance.of(tmp_path / f"other{i}").id for i in range(50)}
    assert len(others) == 50 and first.id not in others  # a copied state dir is another too
    assert len(first.id) == 16 and int(first.id, 16) >= 0
    assert (first.tag, first.table) == (first.id[:4], f"kurmad-{first.id}")
    assert (tmp_path / "other0").stat().st_mode & 0o777 == 0o700


def test_a_bridge_alias_names_its_owner_and_nothing_else_passes_for_one() -> None:
    owner = Instance("0123456789abcdef", "/var/lib/kurma")
    assert owner.alias == "kurmad 0123456789abcdef /var/lib/kurma"
    assert owner_of(owner.alias) == owner
    assert owner_of("kurmad 0123456789abcdef") == Instance("0123456789abcdef", "unknown")
    long = Instance("0123456789abcdef", "/" + "é" * 300)
    assert len(long.alias.encode()) <= 255 and owner_of(long.alias) is not None
    for foreign in ["", "my bridge", "kurmad", "kurmad 0123", "kurmad 0123456789ABCDEF /x",
                    "kurmad 0123456789abcdeg /x", "kurmadx 0123456789abcdef /x"]:  # fmt: skip
        assert owner_of(foreign) is None, foreign


def test_host_veth_names_fit_and_say_their_instance_pod_and_network() -> None:
    pod = str(uuid.uuid4())
    names = [veth_name("3fa2", pod, index) for index in range(MAX_NETWORKS)]
    assert all(len(name.encode()) <= 15 for name in names) and len(set(names)) == MAX_NETWORKS
    assert names[0] == f"k3fa2{pod[:8]}{pod[9]}0" and names[15].endswith("f")
    assert [parse_veth(name) for name in names] == [
        VethName("3fa2", pod.replace("-", "")[:9], index) for index in range(MAX_NETWORKS)
    ]
    assert str(parse_veth(names[3])) == names[3]
    with pytest.raises(ValueError, match="network index 16 is not in 0..15"):
        veth_name("3fa2", pod, MAX_NETWORKS)


@pytest.mark.parametrize(
    "name",
    ["kurma0", "kv0123456789ab0", "veth1a2b3c4d", "k3fa2012345678", "k3fa2012345678ab",
     "K3fa20123456780", "k3fa2O12345678a", "x3fa20123456789", "kp0", "lo", ""],
)  # fmt: skip
def test_names_that_are_not_a_host_veth_of_kurmad_are_not_parsed(name: str) -> None:
    assert parse_veth(name) is None


def test_a_running_instance_is_seen_by_others_and_held_once(tmp_path: Path) -> None:
    mine = Instance.of(tmp_path / "mine")
    assert not instance.is_running(mine.id)
    instance.hold(mine)
    instance.hold(mine)  # again: the same process keeps its hold
    # Another process sees it running; this one never takes what it holds for a live owner.
    assert _in_child(f"print(instance.is_running({mine.id!r}))") == "True"
    assert not instance.is_running(mine.id)
    again = f"""
try:
    instance.hold(instance.Instance({mine.id!r}, {mine.state_dir!r}))
except instance.InstanceRunning as err:
    print(err)
"""
    assert _in_child(again) == (
        f"kurmad instance {mine.id} (state dir {mine.state_dir}) is running already in this "
        "network namespace"
    )
    assert issubclass(InstanceRunning, ValueError)  # kurmad serve prints it as one line


def _in_child(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", f"from kurmad.net import instance\n{code}"],
                            capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    return result.stdout.strip()
