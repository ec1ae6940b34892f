"""OCI images end to end against a real registry: Debian's docker-registry on 127.0.0.1 with a
CA made here, anonymous and htpasswd; images built with umoci and pushed with skopeo; a real
``kurmad serve`` with a bridge pod network, driven by kurmactl. An image is pulled by reference
and runs as busybox httpd with a published port the host fetches from; a second image on the
same base fetches only its new layer; both archive formats import and run; every bad pull is
refused with one line, nothing partial in the store and the daemon alive."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from kurmad.linux.cgroups import CgroupDriver

from .daemon import ServeProcess
from .registry import Registry, build_busybox_layout, missing_tools, running_registry
from .test_oci_store import tag_with_motd

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or bool(missing_tools()) or shutil.which("nft") is None
    or not Path("/usr/lib/cni/bridge").exists(),
    reason=f"needs root, nftables, CNI plugins and {', '.join(missing_tools()) or 'the registry tools'}",
)  # fmt: skip
# A network of its own, in the host's namespace: the host fetches the published port itself.
NETWORKS = {"networks": [{"name": "ocitest", "type": "bridge", "bridge": "kocitest0",
                          "subnet": "10.231.0.0/24"}]}  # fmt: skip
HOST_PORT = 18080


@dataclass
class Setup:
    root: Path
    layout: Path
    registry: Registry
    serve: ServeProcess

    def ref(self, name: str) -> str:
        return f"{self.registry.host}/{name}"

    def kurmactl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "kurmad.cli.kurmactl", "--host", self.serve.socket, *args],
                              capture_output=True, text=True, timeout=timeout)  # fmt: skip

    def ok(self, *args: str) -> str:
        result = self.kurmactl(*args)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def images(self) -> list[dict[str, object]]:
        return json.loads(self.ok("image", "list", "-o", "json"))  # type: ignore[no-any-return]

    def stored(self) -> tuple[list[str], list[str]]:
        """The image and tmp directories of the store: what a failure must not change."""
        store = self.serve.state / "images"
        return sorted(os.listdir(store / "images")), sorted(os.listdir(store / "tmp"))


def serve_with(root: Path, name: str, registry: Registry, *, network: bool = False) -> ServeProcess:
    """A kurmad serve trusting ``registry``'s CA; ``network``: with the bridge (one at a time)."""
    (root / f"{name}-registries.yml").write_text(
        yaml.safe_dump({"certs_dirs": [str(registry.certs_dir)]})
    )
    (root / f"{name}-networks.yml").write_text(yaml.safe_dump(NETWORKS))
    flags = ["--network-config", str(root / f"{name}-networks.yml")] if network else []
    serve = ServeProcess(
        root / name, "--registry-config", str(root / f"{name}-registries.yml"), *flags
    )
    serve.cgroup_parent = f"/kurmad-test-{os.getpid()}-oci-{name}"
    return serve.start()


def stop(serve: ServeProcess) -> None:
    serve.cleanup_pods()
    serve.stop()
    CgroupDriver(serve.cgroup_parent).cgroup("").remove()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("oci")
    layout = tag_with_motd(build_busybox_layout(root / "layout"))
    # 1.2: the config says who runs it (a user without a group), how it stops, what it keeps
    subprocess.run(["umoci", "tag", "--image", f"{layout}:1.0", "1.2"], check=True)
    subprocess.run(["umoci", "config", "--image", f"{layout}:1.2", "--config.user", "nobody",
                    "--config.stopsignal", "SIGUSR1", "--config.volume", "/cache"], check=True)  # fmt: skip
    with running_registry(root / "registry") as registry:
        for tag, name in (("1.0", "web:1.0"), ("1.1", "web:1.1"), ("1.0", "other/web:1.0"),
                          ("1.2", "web:1.2")):  # fmt: skip
            registry.push(layout, tag, name)
        serve = serve_with(root, "state", registry, network=True)
        try:
            yield Setup(root, layout, registry, serve)
        finally:
            stop(serve)


def fetch(url: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.read().decode()  # type: ignore[no-any-return]
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_pulled_by_reference_it_serves_its_page_on_a_published_port(setup: Setup) -> None:
    ref = setup.ref("web:1.0")
    pulled = setup.kurmactl("pull", ref)
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stderr.count("Pull complete") == 3 and f"Pulled {ref}" in pulled.stderr
    (image,) = [i for i in setup.images() if i.get("reference") == ref]
    assert str(image["id"]).startswith("sha512-") and str(image["oci_digest"]).startswith("sha256:")
    assert image["name"] == f"127.0.0.1~{setup.registry.port}/web"
    assert image["labels"] == {"version": "1.0", "os": "linux", "arch": "amd64"}
    run = setup.kurmactl("run", "-d", "--name", "web", "-p", f"{HOST_PORT}:80", ref)
    assert run.returncode == 0, run.stderr
    try:
        assert fetch(f"http://127.0.0.1:{HOST_PORT}/index.html") == "hello from an OCI image\n"
        listed = setup.ok("image", "list")
        assert (
            f"{setup.registry.host}/web" in listed and "web" in listed.split(ref.split(":")[0])[-1]
        )
    finally:
        setup.ok("rm", "-f", "web")


def test_the_layers_whiteouts_and_the_config_hold_in_the_pod(setup: Setup) -> None:
    script = "ls /data; test -e /etc/deleted || echo deleted-gone; echo $GREETING; pwd"
    out = setup.ok("run", "--rm", setup.ref("web:1.0"), "--", "/bin/sh", "-c", script)
    assert out.split() == ["newest", "deleted-gone", "hello", "/"]


def test_the_configs_user_stop_signal_and_volumes_are_honoured(setup: Setup) -> None:
    ref = setup.ref("web:1.2")
    script = "id -u; id -g; grep -c ' /cache ' /proc/mounts"
    assert setup.ok("run", "--rm", ref, "--", "/bin/sh", "-c", script).split() == [
        "65534",
        "65534",
        "1",
    ]
    trap = "trap 'echo stopped-by-usr1; exit 0' USR1; echo up; while true; do sleep 0.1; done"
    setup.ok("run", "-d", "--name", "stopsig", ref, "--", "/bin/sh", "-c", trap)
    try:
        setup.ok("stop", "stopsig")
        logs = setup.ok("logs", "stopsig")
        assert "stopped-by-usr1" in logs, logs
        (app,) = json.loads(setup.ok("show", "stopsig", "-o", "json"))["apps"]
        assert app.get("exit_code", 0) == 0 and not app.get("signal"), app  # it stopped itself
    finally:
        setup.ok("rm", "-f", "stopsig")


def test_a_second_image_on_the_same_base_fetches_only_its_new_layer(setup: Setup) -> None:
    setup.ok("pull", setup.ref("web:1.0"))
    result = setup.kurmactl("pull", setup.ref("web:1.1"))
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("Already exists") == 3 and result.stderr.count("Pull complete") == 1
    out = setup.ok("run", "--rm", setup.ref("web:1.1"), "--", "/bin/cat", "/etc/motd")
    assert out == "1.1\n"


def test_run_pulls_an_image_the_store_lacks(setup: Setup) -> None:
    ref = setup.ref("other/web:1.0")
    result = setup.kurmactl("run", "--rm", ref, "--", "/bin/echo", "ran")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ran\n" and f"Pulled {ref}" in result.stderr


@pytest.mark.parametrize("kind", ["oci-archive", "docker-archive", "layout"])
def test_archives_import_and_run(setup: Setup, kind: str) -> None:
    # A layout holds both tags: the reference's tag chooses; the archives hold one image.
    name = f"example.com/imported/{kind}:{'1.0' if kind == 'layout' else '2.0'}"
    if kind == "layout":
        source, extra = setup.layout, ["--name", name]
    else:
        source = setup.root / f"web.{kind}.tar"
        tagged = f"{name}" if kind == "docker-archive" else "2.0"
        subprocess.run(["skopeo", "copy", "-q", f"oci:{setup.layout}:1.0", f"{kind}:{source}:{tagged}"],
                       check=True, capture_output=True)  # fmt: skip
        extra = [] if kind == "docker-archive" else ["--name", name]
    imported = setup.kurmactl("image", "import", str(source), *extra)
    assert imported.returncode == 0, imported.stderr
    assert (
        setup.ok("run", "--rm", name, "--", "/bin/cat", "/www/index.html")
        == "hello from an OCI image\n"
    )


def test_image_rm_by_reference_frees_the_layers_only_it_used(setup: Setup) -> None:
    for tag in ("1.0", "1.1"):
        setup.ok("pull", setup.ref(f"web:{tag}"))
    layers = setup.serve.state / "images" / "links"
    before = len(os.listdir(layers))
    setup.ok("image", "rm", setup.ref("web:1.1"))
    assert len(os.listdir(layers)) == before - 1
    assert setup.kurmactl("image", "show", setup.ref("web:1.1")).returncode != 0
    assert setup.ok("image", "show", setup.ref("web:1.0"))


def one_line(result: subprocess.CompletedProcess[str], *words: str) -> None:
    """Failed with one error line, the last (progress lines of a pull may come before it)."""
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("kurmactl: error: ")]
    assert errors == lines[-1:] and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in errors[0], errors[0]


def test_bad_pulls_are_one_line_and_leave_the_store_as_it_was(setup: Setup) -> None:
    before = setup.stored()
    one_line(setup.kurmactl("pull", setup.ref("web:9.9")), "NOT_FOUND", "manifest 9.9 not found")
    one_line(setup.kurmactl("pull", setup.ref("nothing:1.0")), "not found")
    one_line(
        setup.kurmactl("pull", "busybox"), "short name", "no search registry", "docker.io/busybox"
    )
    one_line(setup.kurmactl("pull", "appc://example.com/app"), "discovery")
    one_line(setup.kurmactl("pull", "Bad//Ref"), "INVALID_ARGUMENT")
    one_line(setup.kurmactl("pull", "--platform", "linux/s390x", setup.ref("web:1.0")), "s390x")
    assert setup.stored() == before
    assert setup.ok("ps") is not None  # the daemon answers


def test_a_blob_that_does_not_match_its_digest_is_refused(setup: Setup) -> None:
    ref = setup.ref("corrupt:1.0")
    setup.registry.push(setup.layout, "1.0", "corrupt:1.0")
    manifest = json.loads(subprocess.run(
        ["skopeo", "inspect", "--raw", "--cert-dir", str(setup.registry.certs_dir / setup.registry.host), f"docker://{ref}"],
        check=True, capture_output=True, text=True).stdout)  # fmt: skip
    # Every repository shares the registry's blobs: change a layer only this test pushes.
    blob = setup.registry.blob_file(manifest["layers"][0]["digest"])
    saved = blob.read_bytes()
    try:
        stale = bytearray(saved)
        stale[len(stale) // 2] ^= 0xFF
        fresh = serve_with(setup.root, "corrupt", setup.registry)
        try:
            blob.write_bytes(bytes(stale))
            result = subprocess.run([sys.executable, "-m", "kurmad.cli.kurmactl", "--host", fresh.socket, "pull", ref],
                                    capture_output=True, text=True, timeout=120)  # fmt: skip
            one_line(result, "does not match its digest")
            store = fresh.state / "images"
            assert not os.listdir(store / "tmp")
            infos = [
                json.loads((d / "info.json").read_text()) for d in (store / "images").iterdir()
            ]
            assert all(info["layer"] for info in infos)  # the other layers, whole; no image
        finally:
            stop(fresh)
    finally:
        blob.write_bytes(saved)


def test_a_registry_behind_a_login(setup: Setup) -> None:
    with running_registry(
        setup.root / "private", auth="htpasswd", users={"ops": "pa55word"}
    ) as private:
        private.push(setup.layout, "1.0", "web:1.0", user="ops")
        serve = serve_with(setup.root, "login", private)
        try:
            ref = f"{private.host}/web:1.0"

            def kurmactl(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
                return subprocess.run([sys.executable, "-m", "kurmad.cli.kurmactl", "--host", serve.socket, *args],
                                      input=stdin, capture_output=True, text=True, timeout=120)  # fmt: skip

            one_line(kurmactl("pull", ref), private.host, "kurmactl login")
            one_line(
                kurmactl("login", private.host, "-u", "ops", "--password-stdin", stdin="wrong\n"),
                "refused",
            )
            assert not (serve.state / "registries/auth.json").exists()
            login = kurmactl(
                "login", private.host, "-u", "ops", "--password-stdin", stdin="pa55word\n"
            )
            assert login.returncode == 0, login.stderr
            assert (serve.state / "registries/auth.json").stat().st_mode & 0o777 == 0o600
            assert kurmactl("pull", ref).returncode == 0
            serve.stop()
            serve.start()  # the login is kept by the daemon
            assert kurmactl("image", "rm", ref).returncode == 0
            assert kurmactl("pull", ref).returncode == 0
            assert "Removed" in kurmactl("logout", private.host).stdout
        finally:
            stop(serve)


def test_an_unknown_ca_says_how_to_trust_it(setup: Setup) -> None:
    config = setup.root / "no-ca.yml"
    config.write_text("{}\n")
    serve = ServeProcess(setup.root / "no-ca", "--registry-config", str(config))
    serve.cgroup_parent = f"/kurmad-test-{os.getpid()}-oci-noca"
    serve.start()
    try:
        result = subprocess.run([sys.executable, "-m", "kurmad.cli.kurmactl", "--host", serve.socket, "pull", setup.ref("web:1.0")],
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        one_line(result, "not trusted", f"certs.d/{setup.registry.host}/ca.crt", "insecure")
    finally:
        stop(serve)
