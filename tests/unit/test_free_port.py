"""mesh_client.sidecar.free_port: ports a test server can bind next, out of the way of the source
ports the OS gives outgoing connections meanwhile."""

from __future__ import annotations

import socket

import pytest

from mesh_client.sidecar import free_port
from mesh_client.sidecar import process as sidecar_process


def test_ports_are_distinct_bindable_and_below_the_source_port_range() -> None:
    start = sidecar_process._source_ports_start()
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert all(sidecar_process._LOWEST_PORT <= port < start for port in ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))  # (free now: the caller binds it next)


def test_a_port_in_use_is_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        taken = busy.getsockname()[1]
        # every random pick lands on the busy port: free_port falls back to the OS's choice
        monkeypatch.setattr(sidecar_process._port_choice, "randrange", lambda low, high: taken)
        port = free_port()
        assert port != taken
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_without_room_below_the_source_ports_the_os_picks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sidecar_process, "_source_ports_start", lambda: sidecar_process._LOWEST_PORT + 10)
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
