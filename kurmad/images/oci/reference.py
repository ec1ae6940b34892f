"""Image references: what a user types to name an image, parsed before anything is fetched.

An OCI reference follows the distribution grammar (distribution/reference)::

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [ registry "/" ] path      (255 characters at most)
    registry   := host [ ":" port ]          host: DNS name, IPv4, or [IPv6]
    path       := component ( "/" component )*
    component  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
    tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    digest     := algorithm ":" hex          sha256 (64 hex) or sha512 (128 hex) here

The first component is a registry only if it holds a "." or a ":" or is "localhost", as Docker
decides. A name without one is a *short name*: it is looked up in the store and then in the
configured search registries, never silently on docker.io. ``docker.io`` (and its old alias
``index.docker.io``) puts a one-component path under ``library/``, as Docker does.

A transport prefix says which protocol is meant: ``docker://REF`` is always a registry
reference, ``appc://NAME[:VERSION]`` always an appc image name; without one the caller decides
by looking in the store first (``ImageRef.transport`` is then ``None``).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace
from enum import StrEnum

DOCKER_HUB = "docker.io"
_HUB_ALIASES = {"index.docker.io", "registry-1.docker.io"}
MAX_NAME_LENGTH = 255

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*")
_DNS_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}")
DIGEST_RULE = "sha256:<64 hex> or sha512:<128 hex>, lowercase"


def is_digest(text: str) -> bool:
    """The one digest rule of references and documents alike."""
    return _DIGEST.fullmatch(text) is not None


class ReferenceError(ValueError):
    """A reference that the grammar refuses; ``str()`` names the reference and the rule."""


class Transport(StrEnum):
    DOCKER = "docker"  # a registry reference (OCI distribution)
    APPC = "appc"  # an appc image name, found in the store (or, later, by discovery)


@dataclass(frozen=True)
class Reference:
    """One parsed OCI reference. ``registry`` is ``None`` for a short name."""

    registry: str | None
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def repository(self) -> str:
        """``registry/path``, or the bare path of a short name."""
        return f"{self.registry}/{self.path}" if self.registry else self.path

    @property
    def is_short(self) -> bool:
        return self.registry is None

    def in_registry(self, registry: str) -> Reference:
        """This short name resolved against ``registry`` (a search registry)."""
        return _normalised(replace(self, registry=_registry(registry, str(self))))

    def with_default_tag(self) -> Reference:
        """``latest`` when neither a tag nor a digest is given, as every registry client does."""
        return self if self.tag or self.digest else replace(self, tag="latest")

    def appc_name(self) -> str:
        """The AC Identifier this image is stored under: the repository with each character an
        AC Identifier cannot hold spelled "~" (the port's ":", a path's "_"; neither host nor
        path can hold a "~", so the name maps back to one repository). An IPv6 host is spelled
        ``ipv6-`` and its eight groups joined by "-"."""
        path = self.path.replace("_", "~")
        if self.registry is None:
            return path
        host, port = _split_port(self.registry, str(self))
        if host.startswith("["):
            host = "ipv6-" + ipaddress.IPv6Address(host[1:-1]).exploded.replace(":", "-")
        return f"{host}~{port}/{path}" if port else f"{host}/{path}"

    def __str__(self) -> str:
        text = self.repository
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


@dataclass(frozen=True)
class ImageRef:
    """What a user named: the transport they asked for (or ``None``) and the text after it.
    ``oci`` is the parsed reference unless the transport is appc or the text is no OCI
    reference (then only an appc name can match it)."""

    transport: Transport | None
    text: str
    oci: Reference | None


def parse_reference(text: str) -> Reference:
    """Parse ``text`` by the distribution grammar; raise ReferenceError naming the rule broken."""
    if not text:
        raise ReferenceError("an image reference must not be empty")
    rest, digest = _split_digest(text)
    name, tag = _split_tag(rest, text)
    if len(name) > MAX_NAME_LENGTH:
        raise ReferenceError(f"{text!r}: the name is longer than {MAX_NAME_LENGTH} characters")
    first, _, remainder = name.partition("/")
    if remainder and _looks_like_registry(first):
        registry: str | None = _registry(first, text)
        path = remainder
    else:
        registry, path = None, name
    for component in path.split("/"):
        if not _COMPONENT.fullmatch(component):
            raise ReferenceError(
                f"{text!r}: path component {component!r} must be lowercase letters and digits, "
                "separated by '.', '_', '__' or '-'"
            )
    return _normalised(Reference(registry, path, tag, digest))


def parse_image_ref(text: str) -> ImageRef:
    """Split an optional ``docker://`` or ``appc://`` prefix off ``text`` and parse the rest.
    A docker reference must parse; without a transport, text that is no OCI reference is
    still a valid request for an appc name (``example.com/app`` is both)."""
    for transport in Transport:
        prefix = f"{transport.value}://"
        if text.startswith(prefix):
            rest = text[len(prefix) :]
            if transport is Transport.DOCKER:
                return ImageRef(transport, rest, parse_reference(rest))
            if not rest:
                raise ReferenceError(f"{text!r}: an appc image name must follow appc://")
            return ImageRef(transport, rest, None)
    if "://" in text:
        scheme = text.split("://", 1)[0]
        raise ReferenceError(f"{text!r}: unknown transport {scheme!r} (docker:// or appc://)")
    try:
        return ImageRef(None, text, parse_reference(text))
    except ReferenceError:
        return ImageRef(None, text, None)


def _split_digest(text: str) -> tuple[str, str | None]:
    rest, at, digest = text.partition("@")
    if not at:
        return text, None
    if not is_digest(digest):
        raise ReferenceError(f"{text!r}: digest {digest!r} must be {DIGEST_RULE}")
    return rest, digest


def _split_tag(rest: str, text: str) -> tuple[str, str | None]:
    # A ":" after the last "/" starts the tag; one before it belongs to a registry's port.
    colon = rest.rfind(":")
    if colon <= rest.rfind("/"):
        return rest, None
    name, tag = rest[:colon], rest[colon + 1 :]
    if not _TAG.fullmatch(tag):
        raise ReferenceError(
            f"{text!r}: tag {tag!r} must be 1-128 of letters, digits, '_', '.' and '-', "
            "not starting with '.' or '-'"
        )
    return name, tag


def _looks_like_registry(component: str) -> bool:
    return "." in component or ":" in component or component == "localhost"


def _registry(text: str, reference: str) -> str:
    """A registry as ``host[:port]``, host lowercased (DNS is case-blind, and one spelling
    keeps one store name)."""
    host, port = _split_port(text, reference)
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ReferenceError(f"{reference!r}: {host!r} is not an IPv6 address") from None
    elif not all(_DNS_LABEL.fullmatch(label) for label in host.split(".")):
        raise ReferenceError(f"{reference!r}: registry host {host!r} is not a valid host name")
    host = host.lower()
    return f"{host}:{port}" if port is not None else host


def _split_port(text: str, reference: str) -> tuple[str, str | None]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ReferenceError(f"{reference!r}: {text!r} has no closing ']'")
        host, rest = text[: end + 1], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ReferenceError(f"{reference!r}: unexpected {rest!r} after {host}")
        port = rest[1:] if rest else None
    else:
        host, colon, port_text = text.partition(":")
        port = port_text if colon else None
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        raise ReferenceError(f"{reference!r}: port {port!r} must be a number from 1 to 65535")
    return host, port


def _normalised(reference: Reference) -> Reference:
    if reference.registry in _HUB_ALIASES:
        reference = replace(reference, registry=DOCKER_HUB)
    if reference.registry == DOCKER_HUB and "/" not in reference.path:
        reference = replace(reference, path=f"library/{reference.path}")
    return reference
