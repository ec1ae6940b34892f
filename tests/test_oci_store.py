"""OCI images in the one store (images/oci/convert.py, pull.py): a layer's appc ID is the SHA-512
of the very ACI it describes; the image config becomes an appc manifest; each layer is stored
once and shared, freed with the last image that uses it; nothing partial is ever left; an app's
root filesystem stacks the layers, however many one mount option could name."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from kurmad.appc import ImageManifest
from kurmad.core import Core, Settings
from kurmad.images.oci.archives import open_archive
from kurmad.images.oci.convert import (
    CONFIG_DIGEST,
    GROUP_FROM_USER,
    REFERENCE,
    STOP_SIGNAL,
    CanonicalAci,
    image_manifest,
    layer_manifest,
)
from kurmad.images.oci.documents import ImageConfig, Platform, ResolvedImage
from kurmad.images.oci.layers import extract_layer
from kurmad.images.oci.pull import (
    ArchiveSource,
    LayerState,
    PullError,
    find_by_reference,
    store_image,
)
from kurmad.images.oci.reference import parse_reference
from kurmad.images.oci.settings import RegistrySettings, SettingsError
from kurmad.images.render import lower_dirs
from kurmad.images.store import LINKS, TMP, ImageInUse, ImageStore, ImportFailed
from kurmad.images.streams import Compression
from kurmad.runtime.rootfs import mount_app_rootfs

from .registry import build_busybox_layout, missing_tools
from .test_oci_layers import BASIC, diff_id, layer

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (whiteouts, mounts)")
AMD64 = Platform("linux", "amd64")


# --- the canonical ACI of a layer ---------------------------------------------------------------


def aci_of_layer(data: bytes, manifest: bytes) -> bytes:
    """The ACI a layer stands for, written by tarfile itself: the manifest, rootfs/, then each
    entry of the layer under rootfs/ (its root left out)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as aci, \
         tarfile.open(fileobj=io.BytesIO(data)) as source:  # fmt: skip
        head = tarfile.TarInfo("manifest")
        head.size, head.mode = len(manifest), 0o644
        aci.addfile(head, io.BytesIO(manifest))
        rootfs = tarfile.TarInfo("rootfs")
        rootfs.type, rootfs.mode = tarfile.DIRTYPE, 0o755
        aci.addfile(rootfs)
        for member in source:
            name = member.name.removeprefix("./").rstrip("/")
            if not name:
                continue
            body = source.extractfile(member) if member.isreg() else None
            member.name = f"rootfs/{name}"
            if member.islnk():
                member.linkname = f"rootfs/{member.linkname.removeprefix('./')}"
            aci.addfile(member, body)
    return out.getvalue()


@needs_root
def test_a_layers_image_id_is_the_sha512_of_its_aci(tmp_path: Path) -> None:
    manifest = layer_manifest(diff_id(BASIC))
    canonical = CanonicalAci(manifest)
    (tmp_path / "root").mkdir()
    extract_layer(io.BytesIO(BASIC), Compression.NONE, diff_id(BASIC), tmp_path / "root",
                  canonical=canonical)  # fmt: skip
    expected = aci_of_layer(BASIC, manifest)
    assert canonical.image_id() == "sha512-" + hashlib.sha512(expected).hexdigest()
    assert canonical.size == len(expected)
    ImageManifest.loads(manifest)  # a valid appc manifest


@needs_root
def test_a_changed_byte_changes_the_layers_image_id(tmp_path: Path) -> None:
    ids = []
    for content in ("a", "b"):
        data = layer(("etc", "dir", ""), ("etc/x", "file", content))
        canonical = CanonicalAci(layer_manifest(diff_id(data)))
        root = tmp_path / content
        root.mkdir()
        extract_layer(io.BytesIO(data), Compression.NONE, diff_id(data), root, canonical=canonical)
        ids.append(canonical.image_id())
    assert ids[0] != ids[1]


# --- the image config as an appc manifest ----------------------------------------------------------


def resolved(config: dict[str, object]) -> ResolvedImage:
    document = {"architecture": "arm64", "variant": "v8", "os": "linux", "config": config,
                "rootfs": {"type": "layers", "diff_ids": []}}  # fmt: skip
    data = json.dumps(document).encode()
    return ResolvedImage(None, None, "sha256:" + "1" * 64, b"", ImageConfig.from_bytes(data), data)  # type: ignore[arg-type]


def test_the_config_becomes_the_app_and_the_manifest_stays_valid_appc() -> None:
    image = resolved({
        "Entrypoint": ["/bin/httpd"], "Cmd": ["-f", "-p", "80"], "Env": ["A=1", "PATH=/x:/y"],
        "WorkingDir": "/srv", "User": "www", "ExposedPorts": {"80/tcp": {}, "53/udp": {}},
        "Volumes": {"/data": {}}, "Labels": {"org.opencontainers.image.title": "web", "Maintainer": "me"},
        "StopSignal": "SIGQUIT",
    })  # fmt: skip
    reference = parse_reference("registry.example:5000/team/web_app:1.2")
    manifest = image_manifest(image, reference, [])
    again = ImageManifest.loads(manifest.dumps())
    assert again == manifest
    assert manifest.name == "registry.example~5000/team/web~app"
    assert dict(manifest.labels) == {"version": "1.2", "os": "linux", "arch": "aarch64"}
    app = manifest.app
    assert app is not None
    assert app.exec == ("/bin/httpd", "-f", "-p", "80")
    assert (app.user, app.group, app.working_directory) == ("www", "0", "/srv")
    assert dict(app.environment) == {"A": "1", "PATH": "/x:/y"}
    assert {(p.name, p.protocol, p.port) for p in app.ports} == {
        ("tcp-80", "tcp", 80),
        ("udp-53", "udp", 53),
    }
    assert [(m.name, m.path) for m in app.mount_points] == [("volume-data", "/data")]
    annotations = dict(manifest.annotations)
    assert annotations[GROUP_FROM_USER] == "true"
    assert annotations[STOP_SIGNAL] == "SIGQUIT"
    assert annotations[REFERENCE] == "registry.example:5000/team/web_app:1.2"
    assert annotations[CONFIG_DIGEST] == "sha256:" + hashlib.sha256(image.config_bytes).hexdigest()
    assert annotations["org.opencontainers.image.title"] == "web"
    assert annotations["maintainer"] == "me"


@pytest.mark.parametrize(("user", "expected"), [
    ("", ("0", "0", False)), ("1000", ("1000", "0", True)), ("www:web", ("www", "web", False)),
    ("1000:1001", ("1000", "1001", False)),
])  # fmt: skip
def test_user_forms(user: str, expected: tuple[str, str, bool]) -> None:
    manifest = image_manifest(resolved({"User": user, "Cmd": ["x"]}), parse_reference("a.b/c"), [])
    assert manifest.app is not None
    own = manifest.annotations.get(GROUP_FROM_USER) == "true"
    assert (manifest.app.user, manifest.app.group, own) == expected


def test_a_bad_env_entry_is_named() -> None:
    with pytest.raises(ValueError, match="config.Env.*'NOEQUALS' is not NAME=VALUE"):
        image_manifest(resolved({"Env": ["NOEQUALS"]}), parse_reference("a.b/c"), [])


# --- layers shared in the store -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if missing_tools() or os.geteuid() != 0:
        pytest.skip(f"needs root and {', '.join(missing_tools()) or 'the tools'}")
    root = tmp_path_factory.mktemp("shared")
    return tag_with_motd(build_busybox_layout(root / "layout"))


def tag_with_motd(layout: Path) -> Path:
    """Tag 1.1: the three layers of 1.0 and one more holding /etc/motd, as an image built
    FROM 1.0 is."""
    subprocess.run(["umoci", "tag", "--image", f"{layout}:1.0", "1.1"], check=True)
    extra = layout.parent / "motd-layer.tar"
    with tarfile.open(extra, "w") as tar:
        info = tarfile.TarInfo("etc/motd")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"1.1\n"))
    subprocess.run(
        ["umoci", "raw", "add-layer", "--image", f"{layout}:1.1", str(extra)], check=True
    )
    return layout


def store_from(store: ImageStore, layout: Path, tag: str, name: str,
               seen: list[tuple[str, LayerState]] | None = None) -> ImageManifest:  # fmt: skip
    with open_archive(layout) as archive:
        source = ArchiveSource(archive, AMD64, tag)
        result = store_image(store, source, parse_reference(name),
                             lambda p: seen.append((p.digest, p.state)) if seen is not None else None)  # fmt: skip
    return result.record.manifest


@needs_root
def test_a_second_image_on_the_same_base_stores_only_its_new_layer(
    layouts: Path, tmp_path: Path
) -> None:
    store = ImageStore(tmp_path / "store", durable=False)
    first = store_from(store, layouts, "1.0", "example.com/web:1.0")
    seen: list[tuple[str, LayerState]] = []
    second = store_from(store, layouts, "1.1", "example.com/web:1.1", seen)
    assert len(first.dependencies) == 3 and len(second.dependencies) == 4
    assert second.dependencies[:3] == first.dependencies
    assert [s for _, s in seen].count(LayerState.PRESENT) == 3
    assert [s for _, s in seen].count(LayerState.DONE) == 1
    assert len(store.images(layers=True)) == 2 + 4 and len(store.images()) == 2
    assert len(list((store.root / LINKS).iterdir())) == 4
    assert not list((store.root / TMP).iterdir())
    found = find_by_reference(store, "example.com/web:1.1")
    assert found is not None and found.manifest == second
    assert store.total_size(found) > found.size


@needs_root
def test_layers_go_with_the_last_image_that_uses_them(layouts: Path, tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store", durable=False)
    base = store_from(store, layouts, "1.0", "example.com/web:1.0")
    store_from(store, layouts, "1.1", "example.com/web:1.1")
    assert base.dependencies[0].image_id is not None
    a_layer = store.get(base.dependencies[0].image_id)
    with pytest.raises(ImageInUse, match="is part of example.com/web"):
        store.delete(a_layer.id)
    store.delete(store.find("example.com/web", {"version": "1.1"}).id)
    assert len([r for r in store.images(layers=True) if r.layer]) == 3
    store.hold("pod-x", {a_layer.id})
    store.delete(store.find("example.com/web", {"version": "1.0"}).id)
    assert [r.id for r in store.images(layers=True)] == [a_layer.id]  # held by a pod
    store.release("pod-x")
    store.gc()
    assert store.images(layers=True) == []
    assert not list((store.root / LINKS).iterdir())
    assert not list((store.root / "images").iterdir())


@needs_root
def test_a_layer_that_fails_leaves_nothing_partial(layouts: Path, tmp_path: Path) -> None:
    broken = tmp_path / "layout"
    subprocess.run(["cp", "-a", str(layouts), str(broken)], check=True)
    with open_archive(broken) as archive:
        top = archive.resolve(AMD64, "1.0").manifest.layers[-1]
    blob = broken / "blobs" / "sha256" / top.digest.split(":")[1]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    store = ImageStore(tmp_path / "store", durable=False)
    with pytest.raises(Exception, match="does not match its digest"):
        store_from(store, broken, "1.0", "example.com/web:1.0")
    assert store.images() == []
    assert all(r.layer for r in store.images(layers=True))  # whole layers only, reused next time
    assert not list((store.root / TMP).iterdir())
    with pytest.raises(PullError, match="names no image with a registry"):
        store_from_unnamed(store, layouts)


def store_from_unnamed(store: ImageStore, layout: Path) -> None:
    with open_archive(layout) as archive:
        store_image(store, ArchiveSource(archive, AMD64, "1.0"), None)


@needs_root
def test_the_app_root_stacks_the_layers_with_whiteouts_applied(
    layouts: Path, tmp_path: Path
) -> None:
    store = ImageStore(tmp_path / "store", durable=False)
    store_from(store, layouts, "1.1", "example.com/web:1.1")
    record = store.find("example.com/web", {"version": "1.1"})
    lowers = lower_dirs(store, record)
    assert len(lowers) == 4 and all(p.parent == store.root / LINKS for p in lowers)
    app = mount_app_rootfs(lowers, tmp_path / "app")
    try:
        root = app.path
        assert (root / "etc/motd").read_text() == "1.1\n"
        assert not (root / "etc/deleted").exists()
        assert sorted(os.listdir(root / "data")) == ["newest"]
        assert (root / "www/index.html").read_text() == "hello from an OCI image\n"
    finally:
        app.release()


@needs_root
def test_more_layers_than_one_mount_option_names_still_mount(tmp_path: Path) -> None:
    links = tmp_path / ("long-" * 20) / LINKS
    lowers = []
    for i in range(150):  # 150 absolute paths of ~150 characters: far over one page
        tree = tmp_path / "trees" / f"{i:03d}"
        tree.mkdir(parents=True)
        (tree / f"file{i}").write_text(str(i))
        (tree / "shared").write_text(str(i))
        links.mkdir(parents=True, exist_ok=True)
        (links / f"{i:020d}").symlink_to(tree)
        lowers.append(links / f"{i:020d}")
    lowers.reverse()  # uppermost first: the last made
    app = mount_app_rootfs(lowers, tmp_path / "app")
    try:
        assert (app.path / "shared").read_text() == "149"
        assert (app.path / "file0").read_text() == "0"
        assert len(os.listdir(app.path)) == 151
    finally:
        app.release()


@needs_root
def test_an_archive_is_told_from_an_aci_by_its_content(layouts: Path, tmp_path: Path) -> None:
    archive = tmp_path / "web.oci.tar"
    subprocess.run(
        ["skopeo", "copy", "-q", f"oci:{layouts}:1.0", f"oci-archive:{archive}:1.0"], check=True
    )
    core = Core(
        Settings(state_dir=tmp_path / "state", cgroup_parent=f"/kurmad-test-{os.getpid()}-ocistore")
    )
    try:
        with open(archive, "rb") as source:
            result = core.import_image(source, "example.com/arch:2.0")
        assert result.created and result.record.name == "example.com/arch"
        assert core.find_image("example.com/arch:2.0").id == result.record.id
        with pytest.raises(ImportFailed, match="not imported"), open(__file__, "rb") as source:
            core.import_image(source)
        assert not list((core.store.root / TMP).iterdir())
    finally:
        core.close()


# --- registry settings -----------------------------------------------------------------------------------


def test_registry_settings_parse_and_name_what_is_wrong() -> None:
    settings = RegistrySettings.from_json({
        "search": ["Docker.io"], "insecure": ["10.0.2.2:5000"], "mirrors": {"docker.io": ["m.local:5000"]},
        "credentials": {"r.example": {"username": "u", "password": "s3cret"}}, "certs_dirs": ["/etc/kurmad/certs.d"],
    })  # fmt: skip
    assert settings.search == ("docker.io",) and settings.insecure == {"10.0.2.2:5000"}
    assert settings.mirrors == {"docker.io": ("m.local:5000",)}
    assert settings.credentials["r.example"].username == "u"
    assert Path("/etc/kurmad/certs.d") in settings.certs_dirs
    assert "s3cret" not in json.dumps(settings.to_json())
    for bad, words in [({"search": "docker.io"}, "registries.search: must be a list"),
                       ({"insecure": ["not a host"]}, "registries.insecure: 'not a host' is not a registry"),
                       ({"credentials": {"r.example": {"username": "u"}}}, "password: must be a non-empty"),
                       ({"mirors": {}}, "unknown key mirors")]:  # fmt: skip
        with pytest.raises(SettingsError, match=words):
            RegistrySettings.from_json(bad)
