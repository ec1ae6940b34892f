"""The boot configuration, merged in order: built-in defaults, /etc/kurma.yml of the initramfs,
an OEM file on a disk found by label, then ``kurma.*`` options on the kernel command line.

Every section is checked on its own: a section with an error is reported and falls back to its
defaults, and the rest of the configuration still applies (boot goes on)."""

from __future__ import annotations

import copy
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kurmad.net.config import NetworkError, check_network_configs
from kurmad.pods.restart import POLICIES, parse_volume

from .power import DEFAULT_CONFIG_FILE

OEM_LABEL = "KURMA_OEM"
OEM_FILE = "kurma.yml"

DEFAULTS: dict[str, Any] = {
    "hostname": "kurma",
    "debug": False,
    "modules": [],
    "hardware": {"coldplug": True, "hotplug": True},
    "cgroups": "v2",
    "state_dir": "/var/lib/kurmad",
    "cgroup_parent": "kurmad",
    "disks": [],
    "network": {
        "interfaces": [{"match": {"name": "eth*"}, "dhcp": True}],
        "dns": [],
        "link_timeout": 10.0,
        "dhcp_timeout": 15.0,
    },
    "api": {"listen": "0.0.0.0:7777", "insecure": False, "tls_dir": ""},
    "images": [],
    "initial_pods": [],
    # Networks for pods (net/config.py); a pod joins the first unless it names others.
    "pod_networks": [{"name": "kurma0", "type": "bridge", "subnet": "10.222.0.0/16"}],
}

_DISK_KEYS = {
    "match",
    "format",
    "filesystem",
    "label",
    "grow",
    "mount",
    "state",
    "wait",
    "optional",
}
_INTERFACE_KEYS = {"match", "dhcp", "address", "gateway", "mtu"}
_POD_KEYS = {
    "name", "image", "exec", "env", "restart", "manifest", "volumes", "host_network", "devices",
}  # fmt: skip


class ConfigError(ValueError):
    """One section is wrong; ``str()`` names the key and the rule."""


@dataclass
class LoadedConfig:
    values: dict[str, Any]
    sources: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


# --- checking ----------------------------------------------------------------------------------


def _expect(value: Any, kind: type | tuple[type, ...], path: str) -> Any:
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise ConfigError(f"{path}: must be a number, not true/false")
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ConfigError(f"{path}: must be {_article(names)}, not {type(value).__name__}")
    return value


def _article(name: str) -> str:
    friendly = {"str": "a string", "bool": "true or false", "list": "a list", "dict": "a mapping", "int": "a number",
                "float": "a number", "int or float": "a number"}  # fmt: skip
    return friendly.get(name, name)


def _known_keys(value: Mapping[str, Any], allowed: set[str], path: str) -> None:
    for key in value:
        if key not in allowed:
            raise ConfigError(
                f"{path}{'.' if path else ''}{key}: unknown key (known: {', '.join(sorted(allowed))})"
            )


def _check_hostname(value: Any) -> None:
    name = _expect(value, str, "hostname")
    if not re.fullmatch(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?", name):
        raise ConfigError(f"hostname: {name!r} is not a valid host name")


def _check_modules(value: Any) -> None:
    for i, module in enumerate(_expect(value, list, "modules")):
        if not isinstance(module, str) or not re.fullmatch(r"[\w-]+", module):
            raise ConfigError(f"modules[{i}]: {module!r} is not a module name")


def _check_hardware(value: Any) -> None:
    _expect(value, dict, "hardware")
    _known_keys(value, {"coldplug", "hotplug"}, "hardware")
    for key, flag in value.items():
        _expect(flag, bool, f"hardware.{key}")


def _check_cgroups(value: Any) -> None:
    if value not in ("v1", "v2"):
        raise ConfigError(f"cgroups: {value!r} must be v1 or v2")


def _check_disks(value: Any) -> None:
    for i, disk in enumerate(_expect(value, list, "disks")):
        path = f"disks[{i}]"
        _expect(disk, dict, path)
        _known_keys(disk, _DISK_KEYS, path)
        match = _expect(disk.get("match"), dict, f"{path}.match")
        _known_keys(match, {"label", "uuid", "path"}, f"{path}.match")
        if len(match) != 1:
            raise ConfigError(f"{path}.match: give exactly one of label, uuid, path")
        policy = disk.get("format", False)
        if not (isinstance(policy, bool) or policy == "force"):
            raise ConfigError(f"{path}.format: must be true, false or force")
        if disk.get("filesystem", "ext4") != "ext4":
            raise ConfigError(f"{path}.filesystem: only ext4 is supported")
        if "mount" in disk and not str(disk["mount"]).startswith("/"):
            raise ConfigError(f"{path}.mount: must be an absolute path")
        if "wait" in disk:
            _expect(disk["wait"], (int, float), f"{path}.wait")
        for flag in ("grow", "state", "optional"):
            if flag in disk:
                _expect(disk[flag], bool, f"{path}.{flag}")


def _check_network(value: Any) -> None:
    _expect(value, dict, "network")
    _known_keys(value, {"interfaces", "dns", "link_timeout", "dhcp_timeout"}, "network")
    for i, interface in enumerate(_expect(value.get("interfaces", []), list, "network.interfaces")):
        path = f"network.interfaces[{i}]"
        _expect(interface, dict, path)
        _known_keys(interface, _INTERFACE_KEYS, path)
        match = _expect(interface.get("match", {}), dict, f"{path}.match")
        _known_keys(match, {"name", "mac"}, f"{path}.match")
        if "dhcp" in interface:
            _expect(interface["dhcp"], bool, f"{path}.dhcp")
        if "address" in interface:
            try:
                ipaddress.ip_interface(interface["address"])
            except ValueError:
                raise ConfigError(
                    f"{path}.address: {interface['address']!r} is not ADDRESS/PREFIX"
                ) from None
            if "/" not in str(interface["address"]):
                raise ConfigError(f"{path}.address: give a prefix length, e.g. 10.0.0.5/24")
        if "gateway" in interface:
            try:
                ipaddress.ip_address(interface["gateway"])
            except ValueError:
                raise ConfigError(
                    f"{path}.gateway: {interface['gateway']!r} is not an address"
                ) from None
        if "mtu" in interface and not (
            isinstance(interface["mtu"], int) and 68 <= interface["mtu"] <= 65535
        ):
            raise ConfigError(f"{path}.mtu: must be a number from 68 to 65535")
    for i, server in enumerate(_expect(value.get("dns", []), list, "network.dns")):
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise ConfigError(f"network.dns[{i}]: {server!r} is not an address") from None
    for key in ("link_timeout", "dhcp_timeout"):
        if key in value:
            _expect(value[key], (int, float), f"network.{key}")


def _check_api(value: Any) -> None:
    _expect(value, dict, "api")
    _known_keys(value, {"listen", "insecure", "tls_dir", "allow_host_volumes"}, "api")
    if "insecure" in value:
        _expect(value["insecure"], bool, "api.insecure")
    for i, path in enumerate(
        _expect(value.get("allow_host_volumes", []), list, "api.allow_host_volumes")
    ):
        if not isinstance(path, str) or not path.startswith("/"):
            raise ConfigError(f"api.allow_host_volumes[{i}]: {path!r} must be an absolute path")
    if "tls_dir" in value:
        _expect(value["tls_dir"], str, "api.tls_dir")
    listen = value.get("listen", "")
    if listen and not re.fullmatch(r"[^\s:]+:\d+|\[[0-9a-fA-F:]+\]:\d+", str(listen)):
        raise ConfigError(f"api.listen: {listen!r} must be HOST:PORT")


def _check_initial_pods(value: Any) -> None:
    names = set()
    for i, pod in enumerate(_expect(value, list, "initial_pods")):
        path = f"initial_pods[{i}]"
        _expect(pod, dict, path)
        _known_keys(pod, _POD_KEYS, path)
        if "name" not in pod or ("image" not in pod and "manifest" not in pod):
            raise ConfigError(f"{path}: needs a name and an image (or a manifest)")
        if pod["name"] in names:
            raise ConfigError(f"{path}.name: {pod['name']!r} is given twice")
        names.add(pod["name"])
        if pod.get("restart", "always") not in POLICIES:
            raise ConfigError(f"{path}.restart: must be always, on-failure or never")
        for key, kind in (
            ("image", str),
            ("exec", list),
            ("env", dict),
            ("manifest", dict),
            ("volumes", list),
            ("devices", list),
        ):
            if key in pod:
                _expect(pod[key], kind, f"{path}.{key}")
        for j, device in enumerate(pod.get("devices", [])):
            if not isinstance(device, str) or not device.startswith("/dev/"):
                raise ConfigError(f"{path}.devices[{j}]: {device!r} must be a path under /dev")
        for j, volume in enumerate(pod.get("volumes", [])):
            try:
                parse_volume(_expect(volume, str, f"{path}.volumes[{j}]"))
            except ValueError as err:
                raise ConfigError(f"{path}.volumes[{j}]: {err}") from None


def _check_pod_networks(value: Any) -> None:
    for i, network in enumerate(_expect(value, list, "pod_networks")):
        _expect(network, dict, f"pod_networks[{i}]")
    try:
        check_network_configs(value)
    except NetworkError as err:
        raise ConfigError(f"pod_networks: {err}") from None


def _check_list_of_strings(key: str) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        for i, item in enumerate(_expect(value, list, key)):
            _expect(item, str, f"{key}[{i}]")

    return check


_CHECKS: dict[str, Callable[[Any], None]] = {
    "hostname": _check_hostname,
    "debug": lambda v: _expect(v, bool, "debug"),
    "modules": _check_modules,
    "hardware": _check_hardware,
    "cgroups": _check_cgroups,
    "state_dir": lambda v: _expect(v, str, "state_dir"),
    "cgroup_parent": lambda v: _expect(v, str, "cgroup_parent"),
    "disks": _check_disks,
    "network": _check_network,
    "api": _check_api,
    "images": _check_list_of_strings("images"),
    "initial_pods": _check_initial_pods,
    "pod_networks": _check_pod_networks,
}


# --- loading and merging -----------------------------------------------------------------------------


def parse_file(text: str, source: str) -> dict[str, Any]:
    """A config file's mapping; raises ConfigError for anything that is not one."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"{source}: not valid YAML{line}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"{source}: must be a mapping of settings, not {type(document).__name__}")
    return document


def merge_layer(config: LoadedConfig, layer: Mapping[str, Any], source: str) -> None:
    """Apply one layer key by key; a bad key is reported and the section keeps its value."""
    config.sources.append(source)
    for key, value in layer.items():
        check = _CHECKS.get(key)
        if check is None:
            config.errors.append(
                f"{source}: {key}: unknown key (known: {', '.join(sorted(_CHECKS))})"
            )
            continue
        merged = _merged(config.values.get(key), value)
        try:
            check(merged)
        except ConfigError as err:
            config.errors.append(f"{source}: {err} (this section keeps its previous value)")
            continue
        config.values[key] = merged


def _merged(current: Any, new: Any) -> Any:
    """Mappings merge (network, api); anything else is replaced."""
    if isinstance(current, dict) and isinstance(new, dict):
        return {**current, **new}
    return copy.deepcopy(new)


def validate_file(path: Path) -> list[str]:
    """Every problem in a config file, for ``kurmad config validate``."""
    try:
        layer = parse_file(path.read_text(), str(path))
    except OSError as err:
        return [f"{path}: {err.strerror}"]
    except ConfigError as err:
        return [str(err)]
    config = LoadedConfig(copy.deepcopy(DEFAULTS))
    merge_layer(config, layer, str(path))
    return config.errors


# --- the kernel command line ---------------------------------------------------------------------------


def parse_cmdline(cmdline: str) -> tuple[dict[str, Any], Path | None, list[str]]:
    """``kurma.*`` options as a config layer, the ``kurma.config=`` file if given, and errors."""
    layer: dict[str, Any] = {}
    config_file = None
    errors = []
    for word in cmdline.split():
        if not word.startswith("kurma."):
            continue
        key, has_value, value = word[len("kurma.") :].partition("=")
        if key == "hostname":
            layer["hostname"] = value
        elif key == "modules":
            layer["modules"] = [m for m in value.split(",") if m]
        elif key == "debug":
            layer["debug"] = not has_value or value not in ("0", "false", "no")
        elif key == "config":
            config_file = Path(value)
        elif key == "ip":
            try:
                layer["network"] = {"interfaces": [_static_interface(value)]}
            except ConfigError as err:
                errors.append(f"kernel command line: {err}")
        elif key == "cgroups":
            layer["cgroups"] = value
        else:
            errors.append(f"kernel command line: kurma.{key}: unknown option")
    return layer, config_file, errors


def _static_interface(value: str) -> dict[str, Any]:
    """``kurma.ip=ADDRESS/PREFIX[,GATEWAY[,INTERFACE]]``."""
    address, _, rest = value.partition(",")
    gateway, _, name = rest.partition(",")
    interface: dict[str, Any] = {
        "match": {"name": name or "eth*"},
        "dhcp": False,
        "address": address,
    }
    if gateway:
        interface["gateway"] = gateway
    try:
        ipaddress.ip_interface(address)
    except ValueError:
        raise ConfigError(
            f"kurma.ip={value}: expected ADDRESS/PREFIX[,GATEWAY[,INTERFACE]]"
        ) from None
    return interface


def load(
    base_file: Path = DEFAULT_CONFIG_FILE,
    cmdline: str = "",
    oem_file: Path | None = None,
) -> LoadedConfig:
    """The merged configuration and every error met on the way."""
    config = LoadedConfig(copy.deepcopy(DEFAULTS), ["defaults"])
    cmdline_layer, extra_file, cmdline_errors = parse_cmdline(cmdline)
    for path in [p for p in (base_file, oem_file, extra_file) if p is not None]:
        if path == base_file and not path.exists():
            continue
        try:
            merge_layer(config, parse_file(path.read_text(), str(path)), str(path))
        except OSError as err:
            config.errors.append(f"{path}: {err.strerror}")
        except ConfigError as err:
            config.errors.append(f"{err} (the file is ignored)")
    merge_layer(config, cmdline_layer, "kernel command line")
    config.errors.extend(cmdline_errors)
    return config
