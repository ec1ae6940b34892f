"""What bounds the API, so that no client can freeze it or break it for the others.

- **Long calls** hold a worker thread for as long as the client likes: every stream (logs -f,
  events, exec, attach, import, health watch, reflection) and the unary calls whose length the
  client chooses (Wait; Stop, by its grace period). LimitInterceptor admits them before the
  method runs: at most PER_CLIENT at once per client, and REMOTE_TOTAL from all TCP clients
  together. The local socket (the host's root) is one client whose PER_CLIENT come on top of
  REMOTE_TOTAL, so remote clients can never lock it out. A call over a bound is
  RESOURCE_EXHAUSTED and says which bound; an admitted one frees its slot however it ends, and
  is told at once with the initial metadata ``kurmad-stream: admitted`` (a client then knows
  its stream is open before anything arrives on it). server.py sizes the worker pool on these.
- **A client** is its certificate's subject (two bundles of one subject are one client); the
  local socket is one client; a TCP client without TLS (``--insecure``) is its address.
- **Requests** are bounded in size (check_create_size, check_exec_size) and **listings** come
  in pages of at most PAGE_BYTES (page), so no message nears the transport's limits.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

import grpc

from kurmad.appc import ValidationError

from . import ADMITTED
from .v1 import kurma_pb2 as pb

PER_CLIENT = 32
REMOTE_TOTAL = 96  # three clients at their limit
LOCAL_CALLS = PER_CLIENT  # the local socket's own share, on top of REMOTE_TOTAL
LONG_UNARY = frozenset({"/kurma.v1.Pods/Wait", "/kurma.v1.Pods/Stop"})
_LONG = "streams and waits"

_KiB, _MiB = 1 << 10, 1 << 20
# A pod manifest is a few KiB; Kubernetes keeps a whole object under 1.5 MiB and its
# annotations under 256 KiB together, and these follow it. argv and the environment each stay
# at 256 KiB, far inside what execve(2) takes (2 MiB for both with the default 8 MiB stack),
# so a command that is accepted also runs.
MANIFEST_BYTES = 1 * _MiB
RUN_BYTES = 1 * _MiB  # a run spec as a whole (volumes, ports, ... included)
ANNOTATIONS_BYTES = 256 * _KiB
ENVIRONMENT_BYTES = 256 * _KiB
ARGV_BYTES = 256 * _KiB

# A page stops before this many bytes (the send limit is far above: one item alone, at the
# bounds above, is about a MiB) or this many items.
PAGE_BYTES = 4 * _MiB
DEFAULT_PAGE_SIZE = 1000
MAX_PAGE_SIZE = 1000

Caller = tuple[str, bytes]  # how it came, and who: ("x509", subject), ("address", b"ipv4:...")
LOCAL: Caller = ("local", b"")


class _Message(Protocol):
    def ByteSize(self) -> int: ...


T = TypeVar("T")
M = TypeVar("M", bound=_Message)


class RequestTooLarge(ValidationError):
    """A field of a request over its bound (INVALID_ARGUMENT, like every ValidationError)."""


class BadPageToken(ValidationError):
    """A page token that no listing of this kind gave."""


# --- who is calling -------------------------------------------------------------------------------


def caller_of(context: grpc.ServicerContext) -> Caller:
    peer = context.peer()
    if peer.startswith("unix:"):
        return LOCAL
    subject = context.auth_context().get("x509_subject")
    if subject:
        return ("x509", subject[0])
    return ("address", peer.rsplit(":", 1)[0].encode())  # the port changes per connection


# --- long calls -----------------------------------------------------------------------------------


class LongCalls:
    """The long calls each client has open, against the bounds."""

    def __init__(
        self, per_client: int = PER_CLIENT, remote_total: int = REMOTE_TOTAL,
        local: int = LOCAL_CALLS,
    ) -> None:  # fmt: skip
        self.per_client, self.remote_total, self.local = per_client, remote_total, local
        self._lock = threading.Lock()
        self._open: Counter[Caller] = Counter()
        self._remote = 0

    def admit(self, caller: Caller) -> str | None:
        """Count one more call of ``caller``; or say why it is refused (nothing counted)."""
        with self._lock:
            if caller == LOCAL:
                if self._open[caller] >= self.local:
                    return f"the local socket has {self.local} {_LONG} open, its limit at once"
            elif self._open[caller] >= self.per_client:
                return (
                    f"this client has {self.per_client} {_LONG} open, the limit per client "
                    "(certificate subject) at once; end one first"
                )
            elif self._remote >= self.remote_total:
                return f"kurmad has {self.remote_total} {_LONG} open to remote clients, its limit"
            self._open[caller] += 1
            self._remote += caller != LOCAL
        return None

    def release(self, caller: Caller) -> None:
        with self._lock:
            self._open[caller] -= 1
            if self._open[caller] <= 0:
                del self._open[caller]
            self._remote -= caller != LOCAL

    def open_calls(self, caller: Caller | None = None) -> int:
        """How many long calls ``caller`` (None: everyone) has open."""
        with self._lock:
            return sum(self._open.values()) if caller is None else self._open[caller]


class LimitInterceptor(grpc.ServerInterceptor):
    """Admits long calls (see the module's doc); every other call passes untouched."""

    def __init__(self, calls: LongCalls | None = None) -> None:
        self.calls = calls or LongCalls()

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None or not _is_long(handler, details.method):
            return handler
        return _admitted(handler, details.method, self.calls)


def _is_long(handler: Any, method: str) -> bool:
    return bool(handler.request_streaming or handler.response_streaming or method in LONG_UNARY)


def _admitted(handler: Any, method: str, calls: LongCalls) -> Any:
    """The same handler, run only once ``calls`` admits it, and counted until it returns."""

    def admit(context: grpc.ServicerContext) -> Caller:
        caller = caller_of(context)
        refusal = calls.admit(caller)
        if refusal is not None:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{method}: {refusal}")
        return caller

    behavior = _behavior(handler)
    wrapped: Any
    if handler.response_streaming:

        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            caller = admit(context)
            try:
                context.send_initial_metadata((ADMITTED,))
                yield from behavior(request, context)
            finally:  # also when grpc closes the generator: the client went away
                calls.release(caller)

    else:

        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            caller = admit(context)
            try:
                context.send_initial_metadata((ADMITTED,))
                return behavior(request, context)
            finally:
                calls.release(caller)

    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(bool(handler.request_streaming), bool(handler.response_streaming))]
    return make(
        wrapped,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _behavior(handler: Any) -> Callable[..., Any]:
    return (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )


# --- request sizes ------------------------------------------------------------------------------


def check_create_size(request: pb.CreatePodRequest) -> None:
    """Refuse a Create whose manifest, annotations, environment or argv are over the bounds."""
    if request.HasField("run"):
        _check_run(request.run)
    elif request.manifest_json:
        _at_most("manifest_json", len(request.manifest_json.encode()), MANIFEST_BYTES)
        _check_manifest(request.manifest_json)


def check_exec_size(start: pb.ExecStart) -> None:
    _at_most("start.argv", _argv_bytes(start.argv), ARGV_BYTES)
    _at_most("start.env", _environment_bytes(start.env.items()), ENVIRONMENT_BYTES)


def _check_run(run: pb.RunSpec) -> None:
    _at_most("run", run.ByteSize(), RUN_BYTES)
    _at_most("run.exec", _argv_bytes(run.exec), ARGV_BYTES)
    _at_most("run.env", _environment_bytes(run.env.items()), ENVIRONMENT_BYTES)


def _check_manifest(text: str) -> None:
    """The bounds inside a pod manifest: the pod's and its apps' annotations, every app's
    environment and exec. A document that is not one is left to Create's validation."""
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        return
    if not isinstance(document, dict):
        return
    apps = [a for a in _list(document.get("apps")) if isinstance(a, dict)]
    annotations = [document.get("annotations"), *(a.get("annotations") for a in apps)]
    _at_most(
        "annotations",
        sum(_pairs_bytes(_list(a)) for a in annotations),
        ANNOTATIONS_BYTES,
        "the pod's and its apps' together",
    )
    runs = [a["app"] for a in apps if isinstance(a.get("app"), dict)]
    _at_most(
        "apps[].app.environment",
        sum(_pairs_bytes(_list(r.get("environment"))) for r in runs),
        ENVIRONMENT_BYTES,
        "every app's together",
    )
    _at_most(
        "apps[].app.exec",
        sum(_argv_bytes(a for a in _list(r.get("exec")) if isinstance(a, str)) for r in runs),
        ARGV_BYTES,
        "every app's together",
    )


def _at_most(field: str, size: int, bound: int, scope: str = "") -> None:
    if size > bound:
        what = f" ({scope})" if scope else ""
        raise RequestTooLarge(field, f"{_size(size)}{what} is over the limit of {_size(bound)}")


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _pairs_bytes(pairs: list[Any]) -> int:
    """Names and values of appc's [{"name": ..., "value": ...}] lists."""
    named = [p for p in pairs if isinstance(p, dict)]
    return _environment_bytes((str(p.get("name", "")), str(p.get("value", ""))) for p in named)


def _environment_bytes(pairs: Iterable[tuple[str, str]]) -> int:
    return sum(len(name.encode()) + len(value.encode()) + 2 for name, value in pairs)  # =, NUL


def _argv_bytes(argv: Iterable[str]) -> int:
    return sum(len(arg.encode()) + 1 for arg in argv)  # each ends with a NUL in execve


def _size(n: int) -> str:
    return (
        f"{n / _MiB:.1f} MiB" if n >= _MiB else f"{n / _KiB:.0f} KiB" if n >= _KiB else f"{n} bytes"
    )


# --- pages ----------------------------------------------------------------------------------------


def page(
    items: Iterable[T], key: Callable[[T], Sequence[str | float]], message: Callable[[T], M | None],
    *, kind: str, page_size: int, page_token: str,
) -> tuple[list[M], str]:  # fmt: skip
    """The items after ``page_token`` in ``key`` order, as messages: at most ``page_size``
    (0: DEFAULT_PAGE_SIZE) and PAGE_BYTES together, one at least; and the token of the page
    after, or "" if this is the last. ``message`` is called only for items on the page (None:
    the item is gone; it is left out). A token names the last item's key, so items that come
    and go between pages never make another item come twice or not at all."""
    after = _token_key(page_token, kind) if page_token else None
    wanted = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    keyed = sorted(((list(key(i)), i) for i in items), key=lambda pair: pair[0])
    if after is not None:
        try:
            keyed = [pair for pair in keyed if pair[0] > after]
        except TypeError:
            raise BadPageToken("page_token", "not a token from an earlier page") from None
    out: list[M] = []
    used = 0
    last: list[str | float] = []
    for item_key, item in keyed:
        if len(out) == wanted:
            return out, _token(kind, last)
        reply = message(item)
        if reply is None:  # gone since the items were taken
            continue
        size = reply.ByteSize()
        if out and used + size > PAGE_BYTES:
            return out, _token(kind, last)
        out.append(reply)
        used += size
        last = item_key
    return out, ""


def _token(kind: str, key: list[str | float]) -> str:
    return base64.urlsafe_b64encode(json.dumps([kind, *key]).encode()).decode()


def _token_key(token: str, kind: str) -> list[str | float]:
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, binascii.Error, RecursionError):
        decoded = None
    if not isinstance(decoded, list) or not decoded or decoded[0] != kind:
        raise BadPageToken("page_token", f"not a token from an earlier page of {kind}")
    return decoded[1:]
