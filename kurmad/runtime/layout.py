"""Where a pod's files live: the one owner of the pods directory's layout.

Layout under the pods directory (``STATE/pods``)::

    <uuid>/                 one pod
        pod.json            the pod manager's record (pods/manager.py): written atomically
        runtime.json        what the executor runs (runtime/spec.py), written at each start
        status.json         what the pod init reports (runtime/status.py), atomically, fsynced
        stop.json           the grace period of a requested stop, for the pod init
        resolv.conf         the apps' /etc/resolv.conf
        netns               the pod's network namespace, bind-mounted, while it is wired
        proc/               the pod init's own procfs, once it lives in this directory
        volumes/<name>/     the pod's empty volumes
        apps/<name>/        one app: its log (log, log.1, ...), its terminal (tty.sock),
            fs/             its root filesystem (rootfs/, and overlayfs's upper/ and work/)
    .removing-<uuid>/       a pod being removed (finished at the next start if interrupted)
    .quarantine/<uuid>-<t>/ a pod whose record could not be read, kept for a person

A pod's directory is its pod init's root once its apps are set up, so every path here is also
valid, relative to ``/``, from inside the pod init (``PodDir.inside``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

QUARANTINE = ".quarantine"
REMOVING = ".removing-"


@dataclass(frozen=True)
class AppDir:
    path: Path

    @property
    def scratch(self) -> Path:
        """Where the app's root filesystem is made (rootfs/, upper/, work/)."""
        return self.path / "fs"

    @property
    def tty_socket(self) -> Path:
        """Where the pod init hands out the master of an app's terminal."""
        return self.path / "tty.sock"


@dataclass(frozen=True)
class PodDir:
    path: Path

    @property
    def record(self) -> Path:
        return self.path / "pod.json"

    @property
    def spec(self) -> Path:
        return self.path / "runtime.json"

    @property
    def status(self) -> Path:
        return self.path / "status.json"

    @property
    def stop(self) -> Path:
        return self.path / "stop.json"

    @property
    def resolv_conf(self) -> Path:
        return self.path / "resolv.conf"

    @property
    def netns(self) -> Path:
        return self.path / "netns"

    @property
    def proc(self) -> Path:
        return self.path / "proc"

    def volume(self, name: str) -> Path:
        return self.path / "volumes" / name

    def app(self, name: str) -> AppDir:
        return AppDir(self.path / "apps" / name)

    def inside(self, path: Path) -> Path:
        """``path`` (one of this directory's) as the pod init sees it from its own root."""
        return Path("/", path.relative_to(self.path))


@dataclass(frozen=True)
class PodsDir:
    path: Path

    def pod(self, pod_uuid: str) -> PodDir:
        return PodDir(self.path / pod_uuid)

    def removing(self, pod_uuid: str) -> Path:
        return self.path / f"{REMOVING}{pod_uuid}"

    @property
    def quarantine(self) -> Path:
        return self.path / QUARANTINE
