"""httpx: transports that route registered services through the mesh (sync and asyncio).

:class:`MeshTransport` and :class:`AsyncMeshTransport` wrap a stock transport (by default
``httpx.HTTPTransport`` / ``httpx.AsyncHTTPTransport``). Requests for registered service names
run through :mod:`mesh_client.core`; every other request goes to the wrapped transport untouched.
Per-call overrides ride in ``extensions={"mesh": CallOptions(...)}``. The httpx ``timeout``
setting is ignored for mesh calls: the registry and call options decide.

The two classes share everything except the lines that ``await``.
"""

from __future__ import annotations

import http.client
import urllib.request
from typing import Any, Final

import httpx

from ..core import Attempt, Broken, CallRun, Done, Fail, Failure, Responded, drive, drive_async
from ..errors import MeshTimeoutError, as_mesh_error
from ..info import INFO_KEY
from ..mesh import Mesh
from ..policy import CallOptions
from ..telemetry import no_http_instrumentation
from ..wire import Wire, WireFailure, WireRequest, current_wire

__all__ = ["EXTENSION_KEY", "AsyncMeshTransport", "MeshTransport", "build_async_client", "build_client"]

#: ``request.extensions[EXTENSION_KEY]`` may hold a :class:`~mesh_client.CallOptions`.
EXTENSION_KEY = "mesh"
#: Client keyword arguments that configure the default transport rather than the client.
_TRANSPORT_KWARGS = ("verify", "cert", "trust_env", "http1", "http2", "limits")


def _failure(exc: httpx.TransportError) -> Broken | None:
    """Classify an httpx transport error; None for errors that are not network failures."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return Broken(Failure.CONNECT, exc, str(exc) or type(exc).__name__)
    if isinstance(exc, httpx.TimeoutException):  # read, write and pool timeouts
        return Broken(Failure.TIMEOUT, exc, type(exc).__name__)
    if isinstance(exc, (httpx.NetworkError, httpx.RemoteProtocolError)):
        return Broken(Failure.RESET, exc, str(exc) or type(exc).__name__)
    return None


class _MeshTransportMixin:
    """What both transports share: planning, per-attempt requests, results."""

    mesh: Mesh

    def _start(self, request: httpx.Request) -> CallRun[httpx.Response] | None:
        url = request.url
        service = self.mesh.http_service(url.scheme, url.host, url.port, bool(url.userinfo))
        if service is None:
            return None
        extra = request.extensions.get(EXTENSION_KEY)
        if extra is not None and not isinstance(extra, CallOptions):
            raise TypeError(f"extensions[{EXTENSION_KEY!r}] must be a mesh_client.CallOptions, got {extra!r}")
        replayable = isinstance(request.stream, httpx.ByteStream)
        return self.mesh.start_call(service, request.method, extra, replayable=replayable)

    @staticmethod
    def _attempt_request(request: httpx.Request, attempt: Attempt) -> httpx.Request:
        url = request.url.copy_with(scheme="http", host=attempt.address.host, port=attempt.address.port)
        headers = [(k, v) for k, v in request.headers.multi_items() if not attempt.drops(k)]
        headers.extend(attempt.set_headers)
        t = attempt.timeout
        extensions = {**request.extensions, "timeout": {"connect": t, "read": t, "write": t, "pool": t}}
        return httpx.Request(request.method, url, headers=headers, stream=request.stream, extensions=extensions)

    @staticmethod
    def _over_wire(
        wire: Wire, run: CallRun[httpx.Response], attempt: Attempt, request: httpx.Request
    ) -> Responded[httpx.Response] | Broken:
        """One attempt over an installed :class:`~mesh_client.wire.Wire` (a fake mesh); the
        request's body has been read."""
        sent = WireRequest.of(
            attempt,
            service=run.service.name,
            method=request.method,
            target=request.url.raw_path.decode("ascii"),
            headers=tuple(request.headers.multi_items()),
            body=request.content,
        )
        reply = wire.exchange(sent)
        if isinstance(reply, WireFailure):
            return Broken(reply.kind, _WIRE_ERRORS[reply.kind](reply.message, request=request), reply.message)
        reason = reply.reason or http.client.responses.get(reply.status, "")
        response = httpx.Response(
            reply.status,
            headers=list(reply.headers),
            content=reply.body,
            request=request,
            extensions={"reason_phrase": reason.encode("ascii", "replace"), "http_version": b"HTTP/1.1"},
        )
        return Responded(response, response.status_code, response.headers, response.content)

    @staticmethod
    def _responded(run: CallRun[httpx.Response], response: httpx.Response) -> Responded[httpx.Response] | None:
        """The outcome, or None when the (small) body must be read first to classify it."""
        if run.wants_body(response.status_code, response.headers):
            return None
        return Responded(response, response.status_code, response.headers)

    @staticmethod
    def _finish(result: Done[httpx.Response] | Fail, request: httpx.Request) -> httpx.Response:
        if isinstance(result, Fail):
            native = result.cause
            if native is None:
                native_cls = (
                    httpx.TimeoutException if issubclass(result.error, MeshTimeoutError) else httpx.ConnectError
                )
                native = native_cls(result.message, request=request)
            raise as_mesh_error(result.error, native, result.message, result.info) from result.cause
        result.response.extensions[INFO_KEY] = result.info
        return result.response


class MeshTransport(_MeshTransportMixin, httpx.BaseTransport):
    """An ``httpx.BaseTransport`` routing registered services through the mesh."""

    def __init__(self, mesh: Mesh, transport: httpx.BaseTransport | None = None, **kwargs: Any) -> None:
        self.mesh = mesh
        self.transport = transport if transport is not None else httpx.HTTPTransport(**kwargs)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        run = self._start(request)
        if run is None:
            return self.transport.handle_request(request)

        wire = current_wire()

        def send(attempt: Attempt) -> Responded[httpx.Response] | Broken:
            attempt_request = self._attempt_request(request, attempt)
            if wire is not None:
                attempt_request.read()
                return self._over_wire(wire, run, attempt, attempt_request)
            try:
                response = self.transport.handle_request(attempt_request)
            except httpx.TransportError as exc:
                return _failure(exc) or _reraise(exc)
            outcome = self._responded(run, response)
            if outcome is None:
                outcome = Responded(response, response.status_code, response.headers, response.read())
            return outcome

        with no_http_instrumentation():  # one CLIENT span per call: ours
            result = drive(run, send, lambda r: r.close())
        return self._finish(result, request)

    def close(self) -> None:
        self.transport.close()


class AsyncMeshTransport(_MeshTransportMixin, httpx.AsyncBaseTransport):
    """An ``httpx.AsyncBaseTransport`` routing registered services through the mesh."""

    def __init__(self, mesh: Mesh, transport: httpx.AsyncBaseTransport | None = None, **kwargs: Any) -> None:
        self.mesh = mesh
        self.transport = transport if transport is not None else httpx.AsyncHTTPTransport(**kwargs)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        run = self._start(request)
        if run is None:
            return await self.transport.handle_async_request(request)

        wire = current_wire()

        async def send(attempt: Attempt) -> Responded[httpx.Response] | Broken:
            attempt_request = self._attempt_request(request, attempt)
            if wire is not None:
                await attempt_request.aread()
                return self._over_wire(wire, run, attempt, attempt_request)
            try:
                response = await self.transport.handle_async_request(attempt_request)
            except httpx.TransportError as exc:
                return _failure(exc) or _reraise(exc)
            outcome = self._responded(run, response)
            if outcome is None:
                outcome = Responded(response, response.status_code, response.headers, await response.aread())
            return outcome

        async def discard(response: httpx.Response) -> None:
            await response.aclose()

        with no_http_instrumentation():  # one CLIENT span per call: ours
            result = await drive_async(run, send, discard)
        return self._finish(result, request)

    async def aclose(self) -> None:
        await self.transport.aclose()


#: the httpx exception for each way an attempt can fail over a wire
_WIRE_ERRORS: Final = {
    Failure.CONNECT: httpx.ConnectError,
    Failure.TIMEOUT: httpx.ReadTimeout,
    Failure.RESET: httpx.RemoteProtocolError,
}


def _reraise(exc: BaseException) -> Broken:
    raise exc


def build_client(mesh: Mesh, kwargs: dict[str, Any]) -> httpx.Client:
    """``httpx.Client(**kwargs)`` with a :class:`MeshTransport` as its transport and mounted for
    each registered service (so proxy mounts from the environment cannot capture mesh calls)."""
    client = _build(mesh, kwargs, httpx.Client, httpx.HTTPTransport, MeshTransport)
    assert isinstance(client, httpx.Client)
    return client


def build_async_client(mesh: Mesh, kwargs: dict[str, Any]) -> httpx.AsyncClient:
    """The asyncio twin of :func:`build_client`."""
    client = _build(mesh, kwargs, httpx.AsyncClient, httpx.AsyncHTTPTransport, AsyncMeshTransport)
    assert isinstance(client, httpx.AsyncClient)
    return client


def _build(mesh: Mesh, kwargs: dict[str, Any], client_cls: Any, inner_cls: Any, mesh_cls: Any) -> Any:
    kwargs = dict(kwargs)
    inner = kwargs.pop("transport", None)
    if inner is None:
        inner = inner_cls(**{k: kwargs[k] for k in _TRANSPORT_KWARGS if k in kwargs})
    transport = mesh_cls(mesh, inner)
    mounts: dict[str, Any] = {}
    if kwargs.get("trust_env", True) and urllib.request.getproxies():
        # httpx mounts proxy transports from the environment, and mounts win over `transport`:
        # mount the mesh transport for each service so no proxy captures mesh calls (only then:
        # every mount is matched on every request)
        names = [name for name, svc in mesh.config.services.items() if svc.protocol == "http"]
        mounts = {f"all://{name}": transport for name in names}
    mounts.update(kwargs.pop("mounts", None) or {})
    return client_cls(transport=transport, mounts=mounts, **kwargs)
