"""Kernel modules without modprobe, against a fixture /lib/modules/<release> tree: aliases,
dependency order, decompression, and coldplug and hotplug over a fake sysfs. init_module is
replaced by a recorder: nothing reaches the kernel."""

from __future__ import annotations

import errno
import lzma
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zstandard

import kurmad.linux.syscalls
from kurmad.host import modules
from kurmad.host.modules import Hotplug, ModuleError, ModuleIndex, coldplug, device_modaliases

# name -> path in modules.dep; the suffix says how the file is stored
FILES = {
    "virtio": "kernel/drivers/virtio/virtio.ko",
    "virtio_ring": "kernel/drivers/virtio/virtio_ring.ko.zst",
    "virtio_pci_modern_dev": "kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz",
    "virtio_pci": "kernel/drivers/virtio/virtio_pci.ko.xz",
    "failover": "kernel/net/core/failover.ko.xz",
    "net_failover": "kernel/drivers/net/net_failover.ko.zst",
    "virtio_net": "kernel/drivers/net/virtio_net.ko.xz",
    "virtio_blk": "kernel/drivers/block/virtio_blk.ko.xz",
    "overlay": "kernel/fs/overlayfs/overlay.ko.zst",
    "hid": "kernel/drivers/hid/hid.ko",
    "hid_generic": "kernel/drivers/hid/hid-generic.ko",
    "cyc_a": "kernel/test/cyc_a.ko",
    "cyc_b": "kernel/test/cyc-b.ko",
}

DEPS = {
    "virtio_pci": ["virtio_pci_modern_dev", "virtio_ring", "virtio"],
    "virtio_net": ["net_failover", "failover", "virtio_ring", "virtio"],
    "net_failover": ["failover"],
    "virtio_blk": ["virtio_ring", "virtio"],
    "virtio_ring": ["virtio"],
    "hid_generic": ["hid"],
    "cyc_a": ["cyc_b"],
    "cyc_b": ["cyc_a"],
}

ALIASES = """\
# Aliases extracted from modules themselves.
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias pci:v00001AF4d00001000sv*sd*bc*sc*i* virtio_pci
alias virtio:d00000001v* virtio_net
alias virtio:d00000002v* virtio_blk
alias fs-overlay overlay
alias hid:b*g0001v*p* hid-generic
alias net-pf-16-proto-0 netlink_diag
alias virtio:d0000001Av* virtiofs
"""

BUILTIN = """\
kernel/fs/ext4/ext4.ko
kernel/drivers/block/loop.ko
kernel/crypto/crc32c_generic.ko
"""

VIRTIO_NET_PCI = "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"
VIRTIO_BLK_PCI = "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00"
VIRTIO_NET = "virtio:d00000001v00001AF4"
VIRTIO_BLK = "virtio:d00000002v00001AF4"


def elf(name: str) -> bytes:
    """A stand-in module image, different for each module."""
    return b"\x7fELF\x02\x01\x01\x00" + f"module {name} ".encode() * 50


def stored(name: str) -> bytes:
    data = elf(name)
    if FILES[name].endswith(".xz"):
        return lzma.compress(data)
    if FILES[name].endswith(".zst"):
        return zstandard.ZstdCompressor().compress(data)
    return data


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "lib" / "modules" / "6.6.0-kurma"
    lines = []
    for name, rel in FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(stored(name))
        deps = " ".join(FILES[d] for d in DEPS.get(name, []))
        lines.append(f"{rel}: {deps}".rstrip())
    (root / "modules.dep").write_text("\n".join(lines) + "\n\n")
    (root / "modules.alias").write_text(ALIASES)
    (root / "modules.builtin").write_text(BUILTIN)
    return root


@pytest.fixture
def index(tree: Path) -> ModuleIndex:
    return ModuleIndex(tree)


@dataclass
class Kernel:
    """What init_module saw: the images, in order, and the modules they made loaded."""

    images: list[bytes] = field(default_factory=list)
    loaded: set[str] = field(default_factory=set)
    refuse: dict[str, OSError] = field(default_factory=dict)

    def init_module(self, image: bytes, params: str = "") -> None:
        name = next(n for n in FILES if elf(n) == image)
        if name in self.refuse:
            raise self.refuse[name]
        self.images.append(image)
        self.loaded.add(name)

    def is_loaded(self, name: str) -> bool:
        return name in self.loaded

    def names(self) -> list[str]:
        return [next(n for n in FILES if elf(n) == image) for image in self.images]


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> Kernel:
    fake = Kernel()
    monkeypatch.setattr(kurmad.linux.syscalls, "init_module", fake.init_module)
    monkeypatch.setattr(modules, "loaded", fake.is_loaded)
    return fake


# --- the index --------------------------------------------------------------------------------


def test_index_reads_paths_deps_and_builtins(index: ModuleIndex) -> None:
    assert index.paths["hid_generic"] == "kernel/drivers/hid/hid-generic.ko"
    assert index.paths["virtio_ring"] == "kernel/drivers/virtio/virtio_ring.ko.zst"
    assert index.deps["virtio_pci"] == ["virtio_pci_modern_dev", "virtio_ring", "virtio"]
    assert index.deps["virtio"] == []
    assert index.deps["cyc_a"] == ["cyc_b"]
    assert index.builtin == {"ext4", "loop", "crc32c_generic"}
    assert len(index.paths) == len(FILES)


def test_index_without_alias_and_builtin_files(tree: Path) -> None:
    (tree / "modules.alias").unlink()
    (tree / "modules.builtin").unlink()
    index = ModuleIndex(tree)
    assert index.aliases == []
    assert index.builtin == set()
    assert index.match(VIRTIO_NET) == []
    assert "virtio_net" in index.paths


def test_normalise() -> None:
    assert modules.normalise("hid-generic") == "hid_generic"
    assert modules.normalise("virtio_net") == "virtio_net"


@pytest.mark.parametrize(
    ("modalias", "expected"),
    [
        (VIRTIO_NET_PCI, ["virtio_pci"]),
        (VIRTIO_BLK_PCI, ["virtio_pci"]),
        (VIRTIO_NET, ["virtio_net"]),
        (VIRTIO_BLK, ["virtio_blk"]),
        ("virtio:d0000001Av00001AF4", ["virtiofs"]),
        ("fs-overlay", ["overlay"]),
        ("hid:b0003g0001v000046DDp0000C52B", ["hid_generic"]),
    ],
)
def test_match_real_modaliases(index: ModuleIndex, modalias: str, expected: list[str]) -> None:
    assert index.match(modalias) == expected


@pytest.mark.parametrize(
    "modalias",
    [
        "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01",  # an Intel AHCI controller
        "virtio:d00000003v00001AF4",  # a virtio console
        "fs-overlayx",  # aliases match the whole string
        "xfs-overlay",
        "hid:b0003g0002v000046DDp0000C52B",
        "",
    ],
)
def test_match_nothing(index: ModuleIndex, modalias: str) -> None:
    assert index.match(modalias) == []


def test_match_is_case_sensitive_like_the_kernel(index: ModuleIndex) -> None:
    assert index.match(VIRTIO_NET_PCI.lower()) == []


# --- order ------------------------------------------------------------------------------------


def test_order_puts_dependencies_first(index: ModuleIndex) -> None:
    order = index.order("virtio_pci")
    assert order[-1] == "virtio_pci"
    assert sorted(order) == sorted(["virtio_pci", "virtio_pci_modern_dev", "virtio_ring", "virtio"])
    assert order.index("virtio") < order.index("virtio_ring")


def test_order_of_a_deep_tree_has_no_duplicates(index: ModuleIndex) -> None:
    order = index.order("virtio_net")
    assert len(order) == len(set(order)) == 5
    for module in order:
        for dep in DEPS.get(module, []):
            assert order.index(dep) < order.index(module), (dep, module, order)


def test_order_normalises_the_name(index: ModuleIndex) -> None:
    assert index.order("hid-generic") == ["hid", "hid_generic"]


def test_order_of_a_module_without_deps(index: ModuleIndex) -> None:
    assert index.order("overlay") == ["overlay"]
    assert index.order("nosuch") == ["nosuch"]


def test_order_survives_a_cycle(index: ModuleIndex) -> None:
    assert index.order("cyc_a") == ["cyc_b", "cyc_a"]
    assert index.order("cyc-b") == ["cyc_a", "cyc_b"]


# --- load -------------------------------------------------------------------------------------


def test_load_inserts_dependencies_first_with_decompressed_images(
    index: ModuleIndex, kernel: Kernel
) -> None:
    new = index.load("virtio_pci", is_loaded=kernel.is_loaded)
    assert new == index.order("virtio_pci")
    assert kernel.names() == new
    assert kernel.images == [elf(name) for name in new]


def test_load_decompresses_xz(index: ModuleIndex, kernel: Kernel) -> None:
    assert index.load("virtio_blk", is_loaded=lambda name: name != "virtio_blk") == ["virtio_blk"]
    assert kernel.images == [elf("virtio_blk")]
    assert kernel.images[0].startswith(b"\x7fELF")


def test_load_decompresses_zstd(index: ModuleIndex, kernel: Kernel) -> None:
    assert index.load("overlay", is_loaded=kernel.is_loaded) == ["overlay"]
    assert kernel.images == [elf("overlay")]


def test_load_of_a_plain_ko(index: ModuleIndex, kernel: Kernel) -> None:
    assert index.load("hid-generic", is_loaded=kernel.is_loaded) == ["hid", "hid_generic"]
    assert kernel.images == [elf("hid"), elf("hid_generic")]


def test_load_skips_what_is_already_loaded(index: ModuleIndex, kernel: Kernel) -> None:
    kernel.loaded |= {"virtio", "failover"}
    new = index.load("virtio_net", is_loaded=kernel.is_loaded)
    assert new == ["net_failover", "virtio_ring", "virtio_net"]
    assert kernel.names() == new
    assert index.load("virtio_net", is_loaded=kernel.is_loaded) == []
    assert len(kernel.images) == 3


def test_load_uses_sys_module_by_default(index: ModuleIndex, kernel: Kernel) -> None:
    kernel.loaded |= {"virtio", "virtio_ring"}
    assert index.load("virtio_blk") == ["virtio_blk"]


def test_load_skips_builtin_modules(index: ModuleIndex, kernel: Kernel) -> None:
    assert index.load("ext4", is_loaded=kernel.is_loaded) == []
    assert index.load("crc32c-generic", is_loaded=kernel.is_loaded) == []
    assert kernel.images == []


def test_load_of_an_unknown_module_names_it(index: ModuleIndex, kernel: Kernel) -> None:
    with pytest.raises(ModuleError, match=r"^module no_such_mod does not exist for this kernel$"):
        index.load("no-such-mod", is_loaded=kernel.is_loaded)
    assert kernel.images == []


def test_load_of_a_cycle_inserts_each_once(index: ModuleIndex, kernel: Kernel) -> None:
    assert index.load("cyc_a", is_loaded=kernel.is_loaded) == ["cyc_b", "cyc_a"]
    assert kernel.names() == ["cyc_b", "cyc_a"]


def test_load_counts_a_module_the_kernel_already_had(index: ModuleIndex, kernel: Kernel) -> None:
    kernel.refuse["overlay"] = FileExistsError(errno.EEXIST, "File exists")
    assert index.load("overlay", is_loaded=kernel.is_loaded) == ["overlay"]


def test_load_turns_a_kernel_refusal_into_module_error(index: ModuleIndex, kernel: Kernel) -> None:
    kernel.refuse["virtio_blk"] = OSError(errno.ENOEXEC, "Exec format error")
    with pytest.raises(ModuleError, match=r"^virtio_blk.ko.xz: Exec format error$"):
        index.load("virtio_blk", is_loaded=kernel.is_loaded)
    assert kernel.names() == ["virtio", "virtio_ring"]


def test_load_all_reports_loaded_and_failed_apart(index: ModuleIndex, kernel: Kernel) -> None:
    kernel.refuse["overlay"] = OSError(errno.ENOEXEC, "Exec format error")
    report = index.load_all(["virtio-blk", "overlay", "nosuch", "hid_generic", "ext4"])
    assert report.loaded == ["virtio", "virtio_ring", "virtio_blk", "hid", "hid_generic"]
    assert report.failed == {
        "overlay": "overlay.ko.zst: Exec format error",
        "nosuch": "module nosuch does not exist for this kernel",
    }


def test_load_all_of_nothing(index: ModuleIndex, kernel: Kernel) -> None:
    report = index.load_all([])
    assert report.loaded == []
    assert report.failed == {}


def test_for_running_kernel_without_modules(tmp_path: Path) -> None:
    release = os.uname().release
    with pytest.raises(ModuleError) as caught:
        ModuleIndex.for_running_kernel(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"no modules for kernel {release} ")
    assert f"{tmp_path / release}/modules.dep is missing" in message


def test_for_running_kernel_with_modules(tmp_path: Path) -> None:
    root = tmp_path / os.uname().release
    root.mkdir()
    (root / "modules.dep").write_text("kernel/fs/overlayfs/overlay.ko:\n")
    index = ModuleIndex.for_running_kernel(tmp_path)
    assert index.root == root
    assert index.paths == {"overlay": "kernel/fs/overlayfs/overlay.ko"}


# --- coldplug -----------------------------------------------------------------------------------


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    devices = tmp_path / "sys" / "devices"
    aliases = {
        "pci0000:00/0000:00:03.0": VIRTIO_NET_PCI,
        "pci0000:00/0000:00:03.0/virtio0": VIRTIO_NET,
        "pci0000:00/0000:00:04.0": VIRTIO_BLK_PCI,
        "pci0000:00/0000:00:04.0/virtio1": VIRTIO_BLK,
        "pci0000:00/0000:00:05.0": VIRTIO_NET_PCI,
        "pci0000:00/0000:00:05.0/virtio2": VIRTIO_NET,
        "platform/i8042": "platform:i8042",
        "platform/empty": "",
        "platform/blank": "\n",
    }
    for rel, alias in aliases.items():
        (devices / rel).mkdir(parents=True, exist_ok=True)
        (devices / rel / "modalias").write_text(alias + "\n" if alias else alias)
    (devices / "system" / "cpu" / "cpu0").mkdir(parents=True)
    (devices / "system" / "cpu" / "cpu0" / "online").write_text("1\n")
    for rel in aliases:
        on_bus(tmp_path / "sys", devices / rel)
    return tmp_path / "sys"


def on_bus(sysfs: Path, device: Path) -> None:
    """The kernel's /sys/bus/<bus>/devices/<name> link to a device (pci, virtio or platform)."""
    name = device.name
    bus = (
        "virtio" if name.startswith("virtio") else "pci" if name.startswith("0000:") else "platform"
    )
    (sysfs / "bus" / bus / "devices").mkdir(parents=True, exist_ok=True)
    (sysfs / "bus" / bus / "devices" / name).symlink_to(device)


def test_device_modaliases_skips_empty_files(sysfs: Path) -> None:
    assert sorted(device_modaliases(sysfs)) == sorted(
        [
            VIRTIO_NET_PCI,
            VIRTIO_NET,
            VIRTIO_BLK_PCI,
            VIRTIO_BLK,
            VIRTIO_NET_PCI,
            VIRTIO_NET,
            "platform:i8042",
        ]
    )


def test_device_modaliases_of_a_missing_tree(tmp_path: Path) -> None:
    assert device_modaliases(tmp_path / "absent") == []


def test_coldplug_loads_each_matching_module_once(
    index: ModuleIndex, kernel: Kernel, sysfs: Path
) -> None:
    report = coldplug(index, sysfs)
    expected = {
        "virtio",
        "virtio_ring",
        "virtio_pci_modern_dev",
        "virtio_pci",
        "failover",
        "net_failover",
        "virtio_net",
        "virtio_blk",
    }
    assert report.failed == {}
    assert sorted(report.loaded) == sorted(expected)
    assert sorted(kernel.names()) == sorted(expected)
    inserted = kernel.names()
    for module in inserted:
        for dep in DEPS.get(module, []):
            assert inserted.index(dep) < inserted.index(module), (dep, module, inserted)


def test_coldplug_reports_a_module_the_kernel_refuses(
    index: ModuleIndex, kernel: Kernel, sysfs: Path
) -> None:
    kernel.refuse["virtio_blk"] = OSError(errno.ENOEXEC, "Exec format error")
    report = coldplug(index, sysfs)
    assert report.failed == {"virtio_blk": "virtio_blk.ko.xz: Exec format error"}
    assert "virtio_blk" not in report.loaded
    assert "virtio_net" in report.loaded


def test_coldplug_of_a_tree_with_nothing_to_load(
    index: ModuleIndex, kernel: Kernel, tmp_path: Path
) -> None:
    (tmp_path / "dev0").mkdir()
    (tmp_path / "dev0" / "modalias").write_text("platform:i8042\n")
    report = coldplug(index, tmp_path)
    assert report.loaded == []
    assert report.failed == {}
    assert kernel.images == []


# --- hotplug --------------------------------------------------------------------------------------


@dataclass
class FakeDevice:
    action: str | None
    properties: dict[str, str]


def hotplug(index: ModuleIndex) -> tuple[Hotplug, list[str]]:
    lines: list[str] = []
    watcher = Hotplug.__new__(Hotplug)
    watcher.index = index
    watcher.report = lines.append
    watcher.loaded = []
    return watcher, lines


def test_hotplug_loads_modules_for_an_added_device(index: ModuleIndex, kernel: Kernel) -> None:
    watcher, lines = hotplug(index)
    watcher._on_device(FakeDevice("add", {"MODALIAS": VIRTIO_BLK, "SUBSYSTEM": "virtio"}))
    assert watcher.loaded == ["virtio", "virtio_ring", "virtio_blk"]
    assert kernel.names() == ["virtio", "virtio_ring", "virtio_blk"]
    assert lines == [f"hotplug: loaded virtio, virtio_ring, virtio_blk for {VIRTIO_BLK}"]


def test_hotplug_ignores_other_actions(index: ModuleIndex, kernel: Kernel) -> None:
    watcher, lines = hotplug(index)
    for action in ("remove", "change", "bind", None):
        watcher._on_device(FakeDevice(action, {"MODALIAS": VIRTIO_BLK}))
    assert watcher.loaded == []
    assert lines == []
    assert kernel.images == []


def test_hotplug_ignores_devices_without_modalias(index: ModuleIndex, kernel: Kernel) -> None:
    watcher, lines = hotplug(index)
    watcher._on_device(FakeDevice("add", {"SUBSYSTEM": "block", "DEVNAME": "/dev/vda"}))
    watcher._on_device(FakeDevice("add", {"MODALIAS": ""}))
    watcher._on_device(object())
    assert lines == []
    assert kernel.images == []


def test_hotplug_of_a_device_no_module_matches(index: ModuleIndex, kernel: Kernel) -> None:
    watcher, lines = hotplug(index)
    watcher._on_device(FakeDevice("add", {"MODALIAS": "platform:i8042"}))
    assert lines == []
    assert watcher.loaded == []


def test_hotplug_says_nothing_when_everything_is_loaded(index: ModuleIndex, kernel: Kernel) -> None:
    watcher, lines = hotplug(index)
    watcher._on_device(FakeDevice("add", {"MODALIAS": VIRTIO_BLK}))
    watcher._on_device(FakeDevice("add", {"MODALIAS": VIRTIO_BLK}))
    assert len(lines) == 1
    assert watcher.loaded == ["virtio", "virtio_ring", "virtio_blk"]
    assert len(kernel.images) == 3


def test_hotplug_reports_failures(index: ModuleIndex, kernel: Kernel) -> None:
    kernel.refuse["virtio_net"] = OSError(errno.ENOEXEC, "Exec format error")
    watcher, lines = hotplug(index)
    watcher._on_device(FakeDevice("add", {"MODALIAS": VIRTIO_NET}))
    assert lines == [f"hotplug: virtio_net for {VIRTIO_NET}: virtio_net.ko.xz: Exec format error"]
    assert "virtio_net" not in watcher.loaded


def test_hotplug_reports_a_matched_module_missing_from_modules_dep(
    index: ModuleIndex, kernel: Kernel
) -> None:
    watcher, lines = hotplug(index)
    watcher._on_device(FakeDevice("add", {"MODALIAS": "virtio:d0000001Av00001AF4"}))
    assert lines == [
        "hotplug: virtiofs for virtio:d0000001Av00001AF4: "
        "module virtiofs does not exist for this kernel"
    ]
    assert watcher.loaded == []


def test_coldplug_looks_again_when_a_bus_driver_brings_devices(
    index: ModuleIndex, kernel: Kernel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The virtio devices only appear once virtio_pci is loaded: a second look finds them."""
    devices = tmp_path / "sys" / "devices"
    (devices / "0000:00:03.0").mkdir(parents=True)
    (devices / "0000:00:03.0" / "modalias").write_text(VIRTIO_NET_PCI + "\n")
    on_bus(tmp_path / "sys", devices / "0000:00:03.0")
    insert = kernel.init_module

    def probing_insert(image: bytes, params: str = "") -> None:
        insert(image, params)
        if image == elf("virtio_pci"):
            (devices / "0000:00:03.0" / "virtio0").mkdir()
            (devices / "0000:00:03.0" / "virtio0" / "modalias").write_text(VIRTIO_NET + "\n")
            on_bus(tmp_path / "sys", devices / "0000:00:03.0" / "virtio0")

    monkeypatch.setattr(kurmad.linux.syscalls, "init_module", probing_insert)
    report = coldplug(index, tmp_path / "sys")
    assert "virtio_pci" in report.loaded and "virtio_net" in report.loaded
    assert kernel.names().index("virtio_pci") < kernel.names().index("virtio_net")
