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

The pieces, usable on their own with thriftpy2's ``make_server`` or ``TThreadedServer``:

- :class:`THeaderServerTransportFactory` / :class:`THeaderServerTransport`: reads THeader frames
  (and plain framed ones, unless told not to), gives the protocol the message, remembers the
  request's headers and sequence id, and writes each reply in the request's framing (THeader with
  the request's sequence id and protocol id and no headers, or framed). It is a thriftpy2
  buffered transport, so both the Cython ``thriftpy2.protocol.TBinaryProtocolFactory()`` and the
  pure-Python protocols work on it.
- :class:`MeshProcessor`: wraps a ``TProcessor``; reads each request's frame first and runs the
  wrapped processor inside the request's context (in a private ``contextvars.Context``, so nothing
  leaks into the connection's thread).

A malformed frame, a transform (zlib...), a protocol other than the server's, or a message
longer than its frame closes the connection with one warning in the ``mesh_client.thrift.server``
log; the client sees the connection closed. (Envoy answers a transform with a
``TApplicationException`` instead; a server cannot, as the message inside is unreadable.)
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import socket
import threading
import weakref
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, Literal

import thriftpy2.protocol
import thriftpy2.transport
from thriftpy2.server import TThreadedServer
from thriftpy2.thrift import TApplicationException, TProcessor
from thriftpy2.transport import TBufferedTransport, TTransportException

from .._compat.thriftpy2 import clear_buffered
from ..context import begin_request
from .theader import (
    DEFAULT_MAX_FRAME,
    PROTOCOL_BINARY,
    PROTOCOL_COMPACT,
    FrameError,
    decode_header_frame,
    encode_framed,
    encode_header_frame,
    is_header_frame,
    read_frame,
)

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

Framing = Literal["header", "framed"]
_PROTOCOL_NAMES = {PROTOCOL_BINARY: "binary", PROTOCOL_COMPACT: "compact"}


def _peer(trans: Any) -> str:
    try:
        host, port = trans.sock.getpeername()[:2]
        return f"{host}:{port}"
    except Exception:
        return "a client"


class _Frames:
    """The layer under the buffered transport: one request frame's payload at a time, replies
    framed like the request."""

    def __init__(self, trans: Any, *, max_frame: int, accept: frozenset[str], protocol_id: int) -> None:
        self.trans = trans
        self.max_frame = max_frame
        self.accept = accept
        self.protocol_id = protocol_id
        #: set once frames are read explicitly (:meth:`THeaderServerTransport.read_frame`): a read
        #: past the end of the current frame is then an error instead of the next frame
        self.explicit = False
        self.framing: Framing | None = None
        self.headers: dict[str, str] = {}
        self.seqid = 0
        self._payload = b""
        self._pos = 0
        self._pending: list[bytes] = []

    def _recv_exactly(self, n: int) -> bytes:
        chunks = bytearray()
        while len(chunks) < n:
            try:
                chunk = self.trans.read(n - len(chunks))
            except TimeoutError as exc:
                raise TTransportException(TTransportException.TIMED_OUT, f"client idle or stalled: {exc}") from exc
            except OSError as exc:
                raise TTransportException(TTransportException.END_OF_FILE, f"client connection lost: {exc}") from exc
            if not chunk:
                raise TTransportException(TTransportException.END_OF_FILE, "client closed the connection")
            chunks += chunk
        return bytes(chunks)

    def _refuse(self, problem: str) -> TTransportException:
        logger.warning("closing the Thrift connection from %s: %s", _peer(self.trans), problem)
        return TTransportException(TTransportException.UNKNOWN, problem)

    def next_frame(self) -> None:
        self._payload, self._pos = b"", 0
        try:
            body = read_frame(self._recv_exactly, self.max_frame)
            if is_header_frame(body):
                if "header" not in self.accept:
                    raise FrameError("a THeader frame reached a server for plain framed Thrift")
                frame = decode_header_frame(body)
                if frame.protocol_id != self.protocol_id:
                    raise FrameError(
                        f"the client speaks the {_PROTOCOL_NAMES[frame.protocol_id]} protocol, this server "
                        f"{_PROTOCOL_NAMES[self.protocol_id]}"
                    )
                self.framing, self.headers, self.seqid, payload = "header", frame.headers, frame.seqid, frame.payload
            else:
                if "framed" not in self.accept:
                    raise FrameError("a plain framed message reached a server for THeader only")
                self.framing, self.headers, self.seqid, payload = "framed", {}, 0, body
        except FrameError as exc:
            raise self._refuse(str(exc)) from exc
        self._payload = payload

    def read(self, sz: int) -> bytes:
        if self._pos >= len(self._payload):
            if self.explicit:
                raise self._refuse("the Thrift message runs past the end of its frame")
            self.next_frame()
        chunk = self._payload[self._pos : self._pos + sz]
        self._pos += len(chunk)
        return chunk

    def write(self, data: bytes) -> None:
        self._pending.append(bytes(data))

    def flush(self) -> None:
        if not self._pending:
            return
        payload = b"".join(self._pending)
        self._pending.clear()
        if self.framing == "header":
            frame = encode_header_frame(payload, seqid=self.seqid, protocol_id=self.protocol_id)
        elif self.framing == "framed":
            frame = encode_framed(payload)
        else:
            raise TTransportException(TTransportException.UNKNOWN, "a reply before any request: framing unknown")
        try:
            self.trans.write(frame)
            self.trans.flush()
        except OSError as exc:
            raise TTransportException(TTransportException.END_OF_FILE, f"client connection lost: {exc}") from exc

    def drop_unread(self) -> None:
        self._payload, self._pos = b"", 0
        self._pending.clear()

    def is_open(self) -> bool:
        return bool(self.trans.is_open())

    def open(self) -> None:
        self.trans.open()

    def close(self) -> None:
        self.trans.close()


class THeaderServerTransport(TBufferedTransport):
    """The server side of one client connection, THeader or plain framed.

    A thriftpy2 buffered transport (Cython when available) over a framing layer: the protocol
    reads the request's message, and :meth:`flush` sends the reply framed like the request. Read
    with :meth:`read_frame` before each message (as :class:`MeshProcessor` does) and a message
    running past its frame is an error; without it, frames are read as the protocol needs them,
    as thriftpy2's framed transport does.
    """

    def __init__(
        self,
        trans: Any,
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        accept: frozenset[str] = frozenset({"header", "framed"}),
        protocol_id: int = PROTOCOL_BINARY,
    ) -> None:
        frames = _Frames(trans, max_frame=max_frame, accept=accept, protocol_id=protocol_id)
        # the Cython TCyBufferedTransport at run time (mypy sees the pure-Python one)
        super().__init__(frames)  # type: ignore[no-untyped-call]
        self._frames = frames
        self.client = trans

    def write(self, data: bytes | bytearray | memoryview) -> None:
        # thriftpy2's pure-Python binary protocol writes strings as memoryviews, which the Cython
        # buffered transport's write() refuses (the Cython protocol does not come through here)
        super().write(bytes(data))  # type: ignore[no-untyped-call]

    def read_frame(self) -> None:
        """Read the next request frame now (blocking), dropping anything left of the previous one.

        Raises ``TTransportException`` when the client closes, stays idle beyond the socket
        timeout, or sends a frame this server refuses (logged).
        """
        self._drop_buffers()
        self._frames.explicit = True
        self._frames.next_frame()

    def _drop_buffers(self) -> None:
        self._frames.drop_unread()
        clear_buffered(self, self._frames)

    @property
    def headers(self) -> dict[str, str]:
        """The current request's THeader headers, keys as sent (empty for a framed request)."""
        return self._frames.headers

    @property
    def seqid(self) -> int:
        """The current request frame's sequence id (0 for a framed request); the reply echoes it."""
        return self._frames.seqid

    @property
    def framing(self) -> Framing | None:
        """``"header"`` or ``"framed"``: how the current request came, and its reply goes; None
        before the first request."""
        return self._frames.framing


class THeaderServerTransportFactory:
    """A thriftpy2 transport factory for servers: :class:`THeaderServerTransport` per client.

    thriftpy2's servers ask the factory twice per connection (input and output transport); both
    calls get the same transport, so a reply is framed like its request. Use it with thriftpy2's
    ``TBinaryProtocolFactory()`` (Cython or pure Python) or ``TCompactProtocolFactory()`` (then
    pass ``protocol_id=PROTOCOL_COMPACT``).

    ``accept``: the framings allowed (default both); ``max_frame``: the largest request frame.
    """

    def __init__(
        self,
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        accept: frozenset[str] | set[str] = frozenset({"header", "framed"}),
        protocol_id: int = PROTOCOL_BINARY,
    ) -> None:
        unknown = set(accept) - {"header", "framed"}
        if unknown or not accept:
            raise ValueError(f"accept must name 'header' and/or 'framed', got {sorted(accept)!r}")
        if protocol_id not in _PROTOCOL_NAMES:
            raise ValueError(f"protocol_id must be {PROTOCOL_BINARY} (binary) or {PROTOCOL_COMPACT} (compact)")
        if max_frame <= 0:
            raise ValueError(f"max_frame must be positive, got {max_frame}")
        self.max_frame = max_frame
        self.accept = frozenset(accept)
        self.protocol_id = protocol_id
        # id(client) -> its transport, weakly: the transport keeps the client alive, so an id
        # cannot be reused while its entry exists
        self._transports: weakref.WeakValueDictionary[int, THeaderServerTransport] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    def get_transport(self, trans: Any) -> THeaderServerTransport:
        with self._lock:
            existing = self._transports.get(id(trans))
            if existing is not None and existing.client is trans:
                return existing
            created = THeaderServerTransport(
                trans, max_frame=self.max_frame, accept=self.accept, protocol_id=self.protocol_id
            )
            self._transports[id(trans)] = created
            return created


class MeshProcessor:
    """Wrap a thriftpy2 ``TProcessor`` so each request runs in its inbound mesh context.

    For every message: read the request frame (when the transport is a
    :class:`THeaderServerTransport`; other transports give no headers), enter
    :func:`mesh_client.context.begin_request` with the lower-cased headers (deadline, request id,
    trace context, allowlisted context headers), run the wrapped processor, and leave the
    context afterwards, also when the handler raises.

    A handler exception the IDL does not declare is logged and answered with a
    ``TApplicationException`` INTERNAL_ERROR (thriftpy2's own processor would close the
    connection without a reply), so the caller learns the call reached the server and failed.
    """

    def __init__(self, processor: Any, mesh: Mesh) -> None:
        self.processor = processor
        self.mesh = mesh

    def process(self, iprot: Any, oprot: Any) -> None:
        trans = iprot.trans
        if isinstance(trans, THeaderServerTransport):
            trans.read_frame()
            headers = {key.lower(): value for key, value in trans.headers.items()}
        else:
            headers = {}
        config = self.mesh.config
        ctx = contextvars.copy_context()
        end = ctx.run(
            begin_request,
            headers,
            header_prefix=config.header_prefix,
            context_headers=config.context_headers,
            overrides=config.overrides,
        )
        try:
            ctx.run(self._process, iprot, oprot)
        finally:
            ctx.run(end)

    def _process(self, iprot: Any, oprot: Any) -> None:
        processor = self.processor
        if not hasattr(processor, "process_in"):  # not a thriftpy2 TProcessor: run it as it is
            processor.process(iprot, oprot)
            return
        # TProcessor.process, except that an undeclared exception from the handler is answered
        # with TApplicationException INTERNAL_ERROR (as Apache Thrift servers do) instead of
        # closing the connection without a reply
        api, seqid, result, call = processor.process_in(iprot)
        if isinstance(result, TApplicationException):
            processor.send_exception(oprot, api, result, seqid)
            return
        try:
            result.success = call()
        except TApplicationException as exc:
            processor.send_exception(oprot, api, exc, seqid)
            return
        except Exception as exc:
            if not processor.handle_exception(exc, result):
                logger.exception("the Thrift handler of %r raised", api)
                if not result.oneway:
                    error = TApplicationException(
                        TApplicationException.INTERNAL_ERROR, f"internal error in {api} ({type(exc).__name__})"
                    )
                    processor.send_exception(oprot, api, error, seqid)
                return
        if not result.oneway:
            processor.send_result(oprot, api, result, seqid)


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
