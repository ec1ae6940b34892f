"""kurmactl's output: tables for people, JSON and YAML for scripts."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from kurmad.api.v1 import kurma_pb2 as pb

if TYPE_CHECKING:
    from kurmad.client import Client

Shown = TypeVar("Shown", bound="Message | Sequence[Message]")  # what a table prints

STATE_NAMES = {value: name.removeprefix("POD_STATE_") for name, value in pb.PodState.items()}


def as_dict(message: Message) -> dict[str, Any]:
    """A message as plain data; embedded manifests as objects, not strings."""
    data = MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return _expand_manifests(data)


def _expand_manifests(value: Any) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "manifest_json" and isinstance(item, str) and item:
                out["manifest"] = json.loads(item)
            else:
                out[key] = _expand_manifests(item)
        return out
    if isinstance(value, list):
        return [_expand_manifests(v) for v in value]
    return value


def emit(data: Any, fmt: str) -> None:
    if fmt == "json":
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        import yaml  # imported for YAML output only

        yaml.safe_dump(data, sys.stdout, sort_keys=False)


def present(data: Shown, fmt: str, as_table: Callable[[Shown], None]) -> None:
    """A message, or a list of them: printed by ``as_table`` for people, else as JSON or YAML."""
    if fmt == "table":
        as_table(data)
    else:
        emit(as_dict(data) if isinstance(data, Message) else [as_dict(m) for m in data], fmt)


def read_and_present(
    args: argparse.Namespace, read: Callable[[Client], Shown], as_table: Callable[[Shown], None]
) -> int:
    """The verbs that read one thing from kurmad and show it: ``read`` it, ``present`` it."""
    from .connection import client

    with client(args) as kurma:
        data = read(kurma)
    present(data, args.output, as_table)
    return 0


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = (
        [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=False)]
        if rows
        else [len(h) for h in headers]
    )
    for row in [headers, *rows]:
        sys.stdout.write(
            "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip() + "\n"
        )


def ago(timestamp: float) -> str:
    if not timestamp:
        return "-"
    seconds = max(0, int(time.time() - timestamp))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def size(value: int) -> str:
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return str(value)


def app_summary(app: pb.AppStatus) -> str:
    detail = app.state
    if app.HasField("exit_code") and app.state in ("exited", "failed"):
        detail += f"({app.exit_code})"
    return f"{app.name}:{detail}"


def pods_table(pods: Sequence[pb.Pod]) -> None:
    rows = [[p.name, p.uuid[:8], STATE_NAMES[p.state] + (" (stopping)" if p.stopping else ""),
             " ".join(app_summary(a) for a in p.apps), ago(p.created_at)] for p in pods]  # fmt: skip
    table(["NAME", "UUID", "STATE", "APPS", "CREATED"], rows)


def show_pod(pod: pb.Pod) -> None:
    lines = [
        f"name:      {pod.name}",
        f"uuid:      {pod.uuid}",
        f"state:     {STATE_NAMES[pod.state]}",
    ]
    if pod.reason:
        lines.append(f"reason:    {pod.reason}")
    lines.append(f"created:   {ago(pod.created_at)}")
    for app in pod.apps:
        lines.append(f"app {app.name}:")
        lines.append(f"  image:   {app.image_id[:19]}")
        lines.append(
            f"  state:   {app.state}"
            + (f", exit code {app.exit_code}" if app.HasField("exit_code") else "")
        )
        if app.signal:
            lines.append(f"  signal:  {app.signal}")
        if app.reason:
            lines.append(f"  reason:  {app.reason}")
        for warning in app.warnings:
            lines.append(f"  warning: {warning}")
        for ignored in app.isolators.ignored:
            lines.append(f"  isolator {ignored.name} ignored: {ignored.reason}")
    sys.stdout.write("\n".join(lines) + "\n")


def images_table(images: Sequence[pb.Image]) -> None:
    rows = [[i.id[:19], _shown_name(i), i.labels.get("version", "-"), i.oci_digest[:19] or "-",
             size(i.size), ago(i.imported_at), ",".join(i.used_by) or "-"] for i in images]  # fmt: skip
    table(["ID", "NAME", "VERSION", "DIGEST", "SIZE", "IMPORTED", "USED BY"], rows)


def _shown_name(image: pb.Image) -> str:
    """An OCI image by its repository as the user typed it, an ACI by its appc name."""
    if not image.reference:
        return image.name
    name = image.reference.split("@")[0]
    colon = name.rfind(":")
    return name[:colon] if colon > name.rfind("/") else name


def host_info(info: pb.HostInfo) -> None:
    lines = [f"hostname:  {info.hostname}", f"mode:      {info.mode}", f"kernel:    {info.kernel}",
             f"platform:  {info.os}/{info.arch}", f"cpus:      {info.cpus}",
             f"memory:    {size(info.memory_available)} free of {size(info.memory_total)}",
             f"uptime:    {info.uptime_seconds:.0f}s", f"kurmad:    {info.kurmad_version} (python {info.python_version})",
             f"pods:      {info.pods}", f"images:    {info.images}"]  # fmt: skip
    lines += [f"quarantined pod: {why}" for why in info.quarantined]
    sys.stdout.write("\n".join(lines) + "\n")
    if info.boot_stages:
        sys.stdout.write("boot stages:\n")
        table(["  STAGE", "RESULT", "MS", "DETAIL"],
              [["  " + s.name, "ok" if s.ok else "FAILED", f"{s.duration_seconds * 1000:.0f}", s.error or s.detail] for s in info.boot_stages])  # fmt: skip
