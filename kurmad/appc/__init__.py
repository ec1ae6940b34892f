"""The App Container specification as Python types. Pure: no I/O, nothing of ours imported.

Every type parses from decoded JSON with ``from_json(value, path)``, validates by the spec,
and serialises back with ``to_json()`` so that ``T.from_json(x.to_json()) == x``. Errors are
``ValidationError`` with the field path and the rule.
"""

from ._json import loads
from .annotations import Annotations
from .app import App, EventHandler, MountPoint, Port, parse_exec
from .environment import Environment
from .errors import ValidationError
from .hashes import ImageID
from .image_manifest import AC_VERSION, Dependency, ImageManifest
from .isolators import DEFAULT_CAPABILITIES, KNOWN_ISOLATORS, Isolator, IsolatorValue
from .labels import VALID_OS_ARCH, Labels, host_os_arch
from .names import ACIdentifier, ACKind, ACName, sanitize_ac_identifier, sanitize_ac_name
from .pod_manifest import ExposedPort, Mount, PodManifest, RuntimeApp, RuntimeImage
from .quantity import Quantity
from .scalars import parse_date, parse_http_url
from .semver import SemVer
from .strings import AppString, make_query_string
from .uuid import new_uuid, parse_uuid
from .volumes import Volume

__all__ = [
    "AC_VERSION", "DEFAULT_CAPABILITIES", "KNOWN_ISOLATORS", "VALID_OS_ARCH", "ACIdentifier",
    "ACKind", "ACName", "Annotations", "App", "AppString", "Dependency", "Environment",
    "EventHandler", "ExposedPort", "ImageID", "ImageManifest", "Isolator", "IsolatorValue",
    "Labels", "Mount", "MountPoint", "PodManifest", "Port", "Quantity", "RuntimeApp",
    "RuntimeImage", "SemVer", "ValidationError", "Volume", "host_os_arch", "loads",
    "make_query_string", "new_uuid", "parse_date", "parse_exec", "parse_http_url",
    "parse_uuid", "sanitize_ac_identifier", "sanitize_ac_name",
]  # fmt: skip
