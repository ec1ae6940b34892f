"""From kurmad's objects to the wire's messages."""

from __future__ import annotations

import json

from kurmad.host.info import HostInfo
from kurmad.images.oci import convert as oci
from kurmad.images.store import ImageRecord
from kurmad.net.plan import NetworkPlan
from kurmad.pods.events import Event
from kurmad.pods.model import AppStatus, Pod, PodState

from .v1 import kurma_pb2 as pb

POD_STATES = {
    PodState.NEW: pb.POD_STATE_NEW,
    PodState.STARTING: pb.POD_STATE_STARTING,
    PodState.RUNNING: pb.POD_STATE_RUNNING,
    PodState.EXITED: pb.POD_STATE_EXITED,
    PodState.STOPPED: pb.POD_STATE_STOPPED,
    PodState.FAILED: pb.POD_STATE_FAILED,
}


def app_status(app: AppStatus) -> pb.AppStatus:
    report = app.isolators
    message = pb.AppStatus(
        name=app.name,
        image_id=app.image_id,
        state=app.state.value,
        signal=app.signal or "",
        reason=app.reason or "",
        started_at=app.started_at or 0.0,
        finished_at=app.finished_at or 0.0,
        warnings=app.warnings,
        isolators=pb.IsolatorReport(
            enforced=report.enforced,
            ignored=[pb.IgnoredIsolator(name=i.name, reason=i.reason) for i in report.ignored],
        ),
    )
    if app.exit_code is not None:
        message.exit_code = app.exit_code
    return message


def pod(value: Pod) -> pb.Pod:
    plan = value.network or NetworkPlan()
    return pb.Pod(
        uuid=value.uuid,
        name=value.name,
        state=POD_STATES[value.state],
        reason=value.reason or "",
        created_at=value.created_at,
        started_at=value.started_at or 0.0,
        finished_at=value.finished_at or 0.0,
        stopping=value.stopping,
        apps=[app_status(a) for a in value.apps],
        manifest_json=value.manifest_json or json.dumps(value.manifest.to_json()),
        networks=[pb.PodNetwork(name=n.name, interface=n.ifname, address=n.address, gateway=n.gateway)
                  for n in plan.networks],
        ports=[pb.PortMapping(host_port=p.host_port, port=p.port, protocol=p.protocol) for p in plan.ports],
    )  # fmt: skip


def image(record: ImageRecord, used_by: list[str], size: int | None = None) -> pb.Image:
    """``size``: with the layers it depends on (ImageStore.total_size), if known."""
    annotations = record.manifest.annotations
    return pb.Image(
        id=record.id,
        name=record.name,
        labels=dict(record.labels),
        size=record.size if size is None else size,
        imported_at=record.imported_at,
        manifest_json=record.manifest.dumps(),
        used_by=used_by,
        reference=annotations.get(oci.REFERENCE, ""),
        oci_digest=annotations.get(oci.CONFIG_DIGEST, ""),
        manifest_digest=annotations.get(oci.MANIFEST_DIGEST, ""),
        layers=len(record.manifest.dependencies) if oci.CONFIG_DIGEST in annotations else 0,
    )


def host_info(info: HostInfo, pods: int, images: int, quarantined: list[str]) -> pb.HostInfo:
    return pb.HostInfo(
        quarantined=quarantined,
        hostname=info.hostname,
        kernel=info.kernel,
        cpus=info.cpus,
        memory_total=info.memory_total,
        memory_available=info.memory_available,
        uptime_seconds=info.uptime,
        kurmad_version=info.kurmad_version,
        python_version=info.python_version,
        mode=info.mode,
        os=info.os,
        arch=info.arch,
        time=info.time,
        pods=pods,
        images=images,
        boot_stages=[
            pb.BootStage(
                name=s.name,
                started_at=s.started_at,
                duration_seconds=s.duration,
                ok=s.ok,
                error=s.error,
                critical=s.critical,
                detail=s.detail,
            )
            for s in info.boot_stages
        ],
    )


def event(value: Event) -> pb.Event:
    return pb.Event(time=value.time, kind=value.kind, action=value.action, id=value.id, name=value.name,
                    details=value.details)  # fmt: skip
