"""``ScriptedUpstream``: a real HTTP server that answers with the same :class:`Reply` scripts as
``fake_mesh`` handlers, for running one scenario against the real Envoy and HAProxy.

It is a :class:`~mesh_client.testing.loopback.LoopbackServer` (127.0.0.1, a free port). It
answers request *n* with ``replies[n]`` (the last one repeating; a callable computes the reply from
the request), really waits ``delay`` seconds (until the server stops), closes the connection for
:func:`reset`, and records what each request looked like when it arrived. :func:`refuse` cannot be
scripted here (it would need nothing to listen): point a service's endpoint at a closed port
instead.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Callable
from typing import Final
from urllib.parse import parse_qsl, urlsplit

from ..envoy import DEFAULT_PREFIX, header_names
from ..policy import Route
from .calls import Headers, UpstreamRequest
from .loopback import LoopbackServer, LoopbackService, QuietHTTPHandler
from .replies import Reply, reply

#: the header Envoy adds to what it forwards, counting the tries (absent on the HAProxy route)
_ATTEMPT_COUNT: Final = header_names(DEFAULT_PREFIX).attempt_count

__all__ = ["ScriptedUpstream"]

#: the longest a scripted delay really waits (a hang ends when the server stops)
_MAX_WAIT = 30.0


class _Server(LoopbackServer):
    upstream: ScriptedUpstream


class _Handler(QuietHTTPHandler):
    server: _Server

    def _handle(self) -> None:
        upstream = self.server.upstream
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        spec = upstream._next(
            UpstreamRequest(
                service=upstream.name,
                route=Route.ENVOY if _ATTEMPT_COUNT in self.headers else Route.HAPROXY,
                method=self.command,
                path=split.path,
                query=dict(parse_qsl(split.query)),
                headers=Headers(self.headers.items()),
                body=body,
                attempt=int(self.headers.get(_ATTEMPT_COUNT) or 1),
                received_at=time.monotonic(),
            )
        )
        if spec.fault == "refuse":
            raise ValueError("ScriptedUpstream cannot refuse a connection it accepted; use a closed port")
        if spec.delay and self.server.stopping.wait(min(spec.delay, _MAX_WAIT) if not math.isinf(spec.delay) else None):
            self.close_connection = True
            return
        if spec.fault == "reset":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        try:
            self.send_response(spec.status)
            for name, value in spec.headers:
                self.send_header(name, value)
            self.send_header("content-length", str(len(spec.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(spec.body)
        except OSError:
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


class ScriptedUpstream(LoopbackService):
    """A real HTTP service instance answering with a script of :class:`Reply` objects."""

    _server: _Server

    def __init__(self, name: str = "upstream") -> None:
        self.name = name
        self.requests: list[UpstreamRequest] = []
        self._replies: tuple[Reply | Callable[[UpstreamRequest], Reply], ...] = (reply(200),)
        self._lock = threading.Lock()
        self._server = _Server(_Handler, name=f"upstream-{name}")
        self._server.upstream = self

    def script(self, *replies: Reply | Callable[[UpstreamRequest], Reply]) -> None:
        """Answer the next requests with ``replies`` (the last repeats) and forget past requests.
        A reply may be a callable ``(UpstreamRequest) -> Reply``, as a ``fake_mesh`` handler."""
        if not replies:
            raise ValueError("script() needs at least one reply")
        with self._lock:
            self._replies = replies
            self.requests = []

    def _next(self, request: UpstreamRequest) -> Reply:
        with self._lock:
            self.requests.append(request)
            spec = self._replies[min(len(self.requests), len(self._replies)) - 1]
        return spec if isinstance(spec, Reply) else spec(request)
