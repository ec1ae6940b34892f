"""A busybox image for executor tests: every applet, users and groups, a few test files."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path
from typing import Any

from kurmad.images.store import ImageRecord, ImageStore

from .tarcraft import Entry, aci, directory, file, image_manifest, symlink

PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1234:2345:app user:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nappgroup:x:2345:\nextra:x:3456:app\nnogroup:x:65534:\n"


def busybox_path() -> str | None:
    return shutil.which("busybox")


def busybox_entries() -> list[Entry]:
    path = busybox_path()
    assert path is not None
    applets = subprocess.run(
        [path, "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    entries = [directory("bin"), directory("etc"), directory("tmp", 0o1777), directory("home"),
               directory("home/app"), file("bin/busybox", Path(path).read_bytes(), 0o755),
               file("etc/passwd", PASSWD), file("etc/group", GROUP), file("etc/owned-by-app", "x")]  # fmt: skip
    entries += [symlink(f"bin/{applet}", "busybox") for applet in applets if applet != "busybox"]
    return entries


def import_busybox(store: ImageStore, name: str = "example.com/busybox", app: dict[str, Any] | None = None,
                   extra: list[Entry] | None = None) -> ImageRecord:  # fmt: skip
    manifest = image_manifest(name)
    manifest["app"] = app or {"exec": ["/bin/sh"], "user": "0", "group": "0"}
    return store.import_stream(io.BytesIO(aci(manifest, busybox_entries() + (extra or [])))).record


def write_busybox_aci(path: Path, exec_: list[str], name: str = "example.com/busybox",
                      version: str = "1.35.0") -> Path:  # fmt: skip
    """The busybox image as an ACI file (gzip), its app running ``exec_`` as root."""
    manifest = image_manifest(name, version)
    manifest["app"] = {"exec": exec_, "user": "0", "group": "0"}
    path.write_bytes(aci(manifest, busybox_entries(), "gzip"))
    return path
