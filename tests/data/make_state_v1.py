"""Make tests/data/state-v1/ again: the state directory that kurmad's first layout leaves
behind (state version 1, which carried no version on disk), written by a real ``kurmad serve``
of the last commit before state versions existed, and what that daemon's API said of it.

    sudo .venv/bin/python tests/data/make_state_v1.py        # root: pods, cgroups, a netns

The daemon runs that commit's code (``git archive`` of V1_COMMIT, its working directory, so it
imports nothing of this checkout's) in a network namespace of its own with one bridge network.
Through it: an image of one tiny static program (assembled here: 536 bytes) is imported; pod
``fresh`` is created and left NEW, holding a lease and a published port; ``done`` (two apps, on
the bridge) runs until both apps exit with code 3; ``stopped`` is stopped on request; ``up``
is left RUNNING. The daemon is then stopped (pods live on) and started again, and what it says of
the state it read back is kept; stopped again, its state is copied, without what cannot travel:
sockets and the mount points of network namespaces. Last, everything is removed.

Written: ``state/`` (the copy's files), ``layout.txt`` (every entry with its type and mode, as
git keeps neither empty directories nor modes), ``expected.json`` (the pods, images and logs as
the API showed them) and ``networks.yml`` (the network config it ran with).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from kurmad.linux.cgroups import CgroupDriver  # noqa: E402
from tests.daemon import ServeProcess  # noqa: E402
from tests.netns import NETNS_DIR, namespaces  # noqa: E402
from tests.state_fixture import STATE_V1, api_view  # noqa: E402

V1_COMMIT = "f67433db220cb1bfa0f172594eafbedb78e00238"  # main when state versions came
IMAGE = "kurma.test/hello"
NETWORKS = "networks:\n  - {name: v1net, type: bridge, bridge: kv1br0, subnet: 10.231.0.0/24}\n"
CGROUP_PARENT = "/kurmad-make-state-v1"
LAYOUT_HEADER = """\
# Every entry of state/, as v1 left it: type (d, f, l), mode, path (-> a link's target).
# Git keeps neither empty directories nor modes: tests/state_fixture.py restores them.
"""

# No arguments: one line to stdout, one to stderr, exit 3. Any argument: "up", then pause()
# until a signal ends it.
PROGRAM = r"""
        .globl _start
        .text
_start: cmpq    $1, (%rsp)
        jne     up
        mov     $1, %eax
        mov     $1, %edi
        lea     hello(%rip), %rsi
        mov     $14, %edx
        syscall
        mov     $1, %eax
        mov     $2, %edi
        lea     warn(%rip), %rsi
        mov     $13, %edx
        syscall
        mov     $60, %eax
        mov     $3, %edi
        syscall
up:     mov     $1, %eax
        mov     $1, %edi
        lea     upline(%rip), %rsi
        mov     $3, %edx
        syscall
again:  mov     $34, %eax
        syscall
        jmp     again
        .section .rodata
hello:  .ascii  "hello from v1\n"
warn:   .ascii  "to stderr v1\n"
upline: .ascii  "up\n"
"""


def main() -> int:
    if os.geteuid() != 0:
        sys.stderr.write("make_state_v1: run as root (pods need namespaces and cgroups)\n")
        return 2
    with tempfile.TemporaryDirectory(prefix="kurmad-state-v1-") as scratch:
        work = Path(scratch)
        source = _v1_source(work / "kurmad-v1")
        aci = _tiny_aci(source, work / "image", work / "hello.aci")
        (work / "networks.yml").write_text(NETWORKS)
        with namespaces("v1") as ns:
            serve = ServeProcess(work / "state", "--network-config", str(work / "networks.yml"),
                                 cgroup_parent=CGROUP_PARENT,
                                 prefix=("nsenter", f"--net={NETNS_DIR / ns['v1']}", f"--wd={source}"))  # fmt: skip
            try:
                _populate(serve.start(), aci)
                serve.stop()
                with serve.start().client() as kurma:
                    expected = api_view(kurma)  # as v1 reads it back from disk, not from memory
                serve.stop()
                _write_fixture(serve.state, expected)
                serve.start()
            finally:
                serve.cleanup_pods()
                serve.stop()
                CgroupDriver(CGROUP_PARENT).cgroup("").remove()
    print(f"{STATE_V1}: {sum(1 for _ in STATE_V1.rglob('*'))} entries")
    return 0


def _v1_source(target: Path) -> Path:
    """The v1 commit's tree, as its daemon and kurmactl are to run it."""
    target.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", V1_COMMIT],
                             check=True, capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def _tiny_aci(source: Path, directory: Path, aci: Path) -> Path:
    """The image: the program above, built by v1's ``kurmactl image build``."""
    rootfs = directory / "rootfs"
    rootfs.mkdir(parents=True)
    assembly, program = directory.parent / "hello.s", directory.parent / "hello.o"
    assembly.write_text(PROGRAM)
    subprocess.run(["as", "-o", str(program), str(assembly)], check=True)
    subprocess.run(["ld", "-static", "-n", "-s", "--build-id=none", "-o", str(rootfs / "hello"),
                    str(program)], check=True)  # fmt: skip
    manifest = {"acKind": "ImageManifest", "acVersion": "0.8.11", "name": IMAGE,
                "labels": [{"name": "version", "value": "1.0.0"}, {"name": "os", "value": "linux"},
                           {"name": "arch", "value": "amd64"}],
                "app": {"exec": ["/hello"], "user": "0", "group": "0"}}  # fmt: skip
    (directory / "manifest").write_text(json.dumps(manifest))
    subprocess.run([sys.executable, "-m", "kurmad.cli.kurmactl", "image", "build", str(directory),
                    "-o", str(aci)], check=True, cwd=source)  # fmt: skip
    return aci


def _populate(serve: ServeProcess, aci: Path) -> None:
    image_id = serve.import_image(aci)
    with serve.client() as kurma:
        kurma.run(IMAGE, name="fresh", start=False, env={"GREETING": "from v1"},
                  ports=[(18080, 80, "tcp")])  # fmt: skip
        kurma.create(_two_apps(image_id), name="done")
        kurma.wait("done", timeout=30)
        kurma.run(IMAGE, name="stopped", exec=["/hello", "up"], networks="none")
        kurma.stop("stopped", grace=1)
        kurma.run(IMAGE, name="up", exec=["/hello", "up"], networks="none")


def _two_apps(image_id: str) -> str:
    image = {"name": IMAGE, "id": image_id}
    manifest = {"acKind": "PodManifest", "acVersion": "0.8.11",
                "apps": [{"name": "first", "image": image}, {"name": "second", "image": image}]}  # fmt: skip
    return json.dumps(manifest)


def _write_fixture(state: Path, expected: dict[str, Any]) -> None:
    if (state / "schema.json").exists():
        raise RuntimeError(f"{state} has a schema.json: not v1's code that wrote it")
    shutil.rmtree(STATE_V1, ignore_errors=True)
    (STATE_V1 / "state").mkdir(parents=True)
    layout = [
        _copy_entry(path, state, STATE_V1 / "state") for path in sorted([state, *state.rglob("*")])
    ]
    (STATE_V1 / "layout.txt").write_text(LAYOUT_HEADER + "".join(line for line in layout if line))
    (STATE_V1 / "expected.json").write_text(json.dumps(expected, indent=2, sort_keys=True) + "\n")
    (STATE_V1 / "networks.yml").write_text(NETWORKS)


def _copy_entry(path: Path, state: Path, out: Path) -> str:
    """Copy one entry's content (git keeps no more of it) and return its layout.txt line;
    nothing for what cannot travel: sockets and the mounts of network namespaces."""
    info, relative = path.lstat(), path.relative_to(state)
    if os.path.ismount(path) or not (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)
                                     or stat.S_ISLNK(info.st_mode)):  # fmt: skip
        return ""
    if info.st_uid or info.st_gid:
        raise RuntimeError(f"{path} is not root's: layout.txt would need owners")
    mode = f"{stat.S_IMODE(info.st_mode):04o}"
    if stat.S_ISLNK(info.st_mode):
        os.symlink(os.readlink(path), out / relative)
        return f"l {mode} {relative} -> {os.readlink(path)}\n"
    if stat.S_ISREG(info.st_mode):
        shutil.copy(path, out / relative)
        return f"f {mode} {relative}\n"
    (out / relative).mkdir(exist_ok=True)
    return f"d {mode} {relative}\n"


if __name__ == "__main__":
    sys.exit(main())
