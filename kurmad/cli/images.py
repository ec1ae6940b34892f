"""kurmactl's image noun: the verbs on files (offline.py's), then those on kurmad's store: import,
list, show, rm, gc. The client and render (gRPC, protobuf) are imported inside the handlers."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import TYPE_CHECKING

from . import offline
from .connection import client
from .output import add_format_option, fail

if TYPE_CHECKING:
    from kurmad.api.v1 import kurma_pb2 as pb
    from kurmad.client import Client


def add_verbs(verbs: argparse._SubParsersAction, connection: argparse.ArgumentParser) -> None:
    image = verbs.add_parser("image", help="build, check and manage images")
    image_verbs = image.add_subparsers(dest="image_verb", metavar="VERB", required=True)
    offline.add_image_verbs(image_verbs)
    _add_store_verbs(image_verbs, connection)


def _add_store_verbs(
    images: argparse._SubParsersAction, connection: argparse.ArgumentParser
) -> None:
    importing = images.add_parser(
        "import", parents=[connection],
        help="import an ACI, an OCI layout (a directory or an oci-archive) or a docker-archive",
    )  # fmt: skip
    importing.add_argument("file", help="the file or OCI layout directory, or - for stdin")
    importing.add_argument("--name", default="", metavar="REF",
                           help="the reference to store an OCI archive's image as, or which of "
                                "its images to take")  # fmt: skip
    importing.add_argument("-q", "--quiet", action="store_true")
    add_format_option(importing)
    importing.set_defaults(handler=import_image)

    listing = images.add_parser("list", parents=[connection], help="the images in the store")
    add_format_option(listing)
    listing.set_defaults(handler=list_images)

    show = images.add_parser("show", parents=[connection], help="an image in detail")
    show.add_argument("image")
    add_format_option(show)
    show.set_defaults(handler=show_image)

    remove = images.add_parser("rm", parents=[connection], help="remove images no pod uses")
    remove.add_argument("images", nargs="+")
    remove.set_defaults(handler=remove_images)

    gc = images.add_parser("gc", parents=[connection], help="remove every image no pod uses")
    gc.add_argument(
        "--grace",
        type=float,
        default=0.0,
        help="keep images imported less than this many seconds ago",
    )
    add_format_option(gc)
    gc.set_defaults(handler=gc_images)


def import_image(args: argparse.Namespace) -> int:
    from . import render

    progress = _Progress(args.file, quiet=args.quiet)
    with client(args) as kurma:
        if args.file == "-":
            result = kurma.import_image(sys.stdin.buffer, progress, args.name)
        elif os.path.isdir(args.file):
            result = _import_layout(kurma, args.file, progress, args.name)
        else:
            try:
                source = open(args.file, "rb")  # noqa: SIM115 - closed below
            except OSError as err:
                fail(f"{args.file}: {err.strerror}")
            with source:
                result = kurma.import_image(source, progress, args.name)
    progress.done()
    if args.output != "table":
        render.emit({**render.as_dict(result.image), "created": result.created}, args.output)
    else:
        print(
            f"{result.image.id} {result.image.name}{'' if result.created else ' (already in the store)'}"
        )
    return 0


def _import_layout(
    kurma: Client, directory: str, progress: _Progress, name: str
) -> pb.ImportResponse:
    """An OCI layout directory goes to kurmad as the oci-archive it makes: a tar written on
    the fly by a thread, read from a pipe."""
    import tarfile
    import threading

    if not os.path.isfile(os.path.join(directory, "oci-layout")):
        fail(f"{directory}: a directory to import must be an OCI layout (it has no oci-layout)")
    read_fd, write_fd = os.pipe()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            with os.fdopen(write_fd, "wb") as sink, tarfile.open(fileobj=sink, mode="w|") as tar:
                for entry in sorted(os.listdir(directory)):
                    tar.add(os.path.join(directory, entry), arcname=entry)
        except BaseException as err:
            errors.append(err)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    with os.fdopen(read_fd, "rb") as source:
        result = kurma.import_image(source, progress, name)
    writer.join()
    if errors:
        fail(f"{directory}: {errors[0]}")
    return result


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
        from . import render  # import_image has loaded it: only a lookup here

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
    from . import render

    return render.read_and_present(args, lambda kurma: kurma.images(), render.images_table)


def show_image(args: argparse.Namespace) -> int:
    from . import render

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
    from . import render

    return render.read_and_present(args, lambda kurma: kurma.gc(args.grace), _removed_lines)


def _removed_lines(removed: list[pb.Image]) -> None:
    for image in removed:
        print(f"{image.id} {image.name}")
