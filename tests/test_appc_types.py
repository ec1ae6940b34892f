"""The appc types beyond the vectors: values, error paths and the rules between fields."""

from __future__ import annotations

import pytest

from kurmad import appc
from kurmad.appc.isolators import CapabilitiesRetainSet, ResourceCPU, ResourceMemory, find_isolator

IMAGE = {"acKind": "ImageManifest", "acVersion": "0.8.11", "name": "example.com/app"}
POD = {"acKind": "PodManifest", "acVersion": "0.8.11"}
APP = {"exec": ["/bin/app"], "user": "0", "group": "0"}


def image_error(**fields: object) -> str:
    with pytest.raises(appc.ValidationError) as caught:
        appc.ImageManifest.from_json({**IMAGE, **fields})
    return str(caught.value)


def test_errors_name_the_field_path_and_the_rule() -> None:
    env = [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}, {"name": "1FOO", "value": "3"}]
    assert (
        image_error(app={**APP, "environment": env})
        == 'app.environment[2].name: "1FOO" must start with a letter or _'
    )
    assert image_error(app={**APP, "ports": [{"name": "p", "protocol": "tcp", "port": 70000}]}) == (
        "app.ports[0].port: 70000 is out of range: must be 1..65535"
    )
    assert image_error(app={"exec": ["/x"], "user": "0"}) == "app.group: is required"
    assert image_error(
        labels=[{"name": "os", "value": "linux"}, {"name": "arch", "value": "arm64"}]
    ).startswith('labels[1].value: bad arch "arm64" for linux')
    assert image_error(
        dependencies=[{"imageName": "a"}, {"imageName": "b", "imageID": "md5-x"}]
    ).startswith('dependencies[1].imageID: "md5-x" is not an image ID')
    assert image_error(
        app={**APP, "isolators": [{"name": "resource/memory", "value": {"limit": "lots"}}]}
    ).startswith('app.isolators[0].value.limit: "lots" is not a quantity')


def test_keys_match_case_insensitively_and_null_means_absent() -> None:
    manifest = appc.ImageManifest.from_json(
        {
            **IMAGE,
            "app": {
                "Exec": ["/a"],
                "USER": "0",
                "group": "0",
                "supplementaryGids": [5],
                "ports": None,
            },
        }
    )
    assert manifest.app is not None
    assert manifest.app.exec == ("/a",) and manifest.app.supplementary_gids == (5,)
    assert manifest.to_json()["app"]["supplementaryGIDs"] == [5]


@pytest.mark.parametrize(
    "text,value,milli",
    [
        ("128974848", 128974848, 128974848000),
        ("125952Ki", 128974848, 128974848000),
        ("123Mi", 128974848, 128974848000),
        ("2G", 2_000_000_000, 2_000_000_000_000),
        ("1K", 1000, 1_000_000),
        ("250m", 1, 250),
        ("0.3", 1, 300),
        ("1e3", 1000, 1_000_000),
        ("1.5Gi", 1610612736, 1610612736000),
        ("-1k", -1000, -1_000_000),
    ],
)
def test_quantities_give_integer_base_units(text: str, value: int, milli: int) -> None:
    quantity = appc.Quantity.parse(text)
    assert (quantity.value, quantity.milli_value) == (value, milli)
    assert quantity.to_json() == text


def test_semver_precedence() -> None:
    order = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2",
             "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.1", "1.10.0", "2.0.0"]  # fmt: skip
    parsed = [appc.SemVer.parse(v) for v in order]
    assert sorted(reversed(parsed)) == parsed
    assert appc.SemVer.parse("1.0.0+build.1") == appc.SemVer.parse("1.0.0+build.1")
    with pytest.raises(appc.ValidationError, match=r"0\.0\.0 is reserved"):
        appc.SemVer.parse("0.0.0")


def test_image_id_knows_whether_it_is_a_full_digest() -> None:
    assert appc.ImageID("sha512-" + "a" * 128).is_full
    assert not appc.ImageID("sha512-abc").is_full
    assert appc.ImageID.from_digest("f" * 128).digest == "f" * 128


def test_capability_and_seccomp_sets_exclude_each_other() -> None:
    retain = {"name": "os/linux/capabilities-retain-set", "value": {"set": ["CAP_KILL"]}}
    remove = {"name": "os/linux/capabilities-remove-set", "value": {"set": ["CAP_CHOWN"]}}
    assert "cannot be combined" in image_error(app={**APP, "isolators": [retain, remove]})
    apparmor = {"name": "os/linux/apparmor-profile", "value": {"profile": "p"}}
    assert image_error(app={**APP, "isolators": [apparmor, apparmor]}).startswith(
        "app.isolators[1]:"
    )
    app = appc.App.from_json({**APP, "isolators": [retain]}, "app")
    found = find_isolator(app.isolators, CapabilitiesRetainSet)
    assert found is not None and found.set == ("CAP_KILL",)


def test_resource_request_defaults_to_limit() -> None:
    cpu = appc.Isolator.from_json({"name": "resource/cpu", "value": {"limit": "500m"}}, "")
    assert isinstance(cpu.value, ResourceCPU)
    assert cpu.value.effective_request.milli_value == 500
    with pytest.raises(appc.ValidationError, match="limit: is required"):
        appc.Isolator.from_json({"name": "resource/memory", "value": {"request": "1G"}}, "i")
    mem = appc.Isolator.of(ResourceMemory(limit=appc.Quantity.parse("1Gi")))
    assert mem.to_json() == {"name": "resource/memory", "value": {"limit": "1Gi"}}


def test_unknown_isolators_are_kept_verbatim() -> None:
    doc = {"name": "example.com/ponies", "value": {"a": [1, 2]}}
    isolator = appc.Isolator.from_json(doc, "")
    assert not isolator.known
    assert isolator.to_json() == doc


def test_volume_rules_hold_for_constructed_values_too() -> None:
    with pytest.raises(appc.ValidationError, match="source: is required for a host volume"):
        appc.Volume(appc.ACName("data"), "host")
    with pytest.raises(appc.ValidationError, match="uid: only applies to empty volumes"):
        appc.Volume(appc.ACName("data"), "host", source="/srv", uid=1)
    empty = appc.Volume(appc.ACName("scratch"), "empty")
    assert empty.effective_mode == 0o755 and empty.effective_recursive
    with pytest.raises(appc.ValidationError, match=r"volumes\[1\].name: duplicate name"):
        appc.PodManifest.from_json({**POD, "volumes": [empty.to_json(), empty.to_json()]})


def test_pod_manifest_requires_image_ids_unless_it_is_an_old_template() -> None:
    app = {
        "name": "web",
        "image": {"name": "example.com/web", "labels": [{"name": "version", "value": "1"}]},
    }
    with pytest.raises(appc.ValidationError, match=r"apps\[0\].image.id: is required"):
        appc.PodManifest.from_json({**POD, "apps": [app]})
    template = appc.PodManifest.from_json({**POD, "acVersion": "0.7.4", "apps": [app]})
    assert not template.is_reified
    reified = appc.PodManifest.from_json(
        {**POD, "apps": [{**app, "image": {"id": "sha512-" + "0" * 128}}]}
    )
    assert reified.is_reified and reified.app("web") is not None


def test_app_string_and_sanitisers() -> None:
    parsed = appc.AppString.parse("example.com/app:1.2.3,os=linux")
    assert parsed.name == "example.com/app" and dict(parsed.labels) == {
        "version": "1.2.3",
        "os": "linux",
    }
    assert str(parsed) == "example.com/app,version=1.2.3,os=linux"
    assert appc.sanitize_ac_name("My App_v2") == "my-app-v2"
    assert appc.sanitize_ac_identifier("Example.COM/My App") == "example.com/myapp"


def test_dates_and_urls() -> None:
    assert appc.parse_date("2014-10-27T19:32:27.67021798Z").year == 2014
    assert appc.parse_date("2014-10-27T19:32:27+02:00").utcoffset().total_seconds() == 7200  # type: ignore[union-attr]
    with pytest.raises(appc.ValidationError):
        appc.parse_date("2014-13-45T19:32:27Z")
    with pytest.raises(appc.ValidationError, match="not an http or https URL"):
        appc.parse_http_url("file:///etc/passwd")


def test_labels_merge_keeps_order_and_overrides_in_place() -> None:
    annotations = appc.Annotations({"a": "1", "b": "2"})
    assert list(annotations.merged({"b": "3", "c": "4"}).items()) == [
        ("a", "1"),
        ("b", "3"),
        ("c", "4"),
    ]
