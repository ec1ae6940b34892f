"""Shared pieces of the benchmarks: timing, medians, ratios, scratch space.

Machines here are shared and noisy, so every figure is a median over alternating runs of
kurmad and its peer in the same process, and the result that counts is their ratio.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

PYTHON = sys.executable  # the real interpreter, not a slow pyenv shim


@dataclass
class Series:
    name: str
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def line(self) -> str:
        runs = ", ".join(f"{s:.3f}" for s in self.seconds)
        return f"{self.name:<34} median {self.median:8.3f} s   runs: {runs}"


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def alternate(
    rounds: int,
    contenders: dict[str, Callable[[], object]],
    prepare: Callable[[], None] = lambda: None,
) -> dict[str, Series]:
    """Run every contender once per round, in alternating order, ``prepare`` before each run."""
    series = {name: Series(name) for name in contenders}
    names = list(contenders)
    for round_ in range(rounds):
        order = names if round_ % 2 == 0 else list(reversed(names))
        for name in order:
            prepare()
            series[name].seconds.append(timed(contenders[name]))
    return series


@contextlib.contextmanager
def scratch(prefer_tmpfs: bool = True, size: str = "6g") -> Iterator[Path]:
    """A scratch directory, on a private tmpfs when running as root (no disk noise)."""
    path = Path(tempfile.mkdtemp(prefix="kurmad-bench-"))
    mounted = False
    if prefer_tmpfs and os.geteuid() == 0:
        mounted = (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
            ).returncode
            == 0
        )
    try:
        yield path
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)
        shutil.rmtree(path, ignore_errors=True)


def fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def report(
    title: str, series: dict[str, Series], kurmad: str, peer: str, goal: float | None = None
) -> float:
    ratio = series[kurmad].median / series[peer].median
    print(f"\n== {title}")
    for s in series.values():
        print("  " + s.line())
    met = "met" if goal is not None and ratio <= goal else "NOT met"
    verdict = "" if goal is None else f"  (goal <= {goal:.2f}: {met})"
    print(f"  ratio {kurmad} / {peer} = {ratio:.2f}{verdict}")
    return ratio


HYBRID_ESCAPE = "KURMAD_BENCH_IN_NAMESPACE"


def leave_hybrid_cgroups(module: str) -> None:
    """crun (and podman through it) refuse hybrid cgroup hosts; re-run ``module`` in a private
    mount namespace without the cgroup2 mount. Everything measured then runs in it, kurmad too."""
    if not Path("/sys/fs/cgroup/unified").is_mount() or os.environ.get(HYBRID_ESCAPE):
        return
    script = f"umount /sys/fs/cgroup/unified && exec {PYTHON} -m {module} " + " ".join(sys.argv[1:])
    os.execvpe(
        "unshare",
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        {**os.environ, HYBRID_ESCAPE: "1"},
    )


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]
