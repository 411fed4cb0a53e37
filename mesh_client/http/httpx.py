"""httpx: transports that route registered services through the mesh (sync and asyncio).

:class:`MeshTransport` and :class:`AsyncMeshTransport` wrap a stock transport (by default
``httpx.HTTPTransport`` / ``httpx.AsyncHTTPTransport``). Requests for registered service names
run through :mod:`mesh_client.core`; every other request goes to the wrapped transport untouched.
Per-call overrides ride in ``extensions={"mesh": CallOptions(...)}``. The httpx ``timeout``
setting is ignored for mesh calls: the registry and call options decide.

When the caller reads the whole body at once (a client from ``mesh.httpx_client()`` /
``mesh.httpx_async_client()``, without ``stream=True``), the transport reads it within the
attempt's time (see :mod:`mesh_client.http._httpx_body`): the sync transport bounds each network
read, the async one the whole attempt.

The two classes share everything except the lines that ``await`` and how the body's time is kept:
the attempt's request and its answer's headers are made in :mod:`mesh_client.http._httpx_attempt`.
"""

from __future__ import annotations

import functools
from typing import Any

import httpx

from ..core import CallRun
from ..driving import drive, drive_async
from ..errors import raise_failure
from ..fork import reset_in_child
from ..info import INFO_KEY
from ..policy import CallOptions
from ..shadow.answers import httpx_answer
from ..steps import Attempt, Broken, Done, Fail, Failure, Responded
from ..telemetry import no_http_instrumentation
from ..wire import current_wire
from ..wrapping import CallStarter
from . import httpx_errors  # noqa: F401 - registers the combined exceptions raised here
from ._async_deadline import attempt_deadline
from ._body import BodyTimer
from ._fork import forget_transport_connections
from ._forwarding import ForwardsAsyncContext, ForwardsContext
from ._httpx_attempt import SENT_KEY, attempt_request, failure, header_dict, native_error, over_wire
from ._httpx_body import WHOLE_BODY, body_overrun, read_body, read_body_async, reads_body

__all__ = ["EXTENSION_KEY", "SENT_KEY", "AsyncMeshTransport", "MeshTransport"]

#: ``request.extensions[EXTENSION_KEY]`` may hold a :class:`~mesh_client.CallOptions`.
EXTENSION_KEY = "mesh"


class _MeshTransportMixin:
    """What both transports share: planning, the answer's outcome, the result."""

    mesh: CallStarter

    def _start(self, request: httpx.Request) -> CallRun[httpx.Response] | None:
        url = request.url
        service = self.mesh.http_service(url.scheme, url.host, url.port, bool(url.userinfo))
        if service is None:
            return None
        extra = request.extensions.get(EXTENSION_KEY)
        if extra is not None and not isinstance(extra, CallOptions):
            raise TypeError(f"extensions[{EXTENSION_KEY!r}] must be a mesh_client.CallOptions, got {extra!r}")
        replayable = isinstance(request.stream, httpx.ByteStream)
        return self.mesh.start_call(service, request.method, extra, replayable=replayable, source=request)

    @staticmethod
    def _responded(
        run: CallRun[httpx.Response], response: httpx.Response, sent: httpx.Request
    ) -> Responded[httpx.Response] | None:
        """The outcome, or None when the (small) body must be read first to classify it; ``sent``
        is the attempt's request."""
        response.extensions[SENT_KEY] = sent
        if run.wants_body(response.status_code, response.headers):
            return None
        return Responded(response, response.status_code, header_dict(response.headers))

    @staticmethod
    def _finish(result: Done[httpx.Response] | Fail, request: httpx.Request) -> httpx.Response:
        if isinstance(result, Fail):
            raise_failure(result, functools.partial(native_error, request=request))
        result.response.extensions[INFO_KEY] = result.info
        return result.response


class MeshTransport(_MeshTransportMixin, ForwardsContext, httpx.BaseTransport):
    """An ``httpx.BaseTransport`` routing registered services through the mesh."""

    def __init__(self, mesh: CallStarter, transport: httpx.BaseTransport | None = None, **kwargs: Any) -> None:
        self.mesh = mesh
        #: makes a transport like the one made here (none when the caller gave it; see _after_fork)
        self._remake = None if transport is not None else functools.partial(httpx.HTTPTransport, **kwargs)
        self.transport = transport if transport is not None else httpx.HTTPTransport(**kwargs)
        reset_in_child(self, MeshTransport._after_fork)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        run = self._start(request)
        if run is None:
            return self.transport.handle_request(request)

        wire = current_wire()

        def send(attempt: Attempt) -> Responded[httpx.Response] | Broken:
            outgoing = attempt_request(request, attempt)
            if wire is not None:
                outgoing.read()
                return over_wire(wire, run, attempt, outgoing)
            timer = BodyTimer(attempt)
            try:
                response = self.transport.handle_request(outgoing)
            except httpx.TransportError as exc:
                return failure(exc) or _reraise(exc)
            if reads_body(response):
                read = read_body(response, outgoing, timer)
                if isinstance(read, Broken):
                    return read
                response = read
            outcome = self._responded(run, response, outgoing)
            if outcome is None:
                outcome = Responded(response, response.status_code, response.headers, response.read())
            return outcome

        with no_http_instrumentation():  # one CLIENT span per call: ours
            result = drive(run, send, lambda r: r.close())
        if run.shadow is not None:  # a copy down the other route, compared off this thread
            send_again = functools.partial(_whole, self.handle_request, request)
            run.shadow.submit(result, _answer_of(), send_again, _target(request))
        return self._finish(result, request)

    def _forward_to(self) -> httpx.BaseTransport:
        return self.transport  # (entered, exited and closed with this one)

    def _after_fork(self) -> None:
        """In a forked child (see :mod:`mesh_client.fork`): the wrapped transport (which carries
        the mesh calls and every other request not mounted elsewhere) opens connections of its
        own (or, when its pool cannot be emptied, is replaced by one made the same way)."""
        self.transport = forget_transport_connections(self.transport, self._remake)


class AsyncMeshTransport(_MeshTransportMixin, ForwardsAsyncContext, httpx.AsyncBaseTransport):
    """An ``httpx.AsyncBaseTransport`` routing registered services through the mesh."""

    def __init__(self, mesh: CallStarter, transport: httpx.AsyncBaseTransport | None = None, **kwargs: Any) -> None:
        self.mesh = mesh
        #: makes a transport like the one made here (none when the caller gave it; see _after_fork)
        self._remake = None if transport is not None else functools.partial(httpx.AsyncHTTPTransport, **kwargs)
        self.transport = transport if transport is not None else httpx.AsyncHTTPTransport(**kwargs)
        reset_in_child(self, AsyncMeshTransport._after_fork)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        run = self._start(request)
        if run is None:
            return await self.transport.handle_async_request(request)

        wire = current_wire()

        async def send(attempt: Attempt) -> Responded[httpx.Response] | Broken:
            outgoing = attempt_request(request, attempt)
            if wire is not None:
                await outgoing.aread()
                return over_wire(wire, run, attempt, outgoing)
            timer = BodyTimer(attempt)
            response: httpx.Response | None = None
            try:
                # one deadline for the whole attempt (see mesh_client.http._async_deadline)
                with attempt_deadline(attempt.timeout):
                    try:
                        response = await self.transport.handle_async_request(outgoing)
                    except httpx.TransportError as exc:
                        return failure(exc) or _reraise(exc)
                    if reads_body(response):
                        read = await read_body_async(response, outgoing, timer)
                        if isinstance(read, Broken):
                            return read
                        response = read
            except TimeoutError:
                if response is not None:
                    await response.aclose()
                    return body_overrun(timer, outgoing)
                message = f"no response within {attempt.timeout:.3f} s"
                return Broken(Failure.TIMEOUT, httpx.ReadTimeout(message, request=outgoing), message)
            outcome = self._responded(run, response, outgoing)
            if outcome is None:
                outcome = Responded(response, response.status_code, response.headers, await response.aread())
            return outcome

        async def discard(response: httpx.Response) -> None:
            await response.aclose()

        with no_http_instrumentation():  # one CLIENT span per call: ours
            result = await drive_async(run, send, discard)
        if run.shadow is not None:  # a copy down the other route, compared in a task of its own
            send_again = functools.partial(_whole_async, self.handle_async_request, request)
            run.shadow.submit_task(result, _answer_of(), send_again, _target(request))
        return self._finish(result, request)

    def _forward_to(self) -> httpx.AsyncBaseTransport:
        return self.transport  # (entered, exited and closed with this one)

    def _after_fork(self) -> None:
        """As :meth:`MeshTransport._after_fork`."""
        self.transport = forget_transport_connections(self.transport, self._remake)


def _whole(handle: Any, request: httpx.Request) -> httpx.Response:
    """``handle(request)`` with the body read within the call's time (for a shadow copy)."""
    token = WHOLE_BODY.set(True)
    try:
        response: httpx.Response = handle(request)
    finally:
        WHOLE_BODY.reset(token)
    return response


async def _whole_async(handle: Any, request: httpx.Request) -> httpx.Response:
    """The asyncio twin of :func:`_whole` (in the copy's own task: no reset needed)."""
    WHOLE_BODY.set(True)
    response: httpx.Response = await handle(request)
    return response


def _answer_of() -> Any:
    """How a shadow copy reads the caller's response: not at all when the caller streams it."""
    return httpx_answer if WHOLE_BODY.get() else None


def _target(request: httpx.Request) -> str:
    return request.url.raw_path.decode("ascii", "replace")


def _reraise(exc: BaseException) -> Broken:
    raise exc
