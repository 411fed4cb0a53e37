"""The harness of ``tox -e dropin`` (tests/dropin): the connect guard refuses a destination off
loopback before anything is sent, and the comparison counts a test passing plain only."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dropin import dropin_plugin
from tests.dropin.run import Comparison, outcomes


@pytest.fixture
def guard() -> Iterator[None]:
    dropin_plugin.install_guard()
    try:
        yield
    finally:
        dropin_plugin.remove_guard()


@pytest.mark.parametrize("host", ["10.255.255.1", "192.0.2.1", "2001:db8::1", "example.org"])
def test_a_connection_off_loopback_is_refused_before_sending(guard: None, host: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        with pytest.raises(OSError, match="dropin guard"):
            sock.connect((host, 80))
        with pytest.raises(OSError, match="dropin guard"):
            sock.connect_ex((host, 80))
    finally:
        sock.close()
    with pytest.raises(OSError, match="dropin guard"):
        socket.create_connection((host, 80))


def test_names_other_than_localhost_are_not_looked_up(guard: None) -> None:
    with pytest.raises(socket.gaierror, match="no lookup"):
        socket.getaddrinfo("example.org", 80)
    assert socket.getaddrinfo("localhost", 80)
    assert socket.getaddrinfo("10.0.0.1", 80)  # (an address literal: no lookup; its connect is refused)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "::ffff:10.0.0.1"])
def test_addresses_that_are_not_loopback_are_refused_too(guard: None, host: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock, pytest.raises(OSError, match="dropin guard"):
        sock.connect((host, 80))
    assert dropin_plugin.BLOCKED[-1] == f"{host}:80"


def test_datagrams_and_other_lookups_off_loopback_are_refused(guard: None) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        with pytest.raises(OSError, match="dropin guard"):
            sock.sendto(b"query", ("192.0.2.53", 53))
        with pytest.raises(OSError, match="dropin guard"):
            sock.sendto(b"query", 0, ("192.0.2.53", 53))
    for lookup in (socket.gethostbyname, socket.gethostbyname_ex):
        with pytest.raises(socket.gaierror, match="no lookup"):
            lookup("example.org")
    assert dropin_plugin.BLOCKED[-1] == "lookup example.org"


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "::ffff:127.0.0.1", "localhost", "a.localhost"]
)
def test_loopback_names_and_addresses(host: str) -> None:
    assert dropin_plugin.is_loopback(host)
    assert not dropin_plugin.is_loopback(host.replace("127", "128").replace("1", "2").replace("localhost", "local"))


def test_loopback_connections_go_through(guard: None) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    accepted: list[bytes] = []

    def accept() -> None:
        conn, _ = server.accept()
        accepted.append(conn.recv(5))
        conn.close()

    thread = threading.Thread(target=accept)
    thread.start()
    with socket.create_connection(server.getsockname()) as client:
        client.sendall(b"hello")
    thread.join(5)
    server.close()
    assert accepted == [b"hello"]


def test_the_guard_is_removed_cleanly() -> None:
    original = socket.socket.connect
    dropin_plugin.install_guard()
    assert socket.socket.connect is not original
    dropin_plugin.remove_guard()
    assert socket.socket.connect is original


def _report(path: Path, cases: str) -> Path:
    path.write_text(f"<testsuites><testsuite>{cases}</testsuite></testsuites>")
    return path


def test_outcomes_are_keyed_by_node_id(tmp_path: Path) -> None:
    report = _report(
        tmp_path / "r.xml",
        '<testcase file="tests/test_a.py" classname="tests.test_a.TestX" name="test_b[1-x]"/>'
        '<testcase file="tests/sub/test_c.py" classname="tests.sub.test_c" name="test_d"><skipped/></testcase>',
    )
    assert outcomes(report) == {
        "tests/test_a.py::TestX::test_b[1-x]": "passed",
        "tests/sub/test_c.py::test_d": "skipped",
    }


def test_a_test_passing_plain_only_is_a_regression_unless_it_does_not_repeat(tmp_path: Path) -> None:
    def case(name: str, inner: str = "") -> str:
        return f'<testcase file="t.py" classname="t" name="{name}">{inner}</testcase>'

    plain = _report(tmp_path / "plain.xml", case("a") + case("b") + case("c", "<skipped/>") + case("d"))
    mesh = _report(tmp_path / "mesh.xml", case("a") + case("b", "<failure/>") + case("c") + case("a", "<error/>"))
    first = Comparison("lib", outcomes(plain), outcomes(mesh))
    assert first.candidates == first.regressions == ["t.py::a", "t.py::b", "t.py::d"]  # (a: teardown; d: missing)
    assert first.counts() == {
        "tests": 4,
        "passed plain": 3,
        "passed mesh": 1,
        "failed plain": 0,
        "failed mesh": 2,
        "skipped plain": 1,
        "flaky": 0,
        "regressions": 3,
    }
    again = (
        {"t.py::a": "passed", "t.py::b": "failed", "t.py::d": "passed"},
        {"t.py::a": "failed", "t.py::d": "passed"},
    )
    second = Comparison("lib", first.plain, first.mesh, again)
    assert second.regressions == ["t.py::a"]
    assert second.flaky == ["t.py::b", "t.py::d"]
