"""Who may do what: mutual TLS with a certificate authority of the host's own, roles carried in
client certificates, checked on every call.

- ``reader``: look (get, list, logs, wait, info, events);
- ``operator``: also change pods and images;
- ``admin``: everything, the host's power included.

The local Unix socket is owner-only, so whoever can open it is the host's root: admin. Plain TCP
is refused unless ``--insecure`` is given, and then every caller is admin (development only).

A client's role is the one organizationalUnitName attribute of its certificate's subject, read
from the parsed certificate: exactly one, exactly ``reader``, ``operator`` or ``admin``. Subjects
are built from attribute values, never from text, so no name can smuggle in a second OU.

Certificates are made here with the ``cryptography`` package. The TLS directory holds the CA
(ca.crt, ca.key), the server's certificate (server.crt, server.key), the registry of issued
client certificates (clients.json) and the revocation list (revoked.json), which the daemon
re-reads whenever it changes."""

from __future__ import annotations

import contextvars
import datetime
import fcntl
import functools
import ipaddress
import os
import threading
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kurmad.linux.files import read_json, write_atomic, write_json_atomic

from . import SERVER_NAME

ROLES = ("reader", "operator", "admin")
_RANK = {role: rank for rank, role in enumerate(ROLES)}

READER, OPERATOR, ADMIN = ROLES
REQUIRED_ROLE: dict[str, str] = {
    **{f"/kurma.v1.Pods/{m}": READER for m in ("Get", "List", "Wait", "Logs")},
    **{
        f"/kurma.v1.Pods/{m}": OPERATOR
        for m in ("Create", "Start", "Stop", "Remove", "Exec", "Attach")
    },
    **{f"/kurma.v1.Images/{m}": READER for m in ("List", "Get")},
    **{f"/kurma.v1.Images/{m}": OPERATOR for m in ("Import", "Remove", "GC", "Pull")},
    **{f"/kurma.v1.Images/{m}": ADMIN for m in ("Login", "Logout")},  # the host's secrets
    "/kurma.v1.Host/Info": READER,
    "/kurma.v1.Host/Events": READER,
    "/kurma.v1.Host/Reboot": ADMIN,
    "/kurma.v1.Host/Poweroff": ADMIN,
    "/grpc.health.v1.Health/Check": READER,
    "/grpc.health.v1.Health/Watch": READER,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": READER,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": READER,
}

CA_DAYS = 3650
SERVER_DAYS = 825
CLIENT_DAYS = 90
# Slack for clocks a little behind the issuer's: a fresh certificate is valid at once.
_BACKDATE = datetime.timedelta(minutes=5)
# A name goes into the CN, which holds 64 bytes; these characters are special in some textual
# form of a subject (openssl's /A=b, RFC 4514's a=b,c=d): a name that needs none is unambiguous
# wherever it is printed.
NAME_LIMIT = 64
_NAME_SPECIALS = '/=,\\+;<>"#'

LOCAL_IDENTITY = "local"  # the Unix socket: one client, whoever opens it
INSECURE_IDENTITY = "insecure"  # TCP without TLS (--insecure): anonymous, counted as one client


class CertificateError(ValueError):
    """Bad input or a bad file; the message names it (kurmad prints it as one line)."""


# --- the TLS directory ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSFiles:
    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    @property
    def clients(self) -> Path:
        """The registry of issued client certificates."""
        return self.directory / "clients.json"

    @property
    def revoked(self) -> Path:
        """The revocation list the daemon checks on every call."""
        return self.directory / "revoked.json"

    @property
    def lock(self) -> Path:
        return self.directory / "certs.lock"


@dataclass(frozen=True)
class IssuedClient:
    """One client certificate, as the registry keeps it."""

    name: str
    role: str
    serial: int
    not_before: datetime.datetime
    not_after: datetime.datetime

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "role": self.role, "serial": format(self.serial, "x"),
                "not_before": _iso(self.not_before), "not_after": _iso(self.not_after)}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, str]) -> IssuedClient:
        return cls(data["name"], data["role"], int(data["serial"], 16),
                   _parse_iso(data["not_before"]), _parse_iso(data["not_after"]))  # fmt: skip


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text)


@contextmanager
def _exclusive(tls: TLSFiles) -> Iterator[None]:
    """Held while the TLS directory changes: `kurmad certs` and a starting daemon may race."""
    tls.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    tls.directory.chmod(0o700)
    fd = os.open(tls.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --- making certificates ----------------------------------------------------------------------------


def ensure_server_material(tls: TLSFiles, names: list[str]) -> None:
    """Create the host's CA and server certificate on first start (kept afterwards). A
    directory that has both is only read: it may be on a read-only disk."""
    if tls.ca_cert.exists() and tls.server_cert.exists():
        return
    with _exclusive(tls):
        made_ca = not tls.ca_cert.exists()
        if made_ca:
            _make_ca(tls, f"kurmad CA {names[0] if names else ''}".strip()[:NAME_LIMIT])
        if made_ca or not tls.server_cert.exists():
            _make_server_certificate(tls, names)


def _make_ca(tls: TLSFiles, common_name: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(tls.ca_key, key)
    _write_certificate(tls.ca_cert, certificate)


def _make_server_certificate(tls: TLSFiles, names: list[str]) -> None:
    dns = dict.fromkeys([SERVER_NAME, "localhost", *(n for n in names if n and n.isascii())])
    alternatives: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
    alternatives += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
    key, certificate = _sign(
        tls,
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME)]),
        _now() + datetime.timedelta(days=SERVER_DAYS),
        [
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
            (x509.SubjectAlternativeName(alternatives), False),
        ],
    )
    _write_key(tls.server_key, key)
    _write_certificate(tls.server_cert, certificate)


def check_client_name(name: str) -> None:
    """Refuse a client name that some textual form of a subject could misread."""
    if not name:
        raise CertificateError("the client name is empty")
    hidden = next(
        (c for c in name if unicodedata.category(c)[0] == "C" or c in "\u2028\u2029"), None
    )
    if hidden is not None:
        raise CertificateError(
            f"client name {name!r} holds a control or invisible character (U+{ord(hidden):04X})"
        )
    specials = sorted({c for c in name if c in _NAME_SPECIALS})
    if specials:
        raise CertificateError(
            f"client name {name!r} holds {' '.join(specials)}: none of {' '.join(_NAME_SPECIALS)} may be in a name"
        )
    if name != name.strip():
        raise CertificateError(f"client name {name!r} starts or ends with a space")
    if len(name.encode()) > NAME_LIMIT:
        raise CertificateError(
            f"client name {name!r} is longer than {NAME_LIMIT} bytes (a certificate's CN holds {NAME_LIMIT})"
        )


def parse_days(text: str) -> int:
    """A validity in days, as ``--days`` gives it."""
    try:
        days = int(text)
    except ValueError:
        raise CertificateError(f"--days {text!r} is not a whole number of days") from None
    if days < 1:
        raise CertificateError(f"--days {days}: a certificate is valid for at least 1 day")
    return days


def issue_client(
    tls: TLSFiles, name: str, role: str, out: Path, days: int = CLIENT_DAYS
) -> IssuedClient:
    """A client bundle (ca.crt, client.crt, client.key) in ``out`` for ``name`` with ``role``,
    valid for ``days``, and recorded in the registry (so that it can be revoked by name)."""
    if role not in ROLES:
        raise CertificateError(f"role {role!r} is not one of {', '.join(ROLES)}")
    check_client_name(name)
    if days < 1:
        raise CertificateError(f"a certificate is valid for at least 1 day, not {days}")
    if not tls.ca_key.exists():
        raise CertificateError(
            f"no certificate authority in {tls.directory}: start kurmad serve once first"
        )
    not_after = _now() + datetime.timedelta(days=days)
    ca_expiry = _load_certificate(tls.ca_cert).not_valid_after_utc
    if not_after > ca_expiry:
        raise CertificateError(
            f"a validity of {days} days would outlive the certificate authority (valid until {_iso(ca_expiry)})"
        )
    subject = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, name),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
    ])  # fmt: skip
    with _exclusive(tls):
        # Registered before the bundle is written: a certificate that exists can be revoked.
        key, certificate = _sign(tls, subject, not_after, [
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)])  # fmt: skip
        issued = IssuedClient(name, role, certificate.serial_number,
                              certificate.not_valid_before_utc, certificate.not_valid_after_utc)  # fmt: skip
        _save_registry(tls, [*issued_clients(tls), issued])
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write_key(out / "client.key", key)
    _write_certificate(out / "client.crt", certificate)
    write_atomic(out / "ca.crt", tls.ca_cert.read_bytes())
    return issued


_Extensions = list[tuple[x509.ExtensionType, bool]]


def _sign(
    tls: TLSFiles, subject: x509.Name, not_after: datetime.datetime, extensions: _Extensions
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new key and its certificate for ``subject``, signed by the CA."""
    ca_certificate = _load_certificate(tls.ca_cert)
    ca_key = _load_ca_key(tls.ca_key)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return key, builder.sign(ca_key, hashes.SHA256())


def _key_usage(signs_certificates: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not signs_certificates, content_commitment=False,
        key_encipherment=False, data_encipherment=False, key_agreement=False,
        key_cert_sign=signs_certificates, crl_sign=signs_certificates,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_atomic(path, pem, mode=0o600)


def _write_certificate(path: Path, certificate: x509.Certificate) -> None:
    write_atomic(path, certificate.public_bytes(serialization.Encoding.PEM))


def _load_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError as err:
        raise CertificateError(f"{path}: not a PEM certificate ({err})") from None


def _load_ca_key(path: Path) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as err:
        raise CertificateError(f"{path}: not an unencrypted PEM private key ({err})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CertificateError(f"{path}: a CA key is EC or RSA, not {type(key).__name__}")
    return key


def usable_bundle(tls: TLSFiles, bundle: Path, margin_days: int = 7) -> bool:
    """Whether the client bundle in ``bundle`` is this CA's, not revoked, and valid for
    ``margin_days`` more: a tool that keeps a bundle (initrd/vm.py) renews it otherwise."""
    try:
        certificate = _load_certificate(bundle / "client.crt")
        certificate.verify_directly_issued_by(_load_certificate(tls.ca_cert))
        revoked = certificate.serial_number in revoked_serials(tls)
    except (OSError, ValueError, TypeError, CertificateError, InvalidSignature):
        return False
    left = certificate.not_valid_after_utc - _now()
    return not revoked and left > datetime.timedelta(days=margin_days)


def server_credentials(tls: TLSFiles) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(tls.server_key.read_bytes(), tls.server_cert.read_bytes())],
        root_certificates=tls.ca_cert.read_bytes(),
        require_client_auth=True,
    )


# --- the registry and revocation ------------------------------------------------------------------


def issued_clients(tls: TLSFiles) -> list[IssuedClient]:
    """Every client certificate issued from this directory, oldest first."""
    if not tls.clients.exists():
        return []
    try:
        return [IssuedClient.from_json(entry) for entry in read_json(tls.clients)["clients"]]
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CertificateError(
            f"{tls.clients}: not a registry of client certificates ({err})"
        ) from None


def _save_registry(tls: TLSFiles, clients: list[IssuedClient]) -> None:
    write_json_atomic(tls.clients, {"clients": [c.to_json() for c in clients]}, mode=0o600)


def revoked_serials(tls: TLSFiles) -> set[int]:
    return set(_revocations(tls.revoked))


def _revocations(path: Path) -> dict[int, dict[str, str]]:
    """The revocation list: its entries by serial."""
    try:
        entries = read_json(path)["revoked"]
        return {int(entry["serial"], 16): entry for entry in entries}
    except FileNotFoundError:
        return {}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CertificateError(f"{path}: not a revocation list ({err})") from None


def parse_serial(text: str) -> int:
    """A serial number as people copy it: hex, with or without 0x or colons."""
    digits = text.strip().lower().removeprefix("0x").replace(":", "")
    try:
        serial = int(digits, 16)
    except ValueError:
        raise CertificateError(f"--serial {text!r} is not a hexadecimal serial number") from None
    if serial <= 0:
        raise CertificateError(f"--serial {text!r}: a serial number is positive")
    return serial


@dataclass(frozen=True)
class Revocation:
    """What ``revoke`` did: the serials it added, those already revoked, and those it did not
    find in the registry (issued before it existed, or by another directory's CA)."""

    added: list[int]
    already: list[int]
    unregistered: list[int]


def revoke(tls: TLSFiles, name: str | None = None, serial: int | None = None) -> Revocation:
    """Revoke every certificate issued to ``name``, or the one with ``serial``."""
    if (name is None) == (serial is None):
        raise CertificateError("revoke a NAME or a --serial, one of them")
    if not tls.ca_cert.exists():
        raise CertificateError(f"no certificate authority in {tls.directory}")
    with _exclusive(tls):
        registry = {c.serial: c for c in issued_clients(tls)}
        if serial is not None:
            serials = [serial]
        else:
            serials = [s for s, c in registry.items() if c.name == name]
            if not serials:
                raise CertificateError(f"no certificate was issued to {name!r} (kurmad certs list)")
        revoked = _revocations(tls.revoked)
        added = [s for s in serials if s not in revoked]
        when = _iso(_now())
        for s in added:
            owner = registry[s].name if s in registry else None
            revoked[s] = {"serial": format(s, "x"), "name": owner or "", "revoked_at": when}
        if added:
            write_json_atomic(tls.revoked, {"revoked": list(revoked.values())}, mode=0o600)
    return Revocation(added, [s for s in serials if s not in added],
                      [s for s in serials if s not in registry])  # fmt: skip


class RevocationList:
    """The revoked serials of a revocation list file, re-read whenever the file changes: each
    check stats it (inode, size, mtime), so a revocation counts from the next call on."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._seen: tuple[int, ...] | None = None
        self._serials: frozenset[int] = frozenset()
        self._error: str | None = None

    def is_revoked(self, serial: int) -> bool:
        """Raises CertificateError while the file cannot be read: then nobody is let in."""
        with self._lock:
            self._refresh()
            if self._error is not None:
                raise CertificateError(self._error)
            return serial in self._serials

    def _refresh(self) -> None:
        try:
            info = os.stat(self._path)
            seen: tuple[int, ...] = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
        except FileNotFoundError:
            seen = ()
        except OSError as err:
            self._seen, self._error = None, f"revocation list {self._path}: {err.strerror}"
            return
        if seen == self._seen:
            return
        try:
            self._serials, self._error = frozenset(_revocations(self._path)), None
        except (OSError, CertificateError) as err:
            self._error = f"revocation list unreadable: {err}"
        self._seen = seen


# --- callers and roles ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """Who is calling: a role, and an identity that is the same for every connection of one
    client (``local`` for the Unix socket, the certificate's RFC 4514 subject for TCP)."""

    role: str
    identity: str


_CALLER: contextvars.ContextVar[Caller] = contextvars.ContextVar("kurmad_caller")


def current_caller() -> Caller:
    """The caller of the RPC running in this thread (LookupError outside an RPC). A servicer
    that hands work to a thread of its own gives it contextvars.copy_context() to keep this."""
    try:
        return _CALLER.get()
    except LookupError:
        raise LookupError("no RPC is running in this thread") from None


def role_in(certificate: x509.Certificate) -> str:
    """The role a client certificate carries: its one OU attribute, exactly a role's name."""
    who = certificate.subject.rfc4514_string()
    units = certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if not units:
        raise CertificateError(
            f"client certificate {who} carries no role (OU=reader|operator|admin)"
        )
    if len(units) > 1:
        raise CertificateError(
            f"client certificate {who} has {len(units)} OU attributes: a role is exactly one"
        )
    value = units[0].value
    if not isinstance(value, str) or value not in ROLES:
        raise CertificateError(
            f"client certificate {who}: OU {value!r} is not a role (reader, operator or admin)"
        )
    return value


@functools.lru_cache(maxsize=256)
def _peer_certificate(pem: bytes) -> x509.Certificate:
    """Parsed once per certificate: a client sends the same one on every call."""
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as err:
        raise CertificateError(f"the client certificate cannot be parsed: {err}") from None


class AuthInterceptor(grpc.ServerInterceptor):
    def __init__(self, tls: TLSFiles, insecure_tcp: bool = False) -> None:
        self._insecure_tcp = insecure_tcp
        self._revocations = RevocationList(tls.revoked)

    def caller(self, context: grpc.ServicerContext) -> Caller:
        """Who is calling; CertificateError says why a TCP client has no role."""
        if context.peer().startswith("unix:"):
            return Caller(ADMIN, LOCAL_IDENTITY)
        if self._insecure_tcp:
            return Caller(ADMIN, INSECURE_IDENTITY)
        pems = context.auth_context().get("x509_pem_cert") or []
        if len(pems) != 1:
            raise CertificateError("no client certificate")
        certificate = _peer_certificate(pems[0])
        who = certificate.subject.rfc4514_string()
        if self._revocations.is_revoked(certificate.serial_number):
            raise CertificateError(
                f"client certificate {who} (serial {certificate.serial_number:x}) is revoked"
            )
        return Caller(role_in(certificate), who)

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        required = REQUIRED_ROLE.get(details.method, ADMIN)

        def authorize(context: grpc.ServicerContext) -> Caller:
            try:
                caller = self.caller(context)
            except CertificateError as err:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, str(err))  # raises
            if _RANK[caller.role] < _RANK[required]:
                context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"{details.method} needs the {required} role; this client is {caller.role}",
                )
            return caller

        return _guarded(handler, authorize)


def _guarded(handler: Any, authorize: Callable[[grpc.ServicerContext], Caller]) -> Any:
    """The same handler, run in a context where ``current_caller()`` is whoever ``authorize``
    let in. Each RPC gets a context of its own (a copy), so the worker thread's own context
    never holds a caller and nothing leaks from one RPC into the next."""
    kinds = {
        "unary_unary": grpc.unary_unary_rpc_method_handler,
        "unary_stream": grpc.unary_stream_rpc_method_handler,
        "stream_unary": grpc.stream_unary_rpc_method_handler,
        "stream_stream": grpc.stream_stream_rpc_method_handler,
    }
    for attribute, make in kinds.items():
        method = getattr(handler, attribute)
        if method is None:
            continue
        wrapped: Any
        if attribute.endswith("_stream"):

            def wrapped(request: Any, context: grpc.ServicerContext, method: Any = method) -> Any:
                scope = _scope_of(authorize(context))
                yield from _iterate_in(scope, scope.run(lambda: iter(method(request, context))))

        else:

            def wrapped(request: Any, context: grpc.ServicerContext, method: Any = method) -> Any:
                return _scope_of(authorize(context)).run(method, request, context)

        return make(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


def _scope_of(caller: Caller) -> contextvars.Context:
    scope = contextvars.copy_context()
    scope.run(_CALLER.set, caller)
    return scope


def _iterate_in(scope: contextvars.Context, responses: Iterator[Any]) -> Iterator[Any]:
    """``responses`` stepped inside ``scope``: a streaming method's body runs only when its
    next item is asked for, so each step must enter the caller's context again."""
    try:
        while True:
            try:
                item = scope.run(next, responses)
            except StopIteration:
                return
            yield item
    finally:
        close = getattr(responses, "close", None)
        if close is not None:
            scope.run(close)
