"""Rendering: dependency order, pathWhitelist, the 14 conformance cases, overlayfs and copies."""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from kurmad.images.render import RenderError, layer_ids, render, resolve_layers
from kurmad.images.store import ImageStore
from kurmad.runtime.rootfs import mount_app_rootfs, overlay_available

from .conftest import APPC_DATA
from .tarcraft import aci, directory, file, image_manifest, symlink

CASES = sorted(p.name for p in (APPC_DATA / "render").iterdir())
needs_overlay = pytest.mark.skipif(not overlay_available(), reason="needs root and overlayfs")


@pytest.fixture
def store(tmp_path: Path):
    s = ImageStore(tmp_path / "store", durable=False)
    yield s
    s.close()


def add(s: ImageStore, manifest: dict[str, Any], entries: list) -> Any:
    return s.import_stream(io.BytesIO(aci(manifest, entries))).record


def dep(record: Any, by_id: bool = True) -> dict[str, Any]:
    out = {"imageName": record.name}
    if by_id:
        out["imageID"] = record.id
    return out


def tree(root: Path) -> dict[str, tuple[str, int, int]]:
    """Every path under ``root``: (type, permission bits, size)."""
    found = {}
    for current, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(current, name)
            info = path.lstat()
            kind = (
                "dir"
                if stat.S_ISDIR(info.st_mode)
                else "symlink"
                if stat.S_ISLNK(info.st_mode)
                else "file"
            )
            found[str(path.relative_to(root))] = (kind, stat.S_IMODE(info.st_mode), info.st_size)
    return found


# --- the conformance cases --------------------------------------------------------------------


def check_case(case_name: str, rootfs: Path) -> None:
    case = json.loads((APPC_DATA / "render" / case_name / "case.json").read_text())
    expected = {
        e["path"].removeprefix("rootfs/"): e
        for e in case["expected_files"]
        if e["path"] != "manifest"
    }
    got = tree(rootfs)
    for path, entry in expected.items():
        if path == "rootfs":
            info = rootfs.stat()
            actual = ("dir", stat.S_IMODE(info.st_mode), 0)
        else:
            assert path in got, f"{path} is missing"
            actual = got[path]
        assert actual[0] == entry["type"], path
        if entry["type"] != "symlink":
            assert actual[1] == int(entry["mode"], 8), path
        if entry["type"] == "file":
            assert actual[2] == entry["size"], path
    for path, (kind, _, _) in got.items():
        implied_parent = kind == "dir" and any(e.startswith(path + "/") for e in expected)
        assert path in expected or implied_parent, f"{path} should not survive rendering"


def load_case(case_name: str, s: ImageStore) -> Any:
    case = json.loads((APPC_DATA / "render" / case_name / "case.json").read_text())
    for image in case["images"]:
        s.import_file(APPC_DATA / "render" / case_name / image["file"])
    return s.find(case["render_app"])


@pytest.mark.parametrize("case_name", CASES)
def test_render_case_as_a_tree_of_links(case_name: str, store: ImageStore) -> None:
    check_case(case_name, render(store, load_case(case_name, store)))


@pytest.mark.parametrize("case_name", CASES)
def test_render_case_as_a_copy(case_name: str, store: ImageStore, tmp_path: Path) -> None:
    lower = render(store, load_case(case_name, store))
    app = mount_app_rootfs([lower], tmp_path / "app", prefer_overlay=False)
    try:
        assert app.mounted == (os.geteuid() == 0), "as root a copy is bind-mounted for pivot_root"
        check_case(case_name, app.path)
    finally:
        app.release()


@needs_overlay
@pytest.mark.parametrize("case_name", CASES)
def test_render_case_through_overlayfs(case_name: str, store: ImageStore, tmp_path: Path) -> None:
    lower = render(store, load_case(case_name, store))
    app = mount_app_rootfs([lower], tmp_path / "app")
    try:
        assert app.mounted
        check_case(case_name, app.path)
    finally:
        app.release()


# --- order and whitelists -----------------------------------------------------------------------


def test_dependencies_apply_depth_first_in_listed_order(store: ImageStore) -> None:
    d = add(store, image_manifest("example.com/d"), [file("who", "d"), file("d-only", "d")])
    b = add(store, image_manifest("example.com/b", dependencies=[dep(d)]), [file("who", "b")])
    c = add(
        store,
        image_manifest("example.com/c", dependencies=[dep(d)]),
        [file("who", "c"), file("c-only", "c")],
    )
    a = add(
        store, image_manifest("example.com/a", dependencies=[dep(b), dep(c)]), [file("a-only", "a")]
    )
    layers = resolve_layers(store, a)
    assert [store.get(layer.image_id).name for layer in layers] == [
        "example.com/d", "example.com/b", "example.com/d", "example.com/c", "example.com/a"
    ]  # fmt: skip
    rootfs = render(store, a)
    assert (rootfs / "who").read_text() == "c", "C comes after B and overrides it"
    assert layer_ids(store, a) == [d.id, b.id, c.id, a.id]


def test_each_path_to_a_shared_dependency_gets_its_own_whitelists(store: ImageStore) -> None:
    d = add(store, image_manifest("example.com/d"), [file("x", "dx"), file("y", "dy")])
    b = add(
        store, image_manifest("example.com/b", dependencies=[dep(d)], path_whitelist=["/x"]), []
    )
    c = add(
        store, image_manifest("example.com/c", dependencies=[dep(d)], path_whitelist=["/y"]), []
    )
    a = add(store, image_manifest("example.com/a", dependencies=[dep(b), dep(c)]), [])
    assert sorted(tree(render(store, a))) == ["x", "y"]


def test_a_whitelist_filters_the_image_and_everything_below_it(store: ImageStore) -> None:
    base = add(
        store,
        image_manifest("example.com/base"),
        [directory("etc"), file("etc/keep", "k"), file("etc/drop", "d"), file("drop")],
    )
    app = add(store, image_manifest("example.com/app", dependencies=[dep(base)], path_whitelist=["/etc/keep", "/bin/app"]),
              [directory("bin"), file("bin/app", "a"), file("bin/extra", "e")])  # fmt: skip
    assert sorted(tree(render(store, app))) == ["bin", "bin/app", "etc", "etc/keep"]


def test_an_upper_symlink_replaces_a_lower_directory_and_is_not_followed(store: ImageStore) -> None:
    base = add(store, image_manifest("example.com/base"), [directory("lib"), file("lib/libc", "c")])
    app = add(
        store,
        image_manifest("example.com/app", dependencies=[dep(base)]),
        [symlink("lib", "/usr/lib")],
    )
    rootfs = render(store, app)
    assert os.readlink(rootfs / "lib") == "/usr/lib"
    assert "lib/libc" not in tree(rootfs)


def test_an_upper_directory_replaces_a_lower_symlink(store: ImageStore) -> None:
    base = add(store, image_manifest("example.com/base"), [symlink("lib", "/nowhere")])
    app = add(
        store,
        image_manifest("example.com/app", dependencies=[dep(base)]),
        [directory("lib"), file("lib/x", "x")],
    )
    rootfs = render(store, app)
    assert (rootfs / "lib").is_dir() and not (rootfs / "lib").is_symlink()


def test_dependencies_by_name_take_the_latest_version(store: ImageStore) -> None:
    add(store, image_manifest("example.com/base", "1.0.0"), [file("v", "1")])
    add(store, image_manifest("example.com/base", "2.0.0"), [file("v", "2")])
    app = add(
        store,
        image_manifest("example.com/app", dependencies=[{"imageName": "example.com/base"}]),
        [],
    )
    assert (render(store, app) / "v").read_text() == "2"
    pinned = add(store, image_manifest("example.com/pinned", dependencies=[
        {"imageName": "example.com/base", "labels": [{"name": "version", "value": "1.0.0"}]}]), [])  # fmt: skip
    assert (render(store, pinned) / "v").read_text() == "1"


def test_a_plain_image_renders_to_its_own_store_rootfs(store: ImageStore) -> None:
    record = add(store, image_manifest("example.com/plain"), [file("x")])
    assert render(store, record) == store.rootfs(record.id)


def test_renders_are_cached_and_dropped_with_their_images(store: ImageStore) -> None:
    base = add(store, image_manifest("example.com/base"), [file("x")])
    app = add(store, image_manifest("example.com/app", dependencies=[dep(base)]), [file("y")])
    first = render(store, app)
    assert render(store, app) == first
    store.delete(base.id)
    assert not first.exists()
    with pytest.raises(
        RenderError, match=r"example.com/app needs example.com/base .* not in the store"
    ):
        render(store, app)


# --- dependency errors --------------------------------------------------------------------------


def test_a_missing_dependency_is_named(store: ImageStore) -> None:
    app = add(
        store,
        image_manifest("example.com/app", dependencies=[{"imageName": "example.com/ghost"}]),
        [],
    )
    with pytest.raises(
        RenderError, match="example.com/app needs example.com/ghost, which is not in the store"
    ):
        render(store, app)


def test_a_dependency_cycle_is_reported(store: ImageStore) -> None:
    add(store, image_manifest("example.com/a", dependencies=[{"imageName": "example.com/b"}]), [])
    b = add(
        store, image_manifest("example.com/b", dependencies=[{"imageName": "example.com/a"}]), []
    )
    with pytest.raises(
        RenderError, match="dependency cycle: example.com/b -> example.com/a -> example.com/b"
    ):
        render(store, b)


def test_a_dependency_id_must_be_the_named_image(store: ImageStore) -> None:
    other = add(store, image_manifest("example.com/other"), [])
    app = add(
        store,
        image_manifest(
            "example.com/app", dependencies=[{"imageName": "example.com/base", "imageID": other.id}]
        ),
        [],
    )
    with pytest.raises(RenderError, match="but that image is example.com/other"):
        render(store, app)


def test_a_dependency_size_must_match(store: ImageStore) -> None:
    base = add(store, image_manifest("example.com/base"), [file("x")])
    app = add(
        store, image_manifest("example.com/app", dependencies=[{**dep(base), "size": 12345}]), []
    )
    with pytest.raises(RenderError, match="of 12345 bytes"):
        render(store, app)
    ok = add(
        store,
        image_manifest("example.com/ok", dependencies=[{**dep(base), "size": base.tar_size}]),
        [],
    )
    render(store, ok)


# --- app root filesystems -----------------------------------------------------------------------


@needs_overlay
def test_apps_write_to_their_own_upper_layer_only(store: ImageStore, tmp_path: Path) -> None:
    record = add(
        store,
        image_manifest("example.com/app"),
        [directory("etc", 0o750), file("etc/motd", "store\n")],
    )
    lower = render(store, record)
    one = mount_app_rootfs([lower], tmp_path / "one")
    two = mount_app_rootfs([lower], tmp_path / "two")
    try:
        (one.path / "etc/motd").write_text("changed\n")
        (one.path / "new").write_text("x")
        assert (two.path / "etc/motd").read_text() == "store\n"
        assert not (two.path / "new").exists()
        assert (lower / "etc/motd").read_text() == "store\n"
        assert stat.S_IMODE(one.path.stat().st_mode) == stat.S_IMODE(lower.stat().st_mode)
    finally:
        one.release()
        two.release()


@needs_overlay
def test_a_read_only_rootfs_refuses_writes(store: ImageStore, tmp_path: Path) -> None:
    record = add(store, image_manifest("example.com/app"), [file("x", "x")])
    app = mount_app_rootfs([render(store, record)], tmp_path / "ro", read_only=True)
    try:
        with pytest.raises(OSError, match="Read-only file system"):
            (app.path / "y").write_text("no")
    finally:
        app.release()


def test_a_copied_rootfs_keeps_hard_links(store: ImageStore, tmp_path: Path) -> None:
    from .tarcraft import hardlink

    record = add(
        store, image_manifest("example.com/app"), [file("a", "data"), hardlink("b", "rootfs/a")]
    )
    app = mount_app_rootfs([render(store, record)], tmp_path / "copy", prefer_overlay=False)
    try:
        assert (app.path / "a").stat().st_ino == (app.path / "b").stat().st_ino
        assert (app.path / "a").stat().st_ino != store.rootfs(record.id).joinpath("a").stat().st_ino
    finally:
        app.release()


def test_renders_imports_and_deletes_from_many_threads(store: ImageStore) -> None:
    import threading

    from kurmad.images.store import ImageInUse, ImageNotFound, ImportFailed

    base_data = aci(image_manifest("example.com/base"), [file("lib", "base")])
    base = store.import_stream(io.BytesIO(base_data)).record
    apps = [
        add(
            store,
            image_manifest(f"example.com/app{i}", dependencies=[dep(base)]),
            [file("bin", str(i))],
        )
        for i in range(4)
    ]
    errors: list[BaseException] = []

    def renderer(index: int) -> None:
        for _ in range(15):
            try:
                rootfs = render(store, apps[index % len(apps)])
                assert (rootfs / "lib").read_text() == "base"
            except (RenderError, FileNotFoundError):
                pass  # the base image was deleted: a clean refusal
            except BaseException as err:
                errors.append(err)

    def churner() -> None:
        for _ in range(15):
            with contextlib.suppress(ImageInUse, ImageNotFound):
                store.delete(base.id)
            try:
                store.import_stream(io.BytesIO(base_data))
            except ImportFailed as err:
                errors.append(err)

    threads = [threading.Thread(target=renderer, args=(i,)) for i in range(6)] + [
        threading.Thread(target=churner)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    store.import_stream(io.BytesIO(base_data))
    for app in apps:
        assert (render(store, app) / "lib").read_text() == "base"
    for entry in (store.root / "renders").iterdir():
        assert (entry / "render.json").exists(), "no half-built render is ever visible"
    assert list((store.root / "tmp").iterdir()) == []
