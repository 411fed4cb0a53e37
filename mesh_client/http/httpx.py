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

The two classes differ only in the lines that ``await`` and how the body's time is kept: the
attempt's request and its answer's headers are made in :mod:`mesh_client.http._httpx_attempt`.
Each runs the call in :func:`mesh_client.driving.drive`'s loop written out, each attempt inside it
(no call and no closure per call for them; in the async transport every wait of an attempt resumes
the frames between the client and the wrapped transport: two fewer so), and reads a URL's parts
once (:func:`mesh_client._compat.httpx.url_parts`).
"""

from __future__ import annotations

import functools
from typing import Any

import httpx

from .. import clock as _clock
from .._compat import httpx as httpx_compat
from ..core import CallRun
from ..errors import raise_failure
from ..fork import reset_in_child
from ..info import INFO_KEY
from ..policy import CallOptions
from ..shadow.answers import httpx_answer
from ..steps import Attempt, Broken, Fail, Failure, Responded
from ..telemetry import no_http_instrumentation
from ..wire import current_wire
from ..wrapping import CallStarter
from . import httpx_errors  # noqa: F401 - registers the combined exceptions raised here
from ._async_deadline import attempt_deadline
from ._body import BodyTimer
from ._fork import forget_transport_connections
from ._forwarding import ForwardsAsyncContext, ForwardsContext
from ._httpx_attempt import SENT_KEY, attempt_request, failure, header_dict, native_error, over_wire
from ._httpx_body import WHOLE_BODY, body_overrun, read_body, read_body_async

__all__ = ["EXTENSION_KEY", "SENT_KEY", "AsyncMeshTransport", "MeshTransport"]

#: ``request.extensions[EXTENSION_KEY]`` may hold a :class:`~mesh_client.CallOptions`.
EXTENSION_KEY = "mesh"


class MeshTransport(ForwardsContext, httpx.BaseTransport):
    """An ``httpx.BaseTransport`` routing registered services through the mesh."""

    def __init__(self, mesh: CallStarter, transport: httpx.BaseTransport | None = None, **kwargs: Any) -> None:
        self.mesh = mesh
        #: makes a transport like the one made here (none when the caller gave it; see _after_fork)
        self._remake = None if transport is not None else functools.partial(httpx.HTTPTransport, **kwargs)
        self.transport = transport if transport is not None else httpx.HTTPTransport(**kwargs)
        reset_in_child(self, MeshTransport._after_fork)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        scheme, host, port, userinfo, url_key = httpx_compat.url_parts(request.url)
        service = self.mesh.http_service(scheme, host, port, userinfo)
        if service is None:
            return self.transport.handle_request(request)
        extra = request.extensions.get(EXTENSION_KEY)
        if extra is not None and not isinstance(extra, CallOptions):
            raise _not_options(extra)
        run: CallRun[httpx.Response] = self.mesh.start_call(  # (positional: extra, replayable, source)
            service, request.method, extra, isinstance(request.stream, httpx.ByteStream), request
        )
        wire = current_wire()
        with no_http_instrumentation():  # one CLIENT span per call: ours
            # (the loop of mesh_client.driving.drive with each attempt in it)
            step = run.advance(None)
            try:
                while isinstance(step, Attempt):
                    if step.delay > 0:
                        _clock.sleep(step.delay)
                    outgoing = attempt_request(request, step, url_key)
                    if wire is not None:
                        outgoing.read()
                        outcome: Responded[httpx.Response] | Broken | None = over_wire(wire, run, step, outgoing)
                    else:
                        timer = BodyTimer(step)
                        try:
                            response = self.transport.handle_request(outgoing)
                            outcome = (  # (the body read now if the caller reads it all, not in memory yet)
                                read_body(response, outgoing, timer)
                                if WHOLE_BODY.get() and not isinstance(response.stream, httpx.ByteStream)
                                else None
                            )
                        except httpx.TransportError as exc:  # (read_body classifies the body's own)
                            outcome = failure(exc) or _reraise(exc)
                        else:
                            if outcome is None:
                                response.extensions[SENT_KEY] = outgoing
                                code = response.status_code
                                if run.wants_body(code, response.headers):  # (a small body, to classify it)
                                    outcome = Responded(response, code, response.headers, response.read())
                                else:
                                    outcome = Responded(response, code, header_dict(response.headers))
                    step = run.advance(outcome)
                    if isinstance(step, Attempt) and isinstance(outcome, Responded):
                        outcome.response.close()
            except BaseException as exc:
                run.abort(exc)
                raise
        if run.shadow is not None:  # a copy down the other route, compared off this thread
            send_again = functools.partial(_whole, self.handle_request, request)
            run.shadow.submit(step, _answer_of(), send_again, _target(request))
        if isinstance(step, Fail):
            raise_failure(step, functools.partial(native_error, request=request))
        step.response.extensions[INFO_KEY] = step.info
        return step.response

    def _forward_to(self) -> httpx.BaseTransport:
        return self.transport  # (entered, exited and closed with this one)

    def _after_fork(self) -> None:
        """In a forked child (see :mod:`mesh_client.fork`): the wrapped transport (which carries
        the mesh calls and every other request not mounted elsewhere) opens connections of its
        own (or, when its pool cannot be emptied, is replaced by one made the same way)."""
        self.transport = forget_transport_connections(self.transport, self._remake)


class AsyncMeshTransport(ForwardsAsyncContext, httpx.AsyncBaseTransport):
    """An ``httpx.AsyncBaseTransport`` routing registered services through the mesh."""

    def __init__(self, mesh: CallStarter, transport: httpx.AsyncBaseTransport | None = None, **kwargs: Any) -> None:
        self.mesh = mesh
        #: makes a transport like the one made here (none when the caller gave it; see _after_fork)
        self._remake = None if transport is not None else functools.partial(httpx.AsyncHTTPTransport, **kwargs)
        self.transport = transport if transport is not None else httpx.AsyncHTTPTransport(**kwargs)
        reset_in_child(self, AsyncMeshTransport._after_fork)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        scheme, host, port, userinfo, url_key = httpx_compat.url_parts(request.url)
        service = self.mesh.http_service(scheme, host, port, userinfo)
        if service is None:
            return await self.transport.handle_async_request(request)
        extra = request.extensions.get(EXTENSION_KEY)
        if extra is not None and not isinstance(extra, CallOptions):
            raise _not_options(extra)
        run: CallRun[httpx.Response] = self.mesh.start_call(  # (positional: extra, replayable, source)
            service, request.method, extra, isinstance(request.stream, httpx.ByteStream), request
        )
        wire = current_wire()
        with no_http_instrumentation():  # one CLIENT span per call: ours
            # (the loop of mesh_client.driving.drive_async with each attempt in it: every wait of
            # the attempt resumes the frames between the client and the wrapped transport)
            step = run.advance(None)
            try:
                while isinstance(step, Attempt):
                    if step.delay > 0:
                        await _clock.async_sleep(step.delay)
                    outgoing = attempt_request(request, step, url_key)
                    if wire is not None:
                        await outgoing.aread()
                        outcome: Responded[httpx.Response] | Broken | None = over_wire(wire, run, step, outgoing)
                    else:
                        timer = BodyTimer(step)
                        response: httpx.Response | None = None
                        try:
                            # one deadline for the whole attempt (see mesh_client.http._async_deadline)
                            with attempt_deadline(step.timeout):
                                response = await self.transport.handle_async_request(outgoing)
                                outcome = (  # (the body read now if the caller reads it all, not in memory yet)
                                    await read_body_async(response, outgoing, timer)
                                    if WHOLE_BODY.get() and not isinstance(response.stream, httpx.ByteStream)
                                    else None
                                )
                        except httpx.TransportError as exc:  # (read_body_async classifies the body's own)
                            outcome = failure(exc) or _reraise(exc)
                        except TimeoutError:
                            outcome = await _timed_out(response, step, timer, outgoing)
                        else:
                            if outcome is None:
                                response.extensions[SENT_KEY] = outgoing
                                code = response.status_code
                                if run.wants_body(code, response.headers):  # (a small body, to classify it)
                                    outcome = Responded(response, code, response.headers, await response.aread())
                                else:
                                    outcome = Responded(response, code, header_dict(response.headers))
                    step = run.advance(outcome)
                    if isinstance(step, Attempt) and isinstance(outcome, Responded):
                        await outcome.response.aclose()
            except BaseException as exc:
                run.abort(exc)
                raise
        if run.shadow is not None:  # a copy down the other route, compared in a task of its own
            send_again = functools.partial(_whole_async, self.handle_async_request, request)
            run.shadow.submit_task(step, _answer_of(), send_again, _target(request))
        if isinstance(step, Fail):
            raise_failure(step, functools.partial(native_error, request=request))
        step.response.extensions[INFO_KEY] = step.info
        return step.response

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


async def _timed_out(
    response: httpx.Response | None, attempt: Attempt, timer: BodyTimer, request: httpx.Request
) -> Broken:
    """The outcome when an async attempt's deadline passed: during the body (``response`` is the
    answer, closed here) or before any answer."""
    if response is not None:
        await response.aclose()
        return body_overrun(timer, request)
    message = f"no response within {attempt.timeout:.3f} s"
    return Broken(Failure.TIMEOUT, httpx.ReadTimeout(message, request=request), message)


def _not_options(extra: object) -> TypeError:
    return TypeError(f"extensions[{EXTENSION_KEY!r}] must be a mesh_client.CallOptions, got {extra!r}")


def _reraise(exc: BaseException) -> Broken:
    raise exc
