"""A connection's exchange: the reply frame read whole by its length, in one read or in several,
over a socket pair (no server, no proxy)."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from mesh_client.registry import Address
from mesh_client.thrift.pool import Connection
from mesh_client.thrift.theader import DEFAULT_MAX_FRAME, FrameError

REQUEST = struct.pack(">i", 3) + b"abc"
BODY = b"\x80\x01\x00\x02" + b"reply body"


@pytest.fixture
def pair() -> Iterator[tuple[Connection, socket.socket]]:
    ours, peer = socket.socketpair()
    conn = Connection(ours, Address("127.0.0.1", 1))
    yield conn, peer
    conn.close()
    peer.close()


def framed(body: bytes, declared: int | None = None) -> bytes:
    return struct.pack(">i", len(body) if declared is None else declared) + body


def exchange(conn: Connection) -> bytes | None:
    return conn.exchange(REQUEST, time.monotonic() + 5, False)


def test_a_reply_in_one_read_is_its_body(pair: tuple[Connection, socket.socket]) -> None:
    conn, peer = pair
    peer.sendall(framed(BODY))
    assert exchange(conn) == BODY
    assert peer.recv(100) == REQUEST
    assert not conn.unasked


def test_a_reply_in_pieces_is_read_to_its_end(pair: tuple[Connection, socket.socket]) -> None:
    conn, peer = pair
    reply = framed(BODY)
    peer.sendall(reply[:2])  # part of the length, before the request is even sent

    def rest() -> None:
        assert peer.recv(100) == REQUEST  # (sent once the request has arrived)
        peer.sendall(reply[2:9])
        peer.sendall(reply[9:])

    sender = threading.Thread(target=rest)
    sender.start()
    try:
        assert exchange(conn) == BODY
    finally:
        sender.join()
    assert not conn.unasked


def test_bytes_after_the_reply_mark_the_connection_unasked(pair: tuple[Connection, socket.socket]) -> None:
    conn, peer = pair
    peer.sendall(framed(BODY) + b"more")
    assert exchange(conn) == BODY
    assert conn.unasked


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        pytest.param(framed(b"", 0), "declares 0 bytes", id="empty frame"),
        pytest.param(framed(b"abcd", -4), "declares -4 bytes", id="negative length"),
        pytest.param(framed(BODY, DEFAULT_MAX_FRAME + 1), "more than the", id="oversized frame"),
    ],
)
def test_a_bad_length_is_a_frame_error(pair: tuple[Connection, socket.socket], reply: bytes, message: str) -> None:
    conn, peer = pair
    peer.sendall(reply)
    with pytest.raises(FrameError, match=message):
        exchange(conn)


@pytest.mark.parametrize("cut", [0, 2, 4, 9], ids=lambda cut: f"{cut} bytes")
def test_a_reply_cut_short_by_the_peer_is_a_reset(pair: tuple[Connection, socket.socket], cut: int) -> None:
    conn, peer = pair
    peer.sendall(framed(BODY)[:cut])
    peer.shutdown(socket.SHUT_WR)
    with pytest.raises(ConnectionResetError, match="before the whole reply"):
        exchange(conn)


def test_no_reply_in_time_is_a_timeout(pair: tuple[Connection, socket.socket]) -> None:
    conn, peer = pair
    peer.sendall(framed(BODY)[:6])
    with pytest.raises(TimeoutError):
        conn.exchange(REQUEST, time.monotonic() + 0.05, False)


def test_a_oneway_call_reads_nothing(pair: tuple[Connection, socket.socket]) -> None:
    conn, peer = pair
    peer.sendall(framed(BODY))
    assert conn.exchange(REQUEST, time.monotonic() + 5, True) is None
    assert peer.recv(100) == REQUEST
