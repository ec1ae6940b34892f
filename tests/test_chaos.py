"""A short run of ``make chaos`` (tests/chaos.py), so that the script and its checks stay true
to the daemon: three SIGKILLs under load, each restart checked."""

from __future__ import annotations

import os

import pytest

from . import chaos
from .busybox import busybox_path


@pytest.mark.skipif(os.geteuid() != 0 or busybox_path() is None, reason="needs root and busybox")
def test_three_sigkills_under_load_leave_everything_consistent() -> None:
    assert chaos.run(rounds=3, seed=11, workers=3, max_load=1.0) == 0
