"""The registry client (kurmad/images/oci/registry.py) against a real registry (Debian's
docker-registry, TLS from a CA the test makes; anonymous, htpasswd and token auth) with an image
umoci built and skopeo pushed; and against a small fake server for what a real registry will not
do on demand (stalls, 500s, redirect loops, oversize and foreign documents)."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kurmad.images.oci.documents import MAX_MANIFEST_BYTES, Descriptor, MediaType, Platform
from kurmad.images.oci.reference import Reference, parse_reference
from kurmad.images.oci.registry import (
    Credentials,
    RegistryClient,
    RegistryConfig,
    RegistryError,
    load_docker_auths,
    parse_challenge,
)

from .registry import (
    Registry,
    TokenServer,
    build_busybox_layout,
    free_port,
    missing_tools,
    running_registry,
)

MISSING = missing_tools()
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)} (make deps)")
AMD64 = Platform("linux", "amd64")
USERS = {"alice": "s3cret-pass"}


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_busybox_layout(tmp_path_factory.mktemp("oci") / "layout")


@pytest.fixture(scope="module")
def anonymous(tmp_path_factory: pytest.TempPathFactory, layout: Path) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("anonymous")) as registry:
        registry.push(layout, "1.0", "web:1.0")
        yield registry


def client(registry: Registry, **more: object) -> RegistryClient:
    return RegistryClient(RegistryConfig(certs_dirs=(registry.certs_dir,), timeout=10, **more))  # type: ignore[arg-type]


def skopeo_digest(registry: Registry, name: str) -> str:
    out = subprocess.run(["skopeo", "inspect", "--cert-dir", str(registry.certs_dir / registry.host),
                          f"docker://{registry.host}/{name}"], check=True, capture_output=True,
                         text=True).stdout  # fmt: skip
    return str(json.loads(out)["Digest"])


def fetch_layers(
    registry_client: RegistryClient, reference: Reference, layers: tuple[Descriptor, ...]
) -> list[bytes]:
    blobs = []
    for layer in layers:
        sink = io.BytesIO()
        registry_client.blob(reference, layer, sink)
        blobs.append(sink.getvalue())
    return blobs


def test_an_image_pushed_by_skopeo_is_resolved_and_its_layers_verified(anonymous: Registry) -> None:
    reference = parse_reference(f"{anonymous.host}/web:1.0")
    registry_client = client(anonymous)
    pulled = registry_client.resolve(reference, AMD64)
    assert pulled.manifest_digest == skopeo_digest(anonymous, "web:1.0")
    assert pulled.config.entrypoint == ("/bin/httpd",)
    assert pulled.config.cmd == ("-f", "-p", "80", "-h", "/www")
    assert pulled.config.exposed_ports == ("80/tcp",)
    assert "GREETING=hello" in pulled.config.env
    assert len(pulled.manifest.layers) == 3
    blobs = fetch_layers(registry_client, reference, pulled.manifest.layers)
    for layer, blob in zip(pulled.manifest.layers, blobs, strict=True):
        assert "sha256:" + hashlib.sha256(blob).hexdigest() == layer.digest
        assert len(blob) == layer.size


def test_a_reference_by_digest_is_fetched_by_that_digest(anonymous: Registry) -> None:
    digest = skopeo_digest(anonymous, "web:1.0")
    pulled = client(anonymous).resolve(parse_reference(f"{anonymous.host}/web@{digest}"), AMD64)
    assert pulled.manifest_digest == digest


def test_a_missing_tag_or_repository_is_named(anonymous: Registry) -> None:
    with pytest.raises(RegistryError) as refused:
        client(anonymous).resolve(parse_reference(f"{anonymous.host}/web:nope"), AMD64)
    assert (
        str(refused.value)
        == f"{anonymous.host}/web:nope: manifest nope not found (MANIFEST_UNKNOWN)"
    )
    with pytest.raises(RegistryError, match="not found"):
        client(anonymous).resolve(parse_reference(f"{anonymous.host}/nothing:1"), AMD64)


def test_a_blob_whose_bytes_do_not_match_its_digest_is_refused(
    tmp_path: Path, layout: Path
) -> None:
    with running_registry(tmp_path / "r") as registry:
        registry.push(layout, "1.0", "web:1.0")
        reference = parse_reference(f"{registry.host}/web:1.0")
        pulled = client(registry).resolve(reference, AMD64)
        layer = pulled.manifest.layers[-1]
        data = registry.blob_file(layer.digest)
        data.write_bytes(bytes(b ^ 0xFF for b in data.read_bytes()))
        with pytest.raises(RegistryError) as refused:
            client(registry).blob(reference, layer, io.BytesIO())
    assert f"blob {layer.digest} does not match its digest" in str(refused.value)


def test_an_unknown_ca_says_which_option_trusts_it(anonymous: Registry, tmp_path: Path) -> None:
    untrusting = RegistryClient(RegistryConfig(certs_dirs=(tmp_path,), timeout=10))
    with pytest.raises(RegistryError) as refused:
        untrusting.resolve(parse_reference(f"{anonymous.host}/web:1.0"), AMD64)
    text = str(refused.value)
    assert text.startswith(f"{anonymous.host}: TLS certificate not trusted")
    assert str(tmp_path / anonymous.host / "ca.crt") in text and "insecure" in text


def test_an_insecure_registry_is_reached_without_its_ca(
    anonymous: Registry, tmp_path: Path
) -> None:
    config = RegistryConfig(
        certs_dirs=(tmp_path,), insecure=frozenset({anonymous.host}), timeout=10
    )
    pulled = RegistryClient(config).resolve(parse_reference(f"{anonymous.host}/web:1.0"), AMD64)
    assert pulled.config.entrypoint == ("/bin/httpd",)


@pytest.fixture(scope="module")
def htpasswd(tmp_path_factory: pytest.TempPathFactory, layout: Path) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("htpasswd"), "htpasswd", users=USERS) as registry:
        registry.push(layout, "1.0", "web:1.0", user="alice")
        yield registry


def test_without_credentials_the_error_names_the_registry_and_the_login(htpasswd: Registry) -> None:
    with pytest.raises(RegistryError) as refused:
        client(htpasswd).resolve(parse_reference(f"{htpasswd.host}/web:1.0"), AMD64)
    assert str(refused.value) == (
        f"{htpasswd.host}: authentication required by {htpasswd.host}; log in with "
        f"`kurmactl login {htpasswd.host}` or add its credentials to the config"
    )


def test_basic_credentials_open_an_htpasswd_registry(htpasswd: Registry) -> None:
    credentials = {htpasswd.host: Credentials("alice", USERS["alice"])}
    reference = parse_reference(f"{htpasswd.host}/web:1.0")
    registry_client = client(htpasswd, credentials=credentials)
    pulled = registry_client.resolve(reference, AMD64)
    assert len(fetch_layers(registry_client, reference, pulled.manifest.layers)) == 3


def test_wrong_credentials_are_refused_by_name(htpasswd: Registry) -> None:
    credentials = {htpasswd.host: Credentials("alice", "wrong")}
    with pytest.raises(RegistryError, match="credentials for .* were refused; log in again"):
        client(htpasswd, credentials=credentials).resolve(
            parse_reference(f"{htpasswd.host}/web:1.0"), AMD64
        )


def test_a_bearer_token_is_fetched_with_the_credentials_and_cached(
    tmp_path: Path, layout: Path
) -> None:
    with (
        TokenServer(tmp_path / "tokens", USERS) as tokens,
        running_registry(tmp_path / "r", "token", token_server=tokens) as registry,
    ):
        pusher = tokens.token("alice", ["repository:web:pull,push"])
        subprocess.run(["skopeo", "copy", "-q", "--dest-cert-dir", str(registry.certs_dir / registry.host),
                        "--dest-registry-token", pusher, f"oci:{layout}:1.0",
                        f"docker://{registry.host}/web:1.0"], check=True, capture_output=True)  # fmt: skip
        reference = parse_reference(f"{registry.host}/web:1.0")
        with pytest.raises(RegistryError, match="authentication required"):
            client(registry).resolve(reference, AMD64)
        before = tokens.issued
        credentials = {registry.host: Credentials("alice", USERS["alice"])}
        registry_client = client(registry, credentials=credentials)
        pulled = registry_client.resolve(reference, AMD64)
        fetch_layers(registry_client, reference, pulled.manifest.layers)
        assert tokens.issued - before == 1  # manifest, config and three layers: one token


def test_a_docker_config_json_gives_credentials_per_registry(tmp_path: Path) -> None:
    import base64

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:pw").decode()},
        "127.0.0.1:5000": {"username": "alice", "password": "a:b"},
        "Quay.IO": {"auth": base64.b64encode(b"q:x:y").decode()},
        "broken.example": {"auth": base64.b64encode(b"no-colon").decode()},
    }}))  # fmt: skip
    assert load_docker_auths(config) == {
        "docker.io": Credentials("hub", "pw"),
        "127.0.0.1:5000": Credentials("alice", "a:b"),
        "quay.io": Credentials("q", "x:y"),
    }
    config.write_text("{not json")
    with pytest.raises(RegistryError, match="not a readable Docker config.json"):
        load_docker_auths(config)


def test_a_challenge_is_parsed() -> None:
    header = 'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull"'
    assert parse_challenge(header) == ("bearer", {"realm": "https://auth.example/token",
                                                  "service": "registry.example",
                                                  "scope": "repository:a/b:pull"})  # fmt: skip
    assert parse_challenge('Basic realm="x"') == ("basic", {"realm": "x"})


# --- a fake registry over plain HTTP, for what a real one will not do on demand --------------

Route = Callable[[http.server.BaseHTTPRequestHandler], None]


class Fake:
    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = routes
        self.requests: list[tuple[str, str]] = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                fake.requests.append((self.path, self.headers.get("Range", "")))
                route = fake.routes.get(self.path.split("?")[0])
                if route is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                route(self)

            def log_message(self, *_: object) -> None:
                pass

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, timeout: float = 2) -> RegistryClient:
        return RegistryClient(RegistryConfig(insecure=frozenset({self.host}), timeout=timeout))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake() -> Iterator[Callable[[dict[str, Route]], Fake]]:
    made: list[Fake] = []

    def make(routes: dict[str, Route]) -> Fake:
        made.append(Fake(routes))
        return made[-1]

    yield make
    for server in made:
        server.close()


def answer(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Route:
    def route(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)

    return route


BLOB = bytes(range(256)) * 4096  # 1 MiB
BLOB_DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
BLOB_PATH = f"/v2/app/blobs/{BLOB_DIGEST}"
BLOB_DESCRIPTOR = Descriptor(MediaType.OCI_LAYER, BLOB_DIGEST, len(BLOB))


def stalls_once_then_resumes(stalled: threading.Event, stall_for: float) -> Route:
    """The first GET sends half the blob and stalls; a GET with Range gets the rest (206)."""

    def route(handler: http.server.BaseHTTPRequestHandler) -> None:
        ranged = handler.headers.get("Range", "")
        if not ranged:
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(BLOB)))
            handler.end_headers()
            handler.wfile.write(BLOB[: len(BLOB) // 2])
            handler.wfile.flush()
            stalled.wait(stall_for)
            return
        start = int(ranged.removeprefix("bytes=").rstrip("-"))
        handler.send_response(206)
        handler.send_header("Content-Length", str(len(BLOB) - start))
        handler.send_header("Content-Range", f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}")
        handler.end_headers()
        handler.wfile.write(BLOB[start:])

    return route


def test_a_blob_that_stalls_midway_resumes_with_range(
    fake: Callable[[dict[str, Route]], Fake],
) -> None:
    release = threading.Event()
    server = fake({BLOB_PATH: stalls_once_then_resumes(release, 10)})
    sink = io.BytesIO()
    try:
        server.client(timeout=1).blob(parse_reference(f"{server.host}/app"), BLOB_DESCRIPTOR, sink)
    finally:
        release.set()
    assert sink.getvalue() == BLOB
    assert server.requests[-1] == (BLOB_PATH, f"bytes={len(BLOB) // 2}-")


def test_a_blob_that_always_stalls_fails_naming_how_far_it_got(
    fake: Callable[[dict[str, Route]], Fake],
) -> None:
    release = threading.Event()

    def always_stalls(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(BLOB)))
        handler.end_headers()
        handler.wfile.write(BLOB[:1000])
        handler.wfile.flush()
        release.wait(10)

    server = fake({BLOB_PATH: always_stalls})
    try:
        with pytest.raises(RegistryError) as refused:
            server.client(timeout=0.5).blob(
                parse_reference(f"{server.host}/app"), BLOB_DESCRIPTOR, io.BytesIO()
            )
    finally:
        release.set()
    assert f"broke off at 1000 of {len(BLOB)} bytes: timed out (the server stalled)" in str(
        refused.value
    )


def test_a_server_error_is_one_line(fake: Callable[[dict[str, Route]], Fake]) -> None:
    body = json.dumps({"errors": [{"code": "UNKNOWN", "message": "boom"}]}).encode()
    server = fake({"/v2/app/manifests/1": answer(500, body)})
    with pytest.raises(RegistryError) as refused:
        server.client().resolve(parse_reference(f"{server.host}/app:1"), AMD64)
    assert (
        str(refused.value)
        == f"{server.host}/app:1: the registry answered 500 Internal Server Error (UNKNOWN) for 1"
    )


def test_a_redirect_loop_is_cut(fake: Callable[[dict[str, Route]], Fake]) -> None:
    server = fake({"/v2/app/manifests/1": answer(307, headers={"Location": "/v2/app/manifests/1"})})
    with pytest.raises(RegistryError, match="more than 5 redirects"):
        server.client().resolve(parse_reference(f"{server.host}/app:1"), AMD64)


def test_a_manifest_over_the_limit_is_refused_unread(
    fake: Callable[[dict[str, Route]], Fake],
) -> None:
    def huge(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(MAX_MANIFEST_BYTES + 1))
        handler.send_header("Content-Type", MediaType.OCI_MANIFEST)
        handler.end_headers()

    server = fake({"/v2/app/manifests/1": huge})
    with pytest.raises(RegistryError, match=f"over the {MAX_MANIFEST_BYTES} limit"):
        server.client().resolve(parse_reference(f"{server.host}/app:1"), AMD64)


def manifest_route(document: dict[str, object], media_type: str) -> Route:
    body = json.dumps(document).encode()
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    return answer(200, body, {"Content-Type": media_type, "Docker-Content-Digest": digest})


def test_an_unknown_media_type_is_refused(fake: Callable[[dict[str, Route]], Fake]) -> None:
    server = fake(
        {"/v2/app/manifests/1": manifest_route({"schemaVersion": 2}, "application/x-foreign")}
    )
    with pytest.raises(RegistryError, match="unknown media type 'application/x-foreign'"):
        server.client().resolve(parse_reference(f"{server.host}/app:1"), AMD64)


def test_an_index_with_no_matching_platform_says_what_it_offers(
    fake: Callable[[dict[str, Route]], Fake],
) -> None:
    entry = {"mediaType": MediaType.OCI_MANIFEST, "digest": BLOB_DIGEST, "size": 10,
             "platform": {"os": "linux", "architecture": "s390x"}}  # fmt: skip
    index = {"schemaVersion": 2, "mediaType": MediaType.OCI_INDEX, "manifests": [entry]}
    server = fake({"/v2/app/manifests/1": manifest_route(index, MediaType.OCI_INDEX)})
    with pytest.raises(RegistryError) as refused:
        server.client().resolve(parse_reference(f"{server.host}/app:1"), AMD64)
    assert "no manifest for linux/amd64 (offered: linux/s390x)" in str(refused.value)


def test_a_manifest_that_does_not_match_the_claimed_digest_is_refused(
    fake: Callable[[dict[str, Route]], Fake],
) -> None:
    body = b'{"schemaVersion": 2}'
    lying = answer(
        200, body, {"Content-Type": MediaType.OCI_MANIFEST, "Docker-Content-Digest": BLOB_DIGEST}
    )
    server = fake({"/v2/app/manifests/1": lying})
    with pytest.raises(RegistryError, match=f"manifest: content is sha256:.*, not {BLOB_DIGEST}"):
        server.client().resolve(parse_reference(f"{server.host}/app:1"), AMD64)


def test_a_mirror_is_tried_before_the_registry(fake: Callable[[dict[str, Route]], Fake]) -> None:
    upstream = fake({BLOB_PATH: answer(200, BLOB)})
    broken_mirror = fake({})
    mirror = fake({BLOB_PATH: answer(200, BLOB)})
    config = RegistryConfig(
        insecure=frozenset({upstream.host, mirror.host, broken_mirror.host}),
        mirrors={upstream.host: (broken_mirror.host, mirror.host)},
        timeout=2,
    )
    sink = io.BytesIO()
    RegistryClient(config).blob(parse_reference(f"{upstream.host}/app"), BLOB_DESCRIPTOR, sink)
    assert sink.getvalue() == BLOB
    assert broken_mirror.requests and mirror.requests and not upstream.requests
