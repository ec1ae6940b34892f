"""Boot as data: an ordered table of named stages (``Stage``), each timed, logged to the console
and kept for Host.Info. A stage that fails leaves the machine degraded but reachable; only a
critical one stops the sequence. The tables themselves are in host/boot.py and host/init.py."""

from __future__ import annotations

import functools
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Generic, TypeVar

from .info import BootStage

T = TypeVar("T")
C = TypeVar("C")


@dataclass(frozen=True)
class Stage(Generic[C]):
    """One row of a sequence: its name (on the console and in Host.Info), its action on the
    sequence's context, whether its failure stops the sequence, the condition under which it
    runs at all, and the stage that runs instead when it fails."""

    name: str
    action: Callable[[C], object]
    critical: bool = False
    when: Callable[[C], bool] | None = None
    fallback: Stage[C] | None = None


class CriticalStageFailed(Exception):
    pass


class StageFailed(Exception):
    """A stage that did part of its work: the error, and what it did all the same."""

    def __init__(self, error: str, detail: str = "") -> None:
        super().__init__(error)
        self.detail = detail


class BootSequence:
    def __init__(
        self, console: Callable[[str], None], records: list[BootStage] | None = None
    ) -> None:
        self.console = console
        self.records = records if records is not None else []

    def run(
        self, name: str, action: Callable[[], T], *, critical: bool = False, debug: bool = False
    ) -> T | None:
        """Run one stage. Its errors are recorded and logged; a critical stage's error stops
        the sequence (CriticalStageFailed), any other lets it go on (the result is None).
        A stage that returns a string has said what it did: that is its detail."""
        started = time.time()
        clock = time.monotonic()
        try:
            result = action()
        except Exception as err:
            detail = err.detail if isinstance(err, StageFailed) else ""
            record = BootStage(
                name, started, time.monotonic() - clock, False, _describe(err), critical, detail
            )
            self.records.append(record)
            self.console(f"[{record.duration * 1000:7.1f} ms] {name}: FAILED: {record.error}")
            if detail:
                self.console(f"{'':14}{name}: {detail}")
            if debug:
                self.console(traceback.format_exc())
            if critical:
                raise CriticalStageFailed(f"{name}: {record.error}") from err
            return None
        detail = result if isinstance(result, str) else ""
        record = BootStage(name, started, time.monotonic() - clock, True, "", critical, detail)
        self.records.append(record)
        self.console(
            f"[{record.duration * 1000:7.1f} ms] {name}: ok{': ' + detail if detail else ''}"
        )
        return result

    def run_stages(
        self, stages: Sequence[Stage[C]], context: C, debug: Callable[[C], bool] = lambda _: False
    ) -> None:
        """Run a table top to bottom; a stage that fails is followed by its fallback, if it has
        one. ``debug`` is asked before each stage (an earlier one may load the config that
        says so)."""
        for first in stages:
            if first.when is not None and not first.when(context):
                continue
            stage: Stage[C] | None = first
            while stage is not None:
                action = functools.partial(stage.action, context)
                self.run(stage.name, action, critical=stage.critical, debug=debug(context))
                stage = stage.fallback if not self.records[-1].ok else None

    def stages(self) -> list[BootStage]:
        return list(self.records)

    def to_json(self) -> list[dict[str, Any]]:
        return [asdict(r) for r in self.records]


def _describe(err: Exception) -> str:
    """Our own errors and the system's speak for themselves; a bug shows its type."""
    text = str(err) or type(err).__name__
    ours = type(err).__module__.startswith("kurmad.")
    if ours or isinstance(err, (OSError, ValueError, LookupError)):
        return text
    return f"{type(err).__name__}: {text}"
