"""The short form of a host volume that people type, the one parser for it: ``HOST:PATH[:ro]``
(kurmactl run -v, and the boot config's initial_pods volumes)."""

from __future__ import annotations


def parse_volume(text: str) -> tuple[str, str, bool]:
    """(host path, path in the app, read-only) of ``/HOST/PATH:/APP/PATH[:ro|:rw]``; ValueError
    naming the text otherwise."""
    parts = text.split(":")
    if (
        len(parts) not in (2, 3)
        or not parts[0].startswith("/")
        or not parts[1].startswith("/")
        or (len(parts) == 3 and parts[2] not in ("ro", "rw"))
    ):
        raise ValueError(
            f"volume {text!r}: expected HOST:PATH[:ro] with absolute paths, as /HOST/PATH:/APP/PATH[:ro]"
        )
    return parts[0], parts[1], len(parts) == 3 and parts[2] == "ro"
