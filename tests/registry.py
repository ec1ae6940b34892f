"""A real registry for the tests: Debian's docker-registry (distribution 2.8) on 127.0.0.1 with
a certificate from a CA made here, anonymous, htpasswd or token auth (the token server is the
small one below, signing with a key the registry trusts); and OCI images built with umoci from
busybox, pushed with skopeo."""

from __future__ import annotations

import base64
import datetime
import http.server
import io
import json
import shutil
import socket
import ssl
import subprocess
import tarfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from initrd.vm import free_port
from kurmad.api.auth import TLSFiles, ensure_server_material

from .busybox import GROUP, PASSWD, busybox_path

TOOLS = ("docker-registry", "umoci", "skopeo", "htpasswd")


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


@dataclass
class Registry:
    """One running registry. ``host`` is what a reference names (``127.0.0.1:PORT``)."""

    root: Path
    tls: TLSFiles
    port: int
    process: subprocess.Popen[bytes] | None = None
    users: dict[str, str] = field(default_factory=dict)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def certs_dir(self) -> Path:
        """A certs.d directory that trusts this registry's CA."""
        return self.root / "certs.d"

    def blob_file(self, digest: str) -> Path:
        algorithm, hexa = digest.split(":")
        base = self.root / "storage/docker/registry/v2/blobs"
        return base / algorithm / hexa[:2] / hexa / "data"

    def push(self, layout: Path, tag: str, name: str, *, user: str | None = None) -> None:
        """skopeo copy oci:LAYOUT:TAG to this registry as NAME."""
        argv = ["skopeo", "copy", "-q", "--dest-cert-dir", str(self.certs_dir / self.host)]
        if user:
            argv += ["--dest-creds", f"{user}:{self.users[user]}"]
        argv += [f"oci:{layout}:{tag}", f"docker://{self.host}/{name}"]
        subprocess.run(argv, check=True, capture_output=True, timeout=120)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def _config(registry: Registry, auth: dict[str, object] | None) -> dict[str, object]:
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "error"},
        "storage": {
            "filesystem": {"rootdirectory": str(registry.root / "storage")},
            "delete": {"enabled": True},
        },
        "http": {
            "addr": registry.host,
            "tls": {
                "certificate": str(registry.tls.server_cert),
                "key": str(registry.tls.server_key),
            },
        },
    }
    if auth:
        config["auth"] = auth
    return config


@contextmanager
def running_registry(root: Path, auth: str = "none", token_server: TokenServer | None = None,
                     users: dict[str, str] | None = None) -> Iterator[Registry]:  # fmt: skip
    """A registry under ``root``: ``auth`` is none, htpasswd (``users``) or token."""
    root.mkdir(parents=True, exist_ok=True)
    tls = TLSFiles(root / "tls")
    tls.directory.mkdir(exist_ok=True)
    ensure_server_material(tls, ["registry"])
    registry = Registry(root, tls, free_port(), users=dict(users or {}))
    (registry.certs_dir / registry.host).mkdir(parents=True)
    shutil.copy(tls.ca_cert, registry.certs_dir / registry.host / "ca.crt")
    settings: dict[str, object] | None = None
    if auth == "htpasswd":
        settings = {
            "htpasswd": {"realm": "kurmad-tests", "path": str(_htpasswd(root, registry.users))}
        }
    elif auth == "token":
        assert token_server is not None
        settings = {"token": token_server.registry_settings()}
    (root / "config.yml").write_text(yaml.safe_dump(_config(registry, settings)))
    log = (root / "registry.log").open("wb")
    registry.process = subprocess.Popen(["docker-registry", "serve", str(root / "config.yml")],
                                        stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        _wait_until_serving(registry)
        yield registry
    finally:
        registry.stop()
        log.close()


def _htpasswd(root: Path, users: dict[str, str]) -> Path:
    path = root / "htpasswd"
    lines = [subprocess.run(["htpasswd", "-Bbn", user, password], check=True, capture_output=True,
                            text=True).stdout.strip() for user, password in users.items()]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


def _wait_until_serving(registry: Registry, timeout: float = 20) -> None:
    context = ssl.create_default_context(cafile=str(registry.tls.ca_cert))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert registry.process is not None
        if registry.process.poll() is not None:
            raise RuntimeError((registry.root / "registry.log").read_text()[-2000:])
        try:
            with (
                socket.create_connection(("127.0.0.1", registry.port), timeout=1) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1"),
            ):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError("the registry did not start")


# --- a token server (the distribution token spec), signing with a key the registry trusts ---


class TokenServer:
    """Issues a JWT for any scope to a user with the right password (Basic), to anyone if
    ``anonymous``; counts the tokens it gave, so a test can see the client cache them."""

    def __init__(self, root: Path, users: dict[str, str], anonymous: bool = False) -> None:
        self.root = root
        self.users = users
        self.anonymous = anonymous
        self.issued = 0
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.certificate = _self_signed(self.key, "kurmad-tests token issuer")
        self.bundle = root / "token-issuer.crt"
        root.mkdir(parents=True, exist_ok=True)
        self.bundle.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))
        self.port = free_port()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def registry_settings(self) -> dict[str, str]:
        return {"realm": self.realm, "service": "kurmad-tests", "issuer": "kurmad-tests",
                "rootcertbundle": str(self.bundle)}  # fmt: skip

    def __enter__(self) -> TokenServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def token(self, subject: str, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {"iss": "kurmad-tests", "sub": subject, "aud": "kurmad-tests", "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": str(now), "access": access}  # fmt: skip
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        signing_input = f"{_b64(json.dumps(header))}.{_b64(json.dumps(claims))}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64(signature)}"

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                subject = server.authenticated(self.headers.get("Authorization", ""))
                if subject is None:
                    self.send_response(401)
                    self.end_headers()
                    return
                body = json.dumps({"token": server.token(subject, query.get("scope", [])),
                                   "expires_in": 300}).encode()  # fmt: skip
                server.issued += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        return Handler

    def authenticated(self, authorization: str) -> str | None:
        if authorization.startswith("Basic "):
            user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
            return user if self.users.get(user) == password else None
        return "anonymous" if self.anonymous else None


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _self_signed(key: rsa.RSAPrivateKey, name: str) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(key, hashes.SHA256()))  # fmt: skip


# --- images built with umoci ------------------------------------------------------------------


def build_busybox_layout(layout: Path, tag: str = "1.0") -> Path:
    """An OCI layout with a three-layer busybox image: the base; a layer that deletes a file and
    replaces a directory's contents (whiteouts); a layer that makes that directory opaque."""
    busybox = busybox_path()
    assert busybox is not None
    bundle = layout.parent / f"{layout.name}-bundle"
    _umoci("init", "--layout", str(layout))
    _umoci("new", "--image", f"{layout}:{tag}")
    _umoci("unpack", "--image", f"{layout}:{tag}", str(bundle))
    rootfs = bundle / "rootfs"
    for directory in ("bin", "etc", "tmp", "www", "data/old"):
        (rootfs / directory).mkdir(parents=True, exist_ok=True)
    shutil.copy(busybox, rootfs / "bin/busybox")
    for applet in ("sh", "httpd", "cat", "ls", "echo", "id"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "etc/passwd").write_text(PASSWD)
    (rootfs / "etc/group").write_text(GROUP)
    (rootfs / "etc/deleted").write_text("gone in the second layer\n")
    (rootfs / "data/old/file").write_text("hidden by the opaque directory\n")
    (rootfs / "www/index.html").write_text("hello from an OCI image\n")
    _umoci("repack", "--refresh-bundle", "--image", f"{layout}:{tag}", str(bundle))
    (rootfs / "etc/deleted").unlink()
    shutil.rmtree(rootfs / "data")
    (rootfs / "data").mkdir()
    (rootfs / "data/new").write_text("only this\n")
    _umoci("repack", "--image", f"{layout}:{tag}", str(bundle))
    _umoci("raw", "add-layer", "--image", f"{layout}:{tag}", str(_opaque_layer(layout.parent)))
    _umoci("config", "--image", f"{layout}:{tag}", "--config.entrypoint", "/bin/httpd",
           "--config.cmd", "-f", "--config.cmd", "-p", "--config.cmd", "80", "--config.cmd", "-h",
           "--config.cmd", "/www", "--config.exposedports", "80/tcp",
           "--config.env", "GREETING=hello")  # fmt: skip
    shutil.rmtree(bundle)
    return layout


def _opaque_layer(directory: Path) -> Path:
    """A layer that makes /data opaque (umoci itself writes one whiteout per removed entry)."""
    path = directory / "opaque-layer.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in (
            ("data", None),
            ("data/.wh..wh..opq", b""),
            ("data/newest", b"newest\n"),
        ):
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return path


def _umoci(*args: str) -> None:
    subprocess.run(["umoci", *args], check=True, capture_output=True, timeout=120)
