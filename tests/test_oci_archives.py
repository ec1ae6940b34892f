"""Images in files (kurmad/images/oci/archives.py): an OCI layout directory, an oci-archive
and a docker-archive, all made by skopeo from one umoci-built image, read to the same config
and the same layer contents; and the archives that are not images, or broken ones."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from kurmad.images.oci.archives import ArchiveError, ArchiveKind, detect, open_archive
from kurmad.images.oci.documents import MediaType, Platform

from .registry import build_busybox_layout, missing_tools
from .tarcraft import aci, image_manifest

MISSING = [t for t in missing_tools() if t in ("umoci", "skopeo")]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)} (make deps)")
AMD64 = Platform("linux", "amd64")


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("archives")
    layout = build_busybox_layout(root / "layout")
    docker = root / "web.docker.tar"
    oci = root / "web.oci.tar"
    subprocess.run(["skopeo", "copy", "-q", f"oci:{layout}:1.0", f"docker-archive:{docker}:example.com/web:1.0"],
                   check=True, capture_output=True)  # fmt: skip
    subprocess.run(["skopeo", "copy", "-q", f"oci:{layout}:1.0", f"oci-archive:{oci}:1.0"],
                   check=True, capture_output=True)  # fmt: skip
    return {"layout": layout, "docker": docker, "oci": oci}


def uncompressed_layers(path: Path) -> list[bytes]:
    with open_archive(path) as archive:
        image = archive.resolve(AMD64)
        layers = []
        for descriptor in image.manifest.layers:
            sink = io.BytesIO()
            archive.blob(descriptor, sink)
            data = sink.getvalue()
            layers.append(gzip.decompress(data) if descriptor.media_type.endswith("gzip") else data)
        return layers


def _names(layer: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        return tar.getnames()


def test_each_kind_is_recognised_by_its_content(made: dict[str, Path], tmp_path: Path) -> None:
    assert detect(made["layout"]) is ArchiveKind.OCI_LAYOUT
    assert detect(made["oci"]) is ArchiveKind.OCI_ARCHIVE
    renamed = tmp_path / "image.aci"  # a name says nothing
    shutil.copy(made["docker"], renamed)
    assert detect(renamed) is ArchiveKind.DOCKER_ARCHIVE


def test_an_aci_or_other_file_is_no_oci_archive(tmp_path: Path) -> None:
    an_aci = tmp_path / "app.aci"
    an_aci.write_bytes(aci(image_manifest("example.com/app"), []))
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert detect(an_aci) is None and detect(text) is None and detect(tmp_path) is None
    with pytest.raises(ArchiveError, match="neither an OCI image layout nor a docker-archive"):
        open_archive(text)


def test_all_three_give_the_same_image(made: dict[str, Path]) -> None:
    resolved = {}
    for kind, path in made.items():
        with open_archive(path) as archive:
            resolved[kind] = archive.resolve(AMD64)
    configs = {kind: image.config for kind, image in resolved.items()}
    assert configs["layout"] == configs["oci"] == configs["docker"]
    assert configs["docker"].entrypoint == ("/bin/httpd",)
    config_digests = {image.manifest.config.digest for image in resolved.values()}
    assert len(config_digests) == 1  # what Docker and podman call the image ID
    assert resolved["docker"].reference is not None
    assert str(resolved["docker"].reference) == "example.com/web:1.0"
    assert resolved["docker"].manifest.media_type == MediaType.DOCKER_MANIFEST


def test_the_layers_are_the_same_bytes_and_match_the_diff_ids(made: dict[str, Path]) -> None:
    contents = {kind: uncompressed_layers(path) for kind, path in made.items()}
    assert contents["layout"] == contents["oci"] == contents["docker"]
    with open_archive(made["docker"]) as archive:
        diff_ids = archive.resolve(AMD64).config.diff_ids
    assert ["sha256:" + hashlib.sha256(layer).hexdigest() for layer in contents["docker"]] == list(
        diff_ids
    )
    names = [_names(layer) for layer in contents["docker"]]
    assert "etc/.wh.deleted" in names[1] and "data/.wh.old" in names[1]  # umoci's whiteouts
    assert "data/.wh..wh..opq" in names[2]  # and an opaque directory


def test_a_blob_changed_in_a_layout_is_refused(made: dict[str, Path], tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    shutil.copytree(made["layout"], layout)
    with open_archive(layout) as archive:
        layer = archive.resolve(AMD64).manifest.layers[0]
        blob = layout / "blobs" / "sha256" / layer.digest.split(":")[1]
        data = blob.read_bytes()
        blob.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
        with pytest.raises(ArchiveError) as refused:
            archive.blob(layer, io.BytesIO())
    assert f"blob {layer.digest} does not match its digest" in str(refused.value)


def test_a_changed_manifest_in_a_layout_is_refused(made: dict[str, Path], tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    shutil.copytree(made["layout"], layout)
    index = json.loads((layout / "index.json").read_text())
    manifest_blob = layout / "blobs" / "sha256" / index["manifests"][0]["digest"].split(":")[1]
    manifest_blob.write_bytes(
        manifest_blob.read_bytes().replace(b'"schemaVersion":2', b'"schemaVersion": 2')
    )
    with open_archive(layout) as archive, pytest.raises(ArchiveError, match="content is sha256:"):
        archive.resolve(AMD64)


def test_a_docker_archive_with_a_broken_manifest_is_named(tmp_path: Path) -> None:
    broken = tmp_path / "broken.tar"
    with tarfile.open(broken, "w") as tar:
        data = b'[{"RepoTags": ["x:1"]}]'
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with open_archive(broken) as archive, pytest.raises(ArchiveError) as refused:
        archive.resolve(AMD64)
    assert str(refused.value).startswith(
        f"{broken}: manifest.json is not a docker-archive manifest"
    )


def test_an_archive_of_two_images_needs_a_name(made: dict[str, Path], tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    shutil.copytree(made["layout"], layout)
    index = json.loads((layout / "index.json").read_text())
    second = json.loads(json.dumps(index["manifests"][0]))
    second["annotations"]["org.opencontainers.image.ref.name"] = "2.0"
    index["manifests"].append(second)
    (layout / "index.json").write_text(json.dumps(index))
    with open_archive(layout) as archive:
        with pytest.raises(ArchiveError, match=r"holds 2 images \(1.0, 2.0\); name one"):
            archive.resolve(AMD64)
        assert archive.resolve(AMD64, "2.0").config.entrypoint == ("/bin/httpd",)
        with pytest.raises(ArchiveError, match="no image '3.0'"):
            archive.resolve(AMD64, "3.0")


def test_an_image_for_another_platform_is_refused(made: dict[str, Path]) -> None:
    with open_archive(made["docker"]) as archive, pytest.raises(ArchiveError) as refused:
        archive.resolve(Platform("linux", "arm64", "v8"))
    assert "the image is for linux/amd64, not linux/arm64/v8" in str(refused.value)
