"""kurmad: the daemon. ``python -m kurmad`` is the same as the ``kurmad`` command.

kurmad boot [--config FILE] [--cmdline TEXT]     (as PID 1: what the kernel runs as /init)
kurmad serve --state-dir DIR [--listen HOST:PORT] [--insecure]
kurmad config validate FILE
kurmad certs client NAME --role reader|operator|admin -o DIR [--days N] [--state-dir DIR | --tls-dir DIR]
kurmad certs revoke NAME | --serial HEX [--state-dir DIR | --tls-dir DIR]
kurmad certs list [-o table|json|yaml] [--state-dir DIR | --tls-dir DIR]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kurmad import __version__
from kurmad.runtime.spec import DEFAULT_PIDS_LIMIT

if TYPE_CHECKING:
    from kurmad.api.auth import TLSFiles
    from kurmad.api.server import Daemon
    from kurmad.core import Core, Settings
    from kurmad.host.control import Host
    from kurmad.images.oci.settings import RegistrySettings
    from kurmad.net.config import NetworkSpec

DEFAULT_STATE_DIR = Path("/var/lib/kurmad")
Verbs = argparse._SubParsersAction  # what add_subparsers gives


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kurmad", description="The kurmad container host: PID 1 at boot, or a daemon."
    )
    parser.add_argument("--version", action="version", version=f"kurmad {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    _boot_verbs(verbs)
    _serve_verb(verbs)
    _certs_verbs(verbs)
    return parser


def _boot_verbs(verbs: Verbs) -> None:
    boot = verbs.add_parser("boot", help="be PID 1: boot the machine, then serve the API")
    boot.add_argument("--config", type=Path, default=Path("/etc/kurma.yml"),
                      help="the base config file (default /etc/kurma.yml)")  # fmt: skip
    boot.add_argument("--cmdline", help="kurma.* options to use instead of /proc/cmdline")
    boot.set_defaults(func=_boot)

    config = verbs.add_parser("config", help="boot configuration files")
    config_verbs = config.add_subparsers(dest="config_verb", metavar="VERB", required=True)
    validate = config_verbs.add_parser("validate", help="check a kurma.yml offline")
    validate.add_argument("file", type=Path)
    validate.set_defaults(func=_config_validate)


def _serve_verb(verbs: Verbs) -> None:
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
    serve.add_argument("--strict-images", action="store_true",
                       help="refuse images with setuid/setgid files or device nodes")  # fmt: skip
    serve.add_argument("--allow-host-volume", action="append", default=[], type=Path, metavar="DIR",
                       help="host paths below DIR may be volumes of any operator's pods (the "
                            "admin role may mount others); repeatable")  # fmt: skip
    serve.add_argument("--pids-limit", type=int, default=DEFAULT_PIDS_LIMIT, metavar="N",
                       help=f"processes a pod may have at once (default {DEFAULT_PIDS_LIMIT})")  # fmt: skip
    serve.add_argument("--registry-config", type=Path, metavar="FILE",
                       help="how to reach OCI registries (YAML: docker_config, credentials, "
                            "search, insecure, mirrors, certs_dirs; the boot config's registries:)")  # fmt: skip
    serve.add_argument("--insecure-registry", action="append", default=[], metavar="HOST:PORT",
                       help="reach this registry without TLS verification; repeatable")  # fmt: skip
    serve.add_argument("--search-registry", action="append", default=[], metavar="HOST",
                       help="where short image names are looked for, in order; repeatable")  # fmt: skip
    serve.add_argument("--docker-config", type=Path, metavar="FILE",
                       help="a Docker config.json whose auths give registry credentials")  # fmt: skip
    serve.add_argument("--network-config", type=Path, metavar="FILE",
                       help="pod networks (YAML: a list of networks, or networks: and default:)")  # fmt: skip
    serve.set_defaults(func=_serve)


def _certs_verbs(verbs: Verbs) -> None:
    certs = verbs.add_parser("certs", help="client certificates for TCP access")
    certs_verbs = certs.add_subparsers(dest="certs_verb", metavar="VERB", required=True)
    client = certs_verbs.add_parser(
        "client", help="issue a client bundle (ca.crt, client.crt, client.key)"
    )
    client.add_argument("name")
    client.add_argument("--role", required=True, choices=["reader", "operator", "admin"])
    client.add_argument("-o", "--output", type=Path, required=True)
    client.add_argument("--days", help="validity in days (default 90)")
    _tls_dir_arguments(client)
    client.set_defaults(func=_certs_client)
    revoke = certs_verbs.add_parser(
        "revoke", help="revoke every certificate issued to NAME, or one by --serial"
    )
    revoke.add_argument("name", nargs="?")
    revoke.add_argument("--serial", metavar="HEX", help="the certificate's serial number")
    _tls_dir_arguments(revoke)
    revoke.set_defaults(func=_certs_revoke)
    listing = certs_verbs.add_parser("list", help="the client certificates issued")
    listing.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    _tls_dir_arguments(listing)
    listing.set_defaults(func=_certs_list)


def _tls_dir_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                       help=f"the daemon's state directory (default {DEFAULT_STATE_DIR}); its tls/")  # fmt: skip
    where.add_argument("--tls-dir", type=Path, help="the TLS directory itself (api.tls_dir)")


def _boot(args: argparse.Namespace) -> int:
    if os.getpid() != 1:
        sys.stderr.write(
            "kurmad: error: kurmad boot runs as PID 1 (the kernel's /init, or PID 1 of a new PID "
            "namespace); on a running system use kurmad serve\n"
        )
        return 2
    from kurmad.host import init
    from kurmad.host.power import BootOptions

    init.main(BootOptions(config_file=args.config, cmdline=args.cmdline), _serve_booted_host)


def _serve_booted_host(core: Core, host: Host) -> Daemon:
    """The API over a booted host's core; imported only in the daemon child, never in PID 1
    (grpc threads and PID 1's forks must not meet). host/ may not import api/, so the boot is
    handed this."""
    from kurmad.api.server import Daemon

    return Daemon(core, host)


def _config_validate(args: argparse.Namespace) -> int:
    from kurmad.host.config import validate_file

    problems = validate_file(args.file)
    for problem in problems:
        sys.stderr.write(f"{problem}\n")
    if not problems:
        print(f"{args.file}: ok")
    return 1 if problems else 0


def _serve(args: argparse.Namespace) -> int:
    from kurmad.api.server import Daemon
    from kurmad.core import Core

    Daemon(Core(_serve_settings(args))).run_until_signalled()
    return 0


def _serve_settings(args: argparse.Namespace) -> Settings:
    from kurmad.core import Settings

    networks, default = _network_config(args.network_config)
    return Settings(
        state_dir=args.state_dir, listen=args.listen, insecure=args.insecure, socket=args.socket,
        cgroup_parent=args.cgroup_parent, image_quota=args.image_quota, networks=networks,
        default_network=default, host_volumes=_absolute_dirs(args.allow_host_volume),
        pids_limit=_positive(args.pids_limit, "--pids-limit"), strict_images=args.strict_images,
        registries=_registry_settings(args),
    )  # fmt: skip


def _registry_settings(args: argparse.Namespace) -> RegistrySettings:
    """The --registry-config file's settings with the flags' added (ValueError names the fault)."""
    import yaml

    from kurmad.images.oci.settings import RegistrySettings

    document: dict[str, Any] = {}
    if args.registry_config is not None:
        try:
            document = yaml.safe_load(args.registry_config.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ValueError(f"--registry-config {args.registry_config}: {err}") from None
        if not isinstance(document, dict):
            raise ValueError(f"--registry-config {args.registry_config}: must be a mapping")
    document["insecure"] = [*document.get("insecure", []), *args.insecure_registry]
    document["search"] = [*document.get("search", []), *args.search_registry]
    if args.docker_config is not None:
        document["docker_config"] = str(args.docker_config)
    return RegistrySettings.from_json(document, str(args.registry_config or "registries"))


def _absolute_dirs(paths: list[Path]) -> tuple[Path, ...]:
    for path in paths:
        if not path.is_absolute() or not path.is_dir():
            raise ValueError(f"--allow-host-volume {path}: give an absolute path of a directory")
    return tuple(paths)


def _positive(value: int, option: str) -> int:
    if value < 1:
        raise ValueError(f"{option} {value}: must be at least 1")
    return value


def _network_config(path: Path | None) -> tuple[tuple[NetworkSpec, ...], str | None]:
    """The pod networks of a ``--network-config`` file, checked (ValueError names the fault)."""
    if path is None:
        return (), None
    import yaml

    from kurmad.net.config import NetworkError, parse_networks

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None
    networks, default = (data, None) if isinstance(data, list) else (
        (data or {}).get("networks", []), (data or {}).get("default"))  # fmt: skip
    try:
        return parse_networks(networks), default
    except NetworkError as err:
        raise ValueError(f"{path}: {err}") from None


def _tls_files(args: argparse.Namespace) -> TLSFiles:
    from kurmad.api.auth import TLSFiles

    return TLSFiles(args.tls_dir or args.state_dir / "tls")


def _certs_client(args: argparse.Namespace) -> int:
    from kurmad.api.auth import (
        CLIENT_DAYS,
        check_client_name,
        ensure_server_material,
        issue_client,
        parse_days,
    )

    tls = _tls_files(args)
    check_client_name(args.name)  # before a CA is made for nothing
    days = parse_days(args.days) if args.days is not None else CLIENT_DAYS
    ensure_server_material(tls, [])
    issued = issue_client(tls, args.name, args.role, args.output, days)
    print(f"{args.output}: ca.crt, client.crt, client.key for {args.name} ({args.role}), "
          f"serial {issued.serial:x}, valid until {issued.not_after:%Y-%m-%d %H:%M} UTC")  # fmt: skip
    return 0


def _certs_revoke(args: argparse.Namespace) -> int:
    from kurmad.api.auth import parse_serial, revoke

    serial = parse_serial(args.serial) if args.serial is not None else None
    done = revoke(_tls_files(args), args.name, serial)
    what = f"{args.name}: " if args.name else ""
    parts = [f"{len(done.added)} certificate(s) revoked"]
    if done.already:
        parts.append(f"{len(done.already)} already were")
    if done.unregistered:
        parts.append(f"serial {', '.join(format(s, 'x') for s in done.unregistered)} is not in "
                     "the registry (issued before it, or by another CA)")  # fmt: skip
    print(what + "; ".join(parts))
    return 0


def _certs_list(args: argparse.Namespace) -> int:
    from kurmad.api.auth import CertificateError, issued_clients, revoked_serials
    from kurmad.cli.render import emit, table

    tls = _tls_files(args)
    if not tls.ca_cert.exists():
        raise CertificateError(f"no certificate authority in {tls.directory}")
    revoked = revoked_serials(tls)
    clients = issued_clients(tls)
    if args.output != "table":
        emit([{**c.to_json(), "revoked": c.serial in revoked} for c in clients], args.output)
        return 0
    table(["NAME", "ROLE", "SERIAL", "EXPIRES", "REVOKED"],
          [[c.name, c.role, f"{c.serial:x}", f"{c.not_after:%Y-%m-%d %H:%M}",
            "yes" if c.serial in revoked else "no"] for c in clients])  # fmt: skip
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
