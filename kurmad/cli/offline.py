"""kurmactl verbs that work on files alone, with no daemon: build, check and inspect ACIs and
manifests."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from kurmad import appc
from kurmad.appc import ImageManifest, PodManifest, ValidationError
from kurmad.images.aci import AciError, BuildOptions, build, read_aci
from kurmad.images.streams import Compression
from kurmad.linux.files import atomic_writer

from .output import fail, print_json


def image_build(args: argparse.Namespace) -> int:
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
    verdict: dict[str, Any] = {"file": str(path), "valid": False, "kind": None}
    try:
        document = appc.loads(path.read_bytes())
        kind = _manifest_kind(document)
        verdict["kind"] = kind.__name__
        kind.from_json(document)
    except OSError as err:
        verdict["error"] = err.strerror or str(err)
    except ValidationError as err:
        verdict["error"] = str(err)
    else:
        verdict["valid"] = True
    return verdict


def _manifest_kind(document: Any) -> type[ImageManifest] | type[PodManifest]:
    kind = document.get("acKind") if isinstance(document, dict) else None
    if kind == appc.ACKind.POD_MANIFEST:
        return PodManifest
    if kind == appc.ACKind.IMAGE_MANIFEST:
        return ImageManifest
    raise ValidationError("acKind", 'must be "ImageManifest" or "PodManifest"')
