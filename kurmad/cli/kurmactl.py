"""kurmactl: the command line of a kurmad host."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kurmad import __version__

from . import offline
from .output import CliError, error_line

PROG = "kurmactl"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Drive a kurmad host and its pods.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    image = verbs.add_parser("image", help="build, check and manage images")
    offline.add_image_verbs(image.add_subparsers(dest="image_verb", metavar="VERB", required=True))

    manifest = verbs.add_parser("manifest", help="check manifests")
    offline.add_manifest_verbs(
        manifest.add_subparsers(dest="manifest_verb", metavar="VERB", required=True)
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as err:
        error_line(PROG, str(err))
        return err.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
