"""The offline kurmactl verbs, run as a user runs them: a process, its output, its exit code."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard

from .tarcraft import MANIFEST, compress, directory, manifest_entry, minimal_entries, tar_bytes

BUSYBOX = shutil.which("busybox")


def kurmactl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kurmad.cli.kurmactl", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_clean_failure(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr + result.stdout


def image_dir(tmp_path: Path, manifest: dict | None = None) -> Path:
    src = tmp_path / "src"
    (src / "rootfs" / "bin").mkdir(parents=True)
    (src / "rootfs" / "bin" / "hello").write_text("#!/bin/sh\necho hello\n")
    (src / "manifest").write_text(json.dumps(manifest or MANIFEST))
    return src


@pytest.fixture
def busybox_rootfs(tmp_path: Path) -> Path:
    if BUSYBOX is None:
        pytest.skip("busybox is not installed (apt-get install busybox-static)")
    rootfs = tmp_path / "busybox"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy(BUSYBOX, rootfs / "bin" / "busybox")
    for applet in ("sh", "echo", "true", "ls", "cat"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    return rootfs


def write_manifest(path: Path, name: str = "example.com/busybox") -> Path:
    path.write_text(
        json.dumps(
            {**MANIFEST, "name": name, "app": {"exec": ["/bin/sh"], "user": "0", "group": "0"}}
        )
    )
    return path


@pytest.mark.parametrize("compress_as", ["zstd", "gzip"])
def test_busybox_image_id_matches_the_unix_tools(
    tmp_path: Path, busybox_rootfs: Path, compress_as: str
) -> None:
    tool = shutil.which(compress_as)
    if tool is None:
        pytest.skip(f"{compress_as} is not installed")
    out = tmp_path / "busybox.aci"
    built = kurmactl("image", "build", busybox_rootfs, "--manifest", write_manifest(tmp_path / "m.json"),
                     "--compress", compress_as, "-o", out)  # fmt: skip
    assert built.returncode == 0, built.stderr
    printed_id = built.stdout.split()[-1]
    unpacked = subprocess.run([tool, "-dc", str(out)], capture_output=True, check=True).stdout
    assert printed_id == "sha512-" + hashlib.sha512(unpacked).hexdigest()
    checked = kurmactl("image", "validate", out)
    assert checked.returncode == 0
    assert checked.stdout.strip() == f"{out}: valid ACI example.com/busybox:1.0.0 {printed_id}"


def test_build_from_a_directory_with_manifest_and_rootfs(tmp_path: Path) -> None:
    out = tmp_path / "img.aci"
    result = kurmactl("image", "build", image_dir(tmp_path), "-o", out, "--compress", "none")
    assert result.returncode == 0, result.stderr
    shown = kurmactl("image", "manifest", out)
    assert shown.returncode == 0
    assert json.loads(shown.stdout)["name"] == "example.com/test"


def test_build_twice_gives_identical_files(tmp_path: Path) -> None:
    src = image_dir(tmp_path)
    a, b = tmp_path / "a.aci", tmp_path / "b.aci"
    assert kurmactl("image", "build", src, "-o", a).returncode == 0
    (src / "rootfs" / "bin" / "hello").touch()
    assert kurmactl("image", "build", src, "-o", b).returncode == 0
    assert a.read_bytes() == b.read_bytes()


def test_validate_reports_each_file_and_fails_if_any_is_invalid(tmp_path: Path) -> None:
    good = tmp_path / "good.aci"
    good.write_bytes(compress(tar_bytes(minimal_entries()), "gzip"))
    bad = tmp_path / "bad.aci"
    bad.write_bytes(tar_bytes([manifest_entry(), directory("rootfs"), directory("etc")]))
    missing = tmp_path / "missing.aci"
    result = kurmactl("image", "validate", good, bad, missing)
    assert_clean_failure(result)
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"{good}: valid ACI example.com/test:1.0.0 sha512-")
    assert (
        lines[1]
        == f"{bad}: invalid: entry 'etc' is outside rootfs/ (only 'manifest' and 'rootfs/' may be at the top)"
    )
    assert lines[2] == f"{missing}: invalid: No such file or directory"


def test_validate_json_output_is_machine_readable(tmp_path: Path) -> None:
    good = tmp_path / "good.aci"
    good.write_bytes(tar_bytes(minimal_entries()))
    result = kurmactl("image", "validate", "-o", "json", good)
    assert result.returncode == 0
    [verdict] = json.loads(result.stdout)
    assert (
        verdict["valid"]
        and verdict["name"] == "example.com/test"
        and verdict["compression"] == "none"
    )


@pytest.mark.parametrize(
    "content,reason",
    [
        (b"", "the file is empty"),
        (b"<html>not an archive</html>" * 30, "not a tar archive"),
        (compress(tar_bytes(minimal_entries()), "zstd")[:-10], "the zstd stream is corrupt or truncated"),
        (tar_bytes([manifest_entry("[1, 2]"), directory("rootfs")]), "invalid manifest: manifest: must be an object"),
        (tar_bytes([manifest_entry({**MANIFEST, "acKind": "PodManifest"}), directory("rootfs")]),
         'invalid manifest: acKind: "PodManifest" must be "ImageManifest"'),
    ],
)  # fmt: skip
def test_image_manifest_of_a_bad_archive_is_one_clear_line(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    path = tmp_path / "x.aci"
    path.write_bytes(content)
    result = kurmactl("image", "manifest", path)
    assert_clean_failure(result)
    [line] = result.stderr.splitlines()
    assert line.startswith(f"kurmactl: error: {path}: {reason}")


def test_build_refuses_a_name_without_aci_suffix(tmp_path: Path) -> None:
    result = kurmactl("image", "build", image_dir(tmp_path), "-o", tmp_path / "x.tar")
    assert_clean_failure(result)
    assert "must end in .aci" in result.stderr


def test_build_with_an_invalid_manifest_names_the_field(tmp_path: Path) -> None:
    bad = {**MANIFEST, "app": {"exec": ["/bin/sh"], "user": "0", "group": "0",
                               "environment": [{"name": "A", "value": ""}, {"name": "B", "value": ""}, {"name": "1FOO", "value": ""}]}}  # fmt: skip
    out = tmp_path / "x.aci"
    result = kurmactl("image", "build", image_dir(tmp_path, bad), "-o", out)
    assert_clean_failure(result)
    assert result.stderr.strip().endswith(
        'app.environment[2].name: "1FOO" must start with a letter or _'
    )
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"], "no temporary file may be left behind"


def test_build_without_rootfs_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    write_manifest(src / "manifest")
    result = kurmactl("image", "build", src, "-o", tmp_path / "x.aci")
    assert_clean_failure(result)
    assert "no rootfs/ directory" in result.stderr


def test_manifest_validate_handles_both_kinds(tmp_path: Path) -> None:
    image = write_manifest(tmp_path / "image.json")
    pod = tmp_path / "pod.json"
    pod.write_text(json.dumps({"acKind": "PodManifest", "acVersion": "0.8.11", "apps": [
        {"name": "web", "image": {"id": "sha512-" + "a" * 128}}]}))  # fmt: skip
    result = kurmactl("manifest", "validate", image, pod)
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        f"{image}: valid ImageManifest",
        f"{pod}: valid PodManifest",
    ]


@pytest.mark.parametrize(
    "document,reason",
    [
        ("{", "not valid JSON"),
        ('{"acKind": "Bogus"}', 'acKind: must be "ImageManifest" or "PodManifest"'),
        ('{"acKind": "PodManifest", "acVersion": "0.8.11", "apps": [{"name": "Web", "image": {"id": "sha512-a"}}]}',
         'apps[0].name: "Web" is not an AC Name'),
        ('{"acKind": "ImageManifest", "acVersion": "0.8.11", "name": "x", "labels": [{"name": "os", "value": "plan9"}]}',
         'labels[0].value: bad os "plan9"'),
    ],
)  # fmt: skip
def test_manifest_validate_names_the_field(tmp_path: Path, document: str, reason: str) -> None:
    path = tmp_path / "m.json"
    path.write_text(document)
    result = kurmactl("manifest", "validate", path)
    assert_clean_failure(result)
    assert reason in result.stdout


def test_usage_errors_exit_2() -> None:
    result = kurmactl("image", "frobnicate")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_zstd_built_by_kurmactl_reads_with_the_zstandard_library(tmp_path: Path) -> None:
    out = tmp_path / "img.aci"
    assert (
        kurmactl("image", "build", image_dir(tmp_path), "-o", out, "--compress", "zstd").returncode
        == 0
    )
    tar = zstandard.ZstdDecompressor().stream_reader(out.read_bytes()).read()
    assert tar[257:262] == b"ustar"


HEAVY = ("grpc", "google.protobuf", "yaml", "kurmad.appc", "kurmad.api", "kurmad.client")


def loaded_after(code: str) -> set[str]:
    """The heavy modules a fresh interpreter has loaded after running ``code``."""
    probe = f"import sys\n{code}\nprint(*sorted(m for m in sys.modules if m.startswith({HEAVY})))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    return set(result.stdout.splitlines()[-1].split())


def test_the_parser_loads_no_heavy_module() -> None:
    # What keeps `kurmactl --help` fast: the nouns import their handlers' needs in the handlers.
    assert loaded_after("from kurmad.cli import kurmactl; kurmactl.build_parser()") == set()


def test_an_offline_verb_loads_no_grpc(tmp_path: Path) -> None:
    out = tmp_path / "img.aci"
    assert kurmactl("image", "build", image_dir(tmp_path), "-o", out).returncode == 0
    loaded = loaded_after(
        f"from kurmad.cli import kurmactl; kurmactl.main(['image', 'validate', {str(out)!r}])"
    )
    assert "kurmad.appc" in loaded  # the probe sees what the verb loads
    assert not {m for m in loaded if m.startswith(("grpc", "google.protobuf", "kurmad.client"))}
