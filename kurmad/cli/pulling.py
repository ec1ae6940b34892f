"""kurmactl pull, login and logout: OCI images from registries, and the credentials kurmad
keeps for them. ``run`` pulls through ``pull_missing`` when the image is not in the store."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import TYPE_CHECKING, TextIO

from .connection import client
from .output import add_format_option, fail

if TYPE_CHECKING:
    from kurmad.api.v1 import kurma_pb2 as pb
    from kurmad.client import Client

_BAR = 30
_STATES = {"waiting": "Waiting", "present": "Already exists", "downloading": "Downloading",
           "extracting": "Extracting", "done": "Pull complete"}  # fmt: skip


def add_verbs(verbs: argparse._SubParsersAction, connection: argparse.ArgumentParser) -> None:
    pull = verbs.add_parser("pull", parents=[connection], help="pull an OCI image from a registry")
    pull.add_argument("ref", metavar="REF", help="REGISTRY/REPO[:TAG][@DIGEST] (or docker://...)")
    pull.add_argument("--platform", default="", help="os/arch[/variant] (default: kurmad's host)")
    pull.add_argument("-q", "--quiet", action="store_true", help="print only the image ID")
    add_format_option(pull)
    pull.set_defaults(handler=pull_image)

    login = verbs.add_parser("login", parents=[connection],
                             help="keep credentials for a registry in kurmad (admin)")  # fmt: skip
    login.add_argument("registry", metavar="REGISTRY", help="host[:port]")
    login.add_argument("-u", "--username", required=True)
    login.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    login.set_defaults(handler=login_registry)

    logout = verbs.add_parser(
        "logout", parents=[connection], help="forget a registry's credentials"
    )
    logout.add_argument("registry", metavar="REGISTRY")
    logout.set_defaults(handler=logout_registry)


def pull_image(args: argparse.Namespace) -> int:
    from . import render

    with client(args) as kurma:
        image = pull_with_progress(
            kurma, args.ref, args.platform, None if args.quiet else sys.stderr
        )
    if args.output != "table":
        render.emit(render.as_dict(image), args.output)
    else:
        print(image.id)
    return 0


def pull_with_progress(kurma: Client, ref: str, platform: str, out: TextIO | None) -> pb.Image:
    """Pull ``ref``, drawing each layer's progress on ``out`` (redrawn in place on a terminal,
    a line per change of state otherwise); the image pulled."""
    view = _LayerView(out)
    for update in kurma.pull(ref, platform):
        if update.HasField("image"):
            view.finish(update.image)
            return update.image
        view.show(update.layer)
    fail(f"{ref}: the pull ended without an image")


class _LayerView:
    def __init__(self, out: TextIO | None) -> None:
        self.out = out
        self.tty = out is not None and out.isatty()
        self.lines: dict[str, str] = {}
        self.drawn = 0

    def show(self, layer: pb.PullProgress.Layer) -> None:
        if self.out is None:
            return
        line = f"{layer.digest.split(':')[-1][:12]}: {_STATES.get(layer.state, layer.state)}"
        if layer.state == "downloading":
            line += " " + _bar(layer.done, layer.size)
        changed = self.lines.get(layer.digest, "").split(" [")[0] != line.split(" [")[0]
        self.lines[layer.digest] = line
        if self.tty:
            self._redraw()
        elif changed:
            self.out.write(line + "\n")

    def _redraw(self) -> None:
        assert self.out is not None
        if self.drawn:
            self.out.write(f"\x1b[{self.drawn}F")
        for line in self.lines.values():
            self.out.write(f"\x1b[2K{line}\n")
        self.drawn = len(self.lines)
        self.out.flush()

    def finish(self, image: pb.Image) -> None:
        if self.out is not None:
            verb = "Pulled" if image.reference else "Stored"
            self.out.write(
                f"{verb} {image.reference or image.name} ({image.oci_digest or image.id})\n"
            )
            self.out.flush()


def _bar(done: int, size: int) -> str:
    from . import render

    filled = _BAR * done // size if size else _BAR
    return f"[{'=' * filled}{'>' if filled < _BAR else ''}{' ' * (_BAR - filled - 1)}] " \
           f"{render.size(done)}/{render.size(size)}"  # fmt: skip


def login_registry(args: argparse.Namespace) -> int:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.username} at {args.registry}: ")
    with client(args) as kurma:
        kurma.login(args.registry, args.username, password)
    print(f"Login to {args.registry} succeeded")
    return 0


def logout_registry(args: argparse.Namespace) -> int:
    with client(args) as kurma:
        removed = kurma.logout(args.registry)
    print(f"Removed the credentials for {args.registry}" if removed
          else f"No credentials for {args.registry} were kept")  # fmt: skip
    return 0
