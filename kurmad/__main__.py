"""kurmad: the daemon. ``python -m kurmad`` is the same as the ``kurmad`` command.

kurmad serve --state-dir DIR [--listen HOST:PORT] [--insecure]
kurmad certs client NAME --role reader|operator|admin -o DIR [--state-dir DIR]
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from kurmad import __version__

DEFAULT_STATE_DIR = Path("/var/lib/kurmad")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kurmad", description="The kurmad container host: PID 1 at boot, or a daemon."
    )
    parser.add_argument("--version", action="version", version=f"kurmad {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    serve = verbs.add_parser("serve", help="run the API on this host (pods, images, host)")
    serve.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    serve.add_argument(
        "--socket", type=Path, help="the local socket (default: STATE_DIR/kurmad.sock)"
    )
    serve.add_argument("--listen", metavar="HOST:PORT", help="also listen on TCP, with mutual TLS")
    serve.add_argument(
        "--insecure", action="store_true", help="TCP without TLS: every client is admin"
    )
    serve.add_argument(
        "--cgroup-parent", default="kurmad", help="absolute, or under kurmad's own cgroup"
    )
    serve.add_argument("--image-quota", type=int, help="bytes the image store may use")
    serve.set_defaults(func=_serve)

    certs = verbs.add_parser("certs", help="client certificates for TCP access")
    certs_verbs = certs.add_subparsers(dest="certs_verb", metavar="VERB", required=True)
    client = certs_verbs.add_parser(
        "client", help="issue a client bundle (ca.crt, client.crt, client.key)"
    )
    client.add_argument("name")
    client.add_argument("--role", required=True, choices=["reader", "operator", "admin"])
    client.add_argument("-o", "--output", type=Path, required=True)
    client.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    client.set_defaults(func=_certs_client)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from kurmad.api.server import Daemon, ServeConfig

    config = ServeConfig(
        state_dir=args.state_dir, listen=args.listen, insecure=args.insecure, socket=args.socket,
        cgroup_parent=args.cgroup_parent, image_quota=args.image_quota,
    )  # fmt: skip
    daemon = Daemon(config)
    daemon.run_until_signalled()
    return 0


def _certs_client(args: argparse.Namespace) -> int:
    from kurmad.api.auth import CertificateError, TLSFiles, ensure_server_material, issue_client

    tls = TLSFiles(args.state_dir / "tls")
    try:
        ensure_server_material(tls, [])
        issue_client(tls, args.name, args.role, args.output)
    except CertificateError as err:
        sys.stderr.write(f"kurmad: error: {err}\n")
        return 1
    print(f"{args.output}: ca.crt, client.crt, client.key for {args.name} ({args.role})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="kurmad: %(levelname)s: %(message)s")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except (OSError, ValueError) as err:
        sys.stderr.write(f"kurmad: error: {err}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
