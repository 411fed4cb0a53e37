"""thriftpy2 internals: the strictness of its Cython binary reader over a buffered transport,
``thriftpy2.thrift.args_to_kwargs`` (how its own client maps a call's arguments), and the
``clean()`` that empties its Cython memory buffer and buffered transport. Each probed at import,
each with a public fallback (see :mod:`mesh_client._compat`).

Public thriftpy2 names used elsewhere are not seams: the protocol and transport classes, the
``thrift_spec`` of generated structs, the fields of a result struct (read through its
``__dict__``), and the methods of ``TProcessor``, ``TThreadedServer`` and ``TSocket`` the server
modules call (:mod:`mesh_client.thrift.server`, :mod:`mesh_client.thrift.processing`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import thriftpy2.protocol
import thriftpy2.thrift
import thriftpy2.transport
from thriftpy2.thrift import TApplicationException, TMessageType

from . import forced_fallback

__all__ = [
    "buffered_cleaner",
    "call_kwargs",
    "clear_buffered",
    "memory_buffer_reusable",
    "reads_strictly",
    "strict_reader",
]

# thriftpy2's Cython classes are untyped: use them through Any
_protocol: Any = thriftpy2.protocol
_transport: Any = thriftpy2.transport

Reader = Callable[[bytes], Any]

# -- the binary reader: strict about a short message? ---------------------------------------------


def _probe_message() -> bytes:
    """A reply message holding a TApplicationException (a string and an i32 field)."""
    buf: Any = _transport.TMemoryBuffer()
    proto = _protocol.TBinaryProtocolFactory().get_protocol(buf)
    proto.write_message_begin("probe", TMessageType.EXCEPTION, 0x01020304)
    TApplicationException(TApplicationException.INTERNAL_ERROR, "probe message").write(proto)
    proto.write_message_end()
    return bytes(buf.getvalue())


#: what :func:`_decodes` reads from :func:`_probe_message`
_PROBE_DECODED = ("probe", TMessageType.EXCEPTION, 0x01020304, TApplicationException.INTERNAL_ERROR, "probe message")


def _decodes(reader: Reader, body: bytes) -> tuple[Any, ...]:
    proto = reader(body)
    name, mtype, seqid = proto.read_message_begin()
    error = TApplicationException()
    error.read(proto)
    proto.read_message_end()
    return name, mtype, seqid, error.type, error.message


def reads_strictly(reader: Reader) -> bool:
    """Whether ``reader`` decodes a sample reply exactly and refuses every truncation of it (the
    check itself: :func:`strict_reader` is the probe that also honours the forced fallback)."""
    try:
        body = _probe_message()
        if _decodes(reader, body) != _PROBE_DECODED:
            return False
    except Exception:
        return False
    for cut in range(len(body)):
        try:
            _decodes(reader, body[:cut])
        except Exception:
            continue
        return False  # made something of a truncated message
    return True


def strict_reader(reader: Reader) -> bool:
    """The probe of :mod:`mesh_client.thrift.reading`: whether the fast ``reader`` (thriftpy2's
    Cython protocol over its buffered transport) may decode replies. Its end-of-data check is a
    behaviour thriftpy2 does not document; False when forced, and the fallback is thriftpy2's
    pure-Python binary protocol, strict by itself."""
    return not forced_fallback() and reads_strictly(reader)


# -- a call's arguments as keyword arguments of its args struct ----------------------------------


def spec_kwargs(spec: Mapping[int, tuple[Any, ...]], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """The public fallback of :func:`call_kwargs`: what ``args_to_kwargs`` does, from the args
    struct's ``thrift_spec`` alone. Positional arguments follow the IDL order (the spec's
    insertion order); a positional None is left out (the field keeps its default); a positional
    argument wins over a keyword one of the same name. Raises ``ValueError(name)`` for a missing
    required argument and ``TypeError`` for more positional arguments than the method takes (an
    unknown keyword is left for the struct's constructor to refuse, also with ``TypeError``)."""
    entries = list(spec.values())
    if len(args) > len(entries):
        raise TypeError(f"takes {len(entries)} positional arguments but {len(args)} were given")
    for index, entry in enumerate(entries):
        name, required = entry[1], entry[-1]
        if index < len(args) and args[index] is not None:
            kwargs[name] = args[index]
        if required and name not in kwargs:
            raise ValueError(name)
    return kwargs


def _probe_args_to_kwargs() -> Callable[..., dict[str, Any]] | None:
    """thriftpy2's ``args_to_kwargs`` when it is there and maps a sample call as
    :func:`spec_kwargs` does, else None."""
    if forced_fallback():
        return None
    mapper = getattr(thriftpy2.thrift, "args_to_kwargs", None)
    if mapper is None:
        return None
    spec = {2: (11, "name", False), 1: (10, "id", True)}  # declared name first, then id
    try:
        if mapper(spec, "ada", 7) != {"name": "ada", "id": 7}:
            return None
        if mapper(spec, None, 7, name="kw") != {"name": "kw", "id": 7}:
            return None
        try:
            mapper(spec, "ada", 7, 8)
        except TypeError:
            pass  # too many arguments
        else:
            return None
        try:
            mapper(spec, "ada")
        except ValueError as exc:
            return mapper if exc.args == ("id",) else None
    except Exception:
        return None
    return None


_ARGS_TO_KWARGS = _probe_args_to_kwargs()


def call_kwargs(spec: Mapping[int, tuple[Any, ...]], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """A call's arguments as keyword arguments of its args struct, as thriftpy2's own client maps
    them: its ``args_to_kwargs`` when the probe passed, else :func:`spec_kwargs`. Raises
    ``ValueError(name)`` for a missing required argument, ``TypeError`` for too many."""
    mapper = _ARGS_TO_KWARGS
    if mapper is None:
        return spec_kwargs(spec, *args, **kwargs)
    return mapper(spec, *args, **kwargs)


# -- emptying a buffer to use it again ----------------------------------------------------------


def _probe_memory_clean() -> bool:
    """Whether thriftpy2's memory buffer (Cython when built) has a ``clean()`` that empties it
    for writing again."""
    if forced_fallback():
        return False
    try:
        buf = _transport.TMemoryBuffer()
        buf.write(b"left over")
        buf.clean()
        buf.write(b"new")
        return bytes(buf.getvalue()) == b"new"
    except Exception:  # no clean(), or one that does something else
        return False


_MEMORY_CLEAN: bool = _probe_memory_clean()


def memory_buffer_reusable() -> bool:
    """Whether a ``TMemoryBuffer`` may be emptied with ``clean()`` and written again (then the
    Thrift client keeps one per connection). Fallback: a new buffer for every call."""
    return _MEMORY_CLEAN


class _Chunks:
    """A transport under the probe's buffered transport: hands out the given chunks in turn."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)

    def read(self, sz: int) -> bytes:
        return self.chunks.pop(0)[:sz] if self.chunks else b""


def _probe_buffered_clean() -> bool:
    """Whether thriftpy2's buffered transport (Cython when built) has a ``clean()`` that drops
    what it read ahead and what it holds to write."""
    if forced_fallback():
        return False
    try:
        trans = _transport.TBufferedTransport(_Chunks(b"abcd", b"wxyz"))
        if bytes(trans.read(1)) != b"a":
            return False
        trans.write(b"unsent")
        trans.clean()
        return bytes(trans.read(2)) == b"wx"  # read from the next chunk, not the rest of the first
    except Exception:  # no clean(), or one that does something else
        return False


_BUFFERED_CLEAN: bool = _probe_buffered_clean()


def clear_buffered(trans: Any, inner: Any) -> None:
    """Drop what the buffered transport ``trans`` (over ``inner``) read ahead or holds unsent:
    its ``clean()`` when the probe passed, else thriftpy2's public constructor run again over
    ``inner`` (new, empty buffers: always correct, an allocation more)."""
    if _BUFFERED_CLEAN:
        trans.clean()
    else:
        _transport.TBufferedTransport.__init__(trans, inner)


def buffered_cleaner(trans: Any, inner: Any) -> Callable[[], None]:
    """:func:`clear_buffered` of ``trans`` (over ``inner``) made ready to call: the transport's
    own ``clean`` when the probe passed (one C call each time), else the constructor run again."""
    if _BUFFERED_CLEAN:
        clean: Callable[[], None] = trans.clean
        return clean
    return functools.partial(_transport.TBufferedTransport.__init__, trans, inner)
