"""The Python client of the kurmad API: what kurmactl uses, and what fleet scripts can import.

    from kurmad.client import Client
    with Client("10.0.0.5:7777", tls_dir=Path("~/.kurma/host1").expanduser()) as kurma:
        pod = kurma.run("example.com/busybox", exec=["/bin/echo", "hi"])
        print(kurma.wait(pod.uuid).apps[0].exit_code)

Every call raises KurmaError (with the gRPC status code name) on failure. Listings follow the
daemon's pages; streams (logs, events, exec, attach) are Stream objects that ``cancel()`` ends.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Generic, TypeVar

import grpc

from kurmad.api import ADMITTED, SERVER_NAME
from kurmad.api.v1 import kurma_pb2 as pb
from kurmad.api.v1 import kurma_pb2_grpc as rpc

DEFAULT_HOST = "unix:///var/lib/kurmad/kurmad.sock"
CHUNK = 1 << 20
T = TypeVar("T")


class KurmaError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message


def _translate(err: grpc.RpcError, target: str) -> KurmaError:
    code = err.code()
    details = err.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE:
        return KurmaError("UNAVAILABLE", f"cannot reach kurmad at {target}: {details}")
    return KurmaError(code.name if code else "UNKNOWN", details)


class Stream(Generic[T]):
    """The responses of a streaming call, as an iterator. ``cancel()`` (from any thread, or
    leaving a ``with`` block) ends it on both sides at once; the iteration then just stops."""

    def __init__(self, call: Any, target: str) -> None:
        self._call = call
        self._target = target
        self._cancelled = False

    def __iter__(self) -> Stream[T]:
        return self

    def __next__(self) -> T:
        try:
            return next(self._call)
        except grpc.RpcError as err:
            if self._cancelled:
                raise StopIteration from None
            raise _translate(err, self._target) from None

    def cancel(self) -> None:
        self._cancelled = True
        self._call.cancel()

    def admitted(self) -> bool:
        """Wait until the daemon has taken the call on (True) or refused or ended it (False);
        a follower knows from this that it is following before anything arrives."""
        return ADMITTED in (self._call.initial_metadata() or ())

    def __enter__(self) -> Stream[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class Client:
    """A connection to one kurmad. ``host`` is ``unix:///path`` or ``host:port`` (mutual TLS
    with the bundle in ``tls_dir``: ca.crt, client.crt, client.key)."""

    def __init__(
        self, host: str | None = None, tls_dir: Path | None = None, *, insecure: bool = False,
        timeout: float | None = None,
    ) -> None:  # fmt: skip
        self.target = host or os.environ.get("KURMA_HOST") or DEFAULT_HOST
        self.timeout = timeout
        self._channel = _channel(self.target, tls_dir or _env_path("KURMA_TLS_DIR"), insecure)
        self._pods = rpc.PodsStub(self._channel)
        self._images = rpc.ImagesStub(self._channel)
        self._host = rpc.HostStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: Callable[..., T], request: Any, timeout: float | None = None) -> T:
        try:
            return method(request, timeout=timeout or self.timeout)
        except grpc.RpcError as err:
            raise _translate(err, self.target) from None

    def _stream(self, call: Any) -> Stream[Any]:
        return Stream(call, self.target)

    def _all_pages(self, method: Callable[..., Any], request: Any, field: str) -> list[Any]:
        """Every item of a paged listing, asking for page after page."""
        items: list[Any] = []
        while True:
            response = self._call(method, request)
            items.extend(getattr(response, field))
            if not response.next_page_token:
                return items
            request.page_token = response.next_page_token

    # -- pods -----------------------------------------------------------------------------------

    def create(self, manifest_json: str, name: str = "", start: bool = True) -> pb.Pod:
        return self._call(
            self._pods.Create,
            pb.CreatePodRequest(manifest_json=manifest_json, name=name, start=start),
        )

    def run(
        self, image: str, *, exec: list[str] | None = None, env: dict[str, str] | None = None,
        volumes: list[tuple[str, str, bool]] | None = None, name: str = "", tty: bool = False,
        working_directory: str = "", user: str = "", group: str = "", start: bool = True,
        wait_running: bool = True, host_network: bool = False, networks: str = "",
        ports: list[tuple[int, int, str]] | None = None, devices: list[str] | None = None,
    ) -> pb.Pod:  # fmt: skip
        """Create (and start) a pod of one app from ``image``."""
        spec = pb.RunSpec(image=image, exec=exec or [], env=env or {}, tty=tty, working_directory=working_directory,
                          user=user, group=group, host_network=host_network, networks=networks, devices=devices or [],
                          ports=[pb.PortMapping(host_port=h, port=p, protocol=proto) for h, p, proto in ports or []],
                          volumes=[pb.VolumeMount(host_path=h, path=p, read_only=ro) for h, p, ro in volumes or []])  # fmt: skip
        request = pb.CreatePodRequest(run=spec, name=name, start=start, no_wait=not wait_running)
        return self._call(self._pods.Create, request)

    def start(self, ref: str) -> pb.Pod:
        return self._call(self._pods.Start, pb.PodRef(ref=ref))

    def get(self, ref: str) -> pb.Pod:
        return self._call(self._pods.Get, pb.PodRef(ref=ref))

    def pods(self) -> list[pb.Pod]:
        """Every pod, oldest first (the daemon sends them in pages)."""
        return self._all_pages(self._pods.List, pb.ListPodsRequest(), "pods")

    def stop(self, ref: str, grace: float | None = None) -> pb.Pod:
        request = pb.StopPodRequest(ref=ref)
        if grace is not None:
            request.grace_seconds = grace
        return self._call(self._pods.Stop, request, timeout=(grace or 10) + 30)

    def remove(self, ref: str, force: bool = False) -> None:
        self._call(self._pods.Remove, pb.RemovePodRequest(ref=ref, force=force), timeout=60)

    def wait(self, ref: str, timeout: float | None = None) -> pb.Pod:
        request = pb.WaitPodRequest(ref=ref)
        if timeout is not None:
            request.timeout_seconds = timeout
        return self._call(
            self._pods.Wait, request, timeout=None if timeout is None else timeout + 10
        )

    def logs(self, ref: str, app: str = "", follow: bool = False) -> Stream[pb.LogEntry]:
        return self._stream(self._pods.Logs(pb.LogsRequest(ref=ref, app=app, follow=follow)))

    def exec(self, requests: Iterator[pb.ExecRequest]) -> Stream[pb.ExecResponse]:
        """Bidirectional: the first request is an ExecStart."""
        return self._stream(self._pods.Exec(requests))

    def attach(self, requests: Iterator[pb.AttachRequest]) -> Stream[pb.ExecResponse]:
        return self._stream(self._pods.Attach(requests))

    # -- images ---------------------------------------------------------------------------------

    def import_image(
        self, source: BinaryIO, progress: Callable[[int], None] | None = None, name: str = ""
    ) -> pb.ImportResponse:
        """Import an ACI, an OCI archive (a tar of an OCI layout) or a docker-archive;
        ``name``: the reference an OCI archive's image is stored as, or which to take."""

        def chunks() -> Iterator[pb.ImportChunk]:
            sent = 0
            first = True
            while (data := source.read(CHUNK)) or first:
                sent += len(data)
                if progress is not None:
                    progress(sent)
                yield pb.ImportChunk(data=data, name=name if first else "")
                first = False

        try:
            return self._images.Import(chunks(), timeout=self.timeout)
        except grpc.RpcError as err:
            raise _translate(err, self.target) from None

    def pull(self, ref: str, platform: str = "") -> Stream[pb.PullProgress]:
        """Pull an OCI image; the stream gives each layer's progress, then the image."""
        return self._stream(self._images.Pull(pb.PullRequest(ref=ref, platform=platform)))

    def login(self, registry: str, username: str, password: str) -> None:
        request = pb.LoginRequest(registry=registry, username=username, password=password)
        self._call(self._images.Login, request)

    def logout(self, registry: str) -> bool:
        return self._call(self._images.Logout, pb.LogoutRequest(registry=registry)).removed

    def images(self) -> list[pb.Image]:
        """Every image, by name (the daemon sends them in pages)."""
        return self._all_pages(self._images.List, pb.ListImagesRequest(), "images")

    def image(self, ref: str) -> pb.Image:
        return self._call(self._images.Get, pb.ImageRef(ref=ref))

    def remove_image(self, ref: str) -> None:
        self._call(self._images.Remove, pb.ImageRef(ref=ref))

    def gc(self, grace_seconds: float = 0) -> list[pb.Image]:
        return list(self._call(self._images.GC, pb.GCRequest(grace_seconds=grace_seconds)).removed)

    # -- host ----------------------------------------------------------------------------------------

    def info(self) -> pb.HostInfo:
        return self._call(self._host.Info, pb.HostInfoRequest())

    def events(self) -> Stream[pb.Event]:
        return self._stream(self._host.Events(pb.EventsRequest()))

    def reboot(self) -> None:
        self._call(self._host.Reboot, pb.PowerRequest())

    def poweroff(self) -> None:
        self._call(self._host.Poweroff, pb.PowerRequest())


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else None


def _channel(target: str, tls_dir: Path | None, insecure: bool) -> grpc.Channel:
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", 64 * 2**20),
        ("grpc.max_send_message_length", 64 * 2**20),
        # A Client is one connection: it does not inherit another Client's reconnect backoff
        # (which would keep a script polling a rebooting host waiting for seconds more).
        ("grpc.use_local_subchannel_pool", 1),
    ]
    if target.startswith("unix:") or insecure:
        return grpc.insecure_channel(target, options=options)
    if tls_dir is None:
        raise KurmaError(
            "INVALID_ARGUMENT",
            f"{target} is TCP: give --tls-dir (a bundle from kurmad certs client) or --insecure",
        )
    try:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=(tls_dir / "ca.crt").read_bytes(),
            private_key=(tls_dir / "client.key").read_bytes(),
            certificate_chain=(tls_dir / "client.crt").read_bytes(),
        )
    except OSError as err:
        raise KurmaError(
            "INVALID_ARGUMENT", f"TLS bundle {tls_dir}: {err.strerror}: {err.filename}"
        ) from None
    options.append(("grpc.ssl_target_name_override", SERVER_NAME))
    return grpc.secure_channel(target, credentials, options=options)
