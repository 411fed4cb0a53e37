"""Serve WSGI and ASGI apps, Thrift services and misbehaving HTTP servers for real on 127.0.0.1
(threads, stopped by their own handle)."""

from __future__ import annotations

import contextlib
import select
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import uvicorn

from mesh_client.registry import Address
from mesh_client.sidecar import SidecarProcess, free_port
from mesh_client.testing.loopback import LoopbackServer, QuietHTTPHandler


class _WSGIServer(LoopbackServer, WSGIServer):
    """wsgiref's server (the app, the WSGI environ) on a loopback server's threads and lifecycle."""


class _QuietWSGIHandler(QuietHTTPHandler, WSGIRequestHandler):
    protocol_version = "HTTP/1.0"  # wsgiref's: one request per connection


@contextmanager
def serve_wsgi(app: Callable[..., Any]) -> Iterator[Address]:
    server = _WSGIServer(_QuietWSGIHandler, name="wsgi-app")
    server.set_app(app)
    with server:
        yield server.address


@contextmanager
def serve_asgi(app: Callable[..., Any], port: int) -> Iterator[Address]:
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    until = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped during start-up"
        assert time.monotonic() < until, "uvicorn did not start within 10 s"
        time.sleep(0.01)
    try:
        yield Address("127.0.0.1", port)
    finally:
        server.should_exit = True
        thread.join(10)


def read_request_head(sock: socket.socket) -> bytes | None:
    """Read from ``sock`` until the end of an HTTP request's headers: everything read so far (the
    head, its blank line and any body bytes after it), or None if the peer closed first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    return data


def serve_thrift(stack: contextlib.ExitStack, service: Any, handler: Any, mesh: Any, transport: str, port: int) -> None:
    """Serve ``handler`` as thriftpy2 ``service`` with mesh_client's server on 127.0.0.1:``port``
    in a thread, stopped when ``stack`` closes."""
    from mesh_client.thrift.server import make_server

    server = make_server(service, handler, "127.0.0.1", port, mesh=mesh, transport=transport)
    thread = server.start()  # listening before it returns
    stack.callback(thread.join, 5)
    stack.callback(server.close)


class _SlowLorisHandler(socketserver.BaseRequestHandler):
    """Reads a request, sends the status line and headers at once, then the body one byte every
    ``server.interval`` seconds: with ``Content-Length``, or chunked when the request line says
    ``chunked``. Stops when the peer goes away (or when the server stops)."""

    server: _SlowLoris

    def handle(self) -> None:
        sock = self.request
        head = read_request_head(sock)
        if head is None:
            return
        chunked = b"chunked" in head.split(b"\r\n", 1)[0]
        framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % self.server.length
        try:
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n" + framing + b"\r\n\r\n")
            for _ in range(self.server.length):
                if self.server.stopping.wait(self.server.interval):
                    return
                sock.sendall(b"1\r\nx\r\n" if chunked else b"x")
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except OSError:
            return  # the client or the proxy gave up: what the scenario is about


class _SlowLoris(LoopbackServer):
    def __init__(self, interval: float, length: int) -> None:
        super().__init__(_SlowLorisHandler, name="slow-loris")
        self.interval = interval
        self.length = length


@contextmanager
def serve_slow_loris(interval: float = 0.2, length: int = 100) -> Iterator[Address]:
    """A slow-loris upstream: headers at once, then ``length`` body bytes, one per ``interval``."""
    with _SlowLoris(interval, length) as server:
        yield server.address


@contextmanager
def black_hole(*, handshakes: bool) -> Iterator[Address]:
    """A port that never answers.

    ``handshakes=True``: a listening socket that is never accept()ed: the kernel completes the
    TCP handshake and the request sits unread. ``False``: its listen queue is full, so new
    connections hang unanswered, as behind a firewall that drops packets.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128 if handshakes else 0)
        address = listener.getsockname()
        if not handshakes:
            for _ in range(16):  # connect until one connection is left hanging (a probe, not a wait)
                filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                fillers.append(filler)
                filler.setblocking(False)
                filler.connect_ex(address)
                _, connected, _ = select.select([], [filler], [], 0.2)
                if not connected:
                    break
            else:
                raise RuntimeError("the listen queue of the black hole never filled up")
        yield Address("127.0.0.1", int(address[1]))
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def _accepts(address: Address) -> Callable[[], bool]:
    def check() -> bool:
        with contextlib.suppress(OSError), socket.create_connection((address.host, address.port), timeout=0.5):
            return True
        return False

    return check


@contextmanager
def answering_haproxy(workdir: Path, binary: str) -> Iterator[Address]:
    """An upstream that answers every request with a small 200 itself: HAProxy in its own process,
    so thousands of calls measure the client and the sidecars, not a Python backend sharing the
    test's interpreter. Stopped by its own pid."""
    workdir.mkdir(parents=True, exist_ok=True)
    address = Address("127.0.0.1", free_port())
    config = workdir / "upstream.cfg"
    config.write_text(
        "\n".join(
            [
                "global",
                "    maxconn 4096",
                "defaults",
                "    mode http",
                "    timeout client 30s",
                "    timeout connect 1s",
                "    timeout server 30s",
                "frontend upstream",
                f"    bind {address}",
                '    http-request return status 200 content-type application/json string "{}"',
                "",
            ]
        )
    )
    argv = [binary, "-db", "-f", str(config)]
    with SidecarProcess("upstream", argv, workdir / "upstream.log", _accepts(address)).start():
        yield address
