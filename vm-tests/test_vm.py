"""A VM booted into kurmad and driven from outside: boot stages, a pod, a reboot that keeps
the data disk's images, and a poweroff that ends QEMU."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from vmkit import WEB_PORT, Booted, boot

from kurmad.api.v1 import kurma_pb2 as pb
from tests.registry import Registry, build_busybox_layout, missing_tools, running_registry

SURVIVOR = "example.com/survivor"


# The host's registry as the VM sees it: QEMU's user network puts the host's loopback at 10.0.2.2.
HOST_FROM_GUEST = "10.0.2.2"
REGISTRY_USER = {"fleet": "0ci-pa55"}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry | None]:
    """A registry behind a login on the host, holding the tests' three-layer busybox image
    (None without the tools: only the test that pulls from it is skipped, and says why)."""
    if missing_tools():
        yield None
        return
    root = tmp_path_factory.mktemp("registry")
    layout = build_busybox_layout(root / "layout")
    with running_registry(root / "registry", auth="htpasswd", users=REGISTRY_USER) as running:
        running.push(layout, "1.0", "web:1.0", user="fleet")
        yield running


@pytest.fixture(scope="module")
def vm(vm_factory: list[Booted], tmp_path_factory: pytest.TempPathFactory,
       registry: Registry | None) -> Iterator[Booted]:  # fmt: skip
    # The VM is carried the registry's credentials by its OEM config, as a fleet's would be.
    # Its certificate names 127.0.0.1, not the guest's view of the host: TLS unverified.
    oem: dict[str, object] = {}
    if registry is not None:
        guest_view = f"{HOST_FROM_GUEST}:{registry.port}"
        ((user, password),) = REGISTRY_USER.items()
        credentials = {guest_view: {"username": user, "password": password}}
        oem["registries"] = {"insecure": [guest_view], "credentials": credentials}
    booted = boot(tmp_path_factory.mktemp("vm"), data=True, oem=oem)
    vm_factory.append(booted)
    booted.wait_booted()
    yield booted


def test_every_boot_stage_is_ok(vm: Booted) -> None:
    result = vm.kurmactl("host", "info", "-o", "json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["mode"] == "boot"
    failed = [s for s in info["boot_stages"] if not s["ok"]]
    assert failed == [], vm.vm.console_text()[-4000:]
    stages = {s["name"]: s.get("detail", "") for s in info["boot_stages"]}
    assert "/run/kurma/oem/kurma.yml" in stages["oem-config"]  # the VM's own settings were read
    assert "mounted on /var/lib/kurmad" in stages["disks"]  # state on the data disk
    assert stages["network"].startswith("eth0: 10.0.2.15/24 via 10.0.2.2 (dhcp")
    assert "kurma.io/console" in stages["images"] and "kurma.io/ntp" in stages["images"]


def test_the_system_pods_run(vm: Booted) -> None:
    with vm.client() as client:
        pods = {p.name: p for p in client.pods()}
    assert pods["console"].state == pb.POD_STATE_RUNNING
    assert pods["ntp"].state == pb.POD_STATE_RUNNING
    # the console pod's getty on the serial line
    vm.vm.wait_for(lambda: "login:" in vm.vm.console_text(), 60, "a login prompt")


def test_a_busybox_pod_runs_and_its_output_comes_back(vm: Booted) -> None:
    result = vm.kurmactl("run", "--rm", "kurma.io/busybox", "--", "/bin/sh", "-c",
                         "echo hello from $(hostname); exit 3")  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert result.stdout.startswith("hello from busybox-")  # the pod's own host name


def test_a_pod_cannot_reach_the_vms_disks_but_one_given_to_it(vm: Booted) -> None:
    """cgroup v2 in the VM: the device program, nodev and the device isolator together."""
    probe = ("for d in /sys/block/*; do n=${d##*/}; case $n in loop*|ram*) continue;; esac; "
             "mm=$(cat $d/dev); mknod /tmp/$n b ${mm%:*} ${mm#*:} && echo made $n; "
             "head -c 512 /tmp/$n >/dev/null 2>&1 && echo read $n; done; ls /sys/block | grep -c vd")  # fmt: skip
    denied = vm.kurmactl("run", "--rm", "kurma.io/busybox", "--", "/bin/sh", "-c", probe)
    assert denied.returncode == 0, denied.stderr
    assert "made" not in denied.stdout and "read" not in denied.stdout, denied.stdout
    assert int(denied.stdout.split()[-1]) >= 1, "the data disk is there to be refused"
    given = vm.kurmactl("run", "--rm", "--device", "/dev/nvme0n1", "kurma.io/busybox", "--",
                        "/bin/sh", "-c", "head -c 512 /dev/nvme0n1 | wc -c")  # fmt: skip
    assert (given.returncode, given.stdout.strip()) == (0, "512"), given.stderr


def test_a_published_port_reaches_a_pod_on_the_bridge(vm: Booted) -> None:
    started = vm.kurmactl("run", "-d", "--name", "web", "-p", f"{WEB_PORT}:80", "kurma.io/busybox", "--",
                          "/bin/sh", "-c", "mkdir /www; echo hello from a pod > /www/index.html; exec httpd -f -p 80 -h /www")  # fmt: skip
    assert started.returncode == 0, started.stderr
    host_port = next(h for h, g in vm.vm.forwards.items() if g == WEB_PORT)
    url = f"http://127.0.0.1:{host_port}/index.html"
    body = vm.vm.wait_for(
        lambda: urllib.request.urlopen(url, timeout=5).read(), 60, "the pod's web server"
    )
    assert body == b"hello from a pod\n"
    with vm.client() as client:
        (network,) = client.get("web").networks
    assert network.name == "kurma0" and network.address.startswith("10.222.")
    assert vm.kurmactl("rm", "-f", "web").returncode == 0


def test_an_oci_image_pulled_in_the_vm_runs_on_its_kernels_overlayfs(
    vm: Booted, registry: Registry | None
) -> None:
    """The 6.1 kernel reads only overlayfs's own whiteouts: the layers' deleted file and
    opaque directory must hold in the pod as they do on the host."""
    if registry is None:
        pytest.skip(f"no registry: {', '.join(missing_tools())} missing (make deps installs them)")
    ref = f"{HOST_FROM_GUEST}:{registry.port}/web:1.0"
    pulled = vm.kurmactl("pull", ref)
    assert pulled.returncode == 0, pulled.stderr
    script = "ls /data; test -e /etc/deleted || echo deleted-gone; cat /www/index.html"
    ran = vm.kurmactl("run", "--rm", ref, "--", "/bin/sh", "-c", script)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split("\n") == ["newest", "deleted-gone", "hello from an OCI image", ""]


def test_an_image_on_the_data_disk_survives_a_reboot(vm: Booted, tmp_path: Path) -> None:
    from tests.tarcraft import aci, file, image_manifest

    image = tmp_path / "survivor.aci"
    image.write_bytes(
        aci(image_manifest(SURVIVOR, "1.0.0"), [file("survivor", "still here\n")], "gzip")
    )
    assert vm.kurmactl("image", "import", str(image)).returncode == 0
    before = vm.info()
    reboot = vm.kurmactl("host", "reboot")
    assert reboot.returncode == 0, reboot.stderr
    vm.wait_down()
    after = vm.wait_booted(after=before)
    assert all(s.ok for s in after.boot_stages), [s for s in after.boot_stages if not s.ok]
    listed = vm.kurmactl("image", "list", "-o", "json")
    assert SURVIVOR in listed.stdout
    assert "reboot requested" in vm.vm.console_text() or "reboot now" in vm.vm.console_text()


def test_poweroff_ends_qemu_with_status_0(vm: Booted) -> None:
    with vm.client() as client:
        client.poweroff()
    assert vm.vm.wait_exit(120) == 0
    assert "poweroff now" in vm.vm.console_text()
