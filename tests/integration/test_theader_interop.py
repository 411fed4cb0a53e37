"""THeader interoperability with Apache Thrift's own Python ``THeaderTransport`` (PyPI ``thrift``).

(a) bytes: our encoder's frames read by Apache, Apache's frames read by our decoder;
(b) an Apache THeader server on a socket, answered calls made with our codec and thriftpy2;
(c) Apache's THeader client against :func:`mesh_client.thrift.server.make_server`: the handler
    sees the request id, deadline, trace and allowlisted context the client sent as headers.

Everything listens on 127.0.0.1 (ports from ``free_port``) and is stopped by its own handle.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import thriftpy2
import thriftpy2.rpc
import thriftpy2.transport
from opentelemetry import trace
from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.protocol.TCompactProtocol import TCompactProtocol
from thrift.Thrift import TApplicationException as ApacheAppException
from thrift.Thrift import TMessageType as AMT
from thrift.Thrift import TType
from thrift.transport import TSocket
from thrift.transport.THeaderTransport import (
    THeaderClientType,
    THeaderSubprotocolID,
    THeaderTransformID,
    THeaderTransport,
)
from thrift.transport.TTransport import TMemoryBuffer as ApacheMemoryBuffer
from thrift.transport.TTransport import TTransportException as ApacheTransportException
from thriftpy2.protocol import TBinaryProtocolFactory, TCompactProtocolFactory
from thriftpy2.protocol.binary import TBinaryProtocolFactory as PureBinaryProtocolFactory
from thriftpy2.thrift import TApplicationException, TMessageType, TProcessor
from thriftpy2.transport import TFramedTransportFactory, TMemoryBuffer, TServerSocket

import mesh_client
from mesh_client import Mesh
from mesh_client.context import current_inbound
from mesh_client.sidecar import free_port
from mesh_client.thrift.server import MeshThriftServer, THeaderServerTransportFactory, make_server
from mesh_client.thrift.theader import (
    PROTOCOL_COMPACT,
    FrameError,
    decode_header_frame,
    encode_header_frame,
    read_frame,
)

IDL = """
struct User {1: i64 id, 2: string name}
exception NotFound {1: string message}
service Users { User get(1: i64 id) throws (1: NotFound nf), void sleep(1: i32 ms), string ping() }
"""
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture(scope="module")
def users(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("theader") / "users.thrift"
    path.write_text(IDL)
    # not "users_thrift": thriftpy2 caches parsed IDLs by module name, so another test file
    # loading a different users.thrift under that name would get this one (or the reverse)
    return thriftpy2.load(str(path), module_name="theader_users_thrift")


@pytest.fixture
def mesh() -> Iterator[Mesh]:
    with Mesh.from_dict(
        {"mesh": {"caller": "users", "envoy_http": "127.0.0.1:9", "context_headers": ["x-tenant"]}, "services": {}}
    ) as m:
        yield m


# -- thriftpy2 serialization, the way mesh_client's client does it -------------------------------------


def tp_message(users: Any, name: str, seqid: int, *, compact: bool = False, **args: Any) -> bytes:
    buf = TMemoryBuffer()
    proto = (TCompactProtocolFactory() if compact else TBinaryProtocolFactory()).get_protocol(buf)
    proto.write_message_begin(name, TMessageType.CALL, seqid)
    getattr(users.Users, f"{name}_args")(**args).write(proto)
    proto.write_message_end()
    return bytes(buf.getvalue())


def tp_reply(users: Any, name: str, payload: bytes) -> tuple[int, int, Any]:
    proto = TBinaryProtocolFactory().get_protocol(TMemoryBuffer(payload))
    _name, mtype, seqid = proto.read_message_begin()
    if mtype == TMessageType.EXCEPTION:
        error = TApplicationException()
        error.read(proto)
        return mtype, seqid, error
    result = getattr(users.Users, f"{name}_result")()
    result.read(proto)
    return mtype, seqid, result


def socket_reader(sock: socket.socket) -> Callable[[int], bytes]:
    def recv_exactly(n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise EOFError("the server closed the connection")
            data += chunk
        return bytes(data)

    return recv_exactly


# -- Apache Thrift, by hand (there is no generated code for the IDL) ------------------------------------


def apache_read(proto: Any, ttype: int) -> Any:
    """A value of ``ttype``; structs come back as {field id: value}."""
    if ttype == TType.STRUCT:
        fields = {}
        proto.readStructBegin()
        while True:
            _name, ftype, fid = proto.readFieldBegin()
            if ftype == TType.STOP:
                break
            fields[fid] = apache_read(proto, ftype)
            proto.readFieldEnd()
        proto.readStructEnd()
        return fields
    readers = {TType.I64: proto.readI64, TType.I32: proto.readI32, TType.STRING: proto.readString}
    if ttype in readers:
        return readers[ttype]()
    proto.skip(ttype)
    return None


def apache_write_struct(proto: Any, fields: list[tuple[int, int, Any]]) -> None:
    """Write a struct of (field id, type, value); a value of type STRUCT is a list like ``fields``."""
    proto.writeStructBegin("s")
    for fid, ftype, value in fields:
        proto.writeFieldBegin(f"f{fid}", ftype, fid)
        if ftype == TType.STRUCT:
            apache_write_struct(proto, value)
        else:
            {TType.I64: proto.writeI64, TType.I32: proto.writeI32, TType.STRING: proto.writeString}[ftype](value)
        proto.writeFieldEnd()
    proto.writeFieldStop()
    proto.writeStructEnd()


class ApacheClient:
    """A client on Apache Thrift's THeaderTransport, writing calls and reading replies by hand."""

    def __init__(self, port: int, *, compact: bool = False) -> None:
        self.sock = TSocket.TSocket("127.0.0.1", port)
        self.sock.setTimeout(5000)
        self.sock.open()
        protocol_id = THeaderSubprotocolID.COMPACT if compact else THeaderSubprotocolID.BINARY
        self.trans = THeaderTransport(self.sock, [THeaderClientType.HEADERS], default_protocol=protocol_id)
        self.proto = TCompactProtocol(self.trans) if compact else TBinaryProtocol(self.trans)

    def call(
        self, name: str, args: list[tuple[int, int, Any]], *, seqid: int = 1, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        """Returns (message seqid, {field id: value} of the result struct or the ApacheAppException)."""
        for key, value in (headers or {}).items():
            self.trans.set_header(key.encode(), value.encode())
        self.trans.sequence_id = seqid
        self.proto.writeMessageBegin(name, AMT.CALL, seqid)
        apache_write_struct(self.proto, args)
        self.proto.writeMessageEnd()
        self.trans.flush()
        _name, mtype, rseqid = self.proto.readMessageBegin()
        if mtype == AMT.EXCEPTION:
            error = ApacheAppException()
            error.read(self.proto)
            self.proto.readMessageEnd()
            return rseqid, error
        result = apache_read(self.proto, TType.STRUCT)
        self.proto.readMessageEnd()
        return rseqid, result

    def close(self) -> None:
        self.sock.close()


class ApacheServer:
    """A THeader server built on Apache Thrift's THeaderTransport, answering ``get`` and ``ping``
    by hand; one connection at a time, in its own thread."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", free_port()))
        self.address = self.listener.getsockname()[:2]
        self.seen: list[dict[str, Any]] = []
        self.conn: socket.socket | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True, name="apache-theader-server")
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.conn = conn
            sock = TSocket.TSocket()
            sock.setHandle(conn)
            trans = THeaderTransport(sock, [THeaderClientType.HEADERS])
            proto = TBinaryProtocol(trans)
            try:
                while True:
                    self._answer(trans, proto)
            except (ApacheTransportException, EOFError, OSError):
                conn.close()

    def _answer(self, trans: THeaderTransport, proto: TBinaryProtocol) -> None:
        name, mtype, seqid = proto.readMessageBegin()
        args = apache_read(proto, TType.STRUCT)
        proto.readMessageEnd()
        headers = {k.decode(): v.decode() for k, v in trans.get_headers().items()}
        self.seen.append({"name": name, "type": mtype, "seqid": seqid, "frame_seqid": trans.sequence_id, **headers})
        proto.writeMessageBegin(name, AMT.REPLY, seqid)
        if name == "get" and args[1] >= 0:
            apache_write_struct(
                proto, [(0, TType.STRUCT, [(1, TType.I64, args[1]), (2, TType.STRING, f"user-{args[1]}")])]
            )
        elif name == "get":
            apache_write_struct(proto, [(1, TType.STRUCT, [(1, TType.STRING, f"no user {args[1]}")])])
        else:
            apache_write_struct(proto, [(0, TType.STRING, "pong")])
        proto.writeMessageEnd()
        trans.flush()

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        if self.conn is not None:
            with contextlib.suppress(OSError):  # already closed when the client left first
                self.conn.shutdown(socket.SHUT_RDWR)
        self.thread.join(5)
        assert not self.thread.is_alive()


class Handler:
    """Records what each call saw of its inbound context."""

    def __init__(self, users: Any) -> None:
        self.users = users
        self.seen: list[dict[str, Any]] = []

    def _record(self) -> None:
        inbound = current_inbound()
        span = trace.get_current_span().get_span_context()
        self.seen.append(
            {
                "request_id": mesh_client.current_request_id(),
                "time_left": mesh_client.time_left(),
                "context": inbound.context_headers if inbound else None,
                "trace_id": format(span.trace_id, "032x") if span.is_valid else None,
            }
        )

    def get(self, id: int) -> Any:
        self._record()
        if id < 0:
            raise self.users.NotFound(message=f"no user {id}")
        if id == 13:
            raise RuntimeError("unlucky")
        return self.users.User(id=id, name=f"user-{id}")

    def sleep(self, ms: int) -> None:
        self._record()

    def ping(self) -> str:
        self._record()
        return "pong"


# -- (a) bytes -------------------------------------------------------------------------------------------


def test_apache_reads_our_frames_and_headers(users: Any) -> None:
    headers = [("x-request-id", "req-1"), ("X-Tenant", "Acme"), ("x-name", "José"), ("x-empty", "")]
    frame = encode_header_frame(tp_message(users, "get", 5, id=7), seqid=5, headers=headers)
    trans = THeaderTransport(ApacheMemoryBuffer(frame), [THeaderClientType.HEADERS])
    proto = TBinaryProtocol(trans)
    assert proto.readMessageBegin() == ("get", AMT.CALL, 5)
    proto.readStructBegin()
    assert proto.readFieldBegin()[1:] == (TType.I64, 1)
    assert proto.readI64() == 7
    proto.readFieldEnd()
    assert proto.readFieldBegin()[1] == TType.STOP
    proto.readStructEnd()
    proto.readMessageEnd()
    assert trans.get_headers() == {k.encode(): v.encode() for k, v in headers}
    assert (trans.sequence_id, trans.protocol_id, trans.flags) == (5, THeaderSubprotocolID.BINARY, 0)


def test_apache_reads_our_compact_frames_and_signed_seqids(users: Any) -> None:
    payload = tp_message(users, "ping", 3, compact=True)
    frame = encode_header_frame(payload, seqid=0x80000000, protocol_id=PROTOCOL_COMPACT)
    trans = THeaderTransport(ApacheMemoryBuffer(frame), [THeaderClientType.HEADERS])
    proto = TCompactProtocol(trans)
    assert proto.readMessageBegin() == ("ping", AMT.CALL, 3)
    assert trans.protocol_id == THeaderSubprotocolID.COMPACT
    assert trans.sequence_id == -(2**31)  # Apache reads the frame's sequence id as a signed i32


def test_we_read_apaches_frames_and_headers(users: Any) -> None:
    buf = ApacheMemoryBuffer()
    trans = THeaderTransport(buf, [THeaderClientType.HEADERS])
    proto = TBinaryProtocol(trans)
    trans.sequence_id = 9
    for key, value in {"x-request-id": "r-9", "Traceparent": TRACEPARENT, "x-name": "José"}.items():
        trans.set_header(key.encode(), value.encode())
    proto.writeMessageBegin("get", AMT.CALL, 9)
    apache_write_struct(proto, [(1, TType.I64, 42)])
    proto.writeMessageEnd()
    trans.flush()
    # Apache clears the headers after each flush: the next frame has none
    proto.writeMessageBegin("ping", AMT.CALL, 10)
    apache_write_struct(proto, [])
    proto.writeMessageEnd()
    trans.flush()

    recv = socket_reader_from_bytes(buf.getvalue())
    first = decode_header_frame(read_frame(recv))
    assert (first.seqid, first.protocol_id, first.flags) == (9, 0, 0)
    assert first.headers == {"x-request-id": "r-9", "Traceparent": TRACEPARENT, "x-name": "José"}
    args_proto = TBinaryProtocolFactory().get_protocol(TMemoryBuffer(first.payload))
    assert args_proto.read_message_begin() == ("get", TMessageType.CALL, 9)
    args = users.Users.get_args()
    args.read(args_proto)
    assert args.id == 42
    second = decode_header_frame(read_frame(recv))
    assert (second.seqid, second.headers) == (9, {})  # the frame's sequence id is whatever was set last


def test_we_refuse_apaches_zlib_frames(users: Any) -> None:
    buf = ApacheMemoryBuffer()
    trans = THeaderTransport(buf, [THeaderClientType.HEADERS])
    trans.add_transform(THeaderTransformID.ZLIB)
    trans.write(tp_message(users, "ping", 1))
    trans.flush()
    with pytest.raises(FrameError, match=r"transform 1 \(zlib\): Envoy rejects transforms"):
        decode_header_frame(buf.getvalue()[4:])


def socket_reader_from_bytes(data: bytes) -> Callable[[int], bytes]:
    view = memoryview(data)
    pos = 0

    def recv_exactly(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(view):
            raise EOFError("end of data")
        pos += n
        return bytes(view[pos - n : pos])

    return recv_exactly


# -- (b) our codec + thriftpy2 against an Apache THeader server -------------------------------------------


@pytest.fixture
def apache_server() -> Iterator[ApacheServer]:
    server = ApacheServer()
    yield server
    server.close()


def test_our_calls_to_an_apache_theader_server(users: Any, apache_server: ApacheServer) -> None:
    request_id = str(uuid.uuid4())
    with socket.create_connection(apache_server.address, timeout=5) as sock:
        recv = socket_reader(sock)

        def call(name: str, seqid: int, headers: list[tuple[str, str]], **args: Any) -> Any:
            sock.sendall(encode_header_frame(tp_message(users, name, seqid, **args), seqid=seqid, headers=headers))
            frame = decode_header_frame(read_frame(recv))
            assert (frame.seqid, frame.protocol_id, frame.headers) == (seqid, 0, {})
            mtype, rseqid, result = tp_reply(users, name, frame.payload)
            assert (mtype, rseqid) == (TMessageType.REPLY, seqid)
            return result

        found = call("get", 1, [("x-request-id", request_id), ("x-envoy-expected-rq-timeout-ms", "900")], id=7)
        assert found.success == users.User(id=7, name="user-7")
        missing = call("get", 2, [("X-Tenant", "acme")], id=-1)
        assert missing.success is None
        assert isinstance(missing.nf, users.NotFound)
        assert missing.nf.message == "no user -1"
        assert call("ping", 3, []).success == "pong"

    assert apache_server.seen == [
        {
            "name": "get",
            "type": AMT.CALL,
            "seqid": 1,
            "frame_seqid": 1,
            "x-request-id": request_id,
            "x-envoy-expected-rq-timeout-ms": "900",
        },
        {"name": "get", "type": AMT.CALL, "seqid": 2, "frame_seqid": 2, "X-Tenant": "acme"},
        {"name": "ping", "type": AMT.CALL, "seqid": 3, "frame_seqid": 3},
    ]


# -- (c) Apache's client against make_server -------------------------------------------------------------


@pytest.fixture
def handler(users: Any) -> Handler:
    return Handler(users)


@pytest.fixture
def header_server(users: Any, handler: Handler, mesh: Mesh) -> Iterator[MeshThriftServer]:
    with make_server(users.Users, handler, "127.0.0.1", free_port(), mesh=mesh, transport="header") as server:
        yield server


def test_apache_client_context_reaches_the_handler(header_server: MeshThriftServer, handler: Handler) -> None:
    client = ApacheClient(header_server.address[1])
    try:
        headers = {
            "x-request-id": "apache-req-1",
            "X-Envoy-Expected-Rq-Timeout-Ms": "1500",  # any case: Apache (and HAProxy) keep it
            "x-tenant": "acme",
            "x-secret": "not allowlisted",
            "traceparent": TRACEPARENT,
        }
        seqid, result = client.call("get", [(1, TType.I64, 7)], seqid=77, headers=headers)
        assert (seqid, client.trans.sequence_id) == (77, 77)  # message and frame sequence ids echoed
        assert result == {0: {1: 7, 2: "user-7"}}
        # the next call on the connection carries other headers (Apache clears them per flush)
        seqid, result = client.call("get", [(1, TType.I64, -1)], seqid=78, headers={"x-mesh-timeout-ms": "250"})
        assert (seqid, result) == (78, {1: {1: "no user -1"}})
        seqid, result = client.call("ping", [], seqid=79)
        assert (seqid, result) == (79, {0: "pong"})
    finally:
        client.close()

    first, second, third = handler.seen
    assert first["request_id"] == "apache-req-1"
    assert 1.0 < first["time_left"] <= 1.5
    assert first["context"] == (("x-tenant", "acme"),)
    assert first["trace_id"] == TRACE_ID
    assert uuid.UUID(second["request_id"]).version == 4  # none sent: a fresh one
    assert 0 < second["time_left"] <= 0.25
    assert (second["context"], second["trace_id"]) == ((), None)
    assert uuid.UUID(third["request_id"]).version == 4
    assert third["time_left"] is None
    assert len({first["request_id"], second["request_id"], third["request_id"]}) == 3


def test_undeclared_exception_is_answered_and_the_connection_survives(
    header_server: MeshThriftServer, handler: Handler, caplog: pytest.LogCaptureFixture
) -> None:
    client = ApacheClient(header_server.address[1])
    try:
        with caplog.at_level(logging.ERROR, "mesh_client.thrift.server"):
            seqid, error = client.call("get", [(1, TType.I64, 13)], seqid=5)
        assert seqid == 5
        assert isinstance(error, ApacheAppException)
        assert error.type == ApacheAppException.INTERNAL_ERROR
        assert error.message == "internal error in get (RuntimeError)"
        assert "unlucky" in caplog.text
        assert client.call("sleep", [(1, TType.I32, 1)], seqid=6) == (6, {})
    finally:
        client.close()


def test_framed_clients_are_served_too(users: Any, header_server: MeshThriftServer, handler: Handler) -> None:
    host, port = header_server.address
    client = thriftpy2.rpc.make_client(users.Users, host, port, trans_factory=TFramedTransportFactory(), timeout=5000)
    try:
        assert client.get(3) == users.User(id=3, name="user-3")
        with pytest.raises(users.NotFound):
            client.get(-3)
    finally:
        client.close()
    assert [uuid.UUID(s["request_id"]).version for s in handler.seen] == [4, 4]
    assert [s["time_left"] for s in handler.seen] == [None, None]


def test_framed_server_refuses_theader(
    users: Any, handler: Handler, mesh: Mesh, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.WARNING, "mesh_client.thrift.server"),
        make_server(users.Users, handler, "127.0.0.1", free_port(), mesh=mesh, transport="framed") as server,
    ):
        host, port = server.address
        framed = thriftpy2.rpc.make_client(users.Users, host, port, trans_factory=TFramedTransportFactory())
        try:
            assert framed.ping() == "pong"
        finally:
            framed.close()
        client = ApacheClient(port)
        try:
            with pytest.raises(ApacheTransportException):
                client.call("ping", [])
        finally:
            client.close()
    assert "a THeader frame reached a server for plain framed Thrift" in caplog.text


def test_unframed_clients_are_refused_with_a_hint(
    users: Any, header_server: MeshThriftServer, caplog: pytest.LogCaptureFixture
) -> None:
    host, port = header_server.address
    with caplog.at_level(logging.WARNING, "mesh_client.thrift.server"):
        buffered = thriftpy2.rpc.make_client(users.Users, host, port, timeout=5000)  # thriftpy2's default
        try:
            with pytest.raises(thriftpy2.transport.TTransportException):
                buffered.ping()
        finally:
            buffered.close()
    assert "unframed binary message: the peer uses the buffered transport" in caplog.text


def test_compact_protocol(users: Any, handler: Handler, mesh: Mesh) -> None:
    with make_server(users.Users, handler, "127.0.0.1", free_port(), mesh=mesh, protocol="compact") as server:
        client = ApacheClient(server.address[1], compact=True)
        try:
            assert client.call("get", [(1, TType.I64, 5)], seqid=2, headers={"x-request-id": "c-1"}) == (
                2,
                {0: {1: 5, 2: "user-5"}},
            )
        finally:
            client.close()
    assert handler.seen[0]["request_id"] == "c-1"


def test_factory_with_pure_python_protocol_and_a_plain_processor(users: Any, handler: Handler) -> None:
    """Without MeshProcessor the transport reads frames as the protocol needs them (no context)."""
    server = MeshThriftServer(
        TProcessor(users.Users, handler),
        TServerSocket(host="127.0.0.1", port=free_port(), client_timeout=None),
        itrans_factory=THeaderServerTransportFactory(),
        iprot_factory=PureBinaryProtocolFactory(),
    )
    with server:
        client = ApacheClient(server.address[1])
        try:
            for seqid in (1, 2):
                assert client.call("get", [(1, TType.I64, seqid)], seqid=seqid, headers={"x-request-id": "x"}) == (
                    seqid,
                    {0: {1: seqid, 2: f"user-{seqid}"}},
                )
            assert client.trans.sequence_id == 2
        finally:
            client.close()
    assert [s["request_id"] for s in handler.seen] == [None, None]


def test_server_close_ends_open_connections(users: Any, handler: Handler, mesh: Mesh) -> None:
    server = make_server(users.Users, handler, "127.0.0.1", free_port(), mesh=mesh)
    thread = server.start()
    client = ApacheClient(server.address[1])
    try:
        assert client.call("ping", []) == (1, {0: "pong"})
        server.close()
        assert not thread.is_alive()
        with pytest.raises(ApacheTransportException):
            client.call("ping", [])
    finally:
        client.close()
        server.close()


def test_make_server_argument_checks(users: Any, handler: Handler, mesh: Mesh) -> None:
    with pytest.raises(ValueError, match="transport"):
        make_server(users.Users, handler, "127.0.0.1", 0, mesh=mesh, transport="buffered")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="client_timeout"):
        make_server(users.Users, handler, "127.0.0.1", 0, mesh=mesh, client_timeout=0)
    with pytest.raises(ValueError, match="accept"):
        THeaderServerTransportFactory(accept={"unframed"})
