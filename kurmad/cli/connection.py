"""How kurmactl reaches a kurmad: the connection options and the client made from them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kurmad.client import Client


def add_options(parser: argparse.ArgumentParser, default: object) -> None:
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


def after_verb() -> argparse.ArgumentParser:
    """The same options after the verb, as a parent for the verbs that connect; SUPPRESS keeps
    them from overriding ones given before it."""
    connection = argparse.ArgumentParser(add_help=False)
    add_options(connection, argparse.SUPPRESS)
    return connection


def client(args: argparse.Namespace) -> Client:
    from kurmad.client import Client  # gRPC: loaded only by the verbs that talk to a kurmad

    return Client(args.host, args.tls_dir, insecure=args.insecure)
