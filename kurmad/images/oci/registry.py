"""A client of the OCI distribution API (v2), over HTTPS unless a registry is named insecure.

- **Auth.** A request goes out bare; a 401's ``WWW-Authenticate`` challenge says how to retry:
  ``Basic`` (the credentials of that registry) or ``Bearer`` (a token fetched from the realm
  for the challenge's service and scope, with the credentials if there are any, and cached
  until it expires). Credentials come per registry from kurmad's config or a Docker
  ``config.json`` (``auths``).
- **TLS.** The system's CAs, plus per registry every ``*.crt`` under ``certs.d/HOST[:PORT]/``
  in the directories Docker, podman and containerd share (and a client certificate from a
  ``*.cert``/``*.key`` pair there). An unknown CA is an error that says where a CA goes.
- **Integrity.** A manifest is read up to ``MAX_MANIFEST_BYTES`` and checked against the digest
  asked for (or the one the server claims); a blob is hashed while it streams and must end at
  its descriptor's size with its digest. A dropped or stalled transfer resumes with ``Range``.
- **Bounds.** Timeouts on every socket operation, at most ``max_redirects`` redirects (the
  credentials never follow one to another host), mirrors tried in order before the upstream.

Every failure is a RegistryError whose text is one line naming the registry.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import logging
import re
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import BinaryIO, TypeVar

from kurmad.appc.errors import ValidationError

from .documents import (
    ACCEPT,
    MAX_MANIFEST_BYTES,
    Descriptor,
    Index,
    Manifest,
    Platform,
    ResolvedImage,
    check_digest,
    parse_document,
    resolve_image,
    verify_digest,
)
from .reference import DOCKER_HUB, Reference
from .transfer import CHUNK, BlobTransfer

log = logging.getLogger("kurmad.images.registry")
CERTS_DIRS = (Path("/etc/containers/certs.d"), Path("/etc/docker/certs.d"))
DOCKER_HUB_ENDPOINT = "registry-1.docker.io"
RESUMES = 3  # a blob transfer that breaks is resumed this many times before it fails
TOKEN_LIFETIME = 60.0  # what the token spec says to assume when a token server says nothing


T = TypeVar("T")


class RegistryError(Exception):
    """A registry operation failed; ``str()`` is one line that names the registry."""


class RegistryNotFound(RegistryError):
    """The registry has no such repository, tag or blob (404)."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def basic(self) -> str:
        pair = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(pair).decode()


@dataclass(frozen=True)
class RegistryConfig:
    credentials: Mapping[str, Credentials] = field(default_factory=dict)
    mirrors: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # registry → hosts
    insecure: frozenset[str] = frozenset()  # registries reached without TLS verification
    certs_dirs: tuple[Path, ...] = CERTS_DIRS
    timeout: float = 30.0
    max_redirects: int = 5


def load_docker_auths(path: Path) -> dict[str, Credentials]:
    """The ``auths`` of a Docker ``config.json``: ``auth`` (base64 ``user:password``) or
    ``username``/``password`` per registry; Docker Hub's old URL key means docker.io."""
    try:
        document = json.loads(path.read_text())
        auths = document.get("auths", {})
    except (OSError, ValueError, AttributeError) as err:
        raise RegistryError(f"{path}: not a readable Docker config.json ({err})") from None
    found: dict[str, Credentials] = {}
    for key, entry in auths.items() if isinstance(auths, dict) else ():
        credentials = _docker_entry(entry)
        if credentials is not None:
            found[_docker_auth_host(key)] = credentials
    return found


def _docker_entry(entry: object) -> Credentials | None:
    if not isinstance(entry, dict):
        return None
    if isinstance(entry.get("auth"), str) and entry["auth"]:
        user, colon, password = base64.b64decode(entry["auth"]).decode().partition(":")
        return Credentials(user, password) if colon else None
    if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
        return Credentials(entry["username"], entry["password"])
    return None


def _docker_auth_host(key: str) -> str:
    host = urllib.parse.urlsplit(key).netloc if "://" in key else key.split("/")[0]
    return DOCKER_HUB if host in ("index.docker.io", DOCKER_HUB_ENDPOINT) else host.lower()


class RegistryClient:
    def __init__(self, config: RegistryConfig | None = None) -> None:
        self.config = config or RegistryConfig()
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self._schemes: dict[str, str] = {}  # an insecure host's scheme, probed once
        self._contexts: dict[str, ssl.SSLContext] = {}  # per host: certs.d read once

    # --- what callers ask for ---------------------------------------------------------------

    def resolve(self, reference: Reference, platform: Platform) -> ResolvedImage:
        """The manifest and config of ``reference`` for ``platform`` (through an index if the
        reference names one), each verified against its digest."""
        if reference.registry is None:
            raise RegistryError(f"{reference}: a short name has no registry to ask")
        reference = reference.with_default_tag()
        data, media_type, digest = self.manifest(reference, reference.digest or reference.tag or "")

        def manifest_of(descriptor: Descriptor) -> tuple[Index | Manifest, bytes]:
            body, _, _ = self.manifest(reference, descriptor.digest)
            return parse_document(body, descriptor.media_type), body

        top = _checked(partial(parse_document, data, media_type), reference)
        resolving = partial(resolve_image, top, data, digest, platform, manifest_of,
                            partial(self.small_blob, reference), reference)  # fmt: skip
        return _checked(resolving, reference)

    def manifest(self, reference: Reference, tag_or_digest: str) -> tuple[bytes, str, str]:
        """A manifest's bytes, media type and digest. Asked for by digest, the bytes must hash
        to it; asked for by tag, they must hash to what the server says they do."""
        path = f"/v2/{reference.path}/manifests/{tag_or_digest}"
        response, body = self._get(reference, path, {"Accept": ACCEPT}, MAX_MANIFEST_BYTES)
        media_type = response.getheader("Content-Type", "")
        claimed = response.getheader("Docker-Content-Digest")
        expected = tag_or_digest if tag_or_digest.startswith("sha") else claimed
        digest = expected or "sha256:" + hashlib.sha256(body).hexdigest()
        _checked(lambda: verify_digest(body, check_digest(digest, "digest"), "manifest"), reference)
        return body, media_type, digest

    def check_login(self, registry: str) -> None:
        """Ask the registry's ``/v2/`` with this client's credentials for it (what ``docker
        login`` checks); raise RegistryError if they are refused."""
        reference = Reference(registry, "kurmad-login")  # a token's scope needs a repository
        response = self._request(_endpoint(registry), reference, "/v2/", {})
        response.read()
        response.close()

    def small_blob(self, reference: Reference, descriptor: Descriptor) -> bytes:
        """A blob read whole (a config): at most the manifest limit, verified."""
        if descriptor.size > MAX_MANIFEST_BYTES:
            raise RegistryError(f"{reference}: {descriptor.digest} is {descriptor.size} bytes, "
                                f"over the {MAX_MANIFEST_BYTES} limit")  # fmt: skip
        path = f"/v2/{reference.path}/blobs/{descriptor.digest}"
        _, body = self._get(reference, path, {}, MAX_MANIFEST_BYTES)
        _checked(lambda: verify_digest(body, descriptor.digest, descriptor.digest), reference)
        return body

    def blob(self, reference: Reference, descriptor: Descriptor, sink: BinaryIO,
             progress: Callable[[int], None] | None = None) -> None:  # fmt: skip
        """Stream a blob into ``sink``, hashing as it goes; resume a broken transfer with
        ``Range`` where it stopped. Nothing is accepted past the descriptor's size."""
        transfer = BlobTransfer(descriptor, sink, progress)
        for attempt in range(RESUMES + 1):
            try:
                self._stream_blob(reference, transfer)
                break
            except (OSError, http.client.HTTPException) as err:
                if attempt == RESUMES:
                    raise RegistryError(f"{reference}: {descriptor.digest} broke off at "
                                        f"{transfer.received} of {descriptor.size} bytes: "
                                        f"{_reason(err)}") from None  # fmt: skip
        problem = transfer.problem()
        if problem:
            raise RegistryError(f"{reference}: {problem}")

    def _stream_blob(self, reference: Reference, transfer: BlobTransfer) -> None:
        descriptor = transfer.descriptor
        headers = {"Range": f"bytes={transfer.received}-"} if transfer.received else {}
        response = self._open(reference, f"/v2/{reference.path}/blobs/{descriptor.digest}", headers)
        if transfer.received and response.status != 206:  # the server ignored the range
            transfer.restart()
        try:
            while chunk := response.read1(min(CHUNK, descriptor.size - transfer.received + 1)):
                transfer.take(chunk)
        except ValueError as err:  # longer than its descriptor: no resume helps
            raise RegistryError(f"{reference}: {err}") from None
        finally:
            response.close()
        if transfer.received < descriptor.size:
            raise http.client.IncompleteRead(b"", descriptor.size - transfer.received)

    # --- HTTP, auth, mirrors ------------------------------------------------------------------

    def _get(self, reference: Reference, path: str, headers: dict[str, str],
             limit: int) -> tuple[http.client.HTTPResponse, bytes]:  # fmt: skip
        response = self._open(reference, path, headers)
        try:
            length = response.getheader("Content-Length")
            if length is not None and length.isdigit() and int(length) > limit:
                raise RegistryError(f"{reference}: {path.rsplit('/', 1)[-1]} is {length} bytes, "
                                    f"over the {limit} limit")  # fmt: skip
            body = response.read(limit + 1)
        except (OSError, http.client.HTTPException) as err:
            raise RegistryError(f"{reference}: reading {path}: {_reason(err)}") from None
        finally:
            response.close()
        if len(body) > limit:
            raise RegistryError(f"{reference}: {path.rsplit('/', 1)[-1]} is over the {limit} limit")
        return response, body

    def _open(self, reference: Reference, path: str,
              headers: dict[str, str]) -> http.client.HTTPResponse:  # fmt: skip
        """A 2xx response from the first of the registry's mirrors, then the registry itself,
        that gives one; the registry's own error if none does."""
        assert reference.registry is not None
        for host in self.config.mirrors.get(reference.registry, ()):
            try:
                return self._request(host, reference, path, headers)
            except RegistryError as err:  # the next mirror, or the registry itself, may have it
                log.info("mirror %s of %s: %s", host, reference.registry, err)
        return self._request(_endpoint(reference.registry), reference, path, headers)

    def _request(self, host: str, reference: Reference, path: str,
                 headers: dict[str, str]) -> http.client.HTTPResponse:  # fmt: skip
        response = self._follow(host, path, headers)
        if response.status == 401:
            authorization = self._authorize(host, reference, response)
            response = self._follow(host, path, {**headers, "Authorization": authorization})
            if response.status == 401:
                response.close()
                raise RegistryError(f"{reference.registry}: the credentials for {host} were "
                                    "refused; log in again with `kurmactl login "
                                    f"{reference.registry}`")  # fmt: skip
        if response.status in (200, 206):
            return response
        error = RegistryNotFound if response.status == 404 else RegistryError
        raise error(_status_error(reference, path, response))

    def _follow(self, host: str, path: str, headers: dict[str, str]) -> http.client.HTTPResponse:
        """GET ``path`` on ``host``, following redirects (at most ``max_redirects``); the
        Authorization header goes only to the host it was made for."""
        url = urllib.parse.urlsplit(f"{self._scheme(host)}://{host}{path}")
        for _ in range(self.config.max_redirects + 1):
            response = self._send(url, headers)
            location = response.getheader("Location")
            if response.status not in (301, 302, 303, 307, 308) or not location:
                return response
            response.close()
            target = urllib.parse.urlsplit(urllib.parse.urljoin(url.geturl(), location))
            if target.netloc != url.netloc:
                headers = {k: v for k, v in headers.items() if k != "Authorization"}
            url = target
        raise RegistryError(f"{host}: more than {self.config.max_redirects} redirects for {path}")

    def _send(
        self, url: urllib.parse.SplitResult, headers: dict[str, str]
    ) -> http.client.HTTPResponse:
        host = url.hostname or ""
        connection: http.client.HTTPConnection
        if url.scheme == "https":
            connection = http.client.HTTPSConnection(host, url.port, timeout=self.config.timeout,
                                                     context=self._tls(url.netloc))  # fmt: skip
        else:
            connection = http.client.HTTPConnection(host, url.port, timeout=self.config.timeout)
        target = url.path + (f"?{url.query}" if url.query else "")
        try:
            connection.request("GET", target, headers={"User-Agent": "kurmad", **headers})
            return connection.getresponse()
        except ssl.SSLCertVerificationError as err:
            raise RegistryError(self._untrusted(url.netloc, err)) from None
        except (OSError, http.client.HTTPException) as err:
            raise RegistryError(f"{url.netloc}: {_reason(err)}") from None

    def _scheme(self, host: str) -> str:
        if host not in self.config.insecure:
            return "https"
        if host not in self._schemes:
            self._schemes[host] = "http" if _plain_http(host) else "https"
        return self._schemes[host]

    def _tls(self, netloc: str) -> ssl.SSLContext:
        if netloc not in self._contexts:
            self._contexts[netloc] = self._new_tls(netloc)
        return self._contexts[netloc]

    def _new_tls(self, netloc: str) -> ssl.SSLContext:
        if netloc in self.config.insecure:
            return _unverified_context()
        context = ssl.create_default_context()
        for directory in self._certs_dirs(netloc):
            for ca in sorted(directory.glob("*.crt")):
                context.load_verify_locations(cafile=str(ca))
            for cert in sorted(directory.glob("*.cert")):
                key = cert.with_suffix(".key")
                if key.exists():
                    context.load_cert_chain(str(cert), str(key))
        return context

    def _certs_dirs(self, netloc: str) -> list[Path]:
        return [d / netloc for d in self.config.certs_dirs if (d / netloc).is_dir()]

    def _untrusted(self, netloc: str, err: ssl.SSLCertVerificationError) -> str:
        where = " or ".join(str(d / netloc / "ca.crt") for d in self.config.certs_dirs)
        return (f"{netloc}: TLS certificate not trusted ({err.verify_message}); put the "
                f"registry's CA in {where}, or name {netloc} insecure in the config")  # fmt: skip

    def _authorize(
        self, host: str, reference: Reference, response: http.client.HTTPResponse
    ) -> str:
        challenge = response.getheader("WWW-Authenticate", "")
        response.read()
        response.close()
        assert reference.registry is not None
        credentials = self.config.credentials.get(reference.registry)
        scheme, params = parse_challenge(challenge)
        if scheme == "bearer" and "realm" in params:
            scope = params.get("scope") or f"repository:{reference.path}:pull"
            return "Bearer " + self._token(host, reference, params, scope, credentials)
        if scheme == "basic" and credentials is not None:
            return credentials.basic()
        raise RegistryError(_login_hint(reference.registry, host))

    def _token(self, host: str, reference: Reference, params: dict[str, str], scope: str,
               credentials: Credentials | None) -> str:  # fmt: skip
        key = (params["realm"], scope)
        cached = self._tokens.get(key)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        query = urllib.parse.urlencode({"service": params.get("service", ""), "scope": scope})
        url = urllib.parse.urlsplit(f"{params['realm']}?{query}")
        headers = {"Authorization": credentials.basic()} if credentials else {}
        response = self._send(url, headers)
        body = response.read(MAX_MANIFEST_BYTES)
        response.close()
        assert reference.registry is not None
        if response.status == 401:
            raise RegistryError(_login_hint(reference.registry, url.netloc))
        if response.status != 200:
            raise RegistryError(f"{url.netloc}: the token server answered {response.status}")
        token, lifetime = _read_token(body, url.netloc)
        self._tokens[key] = (token, time.monotonic() + max(lifetime - 5, 1))
        return token


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="…",service="…",scope="…"`` → ("bearer", {realm, service, scope})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {k.lower(): v for k, v in re.findall(r'(\w+)="([^"]*)"', rest)}
    return scheme.lower(), params


def _read_token(body: bytes, server: str) -> tuple[str, float]:
    try:
        answer = json.loads(body)
        token = answer.get("token") or answer.get("access_token")
        lifetime = float(answer.get("expires_in") or TOKEN_LIFETIME)
    except (ValueError, AttributeError, TypeError):
        raise RegistryError(f"{server}: the token server's answer is not a token") from None
    if not isinstance(token, str) or not token:
        raise RegistryError(f"{server}: the token server's answer has no token")
    return token, lifetime


def _login_hint(registry: str, host: str) -> str:
    return (f"{registry}: authentication required by {host}; log in with `kurmactl login "
            f"{registry}` or add its credentials to the config")  # fmt: skip


def _status_error(reference: Reference, path: str, response: http.client.HTTPResponse) -> str:
    try:
        body = json.loads(response.read(65536) or b"{}")
        codes = [e.get("code", "") for e in body.get("errors", []) if isinstance(e, dict)]
    except (ValueError, AttributeError, OSError, http.client.HTTPException):
        codes = []
    finally:
        response.close()
    what = path.rsplit("/", 1)[-1]
    if response.status == 404:
        kind = "manifest" if "/manifests/" in path else "blob"
        return f"{reference}: {kind} {what} not found ({', '.join(codes) or '404'})"
    detail = f" ({', '.join(codes)})" if codes else ""
    return (
        f"{reference}: the registry answered {response.status} {response.reason}{detail} for {what}"
    )


def _endpoint(registry: str) -> str:
    return DOCKER_HUB_ENDPOINT if registry == DOCKER_HUB else registry


def _plain_http(host: str) -> bool:
    """An insecure registry speaks plain HTTP unless it answers a TLS handshake."""
    name, _, port = host.rpartition(":") if ":" in host else (host, "", "443")
    try:
        with (
            socket.create_connection((name, int(port or 443)), timeout=5) as raw,
            _unverified_context().wrap_socket(raw, server_hostname=name),
        ):
            return False
    except (ssl.SSLError, OSError):
        return True


def _unverified_context() -> ssl.SSLContext:
    """TLS that checks nothing: only for a registry the config names insecure."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _checked(check: Callable[[], T], reference: Reference) -> T:
    try:
        return check()
    except ValidationError as err:
        raise RegistryError(f"{reference}: {err}") from None


def _reason(err: BaseException) -> str:
    if isinstance(err, socket.timeout | TimeoutError):
        return "timed out (the server stalled)"
    return str(err) or type(err).__name__
