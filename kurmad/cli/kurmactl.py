"""kurmactl: the command line of a kurmad host."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from kurmad import __version__

from . import connection, host, images, offline, pods, pulling
from .output import CliError, error_line

PROG = "kurmactl"

# What every verb sets as its handler: the function that runs it, returning the exit code.
Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    """The parser, noun by noun; each noun module holds its verbs' flags and handlers."""
    parser = argparse.ArgumentParser(prog=PROG, description="Drive a kurmad host and its pods.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    connection.add_options(parser, None)
    parser.set_defaults(insecure=False)
    after_verb = connection.after_verb()
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    pods.add_verbs(verbs, after_verb)
    images.add_verbs(verbs, after_verb)
    pulling.add_verbs(verbs, after_verb)
    offline.add_manifest_verbs(verbs)
    host.add_verbs(verbs, after_verb)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first "--" is a command for the app (run, exec), never an option.
    command = argv[argv.index("--") + 1 :] if "--" in argv else None
    args = build_parser().parse_args(argv[: argv.index("--")] if command is not None else argv)
    args.after_dashes = command
    try:
        handler: Handler = args.handler
        return int(handler(args))
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
