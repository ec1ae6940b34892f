"""kurmactl's pod verbs: run, create, ps, list, show, logs, exec, stop, rm.

Each verb's flags sit beside its handler. gRPC, the protobuf modules, yaml and kurmad.appc are
imported inside the handlers, so that building the parser (and every offline verb) stays fast."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from kurmad.volumes import parse_volume

from .connection import client
from .output import add_format_option, fail
from .pulling import pull_with_progress

if TYPE_CHECKING:
    from kurmad.api.v1 import kurma_pb2 as pb
    from kurmad.client import Client

# A pod that could not start: the exit code `kurmactl run` gives (as docker does).
EXIT_START_FAILED = 125


def add_verbs(verbs: argparse._SubParsersAction, connection: argparse.ArgumentParser) -> None:
    _add_run(verbs, connection)
    _add_create(verbs, connection)
    _add_reads(verbs, connection)
    _add_exec(verbs, connection)
    _add_start_stop_and_remove(verbs, connection)


# --- run -------------------------------------------------------------------------------------------


def _add_run(verbs: argparse._SubParsersAction, connection: argparse.ArgumentParser) -> None:
    run = verbs.add_parser("run", parents=[connection], help="run a pod of one app from an image")
    run.add_argument(
        "image", help="image ID, name[:version][,label=value], or an .aci file (imported first)"
    )
    run.add_argument(
        "command", nargs=argparse.REMAINDER, help="-- CMD ARGS: replaces the image's exec"
    )
    run.add_argument("--name", default="")
    run.add_argument("--rm", action="store_true", help="remove the pod when it ends")
    run.add_argument("-d", "--detach", action="store_true", help="start it and print its name")
    run.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("-v", "--volume", action="append", default=[], metavar="HOSTPATH:PATH[:ro]")
    run.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    run.add_argument("-t", "--tty", action="store_true", help="give the app a terminal")
    run.add_argument("-w", "--workdir", default="")
    run.add_argument("-u", "--user", default="", help="USER[:GROUP]")
    run.add_argument("--net", default="", metavar="NETWORKS",
                     help="pod networks, comma-separated (default: the host's default network); "
                          "none: loopback only; host: share the host's network namespace")  # fmt: skip
    run.add_argument("-p", "--publish", action="append", default=[], metavar="HOSTPORT:PORT[/udp]",
                     help="publish a port of the pod on the host")  # fmt: skip
    run.add_argument("--device", action="append", default=[], metavar="/dev/NAME",
                     help="give the app a host device (admin role)")  # fmt: skip
    run.set_defaults(handler=run_pod)


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
    try:
        return [parse_volume(value) for value in values]
    except ValueError as err:
        fail(str(err))


def _command(args: argparse.Namespace, rest: list[str]) -> list[str]:
    """The app's command: what followed ``--``, else the positional words after the others."""
    dashed = getattr(args, "after_dashes", None)
    return list(dashed) if dashed is not None else rest


def _image_reference(kurma: Client, image: str) -> str:
    """An .aci file given to run is imported first; an OCI reference the store lacks is
    pulled (progress on stderr), as ``docker run`` does; anything else is a reference."""
    from kurmad.client import KurmaError

    path = Path(image)
    if image.endswith(".aci") or (path.is_file() and "/" in image):
        with open(path, "rb") as f:
            return kurma.import_image(f).image.id
    try:
        return kurma.image(image).id
    except KurmaError as err:
        if err.code != "NOT_FOUND" or not _pullable(image):
            return image  # the pod's creation says what is wrong
    try:
        return pull_with_progress(kurma, image, "", sys.stderr).id
    except KurmaError as err:
        fail(f"image {image} is not in the store, and pulling it failed ({err.code}): {err}")


def _pullable(image: str) -> bool:
    from kurmad.images.oci.reference import ReferenceError, Transport, parse_image_ref

    try:
        ref = parse_image_ref(image)
    except ReferenceError:
        return False
    return ref.transport is Transport.DOCKER or (ref.oci is not None and not ref.oci.is_short)


def _follow_pod(kurma: Client, pod: pb.Pod, args: argparse.Namespace) -> int:
    from kurmad.api.v1 import kurma_pb2 as pb

    from .terminal import Input, raw_terminal, relay, window_size

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


# --- create ----------------------------------------------------------------------------------------


def _add_create(verbs: argparse._SubParsersAction, connection: argparse.ArgumentParser) -> None:
    create = verbs.add_parser(
        "create", parents=[connection], help="create (and start) a pod from a manifest"
    )
    create.add_argument(
        "-f", "--file", required=True, type=Path, help="pod manifest, JSON or YAML ('-' for stdin)"
    )
    create.add_argument("--name", default="")
    create.add_argument("--no-start", action="store_true")
    add_format_option(create)
    create.set_defaults(handler=create_pod)


def create_pod(args: argparse.Namespace) -> int:
    from kurmad.api.v1 import kurma_pb2 as pb

    from . import render

    manifest = _load_manifest(args.file)
    with client(args) as kurma:
        pod = kurma.create(manifest, args.name, start=not args.no_start)
    if args.output != "table":
        render.emit(render.as_dict(pod), args.output)
    else:
        print(pod.name)
    return 1 if pod.state == pb.POD_STATE_FAILED else 0


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


# --- ps, list, show, logs --------------------------------------------------------------------------


def _add_reads(verbs: argparse._SubParsersAction, connection: argparse.ArgumentParser) -> None:
    for name, everything in (("ps", False), ("list", True)):
        listing = verbs.add_parser(
            name, parents=[connection], help="list pods" + ("" if everything else " that run")
        )
        listing.add_argument(
            "-a", "--all", action="store_true", default=everything, help="ended ones too"
        )
        add_format_option(listing)
        listing.set_defaults(handler=list_pods)

    show = verbs.add_parser("show", parents=[connection], help="a pod in detail")
    show.add_argument("pod")
    add_format_option(show)
    show.set_defaults(handler=show_pod)

    logs = verbs.add_parser("logs", parents=[connection], help="an app's output")
    logs.add_argument("pod")
    logs.add_argument("app", nargs="?", default="")
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("--timestamps", action="store_true")
    add_format_option(logs)
    logs.set_defaults(handler=pod_logs)


def list_pods(args: argparse.Namespace) -> int:
    from kurmad.api.v1 import kurma_pb2 as pb

    from . import render

    with client(args) as kurma:
        pods = kurma.pods()
    if not args.all:
        pods = [
            p
            for p in pods
            if p.state in (pb.POD_STATE_NEW, pb.POD_STATE_STARTING, pb.POD_STATE_RUNNING)
        ]
    render.present(pods, args.output, render.pods_table)
    return 0


def show_pod(args: argparse.Namespace) -> int:
    from . import render

    return render.read_and_present(args, lambda kurma: kurma.get(args.pod), render.show_pod)


def pod_logs(args: argparse.Namespace) -> int:
    from . import render

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


# --- exec ------------------------------------------------------------------------------------------


def _add_exec(verbs: argparse._SubParsersAction, connection: argparse.ArgumentParser) -> None:
    execute = verbs.add_parser("exec", parents=[connection], help="run a command in a running app")
    execute.add_argument("pod")
    execute.add_argument("rest", nargs=argparse.REMAINDER, metavar="[APP] -- CMD ARGS")
    execute.add_argument("-i", "--interactive", action="store_true")
    execute.add_argument("-t", "--tty", action="store_true")
    execute.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE")
    execute.set_defaults(handler=exec_in_pod)


def exec_in_pod(args: argparse.Namespace) -> int:
    from kurmad.api.v1 import kurma_pb2 as pb

    from .terminal import Input, raw_terminal, relay, window_size

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


# --- stop, rm --------------------------------------------------------------------------------------


def _add_start_stop_and_remove(
    verbs: argparse._SubParsersAction, connection: argparse.ArgumentParser
) -> None:
    start = verbs.add_parser("start", parents=[connection], help="start pods made with --no-start")
    start.add_argument("pods", nargs="+")
    start.set_defaults(handler=start_pods)

    stop = verbs.add_parser("stop", parents=[connection], help="stop pods (SIGTERM, then SIGKILL)")
    stop.add_argument("pods", nargs="+")
    stop.add_argument(
        "-t", "--time", type=float, default=10.0, help="seconds of grace before SIGKILL"
    )
    stop.set_defaults(handler=stop_pods)

    remove = verbs.add_parser("rm", parents=[connection], help="remove pods that have ended")
    remove.add_argument("pods", nargs="+")
    remove.add_argument("-f", "--force", action="store_true", help="stop running ones first")
    remove.set_defaults(handler=remove_pods)


def start_pods(args: argparse.Namespace) -> int:
    """Each pod started and waited for until its apps run; 125 if one of them failed."""
    from kurmad.api.v1 import kurma_pb2 as pb

    from . import render

    failed = False
    with client(args) as kurma:
        for ref in args.pods:
            pod = kurma.start(ref)
            if pod.state == pb.POD_STATE_FAILED:
                _start_failed(pod)
                failed = True
            else:
                print(f"{pod.name} {render.STATE_NAMES[pod.state]}")
    return EXIT_START_FAILED if failed else 0


def stop_pods(args: argparse.Namespace) -> int:
    from . import render

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
