"""Attempts made in a forked child, each reported back as "ok" or the errno name it failed
with: for tests of what the kernel lets a confined process do."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable


def outcomes_in_child(
    prepare: Callable[[], None], attempts: dict[str, Callable[[], object]]
) -> dict[str, str]:
    """Fork; the child runs ``prepare`` (joins a cgroup, installs a filter, ...) and then each
    attempt. A failure of ``prepare`` itself comes back under the key "child"."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        results: dict[str, str] = {}
        try:
            prepare()
            for name, attempt in attempts.items():
                try:
                    attempt()
                    results[name] = "ok"
                except OSError as err:
                    results[name] = errno.errorcode.get(err.errno or 0, str(err))
        except BaseException as err:
            results["child"] = repr(err)
        os.write(write_end, json.dumps(results).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(data)
