"""The server side of a Thrift connection that reads THeader (and plain framed) requests and frames
each reply like its request: :class:`THeaderServerTransport`, one per connection, made by
:class:`THeaderServerTransportFactory` (see :mod:`mesh_client.thrift.server` for how they fit with
thriftpy2's servers). A refused frame closes the connection with one warning in the
``mesh_client.thrift.server`` log."""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any, Literal

from thriftpy2.transport import TBufferedTransport, TTransportException

from .._compat.thriftpy2 import clear_buffered
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

__all__ = ["Framing", "THeaderServerTransport", "THeaderServerTransportFactory"]

#: the log of every part of the Thrift server (the name the docs give)
logger = logging.getLogger("mesh_client.thrift.server")

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
