"""The test server every loopback server of the project is built on (mesh_client.testing.loopback)."""

from __future__ import annotations

import http.client
import socket
import socketserver
import threading
import time

import pytest

from mesh_client.testing.loopback import LoopbackServer, QuietHTTPHandler


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data = self.request.recv(1024)
        self.request.sendall(data)


class _Hang(socketserver.BaseRequestHandler):
    """Echoes, except ``wait``: that one says it waits, waits until the server stops, then says so."""

    server: LoopbackServer

    def handle(self) -> None:
        data = self.request.recv(1024)
        if data != b"wait":
            self.request.sendall(data)
            return
        self.request.sendall(b"waiting")
        if self.server.stopping.wait(30):
            self.request.sendall(b"stopped")


class _Fails(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.recv(1024)
        raise RuntimeError("the handler broke")


class _Hello(QuietHTTPHandler):
    def do_GET(self) -> None:
        nodelay = self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        body = f"nodelay={int(bool(nodelay))}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def echo(server: LoopbackServer, data: bytes = b"ping") -> bytes:
    with socket.create_connection((server.address.host, server.address.port), timeout=5) as sock:
        sock.sendall(data)
        return sock.recv(1024)


def refused(server: LoopbackServer) -> bool:
    try:
        socket.create_connection((server.address.host, server.address.port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def serving_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name]


def test_it_binds_loopback_on_a_free_port_known_before_it_serves() -> None:
    first, second = LoopbackServer(_Echo), LoopbackServer(_Echo)
    try:
        assert first.address.host == second.address.host == "127.0.0.1"
        assert first.address.port > 0
        assert second.address.port > 0
        assert first.address.port != second.address.port
    finally:
        first.stop()
        second.stop()


def test_it_binds_a_given_port() -> None:
    probe = LoopbackServer(_Echo)
    port = probe.address.port
    probe.stop()
    with LoopbackServer(_Echo, port=port) as server:
        assert server.address.port == port
        assert echo(server) == b"ping"


def test_it_serves_in_a_named_daemon_thread_until_the_with_block_ends() -> None:
    with LoopbackServer(_Echo, name="loopback-under-test") as server:
        assert echo(server, b"hello") == b"hello"
        (thread,) = serving_threads("loopback-under-test")
        assert thread.daemon
    assert serving_threads("loopback-under-test") == []
    assert refused(server)


def test_connections_are_served_concurrently() -> None:
    with LoopbackServer(_Hang) as server:
        hung = [socket.create_connection((server.address.host, server.address.port), timeout=5) for _ in range(3)]
        for sock in hung:
            sock.sendall(b"wait")
            assert sock.recv(1024) == b"waiting"
        assert echo(server) == b"ping"  # answered while three connections wait
    for sock in hung:
        assert sock.recv(1024) == b"stopped"
        sock.close()


def test_stop_is_prompt_and_joins_the_serving_thread() -> None:
    server = LoopbackServer(_Echo, name="loopback-prompt").start()
    assert echo(server) == b"ping"
    began = time.monotonic()
    server.stop()
    took = time.monotonic() - began
    assert took < 0.4  # socketserver's default poll alone can take 0.5 s
    assert serving_threads("loopback-prompt") == []
    assert refused(server)


def test_stop_wakes_the_handlers_that_wait_on_stopping() -> None:
    server = LoopbackServer(_Hang).start()
    with socket.create_connection((server.address.host, server.address.port), timeout=5) as sock:
        sock.sendall(b"wait")
        assert sock.recv(1024) == b"waiting"
        assert not server.stopping.is_set()
        server.stop()
        assert server.stopping.is_set()
        assert sock.recv(1024) == b"stopped"


def test_stop_is_idempotent() -> None:
    server = LoopbackServer(_Echo).start()
    server.stop()
    server.stop()
    server.__exit__(None, None, None)  # leaving a with block once more: nothing happens either
    assert refused(server)


def test_stop_before_start_closes_the_port() -> None:
    server = LoopbackServer(_Echo)
    server.stop()
    assert refused(server)


def test_a_server_starts_once() -> None:
    server = LoopbackServer(_Echo, name="loopback-once").start()
    try:
        with pytest.raises(RuntimeError, match="loopback-once: a loopback server is started once"):
            server.start()
        assert len(serving_threads("loopback-once")) == 1
        assert echo(server) == b"ping"
    finally:
        server.stop()
    with pytest.raises(RuntimeError, match="started once"):
        server.start()


def test_a_broken_handler_is_not_reported_and_the_server_keeps_serving(capfd: pytest.CaptureFixture[str]) -> None:
    with LoopbackServer(_Fails) as server:
        with socket.create_connection((server.address.host, server.address.port), timeout=5) as sock:
            sock.sendall(b"x")
            assert sock.recv(1024) == b""  # the connection is closed
        with socket.create_connection((server.address.host, server.address.port), timeout=5) as sock:
            sock.sendall(b"x")
            assert sock.recv(1024) == b""
    assert capfd.readouterr().err == ""


def test_the_quiet_http_handler_keeps_the_connection_turns_nagle_off_and_logs_nothing(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with LoopbackServer(_Hello) as server:
        connection = http.client.HTTPConnection(server.address.host, server.address.port, timeout=5)
        try:
            for _ in range(2):  # both on one connection (HTTP/1.1 keep-alive)
                connection.request("GET", "/")
                response = connection.getresponse()
                assert response.status == 200
                assert response.version == 11
                assert response.read() == b"nodelay=1"
            assert connection.sock is not None
        finally:
            connection.close()
    assert capfd.readouterr().err == ""
