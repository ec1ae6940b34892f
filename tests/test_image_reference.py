"""Image references (kurmad/images/oci/reference.py): the distribution grammar, Docker's registry
rule and docker.io normalisation, transports, and the appc name an OCI image is stored under."""

from __future__ import annotations

import pytest

from kurmad.appc import ACIdentifier
from kurmad.images.oci.reference import (
    ImageRef,
    Reference,
    ReferenceError,
    Transport,
    parse_image_ref,
    parse_reference,
)

SHA256 = "sha256:" + "0123456789abcdef" * 4
SHA512 = "sha512:" + "0123456789abcdef" * 8

PARSED = [
    # text, registry, path, tag, digest
    ("busybox", None, "busybox", None, None),
    ("busybox:1.36", None, "busybox", "1.36", None),
    ("library/busybox", None, "library/busybox", None, None),
    ("docker.io/busybox", "docker.io", "library/busybox", None, None),
    ("docker.io/library/busybox:1", "docker.io", "library/busybox", "1", None),
    ("index.docker.io/busybox", "docker.io", "library/busybox", None, None),
    ("registry-1.docker.io/org/app", "docker.io", "org/app", None, None),
    ("127.0.0.1:5000/web:1.0", "127.0.0.1:5000", "web", "1.0", None),
    ("localhost/x", "localhost", "x", None, None),
    ("localhost:5000/a/b", "localhost:5000", "a/b", None, None),
    ("Registry.Example.COM/app", "registry.example.com", "app", None, None),
    ("[::1]:5000/web", "[::1]:5000", "web", None, None),
    ("ghcr.io/org/app__x--y.z:v1.2-rc_3", "ghcr.io", "org/app__x--y.z", "v1.2-rc_3", None),
    (f"quay.io/a/b@{SHA256}", "quay.io", "a/b", None, SHA256),
    (f"quay.io/a/b:t@{SHA512}", "quay.io", "a/b", "t", SHA512),
    # Without a "." or ":" or "localhost" the first component is a path component, as in Docker.
    ("example/app", None, "example/app", None, None),
    # A lone host:port is an image named like the host, tagged with the port (Docker agrees).
    ("localhost:5000", None, "localhost", "5000", None),
    ("a" * 128 + ":" + "t" * 128, None, "a" * 128, "t" * 128, None),
]


@pytest.mark.parametrize(("text", "registry", "path", "tag", "digest"), PARSED)
def test_a_reference_parses_by_the_grammar(
    text: str, registry: str | None, path: str, tag: str | None, digest: str | None
) -> None:
    assert parse_reference(text) == Reference(registry, path, tag, digest)


REFUSED = [
    ("", "must not be empty"),
    ("Busybox", "path component 'Busybox'"),
    ("a//b", "path component ''"),
    ("a/-b", "path component '-b'"),
    ("a/b_", "path component 'b_'"),
    ("a/b___c", "path component 'b___c'"),
    ("busybox:", "tag ''"),
    ("busybox:.x", "tag '.x'"),
    ("busybox:" + "t" * 129, "tag"),
    ("busybox@sha256:abc", "digest 'sha256:abc'"),
    ("busybox@md5:" + "0" * 32, "digest"),
    ("busybox@" + SHA256.upper(), "digest"),
    ("h.io:99999/x", "port '99999'"),
    ("h.io:0/x", "port '0'"),
    ("h.io:/x", "port ''"),
    ("bad_host.io/a", "registry host 'bad_host.io'"),
    ("-h.io/a", "registry host '-h.io'"),
    ("[::g]:5000/a", "'[::g]' is not an IPv6 address"),
    ("[::1/a", "no closing ']'"),
    ("a" * 256, "longer than 255"),
]


@pytest.mark.parametrize(("text", "names"), REFUSED)
def test_a_bad_reference_is_refused_naming_the_rule(text: str, names: str) -> None:
    with pytest.raises(ReferenceError) as refused:
        parse_reference(text)
    assert names in str(refused.value)
    assert "\n" not in str(refused.value)


def test_a_reference_prints_back_as_it_normalises() -> None:
    for text in ["127.0.0.1:5000/web:1.0", f"quay.io/a/b:t@{SHA256}", "busybox"]:
        assert str(parse_reference(text)) == text
    assert str(parse_reference("docker.io/busybox")) == "docker.io/library/busybox"


def test_a_short_name_is_resolved_only_against_a_registry_it_is_given() -> None:
    short = parse_reference("busybox:1.36")
    assert short.is_short and short.repository == "busybox"
    assert short.in_registry("docker.io") == Reference("docker.io", "library/busybox", "1.36")
    assert short.in_registry("Mirror.Example:5000") == Reference(
        "mirror.example:5000", "busybox", "1.36"
    )
    with pytest.raises(ReferenceError, match="port"):
        short.in_registry("mirror.example:x")


def test_latest_is_the_tag_only_when_neither_tag_nor_digest_is_given() -> None:
    assert parse_reference("busybox").with_default_tag().tag == "latest"
    assert parse_reference("busybox:1").with_default_tag().tag == "1"
    pinned = parse_reference(f"busybox@{SHA256}").with_default_tag()
    assert pinned.tag is None and pinned.digest == SHA256


APPC_NAMES = [
    ("127.0.0.1:5000/web:1.0", "127.0.0.1~5000/web"),
    ("docker.io/busybox", "docker.io/library/busybox"),
    ("ghcr.io/org/my_app__x", "ghcr.io/org/my~app~~x"),
    ("localhost/x", "localhost/x"),
    ("busybox", "busybox"),
    ("[::1]:5000/web", "ipv6-0000-0000-0000-0000-0000-0000-0000-0001~5000/web"),
]


@pytest.mark.parametrize(("text", "name"), APPC_NAMES)
def test_an_oci_image_has_a_valid_appc_name(text: str, name: str) -> None:
    appc = parse_reference(text).appc_name()
    assert appc == name
    assert ACIdentifier(appc) == name  # a valid AC Identifier, or this raises


def test_appc_names_of_different_repositories_differ() -> None:
    texts = ["h.io:5000/a", "h.io/5000/a", "h.io/a_b", "h.io/a-b", "h.io/a.b", "h.io/a__b"]
    names = {parse_reference(t).appc_name() for t in texts}
    assert len(names) == len(texts)


def test_a_transport_says_which_protocol() -> None:
    docker = parse_image_ref("docker://127.0.0.1:5000/web:1.0")
    assert docker == ImageRef(Transport.DOCKER, "127.0.0.1:5000/web:1.0",
                              Reference("127.0.0.1:5000", "web", "1.0"))  # fmt: skip
    appc = parse_image_ref("appc://example.com/app:1.0")
    assert appc == ImageRef(Transport.APPC, "example.com/app:1.0", None)
    bare = parse_image_ref("example.com/app")
    assert bare.transport is None and bare.oci == Reference("example.com", "app")


def test_without_a_transport_a_name_that_is_no_oci_reference_can_still_be_appc() -> None:
    only_appc = parse_image_ref("example.com/~bob/database")
    assert only_appc == ImageRef(None, "example.com/~bob/database", None)


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("docker://Busybox", "path component 'Busybox'"),
        ("docker://", "must not be empty"),
        ("appc://", "an appc image name must follow appc://"),
        ("oci://busybox", "unknown transport 'oci'"),
        ("https://example.com/app", "unknown transport 'https'"),
    ],
)
def test_a_bad_transport_or_docker_reference_is_refused(text: str, names: str) -> None:
    with pytest.raises(ReferenceError) as refused:
        parse_image_ref(text)
    assert names in str(refused.value)
