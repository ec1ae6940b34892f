"""Property tests: generated manifests parse, serialise and parse back to the same value."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kurmad import appc

_alnum = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=6)
ac_names = st.lists(_alnum, min_size=1, max_size=3).map("-".join)
ac_identifiers = st.tuples(
    st.lists(_alnum, min_size=1, max_size=2).map(".".join),
    st.lists(ac_names, max_size=2),
).map(lambda t: "/".join([t[0], *t[1]]))
free_text = st.text(max_size=12)
abs_paths = st.lists(ac_names, min_size=1, max_size=3).map(lambda p: "/" + "/".join(p))
quantities = st.tuples(
    st.integers(0, 10**6), st.sampled_from(["", "m", "k", "K", "M", "G", "Ki", "Mi", "Gi"])
).map(lambda t: f"{t[0]}{t[1]}")
env_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,8}", fullmatch=True)


def named_values(names: st.SearchStrategy[str], values: st.SearchStrategy[str] = free_text):
    return st.dictionaries(names, values, max_size=4).map(
        lambda d: [{"name": k, "value": v} for k, v in d.items()]
    )


labels = named_values(ac_identifiers.filter(lambda n: n not in ("name", "os", "arch")))
os_arch_labels = st.sampled_from(
    [
        [],
        [{"name": "os", "value": "linux"}],
        [{"name": "os", "value": "linux"}, {"name": "arch", "value": "amd64"}],
    ]
)

isolators = st.one_of(
    st.builds(lambda q: {"name": "resource/memory", "value": {"limit": q}}, quantities),
    st.builds(
        lambda r, q: {"name": "resource/cpu", "value": {"request": r, "limit": q}},
        quantities,
        quantities,
    ),
    st.builds(
        lambda q: {"name": "resource/block-iops", "value": {"default": True, "limit": q}},
        quantities,
    ),
    st.builds(lambda b: {"name": "os/linux/no-new-privileges", "value": b}, st.booleans()),
    st.builds(lambda n: {"name": "os/linux/cpu-shares", "value": n}, st.integers(2, 262144)),
    st.builds(lambda n: {"name": "os/linux/oom-score-adj", "value": n}, st.integers(-1000, 1000)),
    st.builds(
        lambda s: {"name": "os/unix/sysctl", "value": s},
        st.dictionaries(
            st.from_regex(r"[a-z]+(\.[a-z_]+){1,2}", fullmatch=True), free_text, max_size=3
        ),
    ),
    st.builds(
        lambda name, v: {"name": name, "value": v},
        ac_identifiers.map(lambda n: "example.com/" + n),
        st.integers(),
    ),
)

ports = st.builds(
    lambda name, proto, port, count, sa: {
        "name": name,
        "protocol": proto,
        "port": port,
        "count": count,
        "socketActivated": sa,
    },
    ac_names,
    st.sampled_from(["tcp", "udp"]),
    st.integers(1, 60000),
    st.integers(1, 100),
    st.booleans(),
)

apps = st.fixed_dictionaries(
    {
        "user": st.sampled_from(["0", "1000", "nobody", "/bin/sh"]),
        "group": st.sampled_from(["0", "users"]),
    },
    optional={
        "exec": st.lists(free_text, max_size=3).map(lambda a: ["/bin/app", *a]),
        "supplementaryGIDs": st.lists(st.integers(0, 65535), max_size=3),
        "workingDirectory": abs_paths,
        "environment": named_values(env_names),
        "isolators": st.lists(isolators, max_size=3),
        "mountPoints": st.lists(
            st.builds(
                lambda n, p, ro: {"name": n, "path": p, "readOnly": ro},
                ac_names,
                abs_paths,
                st.booleans(),
            ),
            max_size=2,
        ),
        "ports": st.lists(ports, max_size=2, unique_by=lambda p: p["name"]),
        "eventHandlers": st.sampled_from(
            [
                [],
                [{"name": "pre-start", "exec": ["/a"]}],
                [{"name": "post-stop", "exec": ["/b", "x"]}],
            ]
        ),
        "userLabels": st.dictionaries(free_text, free_text, max_size=2),
    },
)

image_ids = st.text("0123456789abcdef", min_size=128, max_size=128).map(lambda h: "sha512-" + h)

image_manifests = st.fixed_dictionaries(
    {
        "acKind": st.just("ImageManifest"),
        "acVersion": st.sampled_from(["0.8.11", "0.7.4", "1.0.0-rc.1"]),
        "name": ac_identifiers,
    },
    optional={
        "labels": st.tuples(os_arch_labels, labels).map(lambda t: t[0] + t[1]),
        "app": apps,
        "annotations": named_values(
            ac_identifiers.filter(lambda n: n not in ("created", "homepage", "documentation"))
        ),
        "dependencies": st.lists(
            st.fixed_dictionaries(
                {"imageName": ac_identifiers},
                optional={"imageID": image_ids, "size": st.integers(0, 2**40)},
            ),
            max_size=3,
        ),
        "pathWhitelist": st.lists(abs_paths, max_size=3),
    },
)

volumes = st.one_of(
    st.builds(
        lambda n, s, ro: {"name": n, "kind": "host", "source": s, "readOnly": ro},
        ac_names,
        abs_paths,
        st.booleans(),
    ),
    st.builds(
        lambda n, m, u: {"name": n, "kind": "empty", "mode": m, "uid": u},
        ac_names,
        st.sampled_from(["0755", "0700"]),
        st.integers(0, 9999),
    ),
)

pod_manifests = st.fixed_dictionaries(
    {
        "acKind": st.just("PodManifest"),
        "acVersion": st.just("0.8.11"),
        "apps": st.lists(
            st.fixed_dictionaries(
                {"name": ac_names, "image": st.fixed_dictionaries({"id": image_ids}, optional={"name": ac_identifiers, "labels": labels})},
                optional={"app": apps, "readOnlyRootFS": st.booleans(),
                          "mounts": st.lists(st.builds(lambda v, p: {"volume": v, "path": p}, ac_names, abs_paths), max_size=2)},
            ),
            max_size=3, unique_by=lambda a: a["name"],
        ),
    },
    optional={
        "volumes": st.lists(volumes, max_size=3, unique_by=lambda v: v["name"]),
        "isolators": st.lists(isolators, max_size=2),
        "ports": st.lists(
            st.builds(lambda n, hp: {"name": n, "hostPort": hp}, ac_names, st.integers(1, 65535)),
            max_size=2, unique_by=lambda p: p["name"],
        ),
    },
)  # fmt: skip


def _through_text(doc: dict[str, Any]) -> Any:
    return json.loads(json.dumps(doc))


@settings(max_examples=300, deadline=None)
@given(image_manifests)
def test_image_manifest_round_trips(doc: dict[str, Any]) -> None:
    manifest = appc.ImageManifest.from_json(_through_text(doc))
    again = appc.ImageManifest.loads(manifest.dumps())
    assert again == manifest
    assert again.dumps() == manifest.dumps()


@settings(max_examples=300, deadline=None)
@given(pod_manifests)
def test_pod_manifest_round_trips(doc: dict[str, Any]) -> None:
    manifest = appc.PodManifest.from_json(_through_text(doc))
    again = appc.PodManifest.loads(manifest.dumps())
    assert again == manifest
    assert again.dumps() == manifest.dumps()


@settings(max_examples=200, deadline=None)
@given(volumes)
def test_volume_string_form_round_trips(doc: dict[str, Any]) -> None:
    volume = appc.Volume.from_json(doc, "")
    assert appc.Volume.from_string(str(volume)) == volume
