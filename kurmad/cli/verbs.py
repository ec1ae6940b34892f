"""kurmactl's verbs and their options. Only argparse here: a verb's code (and what it imports,
gRPC included) is loaded when that verb runs, so every command starts fast."""

from __future__ import annotations

import argparse
from pathlib import Path

BUILD_COMPRESSIONS = ("gzip", "zstd", "none")


def read_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")


def add_pod_verbs(verbs: argparse._SubParsersAction, connection: argparse.ArgumentParser) -> None:
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
    run.set_defaults(handler="online:run_pod")

    create = verbs.add_parser(
        "create", parents=[connection], help="create (and start) a pod from a manifest"
    )
    create.add_argument(
        "-f", "--file", required=True, type=Path, help="pod manifest, JSON or YAML ('-' for stdin)"
    )
    create.add_argument("--name", default="")
    create.add_argument("--no-start", action="store_true")
    read_flags(create)
    create.set_defaults(handler="online:create_pod")

    for name, everything in (("ps", False), ("list", True)):
        listing = verbs.add_parser(
            name, parents=[connection], help="list pods" + ("" if everything else " that run")
        )
        listing.add_argument(
            "-a", "--all", action="store_true", default=everything, help="ended ones too"
        )
        read_flags(listing)
        listing.set_defaults(handler="online:list_pods")

    show = verbs.add_parser("show", parents=[connection], help="a pod in detail")
    show.add_argument("pod")
    read_flags(show)
    show.set_defaults(handler="online:show_pod")

    logs = verbs.add_parser("logs", parents=[connection], help="an app's output")
    logs.add_argument("pod")
    logs.add_argument("app", nargs="?", default="")
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("--timestamps", action="store_true")
    read_flags(logs)
    logs.set_defaults(handler="online:pod_logs")

    execute = verbs.add_parser("exec", parents=[connection], help="run a command in a running app")
    execute.add_argument("pod")
    execute.add_argument("rest", nargs=argparse.REMAINDER, metavar="[APP] -- CMD ARGS")
    execute.add_argument("-i", "--interactive", action="store_true")
    execute.add_argument("-t", "--tty", action="store_true")
    execute.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE")
    execute.set_defaults(handler="online:exec_in_pod")

    stop = verbs.add_parser("stop", parents=[connection], help="stop pods (SIGTERM, then SIGKILL)")
    stop.add_argument("pods", nargs="+")
    stop.add_argument(
        "-t", "--time", type=float, default=10.0, help="seconds of grace before SIGKILL"
    )
    stop.set_defaults(handler="online:stop_pods")

    remove = verbs.add_parser("rm", parents=[connection], help="remove pods that have ended")
    remove.add_argument("pods", nargs="+")
    remove.add_argument("-f", "--force", action="store_true", help="stop running ones first")
    remove.set_defaults(handler="online:remove_pods")


def add_online_image_verbs(
    images: argparse._SubParsersAction, connection: argparse.ArgumentParser
) -> None:
    importing = images.add_parser(
        "import", parents=[connection], help="import an ACI into kurmad's store"
    )
    importing.add_argument("file", help="an .aci file, or - for stdin")
    importing.add_argument("-q", "--quiet", action="store_true")
    read_flags(importing)
    importing.set_defaults(handler="online:import_image")

    listing = images.add_parser("list", parents=[connection], help="the images in the store")
    read_flags(listing)
    listing.set_defaults(handler="online:list_images")

    show = images.add_parser("show", parents=[connection], help="an image in detail")
    show.add_argument("image")
    read_flags(show)
    show.set_defaults(handler="online:show_image")

    remove = images.add_parser("rm", parents=[connection], help="remove images no pod uses")
    remove.add_argument("images", nargs="+")
    remove.set_defaults(handler="online:remove_images")

    gc = images.add_parser("gc", parents=[connection], help="remove every image no pod uses")
    gc.add_argument(
        "--grace",
        type=float,
        default=0.0,
        help="keep images imported less than this many seconds ago",
    )
    read_flags(gc)
    gc.set_defaults(handler="online:gc_images")


def add_host_verbs(verbs: argparse._SubParsersAction, connection: argparse.ArgumentParser) -> None:
    host = verbs.add_parser("host", help="the host kurmad runs")
    host_verbs = host.add_subparsers(dest="host_verb", metavar="VERB", required=True)
    info = host_verbs.add_parser(
        "info", parents=[connection], help="what the host is, and how it booted"
    )
    read_flags(info)
    info.set_defaults(handler="online:host_info")
    for verb in ("reboot", "poweroff"):
        power = host_verbs.add_parser(verb, parents=[connection], help=f"{verb} the host (admin)")
        power.set_defaults(handler="online:host_power", power=verb)
    events = verbs.add_parser(
        "events", parents=[connection], help="follow pod, image and host events"
    )
    read_flags(events)
    events.set_defaults(handler="online:follow_events")


def add_image_verbs(images: argparse._SubParsersAction) -> None:
    build_cmd = images.add_parser("build", help="build an ACI from a directory")
    build_cmd.add_argument(
        "dir",
        type=Path,
        help="a directory holding manifest and rootfs/, or a rootfs with --manifest",
    )
    build_cmd.add_argument(
        "-o", "--output", required=True, type=Path, help="the .aci file to write"
    )
    build_cmd.add_argument(
        "--manifest", type=Path, help="the image manifest (JSON); DIR is then the rootfs"
    )
    build_cmd.add_argument("--compress", choices=BUILD_COMPRESSIONS, default="gzip")
    build_cmd.add_argument(
        "--keep-owners", action="store_true", help="keep file owners instead of 0:0"
    )
    build_cmd.add_argument("--keep-mtimes", action="store_true", help="keep modification times")
    build_cmd.set_defaults(handler="offline:image_build")

    validate = images.add_parser("validate", help="check ACI files; exit 1 if any is invalid")
    validate.add_argument("files", nargs="+", type=Path)
    validate.add_argument("-o", "--output", choices=["text", "json"], default="text")
    validate.set_defaults(handler="offline:image_validate")

    manifest = images.add_parser("manifest", help="print the manifest of an ACI file as JSON")
    manifest.add_argument("file", type=Path)
    manifest.set_defaults(handler="offline:image_manifest")


def add_manifest_verbs(manifests: argparse._SubParsersAction) -> None:
    validate = manifests.add_parser("validate", help="check image or pod manifests (JSON)")
    validate.add_argument("files", nargs="+", type=Path)
    validate.add_argument("-o", "--output", choices=["text", "json"], default="text")
    validate.set_defaults(handler="offline:manifest_validate")
