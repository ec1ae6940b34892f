"""kurmactl verbs that work on files alone, with no daemon: build, check and inspect ACIs and
manifests. kurmad.appc and the ACI code are imported inside the handlers, so that building the
parser (``kurmactl --help``) does not load them."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .output import fail, print_json

if TYPE_CHECKING:
    from kurmad.appc import ImageManifest, PodManifest

# The compressions build writes, as streams.Compression values: spelled here, as its import is heavy.
BUILD_COMPRESSIONS = ("gzip", "zstd", "none")


def add_image_verbs(images: argparse._SubParsersAction) -> None:
    build_cmd = images.add_parser("build", help="build an ACI from a directory")
    build_cmd.add_argument(
        "dir",
        type=Path,
        help="a directory holding manifest and rootfs/, or a rootfs with --manifest",
    )
    build_cmd.add_argument(
        "-o", "--output", required=True, type=Path, help="the .aci file to write"
    )
    build_cmd.add_argument(
        "--manifest", type=Path, help="the image manifest (JSON); DIR is then the rootfs"
    )
    build_cmd.add_argument("--compress", choices=BUILD_COMPRESSIONS, default="gzip")
    build_cmd.add_argument(
        "--keep-owners", action="store_true", help="keep file owners instead of 0:0"
    )
    build_cmd.add_argument("--keep-mtimes", action="store_true", help="keep modification times")
    build_cmd.set_defaults(handler=image_build)

    validate = images.add_parser("validate", help="check ACI files; exit 1 if any is invalid")
    validate.add_argument("files", nargs="+", type=Path)
    validate.add_argument("-o", "--output", choices=["text", "json"], default="text")
    validate.set_defaults(handler=image_validate)

    manifest = images.add_parser("manifest", help="print the manifest of an ACI file as JSON")
    manifest.add_argument("file", type=Path)
    manifest.set_defaults(handler=image_manifest)


def add_manifest_verbs(verbs: argparse._SubParsersAction) -> None:
    manifest = verbs.add_parser("manifest", help="check manifests")
    manifests = manifest.add_subparsers(dest="manifest_verb", metavar="VERB", required=True)
    validate = manifests.add_parser("validate", help="check image or pod manifests (JSON)")
    validate.add_argument("files", nargs="+", type=Path)
    validate.add_argument("-o", "--output", choices=["text", "json"], default="text")
    validate.set_defaults(handler=manifest_validate)


def image_build(args: argparse.Namespace) -> int:
    from kurmad.images.aci import BuildOptions, build
    from kurmad.images.streams import Compression
    from kurmad.linux.files import atomic_writer

    out: Path = args.output
    if out.suffix != ".aci":
        fail(f"{out}: an image archive's name must end in .aci (aci.md)")
    rootfs, manifest = _build_inputs(args.dir, args.manifest)
    options = BuildOptions(
        compression=Compression(args.compress),
        keep_owners=args.keep_owners,
        keep_mtimes=args.keep_mtimes,
        mtime=int(os.environ.get("SOURCE_DATE_EPOCH", "0")),
    )
    with atomic_writer(out) as f:
        image_id = build(rootfs, manifest, f, options)
    print(f"{out}: {image_id}")
    return 0


def _build_inputs(directory: Path, manifest_file: Path | None) -> tuple[Path, ImageManifest]:
    if manifest_file is None:
        manifest_file, rootfs = directory / "manifest", directory / "rootfs"
        if not rootfs.is_dir():
            fail(f"{directory}: no rootfs/ directory (or give --manifest and a rootfs directory)")
    else:
        rootfs = directory
    if not rootfs.is_dir():
        fail(f"{rootfs}: not a directory")
    return rootfs, _load_image_manifest(manifest_file)


def _load_image_manifest(path: Path) -> ImageManifest:
    from kurmad.appc import ImageManifest, ValidationError

    try:
        return ImageManifest.loads(path.read_bytes())
    except OSError as err:
        fail(f"{path}: {err.strerror}")
    except ValidationError as err:
        fail(f"{path}: invalid image manifest: {err}")


def image_validate(args: argparse.Namespace) -> int:
    verdicts = [_check_aci(path) for path in args.files]
    if args.output == "json":
        print_json(verdicts)
    else:
        for v in verdicts:
            print(_verdict_line(v))
    return 0 if all(v["valid"] for v in verdicts) else 1


def _check_aci(path: Path) -> dict[str, Any]:
    from kurmad.images.aci import AciError, read_aci

    try:
        info = read_aci(path)
    except OSError as err:
        return {"file": str(path), "valid": False, "error": err.strerror or str(err)}
    except AciError as err:
        return {"file": str(path), "valid": False, "error": str(err)}
    manifest = info.manifest
    return {
        "file": str(path),
        "valid": True,
        "image_id": info.image_id,
        "name": manifest.name,
        "labels": dict(manifest.labels),
        "compression": info.compression.value,
    }


def _verdict_line(verdict: dict[str, Any]) -> str:
    if not verdict["valid"]:
        return f"{verdict['file']}: invalid: {verdict['error']}"
    version = verdict["labels"].get("version")
    name = f"{verdict['name']}:{version}" if version else verdict["name"]
    return f"{verdict['file']}: valid ACI {name} {verdict['image_id']}"


def image_manifest(args: argparse.Namespace) -> int:
    from kurmad.images.aci import AciError, read_aci

    try:
        info = read_aci(args.file)
    except OSError as err:
        fail(f"{args.file}: {err.strerror}")
    except AciError as err:
        fail(f"{args.file}: {err}")
    print_json(info.manifest.to_json())
    return 0


def manifest_validate(args: argparse.Namespace) -> int:
    verdicts = [_check_manifest(path) for path in args.files]
    if args.output == "json":
        print_json(verdicts)
    else:
        for v in verdicts:
            verdict = f"valid {v['kind']}" if v["valid"] else f"invalid: {v['error']}"
            print(f"{v['file']}: {verdict}")
    return 0 if all(v["valid"] for v in verdicts) else 1


def _check_manifest(path: Path) -> dict[str, Any]:
    from kurmad import appc

    verdict: dict[str, Any] = {"file": str(path), "valid": False, "kind": None}
    try:
        document = appc.loads(path.read_bytes())
        kind = _manifest_kind(document)
        verdict["kind"] = kind.__name__
        kind.from_json(document)
    except OSError as err:
        verdict["error"] = err.strerror or str(err)
    except appc.ValidationError as err:
        verdict["error"] = str(err)
    else:
        verdict["valid"] = True
    return verdict


def _manifest_kind(document: Any) -> type[ImageManifest] | type[PodManifest]:
    from kurmad import appc

    kind = document.get("acKind") if isinstance(document, dict) else None
    if kind == appc.ACKind.POD_MANIFEST:
        return appc.PodManifest
    if kind == appc.ACKind.IMAGE_MANIFEST:
        return appc.ImageManifest
    raise appc.ValidationError("acKind", 'must be "ImageManifest" or "PodManifest"')
