"""Thrift replies are decoded by a reader that fails at any read past the end of the frame:
thriftpy2's Cython reader where the import-time probe shows it strict, else the pure-Python one."""

from __future__ import annotations

import os
import socket
import socketserver
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from thriftpy2.protocol import TBinaryProtocolFactory
from thriftpy2.protocol.cybin import TCyBinaryProtocol
from thriftpy2.thrift import TApplicationException, TMessageType
from thriftpy2.transport import TMemoryBuffer, TTransportException
from thriftpy2.transport.memory import TCyMemoryBuffer

import mesh_client.thrift.pool as thrift_pool
from mesh_client import Mesh, MeshError, call_options
from mesh_client._compat import FALLBACK_ENV, forced_fallback
from mesh_client._compat import thriftpy2 as compat
from mesh_client.testing.loopback import LoopbackServer
from mesh_client.thrift import reading
from mesh_client.thrift.reading import (
    binary_reader,
    fast_reader,
    kept_fast_reader,
    new_reply_reader,
    pure_reader,
    strict_fast_reader,
    strict_kept_reader,
)

from ..conftest import load_idl

IDL = """
struct User {1: i64 id, 2: string name, 3: list<string> tags, 4: map<string, i32> scores, 5: double ratio}
service Users { User get(1: i64 id) }
"""
#: one kept reader for the whole module: every decode below also checks that one body leaves nothing
#: behind for the next
KEPT = kept_fast_reader()
READERS = {"fast": fast_reader, "pure": pure_reader, "kept": KEPT}
#: what makes a connection's reader, as the client's connections would have it
CONNECTION_READERS = {"kept": kept_fast_reader, "pure": lambda: pure_reader}


@pytest.fixture(scope="module")
def users(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return load_idl(tmp_path_factory, IDL, "reading_users_thrift")


def reply_body(users: Any, user: Any, seqid: int = 7) -> bytes:
    buf: Any = TMemoryBuffer()
    proto = TBinaryProtocolFactory().get_protocol(buf)
    proto.write_message_begin("get", TMessageType.REPLY, seqid)
    users.Users.get_result(success=user).write(proto)
    proto.write_message_end()
    return bytes(buf.getvalue())


def decode(reader: Callable[[bytes], Any], users: Any, body: bytes) -> tuple[int, int, Any]:
    proto = reader(body)
    _name, mtype, seqid = proto.read_message_begin()
    result = users.Users.get_result()
    result.read(proto)
    return mtype, seqid, result.success


def lenient_reader(body: bytes) -> Any:
    """The combination the probe exists to refuse: the Cython protocol over the Cython memory
    buffer, which returns made-up values for a truncated message."""
    return TCyBinaryProtocol(TCyMemoryBuffer(body))


def test_this_thriftpy2_gets_the_fast_reader_unless_the_fallback_is_forced() -> None:
    assert compat.reads_strictly(fast_reader)  # the behaviour the probe relies on, in both modes
    if forced_fallback():
        assert not strict_fast_reader(fast_reader)
        assert binary_reader is pure_reader
    else:
        assert strict_fast_reader(fast_reader)
        assert binary_reader is fast_reader


def test_connections_get_kept_fast_readers_unless_the_fallback_is_forced() -> None:
    assert compat.reads_strictly(kept_fast_reader())  # in both modes
    if forced_fallback():
        assert not strict_kept_reader()
        assert new_reply_reader() is pure_reader
    else:
        assert strict_kept_reader()
        assert new_reply_reader is kept_fast_reader


def test_a_kept_reader_reads_a_long_body_with_a_reader_of_its_own(users: Any) -> None:
    reader = kept_fast_reader()
    short = reply_body(users, users.User(id=1, name="ada"))
    long = reply_body(users, users.User(id=2, name="x" * reading.KEPT_MAX_BODY))
    assert reader(short) is reader(short)
    assert reader(long) is not reader(short)
    assert decode(reader, users, long)[2].name == "x" * reading.KEPT_MAX_BODY
    assert decode(reader, users, short)[2].name == "ada"
    with pytest.raises(Exception):  # noqa: B017, PT011 - any error, never a struct
        decode(reader, users, long[:-1])


def test_choosing_a_connections_reader() -> None:
    assert reading.choose_kept_reader({}, probe=lambda: True) is kept_fast_reader
    assert reading.choose_kept_reader({}, probe=lambda: False)() is pure_reader
    assert reading.choose_kept_reader({reading.PURE_READER_ENV: "1"}, probe=lambda: True)() is pure_reader
    assert not strict_kept_reader(lambda: lenient_reader)


def test_the_probe_refuses_a_reader_that_invents_values(users: Any) -> None:
    body = reply_body(users, users.User(id=1, name="ada"))
    assert decode(lenient_reader, users, body[:-6])[2] is not None  # (what the probe guards against)
    assert not compat.reads_strictly(lenient_reader)
    assert not strict_fast_reader(lenient_reader)


def test_the_probe_refuses_a_reader_that_fails_or_decodes_wrongly() -> None:
    def broken(body: bytes) -> Any:
        raise RuntimeError("no reader here")

    def wrong(body: bytes) -> Any:
        return pure_reader(body[:9] + b"\x00" + body[10:])  # one byte of the method name changed

    assert not compat.reads_strictly(broken)
    assert not compat.reads_strictly(wrong)
    assert compat.reads_strictly(pure_reader)  # the fallback passes the check itself


def test_the_forced_fallback_fails_the_probe_even_for_a_strict_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FALLBACK_ENV, "1")
    assert not strict_fast_reader(pure_reader)
    assert reading.choose_reader({}) is pure_reader
    monkeypatch.setenv(FALLBACK_ENV, "0")
    assert strict_fast_reader(pure_reader)


users_st = st.fixed_dictionaries(
    {
        "id": st.integers(-(2**63), 2**63 - 1),
        "name": st.text(max_size=30),
        "tags": st.lists(st.text(max_size=8), max_size=4),
        "scores": st.dictionaries(st.text(max_size=6), st.integers(-(2**31), 2**31 - 1), max_size=3),
        "ratio": st.floats(allow_nan=False),
    }
)


@settings(max_examples=60, deadline=None)
@given(fields=users_st)
def test_both_readers_decode_every_reply_whole_and_refuse_every_truncation(users: Any, fields: dict[str, Any]) -> None:
    user = users.User(**fields)
    body = reply_body(users, user)
    for reader in READERS.values():
        assert decode(reader, users, body) == (TMessageType.REPLY, 7, user)
        for cut in range(len(body)):
            with pytest.raises(Exception):  # noqa: B017, PT011 - any error, never a struct
                decode(reader, users, body[:cut])


@pytest.mark.parametrize("reader", READERS.values(), ids=READERS.keys())
@pytest.mark.parametrize("declared", [2**31 - 1, 2**24, -1, -(2**31)])
def test_a_string_longer_than_the_frame_is_an_error(users: Any, reader: Any, declared: int) -> None:
    body = reply_body(users, users.User(id=1, name="ada"))
    at = body.index(b"\x00\x00\x00\x03ada")
    with pytest.raises(Exception):  # noqa: B017, PT011 - any error, never a struct
        decode(reader, users, body[:at] + struct.pack(">i", declared) + body[at + 4 :])


# -- through the client: a reply frame that is short, oversized or holds a truncated message -----


class _OneReply(socketserver.BaseRequestHandler):
    """Reads one framed request on its connection and answers it with the server's reply."""

    server: OneReplyServer

    def handle(self) -> None:
        conn = self.request
        head = conn.recv(4, socket.MSG_WAITALL)
        if len(head) < 4:
            return
        request = conn.recv(struct.unpack(">i", head)[0], socket.MSG_WAITALL)
        name_end = 8 + struct.unpack_from(">i", request, 4)[0]  # version, name length, name
        seqid = struct.unpack_from(">i", request, name_end)[0]
        conn.sendall(self.server.reply(seqid))


class OneReplyServer(LoopbackServer):
    """Answers one framed request per connection with ``reply(seqid)``'s bytes."""

    def __init__(self, reply: Callable[[int], bytes]) -> None:
        super().__init__(_OneReply, name="one-reply-thrift")
        self.reply = reply


@pytest.fixture
def serve(users: Any) -> Iterator[Callable[[Callable[[int], bytes]], Any]]:
    servers: list[OneReplyServer] = []
    meshes: list[Mesh] = []

    def start(reply: Callable[[int], bytes]) -> Any:
        server = OneReplyServer(reply).start()
        servers.append(server)
        data = {
            "mesh": {"caller": "test", "envoy_http": "127.0.0.1:1", "envoy_thrift": "127.0.0.1:1"},
            "services": {
                "users": {
                    "protocol": "thrift",
                    "transport": "framed",
                    "haproxy": str(server.address),
                    "timeout": 2.0,
                    "retries": 0,
                }
            },
        }
        mesh = Mesh.from_dict(data)
        meshes.append(mesh)
        return mesh.thrift_client(users.Users, "users")

    yield start
    for mesh in meshes:
        mesh.close()
    for server in servers:
        server.stop()


def framed(body: bytes, declared: int | None = None) -> bytes:
    return struct.pack(">i", len(body) if declared is None else declared) + body


@pytest.mark.parametrize("reader", CONNECTION_READERS.values(), ids=CONNECTION_READERS.keys())
def test_the_client_returns_what_a_whole_reply_holds(
    users: Any, serve: Any, reader: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(thrift_pool, "new_reply_reader", reader)
    user = users.User(id=3, name="ada", tags=["a"], scores={"x": 1}, ratio=0.5)
    client = serve(lambda seqid: framed(reply_body(users, user, seqid)))
    with call_options(route="haproxy"):
        assert client.get(3) == user


@pytest.mark.parametrize("reader", CONNECTION_READERS.values(), ids=CONNECTION_READERS.keys())
@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda body: framed(body[:-5]), id="message truncated inside a whole frame"),
        pytest.param(lambda body: framed(body[:20]), id="message cut after its header"),
        pytest.param(lambda body: framed(body, len(body) + 10), id="frame shorter than its length"),
        pytest.param(lambda body: framed(body, 64 * 1024 * 1024), id="frame above the size limit"),
        pytest.param(lambda body: framed(body, 0), id="empty frame"),
    ],
)
def test_a_damaged_reply_is_an_error_never_a_made_up_result(
    users: Any, serve: Any, reader: Any, damage: Callable[[bytes], bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(thrift_pool, "new_reply_reader", reader)
    user = users.User(id=3, name="ada lovelace", tags=["a", "b"], scores={"x": 1}, ratio=0.5)
    client = serve(lambda seqid: damage(reply_body(users, user, seqid)))
    with call_options(route="haproxy"), pytest.raises(TTransportException) as caught:
        client.get(3)
    assert isinstance(caught.value, MeshError)


def test_an_application_exception_reply_is_decoded_by_the_fast_reader(users: Any, serve: Any) -> None:
    def reply(seqid: int) -> bytes:
        buf: Any = TMemoryBuffer()
        proto = TBinaryProtocolFactory().get_protocol(buf)
        proto.write_message_begin("get", TMessageType.EXCEPTION, seqid)
        TApplicationException(TApplicationException.INTERNAL_ERROR, "boom").write(proto)
        return framed(bytes(buf.getvalue()))

    client = serve(reply)
    with call_options(route="haproxy"), pytest.raises(TApplicationException, match="boom"):
        client.get(3)


# -- choosing the reader: the probe decides unless the environment forces the fallback ----------


def test_the_fast_reader_is_chosen_when_its_probe_passes_and_nothing_forces_the_fallback() -> None:
    assert reading.choose_reader({}, probe=lambda: True) is reading.fast_reader
    assert reading.choose_reader({reading.PURE_READER_ENV: "0"}, probe=lambda: True) is reading.fast_reader


def test_a_failed_probe_or_the_env_var_chooses_the_pure_reader() -> None:
    assert reading.choose_reader({}, probe=lambda: False) is reading.pure_reader
    assert reading.choose_reader({reading.PURE_READER_ENV: "1"}, probe=lambda: True) is reading.pure_reader


def test_the_env_var_forces_the_pure_reader_at_import() -> None:
    code = (
        "from mesh_client._compat import thriftpy2 as compat\n"
        "from mesh_client.thrift import reading\n"
        "assert reading.binary_reader is reading.pure_reader\n"
        "print(compat._decodes(reading.binary_reader, compat._probe_message())[0])\n"
    )
    env = {**os.environ, reading.PURE_READER_ENV: "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "probe"
