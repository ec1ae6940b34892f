"""kurmad: the daemon. ``python -m kurmad`` is the same as the ``kurmad`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kurmad import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kurmad", description="The kurmad container host: PID 1 at boot, or a daemon."
    )
    parser.add_argument("--version", action="version", version=f"kurmad {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    build_parser().parse_args(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
