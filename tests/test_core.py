"""The core's doors, which the API and the boot share: an import announced once whoever asks
for it, and pods made with the same checks for a request and for the boot config's system pods;
and the core's settings from the boot config."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kurmad.core import Core, Settings
from kurmad.host.config import BootConfig, LoadedConfig
from kurmad.host.control import Host
from kurmad.host.power import BootOptions
from kurmad.host.sections import ApiConfig
from kurmad.host.tasks import FALLBACK_STATE_DIR, BootState, api_settings, import_images
from kurmad.linux.cgroups import CgroupDriver
from kurmad.pods.builder import RunRequest
from kurmad.pods.events import Event
from kurmad.pods.model import PodState
from kurmad.pods.privileges import PrivilegeRequired

from .busybox import busybox_path, write_busybox_aci
from .tarcraft import aci, file, image_manifest

PARENT = f"/kurmad-test-{os.getpid()}-core"
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or busybox_path() is None,
    reason="needs root and busybox (apt-get install busybox-static)",
)


def boot_state(config: BootConfig) -> BootState:
    state = BootState(BootOptions(), serve=lambda core, host: None, console=lambda _: None,
                      host=Host())  # fmt: skip
    state.loaded = LoadedConfig(config)
    return state


@pytest.fixture
def core(tmp_path: Path) -> Iterator[Core]:
    core = Core(Settings(state_dir=tmp_path / "state", cgroup_parent=PARENT))
    yield core
    for pod in core.manager.pods():
        core.manager.remove(pod.uuid, force=True)
    core.close()
    CgroupDriver(PARENT).cgroup("").remove()


@needs_root
def test_an_image_is_announced_once_whether_the_boot_or_a_caller_imports_it(
    core: Core, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    published: list[Event] = []
    monkeypatch.setattr(core.events, "publish", published.append)
    aci = write_busybox_aci(tmp_path / "busybox.aci", ["/bin/true"])
    state = boot_state(BootConfig(images=(str(tmp_path / "*.aci"),)))
    state.core = core
    assert import_images(state) == "1 image(s): example.com/busybox"
    with open(aci, "rb") as again:
        assert core.import_image(again).created is False
    assert [(e.kind, e.action, e.name) for e in published] == [
        ("image", "imported", "example.com/busybox")
    ]


@needs_root
def test_a_pod_is_made_with_the_same_checks_for_everyone(core: Core, tmp_path: Path) -> None:
    with open(write_busybox_aci(tmp_path / "busybox.aci", ["/bin/true"]), "rb") as aci:
        core.import_image(aci)
    run = RunRequest(image="example.com/busybox", exec=[], env={}, volumes=[], host_network=True)
    with pytest.raises(PrivilegeRequired, match="the host's network"):
        core.create_pod(run, "ntp", admin=False, start=False)
    made = core.create_pod(run, "ntp", admin=True, start=False)
    assert (made.name, made.state) == ("ntp", PodState.NEW)


def test_the_boot_config_gives_the_core_its_settings() -> None:
    api = ApiConfig(listen="0.0.0.0:7777", tls_dir="/etc/kurma/tls", allow_host_volumes=("/srv",))
    state = boot_state(BootConfig(state_dir=Path("/var/lib/kurmad"), api=api, cgroup_parent="k"))
    state.state_disk = Path("/mnt/data")
    settings = api_settings(state)
    assert settings == Settings(
        state_dir=Path("/mnt/data"), listen="0.0.0.0:7777", tls_dir=Path("/etc/kurma/tls"),
        cgroup_parent="k", networks=BootConfig().pod_networks, host_volumes=(Path("/srv"),),
    )  # fmt: skip
    state.fallback_api = True
    fallback = api_settings(state)
    assert (fallback.state_dir, fallback.listen) == (FALLBACK_STATE_DIR, None)
    assert state.config.api.listen == "0.0.0.0:7777"  # decided in the boot state, not the config


def test_strict_images_reach_the_store_from_the_boot_config_and_from_serve(tmp_path: Path) -> None:
    from kurmad.__main__ import _serve_settings, build_parser
    from kurmad.host.config import load

    (tmp_path / "kurma.yml").write_text("strict_images: true\n")
    loaded = load(base_file=tmp_path / "kurma.yml")
    assert loaded.errors == [] and loaded.config.strict_images
    (tmp_path / "bad.yml").write_text("strict_images: sure\n")
    assert any("strict_images" in e for e in load(base_file=tmp_path / "bad.yml").errors)
    state = boot_state(loaded.config)
    state.state_disk = tmp_path / "boot"
    assert api_settings(state).strict_images
    args = build_parser().parse_args(
        ["serve", "--state-dir", str(tmp_path / "s"), "--strict-images"]
    )
    settings = _serve_settings(args)
    assert settings.strict_images
    core = Core(settings)
    try:
        setuid = tmp_path / "su.aci"
        setuid.write_bytes(aci(image_manifest("example.com/su"), [file("su", "x", 0o4755)]))
        with pytest.raises(Exception, match="setuid or setgid; the strict store refuses that"):
            core.import_image(setuid.open("rb"))
    finally:
        core.close()
