"""httpx and httpcore internals: a ``Headers``' item list, a ``Request``'s instance state, a ``URL``'s
parsed parts, httpx's
environment-proxy reader, the read timeout httpcore takes when a body starts, an HTTP/1
connection's network stream, and a transport's connection pool (emptied in a forked child). Each
probed at import, each with a public fallback (see :mod:`mesh_client._compat`)."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Callable, Hashable
from typing import Any, Protocol

import httpcore
import httpx

from . import forced_fallback

__all__ = [
    "HeaderItems",
    "ReadClock",
    "URLParts",
    "bound_each_read",
    "copy_request",
    "environment_proxies",
    "forget_pool_connections",
    "header_items",
    "headers_of",
    "set_body_read_timeout",
    "url_parts",
]

#: a header list as httpx keeps it: (name as given, lower-case name, value), all bytes
HeaderItems = list[tuple[bytes, bytes, bytes]]


# -- Headers: the item list ----------------------------------------------------------------------


def _probe_header_list() -> bool:
    """Whether a ``Headers`` keeps its items as (name, lower-case name, value) bytes in ``_list``,
    next to its ``_encoding``, and one made from that state answers as the constructor's would."""
    if forced_fallback():
        return False
    try:
        if vars(httpx.Headers({"A": "b"})) != {"_list": [(b"A", b"a", b"b")], "_encoding": None}:
            return False
        made = httpx.Headers.__new__(httpx.Headers)
        made.__dict__ = {"_list": [(b"X-One", b"x-one", b"1"), (b"x-one", b"x-one", b"2")], "_encoding": None}
        public = httpx.Headers([(b"X-One", b"1"), (b"x-one", b"2")])
        return made.raw == public.raw and made.get("X-ONE") == "1, 2" and made == public
    except Exception:  # an httpx that keeps its headers otherwise
        return False


_HEADER_LIST: bool = _probe_header_list()


def header_items(headers: httpx.Headers) -> HeaderItems:
    """``headers``' items as httpx keeps them. On the fast path the list itself, not a copy (read
    it, never change it). Fallback: a list made from the public ``Headers.raw``."""
    if _HEADER_LIST:
        items: HeaderItems = headers._list
        return items
    return [(name, name.lower(), value) for name, value in headers.raw]


def headers_of(items: HeaderItems) -> httpx.Headers:
    """A ``Headers`` holding ``items`` (from :func:`header_items`, or text encoded as ``Headers``
    encodes it: ASCII), made without the constructor's per-item work. Fallback: the constructor."""
    if _HEADER_LIST:
        headers = httpx.Headers.__new__(httpx.Headers)
        headers.__dict__ = {"_list": items, "_encoding": None}
        return headers
    return httpx.Headers([(name, value) for name, _, value in items])


# -- Request: the instance state -----------------------------------------------------------------

#: the instance state of a ``Request`` as httpx 0.2x keeps it (``_content`` once the body is read)
_REQUEST_FIELDS = frozenset({"method", "url", "headers", "extensions", "stream", "_content"})


def _probe_request_state() -> bool:
    """Whether a ``Request`` keeps its state in its instance dictionary (the fields above only), so
    that a copy of it with another URL, headers and extensions is the request the constructor
    makes, and the original is left as it was."""
    if forced_fallback():
        return False
    try:
        request = httpx.Request("POST", "http://a/x", headers={"A": "b"}, content=b"body", extensions={"k": 1})
        if not set(vars(request)) <= _REQUEST_FIELDS:
            return False
        before = (request.url, request.headers.raw, request.extensions)
        url, headers = httpx.URL("http://b:1/x"), httpx.Headers({"C": "d"})
        copy = copy_request(request, headers, url, {"k": 2})
        shown = (copy.method, copy.url, copy.headers, copy.extensions, copy.content, copy.stream)
        return shown == ("POST", url, headers, {"k": 2}, b"body", request.stream) and before == (
            request.url,
            request.headers.raw,
            {"k": 1},
        )
    except Exception:  # an httpx that keeps a request's state otherwise
        return False


def copy_request(
    request: httpx.Request,
    headers: httpx.Headers,
    url: httpx.URL | None = None,
    extensions: dict[str, Any] | None = None,
) -> httpx.Request:
    """``request`` with ``headers``, and ``url`` and ``extensions`` when given, in place of its own:
    the same method and body stream (and content, when it has been read). Fast path (an
    ``httpx.Request``, not a subclass): its instance state copied. Fallback: ``httpx.Request``'s
    constructor (the body's stream passed on, and read again when the caller's was read)."""
    if _REQUEST_STATE and type(request) is httpx.Request:
        state = dict(request.__dict__)
        state["headers"] = headers
        if url is not None:
            state["url"] = url
        if extensions is not None:
            state["extensions"] = extensions
        copy = httpx.Request.__new__(httpx.Request)
        copy.__dict__ = state
        return copy
    copy = httpx.Request(
        request.method,
        request.url if url is None else url,
        headers=headers,
        stream=request.stream,
        extensions=request.extensions if extensions is None else extensions,
    )
    try:
        request.content  # noqa: B018 - raises RequestNotRead when the body has not been read
    except httpx.RequestNotRead:
        return copy
    copy.read()  # (an in-memory stream once read)
    return copy


#: (true while the probe runs: it checks copy_request's own fast path)
_REQUEST_STATE: bool = True
_REQUEST_STATE = _probe_request_state()


# -- URL: the parsed parts -------------------------------------------------------------------------

#: a URL's scheme, host (as ``URL.host`` answers), port, whether it has user info, and a key equal
#: for equal URLs only (hashable)
URLParts = tuple[str, str, "int | None", bool, Hashable]


def _probe_url_parts() -> bool:
    """Whether a ``URL`` keeps its parsed parts in ``_uri_reference``, a tuple whose ``scheme``,
    ``host``, ``port`` and ``userinfo`` are what its properties read, equal for equal URLs only."""
    if forced_fallback():
        return False
    try:
        samples = (
            "http://users/x?a=1#f",
            "HTTP://Users.:80/x",
            "https://jo:pw@[::1]:8443/",
            "http://xn--fiqs8s.icom.museum/",
            "http://a",
        )
        for text in samples:
            url = httpx.URL(text)
            public = (url.scheme, url.host, url.port, bool(url.userinfo))
            if not isinstance(url._uri_reference, tuple) or url_parts(url)[:4] != public:
                return False
        keys = [url_parts(httpx.URL(text))[4] for text in ("http://a/x", "http://a/x", "http://a/y", "http://a/x#f")]
        return len({keys[0], keys[1]}) == 1 and len(set(keys)) == 3
    except Exception:  # an httpx that keeps a URL's parts otherwise
        return False


def url_parts(url: httpx.URL) -> URLParts:
    """``url``'s scheme, host, port, whether it has user info, and a key for it. Fast path: read
    from its parsed parts at once, the key those parts (a tuple). Fallback: its properties, the
    key ``str(url)``."""
    if _URL_PARTS:
        parts = url._uri_reference
        host: str = parts.host
        if host.startswith("xn--"):  # (an IDNA name: the property decodes it)
            host = url.host
        return parts.scheme, host, parts.port, bool(parts.userinfo), parts
    return url.scheme, url.host, url.port, bool(url.userinfo), str(url)


#: (true while the probe runs: it checks url_parts' own fast path)
_URL_PARTS: bool = True
_URL_PARTS = _probe_url_parts()


# -- httpx's environment-proxy reader --------------------------------------------------------------


def _probe_proxy_reader() -> Callable[[], object] | None:
    """httpx's own reader of the environment's proxies (``httpx._utils.get_environment_proxies``),
    or None when it is not there or does not answer with a dictionary."""
    if forced_fallback():
        return None
    try:
        from httpx._utils import get_environment_proxies

        return get_environment_proxies if isinstance(get_environment_proxies(), dict) else None
    except Exception:  # (ImportError: moved or gone)
        return None


_PROXY_READER: Callable[[], object] | None = _probe_proxy_reader()


def environment_proxies(reader: Callable[[], object] | None = None) -> dict[str, str | None] | None:
    """The environment's proxy mounts (pattern -> proxy URL, or None: no proxy) as ``reader``
    (httpx's own by default) makes them, or None when there is no reader or it answers otherwise
    (raises, or anything but such a dictionary). Fallback: None, and
    :func:`mesh_client.http._env_proxies.parse_environment_proxies` reads them by httpx's rules."""
    read = reader if reader is not None else _PROXY_READER
    if read is None:
        return None
    try:
        found = read()
    except Exception:  # a changed private function
        return None
    if isinstance(found, dict) and all(
        isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in found.items()
    ):
        return dict(found)
    return None


# -- a body's reads: the read timeout httpcore takes, the connection's network stream ----------------


def _recorded_transport() -> tuple[httpx.HTTPTransport, Any]:
    """An ``httpx.HTTPTransport`` whose pool reads one recorded stream (no socket: httpcore's
    public ``MockBackend``) that answers one HTTP/1.1 response, its 2-byte body in a read of its
    own; and that stream, whose ``timeouts`` lists each read's timeout. Raises when httpx or
    httpcore work otherwise (the probes' exchange; the tests use it too)."""

    class RecordedStream(httpcore.MockStream):
        def __init__(self) -> None:
            super().__init__([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", b"ok"])
            self.timeouts: list[float | None] = []

        def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
            self.timeouts.append(timeout)
            return super().read(max_bytes, timeout)

    class OneStream(httpcore.MockBackend):
        def connect_tcp(
            self,
            host: str,
            port: int,
            timeout: float | None = None,
            local_address: str | None = None,
            socket_options: Any = None,
        ) -> httpcore.NetworkStream:
            return stream

    transport = httpx.HTTPTransport(verify=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    if type(getattr(transport, "_pool", None)) is not httpcore.ConnectionPool:
        raise TypeError("an httpx transport that keeps its pool otherwise")
    stream = RecordedStream()
    transport._pool = httpcore.ConnectionPool(network_backend=OneStream([]))
    return transport, stream


def _probe_exchange(check: Callable[[httpx.Response, dict[str, float], Any], bool]) -> bool:
    """``check`` of a response from a :func:`_recorded_transport`: the response, the request's
    timeouts, the stream. False if anything fails."""
    if forced_fallback():
        return False
    try:
        transport, stream = _recorded_transport()
        timeouts = {"connect": 1.0, "read": 1.0, "write": 1.0, "pool": 1.0}
        # (a port nothing listens on: should the pool set there not be the one used)
        response = transport.handle_request(
            httpx.Request("GET", "http://127.0.0.1:1/", extensions={"timeout": timeouts})
        )
        try:
            return check(response, timeouts, stream)
        finally:
            response.close()
    except Exception:  # an httpx or httpcore that works otherwise
        return False


def _takes_read_timeout_late(response: httpx.Response, timeouts: dict[str, float], stream: Any) -> bool:
    timeouts["read"] = 0.25
    return response.read() == b"ok" and stream.timeouts[0] == 1.0 and stream.timeouts[-1] == 0.25


def _reads_through_instance(response: httpx.Response, timeouts: dict[str, float], stream: Any) -> bool:
    extensions = response.extensions
    # (the same object: compared by id, which leaves the type of ``stream`` as it is)
    if extensions.get("http_version") != b"HTTP/1.1" or id(extensions.get("network_stream")) != id(stream):
        return False
    original = stream.read
    seen: list[float | None] = []

    def read(max_bytes: int, timeout: float | None = None) -> bytes:
        seen.append(timeout)
        data: bytes = original(max_bytes, timeout)
        return data

    stream.read = read
    body = response.read()
    del stream.read
    return body == b"ok" and bool(seen) and stream.read == original


def _probe_read_timeout() -> bool:
    """Whether httpcore takes a body's read timeout from the request's ``extensions["timeout"]``
    (the very dictionary httpx was given) when the body starts, not when the request is sent."""
    return _probe_exchange(_takes_read_timeout_late)


def _probe_network_stream() -> bool:
    """Whether an HTTP/1 response's ``network_stream`` extension is the object its body is read
    from, whose ``read`` (an attribute set on the instance) the body's reads call until deleted."""
    return _probe_exchange(_reads_through_instance)


_READ_TIMEOUT: bool = _probe_read_timeout()
_NETWORK_STREAM: bool = _probe_network_stream()


def set_body_read_timeout(request: httpx.Request, seconds: float) -> None:
    """Make ``seconds`` the read timeout of the body of the response to ``request`` (sent; its body
    not read yet). Fallback: nothing (each of the body's reads may wait as long as the read
    timeout the request was sent with)."""
    if _READ_TIMEOUT:
        timeouts = request.extensions.get("timeout")
        if isinstance(timeouts, dict):
            timeouts["read"] = seconds


class ReadClock(Protocol):
    """The time an attempt has left (:class:`mesh_client.http._body.BodyTimer`)."""

    def left(self) -> float: ...

    def message(self) -> str: ...


def bound_each_read(response: httpx.Response, clock: ReadClock) -> Callable[[], bool] | None:
    """Bound the network reads of an HTTP/1 response's body by ``clock.left()``; return what lifts
    the bound (call it, once, before the response is closed: it answers whether the time ran out
    and the connection was cut), or None when the reads cannot be bounded (not HTTP/1: an HTTP/2
    connection is shared by its responses; then the caller checks the time between chunks).

    httpcore takes one read timeout for a whole body, so a body that trickles and then stops would
    wait that long again after its last byte. Its ``network_stream`` is this connection's alone
    until the response is closed. Fast path: the stream's ``read`` is replaced (on the instance)
    by one whose timeout is the time left, raising ``httpcore.ReadTimeout`` with
    ``clock.message()`` once it is up. Fallback: a timer shuts the connection's socket (the
    stream's public ``get_extra_info("socket")``) down when the time is up, which ends the read
    waiting on it; the connection is not used again (a thread per body, on this path only)."""
    stream: Any = response.extensions.get("network_stream")
    if stream is None or response.extensions.get("http_version") not in (b"HTTP/1.1", b"HTTP/1.0"):
        return None
    if _NETWORK_STREAM:
        lift = _bound_reads(stream, clock)
        if lift is not None:
            return lift
    return _Cutoff.start(stream, clock)


def _bound_reads(stream: Any, clock: ReadClock) -> Callable[[], bool] | None:
    read = getattr(stream, "read", None)
    if read is None:
        return None

    def bounded_read(max_bytes: int, timeout: float | None = None) -> bytes:
        left = clock.left()
        if left <= 0:
            raise httpcore.ReadTimeout(clock.message())
        data: bytes = read(max_bytes, left if timeout is None else min(timeout, left))
        return data

    def lift() -> bool:
        del stream.read  # the class's own again
        return False  # (the time running out raised ReadTimeout)

    try:
        stream.read = bounded_read
    except AttributeError:  # (a stream class with __slots__)
        return None
    return lift


class _Cutoff:
    """The fallback of :func:`bound_each_read`: the socket shut down when the time is up, unless
    the bound was lifted first."""

    __slots__ = ("_cut", "_lifted", "_lock", "_sock", "_timer")

    def __init__(self, sock: socket.socket, seconds: float) -> None:
        self._sock = sock
        self._lock = threading.Lock()
        self._cut = self._lifted = False
        self._timer = threading.Timer(seconds, self._shut)
        self._timer.daemon = True

    @classmethod
    def start(cls, stream: Any, clock: ReadClock) -> Callable[[], bool] | None:
        info = getattr(stream, "get_extra_info", None)
        sock = info("socket") if callable(info) else None
        if not isinstance(sock, socket.socket):
            return None
        cutoff = cls(sock, max(clock.left(), 0.0))
        cutoff._timer.start()
        return cutoff.lift

    def _shut(self) -> None:
        with self._lock:
            if self._lifted:
                return
            self._cut = True
        with contextlib.suppress(OSError):  # (closed already)
            self._sock.shutdown(socket.SHUT_RDWR)  # a read waiting on it ends: end of stream

    def lift(self) -> bool:
        self._timer.cancel()
        with self._lock:
            self._lifted = True
            return self._cut


# -- a transport's connection pool (a forked child) --------------------------------------------------


def _pool_of(transport: object) -> Any:
    """The httpcore pool of an ``HTTPTransport`` / ``AsyncHTTPTransport`` if it is kept as
    expected: in ``_pool``, its connections and queued requests in the lists ``_connections`` and
    ``_requests``, guarded by ``_optional_thread_lock``, a lock its type makes anew; else None."""
    pool = getattr(transport, "_pool", None)
    if not isinstance(pool, (httpcore.ConnectionPool, httpcore.AsyncConnectionPool)):
        return None
    state = vars(pool)
    lock = state.get("_optional_thread_lock")
    if not (isinstance(state.get("_connections"), list) and isinstance(state.get("_requests"), list)) or lock is None:
        return None
    return pool


def _probe_pool_state() -> bool:
    """Whether fresh transports keep their pools as :func:`_pool_of` expects, and the pool's public
    ``connections`` reads the ``_connections`` list."""
    if forced_fallback():
        return False
    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        for transport in (httpx.HTTPTransport(verify=context), httpx.AsyncHTTPTransport(verify=context)):
            pool = _pool_of(transport)
            if pool is None:
                return False
            type(pool._optional_thread_lock)()
            marker = object()
            pool._connections = [marker]
            if pool.connections != [marker]:
                return False
        return True
    except Exception:  # an httpcore that keeps its pool otherwise
        return False


_POOL_STATE: bool = _probe_pool_state()


def forget_pool_connections(transport: httpx.HTTPTransport | httpx.AsyncHTTPTransport) -> bool:
    """Make ``transport`` open new connections instead of those its pool holds (a forked child's,
    inherited from the parent), writing nothing on them: the pool is emptied without its lock
    (which a thread of the parent may have held at the fork) and given a new lock; the sockets are
    closed when the old lists are collected, which writes nothing and leaves the parent's copies
    open. False when the probe failed or this pool is kept otherwise: then nothing was changed,
    and the caller takes a public way (:func:`mesh_client.http._fork.forget_transport_connections`:
    a new transport, or the sync one closed)."""
    pool = _pool_of(transport) if _POOL_STATE else None
    if pool is None:
        return False
    try:
        fresh_lock = type(pool._optional_thread_lock)()
    except TypeError:  # (a lock its type cannot make anew)
        return False
    pool._connections = []  # (collected with the pool's old list: their sockets closed, nothing sent)
    pool._requests = []
    pool._optional_thread_lock = fresh_lock
    return True
