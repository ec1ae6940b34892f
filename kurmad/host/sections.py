"""The sections of the boot configuration, as types. Each is parsed from its YAML once per layer
(host/config.py merges the layers) and checked as it is parsed: a ConfigError names the key
and the rule, and the section then keeps its previous value. ``to_json`` gives the YAML form
back, so a mapping section (hardware, network, api) merges with the next layer key by key.

Optional fields are None when not given, where the consumer tells "not given" from a value
(an interface's ``dhcp``, a disk's ``mount`` and ``wait``)."""

from __future__ import annotations

import copy
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from kurmad.images.oci.settings import RegistrySettings, SettingsError
from kurmad.net.config import NetworkError, NetworkSpec, parse_networks
from kurmad.net.interfaces import InterfaceConfig, NetworkConfig
from kurmad.pods.restart import RestartPolicy
from kurmad.volumes import parse_volume

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
_NETWORK_KEYS = {"interfaces", "dns", "link_timeout", "dhcp_timeout"}
_API_KEYS = {"listen", "insecure", "tls_dir", "allow_host_volumes"}
_POD_KEYS = {
    "name", "image", "exec", "env", "restart", "manifest", "volumes", "host_network", "devices",
}  # fmt: skip
_POD_FIELD_KINDS: tuple[tuple[str, type], ...] = (
    ("image", str), ("exec", list), ("env", dict), ("manifest", dict), ("volumes", list),
    ("devices", list),
)  # fmt: skip


class ConfigError(ValueError):
    """One section is wrong; ``str()`` names the key and the rule."""


# --- checking ----------------------------------------------------------------------------------


def expect(value: Any, kind: type | tuple[type, ...], path: str) -> Any:
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


def known_keys(value: Mapping[str, Any], allowed: Iterable[str], path: str) -> None:
    for key in value:
        if key not in allowed:
            raise ConfigError(
                f"{path}{'.' if path else ''}{key}: unknown key (known: {', '.join(sorted(allowed))})"
            )


def _address(value: Any, path: str) -> str:
    """An IP address as the config gives it (a string, or the number YAML may read one as)."""
    try:
        parsed = ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(f"{path}: {value!r} is not an address") from None
    return value if isinstance(value, str) else str(parsed)


def _number(value: Any, path: str) -> float:
    return float(expect(value, (int, float), path))


# --- scalar and list sections -------------------------------------------------------------------


def hostname(value: Any) -> str:
    name: str = expect(value, str, "hostname")
    if not re.fullmatch(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?", name):
        raise ConfigError(f"hostname: {name!r} is not a valid host name")
    return name


def modules(value: Any) -> tuple[str, ...]:
    for i, module in enumerate(expect(value, list, "modules")):
        if not isinstance(module, str) or not re.fullmatch(r"[\w-]+", module):
            raise ConfigError(f"modules[{i}]: {module!r} is not a module name")
    return tuple(value)


def cgroups(value: Any) -> Literal["v1", "v2"]:
    if value not in ("v1", "v2"):
        raise ConfigError(f"cgroups: {value!r} must be v1 or v2")
    return "v1" if value == "v1" else "v2"


def registries(value: Any) -> RegistrySettings:
    """How OCI images are pulled (images/oci/settings.py owns and checks the section)."""
    try:
        return RegistrySettings.from_json(value)
    except SettingsError as err:
        raise ConfigError(str(err)) from None


def strings(key: str, value: Any) -> tuple[str, ...]:
    return tuple(
        expect(item, str, f"{key}[{i}]") for i, item in enumerate(expect(value, list, key))
    )


def pod_networks(value: Any) -> tuple[NetworkSpec, ...]:
    """Pod networks, in net/config.py's types (net/ owns and checks them)."""
    for i, network in enumerate(expect(value, list, "pod_networks")):
        expect(network, dict, f"pod_networks[{i}]")
    try:
        return parse_networks(value)
    except NetworkError as err:
        raise ConfigError(f"pod_networks: {err}") from None


# --- hardware -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hardware:
    coldplug: bool = True  # load the drivers of the devices there at boot (their modalias)
    hotplug: bool = True  # and of those that come later (a pyudev monitor)

    @classmethod
    def from_json(cls, value: Any) -> Hardware:
        expect(value, dict, "hardware")
        known_keys(value, {"coldplug", "hotplug"}, "hardware")
        for key, flag in value.items():
            expect(flag, bool, f"hardware.{key}")
        return cls(**value)

    def to_json(self) -> dict[str, Any]:
        return {"coldplug": self.coldplug, "hotplug": self.hotplug}


# --- disks --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiskMatch:
    """Which disk: the one with this label, filesystem UUID or path (``by``)."""

    by: str  # label, uuid or path
    value: str

    @classmethod
    def from_json(cls, value: Any, path: str) -> DiskMatch:
        match = expect(value, dict, path)
        known_keys(match, ("label", "uuid", "path"), path)
        if len(match) != 1:
            raise ConfigError(f"{path}: give exactly one of label, uuid, path")
        ((by, wanted),) = match.items()
        return cls(by, str(wanted))

    def to_json(self) -> dict[str, Any]:
        return {self.by: self.value}

    def __str__(self) -> str:
        return f"{self.by}={self.value}"


@dataclass(frozen=True)
class DiskConfig:
    match: DiskMatch
    format: bool | Literal["force"] = False  # true: only a disk with no filesystem; force: any
    filesystem: str = "ext4"
    label: str = ""  # of a filesystem it makes; default: the label it is matched by
    grow: bool = False
    mount: str | None = None  # a state disk without one is mounted on the state directory
    state: bool = False  # images and pods live here
    wait: float | None = None  # seconds for it to appear; default 5, or 0 if optional
    optional: bool = False

    @classmethod
    def from_json(cls, value: Any, path: str) -> DiskConfig:
        disk = expect(value, dict, path)
        known_keys(disk, _DISK_KEYS, path)
        match = DiskMatch.from_json(disk.get("match"), f"{path}.match")
        policy = disk.get("format", False)
        if not (isinstance(policy, bool) or policy == "force"):
            raise ConfigError(f"{path}.format: must be true, false or force")
        if disk.get("filesystem", "ext4") != "ext4":
            raise ConfigError(f"{path}.filesystem: only ext4 is supported")
        if "mount" in disk and not str(disk["mount"]).startswith("/"):
            raise ConfigError(f"{path}.mount: must be an absolute path")
        wait = _number(disk["wait"], f"{path}.wait") if "wait" in disk else None
        flags = {flag: expect(disk[flag], bool, f"{path}.{flag}")
                 for flag in ("grow", "state", "optional") if flag in disk}  # fmt: skip
        mount = str(disk["mount"]) if "mount" in disk else None
        label = str(disk.get("label") or "")
        return cls(match=match, format=policy, label=label, mount=mount, wait=wait, **flags)

    @property
    def wait_seconds(self) -> float:
        if self.wait is not None:
            return self.wait
        return 0.0 if self.optional else 5.0

    @property
    def filesystem_label(self) -> str:
        return self.label or (self.match.value if self.match.by == "label" else "")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"match": self.match.to_json(), "format": self.format,
                               "filesystem": self.filesystem, "grow": self.grow,
                               "state": self.state, "optional": self.optional}  # fmt: skip
        given = {"label": self.label, "mount": self.mount, "wait": self.wait}
        out.update({key: value for key, value in given.items() if value not in (None, "")})
        return out


def disks(value: Any) -> tuple[DiskConfig, ...]:
    items = expect(value, list, "disks")
    return tuple(DiskConfig.from_json(disk, f"disks[{i}]") for i, disk in enumerate(items))


# --- network ------------------------------------------------------------------------------------


def interface_config(value: Any, path: str) -> InterfaceConfig:
    interface = expect(value, dict, path)
    known_keys(interface, _INTERFACE_KEYS, path)
    match = expect(interface.get("match", {}), dict, f"{path}.match")
    known_keys(match, ("name", "mac"), f"{path}.match")
    dhcp = expect(interface["dhcp"], bool, f"{path}.dhcp") if "dhcp" in interface else None
    address = _interface_address(interface["address"], path) if "address" in interface else None
    gateway = interface.get("gateway")
    if "gateway" in interface:
        gateway = _address(gateway, f"{path}.gateway")
    mtu = interface.get("mtu")
    if "mtu" in interface and not (isinstance(mtu, int) and 68 <= mtu <= 65535):
        raise ConfigError(f"{path}.mtu: must be a number from 68 to 65535")
    name, mac = (str(match[key]) if key in match else None for key in ("name", "mac"))
    return InterfaceConfig(name, mac, dhcp, address, gateway, mtu)


def _interface_address(value: Any, path: str) -> str:
    try:
        ipaddress.ip_interface(value)
    except ValueError:
        raise ConfigError(f"{path}.address: {value!r} is not ADDRESS/PREFIX") from None
    if "/" not in str(value):
        raise ConfigError(f"{path}.address: give a prefix length, e.g. 10.0.0.5/24")
    return str(value)


def network_config(value: Any) -> NetworkConfig:
    expect(value, dict, "network")
    known_keys(value, _NETWORK_KEYS, "network")
    entries = expect(value.get("interfaces", []), list, "network.interfaces")
    interfaces = tuple(interface_config(entry, f"network.interfaces[{i}]")
                       for i, entry in enumerate(entries))  # fmt: skip
    servers = expect(value.get("dns", []), list, "network.dns")
    dns = tuple(_address(server, f"network.dns[{i}]") for i, server in enumerate(servers))
    timeouts = {key: _number(value[key], f"network.{key}")
                for key in ("link_timeout", "dhcp_timeout") if key in value}  # fmt: skip
    return NetworkConfig(interfaces, dns, **timeouts)


# --- api ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiConfig:
    listen: str = "0.0.0.0:7777"  # HOST:PORT with mutual TLS; empty: the local socket only
    insecure: bool = False  # TCP without TLS
    tls_dir: str = ""  # empty: STATE_DIR/tls, made at first start
    allow_host_volumes: tuple[str, ...] = ()  # where any operator may mount host paths from

    @classmethod
    def from_json(cls, value: Any) -> ApiConfig:
        expect(value, dict, "api")
        known_keys(value, _API_KEYS, "api")
        insecure = expect(value["insecure"], bool, "api.insecure") if "insecure" in value else False
        paths = expect(value.get("allow_host_volumes", []), list, "api.allow_host_volumes")
        for i, path in enumerate(paths):
            if not isinstance(path, str) or not path.startswith("/"):
                raise ConfigError(f"api.allow_host_volumes[{i}]: {path!r} must be an absolute path")
        tls_dir = expect(value["tls_dir"], str, "api.tls_dir") if "tls_dir" in value else ""
        listen = value.get("listen", "")
        if listen and not re.fullmatch(r"[^\s:]+:\d+|\[[0-9a-fA-F:]+\]:\d+", str(listen)):
            raise ConfigError(f"api.listen: {listen!r} must be HOST:PORT")
        return cls(str(listen) if listen else "", insecure, tls_dir, tuple(paths))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"listen": self.listen, "insecure": self.insecure,
                               "tls_dir": self.tls_dir}  # fmt: skip
        if self.allow_host_volumes:
            out["allow_host_volumes"] = list(self.allow_host_volumes)
        return out


# --- initial pods -------------------------------------------------------------------------------


@dataclass(frozen=True)
class InitialPod:
    """A system pod, made through the API's door as the admin and kept by its restart policy
    (pods/supervisor.py): an image with a command, environment, volumes, devices and the host's
    network, or a whole pod manifest, which is checked when the pod is made (a bad one fails
    that pod, not the section)."""

    name: str
    restart: RestartPolicy = RestartPolicy.ALWAYS
    image: str | None = None
    exec: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    volumes: tuple[tuple[str, str, bool], ...] = ()  # HOST:PATH[:ro]: host path, path, read-only
    host_network: bool = False
    devices: tuple[str, ...] = ()
    manifest: Mapping[str, Any] | None = None

    @classmethod
    def from_json(cls, value: Any, path: str, taken: set[str]) -> InitialPod:
        """``taken``: the names of the entries before this one."""
        pod = expect(value, dict, path)
        known_keys(pod, _POD_KEYS, path)
        if "name" not in pod or ("image" not in pod and "manifest" not in pod):
            raise ConfigError(f"{path}: needs a name and an image (or a manifest)")
        if str(pod["name"]) in taken:
            raise ConfigError(f"{path}.name: {pod['name']!r} is given twice")
        try:
            restart = RestartPolicy(pod.get("restart", "always"))
        except ValueError:
            raise ConfigError(f"{path}.restart: must be always, on-failure or never") from None
        for key, kind in _POD_FIELD_KINDS:
            if key in pod:
                expect(pod[key], kind, f"{path}.{key}")
        for j, device in enumerate(pod.get("devices", [])):
            if not isinstance(device, str) or not device.startswith("/dev/"):
                raise ConfigError(f"{path}.devices[{j}]: {device!r} must be a path under /dev")
        return cls(
            name=str(pod["name"]), restart=restart, image=pod.get("image"),
            exec=tuple(str(a) for a in pod.get("exec", [])),
            env={str(k): str(v) for k, v in pod.get("env", {}).items()},
            volumes=_volumes(pod.get("volumes", []), path),
            host_network=bool(pod.get("host_network", False)),
            devices=tuple(pod.get("devices", [])), manifest=copy.deepcopy(pod.get("manifest")),
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        volumes = [f"{host}:{path}{':ro' if read_only else ''}"
                   for host, path, read_only in self.volumes]  # fmt: skip
        given = {"image": self.image, "exec": list(self.exec), "env": dict(self.env),
                 "volumes": volumes, "host_network": self.host_network,
                 "devices": list(self.devices), "manifest": copy.deepcopy(self.manifest)}  # fmt: skip
        return {"name": self.name, "restart": self.restart.value,
                **{key: value for key, value in given.items() if value}}  # fmt: skip


def _volumes(items: list[Any], path: str) -> tuple[tuple[str, str, bool], ...]:
    volumes = []
    for j, text in enumerate(items):
        where = f"{path}.volumes[{j}]"
        try:
            volumes.append(parse_volume(expect(text, str, where)))
        except ConfigError:
            raise
        except ValueError as err:
            raise ConfigError(f"{where}: {err}") from None
    return tuple(volumes)


def initial_pods(value: Any) -> tuple[InitialPod, ...]:
    pods: list[InitialPod] = []
    for i, entry in enumerate(expect(value, list, "initial_pods")):
        pods.append(InitialPod.from_json(entry, f"initial_pods[{i}]", {p.name for p in pods}))
    return tuple(pods)
