"""How kurmad reaches OCI registries, from one mapping that the boot config's ``registries:``
section and ``kurmad serve --registry-config FILE`` share::

    docker_config: /etc/kurmad/docker-config.json   # a Docker config.json: its auths are read
    credentials: {REGISTRY: {username: U, password: P}}
    search: [docker.io]                              # for short names; none by default
    insecure: [10.0.2.2:5000]                        # no TLS verification (plain HTTP if so)
    mirrors: {docker.io: [mirror.local:5000]}        # tried in order before the registry
    certs_dirs: [/etc/kurmad/certs.d]                # more certs.d/HOST:PORT/ca.crt roots

Credentials kept by ``kurmactl login`` override those given here, which override the Docker
config's. The certs.d roots always include /etc/containers/certs.d, /etc/docker/certs.d and
STATE_DIR/certs.d."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .reference import ReferenceError, parse_reference
from .registry import CERTS_DIRS, Credentials

_KEYS = ("docker_config", "credentials", "search", "insecure", "mirrors", "certs_dirs")


class SettingsError(ValueError):
    """A registry setting that is wrong; ``str()`` names the key."""


@dataclass(frozen=True)
class RegistrySettings:
    credentials: Mapping[str, Credentials] = field(default_factory=dict)
    docker_config: Path | None = None
    mirrors: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    insecure: frozenset[str] = frozenset()
    search: tuple[str, ...] = ()
    certs_dirs: tuple[Path, ...] = CERTS_DIRS

    @classmethod
    def from_json(cls, value: Any, path: str = "registries") -> RegistrySettings:
        if not isinstance(value, dict):
            raise SettingsError(f"{path}: must be a mapping")
        unknown = sorted(set(value) - set(_KEYS))
        if unknown:
            raise SettingsError(f"{path}: unknown key {unknown[0]} (known: {', '.join(_KEYS)})")
        docker_config = value.get("docker_config")  # None in to_json's form
        return cls(
            credentials=_credentials(value.get("credentials", {}), f"{path}.credentials"),
            docker_config=Path(_string(docker_config, f"{path}.docker_config")) if docker_config else None,
            mirrors={_registry(k, f"{path}.mirrors"): tuple(_registries(v, f"{path}.mirrors.{k}"))
                     for k, v in _mapping(value.get("mirrors", {}), f"{path}.mirrors").items()},
            insecure=frozenset(_registries(value.get("insecure", []), f"{path}.insecure")),
            search=tuple(_registries(value.get("search", []), f"{path}.search")),
            certs_dirs=CERTS_DIRS + tuple(Path(_string(d, f"{path}.certs_dirs"))
                                          for d in _list(value.get("certs_dirs", []), f"{path}.certs_dirs")),
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        """The YAML form, passwords left out (what ``kurmactl host config`` may show)."""
        return {
            "docker_config": str(self.docker_config) if self.docker_config else None,
            "credentials": {r: {"username": c.username, "password": "(hidden)"}
                            for r, c in self.credentials.items()},
            "search": list(self.search),
            "insecure": sorted(self.insecure),
            "mirrors": {r: list(m) for r, m in self.mirrors.items()},
            "certs_dirs": [str(d) for d in self.certs_dirs if d not in CERTS_DIRS],
        }  # fmt: skip


def _credentials(value: Any, path: str) -> dict[str, Credentials]:
    found = {}
    for registry, entry in _mapping(value, path).items():
        entry = _mapping(entry, f"{path}.{registry}")
        found[_registry(registry, path)] = Credentials(
            _string(entry.get("username"), f"{path}.{registry}.username"),
            _string(entry.get("password"), f"{path}.{registry}.password"),
        )
    return found


def _registries(value: Any, path: str) -> list[str]:
    return [_registry(item, path) for item in _list(value, path)]


def _registry(value: Any, path: str) -> str:
    """``host[:port]`` as references spell it (lowercase host)."""
    text = _string(value, path)
    try:
        registry = parse_reference(f"{text}/x").registry
    except ReferenceError:
        registry = None
    if registry is None or "/" in text:
        raise SettingsError(f"{path}: {text!r} is not a registry host[:port]")
    return registry


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise SettingsError(f"{path}: must be a non-empty string")
    return value


def _list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise SettingsError(f"{path}: must be a list")
    return value


def _mapping(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SettingsError(f"{path}: must be a mapping")
    return value
