"""Who may do what: mutual TLS with a certificate authority of the host's own, roles carried in
client certificates, checked on every call.

- ``reader``: look (get, list, logs, wait, info, events);
- ``operator``: also change pods and images;
- ``admin``: everything, the host's power included.

The local Unix socket is owner-only, so whoever can open it is the host's root: admin. Plain TCP
is refused unless ``--insecure`` is given, and then every caller is admin (development only).
Certificates are made by the ``openssl`` program, once per host (kurmad boot ships it too)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from . import SERVER_NAME

ROLES = ("reader", "operator", "admin")
_RANK = {role: rank for rank, role in enumerate(ROLES)}

_READER, _OPERATOR, _ADMIN = ROLES
REQUIRED_ROLE: dict[str, str] = {
    **{f"/kurma.v1.Pods/{m}": _READER for m in ("Get", "List", "Wait", "Logs")},
    **{
        f"/kurma.v1.Pods/{m}": _OPERATOR
        for m in ("Create", "Start", "Stop", "Remove", "Exec", "Attach")
    },
    **{f"/kurma.v1.Images/{m}": _READER for m in ("List", "Get")},
    **{f"/kurma.v1.Images/{m}": _OPERATOR for m in ("Import", "Remove", "GC")},
    "/kurma.v1.Host/Info": _READER,
    "/kurma.v1.Host/Events": _READER,
    "/kurma.v1.Host/Reboot": _ADMIN,
    "/kurma.v1.Host/Poweroff": _ADMIN,
    "/grpc.health.v1.Health/Check": _READER,
    "/grpc.health.v1.Health/Watch": _READER,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": _READER,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": _READER,
}


class CertificateError(Exception):
    pass


# --- certificates ---------------------------------------------------------------------------------


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


def _openssl(*args: str, cwd: Path | None = None) -> None:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True, cwd=cwd)
    if result.returncode != 0:
        raise CertificateError(
            f"openssl {args[0]}: {result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'failed'}"
        )


def _new_key(path: Path) -> None:
    _openssl(
        "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path)
    )
    os.chmod(path, 0o600)


def ensure_server_material(tls: TLSFiles, names: list[str]) -> None:
    """Create the host's CA and server certificate on first start (kept afterwards)."""
    tls.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not tls.ca_cert.exists():
        _new_key(tls.ca_key)
        _openssl("req", "-x509", "-new", "-key", str(tls.ca_key), "-out", str(tls.ca_cert), "-days", "3650",
                 "-subj", f"/CN=kurmad CA {names[0] if names else ''}".rstrip(), "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    if not tls.server_cert.exists():
        alt = ",".join(
            [
                f"DNS:{SERVER_NAME}",
                "DNS:localhost",
                "IP:127.0.0.1",
                "IP:::1",
                *(f"DNS:{n}" for n in names if n),
            ]
        )
        _issue(tls, tls.server_key, tls.server_cert, f"/CN={SERVER_NAME}",
               [f"subjectAltName={alt}", "extendedKeyUsage=serverAuth"])  # fmt: skip


def issue_client(tls: TLSFiles, name: str, role: str, out: Path) -> None:
    """A client bundle (ca.crt, client.crt, client.key) for ``name`` with ``role``."""
    if role not in ROLES:
        raise CertificateError(f"role {role!r} is not one of {', '.join(ROLES)}")
    if not tls.ca_key.exists():
        raise CertificateError(
            f"no certificate authority in {tls.directory}: start kurmad serve once first"
        )
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    _issue(
        tls,
        out / "client.key",
        out / "client.crt",
        f"/CN={name}/OU={role}",
        ["extendedKeyUsage=clientAuth"],
    )
    (out / "ca.crt").write_bytes(tls.ca_cert.read_bytes())


def _issue(tls: TLSFiles, key: Path, cert: Path, subject: str, extensions: list[str]) -> None:
    _new_key(key)
    with tempfile.TemporaryDirectory() as scratch:
        csr = Path(scratch) / "req.csr"
        ext = Path(scratch) / "ext.cnf"
        ext.write_text("\n".join(extensions) + "\n")
        _openssl("req", "-new", "-key", str(key), "-out", str(csr), "-subj", subject)
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(tls.ca_cert), "-CAkey", str(tls.ca_key),
                 "-CAcreateserial", "-CAserial", str(Path(scratch) / "ca.srl"), "-days", "825",
                 "-extfile", str(ext), "-out", str(cert))  # fmt: skip


def server_credentials(tls: TLSFiles) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(tls.server_key.read_bytes(), tls.server_cert.read_bytes())],
        root_certificates=tls.ca_cert.read_bytes(),
        require_client_auth=True,
    )


# --- roles ----------------------------------------------------------------------------------------


def role_of(context: grpc.ServicerContext, insecure_tcp: bool) -> str | None:
    """The caller's role, or None if it has none."""
    if context.peer().startswith("unix:") or insecure_tcp:
        return _ADMIN
    subject = b",".join(context.auth_context().get("x509_subject", [])).decode(errors="replace")
    for part in subject.replace("/", ",").split(","):
        key, _, value = part.strip().partition("=")
        if key == "OU" and value in ROLES:
            return value
    return None


class AuthInterceptor(grpc.ServerInterceptor):
    def __init__(self, insecure_tcp: bool = False) -> None:
        self._insecure_tcp = insecure_tcp

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        required = REQUIRED_ROLE.get(details.method, _ADMIN)

        def check(context: grpc.ServicerContext) -> None:
            role = role_of(context, self._insecure_tcp)
            if role is None:
                context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "no role in the client certificate (OU=reader|operator|admin)",
                )
            elif _RANK[role] < _RANK[required]:
                context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"{details.method} needs the {required} role; this client is {role}",
                )

        return _guarded(handler, check)


def _guarded(handler: Any, check: Callable[[grpc.ServicerContext], None]) -> Any:
    """The same handler, with ``check`` run before the method."""
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
                check(context)
                yield from method(request, context)

        else:

            def wrapped(request: Any, context: grpc.ServicerContext, method: Any = method) -> Any:
                check(context)
                return method(request, context)

        return make(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler
