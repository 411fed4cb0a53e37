"""The Thrift THeader transport's wire format: a small, pure codec (no I/O, no Thrift library).

thriftpy2 has no THeader transport, and Envoy's ``thrift_proxy`` carries request headers only
with ``transport: HEADER``, so mesh_client encodes and decodes the frames itself. A frame, all
integers big-endian::

    offset  bytes  field
    ------  -----  ----------------------------------------------------------------------
         0      4  LENGTH       i32 > 0, the number of bytes that follow (not counting itself)
         4      2  MAGIC        0x0FFF (a plain framed message starts 0x8001 or 0x82..)
         6      2  FLAGS        u16, 0 when mesh_client writes
         8      4  SEQUENCE ID  u32, the caller's sequence number; replies echo it
        12      2  HEADER SIZE  u16, size of the header area in 4-byte words (at least 1)
        14    4*N  HEADER AREA  varint PROTOCOL ID     0 binary, 2 compact (1 JSON: refused)
                                varint NUM TRANSFORMS  0 (1 zlib, 2 hmac, 3 snappy...: refused)
                                info blocks, each:
                                  varint INFO ID       1 key/value, 2 persistent key/value
                                  varint COUNT
                                  COUNT x (varint length, key UTF-8,
                                           varint length, value UTF-8)
                                zero bytes up to the end of the area (INFO ID 0 = padding)
    14+4*N    ...  PAYLOAD      the Thrift message in the protocol named above

A varint is unsigned LEB128 (7 bits a byte, low group first, high bit set on every byte but the
last), at most 5 bytes for the 32-bit values used here. :func:`read_frame` and
:func:`decode_header_frame` take the *body*: the frame without its 4-byte length.

What the decoder refuses with :class:`FrameError` (a ``ValueError``): a wrong magic, a header area
that is empty or does not fit in the body, a varint longer than 5 bytes or above 32 bits, a
string running past the header area, a key or value that is not UTF-8, an empty or duplicated
key, a protocol id other than binary or compact, any transform (Envoy answers "Unknown transform"
and mesh_client does not compress), an info type other than 1 and 2 (its length is unknown, so
nothing after it could be read), and padding that is not all zero. Apache Thrift and Envoy stop
reading at an unknown info type and ignore non-zero padding; mesh_client refuses them instead, so
a damaged frame is more often an error than a quietly different request.

THeader has no checksum: a byte changed inside a key or value, the flags, the sequence id or the
protocol id, or a changed string length that re-splits two neighbouring strings into other valid
ones, still makes a well-formed frame. What the codec guarantees for a frame written by
:func:`encode_header_frame` is spelled out (and tested) in ``tests/unit/test_theader.py``.

Limits kept by the encoder: the header area at most 65,536 bytes and every key or value at most
32,767 bytes (Envoy's limits), keys unique ignoring case (Envoy lower-cases keys when it forwards
them), keys and values as :func:`mesh_client.context.check_header_value` allows (latin-1, no CR,
LF or NUL, no blank at either end). Envoy also refuses frames above 16,384,000 bytes, a little
under :data:`DEFAULT_MAX_FRAME`. Header keys are decoded as sent: Envoy forwards them lower-cased,
HAProxy (tcp) keeps their case.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from .._cache import BoundedCache
from ..context import check_header_value

__all__ = [
    "DEFAULT_MAX_FRAME",
    "HEADER_MAGIC",
    "INFO_KEYVALUE",
    "INFO_PKEYVALUE",
    "PROTOCOL_BINARY",
    "PROTOCOL_COMPACT",
    "FrameError",
    "HeaderFrame",
    "decode_header_frame",
    "encode_framed",
    "encode_header_frame",
    "header_frame_parts",
    "is_header_frame",
    "read_frame",
]

HEADER_MAGIC: Final = 0x0FFF
PROTOCOL_BINARY: Final = 0
PROTOCOL_COMPACT: Final = 2
INFO_KEYVALUE: Final = 1
#: fbthrift's "persistent" key/value headers; read like :data:`INFO_KEYVALUE`, never written
INFO_PKEYVALUE: Final = 2
DEFAULT_MAX_FRAME: Final = 16 * 1024 * 1024

#: Envoy refuses a header area above 64 KiB and strings above the i16 range.
MAX_HEADER_AREA: Final = 65_536
MAX_HEADER_STRING: Final = 32_767
_MAX_FRAME_LENGTH: Final = 0x7FFFFFFF  # the length is an i32
_FIXED: Final = 10  # magic, flags, sequence id, header size
_MAGIC_BYTES: Final = HEADER_MAGIC.to_bytes(2, "big")

_PROTOCOLS: Final = {PROTOCOL_BINARY: "binary", 1: "JSON", PROTOCOL_COMPACT: "compact"}
#: the protocol ids a frame may name, each a one-byte varint
_KNOWN_PROTOCOLS: Final = (PROTOCOL_BINARY, PROTOCOL_COMPACT)
_TRANSFORMS: Final = {1: "zlib", 2: "hmac", 3: "snappy", 4: "qlz", 5: "zstd"}
_FIXED_FIELDS: Final = struct.Struct(">HHIH")
_LENGTH: Final = struct.Struct(">i")
#: a frame's length and then its fixed fields, written at once
_LENGTH_AND_FIXED: Final = struct.Struct(">iHHIH")
#: the zero bytes that end a header area of each length (modulo 4) on a 4-byte boundary
_PADDING: Final = (b"", b"\x00\x00\x00", b"\x00\x00", b"\x00")


class FrameError(ValueError):
    """A malformed, truncated, oversized or unsupported Thrift frame; the message says which."""


@dataclass(frozen=True, slots=True)
class HeaderFrame:
    """A decoded THeader frame."""

    seqid: int
    protocol_id: int
    flags: int
    headers: dict[str, str]
    payload: bytes


#: the one-byte varints (0 to 127): every count, info type and short string length
_SMALL_VARINTS: Final = tuple(bytes((i,)) for i in range(0x80))


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _SMALL_VARINTS[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(text: str, key: str | None = None) -> bytes:
    """``text`` as a THeader string; ``key``: the header whose value it is (None: it is a key)."""
    data = text.encode("utf-8")
    if len(data) > MAX_HEADER_STRING:
        what = f"header key {text[:40]!r}" if key is None else f"header {key!r}'s value"
        raise FrameError(f"THeader {what} takes {len(data)} bytes, more than the {MAX_HEADER_STRING} Envoy accepts")
    return _varint(len(data)) + data


#: header keys already checked and encoded: key -> (key ignoring case, the key as a THeader
#: string). Keys come from the core and the registry: a few, so the cache rarely starts over.
_KEYS: BoundedCache[str, tuple[str, bytes]] = BoundedCache(256)


def _key(key: str) -> tuple[str, bytes]:
    found = _KEYS.get(key) if isinstance(key, str) else None
    if found is None:
        if not isinstance(key, str) or not key:
            raise ValueError(f"THeader header key must be a non-empty string, got {key!r}")
        check_header_value("THeader header key", key)
        found = _KEYS.put(key, (key.lower(), _string(key)))
    return found


def encode_framed(payload: bytes) -> bytes:
    """A plain framed-transport frame: 4-byte big-endian length, then ``payload``."""
    if not 0 < len(payload) <= _MAX_FRAME_LENGTH:
        raise FrameError(f"a Thrift frame holds 1 to {_MAX_FRAME_LENGTH} bytes, not {len(payload)}")
    return _LENGTH.pack(len(payload)) + payload


def encode_header_frame(
    payload: bytes,
    *,
    seqid: int,
    headers: Sequence[tuple[str, str]] = (),
    protocol_id: int = PROTOCOL_BINARY,
    flags: int = 0,
) -> bytes:
    """A whole THeader frame (with its 4-byte length) carrying ``payload`` and ``headers``.

    ``seqid`` is an unsigned 32-bit value (keep it below 2**31 for Apache Thrift and Envoy, which
    read it as a signed i32). Raises ValueError for a bad argument or header (naming it) and
    :class:`FrameError` when the headers or the frame exceed what Envoy accepts.
    """
    if not 0 <= seqid <= 0xFFFFFFFF:
        raise ValueError(f"THeader sequence id must be an unsigned 32-bit value, got {seqid}")
    if not 0 <= flags <= 0xFFFF:
        raise ValueError(f"THeader flags must be an unsigned 16-bit value, got {flags}")
    if protocol_id not in (PROTOCOL_BINARY, PROTOCOL_COMPACT):
        raise ValueError(f"THeader protocol id must be {PROTOCOL_BINARY} (binary) or {PROTOCOL_COMPACT} (compact)")
    area = bytearray(_SMALL_VARINTS[protocol_id])
    area += b"\x00"  # no transforms
    if headers:
        count = len(headers)
        area += _SMALL_VARINTS[INFO_KEYVALUE]
        area += _SMALL_VARINTS[count] if count < 0x80 else _varint(count)
        seen: set[str] = set()
        for key, value in headers:
            found = _KEYS.get(key) if isinstance(key, str) else None
            folded, encoded_key = found if found is not None else _key(key)
            # check_header_value's own first test, inline (it returns at once for such a value)
            if not (
                isinstance(value, str)
                and value.isascii()
                and value.isprintable()
                and (not value or (value[0] != " " and value[-1] != " "))
            ):
                check_header_value(key, value)
            if folded in seen:
                raise ValueError(f"THeader header {key!r} given twice (keys are compared ignoring case)")
            seen.add(folded)
            data = value.encode()
            if len(data) < 0x80:  # (the usual value: :func:`_string` inline)
                area += encoded_key + _SMALL_VARINTS[len(data)] + data
            else:
                area += encoded_key + _string(value, key)
    area += _PADDING[len(area) % 4]
    size = len(area)
    if size > MAX_HEADER_AREA:
        raise FrameError(f"THeader headers take {size} bytes, more than the {MAX_HEADER_AREA} Envoy accepts")
    length = _FIXED + size + len(payload)
    if length > _MAX_FRAME_LENGTH:
        raise FrameError(f"a THeader frame of {length} bytes does not fit the 32-bit length")
    return _LENGTH_AND_FIXED.pack(length, HEADER_MAGIC, flags, seqid, size // 4) + area + payload


class _Reader:
    """Reads the header area ``data[pos:end]``, raising FrameError at every overrun."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data = data
        self.pos = pos
        self.end = end

    def varint(self, what: str) -> int:
        pos = self.pos
        if pos < self.end:
            byte = self.data[pos]
            if byte < 0x80:  # (the usual case: one byte)
                self.pos = pos + 1
                return byte
        return self._long_varint(what)

    def _long_varint(self, what: str) -> int:
        value = 0
        for shift in range(0, 35, 7):
            if self.pos >= self.end:
                raise FrameError(f"THeader {what} runs past the end of the header area")
            byte = self.data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if value > 0xFFFFFFFF:
                    raise FrameError(f"THeader {what} is a varint above 32 bits")
                return value
        raise FrameError(f"THeader {what} is a varint longer than 5 bytes")

    def string(self, key: str | None = None) -> str:
        """A header key (``key`` None) or the value of header ``key``."""
        pos = self.pos
        if pos < self.end and self.data[pos] < 0x80:
            size = self.data[pos]
            pos += 1
        else:
            size = self.varint(f"{self._what(key)} length")
            pos = self.pos
        if size > self.end - pos:
            raise FrameError(
                f"THeader {self._what(key)} declares {size} bytes, but only {self.end - pos} are left in the "
                "header area"
            )
        raw = self.data[pos : pos + size]
        self.pos = pos + size
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise FrameError(f"THeader {self._what(key)} is not UTF-8: {raw[:60]!r}") from None

    @staticmethod
    def _what(key: str | None) -> str:
        return "header key" if key is None else f"header {key[:40]!r}'s value"


def decode_header_frame(body: bytes) -> HeaderFrame:
    """Decode a THeader frame's ``body`` (the bytes after the 4-byte length).

    Raises :class:`FrameError` for anything listed in the module documentation.
    """
    seqid, protocol_id, flags, headers, payload = header_frame_parts(body)
    return HeaderFrame(seqid=seqid, protocol_id=protocol_id, flags=flags, headers=headers, payload=payload)


def header_frame_parts(body: bytes) -> tuple[int, int, int, dict[str, str], bytes]:
    """:func:`decode_header_frame` as a tuple (seqid, protocol id, flags, headers, payload), for
    the client's every reply (a frozen :class:`HeaderFrame` costs more to make than to decode)."""
    if len(body) < _FIXED:
        raise FrameError(f"THeader frame truncated: {len(body)} bytes, the fixed part alone takes {_FIXED}")
    magic, flags, seqid, words = _FIXED_FIELDS.unpack_from(body)
    if magic != HEADER_MAGIC:
        raise FrameError(f"not a THeader frame: magic 0x{magic:04X}, expected 0x{HEADER_MAGIC:04X}")
    end = _FIXED + 4 * words
    if words == 0:
        raise FrameError("THeader frame has an empty header area (the protocol id is mandatory)")
    if end > len(body):
        raise FrameError(
            f"THeader header area of {4 * words} bytes does not fit in the {len(body) - _FIXED} bytes after "
            "the fixed fields (truncated or corrupt frame)"
        )
    first = body[_FIXED]
    # the usual reply: a one-byte protocol id, no transforms, then nothing but padding (no headers)
    if first in _KNOWN_PROTOCOLS and body[_FIXED + 1] == 0 and body.count(0, _FIXED + 2, end) == end - _FIXED - 2:
        return seqid, first, flags, {}, body[end:]
    reader = _Reader(body, _FIXED, end)
    protocol_id = reader.varint("protocol id")
    if protocol_id not in (PROTOCOL_BINARY, PROTOCOL_COMPACT):
        name = _PROTOCOLS.get(protocol_id, "unknown")
        raise FrameError(
            f"unsupported THeader protocol id {protocol_id} ({name}): mesh_client speaks binary and compact"
        )
    transforms = reader.varint("transform count")
    if transforms:
        transform = reader.varint("transform id")
        name = _TRANSFORMS.get(transform, "unknown")
        raise FrameError(
            f"unsupported THeader transform {transform} ({name}): Envoy rejects transforms and so does mesh_client"
        )
    headers: dict[str, str] = {}
    while reader.pos < end:
        info = reader.varint("info type")
        if info == 0:
            padding = body[reader.pos : end]
            if padding.count(0) != len(padding):
                raise FrameError("THeader padding holds non-zero bytes (corrupt frame or unknown extension)")
            break
        if info not in (INFO_KEYVALUE, INFO_PKEYVALUE):
            raise FrameError(
                f"unknown THeader info type {info}: its length is unknown, so the headers after it cannot be read"
            )
        count = reader.varint("header count")
        if 2 * count > end - reader.pos:
            raise FrameError(
                f"THeader declares {count} headers, more than fit in the {end - reader.pos} bytes left of the "
                "header area"
            )
        for _ in range(count):
            key = reader.string()
            if not key:
                raise FrameError("THeader header with an empty key")
            value = reader.string(key)
            if key in headers:
                raise FrameError(f"THeader header {key[:40]!r} appears twice")
            headers[key] = value
    return seqid, protocol_id, flags, headers, body[end:]


def is_header_frame(body: bytes) -> bool:
    """Whether a frame's ``body`` starts with the THeader magic (else: a plain framed message)."""
    return body[:2] == _MAGIC_BYTES


def _hint(head: bytes) -> str:
    if head[:2] == b"\x80\x01":
        return " (an unframed binary message: the peer uses the buffered transport; use framed or header)"
    if head[0] == 0x82:
        return " (an unframed compact message: the peer uses the buffered transport; use framed or header)"
    if all(0x20 <= b < 0x7F for b in head):
        return f" (the first bytes are {head!r}: text, not a Thrift frame)"
    return ""


def read_frame(recv_exactly: Callable[[int], bytes], max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """Read one frame with ``recv_exactly(n)`` (which returns ``n`` bytes or raises at EOF) and
    return its body: the bytes after the 4-byte length, a THeader frame or a plain framed message.

    Raises :class:`FrameError` for a length of 0, a negative length or one above ``max_frame``.
    """
    head = recv_exactly(4)
    if len(head) != 4:
        raise FrameError(f"Thrift frame length truncated: {len(head)} of 4 bytes")
    (length,) = _LENGTH.unpack(head)
    if length <= 0:
        raise FrameError(f"Thrift frame declares {length} bytes{_hint(head)}")
    if length > max_frame:
        raise FrameError(f"Thrift frame declares {length} bytes, more than the {max_frame} allowed{_hint(head)}")
    body = recv_exactly(length)
    if len(body) != length:
        raise FrameError(f"Thrift frame truncated: {len(body)} of {length} bytes")
    return body
