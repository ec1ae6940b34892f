"""kurmactl's host noun (info, reboot, poweroff) and events. The client and render (gRPC,
protobuf) are imported inside the handlers."""

from __future__ import annotations

import argparse
import json
import time

from .connection import client
from .output import add_format_option


def add_verbs(verbs: argparse._SubParsersAction, connection: argparse.ArgumentParser) -> None:
    host = verbs.add_parser("host", help="the host kurmad runs")
    host_verbs = host.add_subparsers(dest="host_verb", metavar="VERB", required=True)
    info = host_verbs.add_parser(
        "info", parents=[connection], help="what the host is, and how it booted"
    )
    add_format_option(info)
    info.set_defaults(handler=host_info)
    for verb in ("reboot", "poweroff"):
        power = host_verbs.add_parser(verb, parents=[connection], help=f"{verb} the host (admin)")
        power.set_defaults(handler=host_power, power=verb)
    events = verbs.add_parser(
        "events", parents=[connection], help="follow pod, image and host events"
    )
    add_format_option(events)
    events.set_defaults(handler=follow_events)


def host_info(args: argparse.Namespace) -> int:
    from . import render

    return render.read_and_present(args, lambda kurma: kurma.info(), render.host_info)


def host_power(args: argparse.Namespace) -> int:
    with client(args) as kurma:
        kurma.reboot() if args.power == "reboot" else kurma.poweroff()
    print(f"{args.power}: requested")
    return 0


def follow_events(args: argparse.Namespace) -> int:
    from . import render

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
