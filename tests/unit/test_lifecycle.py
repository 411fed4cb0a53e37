"""Closing a Mesh: what ``close()`` and ``aclose()`` (``with`` / ``async with``) close."""

from __future__ import annotations

import asyncio

from mesh_client import Mesh
from mesh_client.registry import load_mapping

REGISTRY = {
    "mesh": {"caller": "checkout", "envoy_http": "127.0.0.1:1"},
    "services": {"users": {"haproxy": "127.0.0.1:2"}},
}


def test_close_closes_the_sync_clients_and_leaves_the_asyncio_ones_to_their_loop() -> None:
    mesh = Mesh(load_mapping(REGISTRY))
    sync = mesh.httpx_client()
    async_client = mesh.httpx_async_client()
    mesh.close()
    assert sync.is_closed
    assert not async_client.is_closed  # (closing it needs its event loop: aclose)
    assert mesh.closed


def test_async_with_closes_the_asyncio_clients_too() -> None:
    async def main() -> tuple[bool, bool, bool]:
        async with Mesh(load_mapping(REGISTRY)) as mesh:
            sync = mesh.httpx_client()
            first, second = mesh.httpx_async_client(), mesh.httpx_async_client()
            assert not first.is_closed
        return sync.is_closed, first.is_closed and second.is_closed, mesh.closed

    assert asyncio.run(main()) == (True, True, True)


def test_aclose_twice_is_harmless() -> None:
    async def main() -> bool:
        mesh = Mesh(load_mapping(REGISTRY))
        client = mesh.httpx_async_client()
        await mesh.aclose()
        await mesh.aclose()
        return client.is_closed and mesh.closed

    assert asyncio.run(main())
