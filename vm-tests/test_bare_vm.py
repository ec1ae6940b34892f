"""A VM with no data disk and a broken configuration on its kernel command line: it still boots
to a reachable API that names the errors; and a virtio disk hot-added through the QEMU monitor
gets its driver loaded by the hotplug monitor and shows up in a pod."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from vmkit import Booted, boot


@pytest.fixture(scope="module")
def bare(vm_factory: list[Booted], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Booted]:
    booted = boot(tmp_path_factory.mktemp("bare"), data=False,
                  append="kurma.config=/etc/no-such.yml kurma.hostname=-bad- kurma.nonsense=1")  # fmt: skip
    vm_factory.append(booted)
    booted.wait_booted()
    yield booted


def test_a_broken_config_still_boots_to_an_api_that_names_the_errors(bare: Booted) -> None:
    info = bare.info()
    config = next(s for s in info.boot_stages if s.name == "config")
    assert not config.ok
    assert "/etc/no-such.yml: No such file or directory" in config.error
    assert "hostname: '-bad-' is not a valid host name" in config.error
    assert "kurma.nonsense: unknown option" in config.error
    assert info.hostname == "kurma"  # the bad value fell back
    others = [s.name for s in info.boot_stages if not s.ok and s.name != "config"]
    assert others == []


def test_a_hot_added_virtio_disk_gets_its_driver_and_shows_up(bare: Booted, tmp_path: Path) -> None:
    modules = next(s for s in bare.info().boot_stages if s.name == "modules")
    assert " virtio_blk" not in modules.detail  # no virtio disk at boot: not loaded
    disk = tmp_path / "hot.img"
    with open(disk, "wb") as f:
        f.truncate(64 * 2**20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "HOTDISK", str(disk)], check=True)
    added = bare.vm.hmp(f"drive_add 0 if=none,id=hot,file={disk},format=raw")
    assert "OK" in added, added
    plugged = bare.vm.hmp("device_add virtio-blk-pci,drive=hot,id=hotdisk")
    assert "Error" not in plugged, plugged
    bare.vm.wait_for(lambda: "hotplug: loaded virtio_blk" in bare.vm.console_text(), 60,
                     "the hotplug monitor to load virtio_blk")  # fmt: skip
    listed = bare.kurmactl("run", "--rm", "-v", "/sys/block:/host-block:ro", "kurma.io/busybox",
                           "--", "/bin/ls", "/host-block")  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert "vda" in listed.stdout.split()
