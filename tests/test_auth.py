"""Certificates and roles: names that cannot inject, roles read from the parsed subject, and
revocation checked on every call (issue 11, item 2)."""

from __future__ import annotations

import datetime
import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kurmad.api import auth
from kurmad.api.auth import (
    Caller,
    CertificateError,
    TLSFiles,
    current_caller,
    ensure_server_material,
    issue_client,
    role_in,
)
from kurmad.client import Client, KurmaError
from kurmad.linux.cgroups import CgroupDriver

from .daemon import ServeProcess

INJECTION = "mallory/OU=admin\\"
DAY = datetime.timedelta(days=1)


def kurmad(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kurmad", *map(str, args)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kurmad: error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture
def tls(tmp_path: Path) -> TLSFiles:
    files = TLSFiles(tmp_path / "tls")
    ensure_server_material(files, ["edge-01"])
    return files


def crafted(tls: TLSFiles, out: Path, *attributes: tuple[x509.ObjectIdentifier, str]) -> Path:
    """A client bundle whose subject is exactly ``attributes``, signed by ``tls``'s CA: what
    someone holding the CA key (or a buggy issuer) could make."""
    ca_key = serialization.load_pem_private_key(tls.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = x509.load_pem_x509_certificate(tls.ca_cert.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - DAY)
        .not_valid_after(now + DAY)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "client.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
    (out / "client.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (out / "ca.crt").write_bytes(tls.ca_cert.read_bytes())
    return out


def certificate_of(bundle: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((bundle / "client.crt").read_bytes())


CN, OU = NameOID.COMMON_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME


# --- names --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [INJECTION, "a/b", "a=b", "a,b", "a\\b", "a+b", "a;b", "a<b", "a>b", 'a"b', "#a", "a\nb",
     "a\x00b", "a\x7fb", "a\u202eb", " alice", "alice ", "", "x" * 65, "é" * 33],
)  # fmt: skip
def test_names_that_a_subject_text_could_misread_are_refused(tls: TLSFiles, name: str) -> None:
    with pytest.raises(CertificateError, match="client name") as caught:
        issue_client(tls, name, "reader", tls.directory.parent / "bundle")
    assert "\n" not in str(caught.value), "one line, whatever the name holds"
    assert not (tls.directory.parent / "bundle").exists() and not tls.clients.exists()


@pytest.mark.parametrize("name", ["alice", "ops-team_1.prod", "élise", "build bot", "x" * 64])
def test_plain_names_are_issued_with_exactly_their_cn_and_one_ou(tls: TLSFiles, name: str) -> None:
    bundle = tls.directory.parent / "bundle"
    issue_client(tls, name, "operator", bundle)
    subject = certificate_of(bundle).subject
    assert [(a.oid, a.value) for a in subject] == [(CN, name), (OU, "operator")]


def test_the_injection_name_is_refused_by_certs_client(tmp_path: Path) -> None:
    result = kurmad("certs", "client", INJECTION, "--role", "reader", "-o", tmp_path / "b",
                    "--state-dir", tmp_path / "state")  # fmt: skip
    assert_one_line_error(result, "client name", "/", "=", "\\")
    assert not (tmp_path / "b").exists()
    assert not (tmp_path / "state").exists(), "refused before a CA is made for nothing"


# --- the files ----------------------------------------------------------------------------------------


def test_keys_are_owner_only_and_the_layout_is_kept(tmp_path: Path) -> None:
    result = kurmad("certs", "client", "alice", "--role", "reader", "-o", tmp_path / "alice",
                    "--tls-dir", tmp_path / "tls")  # fmt: skip
    assert result.returncode == 0, result.stderr
    tls = TLSFiles(tmp_path / "tls")
    for path in (tls.ca_cert, tls.ca_key, tls.server_cert, tls.server_key, tls.clients):
        assert path.exists(), path
    for key in (tls.ca_key, tls.server_key, tls.clients, tmp_path / "alice/client.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    for directory in (tls.directory, tmp_path / "alice"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    assert sorted(p.name for p in (tmp_path / "alice").iterdir()) == [
        "ca.crt", "client.crt", "client.key"]  # fmt: skip


def test_the_ca_and_server_certificate_are_what_a_tls_peer_expects(tls: TLSFiles) -> None:
    ca = x509.load_pem_x509_certificate(tls.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(tls.server_cert.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["kurmad", "localhost", "edge-01"]
    assert not server.subject.get_attributes_for_oid(OU), "the server certificate has no role"
    life = server.not_valid_after_utc - server.not_valid_before_utc
    assert life > datetime.timedelta(days=auth.SERVER_DAYS) - DAY


def test_client_certificates_last_90_days_by_default_and_days_is_honoured(tmp_path: Path) -> None:  # fmt: skip
    now = datetime.datetime.now(datetime.UTC)
    for name, days, extra in (("alice", 90, []), ("bob", 3, ["--days", "3"])):
        result = kurmad("certs", "client", name, "--role", "reader", "-o", tmp_path / name,
                        "--state-dir", tmp_path / "state", *extra)  # fmt: skip
        assert result.returncode == 0, result.stderr
        expiry = certificate_of(tmp_path / name).not_valid_after_utc
        assert abs(expiry - (now + datetime.timedelta(days=days))) < datetime.timedelta(minutes=5)
        registered = auth.issued_clients(TLSFiles(tmp_path / "state/tls"))[-1]
        assert (registered.name, registered.not_after) == (name, expiry)


@pytest.mark.parametrize(
    ("days", "words"),
    [("x", ["--days", "whole number"]), ("0", ["at least 1 day"]), ("-3", ["at least 1 day"]),
     ("1.5", ["whole number"]), ("40000", ["outlive the certificate authority"])],
)  # fmt: skip
def test_bad_days_are_refused(tmp_path: Path, days: str, words: list[str]) -> None:
    result = kurmad("certs", "client", "alice", "--role", "reader", "-o", tmp_path / "b",
                    "--state-dir", tmp_path / "state", "--days", days)  # fmt: skip
    assert_one_line_error(result, *words)
    assert not (tmp_path / "b").exists()


def test_state_dir_and_tls_dir_exclude_each_other(tmp_path: Path) -> None:
    result = kurmad("certs", "list", "--state-dir", tmp_path, "--tls-dir", tmp_path)
    assert result.returncode == 2 and "not allowed with" in result.stderr


# --- roles from the parsed subject -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attributes", "role"),
    [([(CN, "mallory/OU=admin"), (OU, "reader")], "reader"),
     ([(CN, "x,OU=admin"), (OU, "operator")], "operator"),
     ([(OU, "admin"), (CN, "ops")], "admin")],
)  # fmt: skip
def test_the_role_is_the_one_ou_attribute(tls: TLSFiles, tmp_path: Path, attributes: Any, role: str) -> None:  # fmt: skip
    assert role_in(certificate_of(crafted(tls, tmp_path / "b", *attributes))) == role


@pytest.mark.parametrize(
    ("attributes", "why"),
    [([(CN, "two"), (OU, "reader"), (OU, "admin")], "2 OU attributes"),
     ([(CN, "none")], "carries no role"),
     ([(CN, "cap"), (OU, "Admin")], "OU 'Admin' is not a role"),
     ([(CN, "space"), (OU, "admin ")], "OU 'admin ' is not a role"),
     ([(CN, "cn-only OU=admin")], "carries no role")],
)  # fmt: skip
def test_anything_but_exactly_one_role_ou_is_no_role(tls: TLSFiles, tmp_path: Path, attributes: Any, why: str) -> None:  # fmt: skip
    with pytest.raises(CertificateError, match=why):
        role_in(certificate_of(crafted(tls, tmp_path / "b", *attributes)))


# --- the interceptor and current_caller, without a network ------------------------------------------


class Aborted(Exception):
    pass


@dataclass
class FakeContext:
    peer_text: str
    pem: bytes | None = None

    def peer(self) -> str:
        return self.peer_text

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [self.pem]} if self.pem else {}

    def abort(self, code: grpc.StatusCode, message: str) -> None:
        raise Aborted(code, message)


@dataclass
class Details:
    method: str


def guarded(interceptor: auth.AuthInterceptor, method: str, handler: Any) -> Any:
    return interceptor.intercept_service(lambda _: handler, Details(method))


def test_current_caller_is_set_for_unary_and_streaming_methods_and_only_there(tls: TLSFiles) -> None:  # fmt: skip
    interceptor = auth.AuthInterceptor(tls)
    seen: list[Caller] = []

    def unary(request: Any, context: Any) -> str:
        seen.append(current_caller())
        return "ok"

    def streaming(request: Any, context: Any) -> Iterator[str]:
        for item in ("a", "b"):
            seen.append(current_caller())  # after each yield too
            yield item

    issue_client(tls, "alice", "reader", tls.directory.parent / "alice")
    pem = (tls.directory.parent / "alice/client.crt").read_bytes()
    tcp = FakeContext("ipv4:10.0.0.9:5000", pem)
    info = guarded(interceptor, "/kurma.v1.Host/Info", grpc.unary_unary_rpc_method_handler(unary))
    assert info.unary_unary(None, FakeContext("unix:")) == "ok"
    logs = guarded(interceptor, "/kurma.v1.Pods/Logs", grpc.unary_stream_rpc_method_handler(streaming))  # fmt: skip
    assert list(logs.unary_stream(None, tcp)) == ["a", "b"]
    alice = Caller("reader", "OU=reader,CN=alice")
    assert seen == [Caller("admin", "local"), alice, alice]
    with pytest.raises(LookupError, match="no RPC"):
        current_caller()
    elsewhere: list[BaseException] = []

    def outside() -> None:
        try:
            current_caller()
        except LookupError as err:
            elsewhere.append(err)

    thread = threading.Thread(target=outside)
    thread.start()
    thread.join()
    assert len(elsewhere) == 1


def test_an_insecure_tcp_caller_is_admin(tls: TLSFiles) -> None:
    interceptor = auth.AuthInterceptor(tls, insecure_tcp=True)
    assert interceptor.caller(FakeContext("ipv4:127.0.0.1:1")) == Caller("admin", "insecure")


def test_the_interceptor_refuses_roleless_and_revoked_certificates(tls: TLSFiles, tmp_path: Path) -> None:  # fmt: skip
    interceptor = auth.AuthInterceptor(tls)
    handler = guarded(interceptor, "/kurma.v1.Host/Info",
                      grpc.unary_unary_rpc_method_handler(lambda request, context: "ok"))  # fmt: skip

    def call(bundle: Path) -> Any:
        return handler.unary_unary(None, FakeContext("ipv4:10.0.0.9:1", (bundle / "client.crt").read_bytes()))  # fmt: skip

    two = crafted(tls, tmp_path / "two", (CN, "two"), (OU, "reader"), (OU, "admin"))
    with pytest.raises(Aborted) as caught:
        call(two)
    assert caught.value.args == (grpc.StatusCode.UNAUTHENTICATED,
                                 "client certificate OU=admin,OU=reader,CN=two has 2 OU attributes: a role is exactly one")  # fmt: skip
    issue_client(tls, "bob", "reader", tmp_path / "bob")
    assert call(tmp_path / "bob") == "ok"
    auth.revoke(tls, "bob")
    with pytest.raises(Aborted, match="revoked"):
        call(tmp_path / "bob")
    tls.revoked.write_text("{not json")
    with pytest.raises(Aborted, match="revocation list unreadable"):
        call(tmp_path / "bob")
    tls.revoked.unlink()
    assert call(tmp_path / "bob") == "ok", "the list is re-read when it changes"


def test_revoke_and_list(tmp_path: Path) -> None:
    state = tmp_path / "state"
    for out in ("a1", "a2", "b"):
        name = "bob" if out == "b" else "alice"
        result = kurmad("certs", "client", name, "--role", "reader", "-o", tmp_path / out, "--state-dir", state)  # fmt: skip
        assert result.returncode == 0, result.stderr
    result = kurmad("certs", "revoke", "alice", "--state-dir", state)
    assert (result.returncode, result.stdout) == (0, "alice: 2 certificate(s) revoked\n")
    listing = json.loads(kurmad("certs", "list", "-o", "json", "--state-dir", state).stdout)
    assert [(c["name"], c["revoked"]) for c in listing] == [("alice", True), ("alice", True), ("bob", False)]  # fmt: skip
    assert listing[1]["serial"] == format(certificate_of(tmp_path / "a2").serial_number, "x")
    tls = TLSFiles(state / "tls")
    assert stat.S_IMODE(tls.revoked.stat().st_mode) == 0o600
    table = kurmad("certs", "list", "--state-dir", state).stdout.splitlines()
    assert table[0].split() == ["NAME", "ROLE", "SERIAL", "EXPIRES", "REVOKED"]
    assert [line.split()[-1] for line in table[1:]] == ["yes", "yes", "no"]
    bob = format(certificate_of(tmp_path / "b").serial_number, "x")
    colons = ":".join(bob[i : i + 2] for i in range(0, len(bob), 2)).upper()
    assert kurmad("certs", "revoke", "--serial", colons, "--state-dir", state).returncode == 0
    assert auth.revoked_serials(tls) == {certificate_of(tmp_path / p).serial_number for p in ("a1", "a2", "b")}  # fmt: skip
    assert_one_line_error(kurmad("certs", "revoke", "carol", "--state-dir", state), "no certificate was issued to 'carol'")  # fmt: skip
    assert_one_line_error(kurmad("certs", "revoke", "--serial", "xyz", "--state-dir", state), "not a hexadecimal")  # fmt: skip
    assert_one_line_error(kurmad("certs", "revoke", "--state-dir", state), "NAME or a --serial")
    assert_one_line_error(kurmad("certs", "list", "--state-dir", tmp_path / "none"), "no certificate authority")  # fmt: skip


def test_a_corrupt_registry_is_reported_and_left_alone(tls: TLSFiles, tmp_path: Path) -> None:
    tls.clients.write_text('{"clients": [{"name": "x"}]}')
    with pytest.raises(CertificateError, match="clients.json: not a registry"):
        issue_client(tls, "alice", "reader", tmp_path / "alice")
    assert tls.clients.read_text() == '{"clients": [{"name": "x"}]}'
    assert not (tmp_path / "alice").exists()


def test_usable_bundle_notices_revocation_expiry_and_another_ca(tls: TLSFiles, tmp_path: Path) -> None:  # fmt: skip
    issue_client(tls, "vm-admin", "admin", tmp_path / "admin")
    assert auth.usable_bundle(tls, tmp_path / "admin")
    issue_client(tls, "soon", "admin", tmp_path / "soon", days=2)
    assert not auth.usable_bundle(tls, tmp_path / "soon")
    other = TLSFiles(tmp_path / "other")
    ensure_server_material(other, [])
    assert not auth.usable_bundle(other, tmp_path / "admin")
    auth.revoke(tls, "vm-admin")
    assert not auth.usable_bundle(tls, tmp_path / "admin")
    assert not auth.usable_bundle(tls, tmp_path / "missing")


def test_the_vm_admin_bundle_is_kept_and_made_again_when_revoked(tmp_path: Path) -> None:
    from initrd.vm import make_tls

    tls, admin = make_tls(tmp_path)
    first = certificate_of(admin).serial_number
    assert make_tls(tmp_path)[1] == admin and certificate_of(admin).serial_number == first
    auth.revoke(tls, "admin")
    make_tls(tmp_path)
    assert certificate_of(admin).serial_number != first
    assert auth.usable_bundle(tls, admin)


# --- against a real daemon ------------------------------------------------------------------------------

root = pytest.mark.skipif(os.geteuid() != 0, reason="kurmad serve needs root (cgroups, mounts)")


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    daemon = ServeProcess(tmp_path_factory.mktemp("auth") / "state", "--listen", "127.0.0.1:0")
    daemon.start()
    yield daemon
    daemon.stop()
    CgroupDriver(daemon.cgroup_parent).cgroup("").remove()


def daemon_tls(serve: ServeProcess) -> TLSFiles:
    return TLSFiles(serve.state / "tls")


def refusal(serve: ServeProcess, bundle: Path) -> KurmaError:
    assert serve.tcp is not None
    with Client(serve.tcp, bundle, timeout=10) as client, pytest.raises(KurmaError) as caught:
        client.info()
    return caught.value


@root
def test_a_crafted_cn_does_not_make_an_admin(serve: ServeProcess, tmp_path: Path) -> None:
    bundle = crafted(daemon_tls(serve), tmp_path / "m", (CN, "mallory/OU=admin"), (OU, "reader"))
    assert serve.tcp is not None
    with Client(serve.tcp, bundle, timeout=10) as mallory:
        assert mallory.info().mode == "serve"
        with pytest.raises(KurmaError) as caught:
            mallory.reboot()
    assert caught.value.code == "PERMISSION_DENIED" and "this client is reader" in caught.value.message  # fmt: skip


@root
@pytest.mark.parametrize(
    ("attributes", "why"),
    [([(CN, "two"), (OU, "reader"), (OU, "admin")], "2 OU attributes"),
     ([(CN, "cap"), (OU, "Admin")], "OU 'Admin' is not a role"),
     ([(CN, "space"), (OU, "admin ")], "OU 'admin ' is not a role"),
     ([(CN, "none")], "carries no role")],
)  # fmt: skip
def test_a_certificate_without_exactly_one_role_gets_nothing(serve: ServeProcess, tmp_path: Path, attributes: Any, why: str) -> None:  # fmt: skip
    refused = refusal(serve, crafted(daemon_tls(serve), tmp_path / "b", *attributes))
    assert refused.code == "UNAUTHENTICATED" and why in refused.message, refused


@root
def test_revocation_holds_at_once_and_after_a_restart(serve: ServeProcess, tmp_path: Path) -> None:
    assert serve.tcp is not None
    issued = kurmad("certs", "client", "leaky", "--role", "operator", "-o", tmp_path / "old", "--state-dir", serve.state)  # fmt: skip
    assert issued.returncode == 0, issued.stderr
    with Client(serve.tcp, tmp_path / "old", timeout=10) as leaky:
        assert leaky.info().mode == "serve"
        result = kurmad("certs", "revoke", "leaky", "--state-dir", serve.state)
        assert result.returncode == 0, result.stderr
        with pytest.raises(KurmaError) as caught:
            leaky.info()  # the same connection, the very next call
        assert caught.value.code == "UNAUTHENTICATED"
        assert "client certificate OU=operator,CN=leaky" in caught.value.message
        assert "is revoked" in caught.value.message
    serve.stop()
    serve.start()
    assert serve.tcp is not None
    assert refusal(serve, tmp_path / "old").code == "UNAUTHENTICATED"
    again = kurmad("certs", "client", "leaky", "--role", "operator", "-o", tmp_path / "new", "--state-dir", serve.state)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert certificate_of(tmp_path / "new").serial_number != certificate_of(tmp_path / "old").serial_number  # fmt: skip
    with Client(serve.tcp, tmp_path / "new", timeout=10) as renewed:
        assert renewed.info().mode == "serve"
    assert refusal(serve, tmp_path / "old").code == "UNAUTHENTICATED"
