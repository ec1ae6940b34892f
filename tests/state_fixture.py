"""The state that kurmad's first layout left (tests/data/state-v1/, made by
tests/data/make_state_v1.py): copies of it to start on, and what the API says of a state."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict

from kurmad.client import Client
from kurmad.linux.files import read_json, write_json_atomic
from kurmad.linux.proc import start_time

from .conftest import DATA

STATE_V1 = DATA / "state-v1"


def restore_v1(target: Path) -> Path:
    """A copy of the v1 state at ``target`` (not there yet), with the empty directories and
    the modes that git does not keep, from layout.txt."""
    source = STATE_V1 / "state"
    lines = (STATE_V1 / "layout.txt").read_text().splitlines()
    entries = [line.split(" ", 2) for line in lines if not line.startswith("#")]
    listed = {path.split(" -> ")[0] for kind, _, path in entries if kind != "d"}
    present = {
        str(p.relative_to(source)) for p in source.rglob("*") if not p.is_dir() or p.is_symlink()
    }
    assert listed == present, f"{STATE_V1}: state/ and layout.txt disagree; run make_state_v1.py"
    for kind, _, path in entries:
        if kind == "d":
            (target / path).mkdir(parents=path == ".", exist_ok=path == ".")
        elif kind == "f":
            shutil.copyfile(source / path, target / path)
        else:
            name, link = path.split(" -> ")
            os.symlink(link, target / name)
    for kind, mode, path in reversed(entries):  # a directory's mode after what is in it
        if kind != "l":
            os.chmod(target / path, int(mode, 8))
    return target


def tree(root: Path) -> dict[str, tuple[int, bytes | str | None]]:
    """Every entry below ``root``: its mode and a file's content, a link's target (None for a
    directory), to compare one state with another."""
    found: dict[str, tuple[int, bytes | str | None]] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        content = (os.readlink(path) if path.is_symlink() else
                   path.read_bytes() if path.is_file() else None)  # fmt: skip
        found[str(path.relative_to(root))] = (info.st_mode, content)
    return found


def pod_record(state: Path, name: str) -> Path:
    """The pod.json of the pod called ``name``."""
    return next(p for p in (state / "pods").glob("*/pod.json") if read_json(p)["name"] == name)


@contextmanager
def pod_init_stand_in(state: Path, name: str) -> Iterator[subprocess.Popen[bytes]]:
    """A live process in the place of pod ``name``'s pod init, the one part of a running pod
    that cannot travel in a fixture: its record gets the process's PID and start time, as
    the pod init's were, for a daemon to adopt."""
    process = subprocess.Popen(["sleep", "300"])
    try:
        record_file = pod_record(state, name)
        record = read_json(record_file) | {"pid": process.pid, "pid_start": start_time(process.pid)}
        write_json_atomic(record_file, record, mode=0o600)
        yield process
    finally:
        process.kill()
        process.wait()


def api_view(kurma: Client) -> dict[str, Any]:
    """Every pod and image as the API shows them, and every app's log as "STREAM LINE"."""
    pods = [MessageToDict(p, preserving_proto_field_name=True) for p in kurma.pods()]
    logs = {
        f"{pod['name']}/{app['name']}": [
            f"{entry.stream} {entry.line.decode()}"
            for entry in kurma.logs(pod["uuid"], app=app["name"])
        ]
        for pod in pods
        for app in pod["apps"]
    }
    images = [MessageToDict(i, preserving_proto_field_name=True) for i in kurma.images()]
    return {"pods": pods, "images": images, "logs": logs}
