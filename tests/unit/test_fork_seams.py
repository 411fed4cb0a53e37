"""The seams through which a forked child drops the pools it inherited (mesh_client.http._fork),
on real requests adapters and httpx transports talking to a local backend, in one process: what
the child does right after a fork, called directly. The forks themselves are in
tests/integration/test_fork.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
from requests.adapters import BaseAdapter, HTTPAdapter

from mesh_client import Mesh
from mesh_client.http._fork import forget_adapter_pools, forget_transport_connections
from mesh_client.testing import Backend

from .compat_seams import PATHS, use_path


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with Backend("seams") as backend:
        yield f"http://{backend.address}/echo"


def test_a_requests_adapter_gets_new_pools_with_its_settings(url: str) -> None:
    adapter = HTTPAdapter(pool_maxsize=7, max_retries=3)
    session = requests.Session()
    session.mount("http://", adapter)
    assert session.get(url).status_code == 200
    old = adapter.poolmanager
    other = BaseAdapter()  # (not an HTTPAdapter: left alone)

    forget_adapter_pools([adapter, other])

    assert adapter.poolmanager is not old
    assert len(adapter.poolmanager.pools) == 0
    assert adapter.poolmanager.connection_pool_kw["maxsize"] == 7
    assert adapter.max_retries.total == 3
    assert session.get(url).status_code == 200  # (a new connection)
    assert len(old.pools) == 1  # the parent's pool object, as it was: never used again here


@pytest.mark.parametrize("path", PATHS)
def test_an_httpx_transport_forgets_its_connections_and_makes_new_ones(
    url: str, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """Probed: the pool is emptied and the inherited connection left as it was (the parent's to
    use). The fallback: the transport is closed (httpcore's public close(), which writes nothing)."""
    probed = use_path(monkeypatch, "pool state", path)
    transport = httpx.HTTPTransport()
    with httpx.Client(transport=transport) as client:
        assert client.get(url).status_code == 200
        pool = transport._pool
        (inherited,) = pool.connections
        forget_transport_connections(transport)
        assert pool.connections == []
        assert client.get(url).status_code == 200
        assert len(pool.connections) == 1
        assert pool.connections[0] is not inherited
        assert inherited.is_closed() != probed  # (probed: nothing was done to it)


@pytest.mark.parametrize("path", PATHS)
def test_an_httpx_async_transport_forgets_its_connections_without_awaiting(
    url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    """Probed: the pool is emptied without its loop. The fallback: an async pool cannot be closed
    without awaiting on the parent's loop, so it is left as it was and a warning says so."""
    probed = use_path(monkeypatch, "pool state", path)
    caplog.set_level(logging.WARNING, logger="mesh_client.fork")
    transport = httpx.AsyncHTTPTransport()

    async def call() -> int:
        async with httpx.AsyncClient(transport=transport) as client:
            return (await client.get(url)).status_code

    loop = asyncio.new_event_loop()
    try:
        client = httpx.AsyncClient(transport=transport)
        assert loop.run_until_complete(client.get(url)).status_code == 200
        assert len(transport._pool.connections) == 1
        forget_transport_connections(transport)  # (no loop runs here)
        assert len(transport._pool.connections) == (0 if probed else 1)
        assert bool(caplog.records) != probed
    finally:
        if not probed:
            loop.run_until_complete(transport.aclose())  # (this test's own loop: it may be awaited here)
        loop.close()
    assert asyncio.run(call()) == 200  # a new loop, a new connection


def test_when_httpcore_keeps_its_pool_otherwise_sync_pools_are_closed_and_async_ones_reported(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The fallback: a pool whose state is not kept as the seam expects (here its connections
    in a tuple) is left unchanged by the seam; a sync one is closed (httpcore's public close(),
    which writes nothing), an async one cannot be without its loop, and a warning says so."""
    transport = httpx.HTTPTransport()
    with httpx.Client(transport=transport) as client:
        assert client.get(url).status_code == 200
        (inherited,) = transport._pool.connections
        transport._pool._connections = tuple(transport._pool._connections)  # type: ignore[assignment]
        forget_transport_connections(transport)
        assert inherited.is_closed()
        assert client.get(url).status_code == 200  # the pool is still usable

    caplog.set_level(logging.WARNING, logger="mesh_client.fork")
    async_transport = httpx.AsyncHTTPTransport()
    async_transport._pool._connections = ()  # type: ignore[assignment]
    forget_transport_connections(async_transport)
    assert [r.getMessage() for r in caplog.records] == [
        f"mesh_client: cannot drop the connections this forked process inherited in {async_transport!r} (an "
        "httpcore whose pool is kept otherwise); make the async client after the fork"
    ]


def test_transports_that_are_not_httpx_pools_are_left_alone() -> None:
    mock = httpx.MockTransport(lambda request: httpx.Response(200))
    forget_transport_connections(mock)
    assert httpx.Client(transport=mock).get("http://x/").status_code == 200


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("cls", [httpx.HTTPTransport, httpx.AsyncHTTPTransport])
def test_a_transport_that_can_be_made_again_is_replaced_on_the_fallback(
    monkeypatch: pytest.MonkeyPatch, path: str, cls: type[httpx.HTTPTransport | httpx.AsyncHTTPTransport]
) -> None:
    """The fallback when a new transport can be made like it (a mesh transport made its own): the
    new one is used and the old one left as it was, to be collected (its lock never taken)."""
    probed = use_path(monkeypatch, "pool state", path)
    transport = cls()
    made: list[Any] = []

    def remake() -> Any:
        made.append(cls())
        return made[-1]

    assert forget_transport_connections(transport, remake) is (transport if probed else made[0])
    assert len(made) == (0 if probed else 1)


@pytest.mark.parametrize("path", PATHS)
def test_a_mesh_transport_in_a_child_uses_a_transport_with_no_inherited_connection(
    monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """What a mesh transport does after a fork: probed, its own transport emptied; the fallback, a
    new one made with the same settings (when it made its transport itself)."""
    probed = use_path(monkeypatch, "pool state", path)
    registry = {
        "mesh": {"caller": "me", "envoy_http": "127.0.0.1:9001"},
        "services": {"users": {"haproxy": "127.0.0.1:20001"}},
    }
    with Mesh.from_dict(registry) as mesh:
        for transport in (mesh.httpx_transport(retries=1), mesh.httpx_async_transport(retries=1)):
            inner = transport.transport
            transport._after_fork()
            assert (transport.transport is inner) == probed
            assert type(transport.transport) is type(inner)
        given = httpx.AsyncHTTPTransport()
        transport = mesh.httpx_async_transport(given)
        transport._after_fork()
        assert transport.transport is given  # (the caller's: emptied, or left with a warning)
