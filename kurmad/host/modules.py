"""Kernel modules without modprobe: dependencies from modules.dep, hardware from modules.alias.

Coldplug reads every device's ``modalias`` under /sys at boot and loads what the aliases match;
hotplug keeps a pyudev monitor on kernel uevents and does the same for devices that appear
later."""

from __future__ import annotations

import fnmatch
import lzma
import os
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from kurmad.linux import syscalls


class ModuleError(Exception):
    """A module could not be loaded; ``loaded`` names the dependencies that were, before."""

    def __init__(self, message: str, loaded: list[str] | None = None) -> None:
        super().__init__(message)
        self.loaded = loaded or []


def normalise(name: str) -> str:
    """Module names treat '-' and '_' alike; the kernel reports '_'."""
    return name.replace("-", "_")


def _module_name(path: str) -> str:
    base = os.path.basename(path)
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(suffix):
            return normalise(base[: -len(suffix)])
    return normalise(base)


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


class ModuleIndex:
    """The modules of one kernel (``/lib/modules/<release>``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.paths: dict[str, str] = {}
        self.deps: dict[str, list[str]] = {}
        self.builtin: set[str] = set()
        self.aliases: list[tuple[re.Pattern[str], str]] = []
        self._lock = threading.Lock()
        self._parse_dep()
        self._parse_alias()
        self._parse_builtin()

    @classmethod
    def for_running_kernel(cls, base: Path = Path("/lib/modules")) -> ModuleIndex:
        root = base / os.uname().release
        if not (root / "modules.dep").exists():
            raise ModuleError(
                f"no modules for kernel {os.uname().release} ({root}/modules.dep is missing)"
            )
        return cls(root)

    def _parse_dep(self) -> None:
        for line in (self.root / "modules.dep").read_text().splitlines():
            target, _, deps = line.partition(":")
            if not target:
                continue
            name = _module_name(target)
            self.paths[name] = target
            self.deps[name] = [_module_name(d) for d in deps.split()]

    def _parse_alias(self) -> None:
        path = self.root / "modules.alias"
        if not path.exists():
            return
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "alias":
                self.aliases.append((re.compile(fnmatch.translate(parts[1])), normalise(parts[2])))

    def _parse_builtin(self) -> None:
        path = self.root / "modules.builtin"
        if path.exists():
            self.builtin = {_module_name(line) for line in path.read_text().split()}

    def match(self, modalias: str) -> list[str]:
        """The modules whose aliases match a device's modalias."""
        found = []
        for pattern, module in self.aliases:
            if pattern.match(modalias) and module not in found:
                found.append(module)
        return found

    def order(self, name: str) -> list[str]:
        """``name`` and its dependencies, dependencies first."""
        ordered: list[str] = []

        def visit(module: str, seen: tuple[str, ...]) -> None:
            if module in ordered or module in seen:
                return
            for dep in self.deps.get(module, []):
                visit(dep, (*seen, module))
            ordered.append(module)

        visit(normalise(name), ())
        return ordered

    def load(self, name: str, is_loaded: Callable[[str], bool] | None = None) -> list[str]:
        """Load ``name`` with its dependencies; return the ones newly loaded."""
        loaded_now: list[str] = []
        check = is_loaded or loaded
        with self._lock:
            for module in self.order(name):
                if module in self.builtin or check(module):
                    continue
                if module not in self.paths:
                    raise ModuleError(f"module {module} does not exist for this kernel", loaded_now)
                try:
                    _insert(self.root / self.paths[module])
                except ModuleError as err:
                    raise ModuleError(str(err), loaded_now) from None
                loaded_now.append(module)
        return loaded_now

    def load_all(self, names: Iterable[str]) -> LoadReport:
        report = LoadReport()
        for name in names:
            try:
                report.loaded.extend(self.load(name))
            except ModuleError as err:
                report.loaded.extend(err.loaded)
                report.failed[normalise(name)] = str(err)
            except OSError as err:
                report.failed[normalise(name)] = str(err)
        return report


def loaded(name: str) -> bool:
    return Path("/sys/module", normalise(name)).exists()


def _insert(path: Path) -> None:
    """Insert a module file (xz- and zstd-compressed ones decompressed here)."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        data = lzma.decompress(data)
    elif path.name.endswith(".zst"):
        data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    try:
        syscalls.init_module(data)
    except FileExistsError:
        return  # loaded meanwhile
    except OSError as err:
        raise ModuleError(f"{path.name}: {err.strerror}") from None


def device_modaliases(sysfs: Path = Path("/sys")) -> list[str]:
    """The modalias of every device on every bus, as udev's coldplug finds them: through
    /sys/bus/*/devices, not by walking all of /sys/devices (ten times slower, and it counts)."""
    found = []
    for bus in sorted((sysfs / "bus").glob("*/devices")):
        for device in sorted(bus.iterdir()):
            try:
                alias = (device / "modalias").read_text().strip()
            except OSError:
                continue
            if alias:
                found.append(alias)
    return found


def coldplug(index: ModuleIndex, sysfs: Path = Path("/sys"), rounds: int = 5) -> LoadReport:
    """Load the drivers of every device present. Loading a bus driver (virtio_pci) makes the
    devices on that bus appear, so look again until nothing new turns up."""
    report = LoadReport()
    seen_aliases: set[str] = set()
    tried: set[str] = set()
    for _ in range(rounds):
        aliases = [a for a in device_modaliases(sysfs) if a not in seen_aliases]
        seen_aliases.update(aliases)
        wanted = []
        for alias in aliases:
            wanted += [m for m in index.match(alias) if m not in tried and m not in wanted]
        if not wanted:
            break
        tried.update(wanted)
        found = index.load_all(wanted)
        report.loaded += found.loaded
        report.failed.update(found.failed)
    return report


class Hotplug:
    """Loads modules for devices that appear after boot, from kernel uevents."""

    def __init__(self, index: ModuleIndex, report: Callable[[str], None]) -> None:
        import pyudev

        self.index = index
        self.report = report
        self.loaded: list[str] = []
        context = pyudev.Context()
        self.monitor = pyudev.Monitor.from_netlink(context, source="kernel")
        self.observer = pyudev.MonitorObserver(
            self.monitor, callback=self._on_device, name="hotplug"
        )

    def start(self) -> None:
        self.observer.start()

    def stop(self) -> None:
        self.observer.send_stop()

    def _on_device(self, device: object) -> None:
        action = getattr(device, "action", None)
        modalias = getattr(device, "properties", {}).get("MODALIAS")
        if action != "add" or not modalias:
            return
        for module in self.index.match(modalias):
            try:
                new = self.index.load(module)
            except ModuleError as err:
                self.loaded.extend(err.loaded)
                self.report(f"hotplug: {module} for {modalias}: {err}")
                continue
            except OSError as err:
                self.report(f"hotplug: {module} for {modalias}: {err}")
                continue
            if new:
                self.loaded.extend(new)
                self.report(f"hotplug: loaded {', '.join(new)} for {modalias}")
