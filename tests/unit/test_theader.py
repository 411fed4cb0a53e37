"""The THeader codec (:mod:`mesh_client.thrift.theader`): byte layouts written by hand from the
format, round trips, every malformed case, and what truncation and corruption can and cannot do.

What is guaranteed (and asserted below) for a frame written by ``encode_header_frame``:

- **Truncation.** Read from a stream with ``read_frame``, a frame cut anywhere never yields a
  frame: the caller's ``recv_exactly`` raises at EOF (or FrameError). A *body* cut anywhere in
  its fixed fields or header area raises FrameError. (A body cut inside the payload cannot be
  told from a shorter payload: the body's length comes from the frame length, which
  ``read_frame`` enforces.)
- **One corrupted byte** of the body (THeader has no checksum, so content cannot be verified):
  - in the magic: always FrameError;
  - in the flags or sequence id: decodes, and only that field differs (a client checks the
    sequence id against its own);
  - in the header size: a smaller header area always raises; a larger one raises whenever the
    payload starts like a Thrift message (binary ``80 01``, compact ``82 21|41|61|81``). With
    other payloads the area can grow over the payload's first bytes: the original headers all
    come back unchanged, the payload loses its first 4*k bytes;
  - anywhere in the header area: the payload, sequence id and flags never change (the header
    size alone places the payload). The headers can: THeader has no checksum, so a byte changed
    in a key or value, or a changed string length that re-splits neighbouring strings into other
    valid ones, cannot be detected by any decoder. More precisely:
    - in a key's or a value's characters: FrameError, or only that one key or value differs;
    - in the protocol id: FrameError, or only the protocol id differs;
    - in the transform count, info type, header count, string lengths or padding: FrameError
      (by far the most common outcome: transforms, unknown info types, non-zero padding, strings
      running off the area, empty or duplicate keys and bad UTF-8 are all refused), or different
      headers with everything else unchanged;
  - in the payload: only that payload byte differs (the Thrift protocol decodes it or fails).

  These are checked exhaustively (every position of the fixed fields and header area, every
  byte value) on realistic frames, and by Hypothesis on random ones.
- The 4-byte length prefix is not protected: a smaller length cuts the payload (the Thrift
  protocol then fails to decode it, and the next frame read fails on the leftover bytes).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh_client.thrift.theader import (
    DEFAULT_MAX_FRAME,
    HEADER_MAGIC,
    INFO_KEYVALUE,
    PROTOCOL_BINARY,
    PROTOCOL_COMPACT,
    FrameError,
    HeaderFrame,
    decode_header_frame,
    encode_framed,
    encode_header_frame,
    header_frame_parts,
    is_header_frame,
    read_frame,
)

# A binary-protocol call "get"(seqid 1) with one i64 field: what a real payload looks like.
CALL = (
    bytes.fromhex("80010001")
    + b"\x00\x00\x00\x03get"
    + bytes.fromhex("00000001")
    + bytes.fromhex("0a0001")
    + (7).to_bytes(8, "big")
    + b"\x00"
)


# -- helpers written from the format, independently of the codec ---------------------------------


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def hand_frame(
    payload: bytes, *, seqid: int, headers: list[tuple[str, str]], protocol_id: int = 0, flags: int = 0
) -> bytes:
    area = varint(protocol_id) + varint(0)
    if headers:
        area += varint(1) + varint(len(headers))
        for key, value in headers:
            for text in (key, value):
                raw = text.encode("utf-8")
                area += varint(len(raw)) + raw
    area += b"\x00" * ((4 - len(area) % 4) % 4)
    body = struct.pack(">HHIH", 0x0FFF, flags, seqid, len(area) // 4) + area + payload
    return struct.pack(">i", len(body)) + body


def roles(headers: list[tuple[str, str]], protocol_id: int = 0) -> list[tuple[str, int]]:
    """The role of every header-area byte: ("proto"|"xforms"|"info"|"count"|"len"|"pad", -1),
    ("key", i) or ("value", i) for the characters of header i."""
    out = [("proto", -1)] * len(varint(protocol_id)) + [("xforms", -1)]
    if headers:
        out += [("info", -1)] + [("count", -1)] * len(varint(len(headers)))
        for i, (key, value) in enumerate(headers):
            for kind, text in (("key", key), ("value", value)):
                raw = text.encode("utf-8")
                out += [("len", -1)] * len(varint(len(raw))) + [(kind, i)] * len(raw)
    return out + [("pad", -1)] * ((4 - len(out) % 4) % 4)


def stream(data: bytes) -> Callable[[int], bytes]:
    buf = io.BytesIO(data)

    def recv_exactly(n: int) -> bytes:
        chunk = buf.read(n)
        if len(chunk) < n:
            raise EOFError(f"stream ended after {len(chunk)} of {n} bytes")
        return chunk

    return recv_exactly


def body_of(frame: bytes) -> bytes:
    return frame[4:]


def looks_like_thrift(payload: bytes) -> bool:
    return payload[:2] == b"\x80\x01" or (payload[:1] == b"\x82" and payload[1:2] in (b"!", b"A", b"a", b"\x81"))


def check_corruption(original: HeaderFrame, headers: list[tuple[str, str]], body: bytes, pos: int) -> None:
    """Assert the guarantee (module docstring) for ``body``: the encoding of ``original`` with the
    byte at ``pos`` changed."""
    try:
        decoded = decode_header_frame(body)
    except FrameError:
        return
    layout = roles(headers, original.protocol_id)
    area_end = 10 + len(layout)
    assert pos >= 2, "a corrupted magic was accepted"
    if pos < 4:
        assert decoded == replace(original, flags=decoded.flags)
    elif pos < 8:
        assert decoded == replace(original, seqid=decoded.seqid)
    elif pos < 10:
        words = struct.unpack_from(">H", body, 8)[0]
        grown = 4 * words - len(layout)
        assert grown > 0, f"a header area shrunk by {-grown} bytes decoded: {decoded}"
        assert not looks_like_thrift(original.payload), f"a header area grown over a Thrift message decoded: {decoded}"
        assert decoded.payload == original.payload[grown:]
        assert original.headers.items() <= decoded.headers.items()
        assert decoded == replace(original, headers=decoded.headers, payload=decoded.payload)
    elif pos < area_end:
        role, index = layout[pos - 10]
        if role in ("key", "value"):
            assert decoded == replace(original, headers=decoded.headers)
            assert len(decoded.headers) == len(original.headers)
            for j, (key, value) in enumerate(headers):
                if j != index:
                    assert decoded.headers.get(key) == value
            key, value = headers[index]
            if role == "value":
                assert decoded.headers[key] != value
            else:
                (new_key,) = set(decoded.headers) - set(original.headers)
                assert new_key != key
                assert decoded.headers[new_key] == value
        elif role == "proto":
            assert decoded == replace(original, protocol_id=decoded.protocol_id)
        else:
            # a changed length can re-split neighbouring strings (a '0' in a traceparent read as a
            # length of 48 once did): only the headers may differ
            assert decoded == replace(original, headers=decoded.headers)
    else:
        assert decoded == replace(original, payload=decoded.payload)
        assert len(decoded.payload) == len(original.payload)
        assert sum(a != b for a, b in zip(decoded.payload, original.payload, strict=True)) == 1


# -- constants and known layouts ---------------------------------------------------------------------------


def test_constants() -> None:
    assert HEADER_MAGIC == 0x0FFF
    assert (PROTOCOL_BINARY, PROTOCOL_COMPACT, INFO_KEYVALUE) == (0, 2, 1)
    assert DEFAULT_MAX_FRAME == 16 * 1024 * 1024


def test_known_layout_with_headers() -> None:
    """Byte for byte, as the format describes it."""
    expected = (
        b"\x00\x00\x00\x22"  # length: 10 fixed + 16 header area + 8 payload = 34
        b"\x0f\xff"  # magic
        b"\x00\x00"  # flags
        b"\x00\x00\x00\x07"  # sequence id
        b"\x00\x04"  # header area: 4 words
        b"\x00"  # protocol id: binary
        b"\x00"  # no transforms
        b"\x01"  # info type: key/value
        b"\x02"  # 2 headers
        b"\x01k\x01v"  # "k": "v"
        b"\x03abc\x00"  # "abc": ""
        b"\x00\x00\x00"  # padding: 13 bytes so far, to 16
        b"PAYLOAD!"
    )
    assert encode_header_frame(b"PAYLOAD!", seqid=7, headers=[("k", "v"), ("abc", "")]) == expected
    frame = decode_header_frame(expected[4:])
    assert frame == HeaderFrame(seqid=7, protocol_id=0, flags=0, headers={"k": "v", "abc": ""}, payload=b"PAYLOAD!")


def test_known_layout_without_headers_compact_and_flags() -> None:
    expected = b"\x00\x00\x00\x0f" + b"\x0f\xff\x00\x01\xff\xff\xff\xff\x00\x01" + b"\x02\x00\x00\x00" + b"X"
    encoded = encode_header_frame(b"X", seqid=0xFFFFFFFF, protocol_id=PROTOCOL_COMPACT, flags=1)
    assert encoded == expected
    assert decode_header_frame(expected[4:]) == HeaderFrame(0xFFFFFFFF, PROTOCOL_COMPACT, 1, {}, b"X")


def test_multibyte_varints_and_utf8() -> None:
    """A 200-byte value has a 2-byte length (c8 01); latin-1 characters travel as UTF-8."""
    headers = [("x-long", "v" * 200), ("x-name", "José")]
    encoded = encode_header_frame(CALL, seqid=1, headers=headers)
    assert encoded == hand_frame(CALL, seqid=1, headers=headers)
    assert b"\xc8\x01" + b"v" * 200 in encoded
    assert "José".encode() in encoded
    assert decode_header_frame(encoded[4:]).headers == dict(headers)


def test_framed_layout() -> None:
    assert encode_framed(b"abc") == b"\x00\x00\x00\x03abc"
    assert read_frame(stream(encode_framed(CALL))) == CALL
    assert not is_header_frame(CALL)
    assert is_header_frame(encode_header_frame(CALL, seqid=1)[4:])


def test_header_keys_come_back_as_sent() -> None:
    frame = decode_header_frame(encode_header_frame(CALL, seqid=3, headers=[("X-Request-Id", "abc")])[4:])
    assert frame.headers == {"X-Request-Id": "abc"}


def test_persistent_key_values_read_like_key_values() -> None:
    area = b"\x00\x00" + b"\x02\x01\x01a\x01b" + b"\x01\x01\x01c\x01d" + b"\x00\x00"
    body = struct.pack(">HHIH", 0x0FFF, 0, 9, len(area) // 4) + area + CALL
    assert decode_header_frame(body).headers == {"a": "b", "c": "d"}


def test_padding_of_four_bytes_as_envoy_writes_it() -> None:
    """Envoy always pads, with 4 zero bytes when the area is already a multiple of 4."""
    area = b"\x00\x00\x01\x01\x01k\x01v" + b"\x00" * 4
    body = struct.pack(">HHIH", 0x0FFF, 0, 5, len(area) // 4) + area + CALL
    assert decode_header_frame(body) == HeaderFrame(5, 0, 0, {"k": "v"}, CALL)


# -- malformed frames ----------------------------------------------------------------------------------


def body(area: bytes, payload: bytes = CALL, *, words: int | None = None, magic: int = 0x0FFF) -> bytes:
    return struct.pack(">HHIH", magic, 0, 1, len(area) // 4 if words is None else words) + area + payload


MALFORMED = {
    "empty": (b"", "truncated"),
    "fixed part cut": (b"\x0f\xff\x00\x00\x00\x00\x00", "truncated"),
    "wrong magic": (body(b"\x00\x00\x00\x00", magic=0x8001), "magic 0x8001"),
    "empty header area": (body(b"", words=0), "empty header area"),
    "header area larger than the body": (body(b"\x00\x00\x00\x00", b"", words=2), "does not fit"),
    "JSON protocol": (body(b"\x01\x00\x00\x00"), "protocol id 1 (JSON)"),
    "unknown protocol": (body(b"\x07\x00\x00\x00"), "protocol id 7"),
    "zlib transform": (body(b"\x00\x01\x01\x00"), "transform 1 (zlib): Envoy rejects transforms"),
    "snappy transform": (body(b"\x00\x01\x03\x00"), "transform 3 (snappy)"),
    "transform id cut": (body(b"\x00\x01\x80\x80"), "transform id runs past"),
    "varint longer than 5 bytes": (body(b"\x80\x80\x80\x80\x80\x00\x00\x00"), "longer than 5 bytes"),
    "varint above 32 bits": (body(b"\x80\x80\x80\x80\x10\x00\x00\x00"), "above 32 bits"),
    "protocol id runs past the area": (body(b"\x80\x80\x80\x80"), "runs past"),
    "unknown info type": (body(b"\x00\x00\x03\x00"), "unknown THeader info type 3"),
    "non-zero padding": (body(b"\x00\x00\x00\x07"), "padding holds non-zero"),
    "header count too large": (body(b"\x00\x00\x01\x7f"), "declares 127 headers"),
    "count cut": (body(b"\x00\x00\x01\x80"), "header count runs past"),
    "key longer than the area": (body(b"\x00\x00\x01\x01\x09abc" + b"\x00\x00\x00"), "declares 9 bytes"),
    "value longer than the area": (body(b"\x00\x00\x01\x01\x01k\x05v\x00"), "declares 5 bytes"),
    "value length missing": (body(b"\x00\x00\x01\x01\x03abc"), "value length runs past"),
    "key not UTF-8": (body(b"\x00\x00\x01\x01\x01\xff\x01v"), "not UTF-8"),
    "empty key": (body(b"\x00\x00\x01\x01\x00\x01v\x00\x00"), "empty key"),
    "duplicate key": (body(b"\x00\x00\x01\x02\x01k\x01v\x01k\x01w\x00\x00"), "'k' appears twice"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_frames_raise_frame_error(name: str) -> None:
    data, message = MALFORMED[name]
    with pytest.raises(FrameError, match=message.replace("(", r"\(").replace(")", r"\)")):
        decode_header_frame(data)
    with pytest.raises(FrameError, match=message.replace("(", r"\(").replace(")", r"\)")):
        header_frame_parts(data)  # (what the client decodes with)


@pytest.mark.parametrize(
    "area",
    [
        b"\x00\x00\x00\x00",
        b"\x02\x00\x00\x00",
        b"\x00\x00" + b"\x00" * 6,
        b"\x00\x00\x01\x01\x01k\x01v\x00\x00\x00\x00",
    ],
    ids=["binary", "compact", "long padding", "a header"],
)
def test_header_frame_parts_are_what_decode_header_frame_holds(area: bytes) -> None:
    frame = decode_header_frame(body(area))
    assert header_frame_parts(body(area)) == (frame.seqid, frame.protocol_id, frame.flags, frame.headers, CALL)


def test_frame_error_is_a_value_error() -> None:
    assert issubclass(FrameError, ValueError)


@pytest.mark.parametrize(
    ("head", "message"),
    [
        (b"\x00\x00\x00\x00", "declares 0 bytes"),
        (b"\xff\xff\xff\xfe", "declares -2 bytes"),
        (b"\x80\x01\x00\x01", "unframed binary message"),
        (b"\x82\x21\x01\x03", "unframed compact message"),
        (b"GET ", "text, not a Thrift frame"),
        ((5_000_000).to_bytes(4, "big"), "declares 5000000 bytes, more than the 1048576 allowed"),
    ],
)
def test_read_frame_refuses_bad_lengths(head: bytes, message: str) -> None:
    with pytest.raises(FrameError, match=message):
        read_frame(stream(head + b"\x00" * 64), max_frame=1_048_576)


def test_read_frame_default_limit() -> None:
    with pytest.raises(FrameError, match=f"more than the {DEFAULT_MAX_FRAME} allowed"):
        read_frame(stream((DEFAULT_MAX_FRAME + 1).to_bytes(4, "big")))
    assert read_frame(stream(encode_framed(b"x" * 100)), max_frame=100) == b"x" * 100


def test_read_frame_eof_comes_from_the_caller_and_short_reads_are_caught() -> None:
    with pytest.raises(EOFError):
        read_frame(stream(b"\x00\x00"))
    with pytest.raises(EOFError):
        read_frame(stream(b"\x00\x00\x00\x09abc"))
    with pytest.raises(FrameError, match="truncated: 3 of 9 bytes"):
        read_frame(lambda n: b"\x00\x00\x00\x09" if n == 4 else b"abc")
    with pytest.raises(FrameError, match="length truncated"):
        read_frame(lambda n: b"\x00")


def test_read_frame_reads_exactly_one_frame() -> None:
    first = encode_header_frame(CALL, seqid=1, headers=[("a", "b")])
    second = encode_framed(b"next")
    recv = stream(first + second)
    assert decode_header_frame(read_frame(recv)).seqid == 1
    assert read_frame(recv) == b"next"


# -- what the encoder refuses --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seqid": -1}, "unsigned 32-bit"),
        ({"seqid": 2**32}, "unsigned 32-bit"),
        ({"seqid": 1, "flags": 0x10000}, "flags"),
        ({"seqid": 1, "protocol_id": 1}, "protocol id"),
        ({"seqid": 1, "headers": [("x-a", "bad\r\nvalue")]}, "CR, LF or NUL"),
        ({"seqid": 1, "headers": [("x-a", "nul\x00")]}, "CR, LF or NUL"),
        ({"seqid": 1, "headers": [("bad\nkey", "v")]}, "CR, LF or NUL"),
        ({"seqid": 1, "headers": [("", "v")]}, "non-empty"),
        ({"seqid": 1, "headers": [("x-a", "€")]}, "outside latin-1"),
        ({"seqid": 1, "headers": [("x-a", " padded")]}, "blank"),
        ({"seqid": 1, "headers": [("X-Tenant", "a"), ("x-tenant", "b")]}, "given twice"),
    ],
)
def test_encoder_refuses_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_header_frame(CALL, **kwargs)  # type: ignore[arg-type]


def test_encoder_keeps_envoys_size_limits() -> None:
    with pytest.raises(FrameError, match="more than the 32767 Envoy accepts"):
        encode_header_frame(CALL, seqid=1, headers=[("x-big", "v" * 32_768)])
    many = [(f"x-h{i}", "v" * 30_000) for i in range(3)]
    with pytest.raises(FrameError, match="more than the 65536 Envoy accepts"):
        encode_header_frame(CALL, seqid=1, headers=many)
    assert encode_header_frame(CALL, seqid=1, headers=[("x-big", "v" * 32_767)])
    with pytest.raises(FrameError):
        encode_framed(b"")


# -- round trips, truncation, corruption: fixed realistic frames ---------------------------------------------

REALISTIC = [
    [],
    [
        ("x-request-id", "0f8fad5b-d9cb-469f-a165-70867728950e"),
        ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("x-envoy-expected-rq-timeout-ms", "1500"),
        ("x-tenant", "acme"),
    ],
    [("a", ""), ("b", "é"), ("X-Mesh-Timeout-Ms", "250")],
]


@pytest.mark.parametrize("headers", REALISTIC)
def test_realistic_frames_every_byte_every_value(headers: list[tuple[str, str]]) -> None:
    """Exhaustive: every position of the fixed fields and header area, every other byte value,
    plus every truncation."""
    encoded = encode_header_frame(CALL, seqid=42, headers=headers)
    assert encoded == hand_frame(CALL, seqid=42, headers=headers)
    original = decode_header_frame(encoded[4:])
    assert original == HeaderFrame(42, 0, 0, dict(headers), CALL)
    data = bytearray(encoded[4:])
    area_end = 10 + len(roles(headers))
    for pos in range(area_end + 2):
        keep = data[pos]
        for value in range(256):
            if value != keep:
                data[pos] = value
                check_corruption(original, headers, bytes(data), pos)
        data[pos] = keep
    for cut in range(len(encoded)):
        with pytest.raises((EOFError, FrameError)):
            read_frame(stream(encoded[:cut]))
    for cut in range(area_end):
        with pytest.raises(FrameError):
            decode_header_frame(bytes(data[:cut]))


# -- Hypothesis properties -------------------------------------------------------------------------------

PRINTABLE_LATIN1 = st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters=[chr(0x7F)]).filter(
    lambda c: not 0x80 <= ord(c) < 0xA0
)
VALUES = st.text(PRINTABLE_LATIN1, max_size=40).map(lambda s: s.strip(" \t"))
KEYS = st.text(PRINTABLE_LATIN1, min_size=1, max_size=30).map(lambda s: s.strip(" \t")).filter(bool)
HEADERS = st.lists(st.tuples(KEYS, VALUES), max_size=8, unique_by=lambda kv: kv[0].lower())
PAYLOADS = st.one_of(
    st.binary(max_size=4096),
    st.binary(max_size=256).map(lambda b: b"\x80\x01\x00\x01" + b),
    st.binary(max_size=256).map(lambda b: b"\x82\x21" + b),
)
SEQIDS = st.integers(min_value=0, max_value=0xFFFFFFFF)
PROTOCOLS = st.sampled_from([PROTOCOL_BINARY, PROTOCOL_COMPACT])
FLAGS = st.integers(min_value=0, max_value=0xFFFF)


@settings(deadline=None)
@given(payload=PAYLOADS, headers=HEADERS, seqid=SEQIDS, protocol_id=PROTOCOLS, flags=FLAGS)
def test_round_trip(payload: bytes, headers: list[tuple[str, str]], seqid: int, protocol_id: int, flags: int) -> None:
    encoded = encode_header_frame(payload, seqid=seqid, headers=headers, protocol_id=protocol_id, flags=flags)
    assert encoded == hand_frame(payload, seqid=seqid, headers=headers, protocol_id=protocol_id, flags=flags)
    body = read_frame(stream(encoded))
    assert is_header_frame(body)
    assert decode_header_frame(body) == HeaderFrame(seqid, protocol_id, flags, dict(headers), payload)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=PAYLOADS, headers=HEADERS, seqid=SEQIDS)
def test_every_truncation_is_an_error(payload: bytes, headers: list[tuple[str, str]], seqid: int) -> None:
    encoded = encode_header_frame(payload, seqid=seqid, headers=headers)
    for cut in range(len(encoded)):
        with pytest.raises((EOFError, FrameError)):
            read_frame(stream(encoded[:cut]))
    area_end = 10 + len(roles(headers))
    for cut in range(area_end):
        with pytest.raises(FrameError):
            decode_header_frame(encoded[4 : 4 + cut])


@settings(max_examples=300, deadline=None)
@given(
    payload=PAYLOADS,
    headers=HEADERS,
    seqid=SEQIDS,
    protocol_id=PROTOCOLS,
    where=st.floats(min_value=0, max_value=1, exclude_max=True),
    in_header=st.booleans(),
    value=st.integers(min_value=0, max_value=255),
)
def test_single_byte_corruption(
    payload: bytes,
    headers: list[tuple[str, str]],
    seqid: int,
    protocol_id: int,
    where: float,
    in_header: bool,
    value: int,
) -> None:
    encoded = encode_header_frame(payload, seqid=seqid, headers=headers, protocol_id=protocol_id)
    original = decode_header_frame(encoded[4:])
    data = bytearray(encoded[4:])
    span = 10 + len(roles(headers, protocol_id)) if in_header or not payload else len(data)
    pos = int(where * span)
    if data[pos] == value:
        value ^= 0xFF
    data[pos] = value
    check_corruption(original, headers, bytes(data), pos)
