"""One attempt of an httpx mesh call, as both transports make it: the request it sends (to the
proxy's address, with the headers the core says), its outcome over an installed wire, and the
answer's headers and errors as the core reads them.

The caller's headers are passed on as the bytes they are (httpx's own item list, see
:mod:`mesh_client._compat.httpx`), the attempt's URL is remembered per (caller's URL, proxy
address), and a response's headers are read into a dictionary once for the core's lookups.
"""

from __future__ import annotations

import http.client
from collections.abc import Hashable
from typing import Final

import httpx

from .._cache import BoundedCache
from .._compat import httpx as httpx_compat
from ..core import CallRun
from ..errors import MeshTimeoutError, MeshTransportError
from ..registry import Address
from ..steps import Attempt, Broken, Failure, Responded
from ..wire import Wire, WireFailure, WireRequest
from ._headers import kept_names, learn

__all__ = [
    "SENT_KEY",
    "attempt_request",
    "failure",
    "header_dict",
    "native_error",
    "over_wire",
]

#: ``response.extensions[SENT_KEY]``: the request the answering attempt sent (to the proxy, with the
#: headers as sent), until a client from the mesh shows it as ``response.request`` (see
#: :mod:`mesh_client.http._httpx_client`)
SENT_KEY: Final = "mesh_client.sent"


def native_error(error: type[MeshTransportError], message: str, *, request: httpx.Request) -> httpx.TransportError:
    """The httpx exception for a failure the core decided (no exception was caught)."""
    native = httpx.TimeoutException if issubclass(error, MeshTimeoutError) else httpx.ConnectError
    return native(message, request=request)


def failure(exc: httpx.TransportError) -> Broken | None:
    """Classify an httpx transport error; None for errors that are not network failures."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return Broken(Failure.CONNECT, exc, str(exc) or type(exc).__name__)
    if isinstance(exc, httpx.TimeoutException):  # read, write and pool timeouts
        # (its message too: a mocking library's "no response" is a timeout exception)
        return Broken(Failure.TIMEOUT, exc, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    if isinstance(exc, (httpx.NetworkError, httpx.RemoteProtocolError)):
        return Broken(Failure.RESET, exc, str(exc) or type(exc).__name__)
    return None


def attempt_request(request: httpx.Request, attempt: Attempt, url_key: Hashable) -> httpx.Request:
    """The request ``attempt`` sends: the caller's (its method, body and extensions) to the proxy's
    address, with the caller's headers that may go out (as the bytes they are) and then the
    core's (encoded as ``Headers`` encodes them: ASCII), and the attempt's time as every httpx
    timeout. ``url_key`` is the key of the caller's URL (from
    :func:`mesh_client._compat.httpx.url_parts`)."""
    t = attempt.timeout
    extensions = {**request.extensions, "timeout": {"connect": t, "read": t, "write": t, "pool": t}}
    known = kept_names(attempt)
    items: httpx_compat.HeaderItems = []
    for item in httpx_compat.header_items(request.headers):
        keep = known.get(item[1])
        if keep is None:  # a header name not seen before under these rules
            learn(known, attempt, (item[1],))
            keep = known[item[1]]
        if keep:
            items.append(item)
    kept = _ENCODED_ITEMS
    for header in attempt.set_headers:
        encoded = kept.get(header)
        if encoded is None:  # not kept: made per call (a request id, a trace context) or not seen yet
            name, value = header
            pair = _ENCODED_NAMES.get(name)
            if pair is None:  # a name the core sets, not encoded before (a few in all)
                raw = name.encode("ascii")
                pair = _ENCODED_NAMES.put(name, (raw, raw.lower()))
            encoded = (*pair, value.encode("ascii"))
            if name == "Host" or name.startswith(attempt.drop_prefixes):
                kept.put(header, encoded)  # the same on the service's every call: Host and the policy's
        items.append(encoded)
    proxied = _PROXY_URLS.get((url_key, attempt.address))
    if proxied is None:
        address = attempt.address
        proxied = request.url.copy_with(scheme="http", host=address.host, port=address.port)
        _PROXY_URLS.put((url_key, address), proxied)
    return httpx_compat.copy_request(request, httpx_compat.headers_of(items), proxied, extensions)


def over_wire(
    wire: Wire, run: CallRun[httpx.Response], attempt: Attempt, request: httpx.Request
) -> Responded[httpx.Response] | Broken:
    """One attempt over an installed :class:`~mesh_client.wire.Wire` (a fake mesh); the request's
    body has been read."""
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


#: the httpx exception for each way an attempt can fail over a wire
_WIRE_ERRORS: Final = {
    Failure.CONNECT: httpx.ConnectError,
    Failure.TIMEOUT: httpx.ReadTimeout,
    Failure.RESET: httpx.RemoteProtocolError,
}


def header_dict(headers: httpx.Headers) -> dict[str, str]:
    """A response's headers as the core reads them (it looks up lower-case names only, five times
    per Envoy response): httpx's ``Headers.get`` lower-cases, encodes and scans the whole list on
    every lookup; a dictionary made once answers each in one step. Repeated headers are joined
    with ", ", as httpx joins them; values are read as latin-1 text (the core reads numbers and
    tokens, which are ASCII; the response the caller gets is untouched)."""
    items = httpx_compat.header_items(headers)
    found: dict[str, str] = {}
    for _, lower, raw in items:
        found[lower.decode("latin-1")] = raw.decode("latin-1")
    if len(found) == len(items):  # no name repeated (the usual response)
        return found
    joined: dict[str, str] = {}
    for name, value in headers.multi_items():  # (names lower-cased)
        joined[name] = f"{joined[name]}, {value}" if name in joined else value
    return joined


#: (the caller's URL's key, a proxy address) -> the URL the attempt goes to: ``URL.copy_with``
#: parses the whole URL again (tens of µs), and a service is usually called with the same URLs again
_PROXY_URLS: BoundedCache[tuple[Hashable, Address], httpx.URL] = BoundedCache(1024)

#: header name -> (name, lower-case name) as bytes, for the names the core sets (a few)
_ENCODED_NAMES: BoundedCache[str, tuple[bytes, bytes]] = BoundedCache(256)
#: a header the core sets that is the same on every call of a service (``Host``, the Envoy policy
#: headers, ``x-mesh-timeout-ms``: the names under the attempt's dropped prefixes) -> its item as
#: httpx keeps it: encoded once, not per call (a request id or a trace context is never kept)
_ENCODED_ITEMS: BoundedCache[tuple[str, str], tuple[bytes, bytes, bytes]] = BoundedCache(256)
