"""Every case of the appc conformance vectors, fed to the parser its kind names.

A valid case must parse (and where given, produce ``expected_output``) and round-trip through
its serialised form; an invalid case must raise ValidationError with a message, never any other
exception.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest

from kurmad import appc
from kurmad.appc import _json
from kurmad.appc.app import parse_exec
from kurmad.appc.labels import go_os_arch
from kurmad.appc.scalars import date_from_json, url_from_json
from kurmad.images.discovery import discover

from .conftest import APPC_DATA

VECTORS: list[dict[str, Any]] = json.loads((APPC_DATA / "appc-vectors.json").read_text())


def _from_json(parse: Callable[[Any, str], Any]) -> Callable[[dict[str, Any]], Any]:
    return lambda case: parse(_json.loads(case["input"]), "")


def _manifest(kind: type[appc.ImageManifest] | type[appc.PodManifest]) -> Callable[..., Any]:
    def check(case: dict[str, Any]) -> Any:
        manifest = kind.loads(case["input"])
        assert kind.from_json(json.loads(manifest.dumps())) == manifest
        return manifest

    return check


def _labels(case: dict[str, Any]) -> Any:
    labels = appc.Labels.from_json(_json.loads(case["input"]), "")
    assert appc.Labels.from_json(labels.to_json(), "") == labels
    if "os" in labels and "arch" in labels:
        go = go_os_arch(labels["os"], labels["arch"])
        return None if go is None else dict(zip(("goos", "goarch", "goarm"), go, strict=True))
    return None


def _quantity(case: dict[str, Any]) -> Any:
    text = case["input"]
    quantity = appc.Quantity.parse(text)
    if not text.startswith(("+", "-")):
        # the reference test also requires the signed forms to parse
        assert appc.Quantity.parse("-" + text).amount == -quantity.amount
        assert appc.Quantity.parse("+" + text).amount == quantity.amount
    return quantity


def _volume_string(case: dict[str, Any]) -> str:
    volume = appc.Volume.from_string(case["input"])
    assert appc.Volume.from_json(volume.to_json(), "") == volume
    return str(volume)


def _app_string(case: dict[str, Any]) -> dict[str, Any]:
    parsed = appc.AppString.parse(case["input"])
    return {"name": parsed.name, "labels": dict(parsed.labels)}


def _dependency(case: dict[str, Any]) -> Any:
    dep = appc.Dependency.from_json(_json.loads(case["input"]), "")
    assert "imageID" not in dep.to_json() or dep.image_id
    return dep


def _roundtrip(parse: Callable[[Any, str], Any]) -> Callable[[dict[str, Any]], Any]:
    def check(case: dict[str, Any]) -> Any:
        value = parse(_json.loads(case["input"]), "")
        assert parse(value.to_json(), "") == value
        return value

    return check


def _discovery(case: dict[str, Any]) -> dict[str, Any]:
    pages: dict[str, str] = case["pages"]

    def fetch(url: str) -> tuple[int, str]:
        parts = urlsplit(url)
        assert parts.query == "ac-discovery=1"
        key = (parts.netloc + parts.path).rstrip("/")
        return (200, pages[key]) if key in pages else (404, "")

    app = appc.AppString(appc.ACIdentifier(case["app"]["name"]), appc.Labels(case["app"]["labels"]))
    result = discover(app, fetch)
    expected = case["expected"]
    assert [(e.aci, e.asc) for e in result.aci_endpoints] == [
        (e["aci"], e["asc"]) for e in expected["aci_endpoints"] or []
    ]
    assert result.pubkeys == (expected["pubkeys"] or [])
    if not result.aci_endpoints:
        raise appc.ValidationError("", f"no ACI endpoint discovered for {app}")
    return {}


PARSERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "image_manifest": _manifest(appc.ImageManifest),
    "pod_manifest": _manifest(appc.PodManifest),
    "acidentifier": lambda c: appc.ACIdentifier(c["input"]),
    "acidentifier_sanitize": lambda c: appc.sanitize_ac_identifier(c["input"]),
    "acidentifier_json": _from_json(appc.ACIdentifier.from_json),
    "acname": lambda c: appc.ACName(c["input"]),
    "acname_sanitize": lambda c: appc.sanitize_ac_name(c["input"]),
    "acname_json": _from_json(appc.ACName.from_json),
    "ackind_json": _from_json(appc.ACKind.from_json),
    "semver": lambda c: appc.SemVer.parse(c["input"]),
    "semver_json": _from_json(appc.SemVer.from_json),
    "hash": lambda c: appc.ImageID(c["input"]),
    "isolator_json": _roundtrip(appc.Isolator.from_json),
    "labels_json": _labels,
    "quantity": _quantity,
    "volume_string": _volume_string,
    "mountpoint_string": lambda c: appc.MountPoint.from_string(c["input"]),
    "app_string": _app_string,
    "query_string": lambda c: appc.make_query_string(c["input"]),
    "uuid": lambda c: appc.parse_uuid(c["input"]),
    "discovery": _discovery,
    "app_json": _roundtrip(appc.App.from_json),
    "annotations_json": _roundtrip(appc.Annotations.from_json),
    "environment_json": _roundtrip(appc.Environment.from_json),
    "port_json": _roundtrip(appc.Port.from_json),
    "dependency_json": _dependency,
    "exec_json": _from_json(parse_exec),
    "date_json": _from_json(date_from_json),
    "url_json": _from_json(url_from_json),
}


def test_every_kind_has_a_parser() -> None:
    kinds = Counter(case["kind"] for case in VECTORS)
    assert len(VECTORS) == 632
    assert len(kinds) == 29
    assert set(kinds) == set(PARSERS)


@pytest.mark.parametrize("case", VECTORS, ids=[f"{i}-{c['kind']}" for i, c in enumerate(VECTORS)])
def test_vector(case: dict[str, Any]) -> None:
    parse = PARSERS[case["kind"]]
    if case["valid"]:
        output = parse(case)
        if "expected_output" in case:
            assert _normalise(output) == case["expected_output"]
    else:
        with pytest.raises(appc.ValidationError) as caught:
            parse(case)
        assert str(caught.value), "an error must say what is wrong"


def _normalise(output: Any) -> Any:
    return str(output) if isinstance(output, str) else output
