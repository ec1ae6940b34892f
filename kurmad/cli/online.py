"""kurmactl verbs that talk to a kurmad: pods, images, the host, events."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from kurmad.api.v1 import kurma_pb2 as pb
from kurmad.client import Client

from . import render
from .output import fail
from .terminal import Input, raw_terminal, relay, window_size

# A pod that could not start: the exit code `kurmactl run` gives (as docker does).
EXIT_START_FAILED = 125


def client(args: argparse.Namespace) -> Client:
    return Client(args.host, args.tls_dir, insecure=args.insecure)


# --- pods ------------------------------------------------------------------------------------------


def _pairs(values: list[str], what: str) -> dict[str, str]:
    out = {}
    for value in values:
        key, sep, item = value.partition("=")
        if not sep or not key:
            fail(f"{what} {value!r}: expected KEY=VALUE")
        out[key] = item
    return out


def _ports(values: list[str]) -> list[tuple[int, int, str]]:
    out = []
    for value in values:
        spec, _, protocol = value.partition("/")
        host, _, port = spec.partition(":")
        if not (host.isdigit() and port.isdigit() and protocol in ("", "tcp", "udp")
                and 0 < int(host) < 65536 and 0 < int(port) < 65536):  # fmt: skip
            fail(f"port {value!r}: expected HOSTPORT:PORT[/tcp|/udp]")
        out.append((int(host), int(port), protocol or "tcp"))
    return out


def _volumes(values: list[str]) -> list[tuple[str, str, bool]]:
    out = []
    for value in values:
        parts = value.split(":")
        if (
            len(parts) not in (2, 3)
            or not parts[0].startswith("/")
            or not parts[1].startswith("/")
            or (len(parts) == 3 and parts[2] not in ("ro", "rw"))
        ):
            fail(f"volume {value!r}: expected /HOST/PATH:/APP/PATH[:ro]")
        out.append((parts[0], parts[1], len(parts) == 3 and parts[2] == "ro"))
    return out


def _command(args: argparse.Namespace, rest: list[str]) -> list[str]:
    """The app's command: what followed ``--``, else the positional words after the others."""
    dashed = getattr(args, "after_dashes", None)
    return list(dashed) if dashed is not None else rest


def _image_reference(kurma: Client, image: str, quiet: bool = True) -> str:
    """An .aci file given to run is imported first; anything else is a reference."""
    path = Path(image)
    if image.endswith(".aci") or (path.is_file() and "/" in image):
        with open(path, "rb") as f:
            return kurma.import_image(f).image.id
    return image


def run_pod(args: argparse.Namespace) -> int:
    user, _, group = args.user.partition(":")
    with client(args) as kurma:
        image = _image_reference(kurma, args.image)
        pod = kurma.run(image, exec=_command(args, args.command), env=_pairs(args.env, "environment"),
                        volumes=_volumes(args.volume), name=args.name, tty=args.tty,
                        working_directory=args.workdir, user=user, group=group, host_network=args.net == "host",
                        networks="" if args.net == "host" else args.net, ports=_ports(args.publish), devices=args.device,
                        wait_running=args.detach or args.tty)  # attached runs learn of failures from Wait  # fmt: skip
        if args.detach:
            print(pod.name)
            return 0
        try:
            return _follow_pod(kurma, pod, args)
        finally:
            if args.rm:
                kurma.remove(pod.uuid, force=True)


def _follow_pod(kurma: Client, pod: pb.Pod, args: argparse.Namespace) -> int:
    if pod.state == pb.POD_STATE_FAILED:
        return _start_failed(pod)
    if args.tty:
        start = pb.AttachStart(ref=pod.uuid, size=window_size())
        feed = Input(pb.AttachRequest(start=start), stdin=args.interactive, terminal=True,
                     wrap=lambda **kw: pb.AttachRequest(**kw))  # fmt: skip
        with raw_terminal(os.isatty(0)):
            code = relay(kurma.attach(iter(feed)))
        feed.close()
        return code
    for entry in kurma.logs(pod.uuid, follow=True):
        os.write(
            1 if entry.stream == "stdout" else 2, entry.line + (b"" if entry.partial else b"\n")
        )
    ended = kurma.wait(pod.uuid)
    if ended.state == pb.POD_STATE_FAILED:
        return _start_failed(ended)
    app = ended.apps[0]
    return app.exit_code if app.HasField("exit_code") else 255


def _start_failed(pod: pb.Pod) -> int:
    sys.stderr.write(f"kurmactl: error: pod {pod.name} failed: {pod.reason}\n")
    return EXIT_START_FAILED


def _load_manifest(path: Path) -> str:
    import yaml  # only create needs these two, and they cost 40 ms to import

    from kurmad import appc

    text = sys.stdin.read() if str(path) == "-" else _read(path)
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as err:
            fail(f"{path}: neither JSON nor YAML ({err})")
    try:
        appc.PodManifest.from_json(document)
    except appc.ValidationError as err:
        if "image.id" not in str(err):  # a template: the server reifies it
            fail(f"{path}: invalid pod manifest: {err}")
    return json.dumps(document)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as err:
        fail(f"{path}: {err.strerror}")


def create_pod(args: argparse.Namespace) -> int:
    manifest = _load_manifest(args.file)
    with client(args) as kurma:
        pod = kurma.create(manifest, args.name, start=not args.no_start)
    if args.output != "table":
        render.emit(render.as_dict(pod), args.output)
    else:
        print(pod.name)
    return 1 if pod.state == pb.POD_STATE_FAILED else 0


def list_pods(args: argparse.Namespace) -> int:
    with client(args) as kurma:
        pods = kurma.pods()
    if not args.all:
        pods = [
            p
            for p in pods
            if p.state in (pb.POD_STATE_NEW, pb.POD_STATE_STARTING, pb.POD_STATE_RUNNING)
        ]
    if args.output == "table":
        render.pods_table(pods)
    else:
        render.emit([render.as_dict(p) for p in pods], args.output)
    return 0


def show_pod(args: argparse.Namespace) -> int:
    with client(args) as kurma:
        pod = kurma.get(args.pod)
    if args.output == "table":
        render.show_pod(pod)
    else:
        render.emit(render.as_dict(pod), args.output)
    return 0


def pod_logs(args: argparse.Namespace) -> int:
    with client(args) as kurma:
        for entry in kurma.logs(args.pod, args.app, args.follow):
            if args.output != "table":
                print(json.dumps(render.as_dict(entry)), flush=True)
                continue
            prefix = f"{entry.timestamp} ".encode() if args.timestamps else b""
            os.write(
                1 if entry.stream == "stdout" else 2,
                prefix + entry.line + (b"" if entry.partial else b"\n"),
            )
    return 0


def exec_in_pod(args: argparse.Namespace) -> int:
    rest = list(args.rest)
    if getattr(args, "after_dashes", None) is not None:
        app, command = (rest[0] if rest else ""), _command(args, [])
    else:
        app, command = "", rest  # without --, everything after the pod is the command
    if not command:
        fail("exec needs a command: kurmactl exec POD [APP] -- CMD ARGS")
    start = pb.ExecStart(ref=args.pod, app=app, argv=command, env=_pairs(args.env, "environment"), tty=args.tty,
                         size=window_size() if args.tty else None)  # fmt: skip
    feed = Input(pb.ExecRequest(start=start), stdin=args.interactive, terminal=args.tty,
                 wrap=lambda **kw: pb.ExecRequest(**kw))  # fmt: skip
    with client(args) as kurma, raw_terminal(args.tty and os.isatty(0)):
        code = relay(kurma.exec(iter(feed)))
    feed.close()
    return code


def stop_pods(args: argparse.Namespace) -> int:
    with client(args) as kurma:
        for ref in args.pods:
            pod = kurma.stop(ref, args.time)
            print(f"{pod.name} {render.STATE_NAMES[pod.state]}")
    return 0


def remove_pods(args: argparse.Namespace) -> int:
    with client(args) as kurma:
        for ref in args.pods:
            kurma.remove(ref, args.force)
            print(ref)
    return 0


# --- images ----------------------------------------------------------------------------------------


def import_image(args: argparse.Namespace) -> int:
    progress = _Progress(args.file, quiet=args.quiet)
    with client(args) as kurma:
        if args.file == "-":
            result = kurma.import_image(sys.stdin.buffer, progress)
        else:
            try:
                source = open(args.file, "rb")  # noqa: SIM115 - closed below
            except OSError as err:
                fail(f"{args.file}: {err.strerror}")
            with source:
                result = kurma.import_image(source, progress)
    progress.done()
    if args.output != "table":
        render.emit({**render.as_dict(result.image), "created": result.created}, args.output)
    else:
        print(
            f"{result.image.id} {result.image.name}{'' if result.created else ' (already in the store)'}"
        )
    return 0


class _Progress:
    """A progress bar on stderr when it is a terminal."""

    def __init__(self, name: str, quiet: bool) -> None:
        self._total = os.path.getsize(name) if name != "-" and os.path.isfile(name) else None
        self._show = not quiet and sys.stderr.isatty()
        self._started = time.monotonic()
        self._last = 0.0

    def __call__(self, sent: int) -> None:
        now = time.monotonic()
        if not self._show or now - self._last < 0.1:
            return
        self._last = now
        rate = sent / max(now - self._started, 1e-6)
        if self._total:
            filled = int(30 * sent / self._total)
            bar = f"[{'#' * filled}{'.' * (30 - filled)}] {100 * sent // self._total:3d}%"
        else:
            bar = render.size(sent)
        sys.stderr.write(f"\rimporting {bar} {render.size(int(rate))}/s ")
        sys.stderr.flush()

    def done(self) -> None:
        if self._show:
            sys.stderr.write("\r\x1b[K")


def list_images(args: argparse.Namespace) -> int:
    with client(args) as kurma:
        images = kurma.images()
    if args.output == "table":
        render.images_table(images)
    else:
        render.emit([render.as_dict(i) for i in images], args.output)
    return 0


def show_image(args: argparse.Namespace) -> int:
    with client(args) as kurma:
        image = kurma.image(args.image)
    render.emit(render.as_dict(image), "yaml" if args.output == "table" else args.output)
    return 0


def remove_images(args: argparse.Namespace) -> int:
    with client(args) as kurma:
        for ref in args.images:
            kurma.remove_image(ref)
            print(ref)
    return 0


def gc_images(args: argparse.Namespace) -> int:
    with client(args) as kurma:
        removed = kurma.gc(args.grace)
    if args.output == "table":
        for image in removed:
            print(f"{image.id} {image.name}")
    else:
        render.emit([render.as_dict(i) for i in removed], args.output)
    return 0


# --- host and events -------------------------------------------------------------------------------


def host_info(args: argparse.Namespace) -> int:
    with client(args) as kurma:
        info = kurma.info()
    if args.output == "table":
        render.host_info(info)
    else:
        render.emit(render.as_dict(info), args.output)
    return 0


def host_power(args: argparse.Namespace) -> int:
    with client(args) as kurma:
        kurma.reboot() if args.power == "reboot" else kurma.poweroff()
    print(f"{args.power}: requested")
    return 0


def follow_events(args: argparse.Namespace) -> int:
    with client(args) as kurma:
        for event in kurma.events():
            if args.output == "table":
                details = " ".join(f"{k}={v}" for k, v in sorted(event.details.items()))
                stamp = time.strftime("%H:%M:%S", time.localtime(event.time))
                print(
                    f"{stamp} {event.kind} {event.action} {event.name or event.id[:12]} {details}".rstrip(),
                    flush=True,
                )
            else:
                print(json.dumps(render.as_dict(event)), flush=True)
    return 0
