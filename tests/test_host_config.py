"""The boot configuration: layers and their order, the kernel command line, and every rule a
section is checked against (a bad section falls back, the rest of its file still applies)."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kurmad.host.config import (
    BootConfig,
    ConfigError,
    LoadedConfig,
    load,
    merge_layer,
    parse_cmdline,
    parse_file,
    validate_file,
)
from kurmad.host.sections import (
    ApiConfig,
    DiskConfig,
    DiskMatch,
    Hardware,
    InitialPod,
)
from kurmad.net.interfaces import InterfaceConfig, NetworkConfig
from kurmad.pods.restart import RestartPolicy

REPO = Path(__file__).resolve().parent.parent
# every setting with a default is a known key, and the error lists them sorted
DEFAULTS = BootConfig().to_json()  # the built-in defaults in their YAML form
KNOWN_TOP = ", ".join(sorted(DEFAULTS))


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    return validate_file(write(tmp_path, "kurma.yml", text))


def only_problem(tmp_path: Path, text: str) -> str:
    found = problems(tmp_path, text)
    assert len(found) == 1, found
    return found[0]


# --- layers and their order -----------------------------------------------------------------


def test_no_files_and_no_cmdline_give_the_defaults(tmp_path: Path) -> None:
    config = load(base_file=tmp_path / "absent.yml")
    assert config.values == DEFAULTS
    assert config.values is not DEFAULTS
    assert config.sources == ["defaults", "kernel command line"]
    assert config.errors == []


def test_loading_does_not_change_the_defaults(tmp_path: Path) -> None:
    before = copy.deepcopy(DEFAULTS)
    base = write(tmp_path, "base.yml", "network: {dns: [1.1.1.1]}\nhardware: {hotplug: false}\n")
    config = load(base_file=base, cmdline="kurma.modules=a")
    config.values["network"]["interfaces"].append({"dhcp": False})
    assert before == DEFAULTS


def test_every_layer_in_order(tmp_path: Path) -> None:
    base = write(
        tmp_path,
        "base.yml",
        "hostname: base\nmodules: [a]\ncgroups: v1\nstate_dir: /base\n"
        "api: {listen: '127.0.0.1:1'}\n",
    )
    oem = write(
        tmp_path, "oem.yml", "hostname: oem\nmodules: [b]\nstate_dir: /oem\napi: {insecure: true}\n"
    )
    extra = write(tmp_path, "extra.yml", "hostname: extra\nimages: [x]\napi: {tls_dir: /tls}\n")
    config = load(
        base_file=base, oem_file=oem, cmdline=f"quiet kurma.config={extra} kurma.hostname=cmd"
    )
    assert config.errors == []
    assert config.values["hostname"] == "cmd"
    assert config.values["modules"] == ["b"]
    assert config.values["cgroups"] == "v1"
    assert config.values["state_dir"] == "/oem"
    assert config.values["images"] == ["x"]
    assert config.values["api"] == {"listen": "127.0.0.1:1", "insecure": True, "tls_dir": "/tls"}
    assert config.sources == ["defaults", str(base), str(oem), str(extra), "kernel command line"]


def test_oem_file_beats_base_file(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yml", "hostname: base\ndebug: true\n")
    oem = write(tmp_path, "oem.yml", "hostname: oem\n")
    config = load(base_file=base, oem_file=oem)
    assert config.values["hostname"] == "oem"
    assert config.values["debug"] is True


def test_extra_file_beats_oem_file(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yml", "cgroups: v1\n")
    oem = write(tmp_path, "oem.yml", "hostname: oem\nstate_dir: /oem\n")
    extra = write(tmp_path, "extra.yml", "hostname: extra\n")
    config = load(base_file=base, oem_file=oem, cmdline=f"kurma.config={extra}")
    assert config.values["hostname"] == "extra"
    assert config.values["state_dir"] == "/oem"
    assert config.values["cgroups"] == "v1"


def test_cmdline_beats_every_file(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yml", "hostname: base\nmodules: [a]\ncgroups: v1\n")
    extra = write(tmp_path, "extra.yml", "hostname: extra\nmodules: [b]\n")
    config = load(
        base_file=base,
        cmdline=f"kurma.config={extra} kurma.hostname=cmd kurma.modules=c,d kurma.cgroups=v2",
    )
    assert config.values["hostname"] == "cmd"
    assert config.values["modules"] == ["c", "d"]
    assert config.values["cgroups"] == "v2"


def test_mappings_merge_across_layers(tmp_path: Path) -> None:
    base = write(
        tmp_path, "base.yml", "api: {listen: '10.0.0.1:7000'}\nhardware: {hotplug: false}\n"
    )
    oem = write(tmp_path, "oem.yml", "api: {insecure: true}\n")
    config = load(base_file=base, oem_file=oem)
    assert config.values["api"] == {"listen": "10.0.0.1:7000", "insecure": True, "tls_dir": ""}
    assert config.values["hardware"] == {"coldplug": True, "hotplug": False}


def test_lists_inside_a_mapping_are_replaced_not_appended(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yml", "network: {dns: [1.1.1.1, 8.8.8.8], link_timeout: 3}\n")
    oem = write(tmp_path, "oem.yml", "network: {dns: [9.9.9.9]}\n")
    network = load(base_file=base, oem_file=oem).values["network"]
    assert network["dns"] == ["9.9.9.9"]
    assert network["link_timeout"] == 3
    assert network["interfaces"] == DEFAULTS["network"]["interfaces"]


def test_top_level_lists_and_scalars_are_replaced(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yml", "modules: [a, b]\nimages: [x]\nstate_dir: /one\n")
    oem = write(tmp_path, "oem.yml", "modules: [c]\nimages: []\nstate_dir: /two\n")
    values = load(base_file=base, oem_file=oem).values
    assert values["modules"] == ["c"]
    assert values["images"] == []
    assert values["state_dir"] == "/two"


def test_cmdline_ip_replaces_the_interfaces_and_keeps_the_rest_of_network(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yml", "network: {dns: [1.1.1.1]}\n")
    network = load(base_file=base, cmdline="kurma.ip=10.0.0.5/24,10.0.0.1").values["network"]
    assert network["interfaces"] == [
        {"match": {"name": "eth*"}, "dhcp": False, "address": "10.0.0.5/24", "gateway": "10.0.0.1"}
    ]
    assert network["dns"] == ["1.1.1.1"]


# --- the kernel command line ----------------------------------------------------------------


def test_cmdline_ignores_words_that_are_not_kurma_options() -> None:
    layer, extra, errors = parse_cmdline(
        "BOOT_IMAGE=/vmlinuz root=/dev/vda1 console=ttyS0 quiet kurmad.hostname=x "
        "notkurma.hostname=y kurma"
    )
    assert (layer, extra, errors) == ({}, None, [])


def test_cmdline_hostname() -> None:
    assert parse_cmdline("ro kurma.hostname=node-1") == ({"hostname": "node-1"}, None, [])


def test_cmdline_modules_drop_empty_items() -> None:
    layer, _, errors = parse_cmdline("kurma.modules=virtio_net,,overlay,")
    assert layer == {"modules": ["virtio_net", "overlay"]}
    assert errors == []


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("kurma.debug", True),
        ("kurma.debug=1", True),
        ("kurma.debug=0", False),
        ("kurma.debug=false", False),
        ("kurma.debug=no", False),
    ],
)
def test_cmdline_debug(word: str, expected: bool) -> None:
    layer, _, _ = parse_cmdline(word)
    assert layer["debug"] is expected


def test_cmdline_config_names_the_extra_file() -> None:
    layer, extra, errors = parse_cmdline("kurma.config=/boot/kurma.yml")
    assert extra == Path("/boot/kurma.yml")
    assert layer == {}
    assert errors == []


def test_cmdline_ip_with_address_only() -> None:
    layer, _, errors = parse_cmdline("kurma.ip=10.0.0.5/24")
    assert errors == []
    assert layer == {
        "network": {
            "interfaces": [{"match": {"name": "eth*"}, "dhcp": False, "address": "10.0.0.5/24"}]
        }
    }


def test_cmdline_ip_with_gateway_and_interface() -> None:
    layer, _, errors = parse_cmdline("kurma.ip=10.0.0.5/24,10.0.0.1,eth1")
    assert errors == []
    assert layer["network"]["interfaces"] == [
        {"match": {"name": "eth1"}, "dhcp": False, "address": "10.0.0.5/24", "gateway": "10.0.0.1"}
    ]


def test_cmdline_ip_with_interface_but_no_gateway() -> None:
    layer, _, _ = parse_cmdline("kurma.ip=10.0.0.5/24,,eth2")
    (interface,) = layer["network"]["interfaces"]
    assert interface["match"] == {"name": "eth2"}
    assert "gateway" not in interface


def test_cmdline_bad_ip_names_the_expected_form() -> None:
    layer, _, errors = parse_cmdline("kurma.ip=10.0.0.500/24 kurma.hostname=h")
    assert layer == {"hostname": "h"}
    assert errors == [
        "kernel command line: kurma.ip=10.0.0.500/24: expected ADDRESS/PREFIX[,GATEWAY[,INTERFACE]]"
    ]


def test_cmdline_unknown_option_is_an_error() -> None:
    layer, _, errors = parse_cmdline("kurma.foo=bar kurma.hostname=h")
    assert layer == {"hostname": "h"}
    assert errors == ["kernel command line: kurma.foo: unknown option"]


def test_cmdline_errors_reach_the_loaded_config(tmp_path: Path) -> None:
    config = load(base_file=tmp_path / "absent.yml", cmdline="kurma.foo kurma.ip=nonsense")
    assert config.errors == [
        "kernel command line: kurma.foo: unknown option",
        "kernel command line: kurma.ip=nonsense: expected ADDRESS/PREFIX[,GATEWAY[,INTERFACE]]",
    ]
    assert config.values["network"] == DEFAULTS["network"]


def test_cmdline_bad_gateway_falls_back_through_the_section_check(tmp_path: Path) -> None:
    config = load(base_file=tmp_path / "absent.yml", cmdline="kurma.ip=10.0.0.5/24,10.0.0.x")
    assert config.values["network"] == DEFAULTS["network"]
    assert len(config.errors) == 1
    assert config.errors[0].startswith("kernel command line: network.interfaces[0].gateway:")
    assert "'10.0.0.x' is not an address" in config.errors[0]


def test_cmdline_ip_without_prefix_is_refused(tmp_path: Path) -> None:
    config = load(base_file=tmp_path / "absent.yml", cmdline="kurma.ip=10.0.0.5")
    assert config.values["network"] == DEFAULTS["network"]
    assert len(config.errors) == 1
    assert "network.interfaces[0].address: give a prefix length" in config.errors[0]


def test_cmdline_bad_hostname_keeps_the_file_value(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yml", "hostname: base\n")
    config = load(base_file=base, cmdline="kurma.hostname=bad_name")
    assert config.values["hostname"] == "base"
    assert config.errors == [
        "kernel command line: hostname: 'bad_name' is not a valid host name "
        "(this section keeps its previous value)"
    ]


# --- files that cannot be read ----------------------------------------------------------------


def test_missing_base_file_is_skipped_silently(tmp_path: Path) -> None:
    oem = write(tmp_path, "oem.yml", "hostname: oem\n")
    config = load(base_file=tmp_path / "absent.yml", oem_file=oem)
    assert config.errors == []
    assert config.sources == ["defaults", str(oem), "kernel command line"]
    assert config.values["hostname"] == "oem"


def test_missing_oem_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "oem" / "kurma.yml"
    config = load(base_file=tmp_path / "absent.yml", oem_file=missing)
    assert config.errors == [f"{missing}: No such file or directory"]
    assert str(missing) not in config.sources


def test_missing_extra_file_is_an_error(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yml", "hostname: base\n")
    missing = tmp_path / "extra.yml"
    config = load(base_file=base, cmdline=f"kurma.config={missing}")
    assert config.errors == [f"{missing}: No such file or directory"]
    assert config.values["hostname"] == "base"


def test_file_that_is_not_yaml_is_ignored_with_its_line(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yml", "hostname: base\n")
    oem = write(tmp_path, "oem.yml", "hostname: oem\ndebug: true\napi: listen: 1:2\n")
    config = load(base_file=base, oem_file=oem)
    assert config.errors == [f"{oem}: not valid YAML at line 3 (the file is ignored)"]
    assert config.values["hostname"] == "base"
    assert config.values["debug"] is False
    assert str(oem) not in config.sources


def test_parse_file_reports_the_yaml_line() -> None:
    with pytest.raises(ConfigError, match=r"^kurma.yml: not valid YAML at line 2$"):
        parse_file("hostname: kurma\n  debug: true\n", "kurma.yml")


def test_file_whose_top_level_is_a_list_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "oem.yml", "- hostname: x\n- debug: true\n")
    config = load(base_file=tmp_path / "absent.yml", oem_file=path)
    assert config.errors == [
        f"{path}: must be a mapping of settings, not list (the file is ignored)"
    ]
    assert config.values == DEFAULTS


def test_empty_file_is_an_empty_layer(tmp_path: Path) -> None:
    assert parse_file("", "x") == {}
    assert parse_file("# only a comment\n", "x") == {}
    assert problems(tmp_path, "") == []


# --- sections that fall back ------------------------------------------------------------------


def test_unknown_top_level_key_names_it_and_the_known_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "kurma.yml", "hostnmae: x\nhostname: good\n")
    assert validate_file(path) == [f"{path}: hostnmae: unknown key (known: {KNOWN_TOP})"]
    assert "api, " in KNOWN_TOP
    assert (
        "hostname, images, initial_pods, modules, network, pod_networks, registries, state_dir"
        in KNOWN_TOP
    )


def test_wrong_typed_sections_fall_back_and_the_rest_applies(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yml", "hostname: base\nnetwork: {dns: [1.1.1.1]}\n")
    oem = write(
        tmp_path,
        "oem.yml",
        "hostname: 5\ndebug: 'yes'\nnetwork: {mtu: 1500}\nmodules: [virtio_net]\n"
        "state_dir: /data/kurmad\n",
    )
    config = load(base_file=base, oem_file=oem)
    assert config.values["hostname"] == "base"
    assert config.values["debug"] is False
    assert config.values["network"]["dns"] == ["1.1.1.1"]
    assert "mtu" not in config.values["network"]
    assert config.values["modules"] == ["virtio_net"]
    assert config.values["state_dir"] == "/data/kurmad"
    keeps = "(this section keeps its previous value)"
    assert config.errors == [
        f"{oem}: hostname: must be a string, not int {keeps}",
        f"{oem}: debug: must be true or false, not str {keeps}",
        f"{oem}: network.mtu: unknown key (known: dhcp_timeout, dns, interfaces, link_timeout) {keeps}",
    ]


def test_a_bad_key_inside_a_mapping_drops_that_whole_layer_of_the_section(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yml", "api: {listen: '10.0.0.1:7000'}\n")
    oem = write(tmp_path, "oem.yml", "api: {listen: '10.0.0.2:7000', port: 1}\n")
    config = load(base_file=base, oem_file=oem)
    assert config.values["api"]["listen"] == "10.0.0.1:7000"
    assert len(config.errors) == 1
    assert (
        "api.port: unknown key (known: allow_host_volumes, insecure, listen, tls_dir)"
        in config.errors[0]
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hostname: -bad\n", "hostname: '-bad' is not a valid host name"),
        ("hostname: bad-\n", "hostname: 'bad-' is not a valid host name"),
        ("hostname: under_score\n", "hostname: 'under_score' is not a valid host name"),
        (f"hostname: {'a' * 64}\n", f"hostname: '{'a' * 64}' is not a valid host name"),
        ("hostname: ''\n", "hostname: '' is not a valid host name"),
    ],
)
def test_invalid_hostnames(tmp_path: Path, text: str, message: str) -> None:
    assert message in only_problem(tmp_path, text)


@pytest.mark.parametrize("name", ["a", "node-01", "A1", "a" * 63])
def test_valid_hostnames(tmp_path: Path, name: str) -> None:
    assert problems(tmp_path, f"hostname: {name}\n") == []


def test_debug_must_be_a_boolean(tmp_path: Path) -> None:
    assert "debug: must be true or false, not int" in only_problem(tmp_path, "debug: 1\n")


def test_modules_must_be_module_names(tmp_path: Path) -> None:
    assert "modules[1]: 'bad name' is not a module name" in only_problem(
        tmp_path, "modules: [virtio-net, bad name]\n"
    )
    assert "modules: must be a list, not str" in only_problem(tmp_path, "modules: virtio_net\n")


def test_hardware_flags(tmp_path: Path) -> None:
    assert "hardware.coldplug: must be true or false, not str" in only_problem(
        tmp_path, "hardware: {coldplug: 'no'}\n"
    )
    assert "hardware.usb: unknown key (known: coldplug, hotplug)" in only_problem(
        tmp_path, "hardware: {usb: true}\n"
    )


def test_cgroups_version(tmp_path: Path) -> None:
    assert "cgroups: 'v3' must be v1 or v2" in only_problem(tmp_path, "cgroups: v3\n")
    assert problems(tmp_path, "cgroups: v1\n") == []


def test_images_must_be_strings(tmp_path: Path) -> None:
    assert "images[1]: must be a string, not int" in only_problem(tmp_path, "images: [a, 5]\n")


# --- disks ----------------------------------------------------------------------------------


def test_a_good_disk(tmp_path: Path) -> None:
    text = (
        "disks:\n"
        "  - {match: {label: DATA}, format: true, mount: /var/lib/kurmad, grow: true}\n"
        "  - {match: {uuid: 1234-abcd}, format: force, filesystem: ext4}\n"
        "  - {match: {path: /dev/vdb}, format: false}\n"
    )
    assert problems(tmp_path, text) == []


@pytest.mark.parametrize(
    ("match", "message"),
    [
        ("{}", "disks[0].match: give exactly one of label, uuid, path"),
        ("{label: A, uuid: B}", "disks[0].match: give exactly one of label, uuid, path"),
        ("{name: sda}", "disks[0].match.name: unknown key (known: label, path, uuid)"),
        ("/dev/vdb", "disks[0].match: must be a mapping, not str"),
    ],
)
def test_disk_match_needs_exactly_one_of_label_uuid_path(
    tmp_path: Path, match: str, message: str
) -> None:
    assert message in only_problem(tmp_path, f"disks: [{{match: {match}}}]\n")


def test_disk_without_match(tmp_path: Path) -> None:
    assert "disks[0].match: must be a mapping, not NoneType" in only_problem(
        tmp_path, "disks: [{mount: /data}]\n"
    )


@pytest.mark.parametrize("value", ["maybe", "'yes'", "'true'"])
def test_disk_format_must_be_true_false_or_force(tmp_path: Path, value: str) -> None:
    text = f"disks: [{{match: {{label: D}}, format: {value}}}]\n"
    assert "disks[0].format: must be true, false or force" in only_problem(tmp_path, text)


def test_disk_format_refuses_numbers(tmp_path: Path) -> None:
    # 1 == True in Python, but disks.prepare() formats only on `format is True` or "force":
    # a 1 here would pass the check and then silently never format.
    text = "disks: [{match: {label: D}, format: 1}]\n"
    assert "disks[0].format: must be true, false or force" in only_problem(tmp_path, text)


def test_disk_mount_must_be_absolute(tmp_path: Path) -> None:
    text = "disks: [{match: {label: A}}, {match: {label: B}, mount: data}]\n"
    assert "disks[1].mount: must be an absolute path" in only_problem(tmp_path, text)


def test_disk_filesystem_and_unknown_keys(tmp_path: Path) -> None:
    assert "disks[0].filesystem: only ext4 is supported" in only_problem(
        tmp_path, "disks: [{match: {label: D}, filesystem: xfs}]\n"
    )
    assert "disks[0].size: unknown key" in only_problem(
        tmp_path, "disks: [{match: {label: D}, size: 10G}]\n"
    )


# --- network --------------------------------------------------------------------------------


def test_a_good_network(tmp_path: Path) -> None:
    text = (
        "network:\n"
        "  interfaces:\n"
        "    - {match: {name: eth0}, address: 10.0.0.5/24, gateway: 10.0.0.1, mtu: 9000}\n"
        "    - {match: {mac: '52:54:00:12:34:56'}, dhcp: true, mtu: 68}\n"
        "    - {address: 'fd00::5/64', gateway: 'fd00::1', mtu: 65535}\n"
        "  dns: [1.1.1.1, '2606:4700:4700::1111']\n"
        "  link_timeout: 2.5\n"
        "  dhcp_timeout: 30\n"
    )
    assert problems(tmp_path, text) == []


def test_interface_address_needs_a_prefix(tmp_path: Path) -> None:
    assert "network.interfaces[0].address: give a prefix length, e.g. 10.0.0.5/24" in only_problem(
        tmp_path, "network: {interfaces: [{address: 10.0.0.5}]}\n"
    )


def test_interface_address_must_be_an_address(tmp_path: Path) -> None:
    assert "network.interfaces[0].address: '10.0.0.300/24' is not ADDRESS/PREFIX" in only_problem(
        tmp_path, "network: {interfaces: [{address: 10.0.0.300/24}]}\n"
    )


def test_interface_gateway_must_be_an_address(tmp_path: Path) -> None:
    text = (
        "network: {interfaces: [{address: 10.0.0.5/24}, {address: 10.0.1.5/24, gateway: router}]}\n"
    )
    assert "network.interfaces[1].gateway: 'router' is not an address" in only_problem(
        tmp_path, text
    )


@pytest.mark.parametrize("mtu", ["67", "65536", "'1500'", "true", "1500.0"])
def test_interface_mtu_range(tmp_path: Path, mtu: str) -> None:
    text = f"network: {{interfaces: [{{mtu: {mtu}}}]}}\n"
    assert "network.interfaces[0].mtu: must be a number from 68 to 65535" in only_problem(
        tmp_path, text
    )


def test_interface_unknown_keys(tmp_path: Path) -> None:
    assert "network.interfaces[0].vlan: unknown key" in only_problem(
        tmp_path, "network: {interfaces: [{vlan: 5}]}\n"
    )
    assert "network.interfaces[0].match.driver: unknown key (known: mac, name)" in only_problem(
        tmp_path, "network: {interfaces: [{match: {driver: virtio}}]}\n"
    )


def test_dns_servers_must_be_addresses(tmp_path: Path) -> None:
    assert "network.dns[1]: 'dns.google' is not an address" in only_problem(
        tmp_path, "network: {dns: [1.1.1.1, dns.google]}\n"
    )


def test_booleans_are_not_numbers(tmp_path: Path) -> None:
    assert "network.link_timeout: must be a number, not true/false" in only_problem(
        tmp_path, "network: {link_timeout: true}\n"
    )


def test_timeouts_must_be_numbers(tmp_path: Path) -> None:
    assert "network.dhcp_timeout: must be a number, not str" in only_problem(
        tmp_path, "network: {dhcp_timeout: '10'}\n"
    )


# --- api --------------------------------------------------------------------------------------


@pytest.mark.parametrize("listen", ["'0.0.0.0:7777'", "'[::]:7777'", "'kurma.local:443'", "''"])
def test_api_listen_good(tmp_path: Path, listen: str) -> None:
    assert problems(tmp_path, f"api: {{listen: {listen}}}\n") == []


@pytest.mark.parametrize("listen", ["'7777'", "'localhost:http'", "'a b:1'", "':7777'"])
def test_api_listen_must_be_host_port(tmp_path: Path, listen: str) -> None:
    assert "must be HOST:PORT" in only_problem(tmp_path, f"api: {{listen: {listen}}}\n")
    assert "api.listen: " in only_problem(tmp_path, f"api: {{listen: {listen}}}\n")


def test_api_insecure_must_be_a_boolean(tmp_path: Path) -> None:
    # boot.start_api() uses bool(api["insecure"]): the string 'false' would turn TLS off.
    assert "api.insecure: must be true or false, not str" in only_problem(
        tmp_path, "api: {insecure: 'false'}\n"
    )


# --- initial pods -------------------------------------------------------------------------------


def test_good_initial_pods(tmp_path: Path) -> None:
    text = (
        "initial_pods:\n"
        "  - {name: sshd, image: example.com/sshd, restart: on-failure, exec: [/sbin/sshd, -D]}\n"
        "  - {name: job, manifest: {acKind: PodManifest}, restart: never}\n"
        "  - {name: web, image: nginx, env: {A: b}, volumes: ['/srv:/srv:ro']}\n"
    )
    assert problems(tmp_path, text) == []


@pytest.mark.parametrize("pod", ["{image: busybox}", "{name: x}", "{name: x, restart: always}"])
def test_initial_pod_needs_name_and_image(tmp_path: Path, pod: str) -> None:
    assert "initial_pods[0]: needs a name and an image (or a manifest)" in only_problem(
        tmp_path, f"initial_pods: [{pod}]\n"
    )


def test_initial_pod_restart_policy(tmp_path: Path) -> None:
    text = "initial_pods: [{name: a, image: b}, {name: c, image: d, restart: sometimes}]\n"
    assert "initial_pods[1].restart: must be always, on-failure or never" in only_problem(
        tmp_path, text
    )


def test_initial_pod_unknown_key(tmp_path: Path) -> None:
    assert (
        "initial_pods[0].command: unknown key "
        "(known: devices, env, exec, host_network, image, manifest, name, restart, volumes)"
    ) in only_problem(tmp_path, "initial_pods: [{name: a, image: b, command: x}]\n")


# --- validate_file and the CLI -----------------------------------------------------------------

GOOD_FILE = """\
hostname: node-1
debug: false
modules: [virtio_net, overlay]
hardware: {coldplug: true, hotplug: false}
disks:
  - {match: {label: KURMA_DATA}, format: true, mount: /var/lib/kurmad}
network:
  interfaces:
    - {match: {name: eth0}, address: 10.0.0.5/24, gateway: 10.0.0.1}
  dns: [10.0.0.1]
api: {listen: '0.0.0.0:7777'}
initial_pods:
  - {name: sshd, image: example.com/sshd, restart: always}
"""


def test_validate_file_good(tmp_path: Path) -> None:
    assert problems(tmp_path, GOOD_FILE) == []


def test_validate_file_lists_every_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "kurma.yml", "hostname: 5\ncgroups: v3\nfoo: 1\n")
    found = validate_file(path)
    assert len(found) == 3
    assert found[0].startswith(f"{path}: hostname: must be a string")
    assert found[1].startswith(f"{path}: cgroups: 'v3' must be v1 or v2")
    assert found[2] == f"{path}: foo: unknown key (known: {KNOWN_TOP})"


def test_validate_file_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    path = write(tmp_path, "kurma.yml", "a: b: c\n")
    assert validate_file(path) == [f"{path}: not valid YAML at line 1"]
    missing = tmp_path / "absent.yml"
    assert validate_file(missing) == [f"{missing}: No such file or directory"]


def run_validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kurmad", "config", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_cli_validate_good_file(tmp_path: Path) -> None:
    path = write(tmp_path, "kurma.yml", GOOD_FILE)
    result = run_validate(path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{path}: ok\n"
    assert result.stderr == ""


def test_cli_validate_bad_file(tmp_path: Path) -> None:
    path = write(tmp_path, "kurma.yml", "hostname: node-1\nnetwork: {dns: [nameserver]}\n")
    result = run_validate(path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert f"{path}: network.dns[0]: 'nameserver' is not an address" in result.stderr


@pytest.mark.parametrize(
    ("pod", "message"),
    [
        (
            {"name": "a", "image": "x", "volumes": ["/only-one-part"]},
            "initial_pods[0].volumes[0]: volume '/only-one-part'",
        ),
        ({"name": "a", "image": "x", "volumes": ["/a:/b:rx"]}, "expected HOST:PATH[:ro]"),
        ({"name": "a", "image": "x", "exec": "/bin/sh"}, "initial_pods[0].exec: must be a list"),
        ({"name": "a", "manifest": "not a mapping"}, "initial_pods[0].manifest: must be a mapping"),
        (
            {"name": "a", "image": "x", "devices": "/dev/ttyS0"},
            "initial_pods[0].devices: must be a list",
        ),
        (
            {"name": "a", "image": "x", "devices": ["ttyS0"]},
            "initial_pods[0].devices[0]: 'ttyS0' must be a path under /dev",
        ),
    ],
)
def test_initial_pod_fields_are_checked(pod: dict[str, Any], message: str) -> None:
    config = LoadedConfig()
    merge_layer(config, {"initial_pods": [pod]}, "f.yml")
    assert len(config.errors) == 1 and message in config.errors[0]
    assert config.values["initial_pods"] == []


def test_initial_pod_names_are_unique() -> None:
    config = LoadedConfig()
    merge_layer(
        config,
        {"initial_pods": [{"name": "a", "image": "x"}, {"name": "a", "image": "y"}]},
        "f.yml",
    )
    assert "initial_pods[1].name: 'a' is given twice" in config.errors[0]


def test_pod_networks_are_checked(tmp_path: Path) -> None:
    problem = only_problem(
        tmp_path,
        "pod_networks: [{name: a, subnet: 10.1.0.0/16}, {name: b, subnet: 10.1.2.0/24}]\n",
    )
    assert (
        "pod_networks: network b: subnet 10.1.2.0/24 overlaps 10.1.0.0/16 of network a" in problem
    )
    assert "a name is needed" in only_problem(tmp_path, "pod_networks: [{subnet: 10.2.0.0/16}]\n")


def test_the_host_paths_operators_may_mount_are_absolute(tmp_path: Path) -> None:
    config = LoadedConfig()
    merge_layer(config, {"api": {"allow_host_volumes": ["/srv/data", "relative"]}}, "f.yml")
    assert "api.allow_host_volumes[1]: 'relative' must be an absolute path" in config.errors[0]
    merge_layer(config, {"api": {"allow_host_volumes": ["/srv/data"]}}, "g.yml")
    assert config.values["api"]["allow_host_volumes"] == ["/srv/data"]


# --- the typed configuration ------------------------------------------------------------------


def test_the_stages_read_typed_sections(tmp_path: Path) -> None:
    text = (
        "hostname: node-1\nmodules: [virtio_net, overlay]\nstate_dir: /data/kurmad\n"
        "hardware: {hotplug: false}\n"
        "disks: [{match: {label: KURMA_DATA}, format: true, mount: /var/lib/kurmad}]\n"
        "network: {interfaces: [{match: {name: eth0}, address: 10.0.0.5/24, gateway: 10.0.0.1}],"
        " dns: [10.0.0.1]}\n"
        "api: {listen: '0.0.0.0:7777', tls_dir: /etc/kurma/tls, allow_host_volumes: [/srv]}\n"
        "initial_pods:\n"
        "  - {name: ntp, image: kurma.io/ntp, host_network: true, restart: on-failure,\n"
        "     exec: [ntpd, 5], env: {N: 1}, volumes: ['/var/log:/log:ro'], devices: [/dev/rtc0]}\n"
        "  - {name: job, manifest: {acKind: PodManifest}}\n"
    )
    config = load(base_file=write(tmp_path, "kurma.yml", text)).config
    assert (config.hostname, config.modules, config.state_dir) == (
        "node-1", ("virtio_net", "overlay"), Path("/data/kurmad"))  # fmt: skip
    assert config.hardware == Hardware(coldplug=True, hotplug=False)
    (disk,) = config.disks
    assert disk == DiskConfig(
        DiskMatch("label", "KURMA_DATA"), format=True, mount="/var/lib/kurmad"
    )
    assert (disk.wait_seconds, disk.filesystem_label) == (5.0, "KURMA_DATA")
    (interface,) = config.network.interfaces
    assert interface == InterfaceConfig("eth0", None, None, "10.0.0.5/24", "10.0.0.1")
    assert (config.network.dns, config.network.link_timeout) == (("10.0.0.1",), 10.0)
    assert config.api == ApiConfig("0.0.0.0:7777", False, "/etc/kurma/tls", ("/srv",))
    ntp, job = config.initial_pods
    assert ntp == InitialPod(
        "ntp", RestartPolicy.ON_FAILURE, "kurma.io/ntp", ("ntpd", "5"), {"N": "1"},
        (("/var/log", "/log", True),), True, ("/dev/rtc0",),
    )  # fmt: skip
    assert (job.restart, job.manifest, job.image) == (
        RestartPolicy.ALWAYS,
        {"acKind": "PodManifest"},
        None,
    )


def test_the_yaml_form_parses_back_to_the_same_config(tmp_path: Path) -> None:
    volumes = "restart: always, volumes: ['/x:/y:rw', '/p:/q:ro'], env: {A: b}}"
    text = GOOD_FILE.replace("restart: always}", volumes) + "pod_networks: []\nimages: [/a.aci]\n"
    loaded = load(base_file=write(tmp_path, "kurma.yml", text))
    again = LoadedConfig()
    merge_layer(again, loaded.values, "again")
    assert again.errors == []
    assert again.config == loaded.config


def test_a_section_that_fails_keeps_its_typed_value(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yml", "network: {dns: [1.1.1.1], link_timeout: 3}\n")
    oem = write(tmp_path, "oem.yml", "network: {dns: [nameserver]}\n")
    config = load(base_file=base, oem_file=oem).config
    assert config.network.dns == ("1.1.1.1",)
    assert config.network.link_timeout == 3.0
    assert config.network.interfaces == NetworkConfig().interfaces
