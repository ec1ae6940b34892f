"""kurmactl: the command line of a kurmad host."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from kurmad import __version__

from . import verbs as definitions
from .output import CliError, error_line

PROG = "kurmactl"


def _connection_options(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "--host",
        default=default,
        help="unix:///path or HOST:PORT (default: $KURMA_HOST, else the local socket)",
    )
    parser.add_argument(
        "--tls-dir",
        type=Path,
        default=default,
        help="client bundle for TCP (default: $KURMA_TLS_DIR)",
    )
    parser.add_argument("--insecure", action="store_true", default=default, help="TCP without TLS")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Drive a kurmad host and its pods.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _connection_options(parser, None)
    parser.set_defaults(insecure=False)
    # The same options after the verb; SUPPRESS keeps them from overriding ones given before it.
    connection = argparse.ArgumentParser(add_help=False)
    _connection_options(connection, argparse.SUPPRESS)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    definitions.add_pod_verbs(verbs, connection)
    image = verbs.add_parser("image", help="build, check and manage images")
    image_verbs = image.add_subparsers(dest="image_verb", metavar="VERB", required=True)
    definitions.add_image_verbs(image_verbs)
    definitions.add_online_image_verbs(image_verbs, connection)
    manifest = verbs.add_parser("manifest", help="check manifests")
    definitions.add_manifest_verbs(
        manifest.add_subparsers(dest="manifest_verb", metavar="VERB", required=True)
    )
    definitions.add_host_verbs(verbs, connection)
    return parser


def _handler(name: str) -> Callable[[argparse.Namespace], int]:
    """The function behind a verb, imported only now: offline verbs never load gRPC."""
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(f"kurmad.cli.{module}"), function)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first "--" is a command for the app (run, exec), never an option.
    command = argv[argv.index("--") + 1 :] if "--" in argv else None
    args = build_parser().parse_args(argv[: argv.index("--")] if command is not None else argv)
    args.after_dashes = command
    try:
        return int(_handler(args.handler)(args))
    except CliError as err:
        error_line(PROG, str(err))
        return err.code
    except BrokenPipeError:
        return 141
    except Exception as err:
        if type(err).__name__ != "KurmaError":  # the client's error type, imported lazily
            raise
        code = getattr(err, "code", "")
        error_line(PROG, str(err) if code == "UNAVAILABLE" else f"{err} ({code})")
        return 1
    except KeyboardInterrupt:
        return 130


def run() -> None:
    """The console script: exit without tearing the interpreter down (gRPC's shutdown at exit
    costs tens of milliseconds a command, and there is nothing left to clean)."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
