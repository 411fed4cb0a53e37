"""Reading an httpx response's body within its attempt's time (see :mod:`mesh_client.http._body`).

When the caller reads the whole body at once (a client from ``mesh.httpx_client()`` /
``mesh.httpx_async_client()``, without ``stream=True``: :data:`WHOLE_BODY`), the transport reads
it during the attempt: the sync transport bounds each network read by the time the attempt has
left (:func:`mesh_client._compat.httpx.bound_each_read`), the async one the whole attempt
(:mod:`mesh_client.http._async_deadline`). The transport's own stream is read and closed, not
``iter_raw()`` / ``aiter_raw()``: those hand the connection back to the pool as the body ends,
before the bound on its reads is lifted.
"""

from __future__ import annotations

import contextvars

import httpx

from .._compat import httpx as httpx_compat
from ..steps import Broken
from ._body import BodyTimer

__all__ = ["WHOLE_BODY", "body_overrun", "read_body", "read_body_async"]

#: True while a client made by mesh_client sends a request without ``stream=True``: the caller
#: reads the whole body at once, so the transport reads it within the attempt's time instead
#: (unless it is in memory already: an ``httpx.ByteStream``)
WHOLE_BODY: contextvars.ContextVar[bool] = contextvars.ContextVar("mesh_client.httpx.whole_body", default=False)


def read_body(response: httpx.Response, request: httpx.Request, timer: BodyTimer) -> Broken | None:
    """Read the response's body within ``timer``'s time, the network reads bounded by the time
    left (when they can be: HTTP/1; the time is checked between chunks too): None when it was
    (the response then holds it), or the outcome when the time ran out or the connection broke."""
    _body_begins(request, timer)
    chunks: list[bytes] = []
    stream: httpx.SyncByteStream = response.stream  # type: ignore[assignment]
    cut = False  # (whether the time ran out and the connection was cut: see bound_each_read)
    try:
        lift = httpx_compat.bound_each_read(response, timer)
        try:
            for chunk in stream:
                chunks.append(chunk)
                timer.received += len(chunk)
                if timer.left() <= 0:  # (when the reads could not be bounded)
                    response.close()
                    return _body_broken(None, timer, request)
        finally:
            if lift is not None:
                cut = lift()
    except httpx.TransportError as exc:
        response.close()
        return _body_broken(None if cut else exc, timer, request)
    # (a body complete as its connection was cut: the pool drops a connection whose socket reads
    # as closed before it would use it again)
    stream.close()
    _body_read(response, chunks)
    return None


async def read_body_async(response: httpx.Response, request: httpx.Request, timer: BodyTimer) -> Broken | None:
    """The asyncio twin of :func:`read_body`; the caller's deadline for the whole attempt bounds
    the body, however it trickles."""
    _body_begins(request, timer)
    chunks: list[bytes] = []
    stream: httpx.AsyncByteStream = response.stream  # type: ignore[assignment]
    try:
        async for chunk in stream:
            chunks.append(chunk)
            timer.received += len(chunk)
        await stream.aclose()  # (the connection goes back to the pool)
    except httpx.TransportError as exc:
        _with_request(exc, request)
        await response.aclose()
        return _body_broken(exc, timer, request)
    _body_read(response, chunks)
    return None


def body_overrun(timer: BodyTimer, request: httpx.Request) -> Broken:
    """The outcome when the async attempt's deadline passed during the body."""
    return _body_broken(None, timer, request)


def _body_begins(request: httpx.Request, timer: BodyTimer) -> None:
    """Bound the body's reads by the time the attempt has left (httpcore takes the read timeout
    from the request when the body starts)."""
    httpx_compat.set_body_read_timeout(request, max(timer.left(), 0.0))


def _body_read(response: httpx.Response, chunks: list[bytes]) -> None:
    """Make the response hold its body (as received: decoded when the caller reads it): the
    transport's own response is handed on, its network stream (read to the end and closed, but
    not through the response, which stays unread) replaced by the bytes: cheaper than a new
    ``httpx.Response`` with a copy of the headers."""
    response.stream = httpx.ByteStream(b"".join(chunks))


def _body_broken(error: httpx.TransportError | None, timer: BodyTimer, request: httpx.Request) -> Broken:
    """The outcome when the attempt's time ran out (``error`` None or a timeout) or the connection
    broke during the body."""
    if error is None:
        return timer.overrun(httpx.ReadTimeout(timer.message(), request=request))
    if isinstance(error, httpx.TimeoutException):
        return timer.overrun(error)
    if isinstance(error, (httpx.NetworkError, httpx.RemoteProtocolError)):
        return timer.cut(error)
    raise error


def _with_request(exc: httpx.TransportError, request: httpx.Request) -> None:
    """Attach the request to an error raised by a response stream read directly (httpx's
    ``aiter_raw`` / ``iter_raw`` do that for their callers)."""
    try:
        exc.request  # noqa: B018 - raises RuntimeError when the error has none
    except RuntimeError:
        exc.request = request
