"""OCI and Docker image documents (kurmad/images/oci/documents.py): indexes and platform selection,
manifests of both formats, configs, digests and the size limit; each bad field named."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from kurmad.appc.errors import ValidationError
from kurmad.images.oci.documents import (
    LAYER_COMPRESSION,
    MAX_MANIFEST_BYTES,
    Compression,
    ImageConfig,
    Index,
    Manifest,
    MediaType,
    Platform,
    layer_count_matches,
    parse_document,
    verify_digest,
)


def digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def descriptor(media_type: str, name: str, **more: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest(name), "size": 100, **more}


def manifest(media_type: str = MediaType.OCI_MANIFEST, layers: int = 2) -> dict[str, Any]:
    layer_type = MediaType.OCI_LAYER_GZIP if "oci" in media_type else MediaType.DOCKER_LAYER_GZIP
    config_type = MediaType.OCI_CONFIG if "oci" in media_type else MediaType.DOCKER_CONFIG
    return {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": descriptor(config_type, "config"),
        "layers": [descriptor(layer_type, f"layer{i}") for i in range(layers)],
    }


def index(platforms: list[dict[str, str]], media_type: str = MediaType.OCI_INDEX) -> bytes:
    manifest_type = MediaType.OCI_MANIFEST if "oci" in media_type else MediaType.DOCKER_MANIFEST
    entries = [descriptor(manifest_type, str(p), platform=p) for p in platforms]
    return json.dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": entries}).encode()


def bad(data: dict[str, Any] | bytes, media_type: str = MediaType.OCI_MANIFEST) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    with pytest.raises(ValidationError) as refused:
        parse_document(raw, media_type)
    assert "\n" not in str(refused.value)
    return str(refused.value)


@pytest.mark.parametrize("media_type", [MediaType.OCI_MANIFEST, MediaType.DOCKER_MANIFEST])
def test_both_manifest_formats_parse(media_type: str) -> None:
    parsed = parse_document(json.dumps(manifest(media_type)).encode(), media_type)
    assert isinstance(parsed, Manifest)
    assert parsed.media_type == media_type
    assert [layer.digest for layer in parsed.layers] == [digest("layer0"), digest("layer1")]
    assert all(LAYER_COMPRESSION[layer.media_type] is Compression.GZIP for layer in parsed.layers)


def test_a_manifest_served_without_a_content_type_is_read_by_its_own() -> None:
    assert isinstance(parse_document(json.dumps(manifest()).encode(), ""), Manifest)


def test_the_three_layer_compressions_are_known() -> None:
    assert LAYER_COMPRESSION[MediaType.OCI_LAYER] is Compression.NONE
    assert LAYER_COMPRESSION[MediaType.OCI_LAYER_GZIP] is Compression.GZIP
    assert LAYER_COMPRESSION[MediaType.OCI_LAYER_ZSTD] is Compression.ZSTD


AMD64 = {"os": "linux", "architecture": "amd64"}
ARM64 = {"os": "linux", "architecture": "arm64", "variant": "v8"}
ARMV7 = {"os": "linux", "architecture": "arm", "variant": "v7"}
ARMV6 = {"os": "linux", "architecture": "arm", "variant": "v6"}


@pytest.mark.parametrize("media_type", [MediaType.OCI_INDEX, MediaType.DOCKER_LIST])
def test_an_index_gives_the_manifest_of_the_platform_asked_for(media_type: str) -> None:
    parsed = parse_document(index([ARMV6, ARMV7, AMD64, ARM64], media_type), media_type)
    assert isinstance(parsed, Index)
    assert parsed.select(Platform("linux", "amd64")).digest == digest(str(AMD64))
    assert parsed.select(Platform("linux", "arm", "v7")).digest == digest(str(ARMV7))
    assert parsed.select(Platform("linux", "arm64", "v8")).digest == digest(str(ARM64))
    assert parsed.select(Platform("linux", "arm")).digest == digest(str(ARMV6))  # the first


def test_an_arm64_image_without_a_variant_is_v8() -> None:
    parsed = parse_document(index([{"os": "linux", "architecture": "arm64"}]), MediaType.OCI_INDEX)
    assert isinstance(parsed, Index)
    assert parsed.select(Platform("linux", "arm64", "v8")).platform == Platform("linux", "arm64")


def test_an_index_without_the_platform_says_what_it_offers() -> None:
    parsed = parse_document(index([ARM64, ARMV7]), MediaType.OCI_INDEX)
    assert isinstance(parsed, Index)
    with pytest.raises(ValidationError) as refused:
        parsed.select(Platform("linux", "amd64"))
    assert str(refused.value) == (
        "index: no manifest for linux/amd64 (offered: linux/arm/v7, linux/arm64/v8); see --platform"
    )


def test_a_platform_is_given_as_os_arch_variant() -> None:
    assert Platform.parse("linux/arm/v7") == Platform("linux", "arm", "v7")
    assert Platform.parse("linux/amd64") == Platform("linux", "amd64")
    for text in ["linux", "linux/", "a/b/c/d", "/amd64"]:
        with pytest.raises(ValidationError, match="is not os/arch"):
            Platform.parse(text)


def test_bad_manifests_are_refused_naming_the_field() -> None:
    no_digest = manifest()
    no_digest["layers"][1]["digest"] = "sha256:xyz"
    assert bad(no_digest).startswith("manifest.layers[1].digest: 'sha256:xyz'")
    unknown_layer = manifest()
    unknown_layer["layers"][0]["mediaType"] = "application/x-foreign"
    assert "manifest.layers[0].mediaType: unknown layer type" in bad(unknown_layer)
    negative = manifest()
    negative["config"]["size"] = -1
    assert bad(negative) == "manifest.config.size: -1 is negative"
    schema1 = manifest()
    schema1["schemaVersion"] = 1
    assert bad(schema1) == "manifest.schemaVersion: 1 is not 2"
    config_type = manifest()
    config_type["config"]["mediaType"] = "text/plain"
    assert "manifest.config.mediaType: unknown config 'text/plain'" in bad(config_type)


def test_an_unknown_media_type_is_refused_with_what_is_accepted() -> None:
    refused = bad(json.dumps({"schemaVersion": 2}).encode(), "application/vnd.foreign+json")
    assert refused.startswith("manifest: unknown media type 'application/vnd.foreign+json'")
    assert MediaType.OCI_MANIFEST in refused


def test_a_document_must_agree_with_how_it_was_served() -> None:
    refused = bad(manifest(MediaType.DOCKER_MANIFEST), MediaType.OCI_MANIFEST)
    assert refused.startswith("manifest.mediaType:")


def test_a_manifest_over_the_limit_is_refused_before_parsing() -> None:
    refused = bad(b" " * (MAX_MANIFEST_BYTES + 1))
    assert f"over the {MAX_MANIFEST_BYTES} limit" in refused


def test_not_json_is_refused() -> None:
    assert bad(b"{not json").startswith("manifest: not valid JSON")


def test_a_digest_is_verified() -> None:
    verify_digest(b"abc", digest("abc"), "blob")
    with pytest.raises(ValidationError) as refused:
        verify_digest(b"abd", digest("abc"), "blob sha256:ba78")
    assert str(refused.value).startswith("blob sha256:ba78: content is sha256:")
    sha512 = "sha512:" + hashlib.sha512(b"abc").hexdigest()
    verify_digest(b"abc", sha512, "blob")
    with pytest.raises(ValidationError, match="is not a digest"):
        verify_digest(b"abc", "md5:" + hashlib.md5(b"abc").hexdigest(), "blob")


CONFIG = {
    "architecture": "amd64",
    "os": "linux",
    "config": {
        "Entrypoint": ["/bin/httpd"],
        "Cmd": ["-f", "-p", "80"],
        "Env": ["PATH=/usr/bin:/bin", "A=b=c"],
        "WorkingDir": "/www",
        "User": "nobody:nogroup",
        "ExposedPorts": {"80/tcp": {}, "53/udp": {}},
        "Volumes": {"/data": {}},
        "Labels": {"org.opencontainers.image.version": "1.0"},
        "StopSignal": "SIGQUIT",
    },
    "rootfs": {"type": "layers", "diff_ids": [digest("d0"), digest("d1")]},
}


def test_an_image_config_says_how_to_run_the_image() -> None:
    config = ImageConfig.from_bytes(json.dumps(CONFIG).encode())
    assert config.platform == Platform("linux", "amd64")
    assert config.entrypoint == ("/bin/httpd",) and config.cmd == ("-f", "-p", "80")
    assert config.env == ("PATH=/usr/bin:/bin", "A=b=c")
    assert (config.working_dir, config.user, config.stop_signal) == (
        "/www",
        "nobody:nogroup",
        "SIGQUIT",
    )
    assert config.exposed_ports == ("53/udp", "80/tcp") and config.volumes == ("/data",)
    assert config.labels == {"org.opencontainers.image.version": "1.0"}
    assert config.diff_ids == (digest("d0"), digest("d1"))


def test_a_config_may_say_nothing_about_running() -> None:
    bare = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
    config = ImageConfig.from_bytes(json.dumps({**bare, "config": None}).encode())
    assert config.entrypoint == () and config.cmd == () and config.labels == {}


def test_bad_configs_are_refused_naming_the_field() -> None:
    def refused(change: dict[str, Any]) -> str:
        with pytest.raises(ValidationError) as error:
            ImageConfig.from_bytes(json.dumps({**CONFIG, **change}).encode())
        return str(error.value)

    assert refused({"rootfs": {"type": "tar", "diff_ids": []}}) == (
        "config.rootfs.type: 'tar' is not 'layers'"
    )
    assert refused({"rootfs": {"type": "layers", "diff_ids": ["x"]}}).startswith(
        "config.rootfs.diff_ids[0]: 'x' is not a digest"
    )
    assert refused({"config": {"Cmd": "httpd"}}).startswith("config.config.Cmd:")
    assert refused({"config": {"Labels": {"a": 1}}}).startswith("config.config.Labels.a:")


def test_manifest_and_config_must_agree_on_the_layers() -> None:
    parsed = parse_document(json.dumps(manifest(layers=3)).encode(), MediaType.OCI_MANIFEST)
    assert isinstance(parsed, Manifest)
    config = ImageConfig.from_bytes(json.dumps(CONFIG).encode())
    with pytest.raises(ValidationError, match="2 layers, but the manifest lists 3"):
        layer_count_matches(parsed, config)
