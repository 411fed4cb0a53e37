"""Thrift servers built with thriftpy2 that take the mesh context from THeader headers.

The Thrift twin of :mod:`mesh_client.wsgi`: inside a handler, ``mesh_client.time_left()`` is the
caller's remaining deadline (``x-envoy-expected-rq-timeout-ms`` or ``x-mesh-timeout-ms``),
``mesh_client.current_request_id()`` the caller's ``x-request-id``, the OpenTelemetry context is
the caller's, and mesh calls made by the handler carry all of it on, with the registry's
allowlisted context headers::

    server = mesh_client.thrift.server.make_server(users_thrift.Users, Handler(), "127.0.0.1", 9090, mesh=mesh)
    with server:              # listens, serves in a background thread, stops on exit
        ...
    # or: server.serve() in the foreground, server.close() from another thread

The pieces, usable on their own with thriftpy2's ``make_server`` or ``TThreadedServer`` (each in a
module of its own, re-exported here):

- :class:`THeaderServerTransportFactory` / :class:`THeaderServerTransport`
  (:mod:`mesh_client.thrift.server_transport`): reads THeader frames (and plain framed ones,
  unless told not to), gives the protocol the message, remembers the request's headers and
  sequence id, and writes each reply in the request's framing (THeader with the request's
  sequence id and protocol id and no headers, or framed). It is a thriftpy2 buffered transport,
  so both the Cython ``thriftpy2.protocol.TBinaryProtocolFactory()`` and the pure-Python
  protocols work on it.
- :class:`MeshProcessor` (:mod:`mesh_client.thrift.processing`): wraps a ``TProcessor``; reads
  each request's frame first and runs the wrapped processor inside the request's context (in a
  private ``contextvars.Context``, so nothing leaks into the connection's thread).

A malformed frame, a transform (zlib...), a protocol other than the server's, or a message
longer than its frame closes the connection with one warning in the ``mesh_client.thrift.server``
log; the client sees the connection closed. (Envoy answers a transform with a
``TApplicationException`` instead; a server cannot, as the message inside is unreadable.)
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, Literal

import thriftpy2.protocol
import thriftpy2.transport
from thriftpy2.server import TThreadedServer
from thriftpy2.thrift import TProcessor

from .processing import MeshProcessor
from .server_transport import Framing, THeaderServerTransport, THeaderServerTransportFactory
from .theader import DEFAULT_MAX_FRAME, PROTOCOL_BINARY, PROTOCOL_COMPACT

if TYPE_CHECKING:
    from ..mesh import Mesh

__all__ = [
    "MeshProcessor",
    "MeshThriftServer",
    "THeaderServerTransport",
    "THeaderServerTransportFactory",
    "make_server",
]

logger = logging.getLogger(__name__)

# thriftpy2 ships inline types, but its factories and sockets are unannotated
_protocol: Any = thriftpy2.protocol
_transport: Any = thriftpy2.transport


class MeshThriftServer(TThreadedServer):
    """thriftpy2's thread-per-connection server, with a stop that works.

    :meth:`start` listens (so clients can connect as soon as it returns) and serves in a
    background thread; :meth:`close` stops accepting, closes the open connections and waits
    (bounded) for the threads. :meth:`serve` serves in the calling thread. Also a context manager
    (``with server:`` = start, then close).
    """

    def __init__(self, processor: Any, server_socket: Any, **kwargs: Any) -> None:
        super().__init__(processor, server_socket, daemon=True, **kwargs)
        self._clients: dict[int, Any] = {}
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._serve_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._server_socket: Any = server_socket

    def listen(self) -> None:
        """Bind and listen now (idempotent)."""
        if self._server_socket.sock is None:
            self._server_socket.listen()

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) listened on (after :meth:`listen`)."""
        if self._server_socket.sock is None:
            raise RuntimeError("the server is not listening yet: call listen() or start()")
        host, port = self._server_socket.sock.getsockname()[:2]
        return str(host), int(port)

    def serve(self) -> None:
        self.listen()
        while not self._stopping.is_set():
            try:
                client = self._server_socket.accept()
            except Exception:
                if self._stopping.is_set():
                    return
                logger.exception("accepting a Thrift connection failed")
                continue
            with self._lock:
                if self._stopping.is_set():
                    client.close()
                    return
                thread = threading.Thread(target=self.handle, args=(client,), daemon=True, name="thrift-connection")
                # registered before the thread runs, so close() always finds it
                self._threads.add(thread)
                self._clients[id(client)] = client
            thread.start()

    def handle(self, client: Any) -> None:
        with self._lock:
            self._clients[id(client)] = client
        try:
            with contextlib.suppress(OSError, AttributeError):  # the client may be gone already
                client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().handle(client)
        finally:
            with self._lock:
                self._clients.pop(id(client), None)
                self._threads.discard(threading.current_thread())

    def start(self) -> threading.Thread:
        """Listen, then serve in a daemon thread (returned)."""
        self.listen()
        thread = threading.Thread(target=self.serve, daemon=True, name="thrift-server")
        self._serve_thread = thread
        thread.start()
        return thread

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, close open connections, wait up to ``timeout`` s for the threads."""
        with self._lock:
            self.closed = True
            self._stopping.set()
            clients = list(self._clients.values())
            threads = list(self._threads)
        self._server_socket.close()  # its shutdown() wakes the blocked accept()
        for client in clients:
            # only shut the socket down: its thread then reads EOF and closes it (thriftpy2's
            # TSocket.close is not safe to call from two threads at once)
            sock = client.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        for thread in [self._serve_thread, *threads]:
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout)

    def __enter__(self) -> MeshThriftServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def make_server(
    service: ModuleType | Any,
    handler: object,
    host: str,
    port: int,
    *,
    mesh: Mesh,
    transport: Framing = "header",
    protocol: Literal["binary", "compact"] = "binary",
    client_timeout: float | None = None,
    max_frame: int = DEFAULT_MAX_FRAME,
) -> MeshThriftServer:
    """A thriftpy2 server for ``service`` (from ``thriftpy2.load``) whose handler runs in each
    request's mesh context.

    ``transport="header"`` accepts THeader and plain framed requests and answers each in kind;
    ``"framed"`` accepts plain framed requests only. Unframed (buffered) clients are refused.
    ``protocol``: ``"binary"`` (thriftpy2's Cython protocol) or ``"compact"``. ``client_timeout``:
    seconds a connection may stay idle or stall mid-frame before the server closes it (None:
    no limit). ``port=0`` picks a free port (see :attr:`MeshThriftServer.address`).
    """
    if transport not in ("header", "framed"):
        raise ValueError(f"transport must be 'header' or 'framed', got {transport!r}")
    if protocol not in ("binary", "compact"):
        raise ValueError(f"protocol must be 'binary' or 'compact', got {protocol!r}")
    if client_timeout is not None and not client_timeout > 0:
        raise ValueError(f"client_timeout must be positive seconds or None, got {client_timeout!r}")
    accept = frozenset({"header", "framed"}) if transport == "header" else frozenset({"framed"})
    protocol_id = PROTOCOL_BINARY if protocol == "binary" else PROTOCOL_COMPACT
    proto_factory = _protocol.TBinaryProtocolFactory() if protocol == "binary" else _protocol.TCompactProtocolFactory()
    server_socket = _transport.TServerSocket(
        host=host, port=port, client_timeout=client_timeout * 1000 if client_timeout is not None else None
    )
    return MeshThriftServer(
        MeshProcessor(TProcessor(service, handler), mesh),
        server_socket,
        itrans_factory=THeaderServerTransportFactory(max_frame=max_frame, accept=accept, protocol_id=protocol_id),
        iprot_factory=proto_factory,
    )
