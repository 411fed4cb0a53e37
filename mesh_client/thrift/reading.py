"""Reading a binary Thrift message from a complete frame, with the fastest reader that stays strict.

A reply is first read whole, by its frame length (:func:`~mesh_client.thrift.theader.read_frame`);
only then is it decoded, from memory. Which thriftpy2 reader decodes it matters:

- thriftpy2's Cython binary protocol over its Cython *memory* buffer (what
  ``thriftpy2.utils.deserialize`` uses) does not notice a short buffer: a read past the end
  returns what is left, and the protocol makes values out of whatever is on the stack. A
  truncated reply would come back as a made-up struct.
- The same Cython protocol over thriftpy2's Cython *buffered* transport wrapping an
  :class:`io.BytesIO` of the frame raises ``TTransportException(END_OF_FILE)`` at the first read
  past the end: that transport checks every read of the stream it wraps. Only public thriftpy2
  names are used (``thriftpy2.protocol.TBinaryProtocol``, ``thriftpy2.transport.TBufferedTransport``,
  the Cython classes when thriftpy2 was built with them), but the end-of-data check is a behaviour
  thriftpy2 does not document, so it is *probed* at import (:func:`strict_fast_reader`, the seam
  :mod:`mesh_client._compat.thriftpy2`): a sample message must decode whole and fail at every
  truncation. Where the probe fails (another thriftpy2, a build without Cython, a change of
  behaviour), :func:`binary_reader` uses thriftpy2's pure-Python binary protocol, which fails on
  short input by itself (about ten times slower).
Setting ``MESH_CLIENT_THRIFT_PURE_READER=1`` (or ``MESH_CLIENT_COMPAT_FALLBACK=1``, which fails
every probe) forces that fallback.

A declared string or container length larger than what is left of the frame fails at the first
read past its end, as with the pure-Python reader (the Cython reader may reserve, not touch,
address space of the declared size for a moment; the frame itself is bounded by ``max_frame``).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Mapping
from typing import Any, Final

import thriftpy2.protocol
import thriftpy2.protocol.binary
import thriftpy2.transport
import thriftpy2.transport.memory

from .._compat.thriftpy2 import buffered_cleaner, strict_reader

__all__ = [
    "KEPT_MAX_BODY",
    "PURE_READER_ENV",
    "binary_reader",
    "choose_kept_reader",
    "choose_reader",
    "kept_fast_reader",
    "new_reply_reader",
    "pure_reader",
    "strict_fast_reader",
    "strict_kept_reader",
]

# thriftpy2's Cython classes are untyped: use them through Any
_protocol: Any = thriftpy2.protocol
_transport: Any = thriftpy2.transport
_binary: Any = thriftpy2.protocol.binary
_memory: Any = thriftpy2.transport.memory

Reader = Callable[[bytes], Any]


def fast_reader(body: bytes) -> Any:
    """thriftpy2's default binary protocol (Cython when built) over its buffered transport over
    ``body``: strict only where :func:`strict_fast_reader` says so."""
    return _protocol.TBinaryProtocol(_transport.TBufferedTransport(io.BytesIO(body)))


#: the largest body a kept reader reads with its kept buffers: no read of a smaller one can grow
#: them past thriftpy2's default size (a larger one gets a :func:`fast_reader` of its own)
KEPT_MAX_BODY: Final = 4096


def kept_fast_reader() -> Reader:
    """A :func:`fast_reader` that keeps its stream, buffered transport and protocol from one body
    to the next: one per connection, used by one call at a time. Before each body the transport
    drops what the last one left (:func:`mesh_client._compat.thriftpy2.buffered_cleaner`) and the
    stream is started again on the new body. Strict where :func:`strict_kept_reader` says so."""
    stream = io.BytesIO()
    trans = _transport.TBufferedTransport(stream)
    proto = _protocol.TBinaryProtocol(trans)
    clean = buffered_cleaner(trans, stream)
    restart = io.BytesIO.__init__

    def read(body: bytes) -> Any:
        if len(body) > KEPT_MAX_BODY:
            return fast_reader(body)
        restart(stream, body)  # (the same stream, now holding ``body`` from its start)
        clean()
        return proto

    return read


def pure_reader(body: bytes) -> Any:
    """thriftpy2's pure-Python binary protocol over ``body``: fails on any read past the end."""
    return _binary.TBinaryProtocol(_memory.TMemoryBuffer(body))


def strict_fast_reader(reader: Reader = fast_reader) -> bool:
    """Whether the fast ``reader`` may decode replies: it decodes a sample reply exactly and
    refuses every truncation of it (:func:`mesh_client._compat.thriftpy2.strict_reader`, always
    False under ``MESH_CLIENT_COMPAT_FALLBACK=1``)."""
    return strict_reader(reader)


def strict_kept_reader(new_reader: Callable[[], Reader] = kept_fast_reader) -> bool:
    """Whether readers made by ``new_reader`` may decode replies: :func:`strict_fast_reader` of one
    of them, which decodes the sample and every truncation of it in turn (so also after a body
    it read whole and after ones it refused)."""
    return strict_fast_reader(new_reader())


def _pure_readers() -> Reader:
    """The reader of a connection where the fast one may not be used: :func:`pure_reader`."""
    return pure_reader


#: set to ``1`` to force the pure-Python reader (to rule the Cython one out, or to test the fallback)
PURE_READER_ENV: Final = "MESH_CLIENT_THRIFT_PURE_READER"


def choose_reader(environ: Mapping[str, str], probe: Callable[[], bool] = strict_fast_reader) -> Reader:
    """The pure-Python reader when ``environ`` forces it or the probe fails, else the fast one."""
    if environ.get(PURE_READER_ENV, "") not in ("", "0") or not probe():
        return pure_reader
    return fast_reader


def choose_kept_reader(
    environ: Mapping[str, str], probe: Callable[[], bool] = strict_kept_reader
) -> Callable[[], Reader]:
    """What makes a connection's reader: pure-Python readers when ``environ`` forces them or the
    probe fails, else :func:`kept_fast_reader`."""
    if environ.get(PURE_READER_ENV, "") not in ("", "0") or not probe():
        return _pure_readers
    return kept_fast_reader


#: the reader of a body on its own (:mod:`mesh_client.thrift.marshal`), chosen once at import
binary_reader: Final[Reader] = choose_reader(os.environ)
#: what makes the reader of one connection's replies (:mod:`mesh_client.thrift.pool`), chosen once
#: at import
new_reply_reader: Final[Callable[[], Reader]] = choose_kept_reader(os.environ)
