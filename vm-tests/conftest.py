"""vm-tests: the initramfs that ``make initramfs`` built, booted in QEMU (TCG)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator

import pytest
from vmkit import INITRAMFS, Booted

from initrd.vm import QEMU


def missing_prerequisite() -> str | None:
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed (apt-get install qemu-system-x86)"
    if not INITRAMFS.exists():
        return f"{INITRAMFS} is not built (make initramfs)"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = missing_prerequisite()
    if reason is not None:
        for item in items:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="module")
def vm_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Booted]]:
    """Every VM a module boots is killed at its end, whatever happened; the console is kept
    next to the test's temporary files (printed path) for a post-mortem."""
    booted: list[Booted] = []
    yield booted
    for one in booted:
        one.vm.kill()
        if os.environ.get("KURMAD_VM_CONSOLE"):
            sys.stderr.write(one.vm.console_text()[-5000:])
