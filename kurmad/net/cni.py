"""Pod networking through CNI plugins (https://www.cni.dev/docs/spec/), protocol 0.4.0 and 1.0.0.

A network configuration is one plugin config or a conflist; either way it runs as a list of
plugins. ADD runs them in order, each given the previous plugin's result as ``prevResult``; CHECK
runs them in order and DEL in reverse, each given the final ADD result. The caller keeps that
result (``CniResult.to_json``) for CHECK and DEL, and must call DEL even when ADD failed.

Plugins run as subprocesses in a session of their own (the daemon is multi-threaded: no
``os.fork``), with a deadline: a plugin that does not answer in time is killed with its whole
process group, and is always reaped."""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import re
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kurmad.appc.environment import DEFAULT_PATH
from kurmad.linux.syscalls import CLONE_NEWNET

log = logging.getLogger("kurmad.net.cni")

SUPPORTED_VERSIONS = ("0.4.0", "1.0.0")  # CHECK and prevResult on DEL came with 0.4.0
DEFAULT_PLUGIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")  # Debian's package, then upstream's
DEFAULT_TIMEOUT = 10.0

# The spec's well-known error codes; 100 and up are plugin-specific, and 999 is libcni's
# "internal" code, which the reference plugins give for most of their errors.
ERROR_CODES = {
    1: "incompatible CNI version",
    2: "unsupported field in network configuration",
    3: "container unknown or does not exist",
    4: "invalid environment variables",
    5: "I/O failure",
    6: "failed to decode content",
    7: "invalid network configuration",
    11: "try again later",
    50: "plugin not available",
    51: "plugin not available, existing containers may have limited connectivity",
}

CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
EXCERPT = 200  # characters of a plugin's stray output quoted in an error
NS_GET_NSTYPE = 0xB703  # ioctl(2) on a namespace file, Linux >= 4.11


class CniError(Exception):
    """A network configuration that cannot run, or a plugin that failed.

    For a plugin's own error object, ``code``, ``msg`` and ``details`` hold its fields."""

    def __init__(
        self,
        message: str,
        *,
        plugin: str | None = None,
        command: str | None = None,
        code: int | None = None,
        msg: str | None = None,
        details: str | None = None,
        stderr: str = "",
    ) -> None:
        super().__init__(message)
        self.plugin = plugin
        self.command = command
        self.code = code
        self.msg = msg
        self.details = details
        self.stderr = stderr


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class Interface:
    name: str
    mac: str = ""
    sandbox: str = ""  # the netns path for container interfaces, empty on the host
    mtu: int | None = None


@dataclass(frozen=True)
class IpConfig:
    address: str  # CIDR, "10.1.2.3/24"
    gateway: str | None = None
    interface: int | None = None  # index into CniResult.interfaces

    @property
    def version(self) -> int:
        """4 or 6: 0.4.0 results say so in a field that 1.0.0 dropped, so it is derived."""
        return ipaddress.ip_interface(self.address).version


@dataclass(frozen=True)
class Route:
    dst: str
    gw: str | None = None


@dataclass(frozen=True)
class Dns:
    nameservers: list[str] = field(default_factory=list)
    domain: str = ""
    search: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CniResult:
    """An ADD result, 0.4.0 or 1.0.0 shaped; ``raw`` is what the plugin printed, kept verbatim
    because it is what CHECK and DEL must be given back as prevResult."""

    cni_version: str
    interfaces: list[Interface]
    ips: list[IpConfig]
    routes: list[Route]
    dns: Dns
    raw: dict[str, Any]

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> CniResult:
        try:
            return cls(
                cni_version=str(raw.get("cniVersion", "")),
                interfaces=[_interface(item) for item in raw.get("interfaces") or []],
                ips=[_ip_config(item) for item in raw.get("ips") or []],
                routes=[_route(item) for item in raw.get("routes") or []],
                dns=_dns(raw.get("dns") or {}),
                raw=dict(raw),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise CniError(f"malformed CNI result ({err!r}): {_excerpt(json.dumps(raw))}") from err

    @classmethod
    def from_json(cls, text: str | bytes) -> CniResult:
        try:
            raw = json.loads(text)
        except ValueError as err:
            raise CniError(f"CNI result is not JSON: {_excerpt(text)}") from err
        if not isinstance(raw, dict):
            raise CniError(f"CNI result is not a JSON object: {_excerpt(text)}")
        return cls.from_dict(raw)

    def to_json(self) -> str:
        return json.dumps(self.raw, sort_keys=True)

    def addresses_on(self, ifname: str) -> list[str]:
        """The CIDR addresses given to interface ``ifname`` (by the interface index of each IP).

        Only interfaces in a sandbox count when there are any, as a bridge's host side may share
        the container interface's name in another namespace."""
        wanted = {i for i, iface in enumerate(self.interfaces) if iface.name == ifname}
        in_sandbox = {i for i in wanted if self.interfaces[i].sandbox}
        wanted = in_sandbox or wanted
        return [ip.address for ip in self.ips if ip.interface in wanted]


def _interface(item: Mapping[str, Any]) -> Interface:
    mtu = item.get("mtu")
    return Interface(
        name=str(item["name"]),
        mac=str(item.get("mac") or ""),
        sandbox=str(item.get("sandbox") or ""),
        mtu=int(mtu) if mtu is not None else None,
    )


def _ip_config(item: Mapping[str, Any]) -> IpConfig:
    address = str(item["address"])
    ipaddress.ip_interface(address)  # reject what is not CIDR now, not when it is used
    index = item.get("interface")  # a pointer in 1.0.0: absent for IPAM results
    return IpConfig(
        address=address,
        gateway=str(item["gateway"]) if item.get("gateway") else None,
        interface=int(index) if index is not None else None,
    )


def _route(item: Mapping[str, Any]) -> Route:
    return Route(dst=str(item["dst"]), gw=str(item["gw"]) if item.get("gw") else None)


def _dns(item: Mapping[str, Any]) -> Dns:
    return Dns(
        nameservers=[str(s) for s in item.get("nameservers") or []],
        domain=str(item.get("domain") or ""),
        search=[str(s) for s in item.get("search") or []],
        options=[str(s) for s in item.get("options") or []],
    )


# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class NetworkConfig:
    """A network configuration as a list of plugin configs, whatever form it was given in."""

    name: str
    cni_version: str
    plugins: list[dict[str, Any]]
    disable_check: bool = False


def normalise_config(config: Mapping[str, Any]) -> NetworkConfig:
    """A conflist or a single plugin config, checked, as a NetworkConfig."""
    if not isinstance(config, Mapping):
        raise CniError(f"CNI network configuration must be a JSON object, not {config!r}")
    plugins = config.get("plugins", [config])
    name = config.get("name")
    version = config.get("cniVersion")
    if not isinstance(name, str) or not name:
        raise CniError("CNI network configuration has no 'name'")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            f"CNI network {name!r}: cniVersion {version!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_VERSIONS)})"
        )
    if not isinstance(plugins, list) or not plugins:
        raise CniError(f"CNI network {name!r}: 'plugins' must be a non-empty list")
    for index, plugin in enumerate(plugins):
        _check_plugin_config(name, index, plugin)
    return NetworkConfig(
        name=name,
        cni_version=version,
        plugins=[dict(plugin) for plugin in plugins],
        disable_check=bool(config.get("disableCheck", False)),
    )


def _check_plugin_config(network: str, index: int, plugin: Any) -> None:
    if not isinstance(plugin, Mapping):
        raise CniError(f"CNI network {network!r}: plugin {index} is not a JSON object")
    kind = plugin.get("type")
    # the type names a file in the plugin directories: nothing that could leave them
    if not isinstance(kind, str) or not kind or "/" in kind or kind in (".", ".."):
        raise CniError(f"CNI network {network!r}: plugin {index} has no valid 'type': {kind!r}")


def format_cni_args(args: Mapping[str, str] | None) -> str:
    """CNI_ARGS: "K=V;K=V"; a key or value holding ';' or '=' would be split wrongly."""
    pairs = []
    for key, value in (args or {}).items():
        if not key or any(c in f"{key}{value}" for c in ";="):
            raise CniError(f"CNI_ARGS entry {key}={value} must not be empty or hold ';' or '='")
        pairs.append(f"{key}={value}")
    return ";".join(pairs)


def is_network_namespace(path: str) -> bool:
    """Whether ``path`` is a network namespace file (bind mount or /proc/PID/ns/net)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET
    except OSError:
        return False
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# Running plugins


@dataclass(frozen=True)
class Attachment:
    """The per-attachment parameters, the same for ADD, CHECK and DEL of one attachment."""

    container_id: str
    netns: str
    ifname: str
    args: str = ""  # CNI_ARGS, already formatted
    capability_args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PluginOutput:
    returncode: int
    stdout: bytes
    stderr: bytes


class PluginTimeout(Exception):
    pass


def run_plugin(binary: Path, env: Mapping[str, str], stdin: bytes, timeout: float) -> PluginOutput:
    """Run one plugin to completion or kill it, its children included, at the deadline."""
    process = subprocess.Popen(
        [str(binary)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env),
        cwd="/",
        close_fds=True,
        start_new_session=True,  # its own process group, so a hung one goes with its children
    )
    try:
        stdout, stderr = process.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        _kill_and_reap(process)
        raise PluginTimeout from err
    except BaseException:
        _kill_and_reap(process)
        raise
    return PluginOutput(process.returncode, stdout, stderr)


def _kill_and_reap(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group was gone already
        os.killpg(process.pid, signal.SIGKILL)
    try:
        process.communicate(timeout=2)
    except subprocess.TimeoutExpired:
        # a descendant that left the group (setsid) still holds the pipes: stop reading them
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()
        process.wait()


def _excerpt(data: str | bytes, limit: int = EXCERPT) -> str:
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    text = text.strip()
    return repr(text if len(text) <= limit else text[:limit] + "…")


class CniNetwork:
    """One network configuration, attached to containers by running its plugins."""

    def __init__(
        self,
        config: Mapping[str, Any],
        plugin_dirs: Sequence[str | os.PathLike[str]] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.config = normalise_config(config)
        self.plugin_dirs = [
            str(d) for d in (DEFAULT_PLUGIN_DIRS if plugin_dirs is None else plugin_dirs)
        ]
        self.timeout = timeout

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def cni_version(self) -> str:
        return self.config.cni_version

    def add(
        self,
        container_id: str,
        netns_path: str,
        ifname: str,
        args: Mapping[str, str] | None = None,
        capability_args: Mapping[str, Any] | None = None,
    ) -> CniResult:
        """Attach the container; the result must be kept for CHECK and DEL."""
        attachment = self._attachment(container_id, netns_path, ifname, args, capability_args)
        result: dict[str, Any] | None = None
        for plugin in self.config.plugins:
            result = self._invoke_add(plugin, attachment, result)
        assert result is not None  # normalise_config guarantees at least one plugin
        return CniResult.from_dict(result)

    def check(
        self,
        container_id: str,
        netns_path: str,
        ifname: str,
        prev_result: CniResult | Mapping[str, Any],
        args: Mapping[str, str] | None = None,
        capability_args: Mapping[str, Any] | None = None,
    ) -> None:
        """Raise CniError unless every plugin finds the attachment as ADD left it."""
        if self.config.disable_check:
            return
        attachment = self._attachment(container_id, netns_path, ifname, args, capability_args)
        previous = _raw_result(prev_result)
        for plugin in self.config.plugins:
            self._invoke(plugin, "CHECK", attachment, previous)

    def delete(
        self,
        container_id: str,
        netns_path: str,
        ifname: str,
        prev_result: CniResult | Mapping[str, Any] | None,
        args: Mapping[str, str] | None = None,
        capability_args: Mapping[str, Any] | None = None,
    ) -> None:
        """Detach the container, plugins in reverse order. Safe to repeat, and fine when the
        namespace is gone; ``prev_result`` may be None after a failed ADD. The first plugin
        that fails stops the rest (as the spec says): retry the whole DEL later."""
        # Plugins skip the namespace's part when CNI_NETNS is empty but fail on a path that is
        # not a namespace (any more): the rest of the cleanup (IPAM leases) must still happen.
        netns = netns_path if is_network_namespace(netns_path) else ""
        if not netns:
            log.info(
                "CNI DEL %s/%s: %s is not a network namespace (any more)",
                container_id,
                ifname,
                netns_path,
            )
        attachment = self._attachment(container_id, netns, ifname, args, capability_args)
        previous = _raw_result(prev_result) if prev_result is not None else None
        for plugin in reversed(self.config.plugins):
            self._invoke(plugin, "DEL", attachment, previous)

    def find_plugin(self, kind: str) -> Path:
        for directory in self.plugin_dirs:
            candidate = Path(directory) / kind
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
        raise CniError(
            f"CNI plugin {kind!r} not found in {':'.join(self.plugin_dirs)} "
            "(is containernetworking-plugins installed?)",
            plugin=kind,
        )

    # -- internals ---------------------------------------------------------------------------

    def _attachment(
        self,
        container_id: str,
        netns: str,
        ifname: str,
        args: Mapping[str, str] | None,
        capability_args: Mapping[str, Any] | None,
    ) -> Attachment:
        if not CONTAINER_ID.fullmatch(container_id):
            raise CniError(
                f"container ID {container_id!r} must be alphanumeric, then also '_', '.', '-'"
            )
        return Attachment(
            container_id, netns, ifname, format_cni_args(args), dict(capability_args or {})
        )

    def _invoke_add(
        self, plugin: Mapping[str, Any], attachment: Attachment, previous: dict[str, Any] | None
    ) -> dict[str, Any]:
        kind = str(plugin["type"])
        result = self._invoke(plugin, "ADD", attachment, previous)
        if result is None:
            raise CniError(f"CNI plugin {kind!r} ADD printed no result", plugin=kind, command="ADD")
        try:
            CniResult.from_dict(result)  # fail here, naming the plugin, not in a later one
        except CniError as err:
            raise CniError(f"CNI plugin {kind!r} ADD: {err}", plugin=kind, command="ADD") from err
        return result

    def _request(
        self, plugin: Mapping[str, Any], attachment: Attachment, previous: dict[str, Any] | None
    ) -> dict[str, Any]:
        """The plugin's config as the spec derives it: version and name from the list, the
        capabilities it declares filled in as runtimeConfig, and the previous result."""
        request = {k: v for k, v in plugin.items() if k != "capabilities"}
        request["cniVersion"] = self.config.cni_version
        request["name"] = self.config.name
        declared = plugin.get("capabilities") or {}
        runtime = {k: v for k, v in attachment.capability_args.items() if declared.get(k)}
        if runtime:
            request["runtimeConfig"] = {**(request.get("runtimeConfig") or {}), **runtime}
        if previous is not None:
            request["prevResult"] = previous
        return request

    def _environment(self, command: str, attachment: Attachment) -> dict[str, str]:
        # Only the protocol's variables and PATH: the daemon's own environment is not the
        # plugins' business, and the same input gives the same behaviour.
        return {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": attachment.container_id,
            "CNI_NETNS": attachment.netns,
            "CNI_IFNAME": attachment.ifname,
            "CNI_ARGS": attachment.args,
            "CNI_PATH": ":".join(self.plugin_dirs),  # Debian's plugins insist on it, even loopback
            "PATH": os.environ.get("PATH") or DEFAULT_PATH,  # bridge and portmap run iptables
        }

    def _invoke(
        self,
        plugin: Mapping[str, Any],
        command: str,
        attachment: Attachment,
        previous: dict[str, Any] | None,
    ) -> dict[str, Any] | None:
        """Run one plugin; for ADD its parsed result, else None."""
        kind = str(plugin["type"])
        binary = self.find_plugin(kind)
        stdin = json.dumps(self._request(plugin, attachment, previous)).encode()
        began = time.monotonic()
        try:
            output = run_plugin(binary, self._environment(command, attachment), stdin, self.timeout)
        except PluginTimeout:
            raise CniError(
                f"CNI plugin {kind!r} {command} did not answer within {self.timeout:g}s; killed",
                plugin=kind,
                command=command,
            ) from None
        except OSError as err:  # not executable, bad ELF, missing interpreter...
            raise CniError(
                f"CNI plugin {kind!r} {command}: cannot run {binary}: {err}",
                plugin=kind,
                command=command,
            ) from err
        log.debug(
            "CNI %s %s %s/%s: exit %d in %.3fs",
            kind,
            command,
            attachment.container_id,
            attachment.ifname,
            output.returncode,
            time.monotonic() - began,
        )
        if output.returncode != 0:
            raise _plugin_failure(kind, command, output)
        if command != "ADD":  # CHECK and DEL answer by exit status only; stray output is noise
            return None
        return _parse_output(kind, command, output)


def _raw_result(result: CniResult | Mapping[str, Any]) -> dict[str, Any]:
    return dict(result.raw) if isinstance(result, CniResult) else dict(result)


def _parse_output(kind: str, command: str, output: PluginOutput) -> dict[str, Any] | None:
    if not output.stdout.strip():
        return None
    try:
        parsed = json.loads(output.stdout)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise CniError(
            f"CNI plugin {kind!r} {command}: output is not JSON: {_excerpt(output.stdout)}",
            plugin=kind,
            command=command,
            stderr=output.stderr.decode(errors="replace"),
        )
    return parsed


def _plugin_failure(kind: str, command: str, output: PluginOutput) -> CniError:
    """The CniError for a plugin that exited non-zero or was killed."""
    stderr = output.stderr.decode(errors="replace")
    where = f"CNI plugin {kind!r} {command}"
    if output.returncode < 0:
        return CniError(
            f"{where} was killed by signal {_signal_name(-output.returncode)}"
            f"{_stderr_tail(stderr)}",
            plugin=kind,
            command=command,
            stderr=stderr,
        )
    try:
        error = json.loads(output.stdout) if output.stdout.strip() else None
    except ValueError:
        return CniError(
            f"{where} failed (exit {output.returncode}) and its output is not JSON: "
            f"{_excerpt(output.stdout)}{_stderr_tail(stderr)}",
            plugin=kind,
            command=command,
            stderr=stderr,
        )
    if not isinstance(error, dict):
        return CniError(
            f"{where} failed (exit {output.returncode}) without an error object"
            f"{_stderr_tail(stderr)}",
            plugin=kind,
            command=command,
            stderr=stderr,
        )
    return _error_from_object(where, kind, command, error, stderr)


def _error_from_object(
    where: str, kind: str, command: str, error: Mapping[str, Any], stderr: str
) -> CniError:
    code = error.get("code")
    code = code if isinstance(code, int) else None
    msg = str(error.get("msg") or "")
    details = str(error.get("details") or "")
    if code is None:
        message = f"{where} failed: {msg}"
    else:
        meaning = f" ({ERROR_CODES[code]})" if code in ERROR_CODES else ""
        message = f"{where} failed: error {code}{meaning}: {msg}"
    if details:
        message += f" ({details})"
    return CniError(
        message,
        plugin=kind,
        command=command,
        code=code,
        msg=msg,
        details=details or None,
        stderr=stderr,
    )


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _stderr_tail(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return f"; stderr: {_excerpt(lines[-1])}" if lines else ""


__all__ = [
    "CniError",
    "CniNetwork",
    "CniResult",
    "Dns",
    "Interface",
    "IpConfig",
    "NetworkConfig",
    "Route",
    "normalise_config",
]
