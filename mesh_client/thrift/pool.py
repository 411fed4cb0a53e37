"""The Thrift client's connections: one socket used by one call at a time, pooled per address.

A call sends its whole frame and reads the whole reply frame by its length before anything is
decoded (:func:`~mesh_client.thrift.theader.read_frame` refuses a short or oversized frame; a
first read that holds exactly one whole frame, the usual small reply, is taken as it is), all
before the attempt's deadline. A connection is reused only after a complete, expected reply: not
after a timeout, a transport error, an error reply, or bytes arriving that nobody asked for. Each
connection keeps its write buffer and its reply reader
(:func:`~mesh_client.thrift.reading.new_reply_reader`) for the calls made on it.
"""

from __future__ import annotations

import contextlib
import queue
import select
import socket
import struct
import threading
import time
from time import monotonic
from typing import Any, Final

import thriftpy2.protocol
import thriftpy2.transport

from .._compat.thriftpy2 import memory_buffer_reusable
from ..registry import Address
from .reading import new_reply_reader
from .theader import DEFAULT_MAX_FRAME, read_frame

__all__ = ["Connection", "Pool", "PoolExhausted"]

_protocol: Any = thriftpy2.protocol
_transport: Any = thriftpy2.transport

#: idle connections kept per address
MAX_IDLE: Final = 8
#: bytes asked of the socket at once while reading a reply (a small reply arrives in one read)
_RECV_SIZE: Final = 65_536
#: thriftpy2's (Cython) memory buffer can be emptied and written again; the pure-Python one cannot
#: (probed in :mod:`mesh_client._compat.thriftpy2`)
_REUSABLE_BUFFER: Final = memory_buffer_reusable()
#: a frame's length field
_LENGTH: Final = struct.Struct(">i")
_PROTOCOL_FACTORY: Final[Any] = _protocol.TBinaryProtocolFactory()  # Cython-accelerated when available


class PoolExhausted(TimeoutError):
    """Every connection the pool may open is in use, and none came back in time."""


class Connection:
    """One socket to a proxy (or a server), used by one call at a time."""

    __slots__ = ("_buffer", "_protocol", "address", "poll", "reader", "seqid", "sock", "unasked")

    def __init__(self, sock: socket.socket, address: Address) -> None:
        self.sock = sock
        self.address = address
        self.seqid = 0
        #: bytes came after the reply (a peer answering what was not asked): never reuse
        self.unasked = False
        #: polled for input while the connection is idle (see :meth:`Pool.acquire`)
        self.poll = select.poll()
        self.poll.register(sock, select.POLLIN)
        self._buffer: Any = None
        self._protocol: Any = None
        #: the binary protocol reading a reply frame's body (see :mod:`mesh_client.thrift.reading`)
        self.reader = new_reply_reader()

    def next_seqid(self) -> int:
        self.seqid = self.seqid % 0x7FFFFFFF + 1
        return self.seqid

    def writer(self) -> tuple[Any, Any]:
        """An empty memory buffer and the binary protocol writing to it (kept per connection
        where thriftpy2's buffer can be emptied)."""
        if self._buffer is None or not _REUSABLE_BUFFER:
            self._buffer = _transport.TMemoryBuffer()
            self._protocol = _PROTOCOL_FACTORY.get_protocol(self._buffer)
        else:
            self._buffer.clean()
        return self._buffer, self._protocol

    def exchange(self, frame: bytes, until: float, oneway: bool) -> bytes | None:
        """Send ``frame``; return the reply frame's body (None for oneway), all before ``until``."""
        sock = self.sock
        left = until - monotonic()  # (_settimeout inline, here and below)
        if left <= 0:
            raise TimeoutError("timed out")
        sock.settimeout(left)
        sock.sendall(frame)
        if oneway:
            return None
        left = until - monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        sock.settimeout(left)
        received = sock.recv(_RECV_SIZE)
        size = len(received) - 4
        if 0 < size <= DEFAULT_MAX_FRAME and _LENGTH.unpack_from(received)[0] == size:
            return received[4:]  # (the usual reply: its whole frame, and nothing else, in one read)
        return self._rest_of_reply(received, until)

    def _rest_of_reply(self, received: bytes, until: float) -> bytes:
        """The reply frame's body when its first read (``received``) did not hold exactly the
        whole frame: read by :func:`~mesh_client.thrift.theader.read_frame`, which refuses a
        short or oversized frame."""
        sock = self.sock
        if not received:
            raise ConnectionResetError("the proxy closed the connection before the whole reply")

        def recv_exactly(n: int) -> bytes:
            nonlocal received
            if len(received) < n:
                parts = bytearray(received)
                while len(parts) < n:
                    _settimeout(sock, until)
                    chunk = sock.recv(max(n - len(parts), _RECV_SIZE))
                    if not chunk:
                        raise ConnectionResetError("the proxy closed the connection before the whole reply")
                    parts += chunk
                received = bytes(parts)
            wanted, received = received[:n], received[n:]
            return wanted

        body: bytes = read_frame(recv_exactly)
        if received:
            self.unasked = True
        return body

    def close(self) -> None:
        with contextlib.suppress(OSError):  # closing must not raise
            self.sock.close()


def _settimeout(sock: socket.socket, until: float) -> None:
    left = until - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    sock.settimeout(left)


class Pool:
    """Connections to one address: at most ``limit`` in use, a few idle ones kept (thread-safe)."""

    def __init__(self, address: Address, limit: int) -> None:
        self.address = address
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        #: one token per connection that may be in use (a queue: its waits are in C)
        self._slots: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(limit):
            self._slots.put(None)
        self._limit = limit
        self.closed = False

    def acquire(self, until: float) -> Connection:
        try:
            self._slots.get_nowait()
        except queue.Empty:
            try:
                self._slots.get(timeout=max(0.0, until - time.monotonic()))
            except queue.Empty:
                raise PoolExhausted(f"all {self._limit} connections to {self.address} are busy") from None
        try:
            while True:
                try:
                    conn = self._idle.pop()  # (one C call, atomic: no lock needed to take one)
                except IndexError:
                    break
                try:  # whether the peer closed (or sent something unasked) while it was idle
                    dropped = bool(conn.poll.poll(0))  # (a closed socket answers POLLNVAL)
                except (OSError, ValueError):
                    dropped = True
                if not dropped:
                    return conn
                conn.close()
            left = until - time.monotonic()
            if left <= 0:
                raise TimeoutError("timed out before connecting")
            sock = socket.create_connection((self.address.host, self.address.port), timeout=left)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return Connection(sock, self.address)
        except BaseException:
            self._slots.put(None)
            raise

    def release(self, conn: Connection, reusable: bool) -> None:
        keep = False
        if reusable and not conn.unasked and not self.closed:
            with self._lock:
                if len(self._idle) < MAX_IDLE:
                    self._idle.append(conn)
                    keep = True
        if not keep:
            conn.close()
        self._slots.put(None)

    def close(self) -> None:
        self.closed = True
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def forget(self) -> None:
        """In a forked child: never use these connections again (the parent goes on using them).
        Their sockets are closed here, which sends nothing and leaves the parent's copies open.
        Takes no lock: another thread of the parent may have held it at the fork."""
        self.closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
