"""How kurmactl prints: one clear line per error, JSON for scripts."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, NoReturn


class CliError(Exception):
    """An error to print as one line and exit with ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def add_format_option(parser: argparse.ArgumentParser) -> None:
    """The -o of every read verb."""
    parser.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")


def fail(message: str, code: int = 1) -> NoReturn:
    raise CliError(message, code)


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def error_line(prog: str, message: str) -> None:
    sys.stderr.write(f"{prog}: error: {message}\n")
