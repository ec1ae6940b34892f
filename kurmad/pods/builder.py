"""From a pod manifest to what the executor runs: images resolved against the store (a
template is reified), every mount point backed by a volume, isolators translated, the
environment merged. Everything a person could get wrong is caught here, before anything runs."""

from __future__ import annotations

import itertools
import os
import signal
import stat
from dataclasses import dataclass, field, replace

from kurmad.appc import (
    ACName,
    Annotations,
    App,
    ExposedPort,
    ImageID,
    Isolator,
    Mount,
    MountPoint,
    PodManifest,
    Port,
    RuntimeApp,
    RuntimeImage,
    Volume,
    sanitize_ac_name,
)
from kurmad.appc.environment import DEFAULT_PATH
from kurmad.appc.volumes import KIND_EMPTY, KIND_HOST
from kurmad.images.oci.convert import GROUP_FROM_USER, STOP_SIGNAL
from kurmad.images.oci.pull import find_by_reference
from kurmad.images.render import RenderError, layer_ids, lower_dirs
from kurmad.images.store import ImageNotFound, ImageRecord, ImageStore, StoreError
from kurmad.net.ports import PortRequest
from kurmad.runtime.isolators import (
    API_SOCKET_ISOLATOR,
    DEVICES_ISOLATOR,
    AppPolicy,
    Found,
    IsolatorError,
    Report,
    app_policy,
    limits_of,
    sysctls_of,
)
from kurmad.runtime.layout import PodDir
from kurmad.runtime.spec import AppSpec, Limits, MountSpec, SocketSpec

from .model import InvalidPod

# An app annotation (aci.md: annotations MAY affect the executor) asking for a terminal.
TTY_ANNOTATION = "kurmad.io/tty"
# An app annotation (and, for an OCI image whose User names no group, an image one): run as
# the user's own group from the image's /etc/passwd (the app's group when the user has no
# entry there), as Docker runs ``-u USER``; appc needs a group, so the app's stays the
# fallback, and what another executor would use.
GROUP_FROM_USER_ANNOTATION = GROUP_FROM_USER
# A pod annotation: the pod shares the host's network namespace (system pods such as ntp).
HOST_NETWORK_ANNOTATION = "kurmad.io/host-network"
# A pod annotation: the pod networks it joins, comma-separated, or "none" (loopback only);
# without it, the host's default network.
NETWORKS_ANNOTATION = "kurmad.io/networks"

EXECUTOR_NAME = "kurmad"


@dataclass(frozen=True)
class AppMount:
    path: str
    volume: Volume
    read_only: bool


@dataclass(frozen=True)
class ResolvedApp:
    runtime: RuntimeApp  # as in the reified manifest
    image: ImageRecord
    app: App  # the effective app: the pod's override or the image's
    policy: AppPolicy
    mounts: list[AppMount]


@dataclass(frozen=True)
class ResolvedPod:
    manifest: PodManifest  # reified: every image by ID
    apps: list[ResolvedApp]
    limits: Limits
    sysctls: dict[str, str]
    report: Report
    host_network: bool = False
    networks: str | None = None  # the annotation's value; None: the default network
    ports: list[PortRequest] = field(default_factory=list)  # published on the host

    @property
    def image_ids(self) -> set[ImageID]:
        return {a.image.id for a in self.apps}


def resolve_pod(manifest: PodManifest, store: ImageStore) -> ResolvedPod:
    """Check ``manifest`` against the store and the spec's rules; raise InvalidPod naming the
    app and field at fault."""
    if not manifest.apps:
        raise InvalidPod("the pod has no apps")
    report = Report()
    try:
        pod_isolators = Found(manifest.isolators)
        limits = limits_of(pod_isolators, report)
        sysctls = sysctls_of(pod_isolators, report)
    except IsolatorError as err:
        raise InvalidPod(f"isolators: {err}") from None
    apps = [_resolve_app(manifest, runtime, store, pod_isolators) for runtime in manifest.apps]
    for app in apps:
        sysctls.update(app.policy.sysctls)
    host_network = _host_network(manifest)
    networks = manifest.annotations.get(NETWORKS_ANNOTATION)
    if host_network and networks not in (None, "host"):
        raise InvalidPod(
            f"annotations: {HOST_NETWORK_ANNOTATION} and {NETWORKS_ANNOTATION}={networks} contradict"
        )
    ports = _published_ports(manifest, apps)
    reified = replace(manifest, apps=tuple(a.runtime for a in apps))
    return ResolvedPod(
        reified, apps, limits, sysctls, report, host_network or networks == "host", networks, ports
    )


def _published_ports(manifest: PodManifest, apps: list[ResolvedApp]) -> list[PortRequest]:
    """The pod's ``ports`` (name → host port) joined with the apps' ports of those names."""
    declared = {port.name: port for app in apps for port in app.app.ports}
    published = []
    for i, exposed in enumerate(manifest.ports):
        port = exposed.pod_port or declared.get(exposed.name)
        if port is None:
            raise InvalidPod(f"ports[{i}]: no app has a port named {exposed.name}")
        if port.protocol not in ("tcp", "udp"):
            raise InvalidPod(
                f"ports[{i}]: protocol {port.protocol!r} of port {exposed.name} is not tcp or udp"
            )
        published.append(PortRequest(port.protocol, exposed.host_port, port.port))
    keys = [p.key for p in published]
    if len(set(keys)) != len(keys):
        raise InvalidPod(f"ports: a host port is published twice ({', '.join(sorted(keys))})")
    return published


def _host_network(manifest: PodManifest) -> bool:
    value = manifest.annotations.get(HOST_NETWORK_ANNOTATION)
    if value not in (None, "true", "false"):
        raise InvalidPod(
            f"annotations: {HOST_NETWORK_ANNOTATION} must be true or false, not {value!r}"
        )
    return value == "true"


def _resolve_app(
    manifest: PodManifest, runtime: RuntimeApp, store: ImageStore, pod_isolators: Found
) -> ResolvedApp:
    where = f"app {runtime.name}"
    image = _find_image(runtime, store, where)
    app = runtime.app or image.manifest.app
    if app is None:
        raise InvalidPod(
            f"{where}: the image {image.name} has no app section and the pod gives none"
        )
    if not app.exec:
        raise InvalidPod(
            f"{where}: nothing to run (no exec in the image {image.name} or in the pod)"
        )
    _check_no_nul(app, where)
    try:
        policy = app_policy(app.isolators, pod_isolators)
    except IsolatorError as err:
        raise InvalidPod(f"{where}: {err}") from None
    mounts = _mounts(manifest, runtime, app, where)
    reified = replace(
        runtime,
        image=replace(runtime.image, id=image.id, name=runtime.image.name or image.manifest.name),
    )
    return ResolvedApp(reified, image, app, policy, mounts)


def _check_no_nul(app: App, where: str) -> None:
    """The kernel takes C strings: a NUL in a command, a variable or a path would cut it
    short (or fail the exec after the pod is made); refused here instead."""
    handlers = [(f"eventHandlers.{h.name}.exec", list(h.exec)) for h in app.event_handlers]
    fields: list[tuple[str, list[str]]] = [
        ("exec", list(app.exec)), *handlers, ("user", [app.user]), ("group", [app.group]),
        ("workingDirectory", [app.working_directory]),
        ("environment", [f"{k}={v}" for k, v in app.environment.items()]),
        ("mountPoints", [m.path for m in app.mount_points]),
    ]  # fmt: skip
    for name, values in fields:
        if any("\0" in value for value in values):
            raise InvalidPod(f"{where}: {name} holds a NUL character")


def _find_image(runtime: RuntimeApp, store: ImageStore, where: str) -> ImageRecord:
    wanted = runtime.image
    try:
        image = (
            store.get(wanted.id)
            if wanted.id is not None
            else store.find(wanted.name or "", wanted.labels)
        )
    except ImageNotFound:
        what = wanted.id or ",".join(
            [wanted.name or "?", *(f"{k}={v}" for k, v in wanted.labels.items())]
        )
        raise InvalidPod(f"{where}: image {what} is not in the store (import it first)") from None
    except StoreError as err:
        raise InvalidPod(f"{where}: {err}") from None
    if wanted.name is not None and wanted.name != image.name:
        raise InvalidPod(f"{where}: image {image.id} is {image.name}, not {wanted.name}")
    return image


def _mounts(manifest: PodManifest, runtime: RuntimeApp, app: App, where: str) -> list[AppMount]:
    mounts: list[AppMount] = []
    covered: set[str] = set()
    for mount in runtime.mounts:
        volume = mount.app_volume or (manifest.volume(mount.volume) if mount.volume else None)
        if volume is None:
            name = mount.volume or "(none)"
            raise InvalidPod(
                f"{where}: the mount on {mount.path} names volume {name}, which the pod does not declare"
            )
        point = _mount_point_at(app, mount.path)
        mounts.append(
            AppMount(
                mount.path, volume, volume.read_only is True or bool(point and point.read_only)
            )
        )
        covered.add(mount.path)
    for point in app.mount_points:
        if point.path in covered:
            continue
        volume = manifest.volume(point.name)
        if volume is None:
            raise InvalidPod(
                f"{where}: mount point {point.name} ({point.path}) has no volume; "
                f"declare a volume named {point.name} or a mount on {point.path}"
            )
        mounts.append(AppMount(point.path, volume, volume.read_only is True or point.read_only))
    _check_targets(mounts, where)
    for planned in mounts:
        if planned.volume.kind == KIND_HOST:
            _check_host_source(planned.volume, where)
        elif planned.volume.effective_mode > 0o777:
            raise InvalidPod(
                f"{where}: volume {planned.volume.name}: mode {planned.volume.mode} is more "
                "than 0777 (setuid, setgid and sticky bits are not for volumes)"
            )
    return mounts


def _mount_point_at(app: App, path: str) -> MountPoint | None:
    return next((p for p in app.mount_points if p.path == path), None)


def _check_targets(mounts: list[AppMount], where: str) -> None:
    """ace.md: overlapping or nested mount targets are an error."""
    if any("\0" in m.path for m in mounts):
        raise InvalidPod(f"{where}: a mount path holds a NUL character")
    paths = sorted(os.path.normpath("/" + m.path) for m in mounts)
    for path in paths:
        if not path.startswith("/") or path == "/":
            raise InvalidPod(f"{where}: cannot mount a volume on {path}")
    for first, second in itertools.pairwise(paths):
        if second == first or second.startswith(first.rstrip("/") + "/"):
            raise InvalidPod(f"{where}: mount paths {first} and {second} overlap")


def _check_host_source(volume: Volume, where: str) -> None:
    """ace.md: a missing source is an error, and so is a symlink on the way to it."""
    assert volume.source is not None
    if "\0" in volume.source:
        raise InvalidPod(f"{where}: volume {volume.name}: the host path holds a NUL character")
    current = "/"
    for part in [p for p in volume.source.split("/") if p]:
        current = os.path.join(current, part)
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            raise InvalidPod(
                f"{where}: volume {volume.name}: host path {volume.source} does not exist"
            ) from None
        if stat.S_ISLNK(info.st_mode):
            raise InvalidPod(
                f"{where}: volume {volume.name}: {current} is a symlink; give the real path"
            )


# --- at start: the runtime spec ---------------------------------------------------------------------


def app_spec(
    resolved: ResolvedApp, store: ImageStore, pod_dir: PodDir, api_socket: str | None = None
) -> AppSpec:
    """What the executor needs to run one app (renders its image now); ``api_socket`` is the
    host's API socket, for an app that asked for it (kurmad.io/api-socket)."""
    app = resolved.app
    try:
        lowers = lower_dirs(store, resolved.image)
    except RenderError as err:
        raise InvalidPod(f"app {resolved.runtime.name}: {err}") from None
    handler = {h.name: list(h.exec) for h in app.event_handlers}
    policy = resolved.policy
    return AppSpec(
        name=resolved.runtime.name,
        image_id=resolved.image.id,
        lowers=[str(p) for p in lowers],
        exec=list(app.exec),
        env=environment(resolved.runtime.name, app),
        user=app.user,
        group=app.group,
        supplementary_gids=list(app.supplementary_gids),
        working_directory=app.working_directory or "/",
        pre_start=handler.get("pre-start") or None,
        post_stop=handler.get("post-stop") or None,
        mounts=[_mount_spec(m, pod_dir) for m in resolved.mounts]
        + _api_socket_mount(policy.api_socket, api_socket),
        read_only_rootfs=resolved.runtime.read_only_root_fs,
        capabilities=policy.capabilities,
        no_new_privileges=policy.no_new_privileges,
        seccomp=policy.seccomp,
        oom_score_adj=policy.oom_score_adj,
        apparmor_profile=policy.apparmor_profile,
        selinux_context=policy.selinux_context,
        sockets=[
            SocketSpec(p.name, p.protocol, p.port, p.count) for p in app.ports if p.socket_activated
        ],
        limits=policy.limits,
        tty=resolved.runtime.annotations.get(TTY_ANNOTATION) == "true",
        group_from_user=_group_from_user(resolved),
        devices=list(policy.devices),
        stop_signal=_stop_signal(resolved),
    )


def _group_from_user(resolved: ResolvedApp) -> bool:
    """Asked by the pod's app, or by the image when the pod takes the image's app as it is."""
    if resolved.runtime.annotations.get(GROUP_FROM_USER_ANNOTATION) == "true":
        return True
    image_says = resolved.image.manifest.annotations.get(GROUP_FROM_USER_ANNOTATION) == "true"
    return resolved.runtime.app is None and image_says


def _stop_signal(resolved: ResolvedApp) -> int:
    """An OCI image's StopSignal (``SIGQUIT``, ``QUIT`` or ``3``), else SIGTERM."""
    text = resolved.image.manifest.annotations.get(STOP_SIGNAL, "")
    if not text:
        return int(signal.SIGTERM)
    try:
        if text.isdigit():
            return int(signal.Signals(int(text)))
        name = text.upper()
        return int(signal.Signals[name if name.startswith("SIG") else "SIG" + name])
    except (KeyError, ValueError):
        raise InvalidPod(
            f"app {resolved.runtime.name}: the image's stop signal {text!r} is no signal"
        ) from None


def _api_socket_mount(target: str | None, socket_path: str | None) -> list[MountSpec]:
    if target is None:
        return []
    if socket_path is None:
        raise InvalidPod(f"{API_SOCKET_ISOLATOR}: this kurmad has no API socket to give")
    return [MountSpec(socket_path, target, read_only=False, recursive=False)]


def environment(app_name: str, app: App) -> dict[str, str]:
    """ace.md: PATH (the app may set its own), the app's environment, then the variables the
    executor must set, which the app cannot override."""
    env = {"PATH": DEFAULT_PATH}
    env.update(app.environment)
    env["AC_APP_NAME"] = app_name
    env["container"] = EXECUTOR_NAME
    return env


def _mount_spec(mount: AppMount, pod_dir: PodDir) -> MountSpec:
    volume = mount.volume
    source = volume.source if volume.kind == KIND_HOST else str(pod_dir.volume(volume.name))
    assert source is not None
    return MountSpec(source, mount.path, mount.read_only, volume.effective_recursive)


def held_images(resolved: ResolvedPod, store: ImageStore) -> set[ImageID]:
    """Every image the pod reads, dependencies included: held while the pod exists."""
    held: set[ImageID] = set()
    for app in resolved.apps:
        try:
            held.update(layer_ids(store, app.image))
        except RenderError as err:
            raise InvalidPod(f"app {app.runtime.name}: {err}") from None
    return held


# --- kurmactl run: a pod of one app from an image -------------------------------------------------


@dataclass(frozen=True)
class RunRequest:
    image: str
    exec: list[str]
    env: dict[str, str]
    volumes: list[tuple[str, str, bool]]  # host path, app path, read-only
    working_directory: str = ""
    user: str = ""
    group: str = ""
    tty: bool = False
    app_name: str = ""
    host_network: bool = False
    networks: str = ""  # comma-separated names, "none" or "host"; empty: the default
    ports: list[tuple[int, int, str]] = field(default_factory=list)  # host port, port, tcp|udp
    devices: list[str] = field(default_factory=list)  # host device nodes (kurmad.io/devices)


def manifest_for_run(store: ImageStore, run: RunRequest) -> PodManifest:
    """The pod manifest ``kurmactl run`` means: the image's app, with the command, the
    environment, the user and the volumes given on the command line."""
    try:
        image = find_by_reference(store, run.image) or store.lookup(run.image)
    except ImageNotFound:
        raise InvalidPod(
            f"image {run.image} is not in the store (pull or import it first)"
        ) from None
    except StoreError as err:
        raise InvalidPod(f"image {run.image}: {err}") from None
    base = image.manifest.app
    if base is None and not run.exec:
        raise InvalidPod(f"image {image.name} has no app to run; give a command")
    app = base or App(user="0", group="0")
    app = replace(
        app,
        exec=tuple(run.exec) or app.exec,
        environment=app.environment.merged(run.env),
        working_directory=run.working_directory or app.working_directory,
        user=run.user or app.user,
        group=run.group or app.group,
        isolators=app.isolators + _device_isolators(run.devices),
    )
    name = run.app_name or sanitize_ac_name(image.name.rsplit("/", 1)[-1])
    volumes = [Volume(ACName(f"volume-{i}"), KIND_HOST, source=host, read_only=read_only or None)
               for i, (host, _, read_only) in enumerate(run.volumes)]  # fmt: skip
    given = {path for _, path, _ in run.volumes}
    # An image's mount points (an OCI image's Volumes) not given a host path: empty volumes.
    volumes += [
        Volume(point.name, KIND_EMPTY) for point in app.mount_points if point.path not in given
    ]
    mounts = tuple(
        Mount(path=path, volume=volume.name)
        for volume, (_, path, _) in zip(volumes[: len(run.volumes)], run.volumes, strict=True)
    )
    wanted = {TTY_ANNOTATION: "true"} if run.tty else {}
    image_own_group = image.manifest.annotations.get(GROUP_FROM_USER_ANNOTATION) == "true"
    if (run.user or image_own_group) and not run.group:  # the user's own group, as Docker's
        wanted[GROUP_FROM_USER_ANNOTATION] = "true"
    annotations = Annotations(wanted)
    runtime = RuntimeApp(name=ACName(name), image=RuntimeImage(id=image.id, name=image.manifest.name), app=app,
                         mounts=mounts, annotations=annotations)  # fmt: skip
    pod_annotations = Annotations(
        {HOST_NETWORK_ANNOTATION: "true"} if run.host_network
        else {NETWORKS_ANNOTATION: run.networks} if run.networks else {}
    )  # fmt: skip
    built = PodManifest(apps=(runtime,), volumes=tuple(volumes), annotations=pod_annotations,
                        ports=tuple(_exposed(host, port, proto) for host, port, proto in run.ports))  # fmt: skip
    # Built from parts rather than parsed, so check it the way a stored pod is read back.
    return PodManifest.from_json(built.to_json())


def _device_isolators(paths: list[str]) -> tuple[Isolator, ...]:
    if not paths:
        return ()
    value = {"devices": [{"path": path} for path in paths]}
    return (Isolator.from_json({"name": DEVICES_ISOLATOR, "value": value}, "devices"),)


def _exposed(host_port: int, port: int, protocol: str) -> ExposedPort:
    """A ``-p HOSTPORT:PORT/PROTO`` as appc says it: the pod port carried by the exposed one."""
    name = ACName(f"{protocol}-{port}")
    return ExposedPort(name, host_port, pod_port=Port(name, protocol, port))
