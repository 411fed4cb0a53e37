"""``ScriptedUpstream``: a real HTTP server that answers with the same :class:`Reply` scripts as
``fake_mesh`` handlers, for running one scenario against the real Envoy and HAProxy.

It binds 127.0.0.1 on a free port, answers request *n* with ``replies[n]`` (the last one
repeating; a callable computes the reply from the request), really waits ``delay`` seconds,
closes the connection for :func:`reset`, and records
what each request looked like when it arrived. :func:`refuse` cannot be scripted here (it would
need nothing to listen): point a service's endpoint at a closed port instead.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import parse_qsl, urlsplit

from ..policy import Route
from ..registry import Address
from .calls import Headers, UpstreamRequest
from .replies import Reply, reply

__all__ = ["ScriptedUpstream"]

#: the longest a scripted delay really waits (a hang ends when the server stops)
_MAX_WAIT = 30.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    upstream: ScriptedUpstream

    def handle_error(self, request: object, client_address: object) -> None:  # a client gave up: fine
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _handle(self) -> None:
        upstream = self.server.upstream
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        spec = upstream._next(
            UpstreamRequest(
                service=upstream.name,
                route=Route.ENVOY if "x-envoy-attempt-count" in self.headers else Route.HAPROXY,
                method=self.command,
                path=split.path,
                query=dict(parse_qsl(split.query)),
                headers=Headers(self.headers.items()),
                body=body,
                attempt=int(self.headers.get("x-envoy-attempt-count") or 1),
                received_at=time.monotonic(),
            )
        )
        if spec.fault == "refuse":
            raise ValueError("ScriptedUpstream cannot refuse a connection it accepted; use a closed port")
        if spec.delay and upstream._stopping.wait(min(spec.delay, _MAX_WAIT) if not math.isinf(spec.delay) else None):
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


class ScriptedUpstream:
    """A real HTTP service instance answering with a script of :class:`Reply` objects."""

    def __init__(self, name: str = "upstream") -> None:
        self.name = name
        self.requests: list[UpstreamRequest] = []
        self._replies: tuple[Reply | Callable[[UpstreamRequest], Reply], ...] = (reply(200),)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler, bind_and_activate=False)
        self._server.request_queue_size = 128  # concurrent calls must not find the backlog full
        self._server.server_bind()
        self._server.server_activate()
        self._server.upstream = self
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> Address:
        host, port = self._server.server_address[:2]
        return Address(str(host), int(port))

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

    def start(self) -> ScriptedUpstream:
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"upstream-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> ScriptedUpstream:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
