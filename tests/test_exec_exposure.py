"""exec exposes nothing of the host (issue 11, item 3).

runc's CVE-2019-5736 needs one thing: a process of the runtime, visible in the container's PID
namespace, whose /proc/<pid>/exe is the host's runtime binary. kurmad's pod init lives in the
pod's PID namespace and ``enter`` forks into it, so these tests attack from inside a pod the way
that exploit does, while the test enters the pod again and again, and assert that no attempt
reaches a host file: no exe that is a host path or opens for writing, no root, cwd or fd through
which a marker file outside the pod can be found."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import Any

import pytest

from kurmad.appc import DEFAULT_CAPABILITIES, PodManifest
from kurmad.images.store import ImageStore
from kurmad.linux.cgroups import CgroupDriver
from kurmad.pods.manager import PodManager
from kurmad.pods.model import Pod

from .busybox import busybox_path, import_busybox

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or busybox_path() is None,
    reason="needs root and busybox (apt-get install busybox-static)",
)

ENTERS = 60
ALL_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE

# The attacker: a busy loop over every process of its pod but itself, in shell builtins only
# (no fork, so it keeps up). It reports what it saw to its log, one line each:
#   seen P             a new process P (also added to /tmp/seen, for the enters to wait on)
#   exe P LINK         P's executable opened, and it is not the pod's own busybox (LINK is
#                      that of the open file, so a process that execs meanwhile cannot blur it)
#   writable-exe P     P's executable opened for writing (``true >>`` writes nothing, even
#                      then; ``true``, not ``:``, whose failed redirection would end the shell)
#   root|cwd P         the marker file $MARKER, outside the pod, is reachable through P's root
#                      or working directory (``..`` climbs to the top of P's mount tree)
#   fd P N             ... or through P's open file N
ATTACKER = r"""
deep=../../../../../../../../../../../../../../../../../../../../../../../../
seen=" "
: > /tmp/seen
while :; do
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    [ "$p" = "$$" ] && continue
    case "$seen" in *" $p "*) ;; *) seen="$seen$p "; echo "seen $p"; echo "$p" >> /tmp/seen;; esac
    if [ -r $d/exe ] && ! [ $d/exe -ef /bin/busybox ]; then
      { echo "exe $p $(readlink /proc/$$/fd/9)"; } 2>/dev/null 9< $d/exe
    fi
    if true 2>/dev/null >> $d/exe; then echo "writable-exe $p"; fi
    for link in root cwd; do
      if [ -e "$d/$link/$deep$MARKER" ]; then echo "$link $p"; fi
    done
    for f in $d/fd/*; do
      if [ -e "$f/$deep$MARKER" ]; then echo "fd $p ${f##*/}"; fi
    done
  done
done
"""
# Each entered command waits until the attacker has seen it, so every enter happens while the
# attack runs (no sleeps to tune); the wait is bounded by wait_enter's timeout.
ENTERED = ["/bin/sh", "-c", "until grep -qx $$ /tmp/seen; do sleep 0.01; done"]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("exposure")
    marker = root / "host-marker"
    marker.write_text("a host file no pod may reach\n")
    store = ImageStore(root / "store", durable=False)
    image = import_busybox(store)
    cgroup_parent = f"/kurmad-exposure-{os.getpid()}"
    manager = PodManager(root / "state", store, cgroup_parent=cgroup_parent)
    yield manager, image.id, marker
    for pod in manager.pods():
        manager.remove(pod.uuid, force=True)
    manager.close()
    store.close()
    CgroupDriver(cgroup_parent).cgroup("").remove()


def pod_manifest(image_id: str, script: str, env: dict[str, str], **app: Any) -> PodManifest:
    return PodManifest.from_json({"acKind": "PodManifest", "acVersion": "0.8.11", "apps": [{
        "name": "main", "image": {"id": image_id},
        "app": {"exec": ["/bin/sh", "-c", script], "user": "0", "group": "0",
                "environment": [{"name": k, "value": v} for k, v in env.items()], **app}}]})  # fmt: skip


def log_lines(manager: PodManager, pod: Pod) -> list[str]:
    return [r.line.decode() for r in manager.logs(pod.uuid) if r.stream == "stdout"]


def enter_and_wait(manager: PodManager, pod: Pod, argv: list[str]) -> tuple[int | None, bytes]:
    read_end, write_end = os.pipe()
    null = os.open("/dev/null", os.O_RDONLY)
    try:
        entered = manager.enter(pod.uuid, None, argv, stdio=[null, write_end, write_end])
    finally:
        os.close(null)
        os.close(write_end)
    code = manager.wait_enter(entered.pid, 20)
    with os.fdopen(read_end, "rb") as out:
        return code, out.read()


def host_reaches(lines: list[str]) -> list[str]:
    """The attacker's reports that mean a host file was reached: an executable that is neither
    the sealed copy nor busybox (a command that exec'd between the two looks), one opened for
    writing, or the marker found."""
    hits = []
    for line in lines:
        kind, _, rest = line.partition(" ")
        if kind == "exe":
            link = rest.partition(" ")[2]
            if not link.startswith("/memfd:") and link != "/bin/busybox":
                hits.append(line)
        elif kind in ("writable-exe", "root", "cwd", "fd"):
            hits.append(line)
    return hits


@pytest.mark.parametrize(
    "ptrace", [False, True], ids=["default-capabilities", "with-CAP_SYS_PTRACE"]
)
def test_a_pod_attacking_through_proc_while_it_is_entered_reaches_no_host_file(
    env, ptrace: bool
) -> None:
    manager, image_id, marker = env
    isolators = []
    if ptrace:  # an admin may grant it; then the pod can open what /proc/1 points at
        capabilities = [*DEFAULT_CAPABILITIES, "CAP_SYS_PTRACE"]
        isolators = [{"name": "os/linux/capabilities-retain-set", "value": {"set": capabilities}}]
    pod = manager.create(
        pod_manifest(image_id, ATTACKER, {"MARKER": str(marker)}, isolators=isolators),
        allow_privileged=ptrace,  # CAP_SYS_PTRACE is beyond the default set: an admin's grant
    )
    manager.start(pod.uuid)
    try:
        for _ in range(ENTERS):
            code, out = enter_and_wait(manager, pod, ENTERED)
            assert code == 0, out
    finally:
        manager.stop(pod.uuid, grace=0)
    lines = log_lines(manager, pod)
    seen = {line.split()[1] for line in lines if line.startswith("seen ")}
    assert len(seen - {"1"}) >= ENTERS, "the attacker saw every entered command"
    reached = host_reaches(lines)
    processes = {line.split()[1] for line in reached}
    assert reached == [], f"{len(processes)} processes reached the host: {reached[:5]}"
    opened = [line for line in lines if line.startswith("exe ")]
    if ptrace:  # it could open the pod init's executable: the sealed copy, nothing else
        assert any(line.startswith("exe 1 /memfd:") for line in opened), lines
    else:  # non-dumpable until exec: not even the sealed copy opens
        assert opened == [], opened


def test_kurmads_processes_run_a_sealed_copy_of_the_interpreter(env) -> None:
    manager, image_id, _ = env
    pod = manager.create(pod_manifest(image_id, "sleep 30", {}))
    manager.start(pod.uuid)
    try:
        pod_init = manager._find(pod.uuid).pid
        assert pod_init is not None
        for pid in (pod_init, manager._launcher.pid):
            exe = f"/proc/{pid}/exe"
            assert os.readlink(exe).startswith("/memfd:"), os.readlink(exe)
            fd = os.open(exe, os.O_RDONLY)
            try:
                assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) == ALL_SEALS
            finally:
                os.close(fd)
            with pytest.raises(OSError) as refused:
                os.open(exe, os.O_WRONLY)
            assert refused.value.errno in (errno.ETXTBSY, errno.EPERM)
    finally:
        manager.stop(pod.uuid, grace=0)


def test_the_pod_init_lives_in_a_root_of_its_own(env) -> None:
    manager, image_id, marker = env
    pod = manager.create(pod_manifest(image_id, "sleep 30", {}))
    manager.start(pod.uuid)
    try:
        pod_init = manager._find(pod.uuid).pid
        root = Path(f"/proc/{pod_init}/root")
        pod_dir = manager.root / pod.uuid
        assert sorted(os.listdir(root)) == sorted(os.listdir(pod_dir))
        assert os.readlink(f"/proc/{pod_init}/cwd") == "/"
        assert not (root / str(marker).lstrip("/")).exists()
        assert not (root / ("../" * 30) / str(marker).lstrip("/")).exists()
    finally:
        manager.stop(pod.uuid, grace=0)


# The shell's own open files (``; exit`` keeps it from exec'ing ls in its place).
LIST_FDS = "ls /proc/$$/fd; exit 0"


def fd_listing(out: bytes) -> list[str]:
    return sorted(out.decode().split(), key=int)


def test_an_entered_command_has_only_its_stdio_open(env) -> None:
    manager, image_id, _ = env
    pod = manager.create(pod_manifest(image_id, "sleep 30", {}))
    manager.start(pod.uuid)
    try:
        code, out = enter_and_wait(manager, pod, ["/bin/sh", "-c", LIST_FDS])
        assert code == 0 and fd_listing(out) == ["0", "1", "2"], out
    finally:
        manager.stop(pod.uuid, grace=0)


def test_an_entered_command_on_a_terminal_has_only_the_terminal_open(env) -> None:
    manager, image_id, _ = env
    pod = manager.create(pod_manifest(image_id, "sleep 30", {}))
    manager.start(pod.uuid)
    try:
        entered = manager.enter(pod.uuid, None, ["/bin/sh", "-c", LIST_FDS], stdio=None)
        assert entered.terminal is not None
        out = b""
        with contextlib.suppress(OSError):  # EIO once the command has closed its side
            while chunk := os.read(entered.terminal, 4096):
                out += chunk
        os.close(entered.terminal)
        assert manager.wait_enter(entered.pid, 20) == 0
        assert fd_listing(out) == ["0", "1", "2"], out
    finally:
        manager.stop(pod.uuid, grace=0)


def test_an_app_starts_with_only_its_stdio_open(env) -> None:
    manager, image_id, _ = env
    pod = manager.create(pod_manifest(image_id, LIST_FDS, {}))
    manager.start(pod.uuid)
    done = manager.wait(pod.uuid, 20)
    assert done.apps[0].exit_code == 0
    assert fd_listing("\n".join(log_lines(manager, done)).encode()) == ["0", "1", "2"]
