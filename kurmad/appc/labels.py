"""Labels (aci.md §Image Manifest Schema): unique AC Identifier names with string values,
and the table of valid os/arch pairs."""

from __future__ import annotations

import platform

from .errors import ValidationError, join, quote
from .namedvalues import NamedValues
from .names import ACIdentifier

# types.ValidOSArch: the ABIs an image may declare.
VALID_OS_ARCH: dict[str, tuple[str, ...]] = {
    "linux": (
        "amd64", "i386", "aarch64", "aarch64_be", "armv6l", "armv7l", "armv7b",
        "ppc64", "ppc64le", "s390x",
    ),
    "freebsd": ("amd64", "i386", "arm"),
    "darwin": ("x86_64", "i386"),
}  # fmt: skip

# appc arch -> (GOARCH, GOARM); appc spells arm64 "aarch64". Absent entries have no Go name.
_GO_ARCH: dict[str, tuple[str, str]] = {
    "amd64": ("amd64", ""), "x86_64": ("amd64", ""), "i386": ("386", ""),
    "aarch64": ("arm64", ""), "armv6l": ("arm", "6"), "armv7l": ("arm", "7"), "arm": ("arm", ""),
    "ppc64": ("ppc64", ""), "ppc64le": ("ppc64le", ""), "s390x": ("s390x", ""),
}  # fmt: skip

# uname -m -> appc arch
_MACHINE_ARCH = {"x86_64": "amd64", "i686": "i386", "i386": "i386", "arm64": "aarch64"}


class Labels(NamedValues):
    KIND = "label"

    @classmethod
    def check_name(cls, name: object, path: str) -> str:
        ident = ACIdentifier.from_json(name, path)
        if ident == "name":
            raise ValidationError(path, '"name" is reserved and cannot be a label name')
        return ident

    @classmethod
    def check_whole(cls, items: NamedValues, order: list[str], path: str) -> None:
        os_name = items.get("os")
        if os_name is None:
            return  # arch alone is meaningless but allowed (aci.md)
        if os_name not in VALID_OS_ARCH:
            allowed = ", ".join(VALID_OS_ARCH)
            raise ValidationError(
                _value_path(path, order, "os"), f"bad os {quote(os_name)}: must be one of {allowed}"
            )
        arch = items.get("arch")
        if arch is not None and arch not in VALID_OS_ARCH[os_name]:
            allowed = ", ".join(VALID_OS_ARCH[os_name])
            raise ValidationError(
                _value_path(path, order, "arch"),
                f"bad arch {quote(arch)} for {os_name}: must be one of {allowed}",
            )


def _value_path(path: str, order: list[str], name: str) -> str:
    return join(join(path, order.index(name)), "value")


def go_os_arch(os_name: str, arch: str) -> tuple[str, str, str] | None:
    """The Go (GOOS, GOARCH, GOARM) of a valid appc os/arch pair, or None if Go has no name."""
    go = _GO_ARCH.get(arch)
    return None if go is None else (os_name, *go)


def host_os_arch() -> tuple[str, str]:
    """This machine's os and arch in appc spelling."""
    machine = platform.machine()
    return platform.system().lower(), _MACHINE_ARCH.get(machine, machine)
