"""The boot configuration, merged in order: built-in defaults, /etc/kurma.yml of the initramfs,
an OEM file on a disk found by label, then ``kurma.*`` options on the kernel command line.

Every section is parsed into its type (sections.py) and checked on its own, once per layer: a
section with an error is reported and keeps its previous value, and the rest of the
configuration still applies (boot goes on). The stages read the typed ``BootConfig``; what
they decide at run time (the state disk, the fallback API) is boot state (host/tasks.py), not
a change to the config."""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kurmad.images.oci.settings import RegistrySettings
from kurmad.net.config import BridgeSpec, NetworkSpec
from kurmad.net.interfaces import NetworkConfig

from . import sections
from .power import DEFAULT_CONFIG_FILE
from .sections import (
    ApiConfig,
    ConfigError,
    DiskConfig,
    Hardware,
    InitialPod,
    expect,
)

OEM_LABEL = "KURMA_OEM"
OEM_FILE = "kurma.yml"


def _default_pod_networks() -> tuple[NetworkSpec, ...]:
    # A pod joins the first unless it names others (net/config.py).
    return (BridgeSpec("kurma0", "kurma0", "10.222.0.0/16"),)


@dataclass(frozen=True)
class BootConfig:
    """The whole boot configuration; its field defaults are the built-in defaults."""

    hostname: str = "kurma"
    debug: bool = False
    modules: tuple[str, ...] = ()
    hardware: Hardware = field(default_factory=Hardware)
    cgroups: str = "v2"
    state_dir: Path = Path("/var/lib/kurmad")
    cgroup_parent: str = "kurmad"
    disks: tuple[DiskConfig, ...] = ()
    network: NetworkConfig = field(default_factory=NetworkConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    images: tuple[str, ...] = ()  # ACI files, globs allowed
    strict_images: bool = False  # refuse setuid files and device nodes in images
    registries: RegistrySettings = field(default_factory=RegistrySettings)  # OCI registries
    initial_pods: tuple[InitialPod, ...] = ()
    pod_networks: tuple[NetworkSpec, ...] = field(default_factory=_default_pod_networks)

    def section_json(self, key: str) -> Any:
        """One section in its YAML form."""
        value = getattr(self, key)
        if isinstance(value, tuple):
            return [_json(item) for item in value]
        return _json(value)

    def to_json(self) -> dict[str, Any]:
        return {f.name: self.section_json(f.name) for f in dataclasses.fields(self)}


def _json(value: Any) -> Any:
    if hasattr(value, "to_json"):
        return value.to_json()
    return str(value) if isinstance(value, Path) else copy.deepcopy(value)


# How each section is parsed (and checked) from its merged YAML.
_SECTIONS: dict[str, Callable[[Any], Any]] = {
    "hostname": sections.hostname,
    "debug": lambda v: expect(v, bool, "debug"),
    "modules": sections.modules,
    "hardware": Hardware.from_json,
    "cgroups": sections.cgroups,
    "state_dir": lambda v: Path(expect(v, str, "state_dir")),
    "cgroup_parent": lambda v: expect(v, str, "cgroup_parent"),
    "disks": sections.disks,
    "network": sections.network_config,
    "api": ApiConfig.from_json,
    "images": lambda v: sections.strings("images", v),
    "strict_images": lambda v: expect(v, bool, "strict_images"),
    "registries": sections.registries,
    "initial_pods": sections.initial_pods,
    "pod_networks": sections.pod_networks,
}


@dataclass
class LoadedConfig:
    config: BootConfig = field(default_factory=BootConfig)
    sources: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def values(self) -> dict[str, Any]:
        """The merged configuration in its YAML form."""
        return self.config.to_json()


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
        parse = _SECTIONS.get(key)
        if parse is None:
            config.errors.append(
                f"{source}: {key}: unknown key (known: {', '.join(sorted(_SECTIONS))})"
            )
            continue
        try:
            parsed = parse(_merged(config.config.section_json(key), value))
        except ConfigError as err:
            config.errors.append(f"{source}: {err} (this section keeps its previous value)")
            continue
        config.config = dataclasses.replace(config.config, **{key: parsed})


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
    config = LoadedConfig()
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
    config = LoadedConfig(sources=["defaults"])
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
