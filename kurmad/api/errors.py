"""Every failure a request can meet, mapped to the gRPC status a client can act on. A servicer
method never lets an exception escape: an unexpected one becomes INTERNAL, and is logged."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from kurmad.appc import ValidationError
from kurmad.host.control import PowerNotAllowed
from kurmad.images.oci.archives import ArchiveError
from kurmad.images.oci.pull import PullError
from kurmad.images.oci.reference import ReferenceError
from kurmad.images.oci.registry import RegistryError, RegistryNotFound
from kurmad.images.render import RenderError
from kurmad.images.store import (
    AmbiguousImage,
    ImageInUse,
    ImageNotFound,
    ImportFailed,
    QuotaExceeded,
    StoreError,
)
from kurmad.pods.model import InvalidPod, PodConflict, PodExists, PodNotFound, PodStorageError
from kurmad.pods.privileges import Forbidden, PrivilegeRequired

log = logging.getLogger("kurmad.api")
F = TypeVar("F", bound=Callable[..., Any])


# The longest status message sent: the rest of a longer one is cut (it quotes a request).
MESSAGE_LIMIT = 2000


class BadRequest(ValueError):
    """The request message itself is wrong (a field missing, or out of bounds)."""


# most specific first
_CODES: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (BadRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (ReferenceError, grpc.StatusCode.INVALID_ARGUMENT),
    (ArchiveError, grpc.StatusCode.INVALID_ARGUMENT),
    (PullError, grpc.StatusCode.FAILED_PRECONDITION),
    (RegistryNotFound, grpc.StatusCode.NOT_FOUND),
    # Not UNAVAILABLE: that says kurmad itself cannot be reached.
    (RegistryError, grpc.StatusCode.FAILED_PRECONDITION),
    (ValidationError, grpc.StatusCode.INVALID_ARGUMENT),
    (PrivilegeRequired, grpc.StatusCode.PERMISSION_DENIED),
    (Forbidden, grpc.StatusCode.PERMISSION_DENIED),
    (PodStorageError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (InvalidPod, grpc.StatusCode.INVALID_ARGUMENT),
    (PodNotFound, grpc.StatusCode.NOT_FOUND),
    (PodExists, grpc.StatusCode.ALREADY_EXISTS),
    (PodConflict, grpc.StatusCode.FAILED_PRECONDITION),
    (ImageNotFound, grpc.StatusCode.NOT_FOUND),
    (AmbiguousImage, grpc.StatusCode.INVALID_ARGUMENT),
    (ImageInUse, grpc.StatusCode.FAILED_PRECONDITION),
    (QuotaExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ImportFailed, grpc.StatusCode.INVALID_ARGUMENT),
    (RenderError, grpc.StatusCode.FAILED_PRECONDITION),
    (StoreError, grpc.StatusCode.FAILED_PRECONDITION),
    (PowerNotAllowed, grpc.StatusCode.FAILED_PRECONDITION),
]


def status_of(err: BaseException) -> grpc.StatusCode:
    for kind, code in _CODES:
        if isinstance(err, kind):
            return code
    return grpc.StatusCode.INTERNAL


def handled(method: F) -> F:
    """Turn what ``method`` raises into a gRPC status with a one-line message."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as err:
            _abort(context, err)

    return wrapper  # type: ignore[return-value]


def handled_stream(method: F) -> F:
    """The same for methods that stream their responses."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            yield from method(self, request, context)
        except Exception as err:
            _abort(context, err)

    return wrapper  # type: ignore[return-value]


def _abort(context: grpc.ServicerContext, err: Exception) -> None:
    if context.code() is not None:
        raise err  # context.abort ran already: its status and message stand
    code = status_of(err)
    if code == grpc.StatusCode.INTERNAL and not context.is_active():
        code = grpc.StatusCode.CANCELLED  # the client left mid-call (a stream it cancelled)
    if code == grpc.StatusCode.INTERNAL:
        log.exception("unexpected error")
        message = f"internal error: {type(err).__name__}: {err}"
    else:
        message = str(err)
    context.abort(code, _bounded(message))


def _bounded(message: str) -> str:
    """A status message fits in the trailers a client accepts (8 KiB of metadata by default),
    however much of a request it quotes."""
    if len(message) <= MESSAGE_LIMIT:
        return message
    return (
        f"{message[: MESSAGE_LIMIT - 40]}... ({len(message) - MESSAGE_LIMIT + 40} characters more)"
    )
