"""httpx: transports that route registered services through the mesh (sync and asyncio).

:class:`MeshTransport` and :class:`AsyncMeshTransport` wrap a stock transport (by default
``httpx.HTTPTransport`` / ``httpx.AsyncHTTPTransport``). Requests for registered service names
run through :mod:`mesh_client.core`; every other request goes to the wrapped transport untouched.
Per-call overrides ride in ``extensions={"mesh": CallOptions(...)}``. The httpx ``timeout``
setting is ignored for mesh calls: the registry and call options decide.

When the caller reads the whole body at once (a client from ``mesh.httpx_client()`` /
``mesh.httpx_async_client()``, without ``stream=True``), the transport reads it within the
attempt's time (see :mod:`mesh_client.http._body`): the sync transport bounds each network read,
the async one the whole body.

The two classes share everything except the lines that ``await`` and how the body's time is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import http.client
import sys
from typing import Any, Final

import httpcore
import httpx

from .._cache import BoundedCache
from ..core import CallRun
from ..driving import drive, drive_async
from ..errors import MeshTimeoutError, MeshTransportError, raise_failure
from ..fork import reset_in_child
from ..info import INFO_KEY
from ..policy import CallOptions
from ..registry import Address
from ..shadow.answers import httpx_answer
from ..steps import Attempt, Broken, Done, Fail, Failure, Responded
from ..telemetry import no_http_instrumentation
from ..wire import Wire, WireFailure, WireRequest, current_wire
from ..wrapping import CallStarter
from . import httpx_errors  # noqa: F401 - registers the combined exceptions raised here
from ._body import BodyTimer
from ._fork import forget_transport_connections
from ._forwarding import ForwardsAsyncContext, ForwardsContext
from ._headers import kept_names, learn

try:  # which async library runs the task (httpx's own test); without it, anyio decides
    import sniffio as _sniffio
except ImportError:  # pragma: no cover - sniffio comes with httpx's dependencies nearly always
    _sniffio = None  # type: ignore[assignment]

__all__ = ["EXTENSION_KEY", "SENT_KEY", "AsyncMeshTransport", "MeshTransport"]

#: ``request.extensions[EXTENSION_KEY]`` may hold a :class:`~mesh_client.CallOptions`.
EXTENSION_KEY = "mesh"
#: ``response.extensions[SENT_KEY]``: the request the answering attempt sent (to the proxy, with the
#: headers as sent), until a client from the mesh shows it as ``response.request`` (see
#: :mod:`mesh_client.http._httpx_client`)
SENT_KEY: Final = "mesh_client.sent"
#: True while a client made by mesh_client sends a request without ``stream=True``: the caller
#: reads the whole body at once, so the transport reads it within the attempt's time instead
_WHOLE_BODY: contextvars.ContextVar[bool] = contextvars.ContextVar("mesh_client.httpx.whole_body", default=False)


def _native_error(error: type[MeshTransportError], message: str, *, request: httpx.Request) -> httpx.TransportError:
    """The httpx exception for a failure the core decided (no exception was caught)."""
    native = httpx.TimeoutException if issubclass(error, MeshTimeoutError) else httpx.ConnectError
    return native(message, request=request)


def _failure(exc: httpx.TransportError) -> Broken | None:
    """Classify an httpx transport error; None for errors that are not network failures."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return Broken(Failure.CONNECT, exc, str(exc) or type(exc).__name__)
    if isinstance(exc, httpx.TimeoutException):  # read, write and pool timeouts
        # (its message too: a mocking library's "no response" is a timeout exception)
        return Broken(Failure.TIMEOUT, exc, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    if isinstance(exc, (httpx.NetworkError, httpx.RemoteProtocolError)):
        return Broken(Failure.RESET, exc, str(exc) or type(exc).__name__)
    return None


class _MeshTransportMixin:
    """What both transports share: planning, per-attempt requests, results."""

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
    def _attempt_request(request: httpx.Request, attempt: Attempt) -> httpx.Request:
        url = _proxy_url(request.url, attempt.address)
        t = attempt.timeout
        extensions = {**request.extensions, "timeout": {"connect": t, "read": t, "write": t, "pool": t}}
        if _HEADER_LIST and _REQUEST_STATE and type(request) is httpx.Request:
            # httpx's own (name, lower-case name, value) bytes: the caller's kept as they are, the
            # attempt's encoded as ``Headers`` encodes them (ASCII), without its per-item checks;
            # and the caller's request copied (its instance state) rather than made anew
            headers = httpx.Headers.__new__(httpx.Headers)
            headers.__dict__ = {"_list": _attempt_header_items(request.headers._list, attempt), "_encoding": None}
            state = dict(request.__dict__)
            state["url"], state["headers"], state["extensions"] = url, headers, extensions
            copy = httpx.Request.__new__(httpx.Request)
            copy.__dict__ = state
            return copy
        # a subclass of Request, or an httpx that keeps its state otherwise: the public way
        drops = attempt.drops
        items = [(k, v) for k, v in request.headers.raw if not drops(k.decode("latin-1"))]
        items += [(k.encode("ascii"), v.encode("ascii")) for k, v in attempt.set_headers]
        return httpx.Request(request.method, url, headers=items, stream=request.stream, extensions=extensions)

    @staticmethod
    def _over_wire(
        wire: Wire, run: CallRun[httpx.Response], attempt: Attempt, request: httpx.Request
    ) -> Responded[httpx.Response] | Broken:
        """One attempt over an installed :class:`~mesh_client.wire.Wire` (a fake mesh); the
        request's body has been read."""
        sent = WireRequest.of(
            attempt,
            header_prefix=run.mesh.header_prefix,
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
            extensions={
                "reason_phrase": reason.encode("ascii", "replace"),
                "http_version": b"HTTP/1.1",
                SENT_KEY: request,
            },
        )
        return Responded(response, response.status_code, response.headers, response.content)

    @staticmethod
    def _responded(
        run: CallRun[httpx.Response], response: httpx.Response, sent: httpx.Request
    ) -> Responded[httpx.Response] | None:
        """The outcome, or None when the (small) body must be read first to classify it; ``sent``
        is the attempt's request."""
        response.extensions[SENT_KEY] = sent
        if run.wants_body(response.status_code, response.headers):
            return None
        return Responded(response, response.status_code, _header_dict(response.headers))

    # -- reading the body within the attempt (see mesh_client.http._body) --------------------------

    @staticmethod
    def _reads_body(response: httpx.Response) -> bool:
        """Whether to read the body within the attempt: the caller reads it all at once, and it is
        not in memory already."""
        return _WHOLE_BODY.get() and not isinstance(response.stream, httpx.ByteStream)

    @staticmethod
    def _body_begins(request: httpx.Request, timer: BodyTimer) -> float:
        """Bound the body's reads by the time the attempt has left (httpcore takes the read
        timeout from the request when the body starts); return that time."""
        left = max(timer.left(), 0.0)
        timeouts = request.extensions.get("timeout")
        if isinstance(timeouts, dict):
            timeouts["read"] = left
        return left

    @staticmethod
    def _body_read(response: httpx.Response, chunks: list[bytes]) -> httpx.Response:
        """The response to hand on, with its body (as received: decoded when the caller reads it).
        The transport's own response, its network stream (read to the end and closed, but not
        through the response, which stays unread) replaced by the bytes: cheaper than a new
        ``httpx.Response`` with a copy of the headers."""
        response.stream = httpx.ByteStream(b"".join(chunks))
        return response

    @staticmethod
    def _body_broken(error: httpx.TransportError | None, timer: BodyTimer, request: httpx.Request) -> Broken:
        """The outcome when the attempt's time ran out (``error`` None or a timeout) or the
        connection broke during the body."""
        if error is None:
            return timer.overrun(httpx.ReadTimeout(timer.message(), request=request))
        if isinstance(error, httpx.TimeoutException):
            return timer.overrun(error)
        if isinstance(error, (httpx.NetworkError, httpx.RemoteProtocolError)):
            return timer.cut(error)
        raise error

    @staticmethod
    def _finish(result: Done[httpx.Response] | Fail, request: httpx.Request) -> httpx.Response:
        if isinstance(result, Fail):
            raise_failure(result, functools.partial(_native_error, request=request))
        result.response.extensions[INFO_KEY] = result.info
        return result.response


class MeshTransport(_MeshTransportMixin, ForwardsContext, httpx.BaseTransport):
    """An ``httpx.BaseTransport`` routing registered services through the mesh."""

    def __init__(self, mesh: CallStarter, transport: httpx.BaseTransport | None = None, **kwargs: Any) -> None:
        self.mesh = mesh
        self.transport = transport if transport is not None else httpx.HTTPTransport(**kwargs)
        reset_in_child(self, _after_fork)

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
            timer = BodyTimer(attempt)
            try:
                response = self.transport.handle_request(attempt_request)
            except httpx.TransportError as exc:
                return _failure(exc) or _reraise(exc)
            if self._reads_body(response):
                read = self._read_body(response, attempt_request, timer)
                if isinstance(read, Broken):
                    return read
                response = read
            outcome = self._responded(run, response, attempt_request)
            if outcome is None:
                outcome = Responded(response, response.status_code, response.headers, response.read())
            return outcome

        with no_http_instrumentation():  # one CLIENT span per call: ours
            result = drive(run, send, lambda r: r.close())
        if run.shadow is not None:  # a copy down the other route, compared off this thread
            send_again = functools.partial(_whole, self.handle_request, request)
            run.shadow.submit(result, _answer_of(), send_again, _target(request))
        return self._finish(result, request)

    def _read_body(self, response: httpx.Response, request: httpx.Request, timer: BodyTimer) -> httpx.Response | Broken:
        self._body_begins(request, timer)
        chunks: list[bytes] = []
        stream: httpx.SyncByteStream = response.stream  # type: ignore[assignment]
        try:
            # the stream itself, not iter_raw(): that hands the connection back to the pool as the
            # body ends, before the bound on its reads is lifted
            bounded = _bound_each_read(response, timer)
            try:
                for chunk in stream:
                    chunks.append(chunk)
                    timer.received += len(chunk)
                    if timer.left() <= 0:  # (when the reads could not be bounded one by one)
                        response.close()
                        return self._body_broken(None, timer, request)
            finally:
                if bounded is not None:
                    del bounded.read  # the class's own again
        except httpx.TransportError as exc:
            response.close()
            return self._body_broken(exc, timer, request)
        stream.close()
        return self._body_read(response, chunks)

    def _forward_to(self) -> httpx.BaseTransport:
        return self.transport  # (entered, exited and closed with this one)


class AsyncMeshTransport(_MeshTransportMixin, ForwardsAsyncContext, httpx.AsyncBaseTransport):
    """An ``httpx.AsyncBaseTransport`` routing registered services through the mesh."""

    def __init__(self, mesh: CallStarter, transport: httpx.AsyncBaseTransport | None = None, **kwargs: Any) -> None:
        self.mesh = mesh
        self.transport = transport if transport is not None else httpx.AsyncHTTPTransport(**kwargs)
        reset_in_child(self, _after_fork)

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
            timer = BodyTimer(attempt)
            response: httpx.Response | None = None
            try:
                # one deadline for the whole attempt: a pool wait, connect, send, wait and body that
                # each stay within httpx's per-phase timeouts can still add up past it
                with _attempt_deadline(attempt.timeout):
                    try:
                        response = await self.transport.handle_async_request(attempt_request)
                    except httpx.TransportError as exc:
                        return _failure(exc) or _reraise(exc)
                    if self._reads_body(response):
                        read = await self._read_body(response, attempt_request, timer)
                        if isinstance(read, Broken):
                            return read
                        response = read
            except TimeoutError:
                if response is not None:
                    await response.aclose()
                    return self._body_broken(None, timer, attempt_request)
                message = f"no response within {attempt.timeout:.3f} s"
                return Broken(Failure.TIMEOUT, httpx.ReadTimeout(message, request=attempt_request), message)
            outcome = self._responded(run, response, attempt_request)
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

    async def _read_body(
        self, response: httpx.Response, request: httpx.Request, timer: BodyTimer
    ) -> httpx.Response | Broken:
        # (the caller's deadline for the whole attempt bounds the body, however it trickles)
        self._body_begins(request, timer)
        chunks: list[bytes] = []
        stream: httpx.AsyncByteStream = response.stream  # type: ignore[assignment]
        try:
            # the stream itself, not aiter_raw() (see _body_read)
            async for chunk in stream:
                chunks.append(chunk)
                timer.received += len(chunk)
            await stream.aclose()  # (the connection goes back to the pool)
        except httpx.TransportError as exc:
            _with_request(exc, request)
            await response.aclose()
            return self._body_broken(exc, timer, request)
        return self._body_read(response, chunks)

    def _forward_to(self) -> httpx.AsyncBaseTransport:
        return self.transport  # (entered, exited and closed with this one)


def _whole(handle: Any, request: httpx.Request) -> httpx.Response:
    """``handle(request)`` with the body read within the call's time (for a shadow copy)."""
    token = _WHOLE_BODY.set(True)
    try:
        response: httpx.Response = handle(request)
    finally:
        _WHOLE_BODY.reset(token)
    return response


async def _whole_async(handle: Any, request: httpx.Request) -> httpx.Response:
    """The asyncio twin of :func:`_whole` (in the copy's own task: no reset needed)."""
    _WHOLE_BODY.set(True)
    response: httpx.Response = await handle(request)
    return response


def _answer_of() -> Any:
    """How a shadow copy reads the caller's response: not at all when the caller streams it."""
    return httpx_answer if _WHOLE_BODY.get() else None


def _target(request: httpx.Request) -> str:
    return request.url.raw_path.decode("ascii", "replace")


def _after_fork(transport: MeshTransport | AsyncMeshTransport) -> None:
    """In a forked child (see :mod:`mesh_client.fork`): the wrapped transport (which carries the
    mesh calls and every other request not mounted elsewhere) opens connections of its own."""
    forget_transport_connections(transport.transport)


#: the httpx exception for each way an attempt can fail over a wire
_WIRE_ERRORS: Final = {
    Failure.CONNECT: httpx.ConnectError,
    Failure.TIMEOUT: httpx.ReadTimeout,
    Failure.RESET: httpx.RemoteProtocolError,
}


def _header_dict(headers: httpx.Headers) -> dict[str, str]:
    """A response's headers as the core reads them (it looks up lower-case names only, five times
    per Envoy response): httpx's ``Headers.get`` lower-cases, encodes and scans the whole list on
    every lookup; a dictionary made once answers each in one step. Repeated headers are joined
    with ", ", as httpx joins them; values are read as latin-1 text (the core reads numbers and
    tokens, which are ASCII; the response the caller gets is untouched)."""
    if _HEADER_LIST:
        items = headers._list
        found = {lower.decode("latin-1"): value.decode("latin-1") for _, lower, value in items}
        if len(found) == len(items):  # no name repeated (the usual response)
            return found
    joined: dict[str, str] = {}
    for name, value in headers.multi_items():  # (names lower-cased)
        joined[name] = f"{joined[name]}, {value}" if name in joined else value
    return joined


#: (the caller's URL, a proxy address) -> the URL the attempt goes to: ``URL.copy_with`` parses
#: the whole URL again (tens of µs), and a service is usually called with the same URLs again
_PROXY_URLS: BoundedCache[tuple[str, Address], httpx.URL] = BoundedCache(1024)


def _proxy_url(url: httpx.URL, address: Address) -> httpx.URL:
    key = (str(url), address)
    proxied = _PROXY_URLS.get(key)
    if proxied is None:
        proxied = _PROXY_URLS.put(key, url.copy_with(scheme="http", host=address.host, port=address.port))
    return proxied


#: httpx keeps a ``Headers``' items as (name, lower-case name, value) bytes in ``_list``, next to
#: its ``_encoding``, and a ``Request``'s state in its instance dictionary: the attempt's request
#: is made from them directly (checked here; otherwise the public constructors are used)
_HEADER_LIST: Final = vars(httpx.Headers({"A": "b"})) == {"_list": [(b"A", b"a", b"b")], "_encoding": None}
_REQUEST_STATE: Final = set(vars(httpx.Request("GET", "http://a/"))) <= {
    "method",
    "url",
    "headers",
    "extensions",
    "stream",
    "_content",
}
#: header name -> (name, lower-case name) as bytes, for the names the core sets (a few)
_ENCODED_NAMES: BoundedCache[str, tuple[bytes, bytes]] = BoundedCache(256)


def _attempt_header_items(
    caller: list[tuple[bytes, bytes, bytes]], attempt: Attempt
) -> list[tuple[bytes, bytes, bytes]]:
    """The attempt's headers as httpx keeps them: the caller's that may go out, then the core's."""
    known = kept_names(attempt)
    try:
        items = [item for item in caller if known[item[1]]]
    except KeyError:  # a header name not seen before under these rules
        learn(known, attempt, [lower for _, lower, _ in caller])
        items = [item for item in caller if known[item[1]]]
    encoded = _ENCODED_NAMES
    try:
        items += [encoded[name] + (value.encode("ascii"),) for name, value in attempt.set_headers]
    except KeyError:  # a name the core sets, not encoded before (a few in all)
        for name, _ in attempt.set_headers:
            raw = name.encode("ascii")
            encoded.put(name, (raw, raw.lower()))
        items += [encoded[name] + (value.encode("ascii"),) for name, value in attempt.set_headers]
    return items


def _with_request(exc: httpx.TransportError, request: httpx.Request) -> None:
    """Attach the request to an error raised by a response stream read directly (httpx's
    ``aiter_raw`` / ``iter_raw`` do that for their callers)."""
    try:
        exc.request  # noqa: B018 - raises RuntimeError when the error has none
    except RuntimeError:
        exc.request = request


if sys.version_info >= (3, 11):  # Task.cancelling() and uncancel()

    class _AsyncioDeadline:
        """``anyio.fail_after(seconds)`` for a task on asyncio, at a fraction of its cost (one
        ``loop.call_at``): the task is cancelled when the time is up, and the ``CancelledError``
        that ends the block becomes a ``TimeoutError``. The same rules as ``asyncio.timeout``
        (Python 3.11+): a cancellation from elsewhere (``cancelling()`` above what it was on entry)
        stays a cancellation."""

        __slots__ = ("_cancelling", "_expired", "_handle", "_task")

        def __init__(self, task: asyncio.Task[Any], seconds: float) -> None:
            self._task = task
            self._expired = False
            self._cancelling = task.cancelling()
            loop = task.get_loop()
            self._handle = loop.call_at(loop.time() + seconds, self._expire)

        def _expire(self) -> None:
            self._expired = True
            self._task.cancel()

        def __enter__(self) -> None:
            return None

        def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
            self._handle.cancel()
            if self._expired and self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc


def _attempt_deadline(seconds: float) -> contextlib.AbstractContextManager[Any]:
    """A block that raises ``TimeoutError`` when ``seconds`` pass: in an asyncio task a
    ``loop.call_at`` timer (:class:`_AsyncioDeadline`, Python 3.11+); otherwise ``anyio.fail_after``."""
    if sys.version_info >= (3, 11) and _sniffio is not None:
        try:
            task = asyncio.current_task()
        except RuntimeError:  # no asyncio loop runs in this thread
            task = None
        # sniffio's own answer, in its order: what a library running on top of asyncio declares
        # (trio-asyncio...) comes first, then the running asyncio task
        declared = _sniffio.thread_local.name or _sniffio.current_async_library_cvar.get()
        if task is not None and declared in (None, "asyncio"):
            return _AsyncioDeadline(task, seconds)
    import anyio  # httpx's own dependency (httpcore runs on it)

    return anyio.fail_after(seconds)


def _reraise(exc: BaseException) -> Broken:
    raise exc


def _bound_each_read(response: httpx.Response, timer: BodyTimer) -> Any | None:
    """Bound each network read of an HTTP/1 body by the time the attempt has left; return the
    network stream whose reads are now bounded (``del stream.read`` gives it back its class's own
    reads), or None when they could not be.

    httpcore takes one read timeout for a whole body, so a body that trickles and then stops
    (Envoy stops passing one on at its timeout) would wait that long again after its last byte.
    Its ``network_stream`` is this connection's alone until the response is closed, which the
    caller does after lifting the bound; with HTTP/2 it is shared, so it is left alone (the time is
    then checked between chunks only)."""
    stream: Any = response.extensions.get("network_stream")
    read = getattr(stream, "read", None)
    if read is None or response.extensions.get("http_version") not in (b"HTTP/1.1", b"HTTP/1.0"):
        return None

    def bounded_read(max_bytes: int, timeout: float | None = None) -> bytes:
        left = timer.left()
        if left <= 0:
            raise httpcore.ReadTimeout(timer.message())
        data: bytes = read(max_bytes, left if timeout is None else min(timeout, left))
        return data

    stream.read = bounded_read
    return stream
